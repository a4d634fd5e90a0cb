"""ResNet-18/34/50 from scratch, module for module the same as torchvision's.

Read it side by side with ``torchvision/models/resnet.py``: the attribute names (``conv1``,
``bn1``, ``layer1`` ... ``layer4``, ``fc``; inside a block ``conv1``/``bn1``/.../``downsample``)
are the same, so a torchvision ``state_dict`` loads with ``strict=True`` and gives the same
outputs. ResNeXt's grouped convolutions and wide ResNet's wider bottleneck (``groups``,
``width_per_group``) are in, as torchvision has them; what is left out: the dilated option
(``replace_stride_with_dilation``) and a pluggable ``norm_layer``; the book does not use them.

Like torchvision, the bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5"), not on
the first 1x1 convolution as in the original paper.

Two options are the "ResNet-D" tweaks of He et al. (2019, "Bag of Tricks for Image Classification
with Convolutional Neural Networks"), taught with the fast recipe: ``deep_stem=True`` replaces
the 7x7 stem convolution by three 3x3 convolutions (32, 32, 64 channels; the first with stride 2),
and ``avg_down=True`` makes the downsampling shortcut average-pool 2x2 before a stride-1 1x1
convolution, instead of a stride-2 1x1 convolution that ignores three pixels out of four.
``resnet18d`` / ``resnet50d`` turn both on (the layout of timm's models of the same names).
Two more options are levers of fast.ai's Imagenette leaderboard recipe: ``se=True`` puts a
:class:`SqueezeExcite` gate in every block, ``self_attention=True`` one :class:`SelfAttention`
layer in the last block of the first stage (``saresnet18d``).

One option is ours: ``small_input=True`` swaps the ImageNet stem (7x7 convolution with stride 2,
then a 3x3 max-pool with stride 2: 224 px become 56 px) for the CIFAR stem of He et al. (3x3
convolution, stride 1, no max-pool), so that 32-64 px images are not shrunk to 8-16 px before
the first residual stage. The rest of the network is unchanged.

Taught in: chapters/04_resnet.ipynb
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "SelfAttention", "SqueezeExcite", "resnet18", "resnet18d", "resnet34",
           "resnet50", "resnet50d", "saresnet18d", "seresnet18d", "seresnet50d", "seresnext50d"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias (the BatchNorm after it has one); with ``groups``
    > 1 the channels are split into that many groups, each convolved on its own (ResNeXt).

    Shapes: (N, in_planes, H, W) -> (N, out_planes, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/04_resnet.ipynb
    """
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution with no bias: mixes channels, moves no information across pixels.

    Shapes: (N, in_planes, H, W) -> (N, out_planes, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/04_resnet.ipynb
    """
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): every channel of ``x`` scaled by a gate in (0, 1)
    computed from the whole image: ``x * sigmoid(fc2(relu(fc1(mean over H, W of x))))``, with
    ``channels // reduction`` (at least 8) channels between the two 1x1 convolutions.

    Shapes: float (N, C, H, W) -> float (N, C, H, W).

    Taught in: chapters/A2_fast_recipe.ipynb
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class SelfAttention(nn.Module):
    """fast.ai's "simple self-attention" (S. Arnaud's SimpleSelfAttention, after SAGAN's layer,
    Zhang et al., 2019), the layer of the leaderboard's Imagenette networks: every pixel's feature
    vector ``x_p`` (``C`` channels) gets ``gamma * G (W x_p)`` added, where ``G = sum_q x_q x_q^T``
    is the image's ``C x C`` Gram matrix of features (which channels fire together, anywhere in
    the image) and ``W`` a ``C x C`` 1x1 convolution. So each pixel is mixed with the whole
    image's statistics, at ``O(H W C^2)`` cost: no ``(HW)^2`` attention map. (fast.ai computes
    ``G (W x)``; ``(G W) x`` is the same product with one large matrix product fewer.)

    ``gamma`` starts at 0 (the layer starts as the identity, and training decides how much of it
    to use); ``W`` is spectrally normalised (divided by its largest singular value, estimated by
    one step of power iteration per training step:
    :func:`torch.nn.utils.parametrizations.spectral_norm`), as in fast.ai's layer, so the
    product of three ``x``-sized terms cannot blow up through ``W``.

    Shapes: float (N, C, H, W) -> float (N, C, H, W).

    Taught in: chapters/A2_fast_recipe.ipynb
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        conv = nn.Conv1d(channels, channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)
        self.conv = nn.utils.parametrizations.spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(2)                         # (N, C, HW)
        gram = flat @ flat.transpose(1, 2)          # (N, C, C): sum over pixels of x x^T
        w = self.conv.weight.squeeze(-1)            # (C, C): the 1x1 convolution's matrix, normalised
        mixed = (gram @ w) @ flat                   # (N, C, HW): G W x at every pixel, G W first (cheaper)
        return x + self.gamma * mixed.view_as(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    The block of ResNet-18 and ResNet-34. ``shortcut`` is the identity, or ``downsample``
    (1x1 convolution + BatchNorm) when the block changes the resolution or the channel count.

    Shapes: float32 (N, inplanes, H, W) -> float32 (N, planes, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/04_resnet.ipynb
    """

    expansion: int = 1  # output channels = planes * expansion

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, se: bool = False,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        if se:  # only when asked: the default block keeps torchvision's state_dict keys
            self.se = SqueezeExcite(planes)
        if attention:
            self.attention = SelfAttention(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if hasattr(self, "se"):
            out = self.se(out)
        if hasattr(self, "attention"):
            out = self.attention(out)
        identity = x if self.downsample is None else self.downsample(x)
        out += identity  # in place, as torchvision: no extra activation-sized tensor
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride here) -> 1x1 (expand x4) convolutions, plus a shortcut.

    The block of ResNet-50 and deeper: the 3x3 convolution works on ``planes`` channels while
    the block's input and output have ``4 * planes``, which is cheaper than two 3x3 convolutions
    on the wide tensor. ResNeXt (Xie et al., 2017; ``groups`` > 1) widens the 3x3 convolution to
    ``planes * width_per_group / 64 * groups`` channels and splits it into ``groups`` groups, each
    convolved on its own: ResNeXt-50 32x4d has 32 groups of 4 channels in the first stage, twice
    the width of ResNet-50's 3x3 convolution for about the same arithmetic.

    Shapes: float32 (N, inplanes, H, W)
    -> float32 (N, 4 * planes, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/04_resnet.ipynb
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None, se: bool = False,
        attention: bool = False, groups: int = 1, width_per_group: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # torchvision's rule: = planes by default
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        if se:
            self.se = SqueezeExcite(planes * self.expansion)
        if attention:
            self.attention = SelfAttention(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if hasattr(self, "se"):
            out = self.se(out)
        if hasattr(self, "attention"):
            out = self.attention(out)
        identity = x if self.downsample is None else self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A stem, four stages of residual blocks, global average pooling and one linear layer.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages, e.g. ``[2, 2, 2, 2]`` for ResNet-18.
        num_classes: outputs of the final linear layer ``fc``.
        zero_init_residual: start the last BatchNorm of every block at weight 0, so each block
            starts as the identity (Goyal et al., 2017); torchvision's option of the same name.
        small_input: CIFAR stem (3x3 convolution, stride 1, no max-pool) for 32-64 px images.
            With ``False`` (default) the network is exactly torchvision's.
        deep_stem: ResNet-D's stem: ``conv1`` is three 3x3 convolutions (3 -> 32, stride 2;
            32 -> 32; 32 -> 64) with BatchNorm and ReLU between them (``bn1`` follows as usual).
        avg_down: ResNet-D's shortcut: ``downsample`` is ``AvgPool2d(2)`` (an identity when the
            stage does not stride), then a stride-1 1x1 convolution and BatchNorm: timm's layout,
            so a timm ``resnet18d``/``resnet50d`` state_dict loads with ``strict=True``.
        se: a :class:`SqueezeExcite` gate on every block's residual branch, before the addition
            (``se`` in each block; SE-ResNet, Hu et al., 2018).
        self_attention: a :class:`SelfAttention` layer on the residual branch of the last block of
            the first stage (``layer1[-1].attention``), after its SE gate: where fast.ai's xresnet
            puts its one ``sa`` layer (1/4 of the input's side: 32 x 32 pixels at 128 px).
        groups, width_per_group: ResNeXt's grouped 3x3 convolutions in every ``Bottleneck``
            (torchvision's options of the same names; ``32, 4`` is ResNeXt-50 32x4d; ``1, 128`` is
            wide ResNet-50-2).

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). The last stage works on
    (H/32, W/32) pixels (224 -> 7), or (H/8, W/8) with ``small_input`` (32 -> 4).

    Taught in: chapters/04_resnet.ipynb
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        small_input: bool = False,
        deep_stem: bool = False,
        avg_down: bool = False,
        se: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        self_attention: bool = False,
    ) -> None:
        super().__init__()
        # Passed to the blocks only when not the default: a BasicBlock takes no such arguments.
        self.block_options = {} if (groups, width_per_group) == (1, 64) else {
            "groups": groups, "width_per_group": width_per_group}
        if self.block_options and block is not Bottleneck:
            raise ValueError("Grouped convolutions (groups, width_per_group) need the Bottleneck block, "
                             f"not {block.__name__}: ResNeXt widens the bottleneck's 3x3 convolution.")
        self.inplanes = 64  # channels entering the next block; _make_layer updates it
        self.avg_down, self.se = avg_down, se
        if small_input:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        elif deep_stem:
            self.conv1 = nn.Sequential(
                conv3x3(3, 32, stride=2), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                conv3x3(32, 32), nn.BatchNorm2d(32), nn.ReLU(inplace=True), conv3x3(32, 64))
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], attention=self_attention)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        # Initialisation, as torchvision does it. Convolutions: Kaiming normal with
        # mode="fan_out", i.e. std = sqrt(2 / (out_channels * kh * kw)), which keeps the
        # variance of the gradients constant through ReLU layers in the backward pass.
        # BatchNorm: the identity map (weight 1, bias 0). The final nn.Linear keeps PyTorch's
        # default (uniform in +-1/sqrt(in_features)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1, attention: bool = False
    ) -> nn.Sequential:
        """One stage: ``blocks`` blocks; the first may downsample (``stride``) and widen; with
        ``attention`` the last one has a :class:`SelfAttention` layer.

        Shapes: (N, self.inplanes, H, W)
        -> (N, planes * block.expansion, ceil(H / stride), ceil(W / stride)).

        Taught in: chapters/04_resnet.ipynb
        """
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            # The shortcut must match the main path's shape: a strided 1x1 projection (ResNet-D:
            # average 2x2 pixels first, so that every input pixel reaches the shortcut).
            if self.avg_down:
                pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
                downsample = nn.Sequential(pool, conv1x1(self.inplanes, planes * block.expansion),
                                           nn.BatchNorm2d(planes * block.expansion))
            else:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
        layers = [block(self.inplanes, planes, stride, downsample, se=self.se, attention=attention and blocks == 1,
                        **self.block_options)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, se=self.se, attention=attention and i == blocks - 1,
                         **self.block_options) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """ResNet-18: ``BasicBlock`` x [2, 2, 2, 2]; 11,689,512 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). Options: see ``ResNet``.

    Taught in: chapters/04_resnet.ipynb
    """
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, small_input)


def resnet34(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """ResNet-34: ``BasicBlock`` x [3, 4, 6, 3]; 21,797,672 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). Options: see ``ResNet``.

    Taught in: chapters/04_resnet.ipynb
    """
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, zero_init_residual, small_input)


def resnet50(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """ResNet-50: ``Bottleneck`` x [3, 4, 6, 3]; 25,557,032 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes). Options: see ``ResNet``.

    Taught in: chapters/04_resnet.ipynb
    """
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, small_input)


def _resnet_d(block: type[BasicBlock | Bottleneck], layers: list[int], num_classes: int, zero_init_residual: bool,
              small_input: bool, **options: Any) -> ResNet:
    """ResNet-D (``deep_stem``, unless ``small_input`` asks for the CIFAR stem, and ``avg_down``);
    ``options``: ``ResNet``'s ``se``, ``groups``, ``width_per_group``, ``self_attention``."""
    return ResNet(block, layers, num_classes, zero_init_residual, small_input, deep_stem=not small_input,
                  avg_down=True, **options)


def resnet18d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """ResNet-18-D: ResNet-18 with the deep stem and the average-pooling shortcut (``ResNet``'s
    ``deep_stem`` and ``avg_down``); 11,708,744 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, small_input)


def resnet50d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """ResNet-50-D: ResNet-50 with the deep stem and the average-pooling shortcut (``ResNet``'s
    ``deep_stem`` and ``avg_down``); 25,576,264 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, small_input)


def saresnet18d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """SA-ResNet-18-D: ResNet-18-D with one :class:`SelfAttention` layer in the last block of the
    first stage (``ResNet``'s ``self_attention``), where fast.ai's xresnet18 has it with ``sa=True``;
    11,712,841 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, small_input, self_attention=True)


def seresnet18d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """SE-ResNet-18-D: ResNet-18-D with a :class:`SqueezeExcite` gate in every block (``ResNet``'s
    ``se``); 11,798,856 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(BasicBlock, [2, 2, 2, 2], num_classes, zero_init_residual, small_input, se=True)


def seresnet50d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """SE-ResNet-50-D: ResNet-50-D with a :class:`SqueezeExcite` gate in every block (``ResNet``'s
    ``se``); 28,107,256 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, small_input, se=True)


def seresnext50d(
    *, num_classes: int = 1000, zero_init_residual: bool = False, small_input: bool = False
) -> ResNet:
    """SE-ResNeXt-50-D (32x4d): SE-ResNet-50-D with ResNeXt's grouped 3x3 convolutions, 32 groups of
    4 channels in the first stage (``ResNet``'s ``groups`` and ``width_per_group``): the network of
    fast.ai's best five-epoch Imagenette entries (their ``xse_resnext50``, less its self-attention);
    27,579,128 parameters with the defaults.

    Shapes: float32 (N, 3, H, W) -> float32 logits (N, num_classes).

    Taught in: chapters/A2_fast_recipe.ipynb
    """
    return _resnet_d(Bottleneck, [3, 4, 6, 3], num_classes, zero_init_residual, small_input, se=True,
                     groups=32, width_per_group=4)
