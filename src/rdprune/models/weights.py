"""The ``weights`` argument of the built-in CIFAR / MNIST factories.

Every model factory takes ``weights`` so that one config key (``model.weights``) means the same
for every model: ``None`` is a random initialisation. The paper's CIFAR networks have no published
pretrained weights, so any other value is an error that says what to do instead.
"""

from __future__ import annotations

from rdprune.errors import UserError


def require_random_init(model: str, weights: str | None) -> None:
    """Raise a one-line UserError unless ``weights`` is None (random initialisation)."""
    if weights is not None:
        raise UserError(
            f"{model} has no pretrained weights (model.weights={weights!r}): set "
            "model.weights=null to train it, or give a state_dict with dense.checkpoint=<file>"
        )
