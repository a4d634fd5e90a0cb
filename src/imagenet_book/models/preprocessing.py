"""What the networks of the book expect as input: ImageNet's per-channel mean and standard
deviation (of RGB values in ``[0, 1]``), the normalisation every pretrained network here uses.

This is a property of the networks (torchvision's weights carry the same numbers), so it lives
with the models; the data pipelines import it from here.

Taught in: chapters/01_imagenet.ipynb.
"""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
