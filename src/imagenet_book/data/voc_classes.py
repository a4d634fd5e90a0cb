"""PASCAL VOC's 20 classes and its colour palette: the VOC format's constants, nothing else.

This module imports nothing from the package, so that both the VOC reader (:mod:`.voc`, which
re-exports these names: use them as ``ib.data.voc.VOC_CLASSES`` and ``ib.data.voc.voc_palette``)
and the stand-in writer (:mod:`.standin`, which the reader calls for the stand-in) can import it
without importing each other; it plays for VOC the part :mod:`.ilsvrc` plays for ImageNet.

Taught in: chapters/07_finetune_voc_classification.ipynb, chapters/09_segmentation_voc.ipynb.
"""

from __future__ import annotations

__all__ = ["VOC_CLASSES", "voc_palette"]

#: The 20 VOC classes in the standard order: label ``k`` is ``VOC_CLASSES[k]`` (segmentation
#: masks use ``k + 1``, with 0 = background and 255 = void).
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour palette as a flat ``[r0, g0, b0, r1, ...]`` list (768 ints).

    Index 0 (background) is black, 1 (aeroplane) is (128, 0, 0), ..., 255 ("void") is
    (224, 224, 192): the bit-interleaving colour map of the VOC development kit. Use it with
    ``PIL.Image.putpalette`` to show masks as VOC does (:func:`imagenet_book.viz.colorize_mask`).

    Taught in: chapters/01_imagenet.ipynb, chapters/06_pretraining.ipynb; used by the
    segmentation chapter.
    """
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette
