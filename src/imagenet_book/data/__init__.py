"""Datasets: ImageNet subsets, PASCAL VOC, built-in stand-ins, downloads, fast input pipeline.

Modules (use them as ``ib.data.imagenet.classification_source(cfg)`` and so on):

* :mod:`.ilsvrc`: the 1,000 ILSVRC classes (WordNet ids and names) and per-class samples.
* :mod:`.imagenet`: Imagenette / Imagewoof / Tiny-ImageNet / ImageNet-1k class subsets, and the
  profile's data rule (real data when present, else the stand-in).
* :mod:`.voc`: PASCAL VOC 2007/2012 for multi-label classification, detection, segmentation.
* :mod:`.voc_classes`: VOC's 20 classes and colour palette (re-exported by :mod:`.voc`).
* :mod:`.lfw`: Labeled Faces in the Wild: its folders, its pairs protocol, and the profile's rule.
* :mod:`.standin`: stand-in datasets written to disk in the real formats.
* :mod:`.fast`: decode once into a uint8 cache; batched augmentation on the training device.
* :mod:`.download`: checksummed, resumable downloads and safe archive extraction.
"""

from . import download, fast, ilsvrc, imagenet, lfw, standin, voc, voc_classes

__all__ = ["download", "fast", "ilsvrc", "imagenet", "lfw", "standin", "voc", "voc_classes"]
