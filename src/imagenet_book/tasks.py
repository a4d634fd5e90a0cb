"""Tasks: what differs between the book's problems, and nothing else.

:func:`imagenet_book.engine.fit` is the one training loop of the book. It owns autocast,
``backward``, gradient clipping, the optimizer step, the schedule, checkpoints with exact resume,
DDP, EMA and logging. A task tells it the four things that change from problem to problem, in a
few lines each (the idea of Lightning's ``training_step`` and of timm's ``task(input, target)``)::

    out = task.training_step(net, batch)     # {"loss": scalar tensor, other scalars to log}
    meter = task.meter(); meter.update(net, batch) ...; meter.compute(world)   # evaluation
    groups = task.param_groups(net, config)  # what trains, at which rate, with which decay
    task.train_mode(net)                     # net.train(), a frozen backbone's BatchNorm stays eval

The tasks: :class:`Classification` (cross-entropy with label smoothing; soft targets for mixup;
top-1/top-5), :class:`MultiLabel` (masked binary cross-entropy; VOC classification mAP),
:class:`Detection` (focal classification + box regression; VOC mAP@0.5) and
:class:`Segmentation` (cross-entropy ignoring the void label 255; mIoU). Each has a ``mode``
(:data:`MODES`): ``"probe"`` freezes ``net.backbone`` (weights and BatchNorm statistics);
``"finetune"`` trains it at ``config.backbone_lr_scale`` times the rate of the new layers;
``"full"`` (the default) and ``"scratch"`` train everything at one rate.

Self-supervised learning is a task of the same loop: :class:`imagenet_book.selfsup.Contrastive`
(SimCLR's contrastive loss on two views of each image, chapter 11).

Batches are tuples, moved to the device by the loop: ``(X, y)`` for classification and
segmentation, ``(X, y, mask)`` for multi-label, ``(X, targets)`` for detection training (uint8
images of one size, a list of target dicts) and ``(images, targets)`` for detection evaluation
(lists: images of any size).

Taught in: chapters/06_pretraining.ipynb (the loop and the classification task),
chapters/07_finetune_voc_classification.ipynb (modes), 08 (detection), 09 (segmentation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn

from . import losses, metrics
from .models.detection import detection_loss
from .models.segmentation import VOID_LABEL, segmentation_loss
from .recipe import TrainConfig, finetune_param_groups, param_groups

__all__ = ["MODES", "Classification", "Detection", "Meter", "MultiLabel", "Segmentation", "Task",
           "World", "all_gather", "all_sum"]

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

#: How a network with a ``backbone`` trains: frozen backbone, backbone at a smaller rate, one rate.
MODES = ("probe", "finetune", "scratch", "full")


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly 1-process) run: ``rank`` of ``size``, ``local_rank``
    on its machine (the GPU it uses).

    Taught in: chapters/06_pretraining.ipynb.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def all_sum(t: Tensor, world: World) -> Tensor:
    """``t`` summed over the processes of ``world`` (itself in a 1-process run).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if world.size > 1:
        t = t.clone() if t.is_cuda or tdist.get_backend() != "nccl" else t.cuda()
        tdist.all_reduce(t)
    return t


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a 1-process run); for evaluations
    that need all the examples at once (average precision).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    tdist.all_gather_object(out, obj)
    return out


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


# ------------------------------------------------------------------------------- the protocol


class Meter:
    """Accumulates a task's evaluation over batches; :meth:`compute` gives the metrics.

    ``update(net, batch)`` runs the network (eval mode, no gradients, under the loop's autocast)
    on one batch (this process's slice of it under DDP) and adds to the sums;
    ``compute(world)`` combines all processes' sums and returns ``{name: value}`` (floats, ints,
    or lists such as per-class APs: the loop logs the scalars).

    Taught in: chapters/06_pretraining.ipynb.
    """

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        raise NotImplementedError

    def compute(self, world: World = World()) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class Task:
    """The base of the tasks: the parts that are the same for most problems.

    Attributes:
        mode: one of :data:`MODES` (how a network with a ``backbone`` trains).
        freeze_bn: keep the backbone's BatchNorm statistics as pretrained (fine-tuning with
            small batches: re-estimating them from a few small images wrecks pretrained features).
        primary: the name of the headline metric :meth:`meter` reports (``"top1"``, ``"mAP"``,
            ``"map"``, ``"mean_iou"``), shown in progress bars and used by early stopping.
        metric_names: the scalar metrics the meter reports (the loop records them per epoch).

    Taught in: chapters/06_pretraining.ipynb.
    """

    mode: str = "full"
    freeze_bn: bool = False
    primary: ClassVar[str] = "loss"
    metric_names: ClassVar[tuple[str, ...]] = ("loss",)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")

    @property
    def frozen_backbone(self) -> bool:
        """Whether ``net.backbone`` is frozen (the linear probe)."""
        return self.mode == "probe"

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        """The loss of one training batch: ``{"loss": scalar tensor, ...}``; other entries are
        scalar tensors the loop averages per epoch and logs (``train_<name>``)."""
        raise NotImplementedError

    def meter(self) -> Meter:
        """A fresh :class:`Meter` for one evaluation."""
        raise NotImplementedError

    def param_groups(self, net: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: :func:`~imagenet_book.recipe.param_groups` (no
        decay on biases and norms); for a network with a ``backbone`` in mode ``"probe"`` or
        ``"finetune"``, :func:`~imagenet_book.recipe.finetune_param_groups` (frozen backbone, or
        the backbone at ``config.backbone_lr_scale`` times ``config.lr``)."""
        if self.mode in ("probe", "finetune"):
            return finetune_param_groups(net, lr=config.lr, backbone_lr_scale=config.backbone_lr_scale,
                                         weight_decay=config.weight_decay,
                                         freeze_backbone=self.frozen_backbone)
        if isinstance(getattr(net, "backbone", None), nn.Module):
            net.backbone.requires_grad_(True)
        return param_groups(net, config.weight_decay, decay_all=config.decay_norm_and_bias)

    def train_mode(self, net: nn.Module) -> None:
        """``net.train()``; a frozen backbone stays in eval mode (its BatchNorm statistics too);
        with ``freeze_bn``, the backbone's BatchNorm layers keep their pretrained statistics
        (eval mode) while their scales and shifts, and every other weight, still train."""
        net.train()
        backbone = getattr(_unwrap(net), "backbone", None)
        if self.frozen_backbone:
            backbone.eval()
        elif self.freeze_bn and backbone is not None:
            for module in backbone.modules():
                if isinstance(module, _BATCH_NORMS):
                    module.eval()


# ------------------------------------------------------------------------------- classification


class _TopK(Meter):
    def __init__(self) -> None:
        self.sums: Tensor | None = None  # loss sum, top-1 hits, top-5 hits, examples

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        X, y = batch[0], batch[1]
        logits = net(X).float()
        k = min(5, logits.shape[1])
        hard = y.argmax(1) if y.is_floating_point() else y
        row = torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                           metrics.topk_correct(logits, hard, 1).sum(),
                           metrics.topk_correct(logits, hard, k).sum(),
                           torch.tensor(float(len(y)), device=logits.device)])
        self.sums = row if self.sums is None else self.sums + row

    def compute(self, world: World = World()) -> dict[str, Any]:
        sums = self.sums if self.sums is not None else torch.zeros(4)
        loss, top1, top5, n = all_sum(sums, world).tolist()
        if n == 0:
            raise ValueError("evaluate(): the loader yielded no examples")
        return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n}


@dataclass
class Classification(Task):
    """Single-label classification: cross-entropy (with ``label_smoothing``), top-1 and top-5.

    Batches ``(X, y)``: float ``(B, 3, H, W)``, ``y`` int64 ``(B,)`` or class probabilities
    float ``(B, C)`` (mixup/cutmix soft targets: a training hit is the target's largest class).
    ``training_step`` returns ``{"loss", "top1"}``; the meter ``{"loss", "top1", "top5"}``
    (``top5`` is top-``min(5, C)``; no label smoothing in the evaluation loss).

    Taught in: chapters/06_pretraining.ipynb.
    """

    label_smoothing: float = 0.0
    primary: ClassVar[str] = "top1"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "top1", "top5")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        X, y = batch[0], batch[1]
        logits = net(X)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        hard = y.argmax(1) if y.is_floating_point() else y
        return {"loss": loss, "top1": metrics.topk_correct(logits.detach(), hard, 1).float().mean()}

    def meter(self) -> Meter:
        return _TopK()


# ------------------------------------------------------------------------------- multi-label


class _MultiLabelAP(Meter):
    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        X, y = batch[0], batch[1]
        mask = batch[2] if len(batch) > 2 else None
        self.parts.append((net(X).float().cpu(), y.float().cpu(), None if mask is None else mask.cpu()))

    def compute(self, world: World = World()) -> dict[str, Any]:
        parts = [p for rank_parts in all_gather(self.parts, world) for p in rank_parts]
        if not parts:
            raise ValueError("evaluate(): the loader yielded no examples")
        logits, targets = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        mask = torch.cat([p[2] for p in parts]) if parts[0][2] is not None else None
        mean_ap, per_class = metrics.multilabel_average_precision(logits, targets, mask=mask)
        return {"loss": losses.multilabel_loss(logits, targets, mask).item(), "mAP": float(mean_ap),
                "ap": [float(a) for a in per_class]}


@dataclass
class MultiLabel(Task):
    """Multi-label classification (VOC: is each of 20 classes in the image?): masked binary
    cross-entropy (:func:`imagenet_book.losses.multilabel_loss`), evaluated by mean average
    precision (:func:`imagenet_book.metrics.multilabel_average_precision`).

    Batches ``(X, y, mask)``: float ``(B, 3, H, W)``, float ``(B, C)`` 0/1 targets, float
    ``(B, C)`` mask (0: a class present only as difficult objects, left out); the mask may be
    absent. The meter returns ``{"loss", "mAP", "ap"}`` over the whole evaluation set.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    primary: ClassVar[str] = "mAP"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "mAP")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        X, y = batch[0], batch[1]
        mask = batch[2] if len(batch) > 2 else None
        return {"loss": losses.multilabel_loss(net(X).float(), y, mask)}

    def meter(self) -> Meter:
        return _MultiLabelAP()


# ------------------------------------------------------------------------------- segmentation


class _ConfusionMatrix(Meter):
    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confmat: Tensor | None = None
        self.loss = torch.zeros(2, dtype=torch.float64)  # loss sum over counted pixels, pixels

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        X, y = batch[0], batch[1].long()
        logits = net(X).float()
        counted = int((y != self.ignore_index).sum())
        if counted:
            self.loss += torch.tensor([segmentation_loss(logits, y, self.ignore_index).item() * counted,
                                       float(counted)], dtype=torch.float64)
        cm = metrics.confusion_matrix(logits.argmax(1), y, self.num_classes,
                                      ignore_index=self.ignore_index).to(torch.int64)
        self.confmat = cm if self.confmat is None else self.confmat + cm

    def compute(self, world: World = World()) -> dict[str, Any]:
        device = self.confmat.device if self.confmat is not None else torch.device("cpu")
        confmat = self.confmat if self.confmat is not None else torch.zeros(
            self.num_classes, self.num_classes, dtype=torch.int64)
        confmat = all_sum(confmat.to(device), world).cpu()
        loss_sum, pixels = all_sum(self.loss.to(device), world).tolist()
        scores = metrics.segmentation_scores(confmat)
        return {"loss": loss_sum / max(pixels, 1), "pixel_accuracy": float(scores["pixel_accuracy"]),
                "mean_iou": float(scores["mean_iou"]),
                "iou": [float(v) for v in torch.as_tensor(scores["iou"]).tolist()]}


@dataclass
class Segmentation(Task):
    """Semantic segmentation: per-pixel cross-entropy ignoring the void label
    (:func:`imagenet_book.models.segmentation.segmentation_loss`), evaluated from one confusion
    matrix over all pixels (pixel accuracy, per-class IoU, mean IoU).

    Batches ``(X, y)``: float ``(B, 3, H, W)``, ``y`` int ``(B, H, W)`` in ``0..K-1`` or
    ``ignore_index``. The meter returns ``{"loss", "pixel_accuracy", "mean_iou", "iou"}``.

    Taught in: chapters/09_segmentation_voc.ipynb
    """

    num_classes: int = 21
    ignore_index: int = VOID_LABEL
    primary: ClassVar[str] = "mean_iou"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "pixel_accuracy", "mean_iou")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        X, y = batch[0], batch[1]
        return {"loss": segmentation_loss(net(X).float(), y.long(), self.ignore_index)}

    def meter(self) -> Meter:
        return _ConfusionMatrix(self.num_classes, self.ignore_index)


# ------------------------------------------------------------------------------- detection


class _DetectionAP(Meter):
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.preds: list[dict[str, Tensor]] = []
        self.targets: list[dict[str, Tensor]] = []

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        images, targets = batch[0], batch[1]
        for out in _unwrap(net).predict(list(images)):
            self.preds.append({k: v.float().cpu() if k != "labels" else v.cpu() for k, v in out.items()})
        for t in targets:
            self.targets.append({"boxes": torch.as_tensor(t["boxes"]).float().reshape(-1, 4).cpu(),
                                 "labels": torch.as_tensor(t["labels"]).cpu(),
                                 "difficult": torch.as_tensor(t["difficult"], dtype=torch.bool).cpu()})

    def compute(self, world: World = World()) -> dict[str, Any]:
        gathered = all_gather((self.preds, self.targets), world)
        preds = [p for ps, _ in gathered for p in ps]
        targets = [t for _, ts in gathered for t in ts]
        area = metrics.voc_detection_map(preds, targets, num_classes=self.num_classes)
        eleven = metrics.voc_detection_map(preds, targets, num_classes=self.num_classes, use_07_metric=True)

        def per_class(ap: Any) -> list[float | None]:
            return [None if math.isnan(v) else float(v) for v in ap.per_class]

        return {"map": float(area.map), "map_07": float(eleven.map), "per_class": per_class(area),
                "per_class_07": per_class(eleven), "images": len(preds),
                "detections": sum(len(p["scores"]) for p in preds)}


@dataclass
class Detection(Task):
    """Object detection with the book's one-stage detector: ``L = L_cls + L_reg``
    (:func:`imagenet_book.models.detection.detection_loss`: focal or BCE classification of every
    anchor, smooth-L1 / L1 / MSE box regression of the positive ones), evaluated by VOC
    mAP@0.5 (area and 11-point, :func:`imagenet_book.metrics.voc_detection_map`).

    Training batches ``(X, targets)``: uint8 ``(B, 3, S, S)`` images at the detector's
    ``img_size`` and ``B`` dicts with ``"boxes"`` float ``(M, 4)`` XYXY in those pixels,
    ``"labels"`` int64 ``(M,)``, ``"difficult"`` bool ``(M,)``. Evaluation batches
    ``(images, targets)``: lists, images uint8 ``(3, H, W)`` of any size, boxes in their pixels
    (the meter calls :meth:`~imagenet_book.models.detection.Detector.predict`).
    ``training_step`` returns ``{"loss", "cls", "reg"}``; the meter ``{"map", "map_07",
    "per_class", "per_class_07", "images", "detections"}``.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    cls_loss: str = "focal"
    reg_loss: str = "smooth_l1"
    num_classes: int = 20
    primary: ClassVar[str] = "map"
    metric_names: ClassVar[tuple[str, ...]] = ("map", "map_07")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        images, targets = batch[0], batch[1]
        detector = _unwrap(net)
        X = detector.normalize(images)
        cls_logits, box_deltas = net(X)
        anchors = detector.anchors((X.shape[-2], X.shape[-1]), X.device)
        out = detection_loss(cls_logits.float(), box_deltas.float(), anchors, targets,
                             cls_loss=self.cls_loss, reg_loss=self.reg_loss,
                             box_weights=detector.box_weights)
        return {"loss": out["loss"], "cls": out["cls"].detach(), "reg": out["reg"].detach()}

    def meter(self) -> Meter:
        return _DetectionAP(self.num_classes)
