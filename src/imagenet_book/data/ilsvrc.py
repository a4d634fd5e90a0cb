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

__all__ = ["ImageNetClass", "imagenet_classes"]


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
