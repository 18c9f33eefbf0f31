"""Model zoo: prunable layer / weight / MAC counts, shapes, named torchvision / timm models."""

from __future__ import annotations

import functools
import urllib.error

import pytest
import torch
from torch import nn

from conftest import CONF
from rdprune import models
from rdprune.errors import UserError
from rdprune.pruning.flops import layer_macs
from rdprune.pruning.layers import find_prunable

CIFAR = (1, 3, 32, 32)
# name -> (factory, example input shape, prunable layers, prunable weights, dense MACs or None)
COUNTS = {
    "resnet32": (models.resnet32, CIFAR, 34, 464_432, 69.1e6),
    "resnet32_A": (functools.partial(models.resnet32, shortcut="A"), CIFAR, 32, 461_872, 68.9e6),
    "vgg16": (models.vgg16, CIFAR, 14, 14_715_584, 313.2e6),
    "densenet121": (models.densenet121, CIFAR, 121, 969_288, 125.3e6),
    "efficientnet_b0": (models.efficientnet_b0, CIFAR, 81, 3_549_792, 30.3e6),
    "lenet5": (models.lenet5, (1, 1, 28, 28), 4, 430_500, None),
    "resnet50": (
        functools.partial(models.torchvision_model, "resnet50"),
        (1, 3, 224, 224), 54, 25_502_912, 4.09e9,
    ),
    # vgg16_bn pools adaptively to 7x7, so a small input finds the same layers cheaply.
    "vgg16_bn": (
        functools.partial(models.torchvision_model, "vgg16_bn"), CIFAR, 16, 138_344_128, None
    ),
}

#: the image models (a language model, hf_lm, runs on dataset=text: tests/test_lm.py)
IMAGE_MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                      if not p.stem.startswith("hf_lm"))


@functools.cache
def built(key: str) -> tuple[nn.Module, dict[str, nn.Module], torch.Tensor]:
    """Each model is built (and its prunable layers found) once per test session."""
    factory, shape = COUNTS[key][:2]
    torch.manual_seed(0)
    model = factory()
    example = torch.randn(shape)
    return model, find_prunable(model, example), example


@pytest.mark.parametrize("key", list(COUNTS))
def test_prunable_layer_and_weight_counts(key):
    _, layers, _ = built(key)
    assert len(layers) == COUNTS[key][2]
    assert sum(m.weight.numel() for m in layers.values()) == COUNTS[key][3]


@pytest.mark.parametrize("key", [k for k, v in COUNTS.items() if v[4] is not None])
def test_dense_macs(key):
    model, layers, example = built(key)
    macs = sum(layer_macs(model, example, list(layers)).values())
    assert macs == pytest.approx(COUNTS[key][4], rel=0.01)


@pytest.mark.parametrize(
    "key", ["resnet32", "vgg16", "densenet121", "efficientnet_b0", "lenet5", "resnet50"]
)
def test_layers_listed_stem_first_classifier_last(key):
    _, layers, _ = built(key)
    modules = list(layers.values())
    assert isinstance(modules[0], nn.Conv2d) and modules[0].in_channels == COUNTS[key][1][1]
    assert isinstance(modules[-1], nn.Linear)


def test_efficientnet_defined_but_unused_conv_is_not_prunable():
    model, layers, _ = built("efficientnet_b0")
    defined = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(defined) == 82
    # The first block (expansion 1) defines its 1x1 expand conv but its forward skips it.
    assert set(defined) - set(layers) == {"layers.0.conv1"}
    assert model.layers[0].expansion == 1 and isinstance(model.layers[0].conv1, nn.Conv2d)


# (factory, input side): CIFAR nets with adaptive pooling run on small inputs; VGG needs 32.
SHAPE_CASES = {
    "resnet32": (models.resnet32, 8),
    "resnet32_A": (functools.partial(models.resnet32, shortcut="A"), 8),
    "resnet20": (functools.partial(models.cifar_resnet, 20), 16),
    "vgg16": (models.vgg16, 32),
    "densenet121": (models.densenet121, 8),
    "efficientnet_b0": (models.efficientnet_b0, 8),
    "lenet5": (models.lenet5, 28),
    "lenet5_32": (functools.partial(models.lenet5, image_size=32), 32),
}


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("key", list(SHAPE_CASES))
def test_output_shape(key, in_channels):
    factory, side = SHAPE_CASES[key]
    model = factory(num_classes=7, in_channels=in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, side, side))
    assert out.shape == (2, 7)


def test_efficientnet_trains_with_drop_connect():
    torch.manual_seed(0)
    model = models.efficientnet_b0(num_classes=3).train()
    assert model.layers[-2].drop_rate == pytest.approx(0.2 * 14 / 16)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_arguments():
    with pytest.raises(UserError, match="6n\\+2"):
        models.cifar_resnet(33)
    with pytest.raises(UserError, match="shortcut"):
        models.resnet32(shortcut="B")


def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_named_model_torchvision_and_timm():
    import timm
    import torchvision

    x = torch.randn(1, 1, 32, 32)
    tv = models.named_model("resnet18", num_classes=5, in_channels=1).eval()
    assert isinstance(tv, torchvision.models.ResNet)
    assert tv(x).shape == (1, 5)

    small = next(n for n in ("resnet10t", "test_resnet", "resnet18") if timm.is_model(n))
    tm = models.named_model(small, source="timm", num_classes=5, in_channels=1).eval()
    assert type(tm).__module__.startswith("timm.")
    assert tm(x).shape == (1, 5)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: models.named_model("resnet181"), "resnet18"),
        (lambda: models.named_model("resnet18.a1_in1kk", source="timm"), "resnet18.a1_in1k"),
        (lambda: models.torchvision_model("resnet5O"), "resnet50"),
        (lambda: models.named_model("resnet18", source="hub"), "auto, torchvision, timm"),
    ],
)
def test_unknown_names_are_one_line_user_errors(call, expected):
    with pytest.raises(UserError) as exc_info:
        call()
    assert expected in _one_line(exc_info)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and empty caches, whatever the machine: downloads raise like urllib does."""

    def no_download(url, *args, **kwargs):
        raise urllib.error.URLError(f"network disabled in tests: {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # A torch.hub.set_dir() made elsewhere would shadow TORCH_HOME.
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    try:
        from huggingface_hub import constants
    except ImportError:
        pass
    else:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_torchvision_pretrained_offline_is_one_line_user_error(offline):
    with pytest.raises(UserError) as exc_info:
        models.torchvision_model("resnet18", weights="IMAGENET1K_V1")
    msg = _one_line(exc_info)
    assert "resnet18" in msg and "model.weights=null" in msg
    assert str(offline / "hub" / "checkpoints") in msg


def test_named_model_pretrained_offline_is_one_line_user_error(offline):
    with pytest.raises(UserError) as exc_info:
        models.named_model("resnet18", source="auto", weights="DEFAULT")
    assert "model.weights=null" in _one_line(exc_info)
    with pytest.raises(UserError) as exc_info:
        models.named_model("resnet18.a1_in1k", source="timm", weights="DEFAULT")
    msg = _one_line(exc_info)
    assert "resnet18.a1_in1k" in msg and "model.weights=null" in msg


def test_pretrained_from_cache_replaces_classifier_and_adapts_input(offline):
    """A checkpoint already in the torch hub cache loads offline; the head is then replaced."""
    import torchvision

    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    ckpt = offline / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, ckpt)

    model = models.named_model("resnet18", num_classes=10, weights="DEFAULT", in_channels=1)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(model.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert model.fc.out_features == 10
    assert model.eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_paper_weights_are_the_original_torchvision_releases():
    """ResNet-50 and VGG-16-BN start from torchvision's original weights (the paper's dense
    76.14 / 73.37), chosen by name: DEFAULT would be ResNet-50's V2 (80.86%)."""
    import torchvision
    from hydra import compose, initialize_config_dir

    from rdprune.models.hub import _torchvision_weights

    expected = {"resnet50": ("resnet50-0676ba61.pth", 76.13),
                "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.36)}
    for name, (file, top1) in expected.items():
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
            cfg = compose("config", overrides=[f"model={name}", "dataset=imagenet"])
        assert cfg.model.weights == "IMAGENET1K_V1"
        enum = _torchvision_weights(name, cfg.model.weights)
        assert enum.url.endswith(file)
        assert enum.meta["_metrics"]["ImageNet-1K"]["acc@1"] == pytest.approx(top1)
    assert torchvision.models.ResNet50_Weights.DEFAULT.name == "IMAGENET1K_V2"  # why by name
    with pytest.raises(UserError, match="IMAGENET1K_V1"):
        _torchvision_weights("resnet50", "IMAGENET1K_V3")


def test_cifar_models_have_no_pretrained_weights():
    with pytest.raises(UserError, match="model.weights=null"):
        models.resnet32(weights="IMAGENET1K_V1")


def test_hydra_instantiate_by_target():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(
        {"_target_": "rdprune.models.densenet121", "num_classes": 100, "blocks": [1, 1, 1, 1]}
    )
    model = instantiate(cfg).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 100)


@pytest.mark.parametrize("option", IMAGE_MODELS)
def test_every_model_config_instantiates_from_the_root_config(option):
    """``instantiate(cfg.model)`` after composing conf/config.yaml, as external checks do."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("config", overrides=[f"model={option}", "dataset=cifar10"])
    if cfg.model.get("weights"):
        cfg.model.weights = None  # no download here; the offline error is tested above
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    assert cfg.model_name  # every model config names itself for outputs and W&B tags
