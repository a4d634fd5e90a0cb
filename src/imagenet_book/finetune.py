"""Fine-tuning a pretrained backbone on PASCAL VOC: the core shared by classification,
detection and segmentation, and the classification and segmentation runs themselves.

Every task follows the same four steps::

    backbone = backbone_from_checkpoint(path)             # chapter 06's ResNet, without its fc
    net = BackboneClassifier(backbone, 20)                # or FCN(backbone, 21), or a detector
    groups = finetune_param_groups(net, lr=lr)            # head at lr, backbone at lr / 10
    ... train with the task's loss, evaluate with the task's metric

and three **modes** compare what pretraining buys:

* ``"probe"``: the backbone is frozen (its weights AND its BatchNorm statistics); only the new
  head learns. It measures how useful the pretrained features are as they are;
* ``"finetune"``: everything learns, the backbone at a tenth of the head's learning rate
  (:data:`BACKBONE_LR_SCALE`): the pretrained weights are a good starting point that large
  steps would destroy, while the new head starts from random and needs large steps;
* ``"scratch"``: the same architecture, randomly initialised, everything at the head's rate.

:func:`finetune_classifier` (chapter 07) and :func:`finetune_segmenter` (chapter 09) run one
mode on the profile's VOC (:func:`imagenet_book.data.voc.voc_source`) and return a
:class:`FinetuneResult` with the network, the History, the metrics, the wall time and the
budget. All sizes (image size, epochs, batch size, number of images) come from ``cfg.profile``.

The training loop is a compact relative of :func:`imagenet_book.engine.fit` (which trains
single-label classifiers with cross-entropy): the same SGD + warmup + cosine schedule
(:func:`imagenet_book.engine.make_scheduler`), the same no-decay rule for norms and biases
(:func:`imagenet_book.engine.param_groups`), AMP and channels_last on CUDA, fp32 on the CPU; it
takes any loss and any evaluation.

Taught in: chapters/07_finetune_voc_classification.ipynb (classification, the modes and the
learning-rate rule) and chapters/09_segmentation_voc.ipynb (segmentation).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import engine, metrics
from .data.fast import IMAGENET_MEAN, IMAGENET_STD
from .data.voc import VOC_CLASSES, VOCMultiLabel, VOCSegmentation, VOCSource, voc_source
from .engine import History, TrainConfig
from .models.segmentation import FCN, segmentation_loss
from .pretrain import (ARCHS, PretrainedNotFoundError, PretrainError, _how_to_make, _save_atomically,
                       default_checkpoint, read_pretrained)

__all__ = ["BACKBONE_LR_SCALE", "MODES", "BackboneClassifier", "FinetuneResult", "ResNetBackbone",
           "VOCTensors", "backbone_from_checkpoint", "evaluate_classifier", "evaluate_segmenter",
           "finetune_classifier", "finetune_param_groups", "finetune_recipe", "finetune_segmenter",
           "load_finetuned", "load_voc_tensors", "multilabel_loss", "resolve_checkpoint"]

#: The three ways to start: frozen pretrained backbone, all of it fine-tuned, random weights.
MODES = ("probe", "finetune", "scratch")

# The fine-tuning recipe. Its numbers live here and nowhere else (chapter 07 explains them).
OPTIMIZER = "sgd"        # "sgd" (with momentum) or "adamw"
BASE_LR = 0.1            # head's peak lr for a batch of BASE_BATCH, scaled linearly (as pretraining)
BASE_BATCH = 256
ADAMW_LR = 1e-3          # head's peak lr with AdamW (not scaled with the batch)
BACKBONE_LR_SCALE = 0.1  # the backbone learns at a tenth of the head's rate ("discriminative rates")
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4      # on conv/linear weights only (engine.param_groups)
WARMUP_FRACTION = 0.1    # linear warmup over the first 10% of the steps, then cosine to 0
EPOCHS_PER_PROFILE_EPOCH = 1  # fine-tuning epochs = this * cfg.profile.epochs (smoke 1, local 4, full 40)
SEG_BATCH_DIVISOR = 4    # segmentation batch = cfg.profile.batch_size // this (bigger outputs)

FINETUNED_FORMAT = "imagenet_book.finetuned"


# ------------------------------------------------------------------------------- the backbone


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


def backbone_from_checkpoint(path: str | os.PathLike[str] | None, arch: str = "resnet18", *,
                             pretrained: bool = True) -> ResNetBackbone:
    """The backbone to fine-tune: chapter 06's ResNet without its classifier.

    Args:
        path: a checkpoint written by :func:`imagenet_book.pretrain.pretrain` (e.g.
            :func:`resolve_checkpoint` ``(cfg)``), or ``None`` for a randomly initialised
            ``arch`` with the standard stem (only with ``pretrained=False``).
        arch: the architecture expected (a name of :data:`imagenet_book.pretrain.ARCHS`); a
            checkpoint of another one is refused.
        pretrained: ``True``: the checkpoint's weights, loaded strictly. ``False``: the SAME
            architecture as the checkpoint (stem included), randomly initialised from torch's
            global generator: "from scratch".

    Returns:
        A :class:`ResNetBackbone`: float32 ``(N, 3, H, W)`` -> ``(N, out_channels, H/32, W/32)``.

    Raises:
        PretrainedNotFoundError: no file at ``path``; or ``path`` is ``None`` with ``pretrained``.
        PretrainError: the file is truncated or corrupt, is not a pretraining checkpoint (a VGG
            ``state_dict``, an engine ``step-*.pt``, ...), holds another architecture, or its
            weights do not fit the architecture it names.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if arch not in ARCHS:
        raise PretrainError(f"Unknown arch {arch!r}. Choose one of: {', '.join(ARCHS)}.")
    if path is None:
        if pretrained:
            raise PretrainedNotFoundError(
                "No checkpoint given for a pretrained backbone. Pass the file chapter 06 writes "
                "(imagenet_book.finetune.resolve_checkpoint(cfg) finds it), or pretrained=False "
                "for random weights.")
        return ResNetBackbone(ARCHS[arch](), arch=arch)
    ckpt = read_pretrained(path)  # missing / truncated / foreign files raise here, weights_only
    if ckpt.arch != arch:
        raise PretrainError(
            f"{str(path)!r} holds a {ckpt.arch} (pretrained on {ckpt.data}), not the {arch} asked "
            f"for. Ask for arch={ckpt.arch!r}, or give the checkpoint of a {arch}.")
    resnet = ARCHS[arch](num_classes=ckpt.num_classes, small_input=ckpt.small_input)
    if not pretrained:
        return ResNetBackbone(resnet, arch=arch, small_input=ckpt.small_input)
    try:
        resnet.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise PretrainError(
            f"{str(path)!r} says it holds a {arch}, but its weights do not fit one "
            f"({first[1].strip() if len(first) > 1 else first[0]}). The file is damaged or was "
            "edited: delete it and pretrain again (chapters/06_pretraining.ipynb or "
            "python -m imagenet_book pretrain).") from None
    return ResNetBackbone(resnet, arch=arch, small_input=ckpt.small_input, checkpoint=Path(path),
                          img_size=ckpt.img_size)


def resolve_checkpoint(cfg: Any, checkpoint: str | os.PathLike[str] | None = None,
                       arch: str = "resnet18", data: str = "imagenette") -> Path:
    """The pretrained checkpoint to start from: ``checkpoint``, or by default the one chapter 06
    saves for this profile (:func:`imagenet_book.pretrain.default_checkpoint`).

    Raises:
        PretrainedNotFoundError: the file does not exist; the message names it and how to make
            it (run chapter 06, or ``python -m imagenet_book pretrain ...``).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    file = Path(checkpoint) if checkpoint is not None else default_checkpoint(cfg, arch, data)
    if not file.is_file():
        out = None if checkpoint is None else file.parent
        raise PretrainedNotFoundError(
            f"No pretrained {arch} checkpoint at {str(file)!r} to fine-tune. "
            + _how_to_make(cfg.profile.name, arch, data, False, out)
            + "; or fine-tune from scratch (mode='scratch', or --from scratch on the command line).")
    return file


class BackboneClassifier(nn.Module):
    """A backbone with a new head: global average pooling and one linear layer.

    Shapes: float32 ``(N, 3, H, W)`` -> logits ``(N, num_classes)`` (for VOC, 20 independent
    "is this class in the image?" scores).

    Attributes:
        backbone: e.g. a :class:`ResNetBackbone` (anything with ``out_channels``).
        head: ``Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(out_channels, num_classes))``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, backbone: nn.Module, num_classes: int = len(VOC_CLASSES)) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


# ------------------------------------------------------------------------------- the recipe


def finetune_param_groups(net: nn.Module, *, lr: float, backbone_lr_scale: float = BACKBONE_LR_SCALE,
                          weight_decay: float = WEIGHT_DECAY,
                          freeze_backbone: bool = False) -> list[dict[str, Any]]:
    """Optimizer parameter groups with discriminative learning rates.

    ``net.backbone`` learns at ``lr * backbone_lr_scale``, every other parameter (the head) at
    ``lr``; within each, conv/linear weights decay and biases and norm weights do not (the
    rule of :func:`imagenet_book.engine.param_groups`). ``freeze_backbone=True`` (the linear
    probe) sets ``requires_grad=False`` on the backbone and leaves it out; ``False`` sets it
    back to ``True``. Empty groups are left out. A scheduler scales each group's ``lr`` by the
    same factor, so the ratio holds for the whole run.

    Args:
        net: a module with a ``backbone`` attribute.
        lr: the head's learning rate.
        backbone_lr_scale: the backbone's rate relative to ``lr`` (1.0: one rate for all).
        weight_decay: on weights with ``ndim >= 2``.
        freeze_backbone: the linear probe.

    Returns:
        ``[{"params", "lr", "weight_decay", "name"}, ...]`` with names ``"backbone"``,
        ``"backbone (no decay)"``, ``"head"``, ``"head (no decay)"``: pass to any
        ``torch.optim`` optimizer.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(f"{type(net).__name__} has no .backbone module: finetune_param_groups needs "
                         "to know which parameters are pretrained.")
    backbone.requires_grad_(not freeze_backbone)
    in_backbone = {id(p) for p in backbone.parameters()}
    head = nn.ParameterList([p for p in net.parameters() if id(p) not in in_backbone])
    parts = [("head", head, lr)]
    if not freeze_backbone:
        parts.insert(0, ("backbone", backbone, lr * backbone_lr_scale))
    groups = []
    for name, module, part_lr in parts:
        decay, no_decay = engine.param_groups(module, weight_decay)
        for group, suffix in ((decay, ""), (no_decay, " (no decay)")):
            if group["params"]:
                groups.append({**group, "lr": part_lr, "name": name + suffix})
    return groups


def finetune_recipe(cfg: Any, task: str = "classify", *, epochs: int | None = None,
                    batch_size: int | None = None, img_size: int | None = None,
                    lr: float | None = None, optimizer: str = OPTIMIZER) -> dict[str, Any]:
    """The sizes and rates of a fine-tuning run, derived from ``cfg.profile``.

    * ``epochs``: :data:`EPOCHS_PER_PROFILE_EPOCH` x ``cfg.profile.epochs``;
    * ``batch_size``: the profile's, divided by :data:`SEG_BATCH_DIVISOR` for segmentation
      (its outputs are images too);
    * ``img_size``: the profile's;
    * ``optimizer``: :data:`OPTIMIZER` (SGD with momentum) or ``"adamw"``;
    * ``lr``: the head's peak rate; for SGD ``BASE_LR * batch_size / BASE_BATCH`` (the linear
      scaling rule of pretraining), for AdamW :data:`ADAMW_LR`; the backbone gets
      ``lr * BACKBONE_LR_SCALE`` when fine-tuning.

    Returns:
        ``{"epochs", "batch_size", "img_size", "optimizer", "lr", "backbone_lr_scale",
        "momentum", "weight_decay", "warmup_fraction"}``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if task not in ("classify", "segment", "detect"):
        raise ValueError(f"task must be 'classify', 'segment' or 'detect', got {task!r}.")
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}.")
    p = cfg.profile
    divisor = SEG_BATCH_DIVISOR if task == "segment" else 1
    batch_size = batch_size or max(2, p.batch_size // divisor)
    recipe = {"epochs": epochs or EPOCHS_PER_PROFILE_EPOCH * p.epochs, "batch_size": batch_size,
              "img_size": img_size or p.img_size,
              "optimizer": optimizer,
              "lr": lr if lr is not None else (BASE_LR * batch_size / BASE_BATCH
                                               if optimizer == "sgd" else ADAMW_LR),
              "backbone_lr_scale": BACKBONE_LR_SCALE, "momentum": MOMENTUM,
              "weight_decay": WEIGHT_DECAY, "warmup_fraction": WARMUP_FRACTION}
    for key in ("epochs", "batch_size", "img_size"):
        if not isinstance(recipe[key], int) or recipe[key] < 1:
            raise ValueError(f"{key} must be an int >= 1, got {recipe[key]!r}.")
    return recipe


# ------------------------------------------------------------------------------- data


class VOCTensors(NamedTuple):
    """A VOC split decoded once, resized to ``S x S`` (the whole image, squashed: nothing cut).

    Attributes:
        images: uint8 ``(N, 3, S, S)``.
        targets: classification: float32 ``(N, 20)`` (1 = a non-difficult object of the class);
            segmentation: uint8 ``(N, S, S)`` labels 0..20 and 255 (nearest-neighbour resized).
        mask: classification: float32 ``(N, 20)``, 0 where the class is present only as
            difficult objects (left out of loss and AP); segmentation: ``None``.
        ids: the VOC image ids.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    images: Tensor
    targets: Tensor
    mask: Tensor | None
    ids: tuple[str, ...]


_DECODED: dict[tuple, VOCTensors] = {}  # a few decoded splits, reused by the runs of a notebook
_KEEP_DECODED = 4


def _decode(root: str, year: str, task: str, split: str, picked: tuple[int, ...], size: int,
            progress: bool) -> VOCTensors:
    key = (root, year, task, split, picked, size)
    if key not in _DECODED:
        if len(_DECODED) >= _KEEP_DECODED:
            _DECODED.pop(next(iter(_DECODED)))  # the oldest
        _DECODED[key] = _decode_now(*key, progress)
    return _DECODED[key]


def _decode_now(root: str, year: str, task: str, split: str, picked: tuple[int, ...], size: int,
                progress: bool) -> VOCTensors:
    from torchvision.transforms import v2

    resize = v2.Resize((size, size), antialias=True)
    if task == "classify":
        ds = VOCMultiLabel(root, year, split, transform=resize, return_mask=True)
    else:
        ds = VOCSegmentation(root, year, split, transforms=resize)
    images = torch.empty(len(picked), 3, size, size, dtype=torch.uint8)
    if task == "classify":
        targets = torch.empty(len(picked), len(VOC_CLASSES))
        mask = torch.empty(len(picked), len(VOC_CLASSES))
    else:
        targets, mask = torch.empty(len(picked), size, size, dtype=torch.uint8), None
    for k, i in enumerate(tqdm(picked, desc=f"decoding VOC{year} {split} at {size} px",
                               disable=not progress, leave=False)):
        item = ds[i]
        images[k] = item[0]
        targets[k] = item[1]
        if mask is not None:
            mask[k] = item[2]
    return VOCTensors(images, targets, mask, tuple(ds.ids[i] for i in picked))


def load_voc_tensors(source: VOCSource, task: str, split: str, img_size: int, *,
                     progress: bool = True) -> VOCTensors:
    """Decode the images a run uses from ``split`` of ``source`` (kept in memory for reuse).

    Args:
        source: from :func:`imagenet_book.data.voc.voc_source`.
        task: ``"classify"`` (:class:`~imagenet_book.data.voc.VOCMultiLabel`) or ``"segment"``
            (:class:`~imagenet_book.data.voc.VOCSegmentation`).
        split: ``"train"`` or ``"val"``: the source's training or evaluation split
            (:meth:`~imagenet_book.data.voc.VOCSource.splits`), with the number of images
            the profile gives (:meth:`~imagenet_book.data.voc.VOCSource.pick`).
        img_size: side ``S`` of the square the images are resized to.

    Returns:
        A :class:`VOCTensors`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if task not in ("classify", "segment"):
        raise ValueError(f"task must be 'classify' or 'segment', got {task!r}.")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
    image_set = "Main" if task == "classify" else "Segmentation"
    name = source.splits(image_set)[0 if split == "train" else 1]
    list_file = source.voc_dir / "ImageSets" / image_set / f"{name}.txt"
    count = len(list_file.read_text(encoding="utf-8").split()) if list_file.is_file() else 0
    picked = tuple(source.pick(count, split)) if count else ()
    return _decode(str(source.root), source.year, task, name, picked, img_size, progress)


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _batches(data: VOCTensors, batch_size: int, device: torch.device, *, train: bool,
             generator: torch.Generator | None = None,
             channels_last: bool = False) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """(X normalised float32 (B, 3, S, S), targets, mask) on ``device``; training batches are
    shuffled, randomly mirrored (image and mask together) and the last incomplete one is dropped."""
    n = len(data.images)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    stop = n - n % batch_size if train and n >= batch_size else n
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        X = data.images[index].to(device, non_blocking=True).float().div_(255)
        y = data.targets[index].to(device, non_blocking=True)
        m = data.mask[index].to(device, non_blocking=True) if data.mask is not None else None
        if train:
            flip = (torch.rand(len(index), generator=generator) < 0.5).to(device)
            X = torch.where(flip.view(-1, 1, 1, 1), X.flip(-1), X)
            if y.ndim == 3:  # a segmentation mask moves with its image
                y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
        X = (X - _MEAN.to(device)) / _STD.to(device)
        if channels_last:
            X = X.contiguous(memory_format=torch.channels_last)
        yield X, y, m


# ------------------------------------------------------------------------------- losses, metrics


def multilabel_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, one independent yes/no question per class, averaged
    over the entries that count (``mask == 1``).

    Args:
        logits: float ``(N, C)``.
        targets: float ``(N, C)`` in {0, 1}.
        mask: float ``(N, C)``: 0 leaves an entry out (VOC: classes present only as difficult
            objects); ``None``: every entry counts.

    Returns:
        A float scalar: ``sum(mask * bce) / sum(mask)`` (0 when nothing counts).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if logits.shape != targets.shape or (mask is not None and mask.shape != logits.shape):
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{None if mask is None else tuple(mask.shape)} must all be (N, C).")
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if mask is None:
        return bce.mean()
    return (bce * mask).sum() / mask.sum().clamp(min=1)


def _amp(device: torch.device):
    dtype = engine._amp_dtype(None, device)  # the engine's rule: bf16/fp16 on CUDA, fp32 elsewhere
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), dtype


@torch.no_grad()
def evaluate_classifier(net: nn.Module, data: VOCTensors, *, batch_size: int = 64,
                        device: str | torch.device | None = None) -> dict[str, Any]:
    """VOC classification metrics of ``net`` on ``data`` (eval mode, no augmentation).

    Returns:
        ``{"loss": masked BCE, "mAP": float, "ap": [AP of each of the 20 classes]}``, from
        :func:`imagenet_book.metrics.multilabel_average_precision` with the difficult mask.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    autocast, _ = _amp(device)
    scores = []
    for X, _, _ in _batches(data, batch_size, device, train=False):
        with autocast:
            scores.append(net(X).float().cpu())
    net.train(was_training)
    logits = torch.cat(scores)
    mean_ap, per_class = metrics.multilabel_average_precision(logits, data.targets, mask=data.mask)
    return {"loss": multilabel_loss(logits, data.targets, data.mask).item(), "mAP": float(mean_ap),
            "ap": [float(a) for a in per_class]}


@torch.no_grad()
def evaluate_segmenter(net: nn.Module, data: VOCTensors, *, batch_size: int = 16,
                       device: str | torch.device | None = None) -> dict[str, Any]:
    """Segmentation metrics of ``net`` on ``data``, from one confusion matrix over all pixels.

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou", "iou": [IoU of each of the 21 classes]}``
        (:func:`imagenet_book.metrics.confusion_matrix` with ``ignore_index=255``, then
        :func:`imagenet_book.metrics.segmentation_scores`).

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    autocast, _ = _amp(device)
    num_classes = getattr(net, "num_classes", len(VOC_CLASSES) + 1)
    confmat = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, pixels = 0.0, 0
    for X, y, _ in _batches(data, batch_size, device, train=False):
        with autocast:
            logits = net(X).float()
        y = y.long()
        counted = int((y != 255).sum())
        if counted:
            loss_sum += segmentation_loss(logits, y).item() * counted
            pixels += counted
        confmat += metrics.confusion_matrix(logits.argmax(1).cpu(), y.cpu(), num_classes,
                                            ignore_index=255).to(torch.int64)
    net.train(was_training)
    scores = metrics.segmentation_scores(confmat)
    return {"loss": loss_sum / max(pixels, 1), "pixel_accuracy": float(scores["pixel_accuracy"]),
            "mean_iou": float(scores["mean_iou"]),
            "iou": [float(v) for v in torch.as_tensor(scores["iou"]).tolist()]}


# ------------------------------------------------------------------------------- the loop


def _set_train_mode(net: nn.Module, freeze_backbone: bool) -> None:
    net.train()
    if freeze_backbone:  # a frozen backbone keeps its BatchNorm statistics too
        net.backbone.eval()


def _train(net: nn.Module, groups: list[dict[str, Any]], train: VOCTensors,
           loss_fn: Callable[[Tensor, Tensor, Tensor | None], Tensor],
           evaluate: Callable[[nn.Module], dict[str, Any]], *, epochs: int, batch_size: int,
           warmup_fraction: float, momentum: float, optimizer_name: str, device: torch.device,
           freeze_backbone: bool,
           seed: int, progress: bool, max_steps: int | None,
           primary: str) -> tuple[History, dict[str, Any] | None]:
    """Train; evaluate after every epoch. Returns the History and the last evaluation."""
    n = len(train.images)
    steps_per_epoch = n // batch_size if n >= batch_size else 1
    total = epochs * steps_per_epoch
    if optimizer_name == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)
    else:
        optimizer = torch.optim.AdamW(groups, lr=groups[0]["lr"], betas=(momentum, 0.999))
    recipe = TrainConfig(epochs=epochs, lr=groups[0]["lr"], momentum=momentum,
                         warmup_steps=max(1, round(warmup_fraction * total)), schedule="cosine")
    scheduler = engine.make_scheduler(optimizer, recipe, steps_per_epoch)
    autocast, amp_dtype = _amp(device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    channels_last = device.type == "cuda"
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    history, step, t0, scores = History(), 0, time.perf_counter(), None
    for epoch in range(epochs):
        if max_steps is not None and step >= max_steps:
            break
        _set_train_mode(net, freeze_backbone)
        t_epoch, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False)
        for X, y, m in _batches(train, batch_size, device, train=True, generator=generator,
                                channels_last=channels_last):
            with autocast:
                loss = loss_fn(net(X).float(), y, m)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[-1]["lr"]  # the head's: the last group
            scheduler.step()
            step += 1
            value = loss.item()
            loss_sum, seen = loss_sum + value * len(X), seen + len(X)
            history.steps.append({"step": step, "epoch": round(step / steps_per_epoch, 4),
                                  "loss": value, "lr": lr})
            bar.update()
            if max_steps is not None and step >= max_steps:
                break
        bar.close()
        train_s = time.perf_counter() - t_epoch
        scores = evaluate(net)
        history.epochs.append({
            "epoch": epoch + 1, "step": step, "train_loss": loss_sum / max(seen, 1),
            "val_loss": scores["loss"], f"val_{primary}": scores[primary],
            "lr": history.steps[-1]["lr"] if history.steps else None,
            "img_per_s": seen / train_s if train_s > 0 else math.nan,
            "wall_s": time.perf_counter() - t0})
    net.eval()
    return history, scores


# ------------------------------------------------------------------------------- results


@dataclass
class FinetuneResult:
    """What :func:`finetune_classifier` / :func:`finetune_segmenter` return.

    Attributes:
        task: ``"classify"`` or ``"segment"``; mode: ``"probe"``, ``"finetune"`` or ``"scratch"``.
        net: the trained network (eval mode, on ``cfg.device``).
        history: a :class:`~imagenet_book.engine.History` (per epoch: ``train_loss``,
            ``val_loss``, ``val_mAP`` or ``val_mean_iou``, ``lr``, ``img_per_s``, ``wall_s``).
        metrics: the final evaluation (see :func:`evaluate_classifier`, :func:`evaluate_segmenter`).
        seconds: wall time of the whole call (decoding, training, evaluation).
        budget: ``{"epochs", "steps", "train_images", "val_images", "img_size", "batch_size"}``.
        recipe: the rates used (:func:`finetune_recipe`, with the mode's backbone scale).
        source: the :class:`~imagenet_book.data.voc.VOCSource` trained on.
        checkpoint: the pretrained checkpoint the backbone came from (``None``: from scratch).
        arch: the backbone's architecture; caption: one line for figures.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    task: str
    mode: str
    net: nn.Module
    history: History
    metrics: dict[str, Any]
    seconds: float
    budget: dict[str, int]
    recipe: dict[str, Any]
    source: VOCSource
    checkpoint: Path | None
    arch: str
    caption: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def stem(self) -> str:
        """File-name stem: ``"{task}-{mode}-{arch}-{profile}"``."""
        return f"{self.task}-{self.mode}-{self.arch}-{self.source.profile}"

    FORMAT: ClassVar[str] = FINETUNED_FORMAT  # the "format" entry its .pt file carries

    @property
    def score(self) -> float:
        """The task's headline number: mAP (classification) or mIoU (segmentation)."""
        return self.metrics["mAP"] if self.task == "classify" else self.metrics["mean_iou"]

    @property
    def metric_name(self) -> str:
        """The name of :attr:`score` in tables."""
        return "mAP" if self.task == "classify" else "mIoU"

    def _side_scores(self) -> dict[str, Any]:
        """Further numbers a table row shows beside the score (a subclass adds its own)."""
        return {}

    def row(self) -> dict[str, Any]:
        """One row of a pretrained-vs-scratch table: mode, start, score and the budget."""
        start = f"pretrained ({self.checkpoint.name})" if self.checkpoint else "random weights"
        return {"mode": self.mode, "start": start, "metric": self.metric_name, "score": self.score,
                **self._side_scores(), **self.budget, "seconds": self.seconds}

    def _net_info(self) -> dict[str, Any]:
        """What :func:`load_finetuned` rebuilds the network from (a subclass gives its own)."""
        return {"small_input": bool(self.net.backbone.small_input),
                "num_classes": int(self.net.num_classes), "skips": bool(getattr(self.net, "skips", False))}

    def _info(self) -> dict[str, Any]:
        """What the saved files record besides the weights and the History."""
        return {"task": self.task, "mode": self.mode, "arch": self.arch, **self._net_info(),
                "budget": dict(self.budget), "recipe": dict(self.recipe), "metrics": _plain(self.metrics),
                "seconds": float(self.seconds), "data": self.source.description,
                "profile": self.source.profile,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None}

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.pt`` (weights + everything needed to rebuild the network;
        ``torch.load(..., weights_only=True)`` reads it, :func:`load_finetuned` rebuilds it) and
        ``<stem>.json`` (the same without the weights), both atomically. Returns the ``.pt``."""
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        info, history = self._info(), self.history.to_dict()
        state = {"format": self.FORMAT, **info,
                 "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                 "history": history}
        pt, js = folder / f"{self.stem}.pt", folder / f"{self.stem}.json"
        _save_atomically(state, pt, lambda s, p: torch.save(s, p))
        text = json.dumps(_plain({**info, "history": history}), indent=1, allow_nan=False)
        _save_atomically(text, js, lambda t, p: p.write_text(t, encoding="utf-8"))
        return pt


def _plain(value: Any) -> Any:
    """NaN -> None, tensors -> lists, recursively (JSON and weights_only-safe values)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def load_finetuned(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a network saved by :meth:`FinetuneResult.save` (``weights_only=True``).

    Returns:
        The :class:`BackboneClassifier` or :class:`~imagenet_book.models.segmentation.FCN`, in
        eval mode, on ``device``.

    Raises:
        PretrainedNotFoundError: no such file. PretrainError: not a fine-tuned checkpoint, or
            a damaged one.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    state = engine.read_state(
        path, "format", FINETUNED_FORMAT, what="the fine-tuned checkpoint", redo="Fine-tune again.",
        error=PretrainError, missing=PretrainedNotFoundError,
        wrong="is not a checkpoint written by FinetuneResult.save (pretraining checkpoints load "
              "with backbone_from_checkpoint).")
    backbone = ResNetBackbone(ARCHS[state["arch"]](small_input=state["small_input"]),
                              arch=state["arch"], small_input=state["small_input"])
    if state["task"] == "segment":
        net: nn.Module = FCN(backbone, state["num_classes"], skips=state["skips"])
    else:
        net = BackboneClassifier(backbone, state["num_classes"])
    net.load_state_dict(state["model"])
    return net.to(device).eval()


# ------------------------------------------------------------------------------- the runs


def _backbone_for(cfg: Any, checkpoint: str | os.PathLike[str] | None, mode: str,
                  arch: str) -> ResNetBackbone:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if mode == "scratch":  # the architecture of the given checkpoint, if any; random weights
        return backbone_from_checkpoint(checkpoint, arch, pretrained=False)
    return backbone_from_checkpoint(resolve_checkpoint(cfg, checkpoint, arch), arch)


def _run(cfg: Any, task: str, checkpoint: str | os.PathLike[str] | None, mode: str,
         build: Callable[[ResNetBackbone], nn.Module], loss_fn: Callable, evaluate: Callable,
         primary: str, *, epochs: int | None, img_size: int | None, batch_size: int | None,
         lr: float | None, optimizer: str, backbone_lr_scale: float | None,
         source: VOCSource | None, year: str,
         arch: str, max_steps: int | None, progress: bool,
         log: Callable[[str], None] | None) -> FinetuneResult:
    t0 = time.perf_counter()
    say = log if log is not None else (lambda _msg: None)
    recipe = finetune_recipe(cfg, task, epochs=epochs, batch_size=batch_size, img_size=img_size,
                             lr=lr, optimizer=optimizer)
    if backbone_lr_scale is not None:
        recipe["backbone_lr_scale"] = backbone_lr_scale
    if mode == "scratch":
        recipe["backbone_lr_scale"] = 1.0  # nothing to preserve: one rate for the whole network
    torch.manual_seed(cfg.seed)  # the new head's (and a scratch backbone's) weights
    backbone = _backbone_for(cfg, checkpoint, mode, arch)
    source = source or voc_source(cfg, year)
    train = load_voc_tensors(source, task, "train", recipe["img_size"], progress=progress)
    val = load_voc_tensors(source, task, "val", recipe["img_size"], progress=progress)
    if len(train.images) == 0 or len(val.images) == 0:
        what = "train" if not len(train.images) else "evaluate"
        raise ValueError(f"{source.description}: no images to {what} on.")
    net = build(backbone).to(cfg.device)
    groups = finetune_param_groups(net, lr=recipe["lr"], backbone_lr_scale=recipe["backbone_lr_scale"],
                                   weight_decay=recipe["weight_decay"], freeze_backbone=mode == "probe")
    start = f"from {backbone.checkpoint.name}" if backbone.pretrained else "from random weights"
    caption = (f"profile {cfg.profile.name}: {arch} {mode} ({start}) at {recipe['img_size']} px "
               f"on the {source.description}")
    trainable = sum(p.numel() for g in groups for p in g["params"])
    say(f"finetune {task}/{mode}: {len(train.images)} train / {len(val.images)} val images at "
        f"{recipe['img_size']} px, {recipe['epochs']} epochs at batch {recipe['batch_size']}, head lr "
        f"{recipe['lr']:g}, backbone lr x{recipe['backbone_lr_scale'] if mode != 'probe' else 0:g}, "
        f"{trainable:,} trainable parameters, {start}; device {cfg.device}")
    device = torch.device(cfg.device)
    history, final = _train(
        net, groups, train, loss_fn,
        lambda n: evaluate(n, val, batch_size=recipe["batch_size"], device=device),
        epochs=recipe["epochs"], batch_size=recipe["batch_size"],
        warmup_fraction=recipe["warmup_fraction"], momentum=recipe["momentum"],
        optimizer_name=recipe["optimizer"], device=device, freeze_backbone=mode == "probe",
        seed=cfg.seed, progress=progress, max_steps=max_steps, primary=primary)
    if final is None:  # no epoch ran (max_steps=0)
        final = evaluate(net, val, batch_size=recipe["batch_size"], device=device)
    budget = {"epochs": recipe["epochs"], "steps": history.epochs[-1]["step"] if history.epochs else 0,
              "train_images": len(train.images), "val_images": len(val.images),
              "img_size": recipe["img_size"], "batch_size": recipe["batch_size"]}
    seconds = time.perf_counter() - t0
    say(f"finetune {task}/{mode}: {primary} {final[primary]:.4f} after {budget['steps']} steps "
        f"({seconds:.0f} s)")
    return FinetuneResult(task, mode, net, history, final, seconds, budget, recipe, source,
                          backbone.checkpoint, arch, caption)


def finetune_classifier(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *,
                        mode: str = "finetune", epochs: int | None = None,
                        img_size: int | None = None, batch_size: int | None = None,
                        lr: float | None = None, optimizer: str = OPTIMIZER,
                        backbone_lr_scale: float | None = None,
                        source: VOCSource | None = None, year: str = "2007",
                        arch: str = "resnet18", max_steps: int | None = None,
                        progress: bool = True,
                        log: Callable[[str], None] | None = print) -> FinetuneResult:
    """Fine-tune a backbone for VOC multi-label classification and measure its mAP.

    The network is :class:`BackboneClassifier` (the backbone + a new 20-way linear head),
    trained with :func:`multilabel_loss` (sigmoid + binary cross-entropy, difficult-only
    entries masked) by SGD with momentum (or AdamW), warmup and cosine decay, and evaluated with VOC's
    classification mAP on the evaluation split.

    Args:
        cfg: from ``imagenet_book.start()``; its profile gives every size (:func:`finetune_recipe`)
            and the data (:func:`~imagenet_book.data.voc.voc_source`).
        checkpoint: the pretrained checkpoint; default: the one chapter 06 saves for this profile
            (:func:`resolve_checkpoint`). With ``mode="scratch"`` it only fixes the architecture.
        mode: ``"probe"`` (frozen backbone), ``"finetune"`` (everything, backbone at
            ``backbone_lr_scale`` x the head's rate) or ``"scratch"`` (random weights).
        epochs, img_size, batch_size, lr: override the recipe's values.
        optimizer: ``"sgd"`` (default, :data:`OPTIMIZER`) or ``"adamw"``.
        backbone_lr_scale: default :data:`BACKBONE_LR_SCALE` (``"scratch"`` always uses 1).
        source: use this VOC instead of asking the data rule; year: VOC year for the rule.
        arch: the backbone's architecture.
        max_steps: stop after this many steps (the schedule still spans ``epochs``).
        progress: tqdm bars; log: where the two lines of report go (``None``: silent).

    Returns:
        A :class:`FinetuneResult`; ``metrics`` = ``{"loss", "mAP", "ap"}``.

    Raises:
        PretrainedNotFoundError: no pretrained checkpoint (the message says how to make it).
        PretrainError: a checkpoint of another architecture, or a damaged one.
        DatasetNotFoundError: the data rule found no VOC (``full`` profile, downloads off).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return _run(cfg, "classify", checkpoint, mode,
                lambda backbone: BackboneClassifier(backbone, len(VOC_CLASSES)),
                multilabel_loss, evaluate_classifier, "mAP", epochs=epochs, img_size=img_size,
                batch_size=batch_size, lr=lr, optimizer=optimizer, backbone_lr_scale=backbone_lr_scale,
                source=source,
                year=year, arch=arch, max_steps=max_steps, progress=progress, log=log)


def finetune_segmenter(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *,
                       mode: str = "finetune", skips: bool = True, epochs: int | None = None,
                       img_size: int | None = None, batch_size: int | None = None,
                       lr: float | None = None, optimizer: str = OPTIMIZER,
                        backbone_lr_scale: float | None = None,
                       source: VOCSource | None = None, year: str = "2012",
                       arch: str = "resnet18", max_steps: int | None = None,
                       progress: bool = True,
                       log: Callable[[str], None] | None = print) -> FinetuneResult:
    """Fine-tune a backbone for VOC semantic segmentation and measure pixel accuracy and mIoU.

    The network is an :class:`~imagenet_book.models.segmentation.FCN` (FCN-8s with
    ``skips=True``, FCN-32s without) with 21 classes (background + 20), trained with
    :func:`~imagenet_book.models.segmentation.segmentation_loss` (cross-entropy, void 255
    ignored) and evaluated from a confusion matrix over every non-void pixel.

    ``cfg``, ``checkpoint``, ``mode``, ``epochs``, ``img_size``, ``batch_size``, ``lr``, ``optimizer``,
    ``backbone_lr_scale``, ``source``, ``arch``, ``max_steps``, ``progress`` and ``log`` are as for
    :func:`finetune_classifier` (the batch is the profile's divided by :data:`SEG_BATCH_DIVISOR`).

    Args:
        skips: FCN-8s (default) or FCN-32s.
        year: ``"2012"`` by default (1,464 + 1,449 segmentation masks, against 209 + 213 in
            VOC 2007's train/val); the stand-in stands in for either.

    Returns:
        A :class:`FinetuneResult`; ``metrics`` = ``{"loss", "pixel_accuracy", "mean_iou", "iou"}``.

    Raises:
        As :func:`finetune_classifier`.

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    def loss_fn(logits: Tensor, y: Tensor, _mask: Tensor | None) -> Tensor:
        return segmentation_loss(logits, y.long())

    return _run(cfg, "segment", checkpoint, mode,
                lambda backbone: FCN(backbone, len(VOC_CLASSES) + 1, skips=skips),
                loss_fn, evaluate_segmenter, "mean_iou", epochs=epochs, img_size=img_size,
                batch_size=batch_size, lr=lr, optimizer=optimizer, backbone_lr_scale=backbone_lr_scale,
                source=source,
                year=year, arch=arch, max_steps=max_steps, progress=progress, log=log)
