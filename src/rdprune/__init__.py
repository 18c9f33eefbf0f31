"""rdprune: layer-adaptive weight pruning by rate-distortion optimisation.

Reproduces Xu et al., "Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep
Neural Networks" (ICCV 2023), with uniform / uniform+ / global magnitude / LAMP / ERK baselines and
ADMM pruning (Zhang et al., ECCV 2018).

Vocabulary used throughout: *sparsity* is the fraction of weights removed, in [0, 1); *density* is
1 - sparsity; *MACs* are multiply-accumulates; a *prunable layer* is a Conv2d or Linear module whose
forward actually runs; a *mask* is a bool tensor shaped like the layer's weight, True = kept.

Bad input raises :class:`UserError` (a ``ValueError``) with a one-line message; a value of the wrong
type :class:`UserTypeError` (also a ``TypeError``), a missing file :class:`UserFileNotFoundError`
(also a ``FileNotFoundError``).
"""

from rdprune.errors import UserError, UserFileNotFoundError, UserTypeError

__version__ = "0.3.0"

__all__ = ["UserError", "UserFileNotFoundError", "UserTypeError", "__version__", "allocate",
           "finetune", "prune"]


def __getattr__(name: str):
    """The public API (:mod:`rdprune.api`), imported on first use: ``import rdprune`` stays light."""
    if name in ("allocate", "finetune", "prune"):
        from rdprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'rdprune' has no attribute {name!r}")
