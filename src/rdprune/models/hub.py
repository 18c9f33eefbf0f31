"""Models by name from torchvision and timm (ImageNet-scale networks, optionally pretrained).

Names are validated against each library's list before anything is built; an unknown name, or
pretrained weights that cannot be fetched (offline machine), is a one-line
:class:`~rdprune.errors.UserError` that says how to fix it. torchvision is limited to its
classification models (``torchvision.models.list_models(module=torchvision.models)``).
(Just over 300 lines: torchvision and timm side by side, each with its offline error.)
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from rdprune.errors import UserError
from rdprune.models.attention import unfuse_attention

SOURCES = ("auto", "torchvision", "timm")
IMAGENET_CLASSES = 1000


def torchvision_names() -> list[str]:
    """torchvision's classification model names."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def timm_names() -> list[str]:
    """timm's architecture names (without pretrained tags)."""
    import timm

    return timm.list_models()


def _one_line(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown(name: str, candidates: Iterable[str], where: str) -> UserError:
    unique = list(dict.fromkeys(candidates))  # torchvision and timm share names (resnet18, ...)
    close = difflib.get_close_matches(name, unique, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return UserError(f"unknown model {name!r} in {where}{hint}")


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _replace_classifier(model: nn.Module, name: str, num_classes: int) -> None:
    """Swap the 1000-way classifier (and auxiliary ones) for fresh ``num_classes``-way layers.

    The classifier is the last Linear / Conv2d (squeezenet) in model order with 1000 outputs;
    Inception-style auxiliary heads (names containing "aux") are replaced as well.
    """
    heads = [
        (n, m)
        for n, m in model.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == IMAGENET_CLASSES)
        or (isinstance(m, nn.Conv2d) and m.out_channels == IMAGENET_CLASSES)
    ]
    if not heads:
        raise UserError(
            f"cannot find the 1000-way classifier of torchvision model {name!r}; "
            f"use model.source=timm or model.num_classes=1000"
        )
    last = heads[-1][0]
    for n, m in heads:
        if n != last and "aux" not in n.lower():
            continue
        if isinstance(m, nn.Linear):
            new: nn.Module = nn.Linear(m.in_features, num_classes, bias=m.bias is not None)
        else:
            new = nn.Conv2d(
                m.in_channels, num_classes, m.kernel_size, m.stride, m.padding,
                bias=m.bias is not None,
            )
        _set_module(model, n, new)


@torch.no_grad()
def _adapt_input_channels(model: nn.Module, name: str, in_channels: int) -> None:
    """Replace the first 3-channel Conv2d so the model takes ``in_channels`` inputs.

    The RGB filters are summed (1 channel: a grey image then gives the activations its RGB copy
    gave) or tiled over the channels and rescaled by 3 / in_channels (as timm does).
    """
    rgb_convs = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1
    ]
    if not rgb_convs:
        raise UserError(
            f"cannot find the RGB input conv of torchvision model {name!r}; "
            f"use model.source=timm or model.in_channels=3"
        )
    n, old = rgb_convs[0]
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
        bias=old.bias is not None,
    )
    w = old.weight
    if in_channels == 1:
        new.weight.copy_(w.sum(dim=1, keepdim=True))
    else:
        reps = -(-in_channels // 3)
        new.weight.copy_(w.repeat(1, reps, 1, 1)[:, :in_channels] * (3.0 / in_channels))
    if old.bias is not None:
        new.bias.copy_(old.bias)
    _set_module(model, n, new)


def _torchvision_weights(name: str, weights: str) -> Any:
    """torchvision's weights enum member ``weights`` (e.g. "IMAGENET1K_V1", "DEFAULT") of ``name``."""
    import torchvision

    enum = torchvision.models.get_model_weights(name)
    choices = [w.name for w in enum]
    if weights == "DEFAULT":
        return enum.DEFAULT
    if weights not in choices:
        raise UserError(
            f"torchvision model {name!r} has no weights {weights!r}; choose one of "
            f"{', '.join(choices)} (or DEFAULT, or model.weights=null for random init)"
        )
    return enum[weights]


def _build_torchvision(
    name: str, num_classes: int, weights: str | None, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    import torchvision

    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    else:
        enum = _torchvision_weights(name, weights)
        try:
            model = torchvision.models.get_model(name, weights=enum, **kwargs)
        except OSError as exc:  # URLError, HTTPError, socket errors: no network or no file
            url = enum.url
            file = os.path.basename(urlparse(url).path)
            path = os.path.join(torch.hub.get_dir(), "checkpoints", file)
            raise UserError(
                f"cannot load pretrained weights {name}/{enum.name} of torchvision "
                f"({type(exc).__name__}: {_one_line(exc)}); download {url} to {path} on a machine "
                f"with internet, or set model.weights=null"
            ) from None
        if num_classes != IMAGENET_CLASSES:
            _replace_classifier(model, name, num_classes)
    if in_channels != 3:
        _adapt_input_channels(model, name, in_channels)
    unfuse_attention(model)  # ViT's fused attention: two prunable Linears per block
    return model


def _timm_weights_location(name: str) -> str:
    """Where timm looks for ``name``'s pretrained file, in words (best effort)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is not None and cfg.hf_hub_id:
        from huggingface_hub import constants

        return f"the Hugging Face hub cache {constants.HF_HUB_CACHE} (repo {cfg.hf_hub_id})"
    if cfg is not None and cfg.url:
        base = os.path.basename(urlparse(cfg.url).path)
        return f"{os.path.join(torch.hub.get_dir(), 'checkpoints', base)} (from {cfg.url})"
    return "timm's cache"


def _build_timm(
    name: str, num_classes: int, weights: str | None, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    if weights not in (None, "DEFAULT"):
        raise UserError(
            f"timm model {name!r}: model.weights must be null or DEFAULT (pick pretrained weights "
            f"by tag in the name, e.g. resnet18.a1_in1k), got {weights!r}"
        )
    pretrained = weights is not None
    if pretrained:
        cfg = get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise UserError(
                f"timm model {name!r} has no pretrained weights; set model.weights=null "
                f"or pick a tag from timm.list_pretrained()"
            )
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except OSError as exc:  # huggingface_hub / urllib errors all derive from OSError
        if not pretrained:
            raise
        raise UserError(
            f"cannot load pretrained weights of timm model {name!r} "
            f"({type(exc).__name__}: {_one_line(exc)}); download them into "
            f"{_timm_weights_location(name)} on a machine with internet and copy that cache here, "
            f"or set model.weights=null"
        ) from None


def _check_timm_name(name: str) -> bool:
    """Whether ``name`` is a timm architecture, or architecture.tag with a known tag."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        return False
    return not tag or name in timm.list_pretrained(f"{arch}.*")


def torchvision_model(
    name: str, num_classes: int = 1000, weights: str | None = None
) -> nn.Module:
    """A torchvision classification model by name (``resnet50``, ``vgg16_bn``, ...).

    Args:
        name: a name from ``torchvision.models.list_models(module=torchvision.models)``.
        num_classes: outputs of the classifier; with ``weights`` and a value other than 1000,
            the ImageNet weights are loaded and then the final classifier is replaced.
        weights: ``None`` (random initialisation), a weights enum name of this model
            (``"IMAGENET1K_V1"``: named explicitly, so a new torchvision release cannot change
            the starting point), or ``"DEFAULT"``. Loaded from the torch hub cache, else
            downloaded.

    Raises:
        UserError: unknown name or weights, or weights that cannot be fetched (one line, with
            the fix).
    """
    if name not in torchvision_names():
        raise _unknown(name, torchvision_names(), "torchvision")
    return _build_torchvision(name, num_classes, weights, in_channels=3, kwargs={})


def named_model(
    name: str,
    source: str = "auto",
    num_classes: int = 1000,
    weights: str | None = None,
    in_channels: int = 3,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Any torchvision or timm classification model by name.

    Args:
        name: model name; for timm an architecture, optionally with a pretrained tag
            (``resnet18.a1_in1k``).
        source: ``"torchvision"``, ``"timm"`` or ``"auto"`` (torchvision if it has the name, else
            timm).
        num_classes: classifier outputs (pretrained heads are replaced when not 1000).
        in_channels: input channels; torchvision models get their first conv replaced
            (pretrained RGB filters summed / tiled), timm adapts natively.
        weights: ``None`` (random initialisation), ``"DEFAULT"`` (the library's default, for
            timm the name's pretrained tag), or a torchvision weights enum name.
        kwargs: more keyword arguments of the model's constructor (e.g. ``img_size`` and
            ``patch_size`` of a timm ViT for small inputs).

    Raises:
        UserError: unknown source or name (with up to 3 close matches), weights that cannot be
            fetched; always one line.
    """
    if source not in SOURCES:
        raise UserError(f"unknown model source {source!r}; choose one of {', '.join(SOURCES)}")
    kwargs = dict(kwargs or {})
    if source in ("auto", "torchvision") and name in torchvision_names():
        return _build_torchvision(name, num_classes, weights, in_channels, kwargs)
    if source in ("auto", "timm") and _check_timm_name(name):
        return _build_timm(name, num_classes, weights, in_channels, kwargs)
    tags = _timm_tags(name) if source != "torchvision" else []
    if tags:  # a known timm architecture with an unknown pretrained tag: suggest its tags
        raise _unknown(name, tags, "timm's pretrained tags")
    candidates = {
        "torchvision": torchvision_names,
        "timm": timm_names,
        "auto": lambda: torchvision_names() + timm_names(),
    }[source]()
    where = "torchvision or timm" if source == "auto" else source
    raise _unknown(name, candidates, where)


def _timm_tags(name: str) -> list[str]:
    """Pretrained ``arch.tag`` names of ``name``'s architecture, to suggest for a bad tag."""
    import timm
    from timm.models import split_model_name_tag

    arch, tag = split_model_name_tag(name)
    return timm.list_pretrained(f"{arch}.*") if tag and timm.is_model(arch) else []
