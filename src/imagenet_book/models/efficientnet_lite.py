"""EfficientNet-Lite0 ... Lite4 from scratch: MBConv blocks without squeeze-excitation, ReLU6.

EfficientNet-Lite (Google, 2020) is EfficientNet-B0 made friendly to mobile accelerators and
integer quantisation: no squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels)
and head (1280 channels) that stay fixed when the network is scaled up. The network is

* ``stem``: 3x3 convolution with stride 2 to 32 channels, BatchNorm, ReLU6;
* ``stages``: seven stages of inverted residual ("MBConv") blocks, the table of the EfficientNet
  paper (:data:`LITE_STAGES`); a block widens its input ``expand_ratio`` times with a 1x1
  convolution, filters each channel on its own with a 3x3 or 5x5 depthwise convolution (the
  stride is here), and projects back down with a 1x1 convolution *without* an activation;
  the input is added back when the shapes allow;
* ``head``: 1x1 convolution to 1280 channels, BatchNorm, ReLU6;
* global average pooling, dropout and one linear layer ``fc``.

Lite1 ... Lite4 multiply the channels by ``width`` and the blocks per stage by ``depth``
(:data:`LITE_CONFIGS`), except the stem, the head, and the first and last stage's block counts.

**Padding as TensorFlow pads.** The weights were trained in TensorFlow with ``padding="SAME"``:
a stride-2 convolution on an even-sized input pads one pixel less on the top/left than on the
bottom/right (3x3: 0 and 1). PyTorch's ``padding=1`` pads both sides equally, which moves the
sampling grid by one pixel and costs the pretrained network accuracy. :class:`Conv2dSame` pads
as TensorFlow does for any input size (:func:`same_padding`); stride-1 convolutions pad
symmetrically, which is the same in both frameworks.

**Input convention.** The ImageNet-1k weights (:mod:`imagenet_book.imagenet1k`) expect RGB
values scaled to ``[-1, 1]`` (``x * 2 - 1`` for ``x`` in ``[0, 1]``), i.e. normalised with
:data:`LITE_MEAN` ``= (0.5, 0.5, 0.5)`` and :data:`LITE_STD` ``= (0.5, 0.5, 0.5)``, *not* with
ImageNet's mean and standard deviation (``imagenet_book.models.preprocessing``), which costs
them about 13 points of top-1 (``bench/imagenet1k_samples.py``).

**Parameter names.** Ours are readable (``stem.conv.weight``, ``stages.1.0.expand.bn.bias``,
``head.conv.weight``, ``fc.weight``); those of the PyPI package ``efficientnet-lite-pytorch``,
whose state_dict the weights file holds, are not (``_conv_stem.weight``,
``_blocks.1._bn0.bias``, ``_conv_head.weight``, ``_fc.weight``). The pure function
:func:`convert_lite_state_dict` renames one into the other, tensor for tensor; the result loads
into :class:`EfficientNetLite` with ``strict=True`` and gives the package network's outputs.

BatchNorm uses TensorFlow's settings: ``eps=1e-3`` (the outputs depend on it) and
``momentum=0.01`` (TensorFlow's decay 0.99).

Taught in: chapters/07_finetune_voc_classification.ipynb
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BookError

__all__ = [
    "LITE_CONFIGS", "LITE_MEAN", "LITE_STAGES", "LITE_STD", "Conv2dSame", "ConvBNAct", "EfficientNetLite",
    "EfficientNetLiteBackbone", "LiteConfig", "LiteStateDictError", "MBConv", "StageSpec",
    "convert_lite_state_dict", "efficientnet_lite", "efficientnet_lite0", "efficientnet_lite1",
    "efficientnet_lite2", "efficientnet_lite3", "efficientnet_lite4", "round_filters", "round_repeats",
    "same_padding",
]

#: Input normalisation of the ImageNet-1k weights: ``(x - 0.5) / 0.5`` maps ``[0, 1]`` to ``[-1, 1]``.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

BN_EPS = 1e-3       # TensorFlow's batch_norm_epsilon in the Lite builder
BN_MOMENTUM = 0.01  # PyTorch's momentum = 1 - TensorFlow's decay 0.99
STEM_CHANNELS = 32  # fixed for every Lite size
HEAD_CHANNELS = 1280  # fixed for every Lite size


class LiteStateDictError(BookError, ValueError):
    """A state_dict that is not an EfficientNet-Lite one from ``efficientnet-lite-pytorch``."""


@dataclass(frozen=True)
class StageSpec:
    """One row of the EfficientNet table: ``repeats`` MBConv blocks of one kind.

    ``stride`` belongs to the first block of the stage (the others have stride 1);
    ``channels`` are the stage's output channels before the width multiplier.
    """

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    channels: int


#: The seven stages of EfficientNet-B0 / Lite0 (input 32 channels from the stem).
LITE_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)


@dataclass(frozen=True)
class LiteConfig:
    """Width and depth multipliers, the training resolution and the dropout of one Lite size."""

    width: float
    depth: float
    resolution: int
    dropout: float


#: From ``efficientnet_lite_builder.py`` of the TensorFlow reference implementation.
LITE_CONFIGS: dict[str, LiteConfig] = {
    "efficientnet_lite0": LiteConfig(1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": LiteConfig(1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": LiteConfig(1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": LiteConfig(1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": LiteConfig(1.4, 1.8, 300, 0.3),
}

#: How many of the seven stages have run when each feature map is taken (``layer4`` adds the head).
FEATURE_STAGES = {"layer1": 2, "layer2": 3, "layer3": 5, "layer4": 7}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never more than 10% below.

    The TensorFlow rule: ``round_filters(112, 1.1) == 120``, ``round_filters(40, 1.1) == 48``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Blocks of a stage after the depth multiplier: ``ceil(repeats * depth)``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return int(math.ceil(repeats * depth))


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``"SAME"`` padding of one spatial dimension: (before, after).

    The output has ``ceil(size / stride)`` pixels; the total padding that needs is split with the
    extra pixel *after*: ``same_padding(224, 3, 2) == (0, 1)``, ``same_padding(225, 3, 2) == (1, 1)``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's ``padding="SAME"`` (see :func:`same_padding`).

    With stride 1 the padding is symmetric (``kernel // 2``), as PyTorch's ``padding``; with
    stride 2 it is computed from the input's size in ``forward``, one pixel more after than
    before when TensorFlow does so. Same parameters as ``nn.Conv2d`` (``weight`` only).

    Shapes: float32 (N, in_channels, H, W)
    -> float32 (N, out_channels, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1) -> None:
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] > 1:
            top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class ConvBNAct(nn.Module):
    """``act(bn(conv(x)))``: a :class:`Conv2dSame`, BatchNorm (eps 1e-3) and ReLU6 (or nothing).

    Args:
        groups: ``in_channels`` for a depthwise convolution (one filter per channel).
        act: ``False`` for the linear projection at the end of an MBConv block.

    Shapes: float32 (N, in_channels, H, W)
    -> float32 (N, out_channels, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = Conv2dSame(in_channels, out_channels, kernel_size, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth ("drop connect"): zero a whole sample's branch with probability ``p``.

    The surviving samples are scaled by ``1 / (1 - p)``, so the expected output is unchanged;
    in evaluation (``training=False``) or with ``p == 0`` it returns ``x``. Shapes: unchanged.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.floor(keep + torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device))
    return x / keep * mask


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: expand, depthwise, project (+ input).

    ``expand``: 1x1 convolution to ``in_channels * expand_ratio`` channels, BN, ReLU6 (absent,
    ``None``, when ``expand_ratio == 1``); ``depthwise``: ``kernel`` x ``kernel`` convolution
    of each channel on its own, with the block's stride, BN, ReLU6; ``project``: 1x1
    convolution to ``out_channels``, BN, no activation (a "linear bottleneck"). When
    ``stride == 1`` and ``in_channels == out_channels`` the input is added to the result,
    whose branch stochastic depth drops with probability ``drop_rate`` during training.

    Shapes: float32 (N, in_channels, H, W)
    -> float32 (N, out_channels, ceil(H / stride), ceil(W / stride)).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand_ratio: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, act=False)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.project(self.depthwise(out))
        if self.use_residual:
            out = drop_path(out, self.drop_rate, self.training) + x
        return out


class EfficientNetLite(nn.Module):
    """Stem, seven stages of :class:`MBConv` blocks, head, pooling, dropout and ``fc``.

    Args:
        width, depth: multipliers of the channels and of the blocks per stage (1.0 for Lite0).
        dropout: before ``fc`` (0.2 for Lite0).
        drop_connect_rate: stochastic depth of the residual blocks during training, growing
            linearly from 0 at the first block to ``drop_connect_rate * (n - 1) / n`` at the last.
        num_classes: outputs of ``fc``.
        resolution: the image side the network was designed for (224 for Lite0); recorded only,
            any input size works.

    Shapes: float32 (N, 3, H, W) normalised with :data:`LITE_MEAN` / :data:`LITE_STD` (that is,
    in ``[-1, 1]``) -> float32 logits (N, num_classes). The head works on
    (ceil(H/32), ceil(W/32)) pixels (224 -> 7).

    Attributes:
        input_mean, input_std: :data:`LITE_MEAN`, :data:`LITE_STD`, the normalisation the
            ImageNet-1k weights expect.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(self, width: float = 1.0, depth: float = 1.0, *, dropout: float = 0.2,
                 drop_connect_rate: float = 0.2, num_classes: int = 1000, resolution: int = 224) -> None:
        super().__init__()
        self.resolution = resolution
        self.stem = ConvBNAct(3, STEM_CHANNELS, kernel_size=3, stride=2)
        last = len(LITE_STAGES) - 1
        repeats = [s.repeats if i in (0, last) else round_repeats(s.repeats, depth)
                   for i, s in enumerate(LITE_STAGES)]
        total, index = sum(repeats), 0
        in_channels = STEM_CHANNELS
        stages = []
        for spec, n in zip(LITE_STAGES, repeats):
            out_channels = round_filters(spec.channels, width)
            blocks = []
            for j in range(n):
                blocks.append(MBConv(in_channels, out_channels, spec.kernel, spec.stride if j == 0 else 1,
                                     spec.expand_ratio, drop_connect_rate * index / total))
                in_channels, index = out_channels, index + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ConvBNAct(in_channels, HEAD_CHANNELS)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(HEAD_CHANNELS, num_classes)

        # Initialisation as torchvision's EfficientNet: convolutions Kaiming normal (fan_out),
        # BatchNorm the identity, the linear layer uniform in +-1/sqrt(num_classes).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.stages(self.stem(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


class EfficientNetLiteBackbone(nn.Module):
    """An :class:`EfficientNetLite` without pooling, dropout and ``fc``: where a ResNetBackbone stands.

    Shares the modules ``stem``, ``stages`` and ``head`` of the network it is built from, with
    their parameter names, so an EfficientNetLite ``state_dict`` without ``fc.*`` loads into it
    with ``strict=True``. Usable by :class:`~imagenet_book.models.BackboneClassifier`,
    :class:`~imagenet_book.models.FCN` and the detector, like
    :class:`~imagenet_book.models.ResNetBackbone`; normalise its inputs with
    ``input_mean`` / ``input_std`` (:data:`LITE_MEAN`, :data:`LITE_STD` for the ImageNet-1k weights).

    Shapes: float32 ``(N, 3, H, W)`` -> ``forward``: ``(N, 1280, ceil(H/32), ceil(W/32))``;
    ``features``: ``{"layer1": stride 4, "layer2": 8, "layer3": 16, "layer4": 32}`` maps, the
    outputs of stages 2, 3 and 5 (of 7, counting from 1) and of the head (:data:`FEATURE_STAGES`).

    Attributes:
        channels: ``{"layer1": 24, "layer2": 40, "layer3": 112, "layer4": 1280}`` for Lite0.
        out_channels: 1280 (the head's channels). ``small_input``: ``False`` (the stem always
            has stride 2). ``arch``, ``checkpoint`` (the weights file or ``None``),
            ``pretrained`` (``checkpoint is not None``), ``img_size`` (the pretraining
            resolution, ``None`` for random weights), ``input_mean``, ``input_std``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    small_input = False

    def __init__(self, net: EfficientNetLite, *, arch: str = "efficientnet_lite0", checkpoint: Path | None = None,
                 img_size: int | None = None) -> None:
        super().__init__()
        self.stem, self.stages, self.head = net.stem, net.stages, net.head
        self.channels = {name: _stage_out_channels(self.stages[n - 1]) for name, n in FEATURE_STAGES.items()}
        self.channels["layer4"] = self.out_channels = self.head.conv.out_channels
        self.input_mean, self.input_std = net.input_mean, net.input_std
        self.arch, self.checkpoint, self.img_size = arch, checkpoint, img_size
        self.pretrained = checkpoint is not None

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """The maps at strides 4, 8, 16 and 32, ``{"layer1": ..., "layer4": ...}`` (see the class)."""
        x = self.stem(x)
        out, done = {}, 0
        for name, n in FEATURE_STAGES.items():
            for stage in self.stages[done:n]:
                x = stage(x)
            done = n
            out[name] = x
        out["layer4"] = self.head(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


def _stage_out_channels(stage: nn.Sequential) -> int:
    return stage[-1].project.conv.out_channels


def efficientnet_lite(name: str = "efficientnet_lite0", *, num_classes: int = 1000,
                      drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """The Lite size ``name`` (a key of :data:`LITE_CONFIGS`) with random weights.

    Shapes: float32 (N, 3, H, W) in ``[-1, 1]`` -> float32 logits (N, num_classes).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if name not in LITE_CONFIGS:
        raise ValueError(f"Unknown EfficientNet-Lite size {name!r}; one of {sorted(LITE_CONFIGS)}.")
    c = LITE_CONFIGS[name]
    return EfficientNetLite(c.width, c.depth, dropout=c.dropout, drop_connect_rate=drop_connect_rate,
                            num_classes=num_classes, resolution=c.resolution)


def efficientnet_lite0(*, num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite0: 4,652,008 parameters with the defaults (4,694,073 state_dict numbers
    with the BatchNorm statistics); 224 px. Shapes: see :class:`EfficientNetLite`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return efficientnet_lite("efficientnet_lite0", num_classes=num_classes, drop_connect_rate=drop_connect_rate)


def efficientnet_lite1(*, num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite1 (depth x1.1, 240 px). Shapes: see :class:`EfficientNetLite`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return efficientnet_lite("efficientnet_lite1", num_classes=num_classes, drop_connect_rate=drop_connect_rate)


def efficientnet_lite2(*, num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite2 (width x1.1, depth x1.2, 260 px). Shapes: see :class:`EfficientNetLite`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return efficientnet_lite("efficientnet_lite2", num_classes=num_classes, drop_connect_rate=drop_connect_rate)


def efficientnet_lite3(*, num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite3 (width x1.2, depth x1.4, 280 px). Shapes: see :class:`EfficientNetLite`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return efficientnet_lite("efficientnet_lite3", num_classes=num_classes, drop_connect_rate=drop_connect_rate)


def efficientnet_lite4(*, num_classes: int = 1000, drop_connect_rate: float = 0.2) -> EfficientNetLite:
    """EfficientNet-Lite4 (width x1.4, depth x1.8, 300 px). Shapes: see :class:`EfficientNetLite`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return efficientnet_lite("efficientnet_lite4", num_classes=num_classes, drop_connect_rate=drop_connect_rate)


# Module names of efficientnet-lite-pytorch (left) and ours (right), within a block and at the top.
_BLOCK_NAMES = {"_expand_conv": "expand.conv", "_bn0": "expand.bn", "_depthwise_conv": "depthwise.conv",
                "_bn1": "depthwise.bn", "_project_conv": "project.conv", "_bn2": "project.bn"}
_TOP_NAMES = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
              "_fc": "fc"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def convert_lite_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Rename an ``efficientnet-lite-pytorch`` state_dict to :class:`EfficientNetLite`'s names.

    A pure function: the tensors are the same objects, only the keys change, and the argument
    is not modified. ``_conv_stem`` / ``_bn0`` become ``stem.conv`` / ``stem.bn``;
    ``_conv_head`` / ``_bn1`` become ``head.conv`` / ``head.bn``; ``_fc`` becomes ``fc``; the
    package's flat list of blocks ``_blocks.i`` becomes ``stages.s.j`` (block ``j`` of stage
    ``s``), inside a block ``_expand_conv``/``_bn0`` -> ``expand.conv``/``expand.bn``,
    ``_depthwise_conv``/``_bn1`` -> ``depthwise.*``, ``_project_conv``/``_bn2`` -> ``project.*``.
    A new stage starts where a block's output channels differ from the previous block's (the
    seven stages of every Lite size have different widths), so the function needs no config.

    Raises:
        LiteStateDictError: a key that is not of an EfficientNet-Lite from that package.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    n_blocks = 1 + max((int(m.group(1)) for k in state_dict if (m := _BLOCK_KEY.fullmatch(k))), default=-1)
    where: list[tuple[int, int]] = []  # block i -> (stage, index in stage)
    previous = None
    for i in range(n_blocks):
        key = f"_blocks.{i}._project_conv.weight"
        if key not in state_dict:
            raise LiteStateDictError(f"Not an efficientnet-lite-pytorch state_dict: {key!r} is missing.")
        out = state_dict[key].shape[0]
        if out == previous:
            where.append((where[-1][0], where[-1][1] + 1))
        else:
            where.append((where[-1][0] + 1 if where else 0, 0))
        previous = out
    converted: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if m := _BLOCK_KEY.fullmatch(key):
            block, module, leaf = int(m.group(1)), m.group(2), m.group(3)
            if module not in _BLOCK_NAMES:
                raise LiteStateDictError(f"Unexpected key {key!r} (squeeze-excitation? EfficientNet-B, not Lite).")
            stage, j = where[block]
            converted[f"stages.{stage}.{j}.{_BLOCK_NAMES[module]}.{leaf}"] = value
        elif (m := _TOP_KEY.fullmatch(key)) and m.group(1) in _TOP_NAMES:
            converted[f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"] = value
        else:
            raise LiteStateDictError(f"Unexpected key {key!r}: not an efficientnet-lite-pytorch state_dict.")
    return converted
