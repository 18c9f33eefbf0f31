"""The traced graph behind :func:`rdprune.profiling.rd_curves`'s fast path.

:class:`TracedModel` is the one entry point: it traces a model with ``torch.fx``
(:mod:`~rdprune.graph.trace`), makes every in-place op out-of-place (:mod:`~rdprune.graph.inplace`),
binds each node to what it runs and optionally folds eval-mode BatchNorm into the preceding conv
(:mod:`~rdprune.graph.bind`), plans per prunable layer which nodes run once per calibration chunk
and which per group of pruned variants (:mod:`~rdprune.graph.plan`), and runs them
(:mod:`~rdprune.graph.execute`). Anything it cannot represent faithfully raises
:class:`Untraceable`, and the caller falls back to the naive scheme.
"""

from rdprune.graph.errors import Untraceable
from rdprune.graph.execute import Placement
from rdprune.graph.traced import TracedModel

__all__ = ["Placement", "TracedModel", "Untraceable"]
