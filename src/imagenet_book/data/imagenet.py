"""ImageNet-family classification data: Imagenette, Imagewoof, Tiny-ImageNet, ImageNet-1k subsets.

Everything here reads folders in the datasets' own published layouts and returns ordinary
``torch.utils.data.Dataset`` objects (built on ``torchvision.datasets.ImageFolder`` where the
layout is ``split/<wnid>/*.JPEG``). Nothing is copied: subsets are lists of file paths.

The one decision every chapter needs is *which* data a profile uses. That rule lives in
:func:`classification_source`:

========  ==================================================================================
profile   data
========  ==================================================================================
smoke     ALWAYS the built-in stand-in (:mod:`imagenet_book.data.standin`), sized by the
          profile, so that stored notebook outputs are identical on every machine.
local     the real Imagenette/Imagewoof when :func:`find_imagenette` finds it under the data
          root; else, when the machine is online, its small 160 px release (~94 MB,
          checksummed) downloaded into the data root; else (offline: found out within
          seconds) a stand-in sized by the local profile, with one printed line saying why.
full      the real dataset; when it is missing, its 320 px release downloaded when the
          profile allows downloads, else an error that says where to put it.
========  ==================================================================================

:func:`load_classification` then turns the chosen :class:`DataSource` into a dataset, keeping
``per_class`` images per class (a deterministic, seeded choice) so that every profile runs the
same code on a different number of images.

Taught in: chapters/06_pretraining.ipynb.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import ImageFolder, VisionDataset
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import BookError
from . import standin
from . import download as _download
from .download import DATA_ROOT_SETTINGS, DatasetNotFoundError, DownloadError, fetch_dataset

__all__ = [
    "IMAGENETTE_CLASSES",
    "IMAGEWOOF_CLASSES",
    "DataSource",
    "DatasetLayoutError",
    "DatasetNotFoundError",
    "ImageFileList",
    "ImageNetSubset",
    "classification_source",
    "find_imagenette",
    "imagenet_class_subset",
    "imagenette",
    "load_classification",
    "read_synset_mapping",
    "tiny_imagenet",
]

#: The 10 Imagenette classes as ``(wnid, name)``, sorted by wnid (= folder order = label order).
#: Names are the first ImageNet synonym, as in torchvision's ``Imagenette``.
IMAGENETTE_CLASSES: list[tuple[str, str]] = [
    ("n01440764", "tench"),
    ("n02102040", "English springer"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw"),
    ("n03028079", "church"),
    ("n03394916", "French horn"),
    ("n03417042", "garbage truck"),
    ("n03425413", "gas pump"),
    ("n03445777", "golf ball"),
    ("n03888257", "parachute"),
]

#: The 10 Imagewoof classes (dog breeds) as ``(wnid, name)``, sorted by wnid (= label order).
IMAGEWOOF_CLASSES: list[tuple[str, str]] = [
    ("n02086240", "Shih-Tzu"),
    ("n02087394", "Rhodesian ridgeback"),
    ("n02088364", "beagle"),
    ("n02089973", "English foxhound"),
    ("n02093754", "Border terrier"),
    ("n02096294", "Australian terrier"),
    ("n02099601", "golden retriever"),
    ("n02105641", "Old English sheepdog"),
    ("n02111889", "Samoyed"),
    ("n02115641", "dingo"),
]

# Folder names of the fast.ai releases, most preferred first: the largest images win, because a
# smaller resolution can always be made from a larger one but not the other way round.
_VARIANT_FOLDERS: dict[str, tuple[str, ...]] = {
    "imagenette": ("imagenette2", "imagenette2-320", "imagenette2-160"),
    "imagewoof": ("imagewoof2", "imagewoof2-320", "imagewoof2-160"),
}
_VARIANT_CLASSES = {"imagenette": IMAGENETTE_CLASSES, "imagewoof": IMAGEWOOF_CLASSES}
_VARIANT_TITLE = {"imagenette": "Imagenette", "imagewoof": "Imagewoof"}
_DOWNLOAD_HINT = "https://github.com/fastai/imagenette (for example imagenette2-160.tgz)"
_SPLITS = ("train", "val")
#: The stand-in never depends on the run's seed: like real data, it is the same for every run.
STANDIN_SEED = 0


class DatasetLayoutError(BookError, ValueError):
    """A folder exists but is not laid out as the dataset should be. The message says how."""


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _first_name(names: str) -> str:
    return names.split(",")[0].strip()


def read_synset_mapping(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """Read an ImageNet ``LOC_synset_mapping.txt``-style file: ``<wnid> <name, synonym, ...>``.

    Args:
        path: the file (for example ``<ImageNet root>/LOC_synset_mapping.txt``).

    Returns:
        ``[(wnid, first_name), ...]`` in file order (ImageNet's file is in label order, which is
        sorted by wnid); ``first_name`` is the text before the first comma.

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetLayoutError: a non-empty line does not start with a wnid.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"No synset mapping file at {str(path)!r}: expected '<wnid> <names>' lines.")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        wnid, _, names = line.strip().partition(" ")
        if not (wnid.startswith("n") and wnid[1:].isdigit()):
            raise DatasetLayoutError(
                f"{str(path)!r} line {lineno}: {line!r} does not start with a WordNet id like 'n01440764'."
            )
        pairs.append((wnid, _first_name(names) or wnid))
    return pairs


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _check_not_empty(class_dir: Path) -> None:
    """Raise DatasetLayoutError naming ``class_dir`` when it holds no image file."""
    if not any(_is_image(e.name) for e in os.scandir(class_dir) if e.is_file()):
        raise DatasetLayoutError(
            f"The class folder {str(class_dir)!r} holds no image file ({', '.join(IMG_EXTENSIONS)}). "
            "Put that class's images in it, or delete the folder (its class is then left out); "
            "an interrupted copy or extraction leaves such folders: copy or extract the data again.")


def _pick_per_class(
    targets: Sequence[int], num_classes: int, per_class: int | None, seed: int, pick: str
) -> list[int]:
    """Indices to keep: ``per_class`` per class, in the original (sorted-path) order.

    ``pick="random"`` draws each class's images from its own generator seeded by
    ``(seed, class)``, as a prefix of one permutation: a larger ``per_class`` keeps a superset
    of a smaller one, and the choice in one class does not depend on the other classes.
    """
    if per_class is None:
        return list(range(len(targets)))
    if not isinstance(per_class, int) or isinstance(per_class, bool) or per_class < 1:
        raise ValueError(f"per_class must be None or an int >= 1, got {per_class!r}.")
    if pick not in ("random", "first"):
        raise ValueError(f"pick must be 'random' or 'first', got {pick!r}.")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, t in enumerate(targets):
        by_class[t].append(i)
    keep: list[int] = []
    for c, idx in enumerate(by_class):
        if pick == "first":
            keep += idx[:per_class]
        else:
            order = np.random.default_rng([seed, c]).permutation(len(idx))[:per_class]
            keep += [idx[j] for j in sorted(order.tolist())]
    return sorted(keep)


# --------------------------------------------------------------------------------------------
# Imagenette / Imagewoof
# --------------------------------------------------------------------------------------------


def _check_split_layout(folder: Path, expected: Sequence[str] | None) -> None:
    """Raise DatasetLayoutError unless ``folder/{train,val}/<wnid>/`` holds the expected wnids."""
    for split in _SPLITS:
        split_dir = folder / split
        if not split_dir.is_dir():
            raise DatasetLayoutError(
                f"{str(folder)!r} has no {split}/ folder. Expected {folder.name}/{{train,val}}/<wnid>/*.JPEG "
                "as in the official archive: re-extract the archive there, or remove the folder."
            )
        found = _class_folders(split_dir)
        if expected is not None and found != list(expected):
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            raise DatasetLayoutError(
                f"{str(split_dir)!r} should hold exactly the 10 class folders {list(expected)}; "
                f"missing {missing}, unexpected {extra}. The extraction may be incomplete: "
                "re-extract the archive there, or remove the folder."
            )


def find_imagenette(data_root: str | os.PathLike[str], variant: str = "imagenette") -> Path | None:
    """Find an Imagenette (or Imagewoof) copy under ``data_root``; ``None`` when there is none.

    Looks for the fast.ai folder names, in this order of preference (largest images first, since
    smaller images can be made from larger ones but not the reverse):
    ``imagenette2`` (full size), ``imagenette2-320``, ``imagenette2-160`` (``imagewoof2...`` for
    ``variant="imagewoof"``). ``data_root`` may also *be* one of these folders. This is the layout
    that ``torchvision.datasets.Imagenette(root=data_root, size=..., download=False)`` reads.

    Args:
        data_root: the folder holding the datasets (``cfg.data_root``).
        variant: ``"imagenette"`` or ``"imagewoof"``.

    Returns:
        The dataset folder (with ``train/`` and ``val/`` inside), or ``None``.

    Raises:
        DatasetLayoutError: the preferred folder that exists is incomplete (no ``train/`` or
            ``val/``, or not exactly the 10 class folders): it is reported rather than skipped,
            so a half-extracted download is noticed.
        ValueError: an unknown ``variant``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if variant not in _VARIANT_FOLDERS:
        raise ValueError(f"variant must be one of {sorted(_VARIANT_FOLDERS)}, got {variant!r}.")
    data_root = Path(data_root).expanduser()
    expected = [w for w, _ in _VARIANT_CLASSES[variant]]
    names = _VARIANT_FOLDERS[variant]
    candidates = [data_root] if data_root.name in names else []
    candidates += [data_root / name for name in names]
    for folder in candidates:
        if folder.is_dir():
            _check_split_layout(folder, expected)
            return folder.resolve()
    return None


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image file as a PIL RGB image; a corrupt or truncated file names itself.

    Raises:
        DatasetLayoutError: the file cannot be decoded (the message names it and the fix).

    Taught in: chapters/06_pretraining.ipynb.
    """
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError) as err:  # PIL: UnidentifiedImageError, "image file is truncated"
        raise DatasetLayoutError(
            f"Cannot decode {str(path)!r} ({err}): the file is corrupt or truncated. Re-download "
            "or re-extract the dataset, or delete that file."
        ) from err


class ImageNetSubset(ImageFolder):
    """An ImageNet-layout split folder (``<split>/<wnid>/*.JPEG``), optionally N images per class.

    A ``torchvision.datasets.ImageFolder`` whose classes are WordNet ids, with their readable
    names kept, and an optional deterministic per-class subset. Item ``i`` is
    ``(image, label)``: a PIL RGB image (or whatever ``transform`` makes of it, e.g. a float32
    tensor of shape ``(3, H, W)``) and an ``int`` label in ``[0, num_classes)``, the index of the
    wnid in sorted order.

    Args:
        root: the split folder (e.g. ``.../imagenette2-160/train``).
        transform: applied to the PIL image.
        target_transform: applied to the label.
        per_class: keep this many images per class (``None``: all). A class with fewer keeps all.
        seed: seed of the per-class choice (``pick="random"``).
        pick: ``"random"`` (seeded; nested: a larger ``per_class`` keeps a superset) or
            ``"first"`` (first files in sorted order).
        class_names: ``{wnid: name}``; wnids missing from it are named by their wnid.
        loader: reads one image file (default: PIL, converted to RGB).

    Attributes:
        wnids: the WordNet ids in label order (same as ``classes``).
        class_names: readable names in label order.
        samples: ``[(path, label), ...]`` kept; ``targets``: their labels.

    Raises:
        DatasetNotFoundError: ``root`` is not a folder.
        DatasetLayoutError: ``root`` has no class folders, or a class folder holds no image (the
            message names the folder).

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        per_class: int | None = None,
        seed: int = 0,
        pick: str = "random",
        class_names: dict[str, str] | None = None,
        loader: Callable[[str], Any] = load_rgb,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"No folder {str(root)!r}: expected an ImageNet-style split folder <split>/<wnid>/*.JPEG."
            )
        if not _class_folders(root):
            raise DatasetLayoutError(
                f"{str(root)!r} has no class folders: expected one sub-folder per class named by its "
                "WordNet id (e.g. n01440764/) holding that class's JPEG files."
            )
        for name in _class_folders(root):  # ImageFolder would raise FileNotFoundError for the split
            _check_not_empty(root / name)
        super().__init__(str(root), transform=transform, target_transform=target_transform, loader=loader)
        keep = _pick_per_class(self.targets, len(self.classes), per_class, seed, pick)
        self.samples = [self.samples[i] for i in keep]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        names = class_names or {}
        self.wnids: list[str] = list(self.classes)
        self.class_names: list[str] = [names.get(w, w) for w in self.wnids]

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(self.wnids)``)."""
        return len(self.wnids)


def imagenette(
    data_root: str | os.PathLike[str],
    split: str = "train",
    *,
    variant: str = "imagenette",
    transform: Callable | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> ImageNetSubset:
    """The real Imagenette (or Imagewoof) ``split`` found under ``data_root``.

    Args:
        data_root: folder holding ``imagenette2*/`` (see :func:`find_imagenette`).
        split: ``"train"`` or ``"val"``.
        variant: ``"imagenette"`` or ``"imagewoof"``.
        transform: applied to each PIL RGB image.
        per_class: keep this many images per class (seeded choice); ``None``: all
            (imagenette2: 9,469 train / 3,925 val images).
        seed: seed of the per-class choice.

    Returns:
        An :class:`ImageNetSubset` with ``wnids`` / ``class_names`` of the 10 classes.

    Raises:
        DatasetNotFoundError: no copy under ``data_root``; the message says where to put one.

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_split(split)
    folder = find_imagenette(data_root, variant)
    if folder is None:
        raise DatasetNotFoundError(_missing_message(Path(data_root), variant))
    return ImageNetSubset(folder / split, transform, per_class=per_class, seed=seed,
                          class_names=dict(_VARIANT_CLASSES[variant]))


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}.")


def _missing_message(data_root: Path, variant: str) -> str:
    names = _VARIANT_FOLDERS[variant]
    return (
        f"No {_VARIANT_TITLE[variant]} under the data root {str(data_root)!r} (looked for "
        f"{', '.join(n + '/' for n in names)}). Fix: download one of the {variant}2 archives from "
        f"{_DOWNLOAD_HINT} and extract it into that folder (so that {data_root / names[-1] / 'train'} "
        f"exists), or set {DATA_ROOT_SETTINGS} to a folder that holds it, or use the local/smoke "
        "profile, which fall back to the built-in stand-in."
    )


# --------------------------------------------------------------------------------------------
# File lists: Tiny-ImageNet and class subsets of ImageNet-1k
# --------------------------------------------------------------------------------------------


class ImageFileList(VisionDataset):
    """A labelled list of image files: a dataset that copies nothing.

    Item ``i`` is ``(image, label)``: the PIL RGB image at ``samples[i][0]`` (or
    ``transform(image)``) and the ``int`` label ``samples[i][1]``.

    Attributes:
        samples: ``[(Path, label), ...]``; ``targets``: the labels.
        wnids: WordNet ids in label order; ``class_names``: readable names in label order.

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        samples: Sequence[tuple[Path, int]],
        wnids: Sequence[str],
        class_names: Sequence[str],
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        loader: Callable[[str], Any] = load_rgb,
    ) -> None:
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        self.samples: list[tuple[Path, int]] = [(Path(p), int(t)) for p, t in samples]
        self.targets: list[int] = [t for _, t in self.samples]
        self.wnids: list[str] = list(wnids)
        self.classes: list[str] = self.wnids
        self.class_names: list[str] = list(class_names)
        self.loader = loader

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(self.wnids)``)."""
        return len(self.wnids)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        path, target = self.samples[index]
        image = self.loader(str(path))
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def _read_words(path: Path) -> dict[str, str]:
    """``words.txt`` of Tiny-ImageNet / ImageNet-21k: ``<wnid>\\t<names>`` -> {wnid: first name}."""
    names = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, text = line.partition("\t")
            if wnid:
                names[wnid.strip()] = _first_name(text) or wnid.strip()
    return names


def tiny_imagenet(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    transform: Callable | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> ImageFileList:
    """Read Tiny-ImageNet-200 (200 classes, 64x64 JPEGs) in its published layout.

    Layout (``root`` is ``tiny-imagenet-200/`` or the folder holding it)::

        wnids.txt                         the 200 wnids, one a line
        words.txt                         "<wnid>\\t<names>" (all of WordNet; used for names)
        train/<wnid>/images/*.JPEG        500 per class
        val/images/*.JPEG                 10,000 images
        val/val_annotations.txt           "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"

    Labels are the index of the wnid in sorted order (as ``ImageFolder`` would assign them).
    The ``test`` split has no labels and is not supported.

    Args:
        root: the dataset folder.
        split: ``"train"`` or ``"val"``.
        transform: applied to each PIL RGB image (64x64).
        per_class: keep this many images per class (seeded choice); ``None``: all.
        seed: seed of the per-class choice.

    Returns:
        An :class:`ImageFileList` (``wnids``, ``class_names``, ``samples``).

    Raises:
        DatasetNotFoundError: ``root`` (or a file the layout needs) is missing.
        DatasetLayoutError: ``val_annotations.txt`` names an unknown wnid or a missing file.

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_split(split)
    root = Path(root).expanduser()
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise DatasetNotFoundError(
            f"No Tiny-ImageNet at {str(root)!r}: {str(wnids_file)!r} is missing. Extract "
            "tiny-imagenet-200.zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip) there."
        )
    wnids = sorted(w.strip() for w in wnids_file.read_text(encoding="utf-8").split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    words = _read_words(root / "words.txt")
    samples: list[tuple[Path, int]] = []
    if split == "train":
        for w in wnids:
            folder = root / "train" / w / "images"
            if not folder.is_dir():
                raise DatasetNotFoundError(
                    f"{str(folder)!r} is missing: Tiny-ImageNet's train split is train/<wnid>/images/*.JPEG. "
                    "Re-extract the archive."
                )
            samples += [(folder / n, index[w]) for n in sorted(os.listdir(folder)) if _is_image(n)]
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetNotFoundError(
                f"{str(ann)!r} is missing: Tiny-ImageNet's val split is val/images/*.JPEG labelled by "
                "val/val_annotations.txt. Re-extract the archive."
            )
        for lineno, line in enumerate(ann.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            name, w = parts[0].strip(), parts[1].strip()
            if w not in index:
                raise DatasetLayoutError(f"{str(ann)!r} line {lineno}: wnid {w!r} is not in wnids.txt.")
            path = root / "val" / "images" / name
            if not path.is_file():
                raise DatasetLayoutError(f"{str(ann)!r} line {lineno}: image {str(path)!r} does not exist.")
            samples.append((path, index[w]))
        samples.sort()
    keep = _pick_per_class([t for _, t in samples], len(wnids), per_class, seed, "random")
    return ImageFileList(root, [samples[i] for i in keep], wnids, [words.get(w, w) for w in wnids],
                         transform=transform)


def imagenet_class_subset(
    root: str | os.PathLike[str],
    *,
    num_classes: int,
    per_class: int | None,
    split: str = "train",
    seed: int = 0,
    wnids: Sequence[str] | None = None,
    transform: Callable | None = None,
) -> ImageFileList:
    """K classes x N images of a local ImageNet-1k copy, as a file list (nothing is copied).

    ``root`` holds ``<split>/<wnid>/*.JPEG`` (the layout of the ILSVRC-2012 train archive once
    its per-class tars are extracted, and of a val split re-sorted into class folders); the
    Kaggle layout ``root/ILSVRC/Data/CLS-LOC/<split>/<wnid>/`` is found too. Class names come
    from ``LOC_synset_mapping.txt`` in ``root`` when present, else the wnids stand for them.

    Args:
        root: the ImageNet folder.
        num_classes: K, how many classes to draw (ignored when ``wnids`` is given).
        per_class: N, images per class (seeded choice); ``None``: all of them.
        split: the split folder name (``"train"`` or ``"val"``).
        seed: seed of the class choice and the per-class choice.
        wnids: use exactly these classes instead of drawing K at random.
        transform: applied to each PIL RGB image.

    Returns:
        An :class:`ImageFileList`; labels ``0..K-1`` follow the sorted order of the chosen wnids.

    Raises:
        DatasetNotFoundError: no ``<split>/`` folder under ``root``.
        DatasetLayoutError: fewer than K class folders, a requested wnid is missing, or a chosen
            class folder holds no image (the message names it).

    Taught in: chapters/06_pretraining.ipynb.
    """
    root = Path(root).expanduser()
    split_dir = root / split
    if not split_dir.is_dir() and (root / "ILSVRC" / "Data" / "CLS-LOC" / split).is_dir():
        split_dir = root / "ILSVRC" / "Data" / "CLS-LOC" / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"No ImageNet {split} split at {str(root / split)!r}: expected {split}/<wnid>/*.JPEG "
            "(one folder per class). Point root at the folder that holds it."
        )
    available = [w for w in _class_folders(split_dir) if w.startswith("n")]
    if wnids is not None:
        chosen = sorted(wnids)
        missing = [w for w in chosen if w not in set(available)]
        if missing:
            raise DatasetLayoutError(f"{str(split_dir)!r} has no class folder for {missing}.")
    else:
        if not isinstance(num_classes, int) or not 1 <= num_classes <= len(available):
            raise DatasetLayoutError(
                f"Asked for {num_classes!r} classes but {str(split_dir)!r} has {len(available)} class folders."
            )
        order = np.random.default_rng(seed).permutation(len(available))[:num_classes]
        chosen = sorted(available[i] for i in order.tolist())
    names: dict[str, str] = {}
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        names = dict(read_synset_mapping(mapping))
    samples: list[tuple[Path, int]] = []
    for label, w in enumerate(chosen):
        folder = split_dir / w
        _check_not_empty(folder)
        samples += [(folder / n, label) for n in sorted(os.listdir(folder)) if _is_image(n)]
    keep = _pick_per_class([t for _, t in samples], len(chosen), per_class, seed, "random")
    return ImageFileList(split_dir, [samples[i] for i in keep], chosen, [names.get(w, w) for w in chosen],
                         transform=transform)


# --------------------------------------------------------------------------------------------
# The profile rule: which data a chapter uses
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSource:
    """Which classification data a notebook uses, and why: the result of :func:`classification_source`.

    Attributes:
        name: the dataset's folder name for real data (e.g. ``"imagenette2-160"``), or
            ``"imagenet-standin"`` for the built-in stand-in.
        root: the dataset folder (holds ``train/`` and ``val/``).
        is_real: ``True`` for real ImageNet images, ``False`` for the procedural stand-in.
        description: one human sentence for figure captions; for the stand-in it names no
            machine-specific path, so stored outputs are the same everywhere.
        wnids: WordNet ids in label order (fake ``n99...`` ids for the stand-in).
        class_names: readable names in label order.
        train_root: the training split folder; ``val_root``: the validation split folder.
        train_per_class: images per class :func:`load_classification` keeps by default for
            ``"train"`` (the profile's size; ``None``: all); ``val_per_class`` likewise.
        profile: the profile that chose this source.

    Taught in: chapters/06_pretraining.ipynb.
    """

    name: str
    root: Path
    is_real: bool
    description: str
    wnids: tuple[str, ...]
    class_names: tuple[str, ...]
    train_root: Path
    val_root: Path
    train_per_class: int | None = None
    val_per_class: int | None = None
    profile: str = field(default="")

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.wnids)

    def split_root(self, split: str) -> Path:
        """The folder of ``split`` (``"train"`` or ``"val"``)."""
        _check_split(split)
        return self.train_root if split == "train" else self.val_root


def _standin_source(cfg: Any, dataset: str) -> DataSource:
    p = cfg.profile
    train_n, val_n = p.train_per_class, p.val_per_class
    if train_n is None or val_n is None:
        raise ValueError(f"Profile {p.name!r} has no per-class sizes: a stand-in needs them.")
    folder = (Path(cfg.cache_root) / "standins" /
              f"imagenet-standin-10c-{p.img_size}px-{train_n}x{val_n}-seed{STANDIN_SEED}-v{standin.FORMAT_VERSION}")
    root = standin.make_imagenet_standin(folder, num_classes=10, train_per_class=train_n,
                                         val_per_class=val_n, img_size=p.img_size, seed=STANDIN_SEED)
    classes = standin.STANDIN_CLASSES[:10]
    instead = f" in place of {_VARIANT_TITLE[dataset]}" if dataset in _VARIANT_TITLE else ""
    description = (
        f"built-in stand-in{instead} (10 procedural classes, {p.img_size} px, "
        f"{train_n} train + {val_n} val images per class)"
    )
    return DataSource(
        name="imagenet-standin", root=root, is_real=False, description=description,
        wnids=tuple(w for w, _ in classes), class_names=tuple(_first_name(n) for _, n in classes),
        train_root=root / "train", val_root=root / "val",
        train_per_class=train_n, val_per_class=val_n, profile=p.name,
    )


def _real_source(cfg: Any, folder: Path, variant: str) -> DataSource:
    p = cfg.profile
    classes = _VARIANT_CLASSES[variant]
    return DataSource(
        name=folder.name, root=folder, is_real=True,
        description=f"real {_VARIANT_TITLE[variant]} ({folder.name}, from {folder.parent})",
        wnids=tuple(w for w, _ in classes), class_names=tuple(n for _, n in classes),
        train_root=folder / "train", val_root=folder / "val",
        train_per_class=p.train_per_class, val_per_class=p.val_per_class, profile=p.name,
    )


#: Approximate archive sizes of the 160 px releases the local profile downloads, for its message.
_SMALL_RELEASE_MB = {"imagenette": 94, "imagewoof": 88}


def _release(profile: str, variant: str) -> str:
    """The release a profile downloads when the data root has none: ``full`` the 320 px one
    (large enough for 224 px crops, a fifth of the full-size download), ``local`` the 160 px
    one (~94 MB; its images are 64 px)."""
    return _VARIANT_FOLDERS[variant][1 if profile == "full" else 2]


def _download_imagenette(data_root: Path, name: str) -> Path:
    """The single place where a missing Imagenette/Imagewoof release is downloaded (checksummed,
    :func:`~imagenet_book.data.download.fetch_dataset`), for the full and the local profile."""
    return fetch_dataset(name, data_root, allow_download=True)


def classification_source(cfg: Any, dataset: str = "imagenette") -> DataSource:
    """Choose the classification data for ``cfg``'s profile (the book's one data rule).

    * ``smoke``: ALWAYS the built-in stand-in, sized by the profile (``img_size``,
      ``train_per_class``, ``val_per_class``) and generated once under ``cfg.cache_root``, so
      that stored notebook outputs are identical on every machine.
    * ``local``: the real dataset when :func:`find_imagenette` finds it under ``cfg.data_root``;
      else, when its download host answers a quick check
      (:func:`~imagenet_book.data.download.reachable`, a few seconds at most), the 160 px
      release (~94 MB, checksummed) downloaded into ``cfg.data_root``; else (offline, or the
      download failed) the stand-in sized by the local profile, with one printed line saying why.
    * ``full``: the real dataset; when missing its 320 px release is downloaded if the profile
      allows it, else a clear error.

    Both profiles download through ``_download_imagenette``, the single call site.

    Args:
        cfg: the :class:`~imagenet_book.runtime.Setup` returned by ``imagenet_book.start()``.
        dataset: ``"imagenette"`` (default), ``"imagewoof"``, or ``"standin"`` (the stand-in
            under every profile, e.g. to show what it looks like).

    Returns:
        A :class:`DataSource`; pass it to :func:`load_classification`.

    Raises:
        DatasetNotFoundError: ``full`` profile and the dataset is not under ``cfg.data_root``.
        DatasetLayoutError: a copy exists but is incomplete (see :func:`find_imagenette`).
        ValueError: an unknown ``dataset``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if dataset not in (*_VARIANT_FOLDERS, "standin"):
        raise ValueError(f"dataset must be 'imagenette', 'imagewoof' or 'standin', got {dataset!r}.")
    profile = cfg.profile.name
    if profile == "smoke" or dataset == "standin":
        return _standin_source(cfg, dataset)
    data_root = Path(cfg.data_root)
    folder = find_imagenette(data_root, dataset)
    if folder is not None:
        return _real_source(cfg, folder, dataset)
    title, name = _VARIANT_TITLE[dataset], _release(profile, dataset)
    if profile == "full":
        if cfg.profile.allow_download:
            return _real_source(cfg, _download_imagenette(data_root, name), dataset)
        raise DatasetNotFoundError(_missing_message(data_root, dataset))
    # local: the small release when the machine is online, else the stand-in.
    why = _download.reachable(_download.DATASETS[name].urls)
    if why is None:
        print(f"imagenet_book: no {title} under {data_root}; downloading {name} (about "
              f"{_SMALL_RELEASE_MB[dataset]} MB, checksummed) into it. Set {DATA_ROOT_SETTINGS} to a "
              f"copy's folder to use that one instead.", flush=True)
        try:
            return _real_source(cfg, _download_imagenette(data_root, name), dataset)
        except DownloadError as err:  # ChecksumError included; the tries were printed as they failed
            why = f"the download failed: {str(err).splitlines()[0]}"
    else:
        why = f"its download host cannot be reached ({why})"
    source = _standin_source(cfg, dataset)
    print(f"imagenet_book: no {title} under {data_root} and {why}; using the {source.description}. "
          f"Set {DATA_ROOT_SETTINGS} to a copy's folder, or run online (it downloads {name}), to use "
          f"the real data.")
    return source


def load_classification(
    source: DataSource,
    split: str,
    transform: Callable | None = None,
    per_class: int | None = None,
    seed: int = 0,
) -> ImageNetSubset:
    """The ``split`` of ``source`` as a dataset of ``(image, label)`` pairs.

    Args:
        source: from :func:`classification_source`.
        split: ``"train"`` or ``"val"``.
        transform: applied to each PIL RGB image (e.g. to a float32 tensor ``(3, H, W)``).
        per_class: images kept per class. ``None``: the profile's size recorded in ``source``
            (``source.train_per_class`` / ``source.val_per_class``; ``None`` there means all).
            Use ``dataclasses.replace(source, train_per_class=None)`` to read every image.
        seed: seed of the per-class choice (deterministic; nested across sizes).

    Returns:
        An :class:`ImageNetSubset` with ``wnids`` and ``class_names`` of ``source``; labels are
        ``int`` in ``[0, source.num_classes)``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_split(split)
    if per_class is None:
        per_class = source.train_per_class if split == "train" else source.val_per_class
    ds = ImageNetSubset(source.split_root(split), transform, per_class=per_class, seed=seed,
                        class_names=dict(zip(source.wnids, source.class_names)))
    if ds.wnids != list(source.wnids):
        raise DatasetLayoutError(
            f"{str(source.split_root(split))!r} holds classes {ds.wnids}, expected {list(source.wnids)}: "
            "the folder changed since the source was chosen. Re-extract it, or delete it and rerun."
        )
    return ds
