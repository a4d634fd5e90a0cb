"""The FCN head, the segmentation loss (void 255 ignored), the metrics path and the VOC
segmentation run (``imagenet_book.models.segmentation``, ``imagenet_book.finetune``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import imagenet_book as ib
from imagenet_book.data.fast import IMAGENET_MEAN, IMAGENET_STD
from imagenet_book.finetune import (VOCTensors, backbone_from_checkpoint, evaluate_segmenter,
                                    finetune_segmenter, load_finetuned)
from imagenet_book.models.segmentation import FCN, bilinear_upsample_weight, segmentation_loss


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return backbone_from_checkpoint(None, pretrained=False)


@pytest.mark.parametrize("skips", [True, False])
@pytest.mark.parametrize("size", [(33, 47), (65, 31), (32, 32), (7, 9)])
def test_fcn_output_has_the_input_s_size(backbone, skips, size):
    net = FCN(backbone, 21, skips=skips).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *size))
    assert out.shape == (2, 21, *size) and out.dtype == torch.float32


def test_fcn8s_starts_as_fcn32s(backbone):
    """The skip classifiers start at zero (as in the FCN paper): before training, FCN-8s only
    upsamples the coarse stride-32 scores, in two steps, to stride 8."""
    fcn8 = FCN(backbone, 21, skips=True).eval()
    X = torch.randn(1, 3, 64, 96)
    up = lambda s, like: F.interpolate(s, size=like.shape[-2:], mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        feats = backbone.eval().features(X)
        coarse = fcn8.head.score4(feats["layer4"])
        assert coarse.shape == (1, 21, 2, 3)
        assert torch.allclose(fcn8.head(feats), up(up(coarse, feats["layer3"]), feats["layer2"]))
        fcn32 = FCN(backbone, 21, skips=False).eval()
        assert torch.equal(fcn32.head(feats), fcn32.head.score4(feats["layer4"]))
        assert fcn32(X).shape == fcn8(X).shape == (1, 21, 64, 96)


def test_void_pixels_do_not_change_the_loss_or_get_gradients():
    torch.manual_seed(0)
    logits = torch.randn(2, 21, 9, 11, requires_grad=True)
    target = torch.randint(0, 21, (2, 9, 11))
    target[:, :3] = 255
    target[1, :, -2:] = 255
    void = target == 255
    loss = segmentation_loss(logits, target)
    loss.backward()
    # the mean over the labelled pixels only
    kept = logits.detach().permute(0, 2, 3, 1)[~void]
    assert torch.allclose(loss, F.cross_entropy(kept, target[~void]))
    # no gradient at void pixels, some elsewhere
    grad = logits.grad.permute(0, 2, 3, 1)
    assert torch.all(grad[void] == 0) and grad[~void].abs().sum() > 0
    # changing the scores of void pixels changes nothing
    moved = logits.detach().clone().permute(0, 2, 3, 1)
    moved[void] = torch.randn_like(moved[void]) * 50
    assert torch.allclose(segmentation_loss(moved.permute(0, 3, 1, 2), target), loss)


def test_an_all_void_batch_gives_zero_loss_not_nan():
    logits = torch.randn(1, 21, 4, 4, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 4, 4), 255))
    loss.backward()
    assert loss.item() == 0 and torch.all(logits.grad == 0)
    with pytest.raises(ValueError, match="do not match"):
        segmentation_loss(logits, torch.zeros(1, 5, 4, dtype=torch.long))


class _Oracle(nn.Module):
    """Reads the label each image carries in its red channel (see the test below) and scores
    it highest: a perfect segmenter for that data."""

    num_classes = 21

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives evaluate_segmenter a device

    def forward(self, X):
        red = (X[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        label = red.round().long().clamp(0, 20)
        return F.one_hot(label, 21).permute(0, 3, 1, 2).float() * 10


def test_the_metrics_path_gives_miou_1_for_a_perfect_prediction():
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 21, (5, 13, 13), generator=g, dtype=torch.uint8)
    masks[:, 0] = 255  # void rows: ignored, whatever is predicted there
    images = torch.zeros(5, 3, 13, 13, dtype=torch.uint8)
    images[:, 0] = torch.where(masks == 255, torch.tensor(7, dtype=torch.uint8), masks)
    scores = evaluate_segmenter(_Oracle(), VOCTensors(images, masks, None, ("a",) * 5), batch_size=2)
    assert scores["mean_iou"] == pytest.approx(1.0) and scores["pixel_accuracy"] == pytest.approx(1.0)
    assert len(scores["iou"]) == 21 and scores["loss"] < 1e-3
    # one wrong class everywhere lowers both
    wrong = images.clone()
    wrong[:, 0] = torch.where(masks == 3, torch.tensor(4, dtype=torch.uint8), wrong[:, 0])
    worse = evaluate_segmenter(_Oracle(), VOCTensors(wrong, masks, None, ("a",) * 5), batch_size=2)
    assert worse["mean_iou"] < 1 and worse["pixel_accuracy"] < 1 and worse["iou"][3] == 0


def test_transposed_convolution_with_bilinear_weights_upsamples_bilinearly():
    x = torch.randn(1, 3, 6, 5)
    for factor in (2, 4):
        up = nn.ConvTranspose2d(3, 3, 2 * factor, stride=factor, padding=factor // 2, groups=3, bias=False)
        with torch.no_grad():
            up.weight.copy_(bilinear_upsample_weight(3, factor))
            learned = up(x)
        reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert learned.shape == reference.shape
        inner = (slice(None), slice(None), slice(factor, -factor), slice(factor, -factor))
        assert torch.allclose(learned[inner], reference[inner], atol=1e-5)  # equal away from borders


def test_finetune_segmenter_runs_on_the_profile_s_voc(tmp_path):
    cfg = dataclasses.replace(ib.start("smoke", quiet=True), cache_root=tmp_path,
                              device=torch.device("cpu"))
    source = ib.data.voc.voc_source(cfg, "2012")
    data = ib.finetune.load_voc_tensors(source, "segment", "val", 40, progress=False)
    assert data.images.shape == (8, 3, 40, 40) and data.targets.shape == (8, 40, 40) and data.mask is None
    values = set(data.targets.unique().tolist())
    assert 255 in values and values <= set(range(21)) | {255}  # nearest-neighbour: no blended labels
    result = finetune_segmenter(cfg, mode="scratch", epochs=2, progress=False, log=None)
    m = result.metrics
    assert 0 <= m["mean_iou"] <= 1 and 0 <= m["pixel_accuracy"] <= 1 and len(m["iou"]) == 21
    assert result.budget["img_size"] == cfg.profile.img_size and result.budget["epochs"] == 2
    assert result.budget["batch_size"] == cfg.profile.batch_size // ib.finetune.SEG_BATCH_DIVISOR
    assert [e["epoch"] for e in result.history.epochs] == [1, 2]
    assert all(e["val_mean_iou"] is not None for e in result.history.epochs)
    net = load_finetuned(result.save(tmp_path / "out"))
    X = torch.randn(1, 3, 35, 29)
    with torch.no_grad():
        assert torch.allclose(net(X), result.net.eval()(X), atol=1e-5)
        assert net(X).shape == (1, 21, 35, 29)
