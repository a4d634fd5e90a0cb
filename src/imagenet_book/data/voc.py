"""PASCAL VOC 2007 / 2012 as PyTorch datasets: multi-label, detection and segmentation targets.

The three datasets read the VOC devkit layout as it is extracted from the official archives (or
written by :func:`imagenet_book.data.standin.make_voc_standin`)::

    <data root>/VOCdevkit/VOC<year>/
      JPEGImages/<id>.jpg          Annotations/<id>.xml          SegmentationClass/<id>.png
      ImageSets/Main/<split>.txt   (detection, multi-label)      ImageSets/Segmentation/<split>.txt

``root`` is always the *data root* (the folder holding ``VOCdevkit/``), as for torchvision's
``VOCDetection``. Items are torchvision ``tv_tensors``, so a ``torchvision.transforms.v2``
pipeline moves boxes and masks together with the image.

Box convention. VOC XML gives 1-based, inclusive pixel indices: ``xmin=1, xmax=W`` is the whole
width. We return continuous 0-based XYXY pixel coordinates, ``(xmin - 1, ymin - 1, xmax, ymax)``
(as detectron2's VOC loader does), so ``xmax - xmin`` is the box width in pixels, the whole image
is ``(0, 0, W, H)``, and a horizontal flip ``x -> W - x`` is exact. Labels are 0..19. (torchvision's
``wrap_dataset_for_transforms_v2(VOCDetection)`` keeps the raw 1-based box numbers and uses labels
1..20, with 0 for background, the convention of its detection models.)

Boxes outside the image. A few annotations give boxes that reach past the image's ``<size>`` (or
lie wholly outside it). :func:`parse_voc_xml` clips every box to the image and drops a box left
with no area, with its label and difficult flag, so training (whose ``SanitizeBoundingBoxes``
would drop such boxes) and evaluation (which would keep them as ground truth no detection can
match, lowering mAP) see the same objects. Each dataset warns once, naming the first such file.

XML safety. VOC annotations never contain a DTD, so a file with ``<!DOCTYPE`` or ``<!ENTITY`` is
refused before parsing (what defusedxml would do). The standard library's ElementTree does not
fetch external entities anyway; refusing DTDs also rules out entity-expansion bombs.

Which VOC a profile uses is decided in one place, :func:`voc_source` (the counterpart of
:func:`imagenet_book.data.imagenet.classification_source`): ``smoke`` always the built-in
stand-in; otherwise, in this order, the official PASCAL VOC when the data root has it (``full``
downloads it), else the VOC-format real set ``<data root>/vocstyle-coco-pennfudan`` (real COCO
and Penn-Fudan photos with their real boxes and masks in the VOC 2012 layout: NOT PASCAL VOC,
and every figure says so) when the data root has it, else (``local``) the stand-in. The number
of images comes from the profile.

Taught in: chapters/07_finetune_voc_classification.ipynb, chapters/08_detection_voc.ipynb,
chapters/09_segmentation_voc.ipynb.
"""

from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import BookError
from . import standin
from .download import DATA_ROOT_SETTINGS, DATASETS, DatasetNotFoundError, fetch_dataset, reachable
from .voc_classes import VOC_CLASSES, voc_palette

__all__ = ["VOC_CLASSES", "VOC_YEARS", "VOC_KINDS", "VOCSTYLE_FOLDER", "DatasetNotFoundError",
           "VOCFormatError", "VOCSource", "find_voc", "parse_voc_xml", "VOCMultiLabel", "VOCDetection",
           "VOCSegmentation", "collate_detection", "sanitize_boxes", "voc_palette", "voc_source"]

VOC_YEARS: tuple[str, ...] = ("2007", "2012")
_CLASS_INDEX = {name: k for k, name in enumerate(VOC_CLASSES)}
_FETCH_NAMES = {"2007": ("voc2007-trainval", "voc2007-test"), "2012": ("voc2012-trainval",)}


class VOCFormatError(BookError, ValueError):
    """A VOC file exists but cannot be used (bad XML, unknown class, corrupt image, ...).

    The message names the file and says how to fix it.
    """


def _year(year: str | int) -> str:
    if str(year) not in VOC_YEARS:
        raise ValueError(f"year must be one of {VOC_YEARS}, got {year!r}.")
    return str(year)


def find_voc(data_root: str | os.PathLike[str], year: str | int = "2007") -> Path:
    """Return ``data_root/VOCdevkit/VOC<year>``, or raise an error that says how to get it.

    Args:
        data_root: the data root (``cfg.data_root`` from ``ib.start()``), the folder that holds
            ``VOCdevkit/``.
        year: ``"2007"`` or ``"2012"`` (an int is accepted).

    Returns:
        The VOC folder as a :class:`~pathlib.Path`.

    Raises:
        DatasetNotFoundError: the folder is missing; the message names it and the fixes.
        ValueError: an unknown year.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    year = _year(year)
    root = Path(data_root).expanduser()
    folder = root / "VOCdevkit" / f"VOC{year}"
    if folder.is_dir():
        return folder
    hint = ""
    if root.name in ("VOCdevkit", f"VOC{year}"):
        up = root.parent if root.name == "VOCdevkit" else root.parent.parent
        hint = f" You passed the VOC folder itself: pass its data root {str(up)!r} instead."
    fetch = " / ".join(f"fetch_dataset({n!r}, data_root, allow_download=True)" for n in _FETCH_NAMES[year])
    raise DatasetNotFoundError(
        f"No PASCAL VOC {year} under the data root {str(root)!r}: expected the folder "
        f"{str(folder)!r}.{hint} To fix it, do one of:\n"
        f"  * download it: run with the full profile (IMAGENET_BOOK_PROFILE=full), or call "
        f"imagenet_book.data.download.{fetch};\n"
        f"  * set {DATA_ROOT_SETTINGS} to a folder that already holds VOCdevkit/VOC{year}/;\n"
        f"  * for a quick test, write a stand-in: imagenet_book.data.standin.make_voc_standin(root).")


def _read_ids(list_file: Path, year: str, kind: str) -> list[str]:
    if not list_file.is_file():
        folder = list_file.parent
        have = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem) if folder.is_dir() else []
        extra = (" The 2007 test split comes in its own archive: fetch_dataset('voc2007-test', ...)."
                 if year == "2007" and list_file.stem == "test" else "")
        raise DatasetNotFoundError(
            f"No split list {str(list_file)!r} ({kind}). Splits found there: {have or 'none'}.{extra}")
    ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise VOCFormatError(f"{str(list_file)!r} lists no images: expected one image id per line.")
    return ids


def _check_present(list_file: Path, ids: list[str], folders: list[tuple[Path, str]]) -> None:
    """Raise naming the first id of ``list_file`` whose files are not all in ``folders``."""
    listings = [set(os.listdir(d)) if d.is_dir() else set() for d, _ in folders]
    for i in ids:
        paths = [d / f"{i}{ext}" for d, ext in folders]
        missing = [p for p, names in zip(paths, listings) if p.name not in names]
        if missing:
            raise DatasetNotFoundError(
                f"{str(list_file)!r} lists the image {i!r}, but {', '.join(repr(str(p)) for p in missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing (expected "
                f"{' and '.join(repr(str(p)) for p in paths)}). The extraction is incomplete: extract "
                f"the archive again (or fetch_dataset(...) into a fresh data root), or remove the id "
                f"from the list.")


def parse_voc_xml(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read one VOC annotation file into tensors (all objects, difficult ones included).

    Args:
        path: an ``Annotations/<id>.xml`` file.

    Returns:
        A dict with ``"boxes"`` (float32 ``(N, 4)``, XYXY, 0-based pixel coordinates
        ``(xmin-1, ymin-1, xmax, ymax)``), ``"labels"`` (int64 ``(N,)`` in 0..19, indices into
        ``VOC_CLASSES``) and ``"difficult"`` (bool ``(N,)``); ``N`` may be 0. A missing
        ``<difficult>`` counts as 0. Boxes are clipped to the image's ``<size>`` (``[0, W] x
        [0, H]``), and a box left with no area is dropped with its label and flag:
        ``"clipped"`` and ``"dropped"`` (ints) say how many (see the module docstring).

    Raises:
        VOCFormatError: the file is not well-formed XML, has a DTD, lacks a box coordinate, has an
            inverted box, or names a class that is not in :data:`VOC_CLASSES`.

    Taught in: chapters/08_detection_voc.ipynb
    """
    path = Path(path)
    data = path.read_bytes()
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise VOCFormatError(f"{str(path)!r} declares a DTD or entities, which VOC annotations never do: "
                             "refused for safety. Replace it with the file from the original archive.")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise VOCFormatError(f"{str(path)!r} is not well-formed XML ({err}). The file is damaged: "
                             "replace it with the one from the original archive.") from None
    boxes, labels, difficult = [], [], []
    size = [root.findtext(f"size/{tag}") for tag in ("width", "height")]
    width, height = (int(float(v)) if v and v.strip() else 0 for v in size)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in _CLASS_INDEX:
            raise VOCFormatError(f"{str(path)!r}: unknown class {name!r}. VOC classes are: "
                                 f"{', '.join(VOC_CLASSES)}. Fix the <name> of that <object>.")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = obj.findtext(f"bndbox/{tag}")
            try:
                coords.append(float(text))  # VOC 2012 has a few non-integer coordinates
            except (TypeError, ValueError):
                raise VOCFormatError(f"{str(path)!r}: an object {name!r} has no numeric "
                                     f"<bndbox>/<{tag}> (got {text!r}).") from None
        x0, y0, x1, y1 = coords
        if x1 < x0 or y1 < y0:
            raise VOCFormatError(f"{str(path)!r}: the {name!r} box {coords} has xmax < xmin or ymax < ymin.")
        boxes.append([x0 - 1, y0 - 1, x1, y1])
        labels.append(_CLASS_INDEX[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    raw = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    clipped, keep = raw, torch.ones(len(raw), dtype=torch.bool)
    if width > 0 and height > 0:  # no <size> (not VOC's own files): nothing to clip against
        clipped = torch.stack([raw[:, 0].clamp(0, width), raw[:, 1].clamp(0, height),
                               raw[:, 2].clamp(0, width), raw[:, 3].clamp(0, height)], 1)
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    changed = (clipped != raw).any(1)
    return {"boxes": clipped[keep],
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "difficult": torch.tensor(difficult, dtype=torch.bool)[keep],
            "clipped": int((changed & keep).sum()), "dropped": int((~keep).sum())}


def _load_image(path: Path) -> tv_tensors.Image:
    # PIL, like torchvision's datasets (torchvision.io's decoders are deprecated since 0.29).
    try:
        with Image.open(path) as img:
            pixels = np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except OSError as err:
        raise VOCFormatError(f"{str(path)!r} could not be decoded as an image ({err}): it is corrupt "
                             "or truncated. Extract it again from the archive.") from None
    return tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).contiguous())


class _VOCBase(Dataset):
    _image_set = "Main"
    _target_folder, _target_ext = "Annotations", ".xml"

    def __init__(self, root: str | os.PathLike[str], year: str | int, split: str) -> None:
        self.year = _year(year)
        self.split = split
        self.voc_dir = find_voc(root, self.year)
        list_file = self.voc_dir / "ImageSets" / self._image_set / f"{split}.txt"
        self.ids = _read_ids(list_file, self.year, self._image_set)
        _check_present(list_file, self.ids, [(self.voc_dir / "JPEGImages", ".jpg"),
                                              (self.voc_dir / self._target_folder, self._target_ext)])

    def __len__(self) -> int:
        return len(self.ids)

    def _read_annotations(self) -> list[dict[str, Any]]:
        """Every annotation of the split (:func:`parse_voc_xml`), with one warning for the whole
        split when boxes had to be clipped to their image or dropped."""
        annotations = [parse_voc_xml(self.target_path(i)) for i in range(len(self.ids))]
        touched = [i for i, a in enumerate(annotations) if a["clipped"] or a["dropped"]]
        if touched:
            clipped = sum(annotations[i]["clipped"] for i in touched)
            dropped = sum(annotations[i]["dropped"] for i in touched)
            warnings.warn(
                f"VOC {self.year} {self.split}: {len(touched)} annotation file(s) have boxes outside "
                f"their image's <size>, first {str(self.target_path(touched[0]))!r}: {clipped} clipped "
                f"to the image, {dropped} dropped (no area left inside it), with their labels. "
                "Training and evaluation both use the clipped boxes.", stacklevel=3)
        return annotations

    def image_path(self, index: int) -> Path:
        """The JPEG of item ``index``."""
        return self.voc_dir / "JPEGImages" / f"{self.ids[index]}.jpg"

    def target_path(self, index: int) -> Path:
        """The annotation XML (or, for segmentation, the mask PNG) of item ``index``."""
        return self.voc_dir / self._target_folder / f"{self.ids[index]}{self._target_ext}"

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(year={self.year!r}, split={self.split!r}, n={len(self)}, "
                f"dir={str(self.voc_dir)!r})")


class VOCMultiLabel(_VOCBase):
    """VOC as multi-label classification: which of the 20 classes each image shows.

    Item ``i`` is ``(image, target)`` or, with ``return_mask=True``, ``(image, target, mask)``:

    * ``image``: ``tv_tensors.Image`` uint8 ``(3, H, W)``, then ``transform(image)`` if given;
    * ``target``: float32 ``(20,)``, 1.0 where the image has at least one NON-difficult object of
      that class, else 0.0;
    * ``mask``: float32 ``(20,)``, 0.0 where the class appears ONLY as difficult objects, else
      1.0. Multiply the per-class loss by it, and leave those entries out of the AP: this is
      VOC's own rule (its ``<class>_<split>.txt`` files mark such images 0, and the devkit's
      classification AP ignores them).

    ``labels`` holds the whole split in VOC's own convention, int8 ``(N, 20)`` with 1 present,
    -1 absent, 0 difficult-only (the same numbers as ``ImageSets/Main/<class>_<split>.txt``). All
    annotations are read once, at construction (a few seconds for the 11,540 of VOC 2012 trainval);
    a box wholly outside its image does not count (see :func:`parse_voc_xml`).

    Args:
        root: the data root (holds ``VOCdevkit/``). year: ``"2007"`` or ``"2012"``.
        split: a list in ``ImageSets/Main`` (``"train"``, ``"val"``, ``"trainval"``, ``"test"``).
        transform: applied to the image only (e.g. a ``transforms.v2.Compose``).
        return_mask: also return ``mask``.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """

    def __init__(self, root: str | os.PathLike[str], year: str | int = "2007", split: str = "train",
                 transform: Callable | None = None, *, return_mask: bool = False) -> None:
        super().__init__(root, year, split)
        self.transform, self.return_mask = transform, return_mask
        self.labels = torch.full((len(self.ids), len(VOC_CLASSES)), -1, dtype=torch.int8)
        for i, ann in enumerate(self._read_annotations()):
            self.labels[i, ann["labels"][ann["difficult"]]] = 0  # difficult-only, unless ...
            self.labels[i, ann["labels"][~ann["difficult"]]] = 1  # ... a normal instance exists

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = _load_image(self.image_path(index))
        if self.transform is not None:
            image = self.transform(image)
        target = (self.labels[index] == 1).float()
        return (image, target, (self.labels[index] != 0).float()) if self.return_mask else (image, target)


class VOCDetection(_VOCBase):
    """VOC object detection: an image and its boxes, ready for ``transforms.v2``.

    Item ``i`` is ``(image, target)``, with ``image`` a ``tv_tensors.Image`` uint8 ``(3, H, W)``
    and ``target`` a dict:

    * ``"boxes"``: ``tv_tensors.BoundingBoxes`` float32 ``(N, 4)``, XYXY, ``canvas_size=(H, W)``,
      0-based continuous pixel coordinates ``(xmin-1, ymin-1, xmax, ymax)`` of VOC's 1-based
      inclusive numbers (see the module docstring);
    * ``"labels"``: int64 ``(N,)`` in 0..19; ``"difficult"``: bool ``(N,)``;
    * ``"image_id"``: str, the VOC id (e.g. ``"000005"``).

    ``transforms(image, target)`` is applied to both together, so every geometric transform of
    ``transforms.v2`` (flip, resize, crops, ...) moves the boxes too. After a crop, end the
    pipeline with :func:`sanitize_boxes` (it drops boxes that left the image, with their labels
    and difficult flags). Batch with ``DataLoader(..., collate_fn=collate_detection)``.

    All annotations are read once, at construction (``annotations``: one :func:`parse_voc_xml`
    dict per item): boxes reaching past the image are clipped to it and boxes wholly outside
    dropped, for training and evaluation alike, with one warning for the dataset.

    Args:
        root: the data root (holds ``VOCdevkit/``). year: ``"2007"`` or ``"2012"``.
        split: a list in ``ImageSets/Main`` (``"train"``, ``"val"``, ``"trainval"``, ``"test"``).
        transforms: a joint ``transforms.v2`` callable ``(image, target) -> (image, target)``.
        keep_difficult: keep objects marked difficult (default; VOC's AP then ignores them).
            ``False`` drops them, as many training recipes do.

    Taught in: chapters/08_detection_voc.ipynb
    """

    def __init__(self, root: str | os.PathLike[str], year: str | int = "2007", split: str = "train",
                 transforms: Callable | None = None, *, keep_difficult: bool = True) -> None:
        super().__init__(root, year, split)
        self.transforms, self.keep_difficult = transforms, keep_difficult
        self.annotations = self._read_annotations()

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        ann = self.annotations[index]
        image = _load_image(self.image_path(index))
        keep = slice(None) if self.keep_difficult else ~ann["difficult"]
        target = {
            "boxes": tv_tensors.BoundingBoxes(ann["boxes"][keep], format=tv_tensors.BoundingBoxFormat.XYXY,
                                              canvas_size=tuple(image.shape[-2:])),
            "labels": ann["labels"][keep],
            "difficult": ann["difficult"][keep],
            "image_id": self.ids[index],
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class VOCSegmentation(_VOCBase):
    """VOC semantic segmentation: an image and its per-pixel class mask.

    Item ``i`` is ``(image, mask)``: ``tv_tensors.Image`` uint8 ``(3, H, W)`` and
    ``tv_tensors.Mask`` int64 ``(H, W)`` with 0 = background, ``k + 1`` = ``VOC_CLASSES[k]``
    (1..20) and 255 = void (object borders and unlabelled pixels: use ``ignore_index=255``).
    The mask is the palette index of ``SegmentationClass/<id>.png`` (not its RGB colour).

    ``transforms(image, mask)`` is applied to both together: ``transforms.v2`` resizes a ``Mask``
    with nearest-neighbour, so 255 and the class indices survive. Padding transforms need
    ``fill={tv_tensors.Mask: 255, "others": 0}`` so that padded pixels are void.

    Args:
        root: the data root (holds ``VOCdevkit/``). year: ``"2007"`` or ``"2012"``.
        split: a list in ``ImageSets/Segmentation`` (``"train"``, ``"val"``, ``"trainval"``).
        transforms: a joint ``transforms.v2`` callable ``(image, mask) -> (image, mask)``.

    Taught in: chapters/09_segmentation_voc.ipynb
    """

    _image_set = "Segmentation"
    _target_folder, _target_ext = "SegmentationClass", ".png"

    def __init__(self, root: str | os.PathLike[str], year: str | int = "2007", split: str = "train",
                 transforms: Callable | None = None) -> None:
        super().__init__(root, year, split)
        self.transforms = transforms

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, path = _load_image(self.image_path(index)), self.target_path(index)
        try:
            with Image.open(path) as png:
                mode, values = png.mode, np.array(png)
        except FileNotFoundError:
            raise
        except OSError as err:
            raise VOCFormatError(f"{str(path)!r} could not be read as a PNG ({err}): it is corrupt "
                                 "or truncated. Extract it again from the archive.") from None
        if mode not in ("P", "L"):
            raise VOCFormatError(f"{str(path)!r} is a {mode!r} image: VOC masks are palette ('P') PNGs "
                                 "whose pixel values are class indices. Use the original file.")
        mask = torch.from_numpy(values.astype(np.int64))
        if tuple(mask.shape) != tuple(image.shape[-2:]) or bool(((mask > 20) & (mask != 255)).any()):
            raise VOCFormatError(f"{str(path)!r}: mask of shape {tuple(mask.shape)} with values "
                                 f"{mask.unique().tolist()[:8]} does not fit its image of shape "
                                 f"{tuple(image.shape[-2:])} (values must be 0..20 or 255).")
        mask = tv_tensors.Mask(mask)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


def collate_detection(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[list[Any], list[dict[str, Any]]]:
    """``collate_fn`` for detection: images differ in size and in number of boxes, so keep lists.

    Args:
        batch: ``B`` items ``(image (3, H_b, W_b), target dict)`` of :class:`VOCDetection`.

    Returns:
        ``(images, targets)``: a list of ``B`` images and a list of ``B`` target dicts, the
        input format of torchvision's detection models.

    Taught in: chapters/08_detection_voc.ipynb
    """
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def sanitize_boxes(min_size: float = 1.0) -> v2.SanitizeBoundingBoxes:
    """``transforms.v2.SanitizeBoundingBoxes`` that also filters ``"difficult"`` with the boxes.

    Put it last in a :class:`VOCDetection` pipeline that crops (``RandomIoUCrop``,
    ``RandomResizedCrop``): boxes narrower or shorter than ``min_size`` pixels, or outside the
    image, are removed together with their ``labels`` and ``difficult`` entries. (The default
    ``labels_getter`` would filter ``labels`` only and leave ``difficult`` misaligned.)

    Taught in: chapters/08_detection_voc.ipynb
    """
    return v2.SanitizeBoundingBoxes(min_size=min_size, labels_getter=_labels_and_difficult)


def _labels_and_difficult(inputs: tuple[Any, dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    # A module-level function (not a lambda): DataLoader workers started with "spawn" pickle it.
    return inputs[1]["labels"], inputs[1]["difficult"]


# --------------------------------------------------------------------------------------------
# The profile rule: which VOC a chapter uses
# --------------------------------------------------------------------------------------------

#: Seed of the VOC stand-in and of the choice of images from a larger split. Like real data, it
#: does not depend on the run's seed.
VOC_STANDIN_SEED = 0
#: The folder, under the data root, of the VOC-format real set: real photos (COCO 2017 and the
#: Penn-Fudan pedestrians) with their real boxes and masks for the 20 VOC classes, in the VOC 2012
#: layout (``VOCdevkit/VOC2012``, train/val lists for Main and Segmentation). It is not PASCAL VOC.
VOCSTYLE_FOLDER = "vocstyle-coco-pennfudan"
#: Its one year folder: the set exists in the VOC 2012 layout only.
VOCSTYLE_YEAR = "2012"
#: How figures and tables name it (never "PASCAL VOC").
VOCSTYLE_TITLE = "real photos in VOC format (COCO + Penn-Fudan)"
#: :attr:`VOCSource.kind`: the official PASCAL VOC, the VOC-format real set, the stand-in.
VOC_KINDS = ("voc", "vocstyle", "standin")
#: Images per profile-size unit: a profile with ``train_per_class=n`` (images per class of a
#: 10-class ImageNet subset) uses ``VOC_IMAGES_PER_UNIT * n`` VOC training images, and likewise
#: for validation (smoke: 16 + 8, local: 400 + 100; full: every image).
VOC_IMAGES_PER_UNIT = 2


@dataclass(frozen=True)
class VOCSource:
    """Which VOC data a notebook uses, and why: the result of :func:`voc_source`.

    Attributes:
        root: the folder that holds ``VOCdevkit/`` (pass it to :class:`VOCMultiLabel`,
            :class:`VOCDetection`, :class:`VOCSegmentation`): the data root for PASCAL VOC,
            ``<data root>/vocstyle-coco-pennfudan`` for the VOC-format real set.
        year: the folder to read, ``"2007"`` or ``"2012"`` (the stand-in is always ``"2007"``,
            the VOC-format real set always ``"2012"``, whatever year was asked for).
        is_real: ``True`` for real photos (PASCAL VOC or the VOC-format real set), ``False`` for
            the procedural stand-in.
        description: one sentence for figure captions, saying which data it is: "real PASCAL
            VOC ...", "real photos in VOC format (COCO + Penn-Fudan), ..." or "built-in
            VOC-format stand-in ..."; for the stand-in it names no machine-specific path, so
            stored outputs are the same everywhere.
        train_images, val_images: how many images of each split a run uses (a seeded choice,
            :meth:`pick`); ``None``: all of them.
        profile: the profile that chose this source.
        kind: ``"voc"`` (PASCAL VOC), ``"vocstyle"`` (the VOC-format real set) or
            ``"standin"`` (:data:`VOC_KINDS`); left out, it follows ``is_real`` (``"voc"`` or
            ``"standin"``).

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """

    root: Path
    year: str
    is_real: bool
    description: str
    train_images: int | None
    val_images: int | None
    profile: str
    kind: str = ""

    def __post_init__(self) -> None:
        kind = self.kind or ("voc" if self.is_real else "standin")
        if kind not in VOC_KINDS:
            raise ValueError(f"kind must be one of {VOC_KINDS}, got {self.kind!r}.")
        if self.is_real != (kind != "standin"):
            raise ValueError(f"is_real={self.is_real} contradicts kind={kind!r}: only the stand-in "
                             "is not real.")
        object.__setattr__(self, "kind", kind)

    @property
    def voc_dir(self) -> Path:
        """``root / "VOCdevkit" / f"VOC{year}"``."""
        return self.root / "VOCdevkit" / f"VOC{self.year}"

    def splits(self, image_set: str = "Main") -> tuple[str, str]:
        """The (training, evaluation) split names for ``image_set`` (``"Main"`` for
        classification and detection, ``"Segmentation"``): ``("trainval", "test")`` when the
        test list is there (VOC 2007 with its test archive: the published protocol), else
        ``("train", "val")``.
        """
        if image_set not in ("Main", "Segmentation"):
            raise ValueError(f"image_set must be 'Main' or 'Segmentation', got {image_set!r}.")
        has_test = (self.voc_dir / "ImageSets" / image_set / "test.txt").is_file()
        return ("trainval", "test") if has_test else ("train", "val")

    def pick(self, num_items: int, split: str) -> list[int]:
        """Indices of the items of a split of ``num_items`` that a run uses: all of them, or
        ``train_images`` / ``val_images`` chosen at random with :data:`VOC_STANDIN_SEED` (sorted;
        a larger number keeps a superset of a smaller one).

        ``split`` is ``"train"`` (the training split, whatever its name) or ``"val"``.
        """
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
        limit = self.train_images if split == "train" else self.val_images
        if limit is None or limit >= num_items:
            return list(range(num_items))
        order = np.random.default_rng([VOC_STANDIN_SEED, split == "val"]).permutation(num_items)
        return sorted(order[:limit].tolist())


def _voc_sizes(cfg: Any) -> tuple[int | None, int | None]:
    p = cfg.profile
    scale = lambda n: None if n is None else VOC_IMAGES_PER_UNIT * n  # noqa: E731
    return scale(p.train_per_class), scale(p.val_per_class)


def _voc_standin(cfg: Any, year: str) -> VOCSource:
    p = cfg.profile
    train_n, val_n = _voc_sizes(cfg)
    if train_n is None or val_n is None:
        raise ValueError(f"Profile {p.name!r} has no per-class sizes: a VOC stand-in needs them.")
    folder = (Path(cfg.cache_root) / "standins" /
              f"voc-standin-{p.img_size}px-{train_n}x{val_n}-seed{VOC_STANDIN_SEED}-v{standin.VOC_FORMAT_VERSION}")
    root = standin.make_voc_standin(folder, num_train=train_n, num_val=val_n,
                                    img_size=max(32, p.img_size), seed=VOC_STANDIN_SEED)
    return VOCSource(
        root=root, year="2007", is_real=False, kind="standin", profile=p.name, train_images=train_n,
        val_images=val_n, description=(f"built-in VOC-format stand-in in place of PASCAL VOC {year} (20 glyph classes, "
                     f"{max(32, p.img_size)} px, {train_n} train + {val_n} val images)"))


def _voc_real(cfg: Any, year: str) -> VOCSource:
    train_n, val_n = _voc_sizes(cfg)
    root = Path(cfg.data_root).expanduser()
    if train_n is None:
        size = "all images"
    else:
        size = f"at most {train_n} train + {val_n} val images"
    return VOCSource(root=root, year=year, is_real=True, kind="voc", profile=cfg.profile.name,
                     train_images=train_n, val_images=val_n,
                     description=f"real PASCAL VOC {year} ({size}, from {root})")


def _vocstyle_root(data_root: Path) -> Path | None:
    """The VOC-format real set's folder (``data_root / VOCSTYLE_FOLDER``, or the data root itself
    when it is that folder), when its ``VOCdevkit/VOC2012`` is there; else ``None``."""
    here = [data_root] if data_root.name == VOCSTYLE_FOLDER else []
    for root in here + [data_root / VOCSTYLE_FOLDER]:
        if (root / "VOCdevkit" / f"VOC{VOCSTYLE_YEAR}").is_dir():
            return root
    return None


def _split_size(voc_dir: Path, split: str) -> int | None:
    """Number of ids in ``ImageSets/Main/<split>.txt`` (``None`` when it is not there)."""
    path = voc_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        return None
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _used(limit: int | None, total: int | None, split: str) -> str:
    """``"all 417 train"``, ``"400 of 417 train"`` (what :meth:`VOCSource.pick` keeps)."""
    if total is None:
        return f"all {split}" if limit is None else f"at most {limit} {split}"
    return f"all {total} {split}" if limit is None or limit >= total else f"{limit} of {total} {split}"


def _voc_vocstyle(cfg: Any, root: Path) -> VOCSource:
    train_n, val_n = _voc_sizes(cfg)
    voc_dir = root / "VOCdevkit" / f"VOC{VOCSTYLE_YEAR}"
    used = (f"{_used(train_n, _split_size(voc_dir, 'train'), 'train')} + "
            f"{_used(val_n, _split_size(voc_dir, 'val'), 'val')} images")
    return VOCSource(root=root, year=VOCSTYLE_YEAR, is_real=True, kind="vocstyle",
                     profile=cfg.profile.name, train_images=train_n, val_images=val_n,
                     description=f"{VOCSTYLE_TITLE}, {used}, from {root}")


def _has_voc(data_root: Path, year: str) -> bool:
    """Whether the data root holds the official PASCAL VOC ``year`` (a data root that IS the
    VOC-format real set's folder does not: its VOC2012 is that set)."""
    if data_root.name == VOCSTYLE_FOLDER and year == VOCSTYLE_YEAR:
        return False
    return (data_root / "VOCdevkit" / f"VOC{year}").is_dir()


def _announce(data_root: Path, year: str, source: VOCSource, why: str = "") -> None:
    """Print, once per process for the same data root, year and data, which data is used instead
    of PASCAL VOC ``year`` and how to use PASCAL VOC."""
    key = (str(data_root), year, source.description)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    if source.kind == "vocstyle":
        layout = (f" (that set has the VOC {VOCSTYLE_YEAR} layout only: its VOC{VOCSTYLE_YEAR} folder "
                  f"is read in place of VOC{year})" if year != VOCSTYLE_YEAR else "")
        using = f"the {source.description}{layout}"
    else:
        using = f"the {source.description}"
    print(f"imagenet_book: no PASCAL VOC {year} under {data_root}{why}; using {using}. Set "
          f"{DATA_ROOT_SETTINGS} to a folder holding VOCdevkit/VOC{year}/ to use PASCAL VOC.")


def voc_source(cfg: Any, year: str | int = "2007") -> VOCSource:
    """Choose the VOC data for ``cfg``'s profile (the book's data rule, for VOC).

    * ``smoke``: ALWAYS the built-in stand-in (:func:`~imagenet_book.data.standin.make_voc_standin`,
      VOC 2007 layout), generated once under ``cfg.cache_root / "standins"``, so that stored
      notebook outputs are identical on every machine.
    * ``local`` and ``full``, in this order:

      1. PASCAL VOC when ``cfg.data_root`` holds ``VOCdevkit/VOC<year>`` (``kind="voc"``).
         ``full`` downloads it when missing (the checksummed archives of
         :mod:`imagenet_book.data.download`: for 2007 the trainval and the test archive) if the
         profile allows downloads, unless the VOC-format real set is there and the download
         hosts cannot be reached (a few seconds' check).
      2. The VOC-format real set when ``cfg.data_root`` holds
         ``vocstyle-coco-pennfudan/VOCdevkit/VOC2012`` (:data:`VOCSTYLE_FOLDER`;
         ``kind="vocstyle"``): real COCO and Penn-Fudan photos with real annotations, NOT PASCAL
         VOC. It has the VOC 2012 layout only, so it is read as ``year="2012"`` whatever year was
         asked for. Its description reads "real photos in VOC format (COCO + Penn-Fudan), ...".
      3. ``local``: the stand-in (``kind="standin"``); ``full``: an error that says where to put
         PASCAL VOC.

      Steps 2 and 3 print one line (once per process) saying what is used instead of PASCAL VOC
      and which setting of the data root changes it.

    Sizes come from the profile: ``VOC_IMAGES_PER_UNIT * train_per_class`` training and
    ``VOC_IMAGES_PER_UNIT * val_per_class`` evaluation images (the stand-in is written with
    exactly these numbers, at ``img_size`` px; from the real VOC that many are picked, see
    :meth:`VOCSource.pick`); a profile without per-class sizes (``full``) uses every image.

    Args:
        cfg: the :class:`~imagenet_book.runtime.Setup` returned by ``imagenet_book.start()``.
        year: ``"2007"`` (default; classification and detection) or ``"2012"`` (more
            segmentation masks). The stand-in stands in for either.

    Returns:
        A :class:`VOCSource`.

    Raises:
        DatasetNotFoundError: ``full`` profile, the data is missing and downloads are off.
        ValueError: an unknown year.

    Taught in: chapters/07_finetune_voc_classification.ipynb.
    """
    year = _year(year)
    profile = cfg.profile.name
    if profile == "smoke":
        return _voc_standin(cfg, year)
    data_root = Path(cfg.data_root).expanduser()
    if _has_voc(data_root, year):
        return _voc_real(cfg, year)
    real_set = _vocstyle_root(data_root)
    why = ""
    if profile == "full" and cfg.profile.allow_download:
        offline = None if real_set is None else reachable(DATASETS[_FETCH_NAMES[year][0]].urls)
        if offline is None:
            for name in _FETCH_NAMES[year]:  # the single download call site for VOC
                fetch_dataset(name, data_root, allow_download=True)
            return _voc_real(cfg, year)
        why = f" and its download hosts cannot be reached ({offline})"
    if real_set is not None:
        source = _voc_vocstyle(cfg, real_set)
    elif profile == "full":
        find_voc(data_root, year)  # raises the error that says how to get it
        raise AssertionError("unreachable: find_voc raises when the folder is missing")
    else:
        source = _voc_standin(cfg, year)
    _announce(data_root, year, source, why)
    return source


_ANNOUNCED: set[tuple[str, str, str]] = set()
