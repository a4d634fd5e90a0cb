"""Data augmentation: the per-image ``torchvision.transforms.v2`` recipes, batch mixing, and
pictures of augmented detection and segmentation targets.

* :func:`train_transform` / :func:`eval_transform`: the per-image classification pipelines
  (the reference the book's batched pipeline, :mod:`imagenet_book.data.fast`, is measured
  against), in the shape of torchvision's ``references/classification/presets.py``: random
  resized crop, flip, optional colour jitter, RandAugment or TrivialAugment, then random erasing;
  resize and centre crop for evaluation.
* :func:`mix_transform`: mixup or cutmix, one of them per batch, as torchvision's reference
  training script does (``v2.RandomChoice([v2.MixUp(...), v2.CutMix(...)])``). Its labels are
  class probabilities ``(B, C)``, which ``torch.nn.functional.cross_entropy`` accepts as targets
  (chapter 02).
* :func:`denormalize`: undo ``Normalize`` to look at a batch.
* :func:`draw_target`: boxes (with class names) or a VOC mask drawn onto an image, for grids.

Taught in: chapters/05_augmentation.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .data.voc import VOC_CLASSES, voc_palette

__all__ = ["POLICIES", "denormalize", "draw_target", "eval_transform", "mix_transform",
           "train_transform"]

#: The automatic policies :func:`train_transform` knows, by the names torchvision's reference
#: recipes use for them.
POLICIES: dict[str, type[v2.Transform]] = {"ra": v2.RandAugment, "ta_wide": v2.TrivialAugmentWide}


def train_transform(img_size: int, *, scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5,
                    jitter: float = 0.0, policy: str | None = None, erase: float = 0.0,
                    mean: Sequence[float] | None = IMAGENET_MEAN,
                    std: Sequence[float] | None = IMAGENET_STD) -> v2.Compose:
    """The per-image training pipeline: PIL image or uint8 ``(3, H, W)`` -> float32 ``(3, S, S)``.

    In order: ``RandomResizedCrop(S, scale)``; ``RandomHorizontalFlip(hflip)``; if ``jitter``,
    ``ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(jitter / 4,
    0.5))``; if ``policy``, RandAugment (``"ra"``, 2 operations at magnitude 9) or TrivialAugment
    (``"ta_wide"``); conversion to float in ``[0, 1]``; ``Normalize(mean, std)`` (skipped when
    ``mean`` is ``None``); if ``erase``, ``RandomErasing(p=erase)`` (on the normalised tensor,
    where erased pixels become 0, the mean colour).

    Args:
        img_size: side ``S`` of the square output.
        scale: range of the crop's area as a fraction of the image's.
        hflip: probability of a horizontal flip (0: never).
        jitter: colour jitter strength (0: none).
        policy: ``None``, ``"ra"`` or ``"ta_wide"`` (:data:`POLICIES`).
        erase: probability of erasing one random rectangle (0: never).
        mean, std: per-channel normalisation (default ImageNet's).

    Returns:
        A ``v2.Compose``. Given a ``tv_tensors`` target too (``transform(image, target)``), the
        geometric steps move boxes and masks with the image.

    Taught in: chapters/05_augmentation.ipynb.
    """
    if policy is not None and policy not in POLICIES:
        raise ValueError(f"policy must be None or one of {sorted(POLICIES)}, got {policy!r}")
    ops: list[Any] = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=scale, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:
        ops.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter,
                                  hue=min(jitter / 4, 0.5)))
    if policy is not None:
        ops.append(POLICIES[policy]())
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        ops.append(v2.Normalize(mean, std))
    if erase > 0:
        ops.append(v2.RandomErasing(p=erase))
    return v2.Compose(ops)


def eval_transform(img_size: int, crop_fraction: float = 0.875, *,
                   mean: Sequence[float] | None = IMAGENET_MEAN,
                   std: Sequence[float] | None = IMAGENET_STD) -> v2.Compose:
    """The per-image evaluation pipeline: PIL image or uint8 ``(3, H, W)`` -> float32 ``(3, S, S)``.

    ``Resize(round(S / crop_fraction))`` (shorter side), ``CenterCrop(S)``, float in ``[0, 1]``,
    ``Normalize(mean, std)`` (skipped when ``mean`` is ``None``): the same view every time, the
    geometry :class:`imagenet_book.data.fast.FastLoader` uses with ``train=False``.

    Taught in: chapters/05_augmentation.ipynb.
    """
    ops: list[Any] = [v2.ToImage(), v2.Resize(round(img_size / crop_fraction), antialias=True),
                      v2.CenterCrop(img_size), v2.ToDtype(torch.float32, scale=True)]
    if mean is not None:
        ops.append(v2.Normalize(mean, std))
    return v2.Compose(ops)


def mix_transform(num_classes: int, *, mixup_alpha: float = 0.2,
                  cutmix_alpha: float = 1.0) -> v2.Transform | None:
    """Mixup or cutmix (chosen at random for each batch), applied to a whole batch.

    ``transform(X, y)`` takes ``X`` float ``(B, 3, H, W)`` (any device) and ``y`` int64 ``(B,)``
    and returns ``X`` mixed with ``X.roll(1, 0)`` and ``y`` as float32 probabilities ``(B, C)``:
    ``lam * onehot(y) + (1 - lam) * onehot(y.roll(1))``, with ``lam ~ Beta(alpha, alpha)`` (cutmix:
    the fraction of the image left unpasted). Shuffle the batch before (every loader here does).
    An alpha of 0 turns that method off; both 0 returns ``None``. Random numbers come from the
    global torch generator.

    Taught in: chapters/05_augmentation.ipynb.
    """
    choices = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
              ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
    if not choices:
        return None
    return choices[0] if len(choices) == 1 else v2.RandomChoice(choices)


def denormalize(X: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Undo ``Normalize(mean, std)``: float ``(..., 3, H, W)`` -> float in ``[0, 1]``, same shape
    (clipped), for showing a normalised batch with :func:`imagenet_book.viz.image_grid`.

    Taught in: chapters/05_augmentation.ipynb.
    """
    m = torch.tensor(mean, dtype=X.dtype, device=X.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=X.dtype, device=X.device).view(-1, 1, 1)
    return (X * s + m).clamp(0, 1)


def _voc_colour(index: int) -> tuple[int, int, int]:
    palette = voc_palette()
    return tuple(palette[3 * index:3 * index + 3])


def draw_target(image: Tensor, target: Any = None, *, class_names: Sequence[str] = VOC_CLASSES,
                width: int = 2, alpha: float = 0.55, labels: bool = True) -> Tensor:
    """Draw a detection or segmentation target onto its image, in the VOC palette's colours
    (boxes with a thin white inner edge, so that dark colours show on any background).

    Args:
        image: uint8 ``(3, H, W)`` (a ``tv_tensors.Image`` is fine).
        target: one of

            * a detection target dict (as :class:`imagenet_book.data.voc.VOCDetection` gives):
              ``"boxes"`` ``(N, 4)`` (``tv_tensors.BoundingBoxes`` in any axis-aligned format,
              or XYXY pixels), ``"labels"`` int64 ``(N,)`` in ``0 .. len(class_names) - 1``,
              optionally ``"difficult"`` bool ``(N,)`` (those names get a ``?``);
            * a mask ``(H, W)`` of class indices (:class:`~imagenet_book.data.voc.VOCSegmentation`:
              0 background, left undrawn; ``k + 1`` for class ``k``; 255 void);
            * ``None``: the image alone.
        class_names: names of the box labels.
        width: box line width in pixels.
        alpha: opacity of the mask colours.
        labels: write each box's class name in its top-left corner (white on the box colour).

    Returns:
        uint8 ``(3, H, W)``: a new tensor (the input is not changed).

    Taught in: chapters/05_augmentation.ipynb.
    """
    image = torch.as_tensor(image).as_subclass(Tensor)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}")
    if target is None:
        return image.clone()
    if isinstance(target, dict):
        boxes = target["boxes"]
        if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = v2.functional.convert_bounding_box_format(boxes, new_format="XYXY")
        boxes = torch.as_tensor(boxes).as_subclass(Tensor).reshape(-1, 4)
        if len(boxes) == 0:
            return image.clone()
        classes = torch.as_tensor(target["labels"]).tolist()
        difficult = target.get("difficult", [False] * len(classes))
        difficult = torch.as_tensor(difficult).tolist()
        names = [class_names[c] + ("?" if d else "") for c, d in zip(classes, difficult)] if labels else None
        # White under the box, one pixel wider on the inside: dark palette colours stay visible.
        image = draw_bounding_boxes(image, boxes, colors="white", width=width + 1)
        return draw_bounding_boxes(image, boxes, names, colors=[_voc_colour(c + 1) for c in classes],
                                   width=width, fill_labels=True, label_colors="white")
    mask = torch.as_tensor(target).as_subclass(Tensor)
    if mask.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the image {tuple(image.shape)}")
    mask = mask.reshape(image.shape[-2:])
    values = [v for v in mask.unique().tolist() if v != 0]
    if not values:
        return image.clone()
    layers = torch.stack([mask == v for v in values])
    return draw_segmentation_masks(image, layers, alpha=alpha, colors=[_voc_colour(v) for v in values])
