"""A fully convolutional network (FCN) for semantic segmentation on a pretrained backbone.

Long, Shelhamer and Darrell's FCN turns a classification network into a per-pixel classifier:

* drop global pooling and the fully connected classifier; what is left (the *backbone*) maps an
  ``(N, 3, H, W)`` image to a coarse ``(N, C, H/32, W/32)`` feature map;
* a **1x1 convolution** scores every position of that map for the ``K`` classes (a linear
  classifier applied at every pixel of the feature map);
* **upsampling** brings the ``(N, K, H/32, W/32)`` scores back to ``(N, K, H, W)``: here bilinear
  interpolation (what torchvision's FCN does; the paper's transposed convolution initialised to
  bilinear weights computes nearly the same thing and can then be learned).

That is **FCN-32s**. Stride 32 is coarse, so **FCN-8s** adds *skips*: 1x1 scores of the stride-16
(``layer3``) and stride-8 (``layer2``) features are added to the upsampled coarse scores before
the final upsampling. The skip classifiers start at zero, so training starts from FCN-32s.

The backbone is anything with the small interface of
:class:`imagenet_book.finetune.ResNetBackbone`: ``features(x) -> {"layer2": ..., "layer3": ...,
"layer4": ...}`` and ``channels`` (channels of each of those maps).

Also here: the loss (cross-entropy that ignores VOC's void label 255). Masks are drawn in VOC's
colours by :func:`imagenet_book.viz.colorize_mask` and :func:`imagenet_book.viz.overlay_mask`.

Taught in: chapters/09_segmentation_voc.ipynb
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FCN", "FCNHead", "VOID_LABEL", "bilinear_upsample_weight", "segmentation_loss"]

#: VOC's "void" label: object borders and unlabelled pixels, ignored by the loss and the metrics.
VOID_LABEL = 255


class FCNHead(nn.Module):
    """The FCN head: 1x1 convolutions that score feature maps, summed coarse-to-fine.

    Args:
        channels: ``{"layer2": C2, "layer3": C3, "layer4": C4}``: channels of the backbone's
            stride-8, -16 and -32 feature maps (only ``"layer4"`` is needed without skips).
        num_classes: ``K`` (21 for VOC: background + 20 classes).
        skips: FCN-8s (add the stride-16 and stride-8 scores) instead of FCN-32s.

    Shapes: ``{"layer4": (N, C4, h, w), ...}`` -> float32 scores ``(N, K, 4h', 4w')`` at the
    resolution of ``layer2`` (stride 8) with skips, else ``(N, K, h, w)`` (stride 32).

    Taught in: chapters/09_segmentation_voc.ipynb
    """

    def __init__(self, channels: dict[str, int], num_classes: int = 21, *, skips: bool = True) -> None:
        super().__init__()
        self.skips = skips
        self.score4 = nn.Conv2d(channels["layer4"], num_classes, kernel_size=1)
        if skips:
            self.score3 = nn.Conv2d(channels["layer3"], num_classes, kernel_size=1)
            self.score2 = nn.Conv2d(channels["layer2"], num_classes, kernel_size=1)
            for conv in (self.score3, self.score2):  # start as FCN-32s (as the paper does)
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        scores = self.score4(features["layer4"])
        if self.skips:
            for name, conv in (("layer3", self.score3), ("layer2", self.score2)):
                finer = features[name]
                scores = F.interpolate(scores, size=finer.shape[-2:], mode="bilinear",
                                       align_corners=False) + conv(finer)
        return scores


class FCN(nn.Module):
    """A backbone, an :class:`FCNHead`, and bilinear upsampling to the input's size.

    Args:
        backbone: e.g. :class:`imagenet_book.finetune.ResNetBackbone`; must have
            ``features(x) -> dict`` and ``channels`` (see the module docstring).
        num_classes: ``K`` (21 for VOC).
        skips: ``True`` for FCN-8s, ``False`` for FCN-32s.

    Shapes: float32 ``(N, 3, H, W)`` -> float32 scores (logits) ``(N, K, H, W)`` for any ``H, W``
    (odd sizes included: the upsampling targets the input's exact size).

    Attributes:
        backbone, head: the two parts; :func:`imagenet_book.finetune.finetune_param_groups`
            gives them different learning rates.

    Taught in: chapters/09_segmentation_voc.ipynb
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 21, *, skips: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = FCNHead(dict(backbone.channels), num_classes, skips=skips)
        self.num_classes, self.skips = num_classes, skips

    def forward(self, x: Tensor) -> Tensor:
        scores = self.head(self.backbone.features(x))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = VOID_LABEL) -> Tensor:
    """Per-pixel cross-entropy, averaged over the pixels that are not ``ignore_index``.

    Args:
        logits: float ``(N, K, H, W)``.
        target: int64 ``(N, H, W)`` with values in ``0 .. K-1`` or ``ignore_index``.
        ignore_index: the void label (255 for VOC): such pixels add nothing to the loss and
            get no gradient.

    Returns:
        A float scalar; ``0.0`` (still differentiable) when every pixel is void, where
        ``F.cross_entropy`` would give NaN.

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    if target.dtype != torch.int64:
        target = target.long()
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not "
                         "match: expected (N, K, H, W) and (N, H, W).")
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def bilinear_upsample_weight(channels: int, factor: int) -> Tensor:
    """Weights of a ``ConvTranspose2d(channels, channels, 2 * factor, stride=factor,
    padding=factor // 2, groups=channels)`` that upsamples by ``factor`` bilinearly (FCN's
    initialisation of its learnable upsampling).

    Returns:
        float32 ``(channels, 1, 2 * factor, 2 * factor)``: the same separable "tent" kernel
        for each channel.

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    size = 2 * factor
    centre = factor - 0.5  # the kernel's centre, between pixels for an even size
    tent = 1 - (torch.arange(size, dtype=torch.float32) - centre).abs() / factor
    return (tent[:, None] * tent[None, :]).expand(channels, 1, size, size).clone()
