"""Tasks: what the stages need to know about a kind of model and its data, behind one interface.

The pipeline, the API and the methods never ask what kind of model they hold; they ask its task
(:func:`task_of`) to evaluate it, give the loss, the calibration and synthetic inputs, the prunable
layers and how they group into units, which profiler measures its RD curves, how the criterion
prunes it (the LLM literature's sequential protocol, for a language model), which metrics it
reports and in which direction, and how it is exported. Two implementations:

- :class:`~rdprune.tasks.image.ImageClassification`: a network mapping images to class logits
  (every ``Conv2d`` / ``Linear`` that runs is prunable; top-1 accuracy);
- :class:`~rdprune.tasks.causal_lm.CausalLanguageModel`: a Hugging Face causal LM wrapped as
  :class:`rdprune.models.lm.CausalLM` (the linears of its decoder blocks; perplexity).

A third task (a masked LM, a speech model) is one more module with a :class:`Task` subclass, listed
in :func:`tasks` before the catch-all image task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from rdprune.errors import UserError


class Task(ABC):
    """One kind of model and data (module docstring). Stateless: methods take what they act on.

    Attributes:
        name: recorded in ``metrics.json`` as ``task``.
        metrics: the metrics the task reports, headline first: ``{name: higher is better}``.
        token_distributions: its outputs are next-token distributions (EvoPress's KL).
        model_factories, data_factories: the ``_target_`` of the model and dataset configs
            that build its models and data (checked against each other before anything is
            built; a dataset's ``Splits.task`` names its task once built).
        model_keys: model factory arguments the pipeline supplies from the data.
    """

    name: ClassVar[str]
    metrics: ClassVar[dict[str, bool]]
    #: its outputs are next-token distributions (a per-token KL between models: EvoPress)
    token_distributions: ClassVar[bool] = False
    #: the ``_target_`` of the model and dataset configs that build this task's models and data
    model_factories: ClassVar[tuple[str, ...]] = ()
    data_factories: ClassVar[tuple[str, ...]] = ()

    # --- which models ------------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def claims(model: nn.Module) -> bool:
        """Whether this task runs ``model`` as the pipeline holds it."""

    @staticmethod
    def adopts(model: nn.Module) -> bool:
        """Whether a user's model (:func:`rdprune.allocate`) is this task's once adapted."""
        return False

    def adapt(self, model: nn.Module) -> tuple[nn.Module, str]:
        """A user's model as the pipeline runs it, and the prefix its layer names get there."""
        return model, ""

    def check_data(self, data: Any, model_name: str) -> None:
        """One line when ``data`` (a dataset's :class:`~rdprune.data.Splits`) is not this
        task's kind."""
        kind = getattr(data, "task", None)
        if kind != self.name:
            raise UserError(f"model {model_name} is {self.describe()}: it needs "
                            f"{self.needs()}, got dataset={getattr(data, 'name', data)}")

    @abstractmethod
    def describe(self) -> str:
        """What kind of model, in words ("an image model")."""

    @abstractmethod
    def needs(self) -> str:
        """The datasets it runs on, in words."""

    #: model factory arguments the pipeline supplies from the data (:meth:`model_inputs`)
    model_keys: ClassVar[tuple[str, ...]] = ()

    def model_inputs(self, data: Any) -> dict[str, Any]:
        """What the model factory is given from the built data (a language model: its
        tokenizer's size, its context length and its tokenizer)."""
        return {}

    def place(self, model: nn.Module, device: torch.device) -> None:
        """Put the model on the run's device."""
        model.to(device)

    def ready(self, model: nn.Module) -> None:
        """Make the dense model what the rounds work on (a language model trained here in
        float32: cast to its ``model.dtype``)."""

    # --- inputs ------------------------------------------------------------------------------

    @abstractmethod
    def check_calibration(self, x: torch.Tensor) -> None:
        """One line when ``x`` cannot be this task's calibration batch ``[N, ...]``."""

    @abstractmethod
    def mac_sample(self, example: torch.Tensor) -> torch.Tensor:
        """The input whose MACs are reported per sample (an image; a language model's token)."""

    @abstractmethod
    def synthetic_inputs(self, model: nn.Module, like: torch.Tensor, seed: int) -> torch.Tensor:
        """Data-free calibration inputs shaped like ``like`` (``ours_zerodata``)."""

    # --- prunable units ----------------------------------------------------------------------

    @abstractmethod
    def prunable(self, model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
        """The prunable layers ``{name: module}`` in model order."""

    def blocks(self, names: Sequence[str]) -> list[int]:
        """The decoder block of each layer name (block-wise allocations)."""
        raise UserError(f"this method allocates per decoder block of a language model; "
                        f"{self.describe()} has none")

    def units(self, layers: Mapping[str, nn.Module], granularity: str) -> list[list[str]]:
        """What gets one RD curve and one sparsity: each layer, or each block's layers."""
        if granularity == "layer":
            return [[name] for name in layers]
        groups: dict[int, list[str]] = {}
        for name, b in zip(layers, self.blocks(list(layers))):
            groups.setdefault(b, []).append(name)
        return list(groups.values())

    # --- RD curves and pruning ---------------------------------------------------------------

    @abstractmethod
    def curves(self, model: nn.Module, inputs: torch.Tensor, grid: np.ndarray, reduction: str,
               **options: Any) -> np.ndarray:
        """RD curves of ``model`` by this task's fastest exact profiler (one row per layer or
        per group of ``options["groups"]``; options as :func:`rdprune.methods.rd.profiling.rd_curves`)."""

    def prune(self, model: nn.Module, layers: Mapping[str, nn.Module],
              sparsities: Mapping[str, float], criterion: Any, calib: torch.Tensor | None,
              masks: Mapping[str, torch.Tensor] | None = None, *, sequential: bool = True,
              batch_size: int = 16) -> dict[str, torch.Tensor]:
        """Remove each layer's weights in place by ``criterion``; returns the keep-masks.

        Args:
            criterion: a name (its statistics measured here, on ``calib``) or a
                :class:`~rdprune.pruning.criteria.Criterion` with statistics measured on the
                model as given.
            sequential: the task's published protocol (a language model: block by block),
                where it has one; an image model has none.
        """
        from rdprune.pruning.criteria import Criterion, measure, prune_layers

        if not isinstance(criterion, Criterion):
            criterion = measure(criterion, model, layers, calib, batch_size=batch_size)
        return prune_layers(layers, sparsities, criterion, masks)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss (a user's DataLoader in :func:`rdprune.finetune`)."""
        return torch.nn.functional.cross_entropy(logits, target)

    # --- evaluation and outputs --------------------------------------------------------------

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Any, device: torch.device,
                 split: str = "test") -> dict[str, Any]:
        """The task's metrics of ``model`` on a split (plus per-sample flags where paired
        tests use them: ``correct``)."""

    def has_validation(self, data: Any) -> bool:
        """Whether ``data`` has a validation split (methods that tune on it: ATP)."""
        return False

    def validation_loss(self, model: nn.Module, data: Any, device: torch.device) -> float:
        """The loss of ``model`` on the validation split (:meth:`has_validation`)."""
        raise UserError(f"{self.describe()}'s data has no validation split")

    def summary_lines(self, metrics: Mapping[str, Any]) -> list[str]:
        """The task's lines of the table printed at the end of a run."""
        return [f"  {'dense top-1':<22}{metrics['dense_top1']:8.2f} %",
                f"  {'pruned top-1':<22}{metrics['pruned_top1']:8.2f} %",
                f"  {'final top-1':<22}{metrics['top1']:8.2f} %"]

    def export(self, model: nn.Module, out: Path, data: Any, info: Mapping[str, Any]) -> None:
        """Leave the pruned model where its ecosystem loads it (nothing beyond ``model.pt``)."""


def tasks() -> list[type[Task]]:
    """The task classes, most specific first (the image task claims any other network)."""
    from rdprune.tasks.causal_lm import CausalLanguageModel
    from rdprune.tasks.image import ImageClassification

    return [CausalLanguageModel, ImageClassification]


def task_of(model: nn.Module) -> Task:
    """The task of a model as the pipeline holds it (wrappers removed)."""
    from rdprune.pruning.layers import unwrap

    base = unwrap(model)
    return next(cls() for cls in tasks() if cls.claims(base))


def adapt(model: nn.Module) -> tuple[nn.Module, str, Task]:
    """A user's model as the pipeline runs it, the prefix of its layer names there, its task."""
    for cls in tasks():
        if cls.adopts(model) or cls.claims(model):
            task = cls()
            wrapped, prefix = task.adapt(model)
            return wrapped, prefix, task
    raise AssertionError("the image task claims every model")


def _owner(target: str | None, attr: str) -> type[Task]:
    classes = tasks()
    return next((c for c in classes if target in getattr(c, attr)), classes[-1])


def for_factory(model_target: str | None) -> Task:
    """The task of the models a model config's ``_target_`` builds."""
    return _owner(model_target, "model_factories")()


def check_config(model_target: str | None, data_target: str | None, model_name: str,
                 data_name: str) -> None:
    """One line, before anything is built, when a model config and a dataset config belong to
    different tasks (their factories' ``_target_``; the image task takes every other)."""
    model_task, data_task = _owner(model_target, "model_factories"), _owner(
        data_target, "data_factories")
    if model_task is not data_task:
        task = model_task()
        raise UserError(f"model {model_name} is {task.describe()}: it needs {task.needs()}, "
                        f"got dataset={data_name}")


def metric_directions() -> dict[str, bool]:
    """Every task's metrics: ``{name: higher is better}``."""
    out: dict[str, bool] = {}
    for cls in tasks():
        out.update(cls.metrics)
    return out


def prunable_layers(model: nn.Module, example: torch.Tensor) -> dict[str, nn.Module]:
    """The prunable layers of a model as the pipeline holds it (its task's choice)."""
    return task_of(model).prunable(model, example)
