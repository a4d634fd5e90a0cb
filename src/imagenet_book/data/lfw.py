"""Labeled Faces in the Wild (LFW): its folders, its pairs protocol, and which faces a profile uses.

LFW (Huang et al., 2007) holds 13,233 news photos of 5,749 people, 250 x 250 px with the face
in the centre. Its benchmark is **face verification**: given two photos, are they of the same
person? Its ``pairs.txt`` (View 2) splits people into 10 identity-disjoint folds of 300
same-person and 300 different-person pairs; results are the mean and standard deviation of the
accuracy over the 10 rotations (train on 9 folds, test on the held-out one).

The formats, read here with errors that name the file and the line:

* images: ``<images dir>/<Person>/<Person>_NNNN.jpg`` (``NNNN`` from 0001), one folder per
  person (:func:`lfw_image_path`, :func:`list_images`);
* pairs (:func:`read_pairs`): a header ``folds<TAB>N`` (or just ``N``: one fold, the format of
  ``pairsDevTrain.txt``), then per fold ``N`` same-person rows ``name<TAB>i<TAB>j`` followed by
  ``N`` different-person rows ``name1<TAB>i<TAB>name2<TAB>j``;
* people (:func:`read_people`): a header ``folds``, then per fold its number of people ``M``
  and ``M`` rows ``name<TAB>images``. Fold ``k`` of ``people.txt`` holds the people of fold
  ``k`` of ``pairs.txt`` (and others who appear in no pair).

A :class:`FaceFold` is one fold: its pairs and the people it owns. Training on the other folds
uses every image of their people that is on disk (LFW's "unrestricted" configuration: identity
labels may be used, but never an image of a held-out person).

Which faces a profile uses is decided in one place, :func:`lfw_source` (the shape of
:func:`imagenet_book.data.voc.voc_source`):

========  ==================================================================================
profile   data
========  ==================================================================================
smoke     ALWAYS the built-in stand-in (:func:`imagenet_book.data.standin.make_lfw_standin`:
          synthetic faces of made-up people, 5 folds), so stored outputs are the same
          everywhere.
local     1. the whole LFW when the data root has it (``lfw-py/lfw-deepfunneled/`` and
          ``lfw-py/pairs.txt``: torchvision's layout; ``kind="lfw"``); 2. else the shared
          subset ``lfw-deepfunneled-5folds/`` (real LFW deep-funneled faces, folds 2-6 of
          the official ``pairs.txt`` in ``pairs_5folds.txt``; ``kind="subset"``); 3. else the
          stand-in (``kind="standin"``). Steps 2 and 3 print one line saying so.
full      as ``local``, but when the whole LFW is missing and its host answers (a 3 s check),
          it is downloaded first; offline (or the host down), the same fall-backs, with the
          reason in the printed line.
========  ==================================================================================

**The download.** torchvision's ``LFWPairs`` / ``LFWPeople`` no longer download
(``download=True`` raises since torchvision 0.18: the UMass server stopped serving the files
for a while). So the ``full`` profile fetches the files itself, with the book's downloader
(:mod:`imagenet_book.data.download`: resumable, checked against the MD5s that torchvision and
the LFW site publish, extracted safely) into **torchvision's layout**, ``<data
root>/lfw-py/``: the archive ``lfw-deepfunneled.tgz`` is kept there, so that
``torchvision.datasets.LFWPairs(data_root, image_set="deepfunneled")`` and ``LFWPeople`` read
the same files as the book's readers do (their integrity check looks for the archive). The
sources are :data:`LFW_FILES` (official URL first, then mirrors).

Taught in: chapters/11_self_supervised.ipynb.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from ..errors import BookError
from . import standin
from .download import (DATA_ROOT_SETTINGS, DatasetNotFoundError, DatasetSource, download, extract,
                       reachable)

__all__ = ["FACE_CROP", "FULL_FOLDER", "FULL_IMAGES", "LFW_FILES", "LFW_KINDS", "LFW_STANDIN_SEED",
           "LFW_STANDIN_SIZES", "SUBSET_FOLDER", "SUBSET_PAIRS", "FaceFold", "FacePair",
           "LFWFormatError", "LFWSource", "fetch_lfw", "lfw_image_path", "lfw_source", "list_images",
           "load_faces", "make_folds", "read_pairs", "read_people"]

#: :attr:`LFWSource.kind`: the whole LFW, the shared 5-fold subset, the synthetic stand-in.
LFW_KINDS = ("lfw", "subset", "standin")
#: torchvision's folder for LFW under the data root, and the deep-funneled images' folder in it.
FULL_FOLDER, FULL_IMAGES = "lfw-py", "lfw-deepfunneled"
#: The shared subset's folder under the data root, and its pairs file (5 folds of 300 + 300).
SUBSET_FOLDER, SUBSET_PAIRS = "lfw-deepfunneled-5folds", "pairs_5folds.txt"
#: The centre of an LFW photo that holds the face: 150 of its 250 px (the same fraction of a
#: stand-in's side). Everything outside is background, hair and shoulders.
FACE_CROP = 150 / 250
#: Seed of the stand-in (like real data, it does not depend on the run's seed).
LFW_STANDIN_SEED = 0
#: The stand-in's sizes per profile: 5 identity-disjoint folds like the shared subset, tiny
#: (``full``, offline without real faces, takes ``local``'s).
LFW_STANDIN_SIZES: dict[str, dict[str, int]] = {
    "smoke": {"people_per_fold": 8, "images_per_person": 3, "pairs_per_fold": 8, "img_size": 64},
    "local": {"people_per_fold": 60, "images_per_person": 4, "pairs_per_fold": 60, "img_size": 125},
}

_LFW_SITE = "http://vis-www.cs.umass.edu/lfw/"
_LFW_PAGES = "https://umass-vis-lfw.github.io/"  # the LFW site's new home (its repository root)
_TV_LFW = "torchvision/datasets/lfw.py (_LFW.file_dict and checksums, torchvision 0.29) and the LFW site"
#: What :func:`fetch_lfw` downloads into ``<data root>/lfw-py/``: the deep-funneled archive
#: (111 MB) and the protocol files, each with the MD5 torchvision and the LFW site give.
LFW_FILES: dict[str, DatasetSource] = {
    "lfw-deepfunneled.tgz": DatasetSource(
        "lfw-deepfunneled", (_LFW_SITE + "lfw-deepfunneled.tgz",), "lfw-deepfunneled.tgz",
        f"{FULL_FOLDER}/{FULL_IMAGES}", md5="68331da3eb755a505a502b5aacb3c201", checksum_from=_TV_LFW),
    **{name: DatasetSource(name, (_LFW_SITE + name, _LFW_PAGES + name), name, FULL_FOLDER, md5=md5,
                           checksum_from=_TV_LFW)
       for name, md5 in (("pairs.txt", "9f1ba174e4e1c508ff7cdf10ac338a7d"),
                         ("people.txt", "450f0863dd89e85e73936a6d71a3474b"),
                         ("lfw-names.txt", "a6d0a479bd074669f656265a6e693f6d"))},
}


class LFWFormatError(BookError, ValueError):
    """An LFW file exists but cannot be used (a malformed pairs or people row, a corrupt image).

    The message names the file (and the line) and says how to fix it.
    """


# ------------------------------------------------------------------------------- the formats


class FacePair(NamedTuple):
    """One row of a pairs file: two photos, ``<name1>_<index1:04d>.jpg`` and ``<name2>_...``.

    ``line`` is its 1-based line number in the file (for messages). ``same``: one person.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    name1: str
    index1: int
    name2: str
    index2: int
    line: int = 0

    @property
    def same(self) -> bool:
        return self.name1 == self.name2

    @property
    def images(self) -> tuple[tuple[str, int], tuple[str, int]]:
        """``((name1, index1), (name2, index2))``."""
        return (self.name1, self.index1), (self.name2, self.index2)


def _fields(path: Path, lines: list[str], k: int, what: str) -> list[str]:
    if k >= len(lines):
        raise LFWFormatError(f"{str(path)!r} ends after line {len(lines)}, but its header promises more rows "
                             f"(the next should be {what}). The file is truncated: get it again.")
    return lines[k].split()


def _index(path: Path, line: int, text: str, row: str) -> int:
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise LFWFormatError(f"{str(path)!r} line {line}: image number {text!r} in {row!r} is not an integer "
                             ">= 1 (LFW numbers a person's photos 1, 2, ...). Fix or remove that row.")
    return int(text)


def _header(path: Path, lines: list[str], example: str) -> list[int]:
    first = lines[0].split() if lines else []
    if not first or len(first) > 2 or not all(re.fullmatch(r"\d+", f) for f in first):
        raise LFWFormatError(f"{str(path)!r} line 1: expected the header {example}, got "
                             f"{lines[0] if lines else 'an empty file'!r}.")
    return [int(f) for f in first]


def read_pairs(path: str | os.PathLike[str]) -> tuple[tuple[FacePair, ...], ...]:
    """Read an LFW pairs file (``pairs.txt``, ``pairs_5folds.txt``, ``pairsDevTrain.txt``).

    Args:
        path: the file. Its header is ``folds<TAB>N`` (or ``N`` alone: one fold); each fold is
            ``N`` same-person rows ``name i j`` then ``N`` different-person rows
            ``name1 i name2 j`` (tabs or spaces; image numbers from 1).

    Returns:
        One tuple of :class:`FacePair` per fold, its ``N`` same-person pairs first.

    Raises:
        FileNotFoundError: no such file.
        LFWFormatError: a bad header, a row with the wrong number of fields for its place
            (a different-person row among the same-person ones, ...), an image number that is
            not an integer >= 1, a different-person row naming one person twice, fewer rows
            than the header promises, or rows after the last fold. The message names the file
            and the line.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()]
    header = _header(path, lines, "'folds<TAB>pairs per fold' (e.g. '10\\t300')")
    num_folds, n = header if len(header) == 2 else (1, header[0])
    folds, k = [], 1
    for fold in range(num_folds):
        rows = []
        for r in range(2 * n):
            same = r < n
            what = (f"same-person row {r + 1} of {n} ('name<TAB>i<TAB>j')" if same else
                    f"different-person row {r - n + 1} of {n} ('name1<TAB>i<TAB>name2<TAB>j')") + f" of fold {fold + 1}"
            parts = _fields(path, lines, k, what)
            line = k + 1
            if len(parts) != (3 if same else 4):
                raise LFWFormatError(f"{str(path)!r} line {line}: expected the {what}, got {lines[k]!r} "
                                     f"({len(parts)} fields). Fix that row, or the header's counts.")
            if same:
                rows.append(FacePair(parts[0], _index(path, line, parts[1], lines[k]), parts[0],
                                     _index(path, line, parts[2], lines[k]), line))
            else:
                if parts[0] == parts[2]:
                    raise LFWFormatError(f"{str(path)!r} line {line}: the different-person row {lines[k]!r} "
                                         "names the same person twice. Fix that row.")
                rows.append(FacePair(parts[0], _index(path, line, parts[1], lines[k]), parts[2],
                                     _index(path, line, parts[3], lines[k]), line))
            k += 1
        folds.append(tuple(rows))
    extra = [i for i in range(k, len(lines)) if lines[i].strip()]
    if extra:
        raise LFWFormatError(f"{str(path)!r} line {extra[0] + 1}: a row after the last of the {num_folds} "
                             f"fold(s) of 2 x {n} rows the header (line 1) announces: {lines[extra[0]]!r}. "
                             "Fix the header's counts or remove the extra rows.")
    return tuple(folds)


def read_people(path: str | os.PathLike[str]) -> tuple[tuple[tuple[str, int], ...], ...]:
    """Read an LFW people file (``people.txt``): per fold, ``(name, number of images)`` rows.

    Raises:
        FileNotFoundError: no such file.
        LFWFormatError: a bad header or count line, a row that is not ``name<TAB>images``, or
            fewer rows than announced; the message names the file and the line.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    header = _header(path, lines, "'folds' (e.g. '10')")
    if len(header) != 1:
        raise LFWFormatError(f"{str(path)!r} line 1: a people file starts with the number of folds alone, "
                             f"got {lines[0]!r} (a pairs file?).")
    folds, k = [], 1
    for fold in range(header[0]):
        count = _fields(path, lines, k, f"the number of people of fold {fold + 1}")
        if len(count) != 1 or not count[0].isdigit():
            raise LFWFormatError(f"{str(path)!r} line {k + 1}: expected the number of people of fold "
                                 f"{fold + 1}, got {lines[k]!r}.")
        k += 1
        rows = []
        for _ in range(int(count[0])):
            parts = _fields(path, lines, k, f"a 'name<TAB>images' row of fold {fold + 1}")
            if len(parts) != 2:
                raise LFWFormatError(f"{str(path)!r} line {k + 1}: expected 'name<TAB>images', got {lines[k]!r}.")
            rows.append((parts[0], _index(path, k + 1, parts[1], lines[k])))
            k += 1
        folds.append(tuple(rows))
    return tuple(folds)


def lfw_image_path(images_dir: str | os.PathLike[str], name: str, index: int) -> Path:
    """``images_dir / name / f"{name}_{index:04d}.jpg"``: where LFW keeps photo ``index`` of ``name``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    return Path(images_dir) / name / f"{name}_{int(index):04d}.jpg"


def list_images(images_dir: str | os.PathLike[str],
                people: Iterable[str] | None = None) -> list[tuple[str, int]]:
    """The photos on disk, as sorted ``(name, index)`` keys: of ``people``, or of everyone.

    Files that do not follow ``<Person>/<Person>_NNNN.jpg`` are ignored.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    images_dir = Path(images_dir)
    names = sorted(p.name for p in images_dir.iterdir() if p.is_dir()) if people is None else sorted(set(people))
    keys = []
    for name in names:
        folder = images_dir / name
        if folder.is_dir():
            for file in os.listdir(folder):
                match = re.fullmatch(re.escape(name) + r"_(\d{4,})\.jpg", file)
                if match:
                    keys.append((name, int(match.group(1))))
    return sorted(keys)


# ------------------------------------------------------------------------------- folds and sources


@dataclass(frozen=True)
class FaceFold:
    """One fold of the protocol: its pairs and the people it owns.

    Attributes:
        number: 1-based position in the pairs file.
        pairs: its :class:`FacePair` rows (same-person ones first).
        people: every person of the fold (sorted): from the people file when the source has
            one (LFW: also people in no pair), else the people its pairs name.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    number: int
    pairs: tuple[FacePair, ...]
    people: tuple[str, ...]

    @property
    def pair_people(self) -> frozenset[str]:
        """The people its pairs name."""
        return frozenset(n for p in self.pairs for n in (p.name1, p.name2))

    @property
    def pair_images(self) -> frozenset[tuple[str, int]]:
        """The ``(name, index)`` photos its pairs use."""
        return frozenset(key for p in self.pairs for key in p.images)

    @property
    def labels(self) -> torch.Tensor:
        """int64 ``(P,)``: 1 for a same-person pair, 0 for a different-person one."""
        return torch.tensor([int(p.same) for p in self.pairs], dtype=torch.int64)


@dataclass(frozen=True)
class LFWSource:
    """Which faces a notebook uses, and why: the result of :func:`lfw_source`.

    Attributes:
        images_dir: the folder of ``<Person>/<Person>_NNNN.jpg`` photos.
        pairs_file: the pairs file read into :attr:`folds`.
        people_file: LFW's ``people.txt`` for these folds, or ``None`` (the subset: its
            ``people.txt`` is the official 10-fold one, whose other folds are not there).
        kind: ``"lfw"``, ``"subset"`` or ``"standin"`` (:data:`LFW_KINDS`).
        description: one sentence for captions, saying which data it is (no machine path for
            the stand-in, so stored outputs are the same everywhere).
        profile: the profile that chose it.
        folds: the :class:`FaceFold` s.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    images_dir: Path
    pairs_file: Path
    people_file: Path | None
    kind: str
    description: str
    profile: str
    folds: tuple[FaceFold, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if self.kind not in LFW_KINDS:
            raise ValueError(f"kind must be one of {LFW_KINDS}, got {self.kind!r}.")

    @property
    def is_real(self) -> bool:
        """Real photos of real people (LFW or its subset), not the stand-in."""
        return self.kind != "standin"

    def image_path(self, name: str, index: int) -> Path:
        """The file of photo ``index`` of ``name``."""
        return lfw_image_path(self.images_dir, name, index)

    def images_of(self, people: Iterable[str]) -> list[tuple[str, int]]:
        """Every photo of ``people`` on disk, sorted ``(name, index)`` keys."""
        return list_images(self.images_dir, people)

    def check(self) -> None:
        """Raise :class:`DatasetNotFoundError` naming the first pair whose photo is missing."""
        for fold in self.folds:
            for pair in fold.pairs:
                for name, index in pair.images:
                    if not self.image_path(name, index).is_file():
                        raise DatasetNotFoundError(
                            f"{str(self.pairs_file)!r} line {pair.line} uses {str(self.image_path(name, index))!r}, "
                            f"which is missing. The images folder {str(self.images_dir)!r} is incomplete: "
                            "extract the archive again, or point the data root at a complete copy.")


def make_folds(pairs_file: Path, people_file: Path | None = None) -> tuple[FaceFold, ...]:
    """The folds of ``pairs_file`` (:func:`read_pairs`), each with its people: fold ``k`` of
    ``people_file`` (:func:`read_people`) when given, else the people its pairs name.

    Raises:
        LFWFormatError: a malformed file, or a people file with another number of folds, or
            whose fold ``k`` lacks a person that fold ``k`` of the pairs names.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    pairs = read_pairs(pairs_file)
    people = read_people(people_file) if people_file is not None else None
    if people is not None and len(people) != len(pairs):
        raise LFWFormatError(f"{str(people_file)!r} has {len(people)} folds, {str(pairs_file)!r} {len(pairs)}: "
                             "they must be the same protocol (LFW's pairs.txt and people.txt).")
    folds = []
    for k, rows in enumerate(pairs):
        named = {n for p in rows for n in (p.name1, p.name2)}
        owned = named if people is None else {name for name, _ in people[k]}
        if not named <= owned:
            raise LFWFormatError(f"fold {k + 1} of {str(pairs_file)!r} names {sorted(named - owned)[0]!r}, who is not "
                                 f"in fold {k + 1} of {str(people_file)!r}: the two files do not belong together.")
        folds.append(FaceFold(k + 1, rows, tuple(sorted(owned))))
    return tuple(folds)


# ------------------------------------------------------------------------------- the pixels


_DECODED: dict[tuple, torch.Tensor] = {}
_KEEP_DECODED = 4


def load_faces(source: LFWSource, keys: Sequence[tuple[str, int]], img_size: int, *,
               crop: float = FACE_CROP) -> torch.Tensor:
    """The face crops of photos ``keys``: the centre ``crop`` of each photo, resized.

    Each photo is decoded with PIL, its centre square of side ``round(crop * side)`` (150 of
    LFW's 250 px: pixels 50 to 199) cut out and resized to ``img_size`` (bilinear, antialiased
    when shrinking). A few
    decoded sets are kept in memory for the process (the runs of a notebook reuse them).

    Args:
        source: from :func:`lfw_source`.
        keys: ``(name, index)`` photos.
        img_size: side of the crops, in pixels.
        crop: the fraction of the side kept (0 < crop <= 1).

    Returns:
        uint8 ``(N, 3, img_size, img_size)``, in the order of ``keys``.

    Raises:
        FileNotFoundError: a photo is missing.
        LFWFormatError: a photo cannot be decoded (the message names it).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}.")
    key = (str(source.images_dir), tuple(keys), int(img_size), float(crop))
    if key not in _DECODED:
        if len(_DECODED) >= _KEEP_DECODED:
            _DECODED.pop(next(iter(_DECODED)))
        out = np.empty((len(keys), img_size, img_size, 3), dtype=np.uint8)
        for i, (name, index) in enumerate(keys):
            path = source.image_path(name, index)
            try:
                with Image.open(path) as img:
                    img = img.convert("RGB")
                    w, h = img.size
                    side = round(crop * min(w, h))
                    left, top = (w - side) // 2, (h - side) // 2
                    face = img.crop((left, top, left + side, top + side))
                    out[i] = np.asarray(face.resize((img_size, img_size), Image.Resampling.BILINEAR))
            except FileNotFoundError:
                raise
            except OSError as err:
                raise LFWFormatError(f"{str(path)!r} could not be decoded as an image ({err}): it is corrupt or "
                                     "truncated. Extract it again from the archive.") from None
        _DECODED[key] = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return _DECODED[key]


# ------------------------------------------------------------------------------- the data rule


def fetch_lfw(data_root: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Download the whole LFW (deep-funneled) and its protocol files into ``<data root>/lfw-py/``.

    The files of :data:`LFW_FILES`, each with the book's :func:`~imagenet_book.data.download.download`
    (resumable, verified against its MD5, official URL first, then mirrors); the archive is
    extracted safely (:func:`~imagenet_book.data.download.extract`) into ``lfw-py/`` and
    kept, as torchvision's ``LFWPairs`` / ``LFWPeople`` need it to read the folder. Files
    already there and verified are not downloaded again.

    Returns:
        ``<data root>/lfw-py``, with ``lfw-deepfunneled/``, ``pairs.txt``, ``people.txt`` and
        ``lfw-names.txt``.

    Raises:
        DownloadError, ChecksumError, UnsafeArchiveError: see :mod:`imagenet_book.data.download`.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    folder = Path(data_root).expanduser() / FULL_FOLDER
    for name, src in LFW_FILES.items():
        path = download(src.urls, folder / src.filename, md5=src.md5, sha256=src.sha256, progress=progress)
        if name.endswith(".tgz") and not (folder / FULL_IMAGES).is_dir():
            extract(path, folder)
    if not (folder / FULL_IMAGES).is_dir():
        raise LFWFormatError(f"{str(folder / LFW_FILES['lfw-deepfunneled.tgz'].filename)!r} was extracted into "
                             f"{str(folder)!r}, but it holds no {FULL_IMAGES}/ folder: not the LFW archive expected.")
    return folder


def _full(cfg: Any, data_root: Path) -> LFWSource:
    folder = data_root / FULL_FOLDER
    people = folder / "people.txt" if (folder / "people.txt").is_file() else None
    folds = make_folds(folder / "pairs.txt", people)
    return LFWSource(folder / FULL_IMAGES, folder / "pairs.txt", people, "lfw",
                     f"real LFW (deep-funneled), all {len(folds)} folds of pairs.txt, "
                     f"{sum(len(f.pairs) for f in folds):,} pairs, from {data_root}", cfg.profile.name, folds)


def _subset(cfg: Any, root: Path) -> LFWSource:
    folds = make_folds(root / SUBSET_PAIRS)
    images = len(list_images(root / "lfw"))
    return LFWSource(root / "lfw", root / SUBSET_PAIRS, None, "subset",
                     f"real LFW faces (deep-funneled), folds 2-6 of LFW's pairs.txt: {len(folds)} folds, "
                     f"{sum(len(f.pairs) for f in folds):,} pairs, {images:,} images of "
                     f"{len({n for f in folds for n in f.people}):,} people, from {root}", cfg.profile.name, folds)


def _standin(cfg: Any) -> LFWSource:
    sizes = LFW_STANDIN_SIZES.get(cfg.profile.name, LFW_STANDIN_SIZES["local"])
    tag = "-".join(str(v) for v in sizes.values())
    root = standin.make_lfw_standin(
        Path(cfg.cache_root) / "standins" / f"lfw-standin-{tag}-seed{LFW_STANDIN_SEED}-v{standin.LFW_FORMAT_VERSION}",
        num_folds=5, seed=LFW_STANDIN_SEED, **sizes)
    folds = make_folds(root / "pairs.txt", root / "people.txt")
    return LFWSource(root / "lfw", root / "pairs.txt", root / "people.txt", "standin",
                     f"built-in stand-in in place of LFW (synthetic faces of made-up people: 5 folds of "
                     f"{sizes['people_per_fold']} people, {sizes['pairs_per_fold']} + {sizes['pairs_per_fold']} pairs "
                     f"each, {sizes['img_size']} px)", cfg.profile.name, folds)


def _subset_root(data_root: Path) -> Path | None:
    """The shared subset's folder (under the data root, or the data root itself), if there."""
    for root in ([data_root] if data_root.name == SUBSET_FOLDER else []) + [data_root / SUBSET_FOLDER]:
        if (root / SUBSET_PAIRS).is_file() and (root / "lfw").is_dir():
            return root
    return None


def _has_full(data_root: Path) -> bool:
    return (data_root / FULL_FOLDER / FULL_IMAGES).is_dir() and (data_root / FULL_FOLDER / "pairs.txt").is_file()


_ANNOUNCED: set[tuple[str, str]] = set()


def _announce(data_root: Path, source: LFWSource, why: str) -> None:
    key = (str(data_root), source.description)
    if key in _ANNOUNCED:
        return
    _ANNOUNCED.add(key)
    wanted = f"{FULL_FOLDER}/{FULL_IMAGES}/ and {FULL_FOLDER}/pairs.txt"
    fix = (f"to a folder holding {wanted} to use the whole LFW (10 folds)" if source.kind == "subset" else
           f"to a folder holding {wanted} (the whole LFW) or {SUBSET_FOLDER}/ to use real faces")
    print(f"imagenet_book: no whole LFW under {data_root}{why}; using the {source.description}. Set "
          f"{DATA_ROOT_SETTINGS} {fix}.")


def lfw_source(cfg: Any) -> LFWSource:
    """Choose the faces for ``cfg``'s profile (the book's data rule, for LFW; see the module's table).

    Args:
        cfg: the :class:`~imagenet_book.runtime.Setup` returned by ``imagenet_book.start()``.

    Returns:
        An :class:`LFWSource` whose folds are read and whose pairs' photos are all on disk.

    Raises:
        LFWFormatError: a malformed pairs or people file (the message names file and line).
        DatasetNotFoundError: a pair's photo is missing.
        DownloadError, ChecksumError: ``full``, online, and the download failed.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if cfg.profile.name == "smoke":
        source = _standin(cfg)
    else:
        data_root = Path(cfg.data_root).expanduser()
        why = ""
        if not _has_full(data_root) and cfg.profile.name == "full" and cfg.profile.allow_download:
            offline = reachable(LFW_FILES["lfw-deepfunneled.tgz"].urls)
            if offline is None:
                fetch_lfw(data_root)  # the single download call site for LFW
            else:
                why = f" and its download host cannot be reached ({offline})"
        if _has_full(data_root):
            source = _full(cfg, data_root)
        else:
            subset = _subset_root(data_root)
            source = _subset(cfg, subset) if subset is not None else _standin(cfg)
            _announce(data_root, source, why)
    source.check()
    return source
