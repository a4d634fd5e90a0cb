"""PASCAL VOC metrics (ib.metrics): each checked against an independent reference.

* detection AP: a transcription of the VOC devkit's Python evaluation (below) on randomised
  cases, both the 11-point and the all-point AP; and torchmetrics' MeanAveragePrecision
  (pycocotools backend), compared like with like: its recall and its 101-point interpolated
  precision at IoU 0.5, recomputed from our precision-recall curve;
* multi-label mAP: scikit-learn's average_precision_score;
* mIoU / confusion matrix: torchmetrics' JaccardIndex and MulticlassConfusionMatrix;
* hand-worked cases with known answers, and the built-in VOC stand-in read by ib.data.voc.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from imagenet_book.metrics import (SegmentationMeter, confusion_matrix, multilabel_average_precision,
                                   segmentation_scores, voc_ap, voc_detection_map)

# ---------------------------------------------------------------------------------------------
# Reference: the VOC devkit's Python evaluation (voc_eval.py of py-faster-rcnn, also in detectron2),
# transcribed for in-memory lists of dicts. Three deliberate departures, each marked "CHANGED":
#   1. no "+ 1" in widths, heights and areas: this package's boxes are 0-based continuous XYXY
#      (see imagenet_book/data/voc.py), the devkit's are 1-based inclusive pixel indices;
#   2. "ovmax >= ovthresh", as the official MATLAB devkit (VOCevaldet.m); the Python port writes
#      ">", which differs only when an IoU equals the threshold exactly;
#   3. a stable sort of the confidences (MATLAB's sort is stable; np.argsort's default is not),
#      so that tied scores are taken in input order.
# ---------------------------------------------------------------------------------------------

def devkit_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.
    else:
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def devkit_voc_eval(predictions, targets, classname, ovthresh=0.5, use_07_metric=False):
    """rec, prec, ap for one class, as voc_eval() computes them from its files (and, for the
    test, which detections counted: the devkit leaves the ignored ones as steps of zero)."""
    class_recs = {}
    npos = 0
    for imagename, t in enumerate(targets):
        sel = (t["labels"] == classname).numpy()
        bbox = t["boxes"].numpy().astype(float)[sel]
        difficult = t["difficult"].numpy().astype(bool)[sel]
        det = [False] * len(bbox)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}

    image_ids, confidence, BB = [], [], []
    for imagename, p in enumerate(predictions):
        sel = (p["labels"] == classname).numpy()
        image_ids += [imagename] * int(sel.sum())
        confidence += p["scores"].numpy().astype(float)[sel].tolist()
        BB += p["boxes"].numpy().astype(float)[sel].tolist()
    confidence = np.array(confidence)
    BB = np.array(BB).reshape(-1, 4)

    sorted_ind = np.argsort(-confidence, kind="stable")  # CHANGED (3)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]

    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin, 0.)  # CHANGED (1)
            ih = np.maximum(iymax - iymin, 0.)  # CHANGED (1)
            inters = iw * ih
            uni = ((bb[2] - bb[0]) * (bb[3] - bb[1]) +  # CHANGED (1)
                   (BBGT[:, 2] - BBGT[:, 0]) * (BBGT[:, 3] - BBGT[:, 1]) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax >= ovthresh:  # CHANGED (2)
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.

    counted = (tp + fp) > 0  # added for the test
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    ap = devkit_voc_ap(rec, prec, use_07_metric)
    return rec, prec, ap, counted


# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------

def _jitter(box: torch.Tensor, g: torch.Generator, scale: float) -> torch.Tensor:
    w, h = box[2] - box[0], box[3] - box[1]
    noise = (torch.rand(4, generator=g) - 0.5) * scale * torch.stack([w, h, w, h])
    out = box + noise
    return torch.stack([out[0], out[1], torch.maximum(out[2], out[0] + 1), torch.maximum(out[3], out[1] + 1)])


def random_detection_case(seed: int, num_images: int = 12, num_classes: int = 4, p_difficult: float = 0.2):
    """Overlapping objects, difficult flags, jittered/duplicate/random detections, tied scores."""
    g = torch.Generator().manual_seed(seed)
    predictions, targets = [], []
    for _ in range(num_images):
        m = int(torch.randint(0, 7, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 80
        wh = 4 + torch.rand(m, 2, generator=g) * 40
        gt = torch.cat([xy, xy + wh], 1)
        gl = torch.randint(0, num_classes - 1, (m,), generator=g)  # the last class never has gt
        gd = torch.rand(m, generator=g) < p_difficult
        boxes, labels = [], []
        for b, lab in zip(gt, gl):
            for _ in range(int(torch.randint(0, 3, (1,), generator=g))):  # 0, 1 or 2 (duplicate)
                boxes.append(_jitter(b, g, float(torch.rand(1, generator=g)) * 0.8))
                wrong_class = torch.rand(1, generator=g) > 0.9
                labels.append(int(torch.randint(0, num_classes, (1,), generator=g)) if wrong_class else int(lab))
        for _ in range(int(torch.randint(0, 4, (1,), generator=g))):  # background false positives
            xy0 = torch.rand(2, generator=g) * 80
            boxes.append(torch.cat([xy0, xy0 + 4 + torch.rand(2, generator=g) * 40]))
            labels.append(int(torch.randint(0, num_classes, (1,), generator=g)))
        n = len(boxes)
        scores = torch.round(torch.rand(n, generator=g) * 20) / 20  # coarse: many ties
        predictions.append({"boxes": torch.stack(boxes).float() if n else torch.zeros(0, 4),
                            "scores": scores, "labels": torch.tensor(labels, dtype=torch.int64)})
        targets.append({"boxes": gt.float(), "labels": gl, "difficult": gd})
    return predictions, targets


@pytest.mark.parametrize("use_07_metric", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_detection_ap_equals_the_devkit_on_random_cases(seed, use_07_metric):
    predictions, targets = random_detection_case(seed)
    for thr in (0.5, 0.3):
        ours = voc_detection_map(predictions, targets, num_classes=4, iou_threshold=thr,
                                 use_07_metric=use_07_metric)
        for c in range(4):
            npos = sum(int((~t["difficult"] & (t["labels"] == c)).sum()) for t in targets)
            if npos == 0:
                assert np.isnan(ours.per_class[c]) and ours.num_gt[c] == 0
                continue
            rec, prec, ap, counted = devkit_voc_eval(predictions, targets, c, thr, use_07_metric)
            assert ours.per_class[c] == pytest.approx(ap, abs=1e-12), (c, thr)
            assert ours.num_gt[c] == npos
            # Our curves leave out the ignored detections (matched to difficult objects); the
            # devkit keeps them as steps where nothing changes.
            np.testing.assert_allclose(ours.recall[c].numpy(), rec[counted], atol=1e-12)
            np.testing.assert_allclose(ours.precision[c].numpy(), prec[counted], atol=1e-12)
            assert ours.tp[c] + ours.fp[c] == counted.sum()
            if len(rec):
                assert ours.tp[c] == round(rec[-1] * npos)
        counted = [ap for ap in ours.per_class if not np.isnan(ap)]
        assert ours.map == pytest.approx(np.mean(counted))
        assert np.isnan(ours.per_class[3])  # the class without ground truth is left out


def random_disjoint_case(seed: int, num_images: int = 15, num_classes: int = 3):
    """Objects in distinct cells of a 4x4 grid (never overlapping), integer coordinates, no
    difficult objects: the case where VOC's greedy matching and COCO's agree exactly (a box with
    IoU >= 0.5 with one of two disjoint boxes has IoU < 0.5 with the other)."""
    g = torch.Generator().manual_seed(seed)
    predictions, targets = [], []
    for _ in range(num_images):
        m = int(torch.randint(1, 7, (1,), generator=g))
        cells = torch.randperm(16, generator=g)[:m]
        x0, y0 = (cells % 4) * 50, (cells // 4) * 50
        w, h = torch.randint(10, 45, (m,), generator=g), torch.randint(10, 45, (m,), generator=g)
        gt = torch.stack([x0, y0, x0 + w, y0 + h], 1).float()
        gl = torch.randint(0, num_classes, (m,), generator=g)
        boxes, labels = [], []
        for b, lab in zip(gt, gl):
            for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
                boxes.append(b + torch.randint(-8, 9, (4,), generator=g).float())
                labels.append(int(lab))
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            xy0 = torch.randint(0, 180, (2,), generator=g).float()
            boxes.append(torch.cat([xy0, xy0 + torch.randint(5, 40, (2,), generator=g).float()]))
            labels.append(int(torch.randint(0, num_classes, (1,), generator=g)))
        boxes = torch.stack(boxes) if boxes else torch.zeros(0, 4)
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        predictions.append({"boxes": boxes, "scores": torch.rand(len(boxes), generator=g),
                            "labels": torch.tensor(labels, dtype=torch.int64)})
        targets.append({"boxes": gt, "labels": gl})
    return predictions, targets


def coco_interpolated_precision(recall: np.ndarray, precision: np.ndarray, rec_thresholds: list[float]):
    """What pycocotools' accumulate() stores: the precision envelope read at each recall threshold
    (the first curve point with recall >= threshold; 0 past the end of the curve)."""
    pr = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    inds = np.searchsorted(recall, rec_thresholds, side="left")
    return np.array([pr[i] if i < len(pr) else 0.0 for i in inds])


@pytest.mark.parametrize("seed", range(4))
def test_detection_counts_and_curve_equal_torchmetrics(seed):
    from torchmetrics.detection import MeanAveragePrecision
    predictions, targets = random_disjoint_case(seed)
    rec_thresholds = np.linspace(0.0, 1.0, 101).tolist()
    metric = MeanAveragePrecision(iou_thresholds=[0.5], rec_thresholds=rec_thresholds,
                                  extended_summary=True, class_metrics=True, backend="pycocotools")
    metric.update(predictions, targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = metric.compute()
    ours = voc_detection_map(predictions, targets, num_classes=3)
    coco_aps = []
    for k, c in enumerate(tm["classes"].tolist()):
        if ours.num_gt[c] == 0:
            continue
        # precision: (IoU thresholds, recall thresholds, classes, areas, max dets); area "all",
        # at most 100 detections per image.
        assert tm["recall"][0, k, 0, -1].item() == pytest.approx(ours.tp[c] / ours.num_gt[c], abs=1e-12)
        expected = coco_interpolated_precision(ours.recall[c].numpy(), ours.precision[c].numpy(), rec_thresholds)
        np.testing.assert_allclose(tm["precision"][0, :, k, 0, -1].numpy(), expected, atol=1e-9)
        coco_aps.append(expected.mean())
    assert tm["map"].item() == pytest.approx(np.mean(coco_aps), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Detection: hand-worked cases
# ---------------------------------------------------------------------------------------------

G1, G2, G3 = [0., 0., 10., 10.], [20., 20., 30., 30.], [40., 0., 50., 10.]
NOWHERE = [60., 60., 70., 70.]


def _pred(boxes, scores, labels=None):
    labels = [0] * len(boxes) if labels is None else labels
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64)}


def _target(boxes, labels=None, difficult=None):
    labels = [0] * len(boxes) if labels is None else labels
    out = {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


def test_perfect_detections_score_one():
    targets = [_target([G1, G2], [0, 1]), _target([G3], [1])]
    predictions = [_pred([G2, G1], [0.3, 0.9], [1, 0]), _pred([G3], [0.5], [1])]
    for use_07 in (False, True):
        r = voc_detection_map(predictions, targets, num_classes=2, use_07_metric=use_07)
        assert r.map == 1.0 and r.per_class == [1.0, 1.0]
        assert (r.tp, r.fp, r.num_gt) == ([1, 2], [0, 0], [1, 2])


def test_a_duplicate_detection_is_a_false_positive():
    # Two objects. Scores: 0.9 on G1 (TP), 0.8 on G1 again (duplicate: FP), 0.7 on G2 (TP).
    # recall 1/2, 1/2, 1; precision 1, 1/2, 2/3. Envelope: 1 up to recall 1/2, then 2/3.
    targets = [_target([G1, G2])]
    predictions = [_pred([G1, G1, G2], [0.9, 0.8, 0.7])]
    r = voc_detection_map(predictions, targets, num_classes=1)
    assert (r.tp, r.fp) == ([2], [1])
    assert r.recall[0].tolist() == [0.5, 0.5, 1.0]
    assert r.precision[0].tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert r.map == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # = 5/6, all-point
    # 11-point: levels 0, .1, ..., .5 read precision 1; levels .6, ..., 1 read 2/3.
    r07 = voc_detection_map(predictions, targets, num_classes=1, use_07_metric=True)
    assert r07.map == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)  # = 28/33: 11-point and area differ
    # Without the duplicate the same detector is perfect.
    assert voc_detection_map([_pred([G1, G2], [0.9, 0.7])], targets, num_classes=1).map == 1.0


def test_a_difficult_object_is_neither_rewarded_nor_punished():
    # G1, G2 normal, G3 difficult. Detections: G1 (0.9, TP), a miss (0.8, FP), G2 (0.7, TP): 5/6.
    base = [[G1, NOWHERE, G2], [0.9, 0.8, 0.7]]
    on_g3 = [[G1, G3, NOWHERE, G3, G2], [0.9, 0.85, 0.8, 0.75, 0.7]]  # two detections on G3
    targets = [_target([G1, G2, G3], difficult=[False, False, True])]
    without_g3_det = voc_detection_map([_pred(*base)], targets, num_classes=1)
    with_g3_det = voc_detection_map([_pred(*on_g3)], targets, num_classes=1)
    assert without_g3_det.map == with_g3_det.map == pytest.approx(5 / 6)
    assert with_g3_det.num_gt == [2] and (with_g3_det.tp, with_g3_det.fp) == ([2], [1])
    # The same object, not marked difficult: missing it costs recall, finding it pays.
    plain = [_target([G1, G2, G3])]
    assert voc_detection_map([_pred(*base)], plain, num_classes=1).map < 5 / 6
    assert voc_detection_map([_pred(*on_g3)], plain, num_classes=1).map != pytest.approx(5 / 6)
    # A difficult flag omitted means "not difficult".
    assert voc_detection_map([_pred(*base)], [_target([G1, G2, G3])], num_classes=1).num_gt == [3]


def test_on_an_iou_tie_the_first_object_wins_as_in_the_devkit():
    # Two annotations of the same box, one difficult: the detection goes to the FIRST one listed.
    predictions = [_pred([G1], [0.9])]
    difficult_first = [_target([G1, G1], difficult=[True, False])]
    normal_first = [_target([G1, G1], difficult=[False, True])]
    assert voc_detection_map(predictions, difficult_first, num_classes=1).map == 0.0  # ignored; object missed
    assert voc_detection_map(predictions, normal_first, num_classes=1).map == 1.0
    for targets in (difficult_first, normal_first):
        ap = devkit_voc_eval(predictions, targets, 0)[2]
        assert voc_detection_map(predictions, targets, num_classes=1).map == ap


def test_a_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    targets = [_target([G1, G2, G3], [0, 1, 2], difficult=[False, False, True])]
    predictions = [_pred([G1, G2, NOWHERE, G3], [0.9, 0.8, 0.7, 0.6], [0, 1, 3, 2])]
    r = voc_detection_map(predictions, targets, num_classes=4)
    assert r.per_class[:2] == [1.0, 1.0]
    assert np.isnan(r.per_class[2])  # only a difficult object
    assert np.isnan(r.per_class[3]) and r.fp[3] == 1  # no object, one false positive
    assert r.map == 1.0


def test_no_predictions_give_zero_ap():
    targets = [_target([G1], [0]), _target([G2, G3], [1, 0])]
    for predictions in ([_pred([], []), _pred([], [])], [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                                          "labels": torch.zeros(0, dtype=torch.int64)}] * 2):
        r = voc_detection_map(predictions, targets, num_classes=3)
        assert r.per_class[:2] == [0.0, 0.0] and np.isnan(r.per_class[2]) and r.map == 0.0
    assert np.isnan(voc_detection_map([], [], num_classes=2).map)


def test_box_below_the_iou_threshold_is_a_false_positive():
    # IoU([0,0,10,10], [0,0,10,20]) = 100/200 = 0.5 exactly: a match at 0.5 (>=), not above.
    targets = [_target([[0., 0., 10., 20.]])]
    predictions = [_pred([[0., 0., 10., 10.]], [1.0])]
    assert voc_detection_map(predictions, targets, num_classes=1, iou_threshold=0.5).map == 1.0
    assert voc_detection_map(predictions, targets, num_classes=1, iou_threshold=0.51).map == 0.0


def test_voc_ap_on_a_hand_curve():
    rec, prec = [0.25, 0.5, 0.75], [1.0, 0.5, 0.6]
    # Area: 0.25 * 1 + 0.25 * 0.6 + 0.25 * 0.6 (envelope), nothing past recall 0.75.
    assert voc_ap(rec, prec) == pytest.approx(0.55)
    # 11 points: 0, .1, .2 -> 1; .3 ... .7 -> 0.6; .8, .9, 1 -> 0.
    assert voc_ap(np.array(rec), np.array(prec), use_07_metric=True) == pytest.approx((3 + 5 * 0.6) / 11)
    assert voc_ap([], []) == 0.0 and voc_ap([], [], use_07_metric=True) == 0.0


def test_voc2007_levels_are_the_devkits_arange():
    # np.arange(0., 1.1, 0.1)[3] is 0.30000000000000004: a recall of exactly 0.3 misses that level.
    rec, prec = np.array([3 / 10]), np.array([1.0])
    assert voc_ap(rec, prec, use_07_metric=True) == devkit_voc_ap(rec, prec, True) == pytest.approx(3 / 11)


def test_detection_accepts_what_the_voc_dataset_gives(voc_standin):
    from imagenet_book.data.voc import VOCDetection
    ds = VOCDetection(voc_standin, "2007", "trainval")
    targets = [ds[i][1] for i in range(len(ds))]
    assert isinstance(targets[0]["boxes"], tv_tensors.BoundingBoxes)
    predictions = [{"boxes": t["boxes"], "scores": torch.linspace(1, 0.5, len(t["labels"])), "labels": t["labels"]}
                   for t in targets]
    r = voc_detection_map(predictions, targets)
    has_gt = [n > 0 for n in r.num_gt]
    assert any(has_gt) and r.map == 1.0
    assert all(np.isnan(ap) for ap, ok in zip(r.per_class, has_gt) if not ok)


def test_detection_bad_input_is_named():
    t, p = _target([G1]), _pred([G1], [0.5])
    with pytest.raises(ValueError, match="predictions has 2 images but targets has 1"):
        voc_detection_map([p, p], [t])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['boxes'\] must have shape \(N, 4\)"):
        voc_detection_map([{**p, "boxes": torch.zeros(1, 5)}], [t])
    with pytest.raises(ValueError, match=r"predictions\[0\] has 1 boxes but 2 scores"):
        voc_detection_map([{**p, "scores": torch.ones(2)}], [t])
    with pytest.raises(ValueError, match=r"predictions\[1\]\['scores'\]\[0\] is not finite"):
        voc_detection_map([p, {**p, "scores": torch.tensor([float("nan")])}], [t, t])
    with pytest.raises(ValueError, match=r"targets\[1\] must be a dict"):
        voc_detection_map([p, p], [t, [G1]])
    with pytest.raises(ValueError, match=r"predictions\[0\] has no 'scores' entry"):
        voc_detection_map([{"boxes": p["boxes"], "labels": p["labels"]}], [t])
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\] has 20, outside 0..19.*subtract 1"):
        voc_detection_map([p, p], [t, {**t, "labels": torch.tensor([20])}])
    with pytest.raises(ValueError, match=r"targets\[0\] has 1 boxes but 2 difficult flags"):
        voc_detection_map([p], [{**t, "difficult": torch.tensor([False, True])}])
    two = _pred([G1, [10., 0., 0., 10.]], [0.5, 0.4])
    with pytest.raises(ValueError, match=r"predictions\[1\]\['boxes'\]\[1\] = \[10.0, 0.0, 0.0, 10.0\] is not"):
        voc_detection_map([p, two], [t, t])
    with pytest.raises(ValueError, match="must hold integer class indices"):
        voc_detection_map([{**p, "labels": torch.tensor([0.0])}], [t])
    cxcywh = tv_tensors.BoundingBoxes([[5., 5., 10., 10.]], format="CXCYWH", canvas_size=(20, 20))
    with pytest.raises(ValueError, match="CXCYWH format; convert them to XYXY"):
        voc_detection_map([{**p, "boxes": cxcywh}], [t])
    with pytest.raises(ValueError, match="recall and precision must be 1-D of the same length"):
        voc_ap([0.1, 0.2], [1.0])


# ---------------------------------------------------------------------------------------------
# Multi-label classification mAP
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_multilabel_ap_equals_sklearn(seed):
    from sklearn.metrics import average_precision_score
    g = torch.Generator().manual_seed(seed)
    n, c = 60, 7
    scores = torch.round(torch.randn(n, c, generator=g) * 4) / 4  # coarse: tied scores
    targets = (torch.rand(n, c, generator=g) < 0.3).float()
    targets[:, -1] = 0  # a class with no positive
    targets[0, :-1] = 1  # every other class has one
    mask = (torch.rand(n, c, generator=g) > 0.15).float()
    mask[0] = 1
    for m in (None, mask):
        mean, per_class = multilabel_average_precision(scores, targets, m, interpolated=False)
        keep = torch.ones(n, c, dtype=torch.bool) if m is None else m.bool()
        expected = [average_precision_score(targets[keep[:, k], k].numpy(), scores[keep[:, k], k].numpy())
                    for k in range(c - 1)]
        assert per_class[:-1] == pytest.approx(expected, abs=1e-12)
        assert np.isnan(per_class[-1])
        assert mean == pytest.approx(np.mean(expected), abs=1e-12)
        voc = multilabel_average_precision(scores, targets, m)[1][:-1]  # VOC's: the envelope's area
        assert all(v >= e - 1e-12 for v, e in zip(voc, expected)) and voc != pytest.approx(expected, abs=1e-6)


def test_multilabel_ap_is_voc_s_envelope_area():
    # Ranked: pos, neg, neg, pos, pos. Precision at the positives 1, 2/4, 3/5: scikit-learn's AP is
    # their mean 0.7; VOC's envelope lifts the 2/4 to the 3/5 that comes later: (1 + 0.6 + 0.6) / 3.
    scores = torch.tensor([5.0, 4, 3, 2, 1])[:, None]
    targets = torch.tensor([1.0, 0, 0, 1, 1])[:, None]
    assert multilabel_average_precision(scores, targets, interpolated=False)[0] == pytest.approx(0.7)
    assert multilabel_average_precision(scores, targets)[0] == pytest.approx(2.2 / 3)
    recall, precision = torch.tensor([1 / 3, 1 / 3, 1 / 3, 2 / 3, 1]), torch.tensor([1, 1 / 2, 1 / 3, 2 / 4, 3 / 5])
    assert multilabel_average_precision(scores, targets)[0] == pytest.approx(voc_ap(recall, precision))


def test_multilabel_hand_cases():
    targets = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    assert multilabel_average_precision(targets.float() * 2 - 1, targets) == (1.0, [1.0, 1.0])
    # Class 0 ranked: pos (0.9), neg (0.8), pos (0.7): AP = 1/2 * 1 + 1/2 * 2/3.
    scores = torch.tensor([[0.9, 0.0], [0.8, 1.0], [0.7, 0.0], [0.1, 0.0]])
    mean, per_class = multilabel_average_precision(scores, targets)
    assert per_class[0] == pytest.approx(5 / 6)
    # Class 1: one positive tied with nothing above it, AP 1.
    assert per_class[1] == 1.0 and mean == pytest.approx((5 / 6 + 1) / 2)
    # Masking out the negative at 0.8 (as VOC masks a difficult-only image) makes class 0 perfect.
    mask = torch.ones(4, 2)
    mask[1, 0] = 0
    assert multilabel_average_precision(scores, targets, mask)[1][0] == 1.0


def test_multilabel_bad_input_is_named():
    with pytest.raises(ValueError, match=r"must both be \(N, C\), got \(4, 3\) and \(4, 2\)"):
        multilabel_average_precision(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="targets must hold 0 or 1"):
        multilabel_average_precision(torch.zeros(2, 2), torch.tensor([[1, -1], [0, 1]]))
    with pytest.raises(ValueError, match="scores hold nan or inf"):
        multilabel_average_precision(torch.tensor([[float("nan")]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="mask must have the shape of scores"):
        multilabel_average_precision(torch.zeros(2, 2), torch.zeros(2, 2), torch.ones(2))


# ---------------------------------------------------------------------------------------------
# Segmentation: confusion matrix, pixel accuracy, mIoU
# ---------------------------------------------------------------------------------------------

def random_segmentation(seed: int, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, c - 1, (3, 17, 23), generator=g)  # class c-1 never in the truth ...
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.6, target.clamp(max=c - 1),
                       torch.randint(0, c - 2, target.shape, generator=g))  # ... nor predicted
    pred[target == 255] = torch.randint(0, c - 2, (int((target == 255).sum()),), generator=g)
    return pred, target


@pytest.mark.parametrize("seed", range(4))
def test_miou_and_confusion_equal_torchmetrics(seed):
    from torchmetrics.classification import MulticlassConfusionMatrix, MulticlassJaccardIndex
    c = 5
    pred, target = random_segmentation(seed, c)
    cm = confusion_matrix(pred, target, c)
    assert cm.dtype == torch.int64
    assert torch.equal(cm, MulticlassConfusionMatrix(c, ignore_index=255)(pred, target).long())
    scores = segmentation_scores(cm)
    macro = MulticlassJaccardIndex(c, ignore_index=255, average="macro")(pred, target)
    per_class = MulticlassJaccardIndex(c, ignore_index=255, average="none")(pred, target)
    assert scores["mean_iou"] == pytest.approx(macro.item(), abs=1e-6)
    assert scores["iou"][:-1] == pytest.approx(per_class[:-1].tolist(), abs=1e-6)
    assert np.isnan(scores["iou"][-1])  # absent from truth and prediction (torchmetrics: 0, unweighted)
    valid = target != 255
    assert scores["pixel_accuracy"] == pytest.approx((pred[valid] == target[valid]).double().mean().item())
    per_class_acc = [(pred[valid & (target == k)] == k).double().mean().item() for k in range(c - 1)]
    assert scores["mean_accuracy"] == pytest.approx(np.mean(per_class_acc))


def test_segmentation_meter_accumulates_batches_and_takes_logits():
    c = 5
    pred, target = random_segmentation(7, c)
    logits = torch.nn.functional.one_hot(pred, c).permute(0, 3, 1, 2).float() + 0.1 * torch.rand(3, c, 17, 23)
    meter = SegmentationMeter(c)
    for k in range(3):
        meter.update(logits[k:k + 1], target[k:k + 1])  # logits: argmax over dim 1
    assert torch.equal(meter.confmat, confusion_matrix(pred, target, c))
    np.testing.assert_equal(meter.compute(), segmentation_scores(confusion_matrix(pred, target, c)))  # nan == nan
    meter.reset()
    meter.update(target.clamp(max=c - 1), target)  # int predictions, perfect
    s = meter.compute()
    assert s["pixel_accuracy"] == 1.0 and s["mean_iou"] == 1.0 and s["mean_accuracy"] == 1.0


def test_segmentation_on_voc_standin_masks(voc_standin):
    from imagenet_book.data.voc import VOCSegmentation
    ds = VOCSegmentation(voc_standin, "2007", "val")
    meter = SegmentationMeter(21)
    for _, mask in (ds[i] for i in range(len(ds))):
        mask = mask.as_subclass(torch.Tensor).long()
        assert (mask == 255).any()  # the void border is there, and skipped
        meter.update(mask.clamp(max=20), mask)
        wrong = torch.zeros_like(mask)  # everything called background
        meter_bg = confusion_matrix(wrong, mask, 21)
        assert meter_bg[:, 0].sum() == (mask != 255).sum()
    s = meter.compute()
    assert s["pixel_accuracy"] == 1.0 and s["mean_iou"] == 1.0


def test_segmentation_hand_case():
    # truth 0 0 1 1 255 ; prediction 0 1 1 1 0: class 0: 1 hit, 1 miss -> IoU 1/2 ; class 1: 2 hits,
    # 1 false alarm -> IoU 2/3 ; class 2 absent -> nan. Pixel accuracy 3/4.
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 1, 0])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    s = segmentation_scores(cm)
    assert s["pixel_accuracy"] == 0.75
    assert s["iou"][:2] == pytest.approx([0.5, 2 / 3]) and np.isnan(s["iou"][2])
    assert s["mean_iou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["mean_accuracy"] == pytest.approx((0.5 + 1) / 2)


def test_segmentation_bad_input_is_named():
    with pytest.raises(ValueError, match=r"same shape, got \(2, 5, 4, 4\) and \(2, 4, 4\).*argmax\(1\)"):
        confusion_matrix(torch.zeros(2, 5, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"target holds 7, outside 0..4 \(and it is not ignore_index=255\)"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, 7, 255]), 5)
    with pytest.raises(ValueError, match=r"pred holds -1, outside 0..4"):
        confusion_matrix(torch.tensor([0, -1, 0]), torch.tensor([0, 1, 255]), 5)
    with pytest.raises(ValueError, match="must be integer class indices"):
        confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"square \(C, C\) matrix, got shape \(3, 4\)"):
        segmentation_scores(torch.zeros(3, 4, dtype=torch.long))
