"""The detector of chapter 08: anchors, box coding, matching, losses, post-processing, training.

References are independent: torchvision's ``BoxCoder``, ``Matcher`` and ``sigmoid_focal_loss``,
``torch.nn.functional``'s BCE and smooth-L1, and hand-made boxes with known answers. The
training tests run real steps on the built-in VOC stand-in (read with ``VOCDetection``) and a
real pretraining checkpoint made by ``imagenet_book.pretrain.pretrain`` under the smoke profile.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import ops
from torchvision.models.detection import _utils as tv_det_utils

import imagenet_book as ib
from imagenet_book import losses
from imagenet_book.data.standin import make_voc_standin
from imagenet_book.data.voc import VOCDetection
from imagenet_book import finetune as ft
from imagenet_book.finetune import backbone_from_checkpoint
from imagenet_book.models import detection as det
from imagenet_book.pretrain import PretrainError


def _random_boxes(n: int, g: torch.Generator, dtype=torch.float64, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * size
    wh = torch.rand(n, 2, generator=g, dtype=dtype) * size / 2 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


# ---------------------------------------------------------------------------------- boxes and anchors


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip_and_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    boxes, anchors = _random_boxes(500, g), _random_boxes(500, g)
    deltas = det.encode_boxes(boxes, anchors, weights)
    torch.testing.assert_close(det.decode_boxes(deltas, anchors, weights), boxes, rtol=0, atol=1e-9)
    coder = tv_det_utils.BoxCoder(weights)
    torch.testing.assert_close(deltas, coder.encode_single(boxes, anchors))
    torch.testing.assert_close(det.decode_boxes(deltas, anchors, weights), coder.decode_single(deltas, anchors))
    # float32, the network's dtype: the round trip is exact to float precision
    b32, a32 = boxes.float(), anchors.float()
    torch.testing.assert_close(det.decode_boxes(det.encode_boxes(b32, a32, weights), a32, weights), b32,
                               rtol=1e-5, atol=1e-4)


def test_encoding_of_simple_boxes():
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    same = det.encode_boxes(anchor, anchor)
    assert torch.equal(same, torch.zeros(1, 4))
    shifted_wider = torch.tensor([[5.0, 0.0, 25.0, 20.0]])  # centre +10 px, width x2
    torch.testing.assert_close(det.encode_boxes(shifted_wider, anchor),
                               torch.tensor([[1.0, 0.0, math.log(2.0), 0.0]]))
    huge = det.decode_boxes(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchor)  # dw clamped
    assert torch.isfinite(huge).all() and huge[0, 2] - huge[0, 0] == pytest.approx(1000 / 16 * 10, rel=1e-4)


def test_make_anchors_layout():
    sizes, ratios = (8.0, 16.0), (0.5, 1.0, 2.0)
    anchors = det.make_anchors((3, 5), 16, sizes, ratios)
    A = len(sizes) * len(ratios)
    assert anchors.shape == (3 * 5 * A, 4) and anchors.dtype == torch.float32
    cells = anchors.view(3, 5, A, 4)
    centres = (cells[..., :2] + cells[..., 2:]) / 2
    torch.testing.assert_close(centres[1, 2], torch.tensor([[2.5 * 16, 1.5 * 16]]).expand(A, 2))
    w, h = cells[0, 0, :, 2] - cells[0, 0, :, 0], cells[0, 0, :, 3] - cells[0, 0, :, 1]
    torch.testing.assert_close((w * h).sqrt(), torch.tensor([8.0] * 3 + [16.0] * 3))
    torch.testing.assert_close(h / w, torch.tensor(list(ratios) * 2))


def test_anchor_order_matches_head_outputs():
    """Output k of the head's cell (i, j), anchor a must be anchor (i * W + j) * A + a."""
    head = det.DetectionHead(32, num_anchors=3, num_classes=2, num_convs=0)
    with torch.no_grad():
        head.reg[-1].weight.zero_()
        head.reg[-1].bias.zero_()
    feature = torch.zeros(1, 32, 2, 3)
    # make the regression bias say which anchor slot it is: (0, 0, 0, a)
    with torch.no_grad():
        head.reg[-1].bias.copy_(torch.tensor([[0, 0, 0, a] for a in range(3)], dtype=torch.float32).flatten())
    _, reg = head(feature)
    assert reg.shape == (1, 2 * 3 * 3, 4)
    assert reg[0, :, 3].tolist() == [0.0, 1.0, 2.0] * 6


# ---------------------------------------------------------------------------------- matching


def test_match_anchors_hand_made():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],      # exactly the first object: positive
                            [100.0, 100.0, 110.0, 110.0],  # far from everything: background
                            [0.0, 0.0, 10.0, 14.0],      # IoU 10/14 = 0.71 with object 0: positive
                            [4.5, 0.0, 14.5, 10.0],      # IoU 0.38 with object 0: background...
                            [3.0, 0.0, 13.0, 10.0],      # IoU 0.54: positive
                            [4.0, 0.0, 14.0, 10.0],      # IoU 0.43: ignored (between 0.4 and 0.5)
                            [50.0, 50.0, 90.0, 90.0]])   # object 1's best anchor, IoU 0.25: low quality
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [60.0, 60.0, 80.0, 80.0]])
    matches = det.match_anchors(anchors, gt)
    assert matches.tolist() == [0, -1, 0, -1, 0, -2, 1]
    assert det.match_anchors(anchors, gt, allow_low_quality=False).tolist() == [0, -1, 0, -1, 0, -2, -1]
    assert det.match_anchors(anchors, torch.zeros(0, 4)).tolist() == [-1] * 7


@pytest.mark.parametrize("low_quality", [True, False])
def test_match_anchors_agrees_with_torchvision_matcher(low_quality):
    g = torch.Generator().manual_seed(1)
    matcher = tv_det_utils.Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    for _ in range(20):
        anchors, gt = _random_boxes(300, g, torch.float32), _random_boxes(6, g, torch.float32)
        expected = matcher(ops.box_iou(gt, anchors))
        assert torch.equal(det.match_anchors(anchors, gt, allow_low_quality=low_quality), expected)


# ---------------------------------------------------------------------------------- losses


def test_focal_loss_is_its_formula_and_torchvision():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 20, generator=g, dtype=torch.float64) * 4
    y = (torch.rand(64, 20, generator=g) < 0.1).double()
    p = torch.sigmoid(x)
    p_t = torch.where(y == 1, p, 1 - p)
    alpha_t = torch.where(y == 1, 0.25, 0.75)
    expected = -alpha_t * (1 - p_t) ** 2 * torch.log(p_t)
    torch.testing.assert_close(losses.sigmoid_focal_loss(x, y), expected)
    for reduction in ("none", "mean", "sum"):
        for alpha, gamma in ((0.25, 2.0), (0.5, 1.0), (None, 3.0)):
            torch.testing.assert_close(
                losses.sigmoid_focal_loss(x, y, alpha, gamma, reduction),
                ops.sigmoid_focal_loss(x, y, -1 if alpha is None else alpha, gamma, reduction))


def test_focal_loss_reduces_to_bce():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 7, generator=g, dtype=torch.float64) * 30  # large logits: still finite
    y = (torch.rand(10, 7, generator=g) < 0.5).double()
    for reduction in ("none", "mean", "sum"):
        torch.testing.assert_close(losses.sigmoid_focal_loss(x, y, alpha=None, gamma=0.0, reduction=reduction),
                                   F.binary_cross_entropy_with_logits(x, y, reduction=reduction))
    assert torch.isfinite(losses.sigmoid_focal_loss(x, y)).all()
    # easy examples are down-weighted: p_t = 0.9 loses a factor (1 - 0.9)^2 = 0.01 against BCE
    easy = torch.tensor([math.log(9.0)])
    ratio = (losses.sigmoid_focal_loss(easy, torch.ones(1), None, 2.0)
             / F.binary_cross_entropy_with_logits(easy, torch.ones(1)))
    assert ratio.item() == pytest.approx(0.01, rel=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        losses.sigmoid_focal_loss(x, y, alpha=1.5)


@pytest.mark.parametrize("beta", [0.0, 1.0 / 9, 1.0, 2.5])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_smooth_l1_matches_torch(beta, reduction):
    g = torch.Generator().manual_seed(4)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64) * 2
    b = torch.randn(50, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(losses.smooth_l1_loss(a, b, beta, reduction),
                               F.smooth_l1_loss(a, b, beta=beta, reduction=reduction))


def test_box_regression_losses_and_bounded_gradient():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    torch.testing.assert_close(losses.box_regression_loss(a, b, "mse"), F.mse_loss(a, b, reduction="sum"))
    torch.testing.assert_close(losses.box_regression_loss(a, b, "l1"), F.l1_loss(a, b, reduction="sum"))
    torch.testing.assert_close(losses.box_regression_loss(a, b, "smooth_l1", beta=0.5),
                               F.smooth_l1_loss(a, b, beta=0.5, reduction="sum"))
    # an outlier: smooth-L1's gradient stays at 1, the squared error's grows with the error
    x = torch.tensor([0.05, 10.0], requires_grad=True)
    (grad_sl1,) = torch.autograd.grad(losses.box_regression_loss(x, torch.zeros(2), "smooth_l1", beta=1.0), x)
    (grad_mse,) = torch.autograd.grad(losses.box_regression_loss(x, torch.zeros(2), "mse"), x)
    torch.testing.assert_close(grad_sl1, torch.tensor([0.05, 1.0]))
    torch.testing.assert_close(grad_mse, torch.tensor([0.1, 20.0]))
    with pytest.raises(ValueError, match="smooth_l1"):
        losses.box_regression_loss(a, b, "huber")


def test_detection_loss_on_hand_made_targets():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    C = 4
    logits = torch.full((1, 3, C), -4.0, requires_grad=True)
    deltas = torch.zeros(1, 3, 4, requires_grad=True)
    target = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
    out = det.detection_loss(logits, deltas, anchors, [target])
    assert int(out["num_pos"]) == 1 and out["reg"].item() == 0.0  # the object IS anchor 0: deltas 0
    y = torch.zeros(3, C)
    y[0, 2] = 1
    expected_cls = losses.sigmoid_focal_loss(logits[0].detach(), y, reduction="sum")  # / num_pos = 1
    torch.testing.assert_close(out["cls"], expected_cls)
    torch.testing.assert_close(out["loss"], out["cls"] + out["reg"])
    out["loss"].backward()
    assert logits.grad[0, 0, 2] < 0 and (logits.grad[0, 1:] > 0).all()  # raise the object, lower the rest
    # bce: the same with alpha=None, gamma=0
    bce = det.detection_loss(logits, deltas, anchors, [target], cls_loss="bce")["cls"]
    torch.testing.assert_close(bce, F.binary_cross_entropy_with_logits(logits[0].detach(), y, reduction="sum"))
    # a difficult object: its anchors are ignored, neither positive nor background
    hard = {**target, "difficult": torch.tensor([True])}
    out = det.detection_loss(logits, deltas, anchors, [hard])
    assert int(out["num_pos"]) == 0 and out["reg"].item() == 0.0
    torch.testing.assert_close(out["cls"], losses.sigmoid_focal_loss(logits[0, 1:].detach(), y[1:], reduction="sum"))
    # an image without objects: all background
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert int(det.detection_loss(logits, deltas, anchors, [empty])["num_pos"]) == 0
    with pytest.raises(det.DetectorError, match="focal"):
        det.detection_loss(logits, deltas, anchors, [target], cls_loss="softmax")


# ---------------------------------------------------------------------------------- the detector


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return det.Detector(backbone_from_checkpoint(None, pretrained=False), 20, img_size=64).eval()


def test_detector_shapes_and_output_format(detector):
    X = torch.randn(2, 3, 64, 64)
    cls, reg = detector(X)
    anchors = detector.anchors()
    A = len(det.ANCHOR_SIZES) * len(det.ASPECT_RATIOS)
    assert anchors.shape == (4 * 4 * A, 4)  # stride 16 at 64 px
    assert cls.shape == (2, len(anchors), 20) and reg.shape == (2, len(anchors), 4)
    # RetinaNet's prior: every anchor starts at probability ~0.01
    assert torch.sigmoid(cls).mean().item() == pytest.approx(0.01, abs=0.005)
    images = [torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8),
              torch.randint(0, 256, (3, 100, 30), dtype=torch.uint8)]
    detector.score_thresh = 0.0  # keep everything, to check the format of many detections
    try:
        out = detector.predict(images)
    finally:
        detector.score_thresh = det.SCORE_THRESH
    assert len(out) == 2
    for d, im in zip(out, images):
        assert set(d) == {"boxes", "scores", "labels"}
        assert d["boxes"].dtype == torch.float32 and d["boxes"].shape[1] == 4
        assert d["labels"].dtype == torch.int64 and d["scores"].dtype == torch.float32
        assert 0 < len(d["boxes"]) <= detector.max_detections
        assert (d["scores"][:-1] >= d["scores"][1:]).all()  # sorted
        h, w = im.shape[-2:]
        assert (d["boxes"][:, 0] >= 0).all() and (d["boxes"][:, 2] <= w + 1e-4).all()
        assert (d["boxes"][:, 1] >= 0).all() and (d["boxes"][:, 3] <= h + 1e-4).all()


def test_postprocess_maps_boxes_back_to_original_pixels(detector):
    anchors = detector.anchors()
    k = 70  # one anchor fires for class 5 with zero deltas: the detection is that anchor, rescaled
    logits = torch.full((1, len(anchors), 20), -10.0)
    logits[0, k, 5] = 10.0
    deltas = torch.zeros(1, len(anchors), 4)
    h, w = 48, 200
    out = detector.postprocess(logits, deltas, [(h, w)])[0]
    expected = ops.clip_boxes_to_image(anchors[k:k + 1], (64, 64)) * torch.tensor([w / 64, h / 64, w / 64, h / 64])
    assert out["labels"].tolist() == [5]
    torch.testing.assert_close(out["boxes"], expected)
    assert out["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())
    # NMS: a second class-5 anchor overlapping the first is suppressed, one of another class is not
    ious = ops.box_iou(anchors[k:k + 1], anchors)[0]
    other = int(torch.nonzero((ious > detector.nms_iou) & (torch.arange(len(anchors)) != k))[0])
    logits[0, other, 5] = 9.0
    logits[0, other, 7] = 8.0
    out = detector.postprocess(logits, deltas, [(h, w)])[0]
    assert out["labels"].tolist() == [5, 7]


def test_wrong_backbone_is_a_clear_error():
    with pytest.raises(det.DetectorError, match="features"):
        det.Detector(torch.nn.Linear(3, 3))


# ---------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def voc_scenes(tmp_path_factory):
    return make_voc_standin(tmp_path_factory.mktemp("voc"), num_train=6, num_val=2, img_size=96, seed=0)


def test_detector_overfits_one_image(voc_scenes):
    """A few dozen steps on ONE stand-in image: the loss falls by orders of magnitude and every
    object comes back, in the image's own (non-square) pixels, with the right class and IoU > 0.5."""
    ds = VOCDetection(voc_scenes, "2007", "train")
    index = next(i for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 2
                 and not ds[i][1]["difficult"].any() and ds[i][0].shape[-1] != ds[i][0].shape[-2])
    image, target = ds[index]
    torch.manual_seed(0)
    net = det.Detector(backbone_from_checkpoint(None, pretrained=False), 20, img_size=64)
    small, small_target = ft.detection_transforms(64, train=False)(image, target)
    X, anchors = net.normalize(small[None]), net.anchors()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.eval()  # BatchNorm in eval mode: one image is no batch to take statistics from
    losses_seen = []
    for _ in range(40):
        out = det.detection_loss(*net(X), anchors, [small_target])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses_seen.append(out["loss"].item())
    assert losses_seen[-1] < 0.05 * losses_seen[0], losses_seen[::5]
    pred = net.predict([image])[0]
    iou = ops.box_iou(target["boxes"], pred["boxes"])
    same_class = target["labels"][:, None] == pred["labels"][None, :]
    best = (iou * same_class).max(dim=1).values
    assert (best > 0.5).all(), (best, pred["labels"][:5], target["labels"])


def test_detection_transforms_move_boxes_with_the_image(voc_scenes):
    ds = VOCDetection(voc_scenes, "2007", "train")
    image, target = ds[0]
    h, w = image.shape[-2:]
    resized, t = ft.detection_transforms(64, train=False)(image, target)
    assert resized.shape == (3, 64, 64) and resized.dtype == torch.uint8
    scale = torch.tensor([64 / w, 64 / h, 64 / w, 64 / h])
    torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor) * scale)
    torch.manual_seed(0)
    for _ in range(10):  # random crops drop boxes together with their labels and difficult flags
        im, t = ft.detection_transforms(64)(image, target)
        assert im.shape == (3, 64, 64)
        assert len(t["boxes"]) == len(t["labels"]) == len(t["difficult"])
        assert (t["boxes"][:, 2] > t["boxes"][:, 0]).all() and (t["boxes"] <= 64).all()


@pytest.fixture(scope="module")
def smoke(smoke_cfg, pretrained):
    """The session's smoke setup, with a resnet18 and a resnet34 checkpoint pretrained for one
    step on the stand-in (real files written by imagenet_book.pretrain.pretrain; tests/conftest.py)."""
    return smoke_cfg, {arch: pretrained(arch).checkpoint for arch in ("resnet18", "resnet34")}


def test_finetune_detector_end_to_end_and_save(smoke, tmp_path):
    cfg, ckpts = smoke
    result = ft.finetune_detector(cfg, ckpts["resnet18"], mode="finetune", epochs=2, max_steps=5,
                                   progress=False, log=None)
    assert result.task == "detect" and result.mode == "finetune" and result.checkpoint == ckpts["resnet18"]
    assert result.budget["steps"] == 5 and result.budget["img_size"] == ib.recipe.DET_SIZE_FACTOR * cfg.profile.img_size
    assert result.budget["train_images"] == result.source.train_images
    assert [set(r) >= {"train_cls", "train_reg", "train_loss"} for r in result.history.epochs] == [True, True]
    assert len(result.history.steps) == 5
    assert all(s["loss"] == pytest.approx(s["cls"] + s["reg"]) for s in result.history.steps)
    m = result.metrics
    assert set(m) >= {"map", "map_07", "per_class", "per_class_07"} and len(m["per_class"]) == 20
    assert 0.0 <= m["map"] <= 1.0 and 0.0 <= m["map_07"] <= 1.0
    # the backbone learns at a tenth of the head's rate
    assert result.recipe["backbone_lr_scale"] == pytest.approx(0.1)
    path = result.save(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ft.DETECTOR_FORMAT and raw["budget"]["steps"] == 5
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["mode"] == "finetune" and "map_07" in info["metrics"] and info["history"]["epochs"]
    loaded = ft.load_detector(path)
    X = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(X), result.net.cpu()(X)):
            torch.testing.assert_close(a, b)
    with pytest.raises(det.DetectorError, match="not a detector checkpoint"):
        ft.load_detector(ckpts["resnet18"])


def test_probe_freezes_the_backbone(smoke):
    cfg, ckpts = smoke
    before = {k: v.clone() for k, v in backbone_from_checkpoint(ckpts["resnet18"]).state_dict().items()}
    result = ft.finetune_detector(cfg, ckpts["resnet18"], mode="probe", epochs=1, max_steps=2,
                                   progress=False, log=None)
    after = result.net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)  # weights AND BatchNorm statistics


def test_wrong_architecture_checkpoint_is_a_clear_error(smoke):
    cfg, ckpts = smoke
    with pytest.raises(PretrainError, match=r"resnet34.*not the resnet18.*arch='resnet34'"):
        ft.finetune_detector(cfg, ckpts["resnet34"], mode="finetune", arch="resnet18", progress=False, log=None)
    with pytest.raises(det.DetectorError, match="Unknown mode"):
        ft.finetune_detector(cfg, ckpts["resnet18"], mode="linear", progress=False, log=None)
    with pytest.raises(det.DetectorError, match="box loss"):
        ft.finetune_detector(cfg, ckpts["resnet18"], reg_loss="iou", progress=False, log=None)
