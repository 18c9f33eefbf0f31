"""The traced graph behind :func:`rdprune.methods.rd.profiling.rd_curves`'s fast path.

:class:`TracedModel` is the one entry point: it traces a model with ``torch.fx``
(:mod:`~rdprune.methods.rd.graph.trace`), makes every in-place op out-of-place (:mod:`~rdprune.methods.rd.graph.inplace`),
binds each node to what it runs and optionally folds eval-mode BatchNorm into the preceding conv
(:mod:`~rdprune.methods.rd.graph.bind`), plans per prunable layer which nodes run once per calibration chunk
and which per group of pruned variants (:mod:`~rdprune.methods.rd.graph.plan`), and runs them
(:mod:`~rdprune.methods.rd.graph.execute`). Anything it cannot represent faithfully raises
:class:`Untraceable`, and the caller falls back to the naive scheme.
"""

from rdprune.methods.rd.graph.errors import Untraceable
from rdprune.methods.rd.graph.execute import Placement
from rdprune.methods.rd.graph.traced import TracedModel

__all__ = ["Placement", "TracedModel", "Untraceable"]
