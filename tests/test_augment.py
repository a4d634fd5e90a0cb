"""Augmentation helpers: the per-image recipes, batch mixing, denormalisation, target drawing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from imagenet_book import augment
from imagenet_book.data.fast import IMAGENET_MEAN, IMAGENET_STD
from imagenet_book.data.voc import voc_palette


def _image(h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("policy", [None, "ra", "ta_wide"])
def test_train_transform_gives_normalised_squares_from_pil_and_tensors(policy):
    torch.manual_seed(0)
    t = augment.train_transform(24, jitter=0.4, policy=policy, erase=0.5)
    img = _image()
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    for x in (t(img), t(pil)):
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32
        assert x.min() < 0 < x.max()  # normalised: the mean colour is 0


def test_train_transform_without_normalisation_stays_in_unit_range_and_moves_boxes():
    torch.manual_seed(0)
    t = augment.train_transform(20, scale=(0.5, 1.0), hflip=1.0, mean=None)
    boxes = tv_tensors.BoundingBoxes([[10, 5, 30, 35]], format="XYXY", canvas_size=(40, 56))
    x, out = t(tv_tensors.Image(_image()), {"boxes": boxes, "labels": torch.tensor([3])})
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert out["boxes"].canvas_size == (20, 20) and out["labels"].tolist() == [3]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy"):
        augment.train_transform(16, policy="autoaugment!")


def test_eval_transform_is_resize_then_centre_crop():
    img = _image(48, 64)
    ours = augment.eval_transform(32)(img)
    ref = v2.functional.center_crop(v2.functional.resize(img, 37, antialias=True), 32)  # 32 / 0.875
    expected = v2.functional.normalize(ref.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, expected)
    assert torch.equal(augment.eval_transform(32)(img), ours)  # no randomness


def test_denormalize_inverts_normalize():
    x = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(augment.denormalize(v2.functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD)), x)


@pytest.mark.parametrize("alphas", [(0.2, 1.0), (0.2, 0.0), (0.0, 1.0)])
def test_mix_transform_gives_probability_targets(alphas):
    torch.manual_seed(0)
    X, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 5
    mix = augment.mix_transform(5, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    Xm, ym = mix(X, y)
    assert Xm.shape == X.shape and ym.shape == (8, 5) and ym.dtype == torch.float32
    torch.testing.assert_close(ym.sum(1), torch.ones(8))
    # The weights are those of the image and of its neighbour in the batch (roll by one).
    lam = ym[torch.arange(8), y]
    torch.testing.assert_close(ym, lam[:, None] * F.one_hot(y, 5) + (1 - lam[:, None]) * F.one_hot(y.roll(1), 5))
    F.cross_entropy(torch.randn(8, 5), ym)  # a valid target for the loss


def test_mix_transform_off():
    assert augment.mix_transform(5, mixup_alpha=0, cutmix_alpha=0) is None


def test_draw_target_boxes_colour_the_outline_only():
    img = torch.zeros(3, 40, 50, dtype=torch.uint8)
    target = {"boxes": tv_tensors.BoundingBoxes([[10, 10, 30, 25]], format="XYXY", canvas_size=(40, 50)),
              "labels": torch.tensor([0]), "difficult": torch.tensor([False])}
    out = augment.draw_target(img, target, width=1, labels=False)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert out[:, 10, 20].tolist() == voc_palette()[3:6]  # aeroplane's colour on the top edge
    assert out[:, 11, 20].tolist() == [255, 255, 255]     # a white line inside it, for contrast
    assert out[:, 17, 20].tolist() == [0, 0, 0]           # inside: untouched
    assert img.sum() == 0                                 # the input is not changed
    named = augment.draw_target(img, target, width=1)
    assert not torch.equal(named[:, 12:20, 11:29], out[:, 12:20, 11:29])  # the class name is written


def test_draw_target_accepts_other_box_formats():
    img = torch.zeros(3, 40, 50, dtype=torch.uint8)
    xyxy = tv_tensors.BoundingBoxes([[10, 10, 30, 25]], format="XYXY", canvas_size=(40, 50))
    xywh = v2.functional.convert_bounding_box_format(xyxy, new_format="XYWH")
    a = augment.draw_target(img, {"boxes": xyxy, "labels": torch.tensor([4])}, labels=False)
    b = augment.draw_target(img, {"boxes": xywh, "labels": torch.tensor([4])}, labels=False)
    assert torch.equal(a, b)


def test_draw_target_mask_colours_classes_and_void_not_background():
    img = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[:4, :4], mask[4:, 4:] = 15, 255  # person, void
    out = augment.draw_target(img, tv_tensors.Mask(mask), alpha=1.0)
    palette = voc_palette()
    assert out[:, 0, 0].tolist() == palette[45:48]
    assert out[:, 7, 7].tolist() == palette[765:768]
    assert out[:, 0, 7].tolist() == [100, 100, 100]


def test_draw_target_checks_its_inputs():
    with pytest.raises(ValueError, match="uint8"):
        augment.draw_target(torch.zeros(3, 4, 4), None)
    with pytest.raises(ValueError, match="does not fit"):
        augment.draw_target(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(5, 5, dtype=torch.int64))
