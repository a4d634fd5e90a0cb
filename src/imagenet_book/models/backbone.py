"""Backbones and heads for transfer learning: a ResNet without its classifier, and a new
classification head on any backbone.

:class:`ResNetBackbone` shares the modules of a :class:`~imagenet_book.models.resnet.ResNet` and
keeps its parameter names, so a pretrained ResNet ``state_dict`` (without ``fc``) loads into it
strictly. The detection and segmentation networks (:mod:`~imagenet_book.models.detection`,
:mod:`~imagenet_book.models.segmentation`) build on its ``features`` and ``channels``.

Taught in: chapters/07_finetune_voc_classification.ipynb
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BackboneClassifier", "ResNetBackbone"]


class ResNetBackbone(nn.Module):
    """A ResNet without its classifier: the stem and the four stages, nothing after ``layer4``.

    Built from a :class:`~imagenet_book.models.ResNet`, sharing its modules; the parameter names
    are the ResNet's (``conv1.weight``, ``layer1.0.bn1.bias``, ...) minus ``fc.*``, so a ResNet
    ``state_dict`` without ``fc`` loads into it with ``strict=True``.

    Shapes: float32 ``(N, 3, H, W)`` -> ``forward``: ``(N, out_channels, ceil(H/32), ceil(W/32))``
    (stride 8 with the small-input stem); ``features``: ``{"layer1": stride 4, "layer2": 8,
    "layer3": 16, "layer4": 32}`` maps (strides of the standard stem).

    Attributes:
        out_channels: channels of the last map (512 for ResNet-18/34, 2048 for ResNet-50).
        channels: ``{"layer1": 64, ..., "layer4": out_channels}``.
        arch, small_input: what it is; ``pretrained``: whether the weights came from a
            checkpoint; ``checkpoint``: that file (``None`` for random weights);
        img_size: image side the checkpoint was pretrained at (``None`` for random weights).
        input_mean, input_std: the normalisation its inputs take (ImageNet's, as the book
            pretrains with; an EfficientNet-Lite backbone has its own).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, resnet: nn.Module, *, arch: str = "resnet18", small_input: bool = False,
                 checkpoint: Path | None = None, img_size: int | None = None) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))
        self.channels = {name: _out_channels(getattr(self, name))
                         for name in ("layer1", "layer2", "layer3", "layer4")}
        self.out_channels = self.channels["layer4"]
        self.arch, self.small_input = arch, small_input
        self.checkpoint, self.img_size = checkpoint, img_size
        self.pretrained = checkpoint is not None
        self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD  # what its inputs are normalised with

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The output of each stage, ``{"layer1": ..., "layer4": ...}`` (for FCN skips)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _out_channels(stage: nn.Sequential) -> int:
    convs = [m for m in stage.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class BackboneClassifier(nn.Module):
    """A backbone with a new head: global average pooling and one linear layer.

    Shapes: float32 ``(N, 3, H, W)`` -> logits ``(N, num_classes)`` (for VOC, 20 independent
    "is this class in the image?" scores).

    Attributes:
        backbone: e.g. a :class:`ResNetBackbone` (anything with ``out_channels``).
        head: ``Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(out_channels, num_classes))``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 20) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))
