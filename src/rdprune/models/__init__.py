"""The model zoo: CIFAR / MNIST networks of the paper and ADMM, plus torchvision / timm by name.

Every factory builds from a config by keyword arguments (``_target_: rdprune.models.resnet32``)
and takes ``num_classes`` (``in_channels`` too, except ``torchvision_model``). Modules are defined
in forward order, so :func:`rdprune.pruning.layers.find_prunable` lists layers stem first, classifier last.

| factory | prunable layers | prunable weights | MACs / sample |
|---|---|---|---|
| ``resnet32()`` (32x32) | 34 | 464,432 | 69.1 M |
| ``resnet32(shortcut="A")`` | 32 | 461,872 | 68.9 M |
| ``vgg16()`` (32x32) | 14 | 14,715,584 | 313.2 M |
| ``densenet121()`` (32x32) | 121 | 969,288 | 125.3 M |
| ``efficientnet_b0()`` (32x32) | 81 | 3,549,792 | 30.3 M |
| ``lenet5()`` (28x28x1) | 4 | 430,500 | 2.29 M |
| ``torchvision_model("resnet50")`` (224x224) | 54 | 25,502,912 | 4.09 G |
"""

from rdprune.models.densenet_cifar import densenet121
from rdprune.models.efficientnet_cifar import efficientnet_b0
from rdprune.models.hub import named_model, torchvision_model
from rdprune.models.lenet import lenet5
from rdprune.models.lm import CausalLM, causal_lm
from rdprune.models.resnet_cifar import cifar_resnet, resnet32
from rdprune.models.vgg_cifar import vgg16

__all__ = [
    "CausalLM",
    "causal_lm",
    "cifar_resnet",
    "densenet121",
    "efficientnet_b0",
    "lenet5",
    "named_model",
    "resnet32",
    "torchvision_model",
    "vgg16",
]
