"""The 1,000 ILSVRC-2012 classes: WordNet ids and readable names, available offline.

The WordNet ids ship with the package (``resources/imagenet_wnids.txt``, in the standard class-index
order, which is the sorted order of the ids). The readable names come from torchvision's weight
metadata, which is part of the torchvision package and needs no download.

Taught in: chapters/01_imagenet.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

__all__ = ["SAMPLES_FOLDER", "ImageNetClass", "imagenet_classes", "imagenet_samples"]


@dataclass(frozen=True)
class ImageNetClass:
    """One ILSVRC-2012 class: its index in a 1,000-way classifier, WordNet id and name."""

    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[ImageNetClass, ...]:
    """The 1,000 ILSVRC-2012 classes in class-index order (index 0 is ``n01440764``, tench).

    Returns:
        A tuple of 1,000 :class:`ImageNetClass`.

    Taught in: chapters/01_imagenet.ipynb.
    """
    from torchvision.models import ResNet50_Weights

    text = resources.files("imagenet_book").joinpath("resources/imagenet_wnids.txt").read_text()
    wnids = text.split()
    names = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    if len(wnids) != 1000 or len(names) != 1000:
        raise RuntimeError(
            f"Expected 1000 ImageNet classes, found {len(wnids)} WordNet ids and {len(names)} "
            "names: reinstall the imagenet-book package and torchvision."
        )
    return tuple(ImageNetClass(i, w, n) for i, (w, n) in enumerate(zip(wnids, names)))


#: Folder of one real ImageNet image per class, ``<wnid>_<class_name>.JPEG``, in a data root.
SAMPLES_FOLDER = "imagenet-samples-128"


def imagenet_samples(cfg) -> list[tuple[Path, ImageNetClass]]:
    """One real image per ILSVRC class, when the data root has the samples folder.

    Looks for ``cfg.data_root / SAMPLES_FOLDER`` holding files named ``<wnid>_<name>.JPEG``.
    Under the ``smoke`` profile it returns nothing, so that notebooks show the same (stand-in)
    data on every machine.

    Args:
        cfg: what ``imagenet_book.start()`` returned.

    Returns:
        ``(path, class)`` pairs in class-index order; empty when unavailable.

    Raises:
        ValueError: a file in the folder is not named after one of the 1,000 WordNet ids.

    Taught in: chapters/01_imagenet.ipynb.
    """
    folder = Path(cfg.data_root) / SAMPLES_FOLDER
    if cfg.profile.name == "smoke" or not folder.is_dir():
        return []
    by_wnid = {c.wnid: c for c in imagenet_classes()}
    found = []
    for path in sorted(folder.glob("*.JPEG")):
        wnid = path.name.split("_", 1)[0]
        if wnid not in by_wnid:
            raise ValueError(f"{path}: expected a name <wnid>_<class>.JPEG with one of the 1,000 "
                             "ILSVRC WordNet ids; rename or remove the file.")
        found.append((path, by_wnid[wnid]))
    return sorted(found, key=lambda pc: pc[1].index)
