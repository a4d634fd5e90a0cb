"""The book's models, written from scratch and state_dict-compatible with torchvision.

* :mod:`.vgg`: ``vgg16``, ``vgg16_bn`` and the generic ``VGG`` built from a config list.
  Taught in: chapters/03_vgg16.ipynb
* :mod:`.resnet`: ``resnet18``, ``resnet34``, ``resnet50`` (``resnet18d``, ``resnet50d``: ResNet-D;
  ``seresnet18d``, ``seresnet50d``: with ``SqueezeExcite`` gates; ``seresnext50d``: and ResNeXt's
  grouped convolutions; ``saresnet18d``: with a ``SelfAttention`` layer)
  and ``ResNet`` with its ``BasicBlock`` / ``Bottleneck`` blocks. Taught in: chapters/04_resnet.ipynb
* :mod:`.segmentation`: ``FCN`` (FCN-32s / FCN-8s head on a backbone), ``segmentation_loss``
  (masks are drawn by ``imagenet_book.viz.colorize_mask`` / ``overlay_mask``).
  Taught in: chapters/09_segmentation_voc.ipynb
* :mod:`.summary`: ``layer_table`` / ``format_table``, per-layer shapes, parameters and MACs.
  Taught in: chapters/03_vgg16.ipynb

With default options every model is exactly torchvision's architecture: the same parameter
names and shapes, so ``ours.load_state_dict(torchvision_model.state_dict(), strict=True)`` works
and the outputs match.
"""

from .backbone import BackboneClassifier, ResNetBackbone
from .efficientnet_lite import (EfficientNetLite, EfficientNetLiteBackbone, convert_lite_state_dict,
                               efficientnet_lite0)
from .resnet import (BasicBlock, Bottleneck, ResNet, SelfAttention, SqueezeExcite, resnet18, resnet18d, resnet34,
                     resnet50, resnet50d, saresnet18d, seresnet18d, seresnet50d, seresnext50d)
from .segmentation import FCN, FCNHead, segmentation_loss
from .summary import LayerRow, LayerTable, format_table, layer_table
from .vgg import VGG, VGG16_CFG, make_features, vgg16, vgg16_bn

__all__ = [
    "VGG",
    "BackboneClassifier",
    "EfficientNetLite",
    "EfficientNetLiteBackbone",
    "convert_lite_state_dict",
    "efficientnet_lite0",
    "ResNetBackbone",
    "VGG16_CFG",
    "BasicBlock",
    "FCN",
    "FCNHead",
    "Bottleneck",
    "LayerRow",
    "LayerTable",
    "ResNet",
    "format_table",
    "layer_table",
    "make_features",
    "resnet18",
    "resnet18d",
    "resnet34",
    "resnet50",
    "resnet50d",
    "SelfAttention",
    "SqueezeExcite",
    "saresnet18d",
    "seresnet18d",
    "seresnet50d",
    "seresnext50d",
    "segmentation_loss",
    "vgg16",
    "vgg16_bn",
]
