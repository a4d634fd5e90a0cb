"""VGG-16 (with and without BatchNorm) from scratch, module for module the same as torchvision's.

Read it side by side with ``torchvision/models/vgg.py``: a VGG is a list of 3x3 convolutions
and 2x2 max-pools (``features``), an adaptive average pool to 7x7 (``avgpool``) and three linear
layers (``classifier``). The attribute names and the indices inside the two ``nn.Sequential``
are the same as torchvision's, so a torchvision ``state_dict`` loads with ``strict=True`` and
gives the same outputs.

One option is ours: ``small_input=True`` for 32-64 px images. After the five max-pools such an
image is 1x1 or 2x2; torchvision's ``avgpool`` would copy those few pixels out to 7x7 and feed
25,088 numbers, mostly copies, to the first linear layer (102.8M of VGG-16's 138.4M parameters).
With ``small_input`` the pool averages to 1x1 and the classifier keeps its shape (Linear, ReLU,
Dropout, Linear, ReLU, Dropout, Linear) with 512 inputs and a hidden width of 512, as CIFAR
VGGs do: 0.5M parameters in its hidden layers (plus 513 per class) instead of 119.5M.
``features`` is unchanged, so its ImageNet weights still load into it.

Taught in: chapters/03_vgg16.ipynb
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["VGG", "VGG16_CFG", "make_features", "vgg16", "vgg16_bn"]

# Configuration "D" of Simonyan & Zisserman (2015): an int is a 3x3 convolution with that many
# output channels (+ BatchNorm) + ReLU, "M" a 2x2 max-pool with stride 2.
VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                              512, 512, 512, "M", 512, 512, 512, "M"]  # fmt: skip


def make_features(cfg: list[int | str], batch_norm: bool = False) -> nn.Sequential:
    """The convolutional part of a VGG, built from a configuration list such as ``VGG16_CFG``.

    Each int ``c`` adds ``Conv2d(in, c, 3, padding=1)`` [+ ``BatchNorm2d(c)``] + ``ReLU``;
    each ``"M"`` adds ``MaxPool2d(2, 2)``. The 3x3 convolutions keep the resolution; the pools
    halve it.

    Shapes: float32 (N, 3, H, W) -> float32 (N, last int of cfg, H // 2**k, W // 2**k),
    k = number of "M" (5 for VGG-16: 224 -> 7, 64 -> 2, 32 -> 1).

    Taught in: chapters/03_vgg16.ipynb
    """
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int), f"cfg entries are ints or 'M', got {v!r}"
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """``features`` (from a config list) -> ``avgpool`` -> flatten -> ``classifier``.

    Args:
        cfg: the configuration list of ``make_features`` (its last int must be 512).
        batch_norm: a BatchNorm2d after every convolution (VGG-16-BN).
        num_classes: outputs of the last linear layer.
        dropout: probability of the two Dropout layers of the classifier.
        small_input: pool to 1x1 and use a 512-wide classifier, for 32-64 px images (see the
            module docstring). With ``False`` (default) the network is exactly torchvision's.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes), H and W >= 32.

    Taught in: chapters/03_vgg16.ipynb
    """

    def __init__(
        self,
        cfg: list[int | str],
        batch_norm: bool = False,
        num_classes: int = 1000,
        dropout: float = 0.5,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.features = make_features(cfg, batch_norm)
        pooled, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )

        # Initialisation, as torchvision does it. Convolutions: Kaiming normal with
        # mode="fan_out", i.e. std = sqrt(2 / (out_channels * 3 * 3)), which keeps the variance
        # of the gradients constant through ReLU layers in the backward pass; bias 0.
        # BatchNorm: the identity map (weight 1, bias 0). Linear: normal with std 0.01, bias 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg16(*, num_classes: int = 1000, dropout: float = 0.5, small_input: bool = False) -> VGG:
    """VGG-16: 13 convolutions + 3 linear layers; 138,357,544 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). Options: see ``VGG``.

    Taught in: chapters/03_vgg16.ipynb
    """
    return VGG(VGG16_CFG, False, num_classes, dropout, small_input)


def vgg16_bn(*, num_classes: int = 1000, dropout: float = 0.5, small_input: bool = False) -> VGG:
    """VGG-16 with a BatchNorm2d after each convolution; 138,365,992 parameters by default.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). Options: see ``VGG``.

    Taught in: chapters/03_vgg16.ipynb
    """
    return VGG(VGG16_CFG, True, num_classes, dropout, small_input)
