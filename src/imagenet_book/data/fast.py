"""A fast input pipeline: decode every JPEG once, then augment whole batches as tensor ops.

The textbook loader (``ImageFolder`` + PIL transforms + ``DataLoader``) decodes, crops and resizes
every image again in every epoch, one image at a time, in worker processes. On a 2-core machine that
costs more than the model. This module splits the work in two:

1. :func:`decode_cache` decodes a split once into a uint8 array ``(N, 3, S, S)`` (shorter side
   resized to ``S`` with PIL's antialiased bilinear filter, centre square kept) in a memory-mapped
   file ``<cache_dir>/<dataset>-<split>-<S>px-<digest>.u8`` with a JSON manifest beside it. The
   manifest records every source file (path, label, size, mtime): when one changes, the cache is
   rebuilt. The array is written to a temporary file and renamed, and the manifest is written
   last, so an interrupted build never leaves a cache that looks complete.
2. :class:`FastLoader` draws batches from that array and augments them on the training device:
   random-resized-crop, horizontal flip and normalisation for the whole batch at once
   (:func:`random_resized_crop_boxes`, :func:`resized_crop`). Bilinear resampling is done as two
   separable gathers (rows, then columns) with linear interpolation: no per-image Python loop.
   On CUDA the CPU only gathers uint8 images into pinned memory (:meth:`FastLoader.host_batches`).

How it matches torchvision's per-image ``RandomResizedCrop(out) + RandomHorizontalFlip() +
ToTensor() + Normalize(mean, std)`` (and ``Resize + CenterCrop`` for evaluation):

* the crop boxes follow ``RandomResizedCrop.get_params``: area fraction uniform in ``scale``,
  log aspect ratio uniform in ``log(ratio)``, up to 10 tries per image, then its centre-crop
  fallback; each image gets its own box and its own coin for the flip (p = 0.5);
* resampling is bilinear with ``align_corners=False``: for a given box the result equals
  ``torchvision.transforms.v2.functional.resized_crop(img, *box, size, antialias=False)``
  (checked in ``tests/test_fast.py``); normalisation uses ImageNet's mean and std.

How it differs:

* no antialiasing: when a box is larger than the output, torchvision (PIL, or tensors with the
  default ``antialias=True``) low-pass filters first; we interpolate between the 2x2 nearest
  pixels. That is invisible at the mild factors of 160 px -> 128 px but aliases at large factors,
  which is why :func:`fast_loader` stores images at about 1.25x the training size;
* boxes are drawn inside the cached square (shorter side ``S``, centre crop), not inside the
  original image: for non-square originals the sides outside the centre square are never seen,
  and no crop has more detail than ``S`` pixels (large JPEGs are also decoded at a reduced
  scale by libjpeg, ``Image.draft``, before PIL's resize);
* the same distribution, not the same random numbers as torchvision for the same seed; and the
  crop is not rounded back to uint8 before normalisation (differences below 0.5/255);
* evaluation crops the centre ``crop_fraction`` of the square and resizes it to ``out_size``:
  the geometry of ``Resize(out / crop_fraction) + CenterCrop(out)``, resampled once.

**Several views, colour distortion** (self-supervised learning): ``FastLoader(views=2,
photometric=Photometric())`` yields ``(X1, X2, y)``: two independently augmented views of the
same images (each its own crop box, flip and colour draws). :func:`photometric` is SimCLR's colour
distortion for a whole batch: colour jitter (brightness, contrast, saturation, hue) with
probability ``jitter_p``, grayscale with probability ``grayscale_p``, Gaussian blur with
probability ``blur_p``; each operation equals torchvision's ``v2.functional`` one for the same
factor (``adjust_brightness`` ... ``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``;
tested). It differs from ``v2.ColorJitter`` in one way: the four jitter operations run in a
fixed order (brightness, contrast, saturation, hue) instead of a random one per image.

Taught in: chapters/06_pretraining.ipynb (views and colour: chapters/11_self_supervised.ipynb).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import BookError
from ..models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from ..recipe import RecipeError
from .imagenet import classification_source, load_classification

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "CacheBuildError", "FastLoader", "HostBatch",
           "ImageCache", "PHOTOMETRIC_COLUMNS", "Photometric", "center_crop_boxes", "decode_cache", "fast_loader",
           "holdout_split", "image_side", "photometric", "photometric_params", "random_resized_crop_boxes",
           "resized_crop"]

FORMAT_VERSION = 1  # bump when the stored pixels change: every cache is then rebuilt


class CacheBuildError(BookError, RuntimeError):
    """An image could not be decoded while building a cache; the message names the file."""


@dataclass(frozen=True)
class ImageCache:
    """A decoded split. ``images``: uint8 ``(N, 3, S, S)`` memory-mapped from ``path``;
    ``labels``: int64 ``(N,)``; ``classes``: class folder names in label order; ``size``: ``S``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    path: Path
    size: int

    def __len__(self) -> int:
        return len(self.labels)


def holdout_split(cache: ImageCache, fraction: float, seed: int = 0) -> tuple[ImageCache, ImageCache]:
    """Split a decoded training split into ``(fit, held_out)``: ``round(fraction * n)`` images of
    each class (at least one, and never all of them), drawn with ``seed``, are held out. The two
    parts are disjoint and together are the whole split; each keeps the classes' label order.

    This is how a recipe is chosen without the validation split: train on ``fit``, score on
    ``held_out`` (appendix A2's :func:`imagenet_book.fastrecipe.search`; chapter 06's weight decay,
    :func:`imagenet_book.pretrain.pretrain` with ``holdout``).

    Raises:
        ValueError: ``fraction`` not in (0, 1), or a class with fewer than 2 images (nothing to hold out).

    Taught in: chapters/06_pretraining.ipynb, chapters/A2_fast_recipe.ipynb.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"The held-out fraction must be in (0, 1), got {fraction!r}.")
    generator, held = torch.Generator().manual_seed(seed), []
    for label, name in enumerate(cache.classes):
        index = (cache.labels == label).nonzero().flatten()
        if len(index) < 2:
            raise ValueError(f"Class {name!r} of {cache.path} has {len(index)} training image(s): a held-out "
                             f"split needs at least 2 per class. Use more training images per class.")
        keep = min(len(index) - 1, max(1, round(fraction * len(index))))
        held.append(index[torch.randperm(len(index), generator=generator)[:keep]])
    out = torch.zeros(len(cache), dtype=torch.bool)
    out[torch.cat(held)] = True

    def part(mask: torch.Tensor) -> ImageCache:
        index = mask.nonzero().flatten()
        return replace(cache, images=cache.images[index], labels=cache.labels[index])

    return part(~out), part(out)


def _decode_image(path: str, size: int) -> np.ndarray:
    """One file -> uint8 ``(3, size, size)``: shorter side resized to ``size``, centre square."""
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: let the decoder downscale by 2/4/8 when it can
        im = im.convert("RGB")
    w, h = im.size
    nw, nh = max(size, round(w * size / min(w, h))), max(size, round(h * size / min(w, h)))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)  # PIL antialiases when it shrinks
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


def _decode_or_explain(path: str, size: int) -> np.ndarray:
    try:
        return _decode_image(path, size)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise CacheBuildError(f"Cannot decode image file {path!r} ({type(err).__name__}: {err}). "
                              "Replace or delete this file, then run again.") from err


def image_side(path: str | os.PathLike[str]) -> int:
    """The shorter side, in pixels, of the image file ``path`` (read from its header only).

    Raises:
        CacheBuildError: PIL cannot read the file (missing, corrupt, not an image); the message
            names it and the fix.

    Taught in: chapters/06_pretraining.ipynb.
    """
    try:
        with Image.open(path) as im:
            return min(im.size)
    except Exception as err:  # PIL raises OSError (UnidentifiedImageError), SyntaxError, ...
        raise CacheBuildError(f"Cannot read the image file {str(path)!r} to find the image size "
                              f"({type(err).__name__}: {err}). Replace or delete this file, then run "
                              "again.") from err


def _remove_dead_partials(folder: Path, stem: str) -> None:
    if os.name != "posix":  # os.kill(pid, 0) is a harmless probe only on POSIX
        return
    for leftover in folder.glob(f".{stem}.partial-*"):
        try:
            os.kill(int(leftover.name.rsplit("partial-", 1)[1].split("-")[0]), 0)
        except (ValueError, ProcessLookupError):
            leftover.unlink(missing_ok=True)  # its writer is gone: it can never be completed
        except OSError:
            pass  # alive, owned by someone else


def decode_cache(dataset: Any, size: int | None = None, *, cache_dir: str | os.PathLike[str],
                 name: str | None = None, workers: int | None = None,
                 progress: bool = True) -> ImageCache:
    """Decode a split once into a memory-mapped uint8 cache; reuse it while the files are unchanged.

    Args:
        dataset: an ``ImageFolder``-like object: ``.root`` (the split folder), ``.samples``
            (``[(path, label), ...]``) and optionally ``.classes``; e.g. from
            :func:`imagenet_book.data.imagenet.load_classification`.
        size: stored side ``S`` in pixels. ``None``: the shorter side of the first image (160 for
            imagenette2-160).
        cache_dir: folder of the cache files (created if missing).
        name: dataset name used in the file name (default: the split folder's parent's name).
        workers: decoding threads (PIL releases the GIL while decoding); default: CPU count.
        progress: show a tqdm bar while decoding.

    Returns:
        An :class:`ImageCache`: ``images`` uint8 ``(N, 3, S, S)`` (memory-mapped, read-only in
        effect), ``labels`` int64 ``(N,)``.

    Raises:
        CacheBuildError: a file cannot be decoded (corrupt or truncated); the message names it.
            Nothing that looks like a complete cache is left behind by any failure.

    Taught in: chapters/06_pretraining.ipynb.
    """
    root = Path(os.path.abspath(dataset.root))
    samples = [(os.path.abspath(p), int(label)) for p, label in dataset.samples]
    if not samples:
        raise ValueError(f"{str(root)!r}: the dataset has no images to cache.")
    if size is None:
        size = image_side(samples[0][0])
    files = []
    for p, label in samples:
        st = os.stat(p)
        files.append([os.path.relpath(p, root), label, st.st_size, st.st_mtime_ns])
    ident = json.dumps([FORMAT_VERSION, str(root), size, [f[:2] for f in files]])
    stem = (f"{name or root.parent.name}-{root.name}-{size}px-"
            f"{hashlib.sha1(ident.encode()).hexdigest()[:10]}").replace(os.sep, "_")
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    data, meta = folder / f"{stem}.u8", folder / f"{stem}.json"
    manifest = {"format_version": FORMAT_VERSION, "root": str(root), "size": size,
                "shape": [len(files), 3, size, size], "files": files,
                "classes": list(getattr(dataset, "classes", []))}
    try:
        found = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found != manifest or not data.is_file() or data.stat().st_size != math.prod(manifest["shape"]):
        meta.unlink(missing_ok=True)  # from here on, no manifest: nothing looks complete
        _remove_dead_partials(folder, stem)
        tmp = folder / f".{stem}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp_meta = tmp.with_name(tmp.name + "-meta")
        pool = ThreadPoolExecutor(workers or os.cpu_count() or 1)
        try:
            out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=tuple(manifest["shape"]))
            paths = [p for p, _ in samples]
            with tqdm(total=len(paths), desc=f"decoding {stem}", unit="img", disable=not progress) as bar:
                for start in range(0, len(paths), 512):  # bounded work queue: quick to interrupt
                    chunk = paths[start:start + 512]
                    for i, pixels in enumerate(pool.map(_decode_or_explain, chunk, [size] * len(chunk))):
                        out[start + i] = pixels
                    bar.update(len(chunk))
            out.flush()
            del out
            os.replace(tmp, data)  # atomic: the old cache or the new one, never half of one
            tmp_meta.write_text(json.dumps(manifest), encoding="utf-8")
            os.replace(tmp_meta, meta)  # written last: its presence means "complete"
        except BaseException:
            tmp.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    images = torch.from_numpy(np.memmap(data, dtype=np.uint8, mode="c", shape=tuple(manifest["shape"])))
    labels = torch.tensor([f[1] for f in files], dtype=torch.int64)
    return ImageCache(images, labels, manifest["classes"], data, size)


def random_resized_crop_boxes(n: int, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                              ratio: tuple[float, float] = (3 / 4, 4 / 3),
                              generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n`` crop boxes as ``RandomResizedCrop.get_params`` does, all images at once.

    Per image: up to 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log ratio));
    the first try that fits gives the box, at a uniformly random position; if none fits, the
    centre crop with the aspect ratio clamped to ``ratio`` (torchvision's fallback).

    Returns:
        int64 ``(n, 4)``: ``top, left, height, width`` of each box, inside ``(height, width)``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    area = torch.empty(n, 10, dtype=torch.float64).uniform_(*scale, generator=generator) * (height * width)
    aspect = torch.empty(n, 10, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    w, h = (area * aspect).sqrt().round().long(), (area / aspect).sqrt().round().long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # index of the first try that fits
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top, left = (u[:, 0] * (height - h + 1)).long(), (u[:, 1] * (width - w + 1)).long()
    in_ratio = width / height  # the fallback, as in torchvision
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    return torch.where(fits.any(1, keepdim=True), torch.stack([top, left, h, w], 1), fallback)


def center_crop_boxes(n: int, size: int, fraction: float = 0.875) -> torch.Tensor:
    """``n`` copies of the centred square box of side ``round(size * fraction)`` in a
    ``size x size`` image, as int64 ``(n, 4)`` ``top, left, height, width`` (evaluation crops).

    Taught in: chapters/06_pretraining.ipynb.
    """
    side = max(1, min(size, round(size * fraction)))
    top = int(round((size - side) / 2.0))
    return torch.tensor([[top, top, side, side]]).expand(n, 4).clone()


def _source_index(start: torch.Tensor, length: torch.Tensor, out: int):
    """Bilinear source pixels (align_corners=False) of ``out`` outputs spanning each box."""
    pos = (torch.arange(out, dtype=torch.float64, device=start.device) + 0.5) * (length[:, None] / out) - 0.5
    pos = pos.clamp_(min=0)
    i0 = torch.minimum(pos.long(), length[:, None] - 1)
    i1 = torch.minimum(i0 + 1, length[:, None] - 1)
    return start[:, None] + i0, start[:, None] + i1, (pos - i0).float()


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, out_size: int, *,
                 index: torch.Tensor | None = None, flip: torch.Tensor | None = None,
                 mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                 chunk: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Crop a box from each image and resize it to ``out_size`` (bilinear), for a whole batch.

    Separable: gather the two source rows of every output row and interpolate, then gather the
    two source columns of every output column and interpolate. Equals torchvision's
    ``resized_crop(img, top, left, h, w, [out_size] * 2, antialias=False)`` for each box.

    Args:
        images: uint8 ``(M, C, H, W)`` (the whole cache or one batch), on the device to work on.
        boxes: int64 ``(B, 4)``: ``top, left, height, width`` per output image.
        out_size: side of the square outputs.
        index: int64 ``(B,)``: which image of ``images`` each box is cut from (default: ``i``).
        flip: bool ``(B,)``: mirror these outputs left-right (free: the column order is reversed).
        mean, std: if given, return ``(pixel / 255 - mean) / std`` per channel.
        chunk: images per step (bounded temporaries; default 32 on the CPU, all on a GPU).
        out: float32 ``(B, C, out_size, out_size)`` tensor to write into (default: a new one).

    Returns:
        float32 ``(B, C, out_size, out_size)``: pixel values in ``[0, 255]``, or normalised.

    Taught in: chapters/06_pretraining.ipynb.
    """
    M, C, H, W = images.shape
    B, dev = len(boxes), images.device
    boxes = boxes.to(dev)
    index = torch.arange(B, device=dev) if index is None else index.to(dev)
    y0, y1, wy = _source_index(boxes[:, 0], boxes[:, 2], out_size)
    x0, x1, wx = _source_index(boxes[:, 1], boxes[:, 3], out_size)
    if flip is not None:
        f = flip.to(dev)[:, None]
        x0, x1, wx = (torch.where(f, t.flip(1), t) for t in (x0, x1, wx))
    rows = images.view(M * C * H, W)
    first_row = (index[:, None] * C + torch.arange(C, device=dev)) * H  # (B, C)
    result = torch.empty(B, C, out_size, out_size, device=dev) if out is None else out
    if mean is not None:
        shift = torch.tensor(mean, device=dev).view(1, C, 1, 1) * 255
        scale = 1 / (torch.tensor(std, device=dev).view(1, C, 1, 1) * 255)
    chunk = chunk or (32 if dev.type == "cpu" else B)
    for s in range(0, B, chunk):
        e, b = min(B, s + chunk), min(chunk, B - s)
        r0 = (first_row[s:e, :, None] + y0[s:e, None, :]).view(-1)
        r1 = (first_row[s:e, :, None] + y1[s:e, None, :]).view(-1)
        top = rows.index_select(0, r0).view(b, C, out_size, W).float()
        top.lerp_(rows.index_select(0, r1).view(b, C, out_size, W).float(), wy[s:e, None, :, None])
        shape = (b, C, out_size, out_size)
        left = top.gather(3, x0[s:e, None, None, :].expand(shape))
        right = top.gather(3, x1[s:e, None, None, :].expand(shape))
        torch.lerp(left, right, wx[s:e, None, None, :], out=result[s:e])
        if mean is not None:
            result[s:e].sub_(shift).mul_(scale)
    return result


# ------------------------------------------------------------------------------- colour


@dataclass(frozen=True)
class Photometric:
    """SimCLR's colour distortion, as numbers (defaults: SimCLR's CIFAR strength, ``s = 0.5``).

    Attributes:
        jitter: brightness, contrast and saturation factors are drawn uniformly from
            ``[max(0, 1 - jitter), 1 + jitter]`` (torchvision's ``ColorJitter(jitter, ...)``).
        hue: the hue shift is drawn uniformly from ``[-hue, hue]`` (a fraction of the colour
            circle, at most 0.5).
        jitter_p: probability that an image is jittered at all (``RandomApply([ColorJitter], p)``).
        grayscale_p: probability of turning an image gray (``RandomGrayscale(p)``).
        blur_p: probability of a Gaussian blur with ``sigma ~ U(blur_sigma)`` and a kernel of
            about a tenth of the image side (SimCLR's ImageNet setting; 0: never).
        blur_sigma: the range of ``sigma`` in pixels.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    jitter: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)

    def __post_init__(self) -> None:
        probabilities = {"jitter_p": self.jitter_p, "grayscale_p": self.grayscale_p, "blur_p": self.blur_p}
        bad = {k: v for k, v in probabilities.items() if not 0.0 <= v <= 1.0}
        if bad or self.jitter < 0 or not 0.0 <= self.hue <= 0.5 or not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise RecipeError(f"Photometric needs probabilities in [0, 1] (got {probabilities}), jitter >= 0 "
                             f"(got {self.jitter}), hue in [0, 0.5] (got {self.hue}) and 0 < blur_sigma[0] "
                             f"<= blur_sigma[1] (got {self.blur_sigma}).")


#: Columns of :func:`photometric_params`.
PHOTOMETRIC_COLUMNS = ("brightness", "contrast", "saturation", "hue", "grayscale", "sigma")


def photometric_params(n: int, spec: Photometric, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the colour distortion of ``n`` images (from ``generator``, on the CPU).

    Returns:
        float32 ``(n, 6)``: per image the brightness, contrast and saturation factors, the hue
        shift, 1.0 to turn it gray (else 0.0) and the blur's ``sigma`` (0.0: no blur)
        (:data:`PHOTOMETRIC_COLUMNS`). An image that is not jittered gets the factors that
        change nothing: ``1, 1, 1, 0``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    u = torch.rand(n, 8, generator=generator)
    lo = max(0.0, 1.0 - spec.jitter)
    factors = lo + (1.0 + spec.jitter - lo) * u[:, :3]
    shift = spec.hue * (2 * u[:, 3:4] - 1)
    jittered = u[:, 4:5] < spec.jitter_p
    identity = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    jitter = torch.where(jittered, torch.cat([factors, shift], 1), identity)
    gray = (u[:, 5:6] < spec.grayscale_p).float()
    low, high = spec.blur_sigma
    sigma = torch.where(u[:, 6:7] < spec.blur_p, low + (high - low) * u[:, 7:8], torch.zeros(n, 1))
    return torch.cat([jitter, gray, sigma], 1)


def _gray(X: torch.Tensor) -> torch.Tensor:
    """Luma ``(B, 1, H, W)`` of RGB ``(B, 3, H, W)``, with torchvision's weights."""
    r, g, b = X.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(X: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * X + (1 - factor) * other``, clamped to ``[0, 1]``; ``factor`` per image ``(B,)``."""
    f = factor.view(-1, 1, 1, 1)
    return (f * X + (1 - f) * other).clamp_(0, 1)


def _shift_hue(X: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB ``X`` in ``[0, 1]`` by ``shift`` ``(B,)`` turns (HSV).

    A rotation keeps each pixel's largest channel ``v`` and its chroma ``c = v - min``; only the
    hue ``h`` (in sixths of a turn) moves. Channel ``n`` (R 5, G 3, B 1) of the result is
    ``v - c * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + h) mod 6``.
    """
    r, g, b = X.unbind(1)
    value = torch.maximum(torch.maximum(r, g), b)  # elementwise: faster than a reduction over 3 channels
    chroma = value - torch.minimum(torch.minimum(r, g), b)
    red, green = value == r, value == g
    # Hue in sixths: (g - b) / c where red is largest, 2 + (b - r) / c for green, 4 + (r - g) / c for blue.
    top = torch.where(red, g - b, torch.where(green, b - r, r - g))
    hue = top.div_(torch.where(chroma > 0, chroma, torch.ones_like(chroma)))
    hue.add_(torch.where(red, 0.0, torch.where(green, 2.0, 4.0))).add_(6 * shift.view(-1, 1, 1))
    k = hue.unsqueeze(1) + torch.tensor([5.0, 3.0, 1.0], device=X.device).view(1, 3, 1, 1)
    k.remainder_(6)
    ramp = torch.minimum(k, 4 - k).clamp_(0, 1)
    return ramp.mul_(chroma.unsqueeze(1)).neg_().add_(value.unsqueeze(1)).clamp_(0, 1)


def _blur(X: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a ``sigma`` per image (0: unchanged), reflect padding."""
    B, C, H, W = X.shape
    x = torch.arange(kernel, dtype=X.dtype, device=X.device) - (kernel - 1) / 2
    s = sigma.to(X.device, X.dtype).view(-1, 1)
    weights = torch.exp(-0.5 * (x / s.clamp(min=1e-6)) ** 2)
    delta = (x == 0).to(X.dtype).expand_as(weights)
    weights = torch.where(s > 0, weights / weights.sum(1, keepdim=True), delta).repeat_interleave(C, 0)
    pad = kernel // 2
    flat = torch.nn.functional.pad(X.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    flat = torch.nn.functional.conv2d(flat, weights.view(B * C, 1, kernel, 1), groups=B * C)
    flat = torch.nn.functional.conv2d(flat, weights.view(B * C, 1, 1, kernel), groups=B * C)
    return flat.view(B, C, H, W)


def photometric(X: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply the colour distortion :func:`photometric_params` drew to a batch.

    In order, per image: brightness (``X * b``), contrast (blend with the mean luma), saturation
    (blend with the luma image), hue (rotation in HSV), each clamped to ``[0, 1]`` as torchvision
    does; then grayscale (luma in all three channels); then Gaussian blur (kernel: the odd size
    nearest a tenth of the side, at least 3). Each step equals torchvision's
    ``v2.functional`` operation for the same factor (``adjust_brightness``, ``adjust_contrast``,
    ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``, ``gaussian_blur``).

    Args:
        X: float ``(B, 3, H, W)`` in ``[0, 1]``.
        params: float ``(B, 6)`` from :func:`photometric_params` (any device).

    Returns:
        float ``(B, 3, H, W)`` in ``[0, 1]``, a new tensor.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    p = params.to(X.device, X.dtype)
    X = _blend(X, 0.0, p[:, 0])
    X = _blend(X, _gray(X).mean((1, 2, 3), keepdim=True), p[:, 1])
    X = _blend(X, _gray(X), p[:, 2])
    X = _shift_hue(X, p[:, 3])
    X = torch.lerp(X, _gray(X).expand_as(X), p[:, 4].view(-1, 1, 1, 1))
    if bool((p[:, 5] > 0).any()):
        X = _blur(X, p[:, 5], max(3, 2 * round(X.shape[-1] / 20) + 1))
    return X


class HostBatch(NamedTuple):
    """The CPU's share of one batch: cache ``index`` int64 ``(B,)``, ``labels`` int64 ``(B,)``,
    crop ``boxes`` int64 ``(V * B, 4)`` (view ``v`` of image ``i`` in row ``v * B + i``; ``V``
    views, 1 by default), ``flip`` bool ``(V * B,)`` or None, and ``images``: the gathered uint8
    ``(B, 3, S, S)`` (pinned on CUDA machines; None when augmenting straight from the cache),
    valid until two batches later; ``slot``: which gather buffer holds them; ``colour``: float
    ``(V * B, 6)`` :func:`photometric_params`, or None."""

    index: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    flip: torch.Tensor | None
    images: torch.Tensor | None
    slot: int
    colour: torch.Tensor | None = None


class FastLoader:
    """Batches ``(X, y)`` from an :class:`ImageCache`, augmented on ``device`` as batched tensor ops.

    ``X``: float32 ``(B, 3, out_size, out_size)`` normalised; ``y``: int64 ``(B,)``; both on
    ``device``. ``train=True``: shuffled, random-resized-crop + flip, ``drop_last``;
    ``train=False``: in order, centre crop, every image. Each pass (``for X, y in loader``) is
    one epoch; its order and crops come from a generator seeded by ``(seed, epoch)``, so the same
    seed gives the same batches (:meth:`set_epoch` picks the epoch, e.g. to resume).
    ``preload=True`` copies the whole uint8 cache to the device once (CUDA, when it fits).

    **Progressive resizing**: ``sizes=(96, 112, 128, ...)`` gives epoch ``e`` crops of side
    ``sizes[e]`` (the last one for every later epoch) instead of ``out_size``: the early epochs
    see small images and cost less, the last ones train at the final size.

    ``views=V`` (training) yields ``(X_1, ..., X_V, y)``: ``V`` views of the same ``B`` images,
    each with its own crop, flip and colour draws; ``photometric`` adds colour distortion
    (:class:`Photometric`) after the crop, before normalisation. SimCLR's batches are
    ``views=2, photometric=Photometric()``. All random numbers still come from the ``(seed,
    epoch)`` generator, so resuming stays exact. ``views=1`` without ``photometric`` draws
    exactly what it always did.

    How long a batch stays valid. On the CPU, fresh memory for every batch costs a page fault per
    4 KiB, as much work as the augmentation itself; so ``X`` is written into a fixed ring of
    :attr:`RING` (3) preallocated buffers, used in turn. A yielded ``X`` stays intact while the
    next two batches are produced, and the third one overwrites it. A training loop (one batch at
    a time) never notices; to keep batches longer (a list of a whole epoch), ``X.clone()`` them.
    ``y`` and, on a GPU, ``X`` are new tensors for every batch (the CUDA caching allocator already
    reuses memory). With ``gather=True`` the uint8 images of a :class:`HostBatch` are valid until
    two batches later (two pinned buffers).

    Taught in: chapters/06_pretraining.ipynb.
    """

    #: Output buffers of the CPU ring: a batch is overwritten ``RING`` batches later.
    RING = 3

    def __init__(self, cache: ImageCache, batch_size: int, *, train: bool = True,
                 out_size: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 shuffle: bool | None = None, drop_last: bool | None = None,
                 scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 flip: bool = True, crop_fraction: float = 0.875, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, preload: bool = False, views: int = 1,
                 photometric: Photometric | None = None, sizes: tuple[int, ...] | None = None) -> None:
        if views < 1 or (views > 1 and not train):
            raise RecipeError(f"FastLoader's views must be >= 1, and several views need train=True (random "
                              f"crops); got views={views}, train={train}.")
        self.cache, self.batch_size, self.train, self.seed = cache, batch_size, train, seed
        self.views, self.photometric = views, photometric if train else None
        self.out_size = out_size or cache.size
        if sizes is not None and (not sizes or not all(isinstance(k, int) and k >= 1 for k in sizes)):
            raise RecipeError(f"FastLoader's sizes must be image sides >= 1, one per epoch; got {sizes!r}.")
        self.sizes = tuple(sizes) if sizes else None
        self.device = torch.device(device)
        self.shuffle = train if shuffle is None else shuffle
        self.drop_last = train if drop_last is None else drop_last
        self.scale, self.ratio, self.flip, self.crop_fraction = scale, ratio, flip, crop_fraction
        self.mean, self.std, self.epoch = mean, std, 0
        on_device = preload and self.device.type != "cpu"
        self.images = cache.images.to(self.device) if on_device else cache.images
        self._transfer = self.device.type != "cpu" and not on_device
        self._buffers: list[torch.Tensor] = []
        self._events: list[Any] = [None, None]
        self._ring: list[torch.Tensor] = []  # the CPU output buffers, created on first use
        self._produced = 0  # batches augmented so far: the next one goes to slot produced % RING

    def __len__(self) -> int:
        n = len(self.cache)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (its order and crops depend on seed and epoch)."""
        self.epoch = epoch

    def _gather(self, index: torch.Tensor, slot: int) -> torch.Tensor:
        if not self._buffers:
            shape, pin = (self.batch_size, *self.cache.images.shape[1:]), torch.cuda.is_available()
            self._buffers = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # the copy out of this buffer has finished
        out = self._buffers[slot][: len(index)]
        # NumPy's take: one memcpy per image on one core (the gather is bound by memory, not by
        # compute), leaving the other core to the training loop.
        np.take(self.cache.images.numpy(), index.numpy(), axis=0, out=out.numpy())
        return out

    def host_batches(self, gather: bool | None = None) -> Iterator[HostBatch]:
        """One epoch of the CPU's share of the work: order, crop boxes, flips, and (``gather``;
        default: when the device is not the CPU) the uint8 images copied out of the cache.
        This is all a 2-vCPU Colab must do per batch while its GPU augments."""
        gather = self._transfer if gather is None else gather
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        g = torch.Generator().manual_seed(seed)
        if self.sizes is not None:
            self.out_size = self.sizes[min(self.epoch, len(self.sizes) - 1)]
        self.epoch += 1
        n, size = len(self.cache), self.cache.size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        stop = n - n % self.batch_size if self.drop_last else n
        for k, s in enumerate(range(0, stop, self.batch_size)):
            index = order[s:s + self.batch_size]
            n, colour = len(index) * self.views, None
            if self.train:
                boxes = random_resized_crop_boxes(n, size, size, self.scale, self.ratio, g)
                flip = torch.rand(n, generator=g) < 0.5 if self.flip else None
                if self.photometric is not None:
                    colour = photometric_params(n, self.photometric, g)
            else:
                boxes, flip = center_crop_boxes(n, size, self.crop_fraction), None
            images = self._gather(index, k % 2) if gather else None
            yield HostBatch(index, self.cache.labels[index], boxes, flip, images, k % 2, colour)

    def augment(self, batch: HostBatch) -> tuple[torch.Tensor, ...]:
        """The device's share: transfer (if gathered), crop + resize + flip (+ colour) + normalise;
        ``(X, y)``, or ``(X_1, ..., X_V, y)`` with ``views=V``."""
        dev, index, n = self.device, batch.index, len(batch.index)
        if batch.images is not None:
            src, index = batch.images.to(dev, non_blocking=True), torch.arange(n)
            if dev.type == "cuda":
                self._events[batch.slot] = torch.cuda.Event()
                self._events[batch.slot].record()
        else:
            src = self.images
        index, colour = index.repeat(self.views), batch.colour
        normalise = dict(mean=self.mean, std=self.std) if colour is None else {}
        X = resized_crop(src, batch.boxes, self.out_size, index=index, flip=batch.flip,
                         out=self._free_output(len(batch.boxes)), **normalise)
        if colour is not None:
            X.copy_(photometric(X.mul_(1 / 255), colour))
            X.sub_(torch.tensor(self.mean, device=dev).view(1, -1, 1, 1))
            X.div_(torch.tensor(self.std, device=dev).view(1, -1, 1, 1))
        y = batch.labels.to(dev, non_blocking=True)
        return (X, y) if self.views == 1 else (*X.unflatten(0, (self.views, n)).unbind(0), y)

    def _free_output(self, n: int) -> torch.Tensor | None:
        """The next buffer of the CPU ring, first ``n`` images (None on a GPU: allocate)."""
        if self.device.type != "cpu":
            return None
        if not self._ring or self._ring[0].shape[-1] != self.out_size:  # first use, or a new size
            shape = (self.views * self.batch_size, self.cache.images.shape[1], self.out_size, self.out_size)
            self._ring = [torch.empty(shape) for _ in range(self.RING)]
        buffer = self._ring[self._produced % self.RING]
        self._produced += 1
        return buffer[:n]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for batch in self.host_batches():
            yield self.augment(batch)


def fast_loader(cfg: Any, split: str = "train", *, source: Any = None, per_class: int | None = None,
                img_size: int | None = None, batch_size: int | None = None,
                store_size: int | None = None, progress: bool = True, **kwargs: Any) -> FastLoader:
    """The profile's classification data (:func:`~imagenet_book.data.imagenet.classification_source`)
    as a :class:`FastLoader` on ``cfg.device``, cached under ``cfg.cache_root / "fast"``.

    ``img_size``/``batch_size`` default to the profile's; ``store_size`` to the images' shorter
    side capped at ``ceil(1.25 * img_size)`` (160 px for 128 px crops); ``split="train"`` trains
    (random crops), ``"val"`` evaluates. Other keywords go to :class:`FastLoader`. Yields float32
    ``(B, 3, img_size, img_size)`` and int64 ``(B,)`` batches.

    Taught in: chapters/06_pretraining.ipynb.
    """
    source = source or classification_source(cfg)
    dataset = load_classification(source, split, per_class=per_class)
    img_size = img_size or cfg.profile.img_size
    if store_size is None:
        store_size = min(image_side(dataset.samples[0][0]), math.ceil(1.25 * img_size))
    cache = decode_cache(dataset, store_size, cache_dir=Path(cfg.cache_root) / "fast",
                         name=source.name, progress=progress)
    kwargs = {"train": split == "train", "device": cfg.device, "seed": cfg.seed, **kwargs}
    return FastLoader(cache, batch_size or cfg.profile.batch_size, out_size=img_size, **kwargs)
