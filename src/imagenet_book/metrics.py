"""Evaluation metrics: top-k accuracy, and the PASCAL VOC metrics (AP, mAP, mIoU).

Every VOC metric here is tested against an independent reference (tests/test_metrics_voc.py):
detection AP against a transcription of the VOC devkit and against torchmetrics/pycocotools,
multi-label AP against scikit-learn, mIoU against torchmetrics.

Taught in: chapters/01_imagenet.ipynb (top-k accuracy),
chapters/07_finetune_voc_classification.ipynb (multi-label mAP), chapters/08_detection_voc.ipynb
(detection AP and mAP), chapters/09_segmentation_voc.ipynb (confusion matrix, pixel accuracy, mIoU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["topk_correct", "topk_accuracy", "voc_ap", "DetectionAP", "voc_detection_map",
           "multilabel_average_precision", "confusion_matrix", "segmentation_scores",
           "SegmentationMeter"]


def topk_correct(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """Whether each example's true class is among its ``k`` highest scores.

    Args:
        logits: float ``(N, C)`` scores (logits or probabilities: only their order matters).
        target: int64 ``(N,)`` true class indices.
        k: how many guesses each example gets, ``1 <= k <= C``.

    Returns:
        bool ``(N,)``.

    Taught in: chapters/01_imagenet.ipynb.
    """
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be between 1 and the number of classes {logits.shape[1]}, got {k}")
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == target.unsqueeze(1)).any(dim=1)


def topk_accuracy(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy, as a fraction in [0, 1], for each k in ``ks``.

    Args:
        logits: float ``(N, C)``.
        target: int64 ``(N,)``.
        ks: the values of k; those larger than C are skipped.

    Returns:
        ``{k: accuracy}``.

    Taught in: chapters/01_imagenet.ipynb.
    """
    with torch.no_grad():
        return {k: topk_correct(logits, target, k).float().mean().item()
                for k in ks if k <= logits.shape[1]}


# --------------------------------------------------------------------------------------------
# PASCAL VOC: average precision, detection mAP, multi-label mAP, segmentation mIoU
# --------------------------------------------------------------------------------------------

def voc_ap(recall: Tensor | np.ndarray, precision: Tensor | np.ndarray, *,
           use_07_metric: bool = False) -> float:
    """Average precision from a precision-recall curve, exactly as the VOC devkit computes it.

    * ``use_07_metric=False`` (VOC2010 and later): the area under the *precision envelope*,
      ``p_interp(r) = max_{r' >= r} p(r')``, summed over the recall steps of the curve.
    * ``use_07_metric=True`` (VOC2007): the mean of ``p_interp(t)`` at the 11 recall levels
      ``t = 0, 0.1, ..., 1`` (0 where the curve never reaches ``t``). The levels are computed as
      ``k * 0.1`` in float64, as the devkit's ``np.arange(0., 1.1, 0.1)`` does, so 0.3, 0.6 and
      0.7 are a hair above their decimal values: a recall of exactly 3/10 does not count for the
      0.3 level. We keep that quirk so that the numbers equal the devkit's.

    Args:
        recall: float ``(D,)``, recall after each detection in decreasing score order.
        precision: float ``(D,)``, precision after each detection, same length.
        use_07_metric: the 11-point VOC2007 metric instead of the area.

    Returns:
        AP in [0, 1] (0.0 for an empty curve).

    Taught in: chapters/08_detection_voc.ipynb.
    """
    rec = torch.as_tensor(recall, dtype=torch.float64).cpu()
    prec = torch.as_tensor(precision, dtype=torch.float64).cpu()
    if rec.ndim != 1 or prec.shape != rec.shape:
        raise ValueError(f"recall and precision must be 1-D of the same length, got shapes "
                         f"{tuple(rec.shape)} and {tuple(prec.shape)}.")
    if use_07_metric:
        levels = torch.arange(11, dtype=torch.float64) * 0.1
        return sum(prec[rec >= t].max().item() if (rec >= t).any() else 0.0 for t in levels) / 11
    mrec = torch.cat([rec.new_zeros(1), rec, rec.new_ones(1)])
    mpre = torch.cat([prec.new_zeros(1), prec, prec.new_zeros(1)])
    mpre = mpre.flip(0).cummax(0).values.flip(0)  # the envelope: max precision at recall >= r
    i = torch.nonzero(mrec[1:] != mrec[:-1]).squeeze(1)  # where recall changes
    return ((mrec[i + 1] - mrec[i]) * mpre[i + 1]).sum().item()


@dataclass
class DetectionAP:
    """What :func:`voc_detection_map` returns.

    Attributes:
        map: mean AP over the classes with at least one non-difficult ground-truth object
            (nan when no class has one).
        per_class: AP of each class, length ``num_classes``; nan for a class without
            non-difficult ground truth.
        num_gt: non-difficult ground-truth objects per class (the recall's denominator).
        tp, fp: true and false positives per class, counted over all detections (detections
            matched to a difficult object are neither).
        recall, precision: per class, float64 ``(D_c,)``: the curve after each of the class's
            ``D_c`` counted detections in decreasing score order (ignored detections left out);
            recall is nan for a class without ground truth.

    Taught in: chapters/08_detection_voc.ipynb.
    """

    map: float
    per_class: list[float]
    num_gt: list[int]
    tp: list[int]
    fp: list[int]
    recall: list[Tensor] = field(repr=False)
    precision: list[Tensor] = field(repr=False)


def _column(d: Mapping[str, Any], key: str, where: str, ndim: int) -> Tensor:
    """``d[key]`` as a CPU tensor of the right rank; shapes checked here, values later (at once)."""
    if key not in d:
        raise ValueError(f"{where} has no {key!r} entry (keys: {sorted(d)}).")
    x = d[key] if isinstance(d[key], Tensor) else torch.as_tensor(d[key])
    if x.ndim != ndim or (ndim == 2 and x.shape[1] != 4):
        want = "(N, 4)" if ndim == 2 else "(N,)"
        raise ValueError(f"{where}[{key!r}] must have shape {want}, got {tuple(x.shape)}.")
    return x.detach().cpu().as_subclass(Tensor)


def _read_detections(dicts: Sequence[Mapping[str, Any]], name: str, third: str,
                     num_classes: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Concatenate per-image dicts: boxes float64 ``(N, 4)``, labels int64 ``(N,)``, the
    ``third`` entry (``"scores"``, or ``"difficult"`` which may be missing) and the image index
    of each box, int64 ``(N,)``. Raises ValueError naming the image, key and value at fault."""
    boxes, labels, thirds = [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0)]
    for i, d in enumerate(dicts):
        where = f"{name}[{i}]"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where} must be a dict with 'boxes', 'labels' and {third!r}, "
                             f"got {type(d).__name__}.")
        fmt = getattr(d.get("boxes"), "format", None)
        if fmt is not None and getattr(fmt, "name", "XYXY") != "XYXY":
            raise ValueError(f"{where}['boxes'] are in {fmt.name} format; convert them to XYXY first "
                             f"(torchvision.ops.box_convert or transforms.v2.ConvertBoundingBoxFormat).")
        boxes.append(_column(d, "boxes", where, 2))
        labels.append(_column(d, "labels", where, 1))
        if labels[-1].is_floating_point() or labels[-1].is_complex():
            raise ValueError(f"{where}['labels'] must hold integer class indices, got dtype {labels[-1].dtype}.")
        if len(labels[-1]) != len(boxes[-1]):
            raise ValueError(f"{where} has {len(boxes[-1])} boxes but {len(labels[-1])} labels.")
        missing = third == "difficult" and third not in d
        thirds.append(torch.zeros(len(boxes[-1])) if missing else _column(d, third, where, 1))
        if len(thirds[-1]) != len(boxes[-1]):
            what = "difficult flags" if third == "difficult" else third
            raise ValueError(f"{where} has {len(boxes[-1])} boxes but {len(thirds[-1])} {what}.")
    sizes = torch.tensor([len(b) for b in boxes[1:]], dtype=torch.int64)
    image = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    box, label, extra = torch.cat(boxes).double(), torch.cat(labels).long(), torch.cat(thirds)

    def fail(bad: Tensor, what: str) -> None:
        k = int(bad.nonzero()[0])
        i = int(image[k])
        raise ValueError(f"{name}[{i}]{what.format(k=k - int(sizes[:i].sum()))}")
    bad = ~torch.isfinite(box).all(1) | (box[:, 2] < box[:, 0]) | (box[:, 3] < box[:, 1])
    if bad.any():
        fail(bad, "['boxes'][{k}] = " + f"{box[bad][0].tolist()} is not a finite XYXY box with x1 <= x2 and "
             "y1 <= y2 (XYWH or CXCYWH boxes must be converted first).")
    bad = (label < 0) | (label >= num_classes)
    if bad.any():
        fail(bad, f"['labels'] has {label[bad][0].item()}, outside 0..{num_classes - 1}. Labels are 0-based "
             f"class indices (torchvision detection models use 1..{num_classes} with 0 = background: "
             f"subtract 1).")
    if third == "scores" and not torch.isfinite(extra).all():
        fail(~torch.isfinite(extra), "['scores'][{k}] is not finite.")
    return box, label, (extra.double() if third == "scores" else extra.bool()), image


def _paired_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast pairs of XYXY boxes ``(..., 4)`` -> ``(...)``: the formula of
    ``torchvision.ops.box_iou`` (continuous coordinates, no ``+ 1``), pair by pair."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def voc_detection_map(predictions: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]],
                      num_classes: int = 20, *, iou_threshold: float = 0.5,
                      use_07_metric: bool = False) -> DetectionAP:
    """PASCAL VOC detection mAP: the devkit's matching and AP, vectorised.

    For each class, the detections of all images are sorted by decreasing score (a stable sort,
    as the MATLAB devkit's). Each detection is compared with the ground-truth objects of the same
    class in its image and takes the one with the highest IoU (the first on a tie). If that IoU is
    ``>= iou_threshold`` (the MATLAB devkit's test; the Python ports write ``>``, which differs only
    on an exact tie) and the object is

    * not difficult and not yet claimed: a true positive, and the object is claimed;
    * not difficult and already claimed by a higher-scored detection: a false positive
      (a duplicate detection);
    * difficult: ignored, neither true nor false positive;

    otherwise it is a false positive. Recall is ``TP / (number of non-difficult objects)``,
    precision ``TP / (TP + FP)``, and the AP comes from :func:`voc_ap`.

    IoU uses this package's box convention (see :mod:`imagenet_book.data.voc`): boxes are 0-based
    continuous XYXY pixel coordinates, width ``x2 - x1`` with NO ``+ 1``, the same IoU as
    ``torchvision.ops.box_iou`` and COCO. (The devkit's boxes are 1-based inclusive pixel indices
    and add 1 to widths; on the same physical boxes both give the same IoU.)

    Args:
        predictions: one dict per image: ``"boxes"`` float ``(N, 4)`` XYXY, ``"scores"`` float
            ``(N,)``, ``"labels"`` int64 ``(N,)`` in ``0..num_classes-1``.
        targets: one dict per image, same order: ``"boxes"`` ``(M, 4)``, ``"labels"`` ``(M,)``,
            optional ``"difficult"`` bool ``(M,)`` (missing: all False).
        num_classes: C, 20 for VOC.
        iou_threshold: 0.5 for VOC.
        use_07_metric: VOC2007 11-point AP instead of the area (VOC2010+).

    Returns:
        :class:`DetectionAP` (``.map``, ``.per_class``, counts and PR curves).

    Raises:
        ValueError: lists of different lengths, a missing key, a wrong shape, a label outside
            ``0..C-1``, a box with ``x2 < x1`` or ``y2 < y1``, a score that is not finite.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"predictions has {len(predictions)} images but targets has {len(targets)}; "
                         f"give one dict per image, in the same order.")
    if num_classes < 1 or not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"need num_classes >= 1 and 0 < iou_threshold <= 1, got {num_classes}, {iou_threshold}.")
    C = num_classes
    det_boxes, det_labels, det_scores, det_image = _read_detections(predictions, "predictions", "scores", C)
    gt_boxes, gt_labels, gt_difficult, gt_image = _read_detections(targets, "targets", "difficult", C)
    # Objects grouped by (image, class), in their own order inside a group (the devkit's tie-break),
    # plus one dummy object at index G that every unmatched detection will point at.
    G = len(gt_labels)
    group = gt_image * C + gt_labels
    by_group = torch.sort(group, stable=True).indices
    gt_boxes = torch.cat([gt_boxes[by_group], gt_boxes.new_zeros(1, 4)])
    gt_difficult = torch.cat([gt_difficult[by_group], torch.zeros(1, dtype=torch.bool)])
    group_size = torch.bincount(group, minlength=len(targets) * C)
    group_start = group_size.cumsum(0) - group_size

    result = DetectionAP(map=float("nan"), per_class=[], num_gt=[], tp=[], fp=[], recall=[], precision=[])
    for c in range(C):
        result.num_gt.append(int((~gt_difficult[:G] & (gt_labels[by_group] == c)).sum()))
        # This class's detections, highest score first (stable: ties keep the input order).
        mine = (det_labels == c).nonzero().squeeze(1)
        mine = mine[torch.sort(det_scores[mine], descending=True, stable=True).indices]
        # Candidate objects of each detection: those of its class in its image (K slots, padded
        # with the dummy), then the devkit's choice: the highest IoU, the first one on a tie.
        g = det_image[mine] * C + c
        k = torch.arange(int(group_size[g].max()) if len(g) else 0)
        slots = torch.where(k < group_size[g, None], group_start[g, None] + k, G)
        slots = torch.cat([slots, torch.full((len(mine), 1), G)], dim=1)  # (D_c, K + 1)
        iou = _paired_iou(det_boxes[mine, None], gt_boxes[slots]).nan_to_num(0.0)
        iou = torch.where(slots < G, iou, -1.0)
        best = iou.argmax(1, keepdim=True)
        matched = iou.gather(1, best).squeeze(1) >= iou_threshold
        obj = torch.where(matched, slots.gather(1, best).squeeze(1), G)
        ignored = gt_difficult[obj]  # matched to a difficult object: neither TP nor FP
        claims = matched & ~ignored
        # The devkit's greedy loop in one step: a claim is a TP iff it is the first (best-scored)
        # claim on its object; later claims on the same object are duplicates, i.e. FPs.
        position = torch.arange(len(mine))
        first_claim = torch.full((G + 1,), len(mine), dtype=torch.int64)
        first_claim.scatter_reduce_(0, obj[claims], position[claims], reduce="amin")
        tp = (claims & (first_claim[obj] == position))[~ignored]
        tp_cum = tp.double().cumsum(0)
        precision = tp_cum / torch.arange(1, len(tp) + 1)  # every counted detection is a TP or an FP
        n = result.num_gt[c]
        recall = tp_cum / n if n else torch.full_like(tp_cum, float("nan"))
        result.per_class.append(voc_ap(recall, precision, use_07_metric=use_07_metric) if n else float("nan"))
        result.tp.append(int(tp.sum())), result.fp.append(int((~tp).sum()))
        result.recall.append(recall), result.precision.append(precision)
    counted = [ap for ap, n in zip(result.per_class, result.num_gt) if n]
    result.map = sum(counted) / len(counted) if counted else float("nan")
    return result


def multilabel_average_precision(scores: Tensor, targets: Tensor, mask: Tensor | None = None, *,
                                 interpolated: bool = True) -> tuple[float, list[float]]:
    """Mean average precision of a multi-label classifier (VOC classification), class by class.

    For each class, the images are ranked by score and the precision ``P_n`` and recall ``R_n``
    are taken at each distinct score threshold (tied scores form one threshold). Then

    * ``interpolated=True`` (default, VOC's metric since 2010, the same as chapter 08's
      :func:`voc_ap`): the area under the precision *envelope* ``max_{R' >= R} P(R')``;
    * ``interpolated=False``: ``AP = sum_n (R_n - R_{n-1}) P_n``, the non-interpolated area,
      exactly scikit-learn's ``average_precision_score``; never above the VOC value.

    (The VOC2007 devkit averaged the envelope at 11 recall levels instead, as :func:`voc_ap` with
    ``use_07_metric=True``.)

    Args:
        scores: float ``(N, C)``, any monotone score (logits or probabilities).
        targets: ``(N, C)`` of 0/1 (float or int): 1 where the class is present.
        mask: optional ``(N, C)``; 0 leaves that (image, class) entry out, as VOC does for images
            where a class appears only as difficult objects (``VOCMultiLabel``'s ``mask``).

    Returns:
        ``(mAP, per_class)``: per-class AP (nan for a class with no positive among the kept
        entries, where scikit-learn warns) and their mean over the other classes.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    scores = torch.as_tensor(scores).detach().cpu().double()
    targets = torch.as_tensor(targets).detach().cpu()
    if scores.ndim != 2 or targets.shape != scores.shape:
        raise ValueError(f"scores and targets must both be (N, C), got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}.")
    if not torch.isfinite(scores).all():
        raise ValueError("scores hold nan or inf; they cannot be ranked.")
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must hold 0 or 1; VOC's -1/0/1 labels give targets = (labels == 1) "
                         "and mask = (labels != 0).")
    keep = torch.ones_like(targets, dtype=torch.bool)
    if mask is not None:
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.shape != scores.shape:
            raise ValueError(f"mask must have the shape of scores {tuple(scores.shape)}, got {tuple(mask.shape)}.")
        keep = mask != 0
    per_class = []
    for c in range(scores.shape[1]):
        s, y = scores[keep[:, c], c], targets[keep[:, c], c].double()
        if y.sum() == 0:
            per_class.append(float("nan"))
            continue
        order = torch.sort(s, descending=True, stable=True).indices
        s, y = s[order], y[order]
        tps, fps = y.cumsum(0), (1 - y).cumsum(0)
        last_of_tie = torch.cat([s[1:] != s[:-1], torch.tensor([True])])  # one point per threshold
        tps, fps = tps[last_of_tie], fps[last_of_tie]
        recall, precision = tps / tps[-1], tps / (tps + fps)
        if interpolated:
            per_class.append(voc_ap(recall, precision))
        else:
            per_class.append((torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum().item())
    counted = [ap for ap in per_class if not math.isnan(ap)]
    return (sum(counted) / len(counted) if counted else float("nan")), per_class


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: int = 255) -> Tensor:
    """Confusion matrix of class predictions, e.g. segmentation pixels; sum it over batches.

    Args:
        pred: int64 ``(...)`` predicted classes in ``0..C-1`` (``logits.argmax(1)``).
        target: int64, same shape, true classes in ``0..C-1`` or ``ignore_index``.
        num_classes: C (21 for VOC segmentation: background + 20 classes).
        ignore_index: target value to skip (VOC's void/boundary label 255).

    Returns:
        int64 ``(C, C)`` on ``target``'s device: entry ``[i, j]`` counts the elements of true class
        ``i`` predicted as ``j`` (rows = truth, columns = prediction).

    Taught in: chapters/09_segmentation_voc.ipynb.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)} (for logits (N, C, H, W) pass logits.argmax(1)).")
    if pred.is_floating_point() or target.is_floating_point():
        raise ValueError(f"pred and target must be integer class indices, got {pred.dtype} and {target.dtype}.")
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    for name, x in (("target", t), ("pred", p)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            bad = x[(x < 0) | (x >= num_classes)][0].item()
            raise ValueError(f"{name} holds {bad}, outside 0..{num_classes - 1}"
                             + (f" (and it is not ignore_index={ignore_index})." if name == "target" else "."))
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_scores(confmat: Tensor) -> dict[str, Any]:
    """Pixel accuracy, mean accuracy and (mean) IoU from a confusion matrix.

    With ``n_ij`` the pixels of class ``i`` predicted as ``j``:
    pixel accuracy ``= sum_i n_ii / sum_ij n_ij``; class accuracy ``n_ii / sum_j n_ij``;
    ``IoU_i = n_ii / (sum_j n_ij + sum_j n_ji - n_ii)``; mean IoU averages the classes present
    in the truth or the prediction (nan IoU for a class absent from both).

    Args:
        confmat: int ``(C, C)`` from :func:`confusion_matrix` (rows = truth).

    Returns:
        ``{"pixel_accuracy": float, "mean_accuracy": float, "mean_iou": float, "iou": list[float]}``
        (nan for an empty matrix).

    Taught in: chapters/09_segmentation_voc.ipynb.
    """
    if confmat.ndim != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be a square (C, C) matrix, got shape {tuple(confmat.shape)}.")
    n = confmat.detach().cpu().double()
    diag, truth, predicted = n.diag(), n.sum(1), n.sum(0)
    iou = diag / (truth + predicted - diag)  # 0/0 = nan where the class is absent from both
    accuracy = diag / truth
    return {"pixel_accuracy": (diag.sum() / n.sum()).item(),
            "mean_accuracy": accuracy.nanmean().item(),
            "mean_iou": iou.nanmean().item(),
            "iou": iou.tolist()}


class SegmentationMeter:
    """Accumulates a confusion matrix over batches; :meth:`compute` gives the scores.

    Example::

        meter = SegmentationMeter(num_classes=21)
        for X, y in loader:
            meter.update(net(X), y)         # logits (N, C, H, W) or predictions (N, H, W)
        meter.compute()["mean_iou"]

    Under DDP, ``torch.distributed.all_reduce(meter.confmat)`` before :meth:`compute`.

    Taught in: chapters/09_segmentation_voc.ipynb.
    """

    def __init__(self, num_classes: int, *, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self.confmat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor) -> None:
        """Add a batch: ``output`` float logits ``(N, C, H, W)`` or int64 predictions ``(N, H, W)``;
        ``target`` int64 ``(N, H, W)``."""
        pred = output.argmax(1) if output.is_floating_point() else output
        batch = confusion_matrix(pred, target, self.num_classes, ignore_index=self.ignore_index)
        self.confmat = self.confmat.to(batch.device) + batch

    def compute(self) -> dict[str, Any]:
        """:func:`segmentation_scores` of everything added since the last :meth:`reset`."""
        return segmentation_scores(self.confmat)
