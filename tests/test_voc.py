"""PASCAL VOC datasets: parsed like torchvision, boxes and masks follow transforms, clear errors.

Real files on disk only: the built-in stand-in (``make_voc_standin``) and tiny hand-made trees.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from imagenet_book.data import standin, voc
from imagenet_book.data.voc import (
    VOC_CLASSES,
    DatasetNotFoundError,
    VOCDetection,
    VOCFormatError,
    VOCMultiLabel,
    VOCSegmentation,
    collate_detection,
    find_voc,
    parse_voc_xml,
    sanitize_boxes,
)

SPLITS = ("train", "val")


@pytest.fixture(scope="module")
def standin_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "data"
    return standin.make_voc_standin(root, num_train=8, num_val=4, img_size=64)


def _xml(objects) -> str:
    parts = [f"<object><name>{name}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{b[0]}</xmin>"
             f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
             for name, b, diff in objects]
    return f"<annotation><filename>x.jpg</filename>{''.join(parts)}</annotation>"


def _make_voc(root: Path, items: dict, year: str = "2007", split: str = "train") -> Path:
    """Hand-made VOC tree.

    ``items[id] = (uint8 (H, W, 3) pixels, [(name, (xmin, ymin, xmax, ymax), difficult), ...])``.
    """
    d = root / "VOCdevkit" / f"VOC{year}"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i, (pixels, objects) in items.items():
        Image.fromarray(pixels).save(d / "JPEGImages" / f"{i}.jpg", quality=95)
        (d / "Annotations" / f"{i}.xml").write_text(_xml(objects))
    (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in items))
    return d


def _white_box_image(h=30, w=40, rows=(2, 12), cols=(4, 14)) -> np.ndarray:
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[rows[0]:rows[1], cols[0]:cols[1]] = 255
    return pixels


def _bright_extent(image: torch.Tensor) -> tuple[int, int, int, int]:
    """XYXY extent (0-based, exclusive end) of the pixels brighter than mid-grey."""
    ys, xs = torch.nonzero(image.float().mean(0) > 127, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# ------------------------------------------------------------------ detection


def test_classes_are_the_standard_twenty():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[0] == "aeroplane" and VOC_CLASSES[14] == "person" and VOC_CLASSES[-1] == "tvmonitor"


@pytest.mark.parametrize("split", SPLITS)
def test_detection_matches_torchvision(standin_root, split):
    ours = VOCDetection(standin_root, "2007", split)
    theirs = tvd.VOCDetection(str(standin_root), year="2007", image_set=split)
    wrapped = tvd.wrap_dataset_for_transforms_v2(theirs)
    assert len(ours) == len(theirs) > 0
    for k in range(len(ours)):
        image, target = ours[k]
        pil, raw = theirs[k]
        objects = raw["annotation"]["object"]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
        assert image.shape == (3, pil.height, pil.width)
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(pil)))
        boxes = target["boxes"]
        assert isinstance(boxes, tv_tensors.BoundingBoxes)
        assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert boxes.canvas_size == (pil.height, pil.width) and boxes.dtype == torch.float32
        raw_boxes = torch.tensor([[float(o["bndbox"][t]) for t in ("xmin", "ymin", "xmax", "ymax")]
                                  for o in objects])
        # VOC's 1-based inclusive (xmin, ymin, xmax, ymax) -> 0-based continuous (xmin-1, ymin-1, xmax, ymax)
        torch.testing.assert_close(boxes.as_subclass(torch.Tensor) + torch.tensor([1.0, 1, 0, 0]), raw_boxes)
        torch.testing.assert_close(wrapped[k][1]["boxes"].float() - torch.tensor([1.0, 1, 0, 0]),
                                   boxes.as_subclass(torch.Tensor))
        assert target["labels"].dtype == torch.int64
        assert target["labels"].tolist() == [VOC_CLASSES.index(o["name"]) for o in objects]
        assert (target["labels"] + 1).tolist() == wrapped[k][1]["labels"].tolist()  # theirs: 0 = background
        assert target["difficult"].dtype == torch.bool
        assert target["difficult"].tolist() == [o["difficult"] == "1" for o in objects]
        assert target["image_id"] == ours.ids[k] == Path(raw["annotation"]["filename"]).stem


def test_box_convention_fits_the_pixels_and_keep_difficult(tmp_path):
    # A white block on pixels cols 4..13, rows 2..11 (0-based) is VOC box (5, 3, 14, 12), 1-based inclusive.
    objects = [("dog", (5, 3, 14, 12), False), ("cat", (1, 1, 40, 30), True)]
    _make_voc(tmp_path, {"a": (_white_box_image(), objects)})
    image, target = VOCDetection(tmp_path)[0]
    assert target["boxes"].tolist() == [[4, 2, 14, 12], [0, 0, 40, 30]]  # the 2nd box is the whole image
    assert _bright_extent(image) == (4, 2, 14, 12)
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat")]
    assert target["difficult"].tolist() == [False, True]
    _, easy = VOCDetection(tmp_path, keep_difficult=False)[0]
    assert easy["labels"].tolist() == [VOC_CLASSES.index("dog")] and easy["difficult"].tolist() == [False]
    assert easy["boxes"].shape == (1, 4) and isinstance(easy["boxes"], tv_tensors.BoundingBoxes)


def test_flip_and_resize_move_boxes_with_the_pixels(tmp_path):
    _make_voc(tmp_path, {"a": (_white_box_image(), [("dog", (5, 3, 14, 12), False)])})
    ds = VOCDetection(tmp_path, transforms=v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((60, 80))]))
    image, target = ds[0]
    assert image.shape == (3, 60, 80) and target["boxes"].canvas_size == (60, 80)
    # flip: x -> 40 - x gives (26, 2, 36, 12); resize x2 gives (52, 4, 72, 24)
    assert target["boxes"].tolist() == [[52, 4, 72, 24]]
    extent = _bright_extent(image)
    assert all(abs(a - b) <= 1 for a, b in zip(extent, (52, 4, 72, 24))), extent


def test_sanitize_boxes_filters_labels_and_difficult_together():
    image = tv_tensors.Image(torch.zeros(3, 20, 20, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes([[0, 0, 10, 10], [5, 5, 5, 9], [2, 2, 8, 8]], format="XYXY",
                                                canvas_size=(20, 20)),
              "labels": torch.tensor([1, 2, 3]), "difficult": torch.tensor([False, True, True]),
              "image_id": "x"}
    _, out = sanitize_boxes()(image, target)
    assert out["boxes"].tolist() == [[0, 0, 10, 10], [2, 2, 8, 8]]
    assert out["labels"].tolist() == [1, 3] and out["difficult"].tolist() == [False, True]
    assert out["image_id"] == "x"


@pytest.mark.parametrize("crop", ["iou", "resized"])
def test_random_crop_pipelines_and_collate(standin_root, crop):
    crop_t = v2.RandomIoUCrop() if crop == "iou" else v2.RandomResizedCrop(48, scale=(0.3, 1.0))
    pipeline = v2.Compose([v2.RandomZoomOut(fill={tv_tensors.Image: 0, "others": 0}, p=0.5), crop_t,
                           v2.Resize((48, 48)), v2.RandomHorizontalFlip(), sanitize_boxes(),
                           v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    ds = VOCDetection(standin_root, split="trainval", transforms=pipeline)
    loader = DataLoader(ds, batch_size=5, collate_fn=collate_detection)
    seen = 0
    for _ in range(2):
        for images, targets in loader:
            assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets)
            for image, t in zip(images, targets):
                assert image.shape == (3, 48, 48) and image.dtype == torch.float32
                b = t["boxes"]
                assert b.canvas_size == (48, 48)
                assert len(b) == len(t["labels"]) == len(t["difficult"])
                if len(b):
                    assert (b[:, 2:] - b[:, :2] >= 1).all() and b.min() >= 0 and b.max() <= 48
                seen += len(b)
    assert seen > 0
    assert collate_detection([]) == ([], [])


# ------------------------------------------------------------------ segmentation


@pytest.mark.parametrize("split", SPLITS)
def test_segmentation_masks_are_the_png_indices(standin_root, split):
    ours = VOCSegmentation(standin_root, 2007, split)
    theirs = tvd.VOCSegmentation(str(standin_root), year="2007", image_set=split)
    assert len(ours) == len(theirs) > 0
    values = set()
    for k in range(len(ours)):
        image, mask = ours[k]
        png = np.array(Image.open(ours.target_path(k)))
        assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == png.shape
        assert image.shape == (3, *png.shape) and image.dtype == torch.uint8
        assert np.array_equal(mask.numpy(), png) and np.array_equal(png, np.array(theirs[k][1]))
        values |= set(np.unique(png).tolist())
    assert 255 in values and 0 in values and values <= set(range(21)) | {255}


def test_segmentation_masks_follow_flip_and_resize(standin_root):
    plain = VOCSegmentation(standin_root, split="train")
    flipped = VOCSegmentation(standin_root, split="train",
                              transforms=v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((128, 128))]))
    for k in range(3):
        image0, mask0 = plain[k]
        image1, mask1 = flipped[k]
        assert mask1.shape == (128, 128) and mask1.dtype == torch.int64 and image1.shape == (3, 128, 128)
        assert set(mask1.unique().tolist()) <= set(mask0.unique().tolist())  # nearest: no new values
        assert 255 in mask1.unique().tolist()
        # nearest resize of the flipped mask = picking rows/cols of it
        h, w = mask0.shape
        rows = (torch.arange(128) * h) // 128
        cols = (torch.arange(128) * w) // 128
        assert torch.equal(mask1, mask0.flip(-1)[rows][:, cols])
    # padding fills the mask with void
    pad = v2.RandomCrop(100, pad_if_needed=True, fill={tv_tensors.Mask: 255, "others": 0})
    crop = VOCSegmentation(standin_root, split="train", transforms=pad)
    _, mask = crop[0]
    assert mask.shape == (100, 100) and (mask == 255).sum() > (plain[0][1] == 255).sum()


# ------------------------------------------------------------------ multi-label


@pytest.mark.parametrize("split", SPLITS)
def test_multilabel_matches_voc_per_class_lists(standin_root, split):
    ds = VOCMultiLabel(standin_root, "2007", split, transform=v2.Resize((32, 32)))
    main = standin_root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    for c, name in enumerate(VOC_CLASSES):
        rows = dict(line.split() for line in (main / f"{name}_{split}.txt").read_text().splitlines())
        assert [int(rows[i]) for i in ds.ids] == ds.labels[:, c].tolist()
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and target.shape == (20,) and target.dtype == torch.float32
    assert torch.equal(target, (ds.labels[0] == 1).float())


def test_multilabel_difficult_only_class_is_masked(tmp_path):
    pixels = np.full((24, 24, 3), 90, np.uint8)
    _make_voc(tmp_path, {"a": (pixels, [("dog", (2, 2, 10, 10), True), ("person", (3, 3, 9, 9), True),
                                        ("person", (5, 5, 20, 20), False), ("cat", (1, 1, 24, 24), False)]),
                         "b": (pixels, [])})
    ds = VOCMultiLabel(tmp_path, return_mask=True)
    image, target, mask = ds[0]
    dog, person, cat = (VOC_CLASSES.index(n) for n in ("dog", "person", "cat"))
    expected = torch.zeros(20)
    expected[[person, cat]] = 1
    assert torch.equal(target, expected)  # dog is difficult only: not a positive ...
    assert mask[dog] == 0 and mask.sum() == 19  # ... and masked out of the loss and the AP
    assert ds.labels[0, dog] == 0 and ds.labels[0, person] == 1 and ds.labels[0, 0] == -1
    _, target_b, mask_b = ds[1]  # no objects: all negatives, nothing masked
    assert target_b.sum() == 0 and mask_b.sum() == 20
    assert len(VOCMultiLabel(tmp_path)[0]) == 2


def test_voc2012_folder_and_int_year(standin_root, tmp_path):
    shutil.copytree(standin_root / "VOCdevkit" / "VOC2007", tmp_path / "VOCdevkit" / "VOC2012")
    assert find_voc(tmp_path, 2012) == tmp_path / "VOCdevkit" / "VOC2012"
    a, b = VOCDetection(tmp_path, 2012, "val")[0], VOCDetection(standin_root, "2007", "val")[0]
    assert torch.equal(a[1]["boxes"], b[1]["boxes"]) and torch.equal(a[0], b[0])
    assert len(VOCSegmentation(tmp_path, "2012", "train")) == len(VOCMultiLabel(tmp_path, "2012", "train"))
    with pytest.raises(DatasetNotFoundError, match="VOC2007"):
        VOCDetection(tmp_path, "2007")
    with pytest.raises(ValueError, match="year"):
        find_voc(tmp_path, "2010")


# ------------------------------------------------------------------ bad input


def test_missing_vocdevkit_says_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        VOCDetection(tmp_path, "2007")
    msg = str(err.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2007") in msg
    assert "IMAGENET_BOOK_DATA" in msg and "fetch_dataset('voc2007-trainval'" in msg and "full" in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="voc2012-trainval"):
        find_voc(tmp_path, "2012")
    d = _make_voc(tmp_path, {"a": (_white_box_image(), [])})
    with pytest.raises(DatasetNotFoundError, match="pass its data root"):
        find_voc(d, "2007")  # the VOC2007 folder itself instead of the data root


def test_missing_split_list_names_it(tmp_path):
    _make_voc(tmp_path, {"a": (_white_box_image(), [])})
    with pytest.raises(DatasetNotFoundError, match=r"test\.txt.*voc2007-test"):
        VOCDetection(tmp_path, split="test")
    with pytest.raises(DatasetNotFoundError, match=r"Segmentation.*train\.txt"):
        VOCSegmentation(tmp_path)


@pytest.mark.parametrize("missing", ["JPEGImages/b.jpg", "Annotations/b.xml"])
def test_listed_id_without_its_files(tmp_path, missing):
    d = _make_voc(tmp_path, {i: (_white_box_image(), [("dog", (5, 3, 14, 12), False)]) for i in "abc"})
    (d / missing).unlink()
    for cls in (VOCDetection, VOCMultiLabel):
        with pytest.raises(DatasetNotFoundError) as err:
            cls(tmp_path)
        msg = str(err.value)
        assert str(d / "JPEGImages" / "b.jpg") in msg and str(d / "Annotations" / "b.xml") in msg
        assert str(d / "ImageSets" / "Main" / "train.txt") in msg and f"{d / missing}' is missing" in msg


@pytest.mark.parametrize("xml, match", [
    ("<annotation><object><name>dog</name>", "not well-formed XML"),
    ('<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>', "DTD"),
    (_xml([("doggo", (1, 1, 5, 5), False)]), "unknown class 'doggo'"),
    (_xml([("dog", (1, 1, "", 5), False)]), "xmax"),
    (_xml([("dog", (9, 1, 5, 5), False)]), "xmax < xmin"),
])
def test_bad_annotation_names_the_file(tmp_path, xml, match):
    d = _make_voc(tmp_path, {"a": (_white_box_image(), [])})
    (d / "Annotations" / "a.xml").write_text(xml)
    with pytest.raises(VOCFormatError, match=match) as err:
        VOCDetection(tmp_path)[0]
    assert str(d / "Annotations" / "a.xml") in str(err.value)
    with pytest.raises(VOCFormatError, match=match):
        VOCMultiLabel(tmp_path)  # reads every annotation up front
    with pytest.raises(VOCFormatError, match=match):
        parse_voc_xml(d / "Annotations" / "a.xml")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg_names_the_file(standin_root, tmp_path, damage):
    shutil.copytree(standin_root / "VOCdevkit", tmp_path / "VOCdevkit")
    ds = VOCDetection(tmp_path, split="val")
    path = ds.image_path(1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a jpeg" * 50)
    ds[0]  # the others still load
    for d in (ds, VOCMultiLabel(tmp_path, split="val")):
        with pytest.raises(VOCFormatError, match="corrupt or truncated") as err:
            d[1]
        assert str(path) in str(err.value)


def test_bad_segmentation_png_names_the_file(standin_root, tmp_path):
    shutil.copytree(standin_root / "VOCdevkit", tmp_path / "VOCdevkit")
    ds = VOCSegmentation(tmp_path, split="train")
    rgb = ds.target_path(0)
    Image.open(rgb).convert("RGB").save(rgb)  # a colour mask, not palette indices
    with pytest.raises(VOCFormatError, match="palette") as err:
        ds[0]
    assert str(rgb) in str(err.value)
    broken = ds.target_path(1)
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(VOCFormatError, match="corrupt or truncated") as err:
        ds[1]
    assert str(broken) in str(err.value)


# ------------------------------------------------------------------ docs and real data


def test_public_api_is_documented():
    taught = {"find_voc": "07_", "VOCMultiLabel": "07_", "parse_voc_xml": "08_", "VOCDetection": "08_",
              "collate_detection": "08_", "sanitize_boxes": "08_", "VOCSegmentation": "09_"}
    for name, chapter in taught.items():
        doc = getattr(voc, name).__doc__
        assert f"Taught in: chapters/{chapter}" in doc, name
    for name in voc.__all__:
        assert hasattr(voc, name)


def test_real_voc_if_present():
    data = os.environ.get("IMAGENET_BOOK_DATA")
    years = [y for y in ("2007", "2012") if data and (Path(data) / "VOCdevkit" / f"VOC{y}").is_dir()]
    if not years:
        pytest.skip("IMAGENET_BOOK_DATA holds no VOCdevkit/VOC2007 or VOC2012 (real VOC not available here)")
    for year in years:
        det = VOCDetection(data, year, "val")
        image, target = det[0]
        assert image.dtype == torch.uint8 and len(target["boxes"]) == len(target["labels"]) > 0
        assert target["boxes"].max() <= max(image.shape[-2:])
        assert VOCMultiLabel(data, year, "val")[0][1].sum() >= 0
        seg = VOCSegmentation(data, year, "val")
        _, mask = seg[0]
        assert set(mask.unique().tolist()) <= set(range(21)) | {255}


# ------------------------------------------------------------------ boxes outside the image


def test_boxes_outside_the_image_are_clipped_or_dropped_alike_for_training_and_evaluation(tmp_path):
    """A VOC box reaching past the image's <size> is clipped to the image, one left with nothing
    inside is dropped (with its label), the same for every reader, with ONE warning per dataset
    naming the first file. (Before: training's SanitizeBoundingBoxes dropped such boxes silently
    while evaluation kept them as ground truth no detection can match.)"""
    root = standin.make_voc_standin(tmp_path / "voc", num_train=4, num_val=2, img_size=64)
    voc_dir = root / "VOCdevkit" / "VOC2007"
    first = (voc_dir / "ImageSets" / "Main" / "train.txt").read_text().split()[0]
    xml_path = voc_dir / "Annotations" / f"{first}.xml"
    text = xml_path.read_text()
    width = int(re.search(r"<width>(\d+)</width>", text).group(1))
    present = set(re.findall(r"<name>(\w+)</name>", text))
    absent = next(c for c in VOC_CLASSES if c not in present)
    text = re.sub(r"<xmax>\d+</xmax>", f"<xmax>{width + 25}</xmax>", text, count=1)  # reaches past
    outside = (f"<object><name>{absent}</name><difficult>0</difficult><bndbox><xmin>{width + 5}</xmin>"
               f"<ymin>2</ymin><xmax>{width + 15}</xmax><ymax>9</ymax></bndbox></object>")
    end = text.rindex("</annotation>")  # the root's end tag (<source> has an <annotation> too)
    xml_path.write_text(text[:end] + outside + text[end:])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = VOCDetection(root, "2007", "train")
        training = VOCDetection(root, "2007", "train", transforms=sanitize_boxes())
        items = [plain[i] for i in range(len(plain))] + [plain[0], training[0]]
        labels = VOCMultiLabel(root, "2007", "train").labels
    messages = [str(w.message) for w in caught if "outside" in str(w.message)]
    assert len(messages) == 3, messages  # once per dataset, not once per item
    assert all(str(xml_path) in m and "1 clipped" in m and "1 dropped" in m for m in messages), messages

    _, target = plain[0]
    boxes = target["boxes"].as_subclass(torch.Tensor)
    assert float(boxes[:, 2].max()) == width and float(boxes.min()) >= 0  # clipped to the image
    assert VOC_CLASSES.index(absent) not in target["labels"].tolist()  # dropped with its label
    assert len(target["labels"]) == len(target["difficult"]) == len(boxes) == text.count("<object>")
    _, trained_on = training[0]
    torch.testing.assert_close(trained_on["boxes"].as_subclass(torch.Tensor), boxes)  # same as evaluated
    assert torch.equal(trained_on["labels"], target["labels"])
    assert labels[0, VOC_CLASSES.index(absent)] == -1  # the dropped box does not make the class present
    assert len(items) == len(plain) + 2
