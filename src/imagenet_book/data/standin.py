"""Built-in stand-in datasets, written to disk in the REAL formats.

A fresh machine has no ImageNet and no PASCAL VOC, and the test suite must never need them. So the
book ships two generators that draw small, *learnable* datasets with PIL and NumPy and write them
exactly as the real datasets are laid out on disk. The loaders of the book (and torchvision's) then
read a stand-in with the very code that reads the real thing: only the pixels differ.

* :func:`make_imagenet_standin` writes an ImageNet-style tree::

      root/
        LOC_synset_mapping.txt          "<wnid> <name, synonym, ...>" lines, as ImageNet ships it
        train/<wnid>/<wnid>_<i>.JPEG
        val/<wnid>/<wnid>_val_<i>.JPEG
        standin.json                    the manifest: which arguments made this tree

  ``torchvision.datasets.ImageFolder(root / "train")`` reads it. Each class is a procedurally drawn
  object (circle, square, triangle, star, ring, cross, ...) or texture (stripes, checkerboard,
  polka dots, waves, ...) at a random position, scale, rotation and colour, on a random background
  (colour gradients, smooth colour blobs, noise) with small distractor blobs. Shape classes are
  painted in a random colour, so the *shape* is the only cue; texture classes show their pattern
  inside a random region.

* :func:`make_voc_standin` writes a PASCAL VOC 2007 tree (``root/VOCdevkit/VOC2007/``) with
  ``JPEGImages``, ``Annotations`` (VOC XML), ``ImageSets/Main`` (split lists and per-class
  ``<class>_<split>.txt`` files), ``ImageSets/Segmentation``, ``SegmentationClass`` and
  ``SegmentationObject`` (palette PNGs with VOC's colours and a 255 "void" border around every
  object). ``torchvision.datasets.VOCDetection(root, year="2007")`` and ``VOCSegmentation`` read it.

* :func:`make_lfw_standin` writes an LFW tree (``root/lfw/<Person>/<Person>_NNNN.jpg``, LFW's
  ``pairs.txt`` and ``people.txt``) of synthetic faces: made-up people with fixed traits, each
  photographed in several poses and lights, for face verification (chapter 11) without LFW.

Synset ids of the ImageNet stand-in
-----------------------------------
ImageNet names its class folders by WordNet noun id (``n`` + the 8-digit offset of the synset in
WordNet 3.0's ``data.noun``). The stand-in's concepts (circle, stripes, ...) are not ImageNet
classes, and their WordNet offsets could not be verified offline, so the stand-in uses **clearly
fake ids** ``n99000001``, ``n99000002``, ... WordNet 3.0's noun file is about 15 MB, so no real
offset reaches 99,000,000: a fake id can never collide with a real one, and a figure showing
``n99...`` is recognisably the stand-in. The ids keep ImageNet's shape (``n`` + 8 digits) and sort
in class order, so ``ImageFolder`` gives class ``k`` the label ``k``.

Determinism, caching and atomic writes
--------------------------------------
* Every image is drawn from its own random generator seeded by ``(seed, split, class, index)``:
  the same arguments give byte-identical files (with the same NumPy and Pillow builds), and a
  larger stand-in at the same image size contains the images of a smaller one.
* A generator builds its tree in a hidden ``.<name>.partial-<pid>-<random>`` folder beside
  ``root`` and renames it to ``root`` only when complete, with the manifest ``standin.json``
  written last. An interrupted run therefore never leaves a tree that looks complete; its partial
  folder is removed by the next run once the process that made it is gone.
* A second call with the same arguments finds ``root/standin.json`` with those arguments and
  returns at once. A call with *different* arguments on the same ``root`` regenerates it (and
  replaces the old tree atomically). A ``root`` that exists but has no manifest is never touched:
  it could be your data, so the generator stops with an error instead.

Taught in: chapters/01_imagenet.ipynb (what ImageNet looks like on disk),
chapters/06_pretraining.ipynb (pretraining data at every profile) and
chapters/11_self_supervised.ipynb (the faces).
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import BookError
from ..files import pid_alive
from .voc_classes import VOC_CLASSES, voc_palette

__all__ = [
    "MANIFEST_NAME",
    "STANDIN_CLASSES",
    "VOC_CLASSES",
    "StandinError",
    "make_imagenet_standin",
    "make_lfw_standin",
    "make_voc_standin",
]

#: Bump when the drawing code changes what is written: cached trees then regenerate.
FORMAT_VERSION = 1
#: The same, for the VOC stand-in alone (2: each object has its own "difficult" flag; version 1
#: gave every object of an image the flag of the last one placed).
VOC_FORMAT_VERSION = 2
#: The manifest every stand-in tree carries; written last, so its presence means "complete".
MANIFEST_NAME = "standin.json"
_JPEG_QUALITY = 90
_SUPERSAMPLE = 4  # shapes are drawn at 4x and averaged down: smooth, anti-aliased edges


class StandinError(BookError, RuntimeError):
    """A stand-in could not be written (bad arguments, or a target folder that is not ours)."""


# --------------------------------------------------------------------------------------------
# The ImageNet stand-in's classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _StandinClass:
    wnid: str
    names: str  # "name, synonym, ...": the text after the wnid in LOC_synset_mapping.txt
    kind: str  # "shape" or "texture"
    draw: str  # key of the drawing routine


def _fake_wnid(k: int) -> str:
    return f"n99{k + 1:06d}"


# The first ten are the default (num_classes=10): six shapes and four textures.
_CLASSES: tuple[_StandinClass, ...] = tuple(
    _StandinClass(_fake_wnid(k), names, kind, draw)
    for k, (names, kind, draw) in enumerate([
        ("circle, disk", "shape", "circle"),
        ("square", "shape", "square"),
        ("triangle", "shape", "triangle"),
        ("star, five-pointed star", "shape", "star"),
        ("ring, annulus", "shape", "ring"),
        ("cross, plus sign", "shape", "cross"),
        ("stripes", "texture", "stripes"),
        ("checkerboard", "texture", "checkerboard"),
        ("polka dots, dots", "texture", "dots"),
        ("waves, wavy lines", "texture", "waves"),
        ("hexagon", "shape", "hexagon"),
        ("crescent", "shape", "crescent"),
        ("grid, lattice", "texture", "grid"),
        ("zigzag", "texture", "zigzag"),
    ])
)

#: All classes the ImageNet stand-in can draw, in label order: ``(wnid, names)`` pairs, ``names``
#: being the ``LOC_synset_mapping.txt`` text (first name, then synonyms). The wnids are FAKE
#: (``n99...``, see the module docstring). ``num_classes=k`` uses the first ``k``.
STANDIN_CLASSES: tuple[tuple[str, str], ...] = tuple((c.wnid, c.names) for c in _CLASSES)


# --------------------------------------------------------------------------------------------
# Shared drawing helpers (NumPy float images in [0, 1], shape (H, W, 3))
# --------------------------------------------------------------------------------------------


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, against: float, min_diff: float = 0.3) -> np.ndarray:
    """A random colour whose luma differs from ``against`` by at least ``min_diff``."""
    for _ in range(20):
        c = _random_colour(rng)
        if abs(float(_luma(c)) - against) >= min_diff:
            return c
    return np.full(3, 0.05 if against > 0.5 else 0.95, dtype=np.float32)


def _upsample(low: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic upsampling of a small (h, w, 3) float image to (height, width, 3)."""
    img = Image.fromarray(np.clip(low * 255.0, 0, 255).astype(np.uint8))
    big = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A varied background: a colour gradient, smooth colour blobs or a flat noisy colour."""
    kind = int(rng.integers(3))
    if kind == 0:  # linear gradient between two colours at a random angle
        c0, c1 = _random_colour(rng), _random_colour(rng)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * np.cos(angle) + yy * np.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
    elif kind == 1:  # smooth random colour field
        g = int(rng.integers(2, 6))
        bg = _upsample(rng.random((g, g, 3)).astype(np.float32), width, height)
    else:  # flat colour with strong noise
        bg = np.broadcast_to(_random_colour(rng), (height, width, 3)).copy()
        bg = bg + rng.normal(0, 0.12, size=(height, width, 3)).astype(np.float32)
    return np.clip(bg, 0, 1).astype(np.float32)


def _add_distractors(rng: np.random.Generator, img: np.ndarray, max_count: int = 3) -> np.ndarray:
    """Paint 0..max_count small blurry blobs of random colour: clutter that is no class."""
    height, width = img.shape[:2]
    count = int(rng.integers(0, max_count + 1))
    if count == 0:
        return img
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    colours = np.zeros_like(img)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    for _ in range(count):
        r = rng.uniform(0.03, 0.08) * min(width, height)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        colours[(xx - cx) ** 2 + (yy - cy) ** 2 <= (r + 1.5) ** 2] = _random_colour(rng)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=200)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)[..., None] / 255.0
    return img * (1 - alpha) + colours * alpha


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def _save_jpeg(pixels: np.ndarray, path: Path) -> None:
    """Write one (H, W, 3) uint8 image as a baseline JPEG (the writer every generator uses)."""
    Image.fromarray(pixels).save(path, format="JPEG", quality=_JPEG_QUALITY)


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG")


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")


# --------------------------------------------------------------------------------------------
# ImageNet stand-in: one object or texture per image
# --------------------------------------------------------------------------------------------


def _regular_polygon(cx: float, cy: float, radius: float, n: int, rot: float) -> list[tuple[float, float]]:
    angles = rot + 2 * np.pi * np.arange(n) / n
    return [(cx + radius * np.cos(a), cy + radius * np.sin(a)) for a in angles]


def _rotate(points: np.ndarray, rot: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = np.cos(rot), np.sin(rot)
    x = points[:, 0] * c - points[:, 1] * s + cx
    y = points[:, 0] * s + points[:, 1] * c + cy
    return list(zip(x.tolist(), y.tolist()))


def _shape_alpha(draw_key: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased (size, size) float32 alpha in [0, 1] of one randomly placed shape."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    r = rng.uniform(0.24, 0.38) * big
    cx = rng.uniform(0.5 * big - (0.48 * big - r), 0.5 * big + (0.48 * big - r))
    cy = rng.uniform(0.5 * big - (0.48 * big - r), 0.5 * big + (0.48 * big - r))
    rot = rng.uniform(0, 2 * np.pi)
    if draw_key == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif draw_key == "square":
        draw.polygon(_regular_polygon(cx, cy, r, 4, rot), fill=255)
    elif draw_key == "triangle":
        draw.polygon(_regular_polygon(cx, cy, 1.1 * r, 3, rot), fill=255)
    elif draw_key == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, rot), fill=255)
    elif draw_key == "star":
        radii = np.where(np.arange(10) % 2 == 0, 1.15 * r, 0.45 * r)
        angles = rot + np.pi * np.arange(10) / 5
        draw.polygon(list(zip((cx + radii * np.cos(angles)).tolist(),
                              (cy + radii * np.sin(angles)).tolist())), fill=255)
    elif draw_key == "ring":
        inner = rng.uniform(0.5, 0.62) * r
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif draw_key == "cross":
        w, a = 0.32 * r, 1.05 * r
        pts = np.array([(-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
                        (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w)])
        draw.polygon(_rotate(pts, rot, cx, cy), fill=255)
    elif draw_key == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * np.cos(rot), cy + 0.45 * r * np.sin(rot)
        ri = 0.85 * r
        draw.ellipse([ox - ri, oy - ri, ox + ri, oy + ri], fill=0)
    else:  # pragma: no cover - guarded by the class table
        raise ValueError(f"unknown shape {draw_key!r}")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _region_alpha(rng: np.random.Generator, size: int) -> np.ndarray:
    """Anti-aliased alpha of the large random region (ellipse or rotated box) a texture fills."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    rx, ry = rng.uniform(0.3, 0.45, size=2) * big
    cx, cy = rng.uniform(0.4, 0.6, size=2) * big
    rot = rng.uniform(0, np.pi)
    if rng.random() < 0.5:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)
    else:
        pts = np.array([(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)])
    draw.polygon(_rotate(pts, rot, cx, cy), fill=255)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _texture_pattern(draw_key: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size) float32 pattern in [0, 1]; periods scale with ``size`` (same look at any size)."""
    period = rng.uniform(0.15, 0.22) * size
    rot = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    u = xx * np.cos(rot) + yy * np.sin(rot) + rng.uniform(0, period)
    v = -xx * np.sin(rot) + yy * np.cos(rot) + rng.uniform(0, period)
    two_pi = 2 * np.pi
    if draw_key == "stripes":
        p = 0.5 + 1.5 * np.sin(two_pi * u / period)
    elif draw_key == "checkerboard":
        p = 0.5 + 3.0 * np.sin(two_pi * u / (1.3 * period)) * np.sin(two_pi * v / (1.3 * period))
    elif draw_key == "dots":
        cell = 1.1 * period
        du = np.mod(u, cell) - cell / 2
        dv = np.mod(v, cell) - cell / 2
        p = 0.5 + (0.3 * cell - np.sqrt(du**2 + dv**2))
    elif draw_key == "waves":
        wavelength = rng.uniform(1.8, 2.6) * period
        p = 0.5 + 1.5 * np.sin(two_pi * (u + 0.55 * period * np.sin(two_pi * v / wavelength)) / period)
    elif draw_key == "zigzag":
        wavelength = rng.uniform(1.6, 2.2) * period
        tri = 2 * np.abs(np.mod(v / wavelength, 1.0) - 0.5) - 0.5
        p = 0.5 + 1.5 * np.sin(two_pi * (u + 1.2 * period * tri) / period)
    elif draw_key == "grid":
        cell = 1.2 * period
        du = np.abs(np.mod(u, cell) - cell / 2)
        dv = np.abs(np.mod(v, cell) - cell / 2)
        line = 0.11 * cell + 0.5
        p = np.maximum(du, dv) - (cell / 2 - line)
    else:  # pragma: no cover - guarded by the class table
        raise ValueError(f"unknown texture {draw_key!r}")
    return np.clip(p, 0, 1).astype(np.float32)


def _draw_standin_image(cls: _StandinClass, rng: np.random.Generator, size: int) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``cls``."""
    bg = _add_distractors(rng, _background(rng, size, size))
    if cls.kind == "shape":
        alpha = _shape_alpha(cls.draw, rng, size)
        region_luma = float((_luma(bg) * alpha).sum() / max(float(alpha.sum()), 1e-6))
        colour = _contrasting_colour(rng, region_luma, 0.3)
        # A little shading so the fill is not perfectly flat.
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
        shade = 1.0 + rng.uniform(0.0, 0.3) * (xx * np.cos(angle) + yy * np.sin(angle))
        fg = np.clip(colour * shade[..., None], 0, 1)
    else:
        alpha = _region_alpha(rng, size)
        pattern = _texture_pattern(cls.draw, rng, size)
        c1 = _random_colour(rng)
        c2 = _contrasting_colour(rng, float(_luma(c1)), 0.35)
        fg = c1 * (1 - pattern[..., None]) + c2 * pattern[..., None]
    img = bg * (1 - alpha[..., None]) + fg * alpha[..., None]
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), size=img.shape).astype(np.float32)
    return _to_uint8(img)


def make_imagenet_standin(
    root: str | os.PathLike[str],
    *,
    num_classes: int = 10,
    train_per_class: int = 30,
    val_per_class: int = 10,
    img_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write (or reuse) an ImageNet-style stand-in tree of procedurally drawn classes.

    The tree is in ImageNet's own format, so ``torchvision.datasets.ImageFolder(root / "train")``
    and the book's loaders read it::

        root/LOC_synset_mapping.txt                   "<wnid> <names>" per class, label order
        root/train/<wnid>/<wnid>_<i>.JPEG            i = 0 .. train_per_class-1
        root/val/<wnid>/<wnid>_val_<i>.JPEG          i = 0 .. val_per_class-1
        root/standin.json                             manifest (arguments), written last

    Every image is an RGB JPEG of ``img_size x img_size`` pixels (uint8 once decoded: shape
    ``(img_size, img_size, 3)``). The wnids are the FAKE ids ``n99000001, n99000002, ...`` (see
    the module docstring); the class names are those of :data:`STANDIN_CLASSES`.

    Args:
        root: folder to write; created with its parents. Reused as is when it holds a stand-in
            made with the same arguments; regenerated when it holds one made with others.
        num_classes: how many classes (the first ``num_classes`` of :data:`STANDIN_CLASSES`),
            2 to 14.
        train_per_class: training images per class (>= 1).
        val_per_class: validation images per class (>= 1).
        img_size: side of the square images, in pixels (16 to 512).
        seed: seed of every random choice. The same arguments give byte-identical files.

    Returns:
        ``root`` as an absolute :class:`~pathlib.Path`.

    Raises:
        StandinError: invalid arguments, or ``root`` exists, is not empty and is not a stand-in
            (no ``standin.json``): the generator never deletes what it did not write.

    Example: ``make_imagenet_standin(cache / "imagenet-standin", train_per_class=8, val_per_class=4)``
    takes well under a second for 10 classes at 32 px.

    Taught in: chapters/01_imagenet.ipynb, chapters/06_pretraining.ipynb.
    """
    if not 2 <= num_classes <= len(_CLASSES):
        raise StandinError(f"num_classes must be between 2 and {len(_CLASSES)}, got {num_classes!r}.")
    for name, value in (("train_per_class", train_per_class), ("val_per_class", val_per_class)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StandinError(f"{name} must be an int >= 1, got {value!r}.")
    if not isinstance(img_size, int) or not 16 <= img_size <= 512:
        raise StandinError(f"img_size must be an int between 16 and 512, got {img_size!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise StandinError(f"seed must be an int >= 0, got {seed!r}.")
    classes = _CLASSES[:num_classes]
    manifest = {
        "generator": "imagenet_book.data.standin.make_imagenet_standin",
        "format_version": FORMAT_VERSION,
        "arguments": {
            "num_classes": num_classes, "train_per_class": train_per_class,
            "val_per_class": val_per_class, "img_size": img_size, "seed": seed,
        },
        "classes": [[c.wnid, c.names] for c in classes],
    }

    def build(tmp: Path) -> None:
        _write_text(tmp / "LOC_synset_mapping.txt", "".join(f"{c.wnid} {c.names}\n" for c in classes))
        for split_code, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for k, cls in enumerate(classes):
                folder = tmp / split / cls.wnid
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, split_code, k, i])
                    name = f"{cls.wnid}_{i}.JPEG" if split == "train" else f"{cls.wnid}_val_{i}.JPEG"
                    _save_jpeg(_draw_standin_image(cls, rng, img_size), folder / name)

    return _build_atomically(Path(root), manifest, build)


# --------------------------------------------------------------------------------------------
# PASCAL VOC stand-in: multi-object scenes
# --------------------------------------------------------------------------------------------

# Segmentation masks use index ``k + 1`` for ``VOC_CLASSES[k]`` (the constant lives in
# :mod:`.voc`), 0 for background and 255 for "void" (object borders).

# Each glyph: (width / height, parts). A part is drawn in unit-box coordinates (x right, y down)
# and painted in the main colour (0) or the detail colour (1); the object's mask is their union.
_Part = tuple  # ("rect"|"ellipse", x0, y0, x1, y1, colour) | ("poly", points, colour)
#                | ("line", points, width, colour) | ("ring", x0, y0, x1, y1, width, colour)
_GLYPHS: dict[str, tuple[float, list[_Part]]] = {
    "aeroplane": (1.6, [
        ("rect", 0.05, 0.42, 0.9, 0.58, 0), ("ellipse", 0.8, 0.42, 1.0, 0.58, 0),
        ("poly", [(0.4, 0.5), (0.62, 0.5), (0.46, 0.0), (0.36, 0.0)], 0),
        ("poly", [(0.4, 0.5), (0.62, 0.5), (0.46, 1.0), (0.36, 1.0)], 0),
        ("poly", [(0.04, 0.5), (0.18, 0.5), (0.08, 0.22), (0.0, 0.22)], 1),
    ]),
    "bicycle": (1.6, [
        ("ring", 0.0, 0.38, 0.38, 1.0, 0.09, 1), ("ring", 0.62, 0.38, 1.0, 1.0, 0.09, 1),
        ("line", [(0.19, 0.69), (0.42, 0.35), (0.81, 0.69), (0.19, 0.69)], 0.07, 0),
        ("line", [(0.42, 0.35), (0.66, 0.35), (0.81, 0.69)], 0.07, 0),
        ("line", [(0.66, 0.35), (0.7, 0.12), (0.8, 0.12)], 0.07, 0),
        ("rect", 0.34, 0.26, 0.5, 0.33, 1),
    ]),
    "bird": (1.3, [
        ("ellipse", 0.12, 0.35, 0.8, 0.82, 0), ("ellipse", 0.58, 0.12, 0.9, 0.5, 0),
        ("poly", [(0.86, 0.26), (1.0, 0.33), (0.86, 0.4)], 1),
        ("poly", [(0.2, 0.55), (0.0, 0.35), (0.0, 0.72)], 0),
        ("poly", [(0.3, 0.5), (0.62, 0.5), (0.42, 0.74)], 1),
    ]),
    "boat": (1.3, [
        ("poly", [(0.0, 0.66), (1.0, 0.66), (0.82, 1.0), (0.18, 1.0)], 0),
        ("rect", 0.46, 0.02, 0.52, 0.66, 1),
        ("poly", [(0.52, 0.06), (0.52, 0.6), (0.92, 0.6)], 1),
        ("poly", [(0.46, 0.12), (0.46, 0.6), (0.16, 0.6)], 0),
    ]),
    "bottle": (0.4, [
        ("rect", 0.05, 0.36, 0.95, 1.0, 0),
        ("poly", [(0.05, 0.37), (0.95, 0.37), (0.66, 0.2), (0.34, 0.2)], 0),
        ("rect", 0.34, 0.06, 0.66, 0.22, 0), ("rect", 0.3, 0.0, 0.7, 0.08, 1),
        ("rect", 0.05, 0.55, 0.95, 0.8, 1),
    ]),
    "bus": (2.0, [
        ("rect", 0.0, 0.08, 1.0, 0.86, 0),
        *[("rect", 0.05 + 0.235 * k, 0.18, 0.23 + 0.235 * k, 0.46, 1) for k in range(4)],
        ("ellipse", 0.1, 0.68, 0.28, 1.0, 1), ("ellipse", 0.72, 0.68, 0.9, 1.0, 1),
    ]),
    "car": (1.8, [
        ("rect", 0.0, 0.45, 1.0, 0.82, 0),
        ("poly", [(0.18, 0.46), (0.3, 0.1), (0.7, 0.1), (0.84, 0.46)], 0),
        ("poly", [(0.27, 0.42), (0.35, 0.18), (0.65, 0.18), (0.74, 0.42)], 1),
        ("ellipse", 0.1, 0.62, 0.34, 1.0, 1), ("ellipse", 0.66, 0.62, 0.9, 1.0, 1),
    ]),
    "cat": (0.9, [
        ("ellipse", 0.08, 0.45, 0.92, 1.0, 0), ("ellipse", 0.2, 0.12, 0.8, 0.62, 0),
        ("poly", [(0.22, 0.32), (0.28, 0.0), (0.46, 0.18)], 0),
        ("poly", [(0.78, 0.32), (0.72, 0.0), (0.54, 0.18)], 0),
        ("ellipse", 0.32, 0.3, 0.44, 0.4, 1), ("ellipse", 0.56, 0.3, 0.68, 0.4, 1),
    ]),
    "chair": (0.7, [
        ("rect", 0.08, 0.0, 0.26, 0.62, 0), ("rect", 0.08, 0.5, 0.92, 0.64, 1),
        ("rect", 0.08, 0.62, 0.2, 1.0, 0), ("rect", 0.8, 0.62, 0.92, 1.0, 0),
    ]),
    "cow": (1.5, [
        ("rect", 0.16, 0.25, 0.84, 0.7, 0), ("rect", 0.8, 0.14, 1.0, 0.46, 0),
        *[("rect", x, 0.66, x + 0.08, 1.0, 0) for x in (0.18, 0.32, 0.62, 0.74)],
        ("ellipse", 0.3, 0.3, 0.48, 0.48, 1), ("ellipse", 0.56, 0.44, 0.74, 0.62, 1),
        ("poly", [(0.82, 0.16), (0.86, 0.0), (0.88, 0.16)], 1),
        ("poly", [(0.92, 0.16), (0.96, 0.0), (0.98, 0.16)], 1),
    ]),
    "diningtable": (1.6, [
        ("rect", 0.0, 0.22, 1.0, 0.38, 0), ("rect", 0.0, 0.22, 1.0, 0.27, 1),
        ("rect", 0.05, 0.36, 0.14, 1.0, 0), ("rect", 0.86, 0.36, 0.95, 1.0, 0),
        ("rect", 0.3, 0.36, 0.36, 0.9, 0), ("rect", 0.64, 0.36, 0.7, 0.9, 0),
    ]),
    "dog": (1.4, [
        ("ellipse", 0.14, 0.3, 0.8, 0.7, 0), ("ellipse", 0.68, 0.08, 1.0, 0.45, 0),
        ("poly", [(0.7, 0.14), (0.76, 0.44), (0.66, 0.4)], 1),
        *[("rect", x, 0.6, x + 0.07, 1.0, 0) for x in (0.2, 0.32, 0.58, 0.7)],
        ("line", [(0.18, 0.44), (0.0, 0.1)], 0.08, 0),
    ]),
    "horse": (1.2, [
        ("ellipse", 0.08, 0.3, 0.78, 0.6, 0),
        ("poly", [(0.62, 0.36), (0.76, 0.46), (0.96, 0.12), (0.84, 0.02)], 0),
        ("poly", [(0.84, 0.02), (1.0, 0.1), (1.0, 0.2), (0.9, 0.18)], 0),
        ("poly", [(0.66, 0.3), (0.84, 0.0), (0.88, 0.04), (0.7, 0.34)], 1),
        *[("rect", x, 0.52, x + 0.06, 1.0, 0) for x in (0.14, 0.26, 0.56, 0.66)],
        ("line", [(0.1, 0.4), (0.0, 0.74)], 0.06, 1),
    ]),
    "motorbike": (1.6, [
        ("ellipse", 0.0, 0.5, 0.36, 1.0, 1), ("ellipse", 0.64, 0.5, 1.0, 1.0, 1),
        ("poly", [(0.18, 0.62), (0.82, 0.62), (0.72, 0.3), (0.28, 0.36)], 0),
        ("rect", 0.3, 0.24, 0.56, 0.34, 1),
        ("line", [(0.72, 0.32), (0.78, 0.08), (0.9, 0.06)], 0.06, 0),
    ]),
    "person": (0.42, [
        ("ellipse", 0.28, 0.0, 0.72, 0.2, 1), ("rect", 0.12, 0.2, 0.88, 0.6, 0),
        ("rect", 0.18, 0.58, 0.46, 1.0, 1), ("rect", 0.54, 0.58, 0.82, 1.0, 1),
    ]),
    "pottedplant": (0.8, [
        ("poly", [(0.2, 0.66), (0.8, 0.66), (0.7, 1.0), (0.3, 1.0)], 1),
        ("rect", 0.46, 0.5, 0.54, 0.68, 0),
        ("ellipse", 0.0, 0.02, 0.6, 0.5, 0), ("ellipse", 0.4, 0.0, 1.0, 0.48, 0),
        ("ellipse", 0.16, 0.24, 0.84, 0.7, 0),
    ]),
    "sheep": (1.4, [
        ("ellipse", 0.05, 0.2, 0.5, 0.68, 0), ("ellipse", 0.3, 0.12, 0.78, 0.62, 0),
        ("ellipse", 0.16, 0.34, 0.74, 0.8, 0), ("ellipse", 0.74, 0.22, 1.0, 0.56, 1),
        *[("rect", x, 0.72, x + 0.06, 1.0, 1) for x in (0.22, 0.36, 0.5, 0.62)],
    ]),
    "sofa": (1.8, [
        ("rect", 0.04, 0.14, 0.96, 0.56, 0), ("rect", 0.0, 0.5, 1.0, 0.86, 0),
        ("rect", 0.0, 0.34, 0.14, 0.86, 1), ("rect", 0.86, 0.34, 1.0, 0.86, 1),
        ("rect", 0.06, 0.84, 0.12, 1.0, 1), ("rect", 0.88, 0.84, 0.94, 1.0, 1),
    ]),
    "train": (2.2, [
        ("rect", 0.0, 0.22, 0.76, 0.8, 0), ("rect", 0.7, 0.0, 1.0, 0.8, 0),
        ("rect", 0.08, 0.02, 0.18, 0.24, 1), ("rect", 0.76, 0.1, 0.94, 0.36, 1),
        *[("ellipse", x, 0.7, x + 0.16, 1.0, 1) for x in (0.04, 0.26, 0.48, 0.76)],
    ]),
    "tvmonitor": (1.3, [
        ("rect", 0.0, 0.0, 1.0, 0.82, 0), ("rect", 0.08, 0.08, 0.92, 0.74, 1),
        ("poly", [(0.4, 0.8), (0.6, 0.8), (0.72, 1.0), (0.28, 1.0)], 0),
    ]),
}
assert tuple(_GLYPHS) == VOC_CLASSES


def _glyph_mask_and_colour(
    glyph: tuple[float, list[_Part]], box: tuple[float, float, float, float], flip: bool,
    width: int, height: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one glyph into ``box`` (x0, y0, x1, y1 in pixels): (mask bool, detail bool)."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0

    def to_px(x: float, y: float) -> tuple[float, float]:
        if flip:
            x = 1.0 - x
        return (x0 + x * bw, y0 + y * bh)

    mask = Image.new("L", (width, height), 0)
    detail = Image.new("L", (width, height), 0)
    draw_mask, draw_detail = ImageDraw.Draw(mask), ImageDraw.Draw(detail)
    for part in glyph[1]:
        kind, colour = part[0], part[-1]
        for draw, fill in ((draw_mask, 255), (draw_detail, 255 if colour == 1 else 0)):
            if kind in ("rect", "ellipse"):
                (ax, ay), (bx, by) = to_px(part[1], part[2]), to_px(part[3], part[4])
                xy = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
                (draw.rectangle if kind == "rect" else draw.ellipse)(xy, fill=fill)
            elif kind == "poly":
                draw.polygon([to_px(*p) for p in part[1]], fill=fill)
            elif kind == "line":
                w = max(1, round(part[2] * bh))
                draw.line([to_px(*p) for p in part[1]], fill=fill, width=w, joint="curve")
            elif kind == "ring":
                (ax, ay), (bx, by) = to_px(part[1], part[2]), to_px(part[3], part[4])
                xy = [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]
                draw.ellipse(xy, outline=fill, width=max(1, round(part[5] * bh)))
    m = np.asarray(mask) > 0
    return m, (np.asarray(detail) > 0) & m


@dataclass
class _VocObject:
    cls: int  # index into VOC_CLASSES
    pose: str
    truncated: int
    difficult: int
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: 1-based, inclusive (VOC's)


def _draw_voc_scene(rng: np.random.Generator, img_size: int) -> tuple[np.ndarray, np.ndarray, list[_VocObject]]:
    """One scene: (uint8 (H, W, 3) image, uint8 (H, W) instance map, objects)."""
    aspect = (1.0, 0.75, 4 / 3)[int(rng.integers(3))]  # height / width, VOC images vary in shape
    width, height = (img_size, round(img_size * aspect)) if aspect <= 1 else (round(img_size / aspect), img_size)
    img = _background(rng, width, height)
    instance = np.zeros((height, width), dtype=np.uint8)
    placed: list[tuple[int, tuple[float, float, float, float], bool, bool]] = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(len(VOC_CLASSES)))
        ratio = _GLYPHS[VOC_CLASSES[cls]][0]
        small = rng.random() < 0.2
        extent = rng.uniform(0.08, 0.14) if small else rng.uniform(0.25, 0.6)
        longest = extent * img_size
        bw, bh = (longest, longest / ratio) if ratio >= 1 else (longest * ratio, longest)
        for _attempt in range(20):  # place with little overlap; up to ~25% may leave the frame
            x0 = rng.uniform(-0.25 * bw, width - 0.75 * bw)
            y0 = rng.uniform(-0.25 * bh, height - 0.75 * bh)
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(_iou(box, other) < 0.2 for _, other, _, _ in placed):
                placed.append((cls, box, bool(rng.random() < 0.5), small))
                break
    objects: list[_VocObject] = []
    for cls, box, flip, small in placed:  # small objects are the "difficult" ones
        glyph = _GLYPHS[VOC_CLASSES[cls]]
        mask, detail = _glyph_mask_and_colour(glyph, box, flip, width, height)
        if not mask.any():
            continue
        hue = (cls / len(VOC_CLASSES) + rng.uniform(-0.03, 0.03)) % 1.0
        main = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.55, 0.95)), dtype=np.float32)
        second = main * rng.uniform(0.25, 0.45) if rng.random() < 0.7 else 1 - main * 0.5
        img[mask] = main
        img[detail] = second
        instance[mask] = len(objects) + 1
        symmetric = VOC_CLASSES[cls] in ("bottle", "tvmonitor", "person", "pottedplant", "diningtable")
        pose = "Unspecified" if symmetric else ("Left" if flip else "Right")
        truncated = int(box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height)
        objects.append(_VocObject(cls, pose, truncated, int(small), (0, 0, 0, 0)))
    img = img + rng.normal(0, rng.uniform(0.01, 0.04), size=img.shape).astype(np.float32)
    # Boxes around the *visible* pixels (later objects occlude earlier ones), as VOC annotates.
    kept: list[_VocObject] = []
    remap = np.zeros(256, dtype=np.uint8)
    for k, obj in enumerate(objects, start=1):
        ys, xs = np.nonzero(instance == k)
        if len(xs) < 4:  # (almost) fully hidden: not annotated
            continue
        obj.bbox = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        kept.append(obj)
        remap[k] = len(kept)
    return _to_uint8(img), remap[instance], kept


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _void_border(instance: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood holds two different instance ids (object vs background or
    vs another object): VOC's 'void' band, about 2 px wide, straddling every object outline."""
    img = Image.fromarray(instance)
    hi = np.asarray(img.filter(ImageFilter.MaxFilter(3)))
    lo = np.asarray(img.filter(ImageFilter.MinFilter(3)))
    return hi != lo


def _palette_png(index: np.ndarray) -> Image.Image:
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index).tobytes())
    image.putpalette(voc_palette())
    return image


def _voc_xml(name: str, width: int, height: int, objects: list[_VocObject]) -> str:
    lines = [
        "<annotation>",
        "\t<folder>VOC2007</folder>",
        f"\t<filename>{name}.jpg</filename>",
        "\t<source>",
        "\t\t<database>imagenet_book VOC stand-in (procedurally drawn)</database>",
        "\t\t<annotation>imagenet_book.data.standin</annotation>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj.bbox
        lines += [
            "\t<object>",
            f"\t\t<name>{VOC_CLASSES[obj.cls]}</name>",
            f"\t\t<pose>{obj.pose}</pose>",
            f"\t\t<truncated>{obj.truncated}</truncated>",
            f"\t\t<difficult>{obj.difficult}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{xmin}</xmin>",
            f"\t\t\t<ymin>{ymin}</ymin>",
            f"\t\t\t<xmax>{xmax}</xmax>",
            f"\t\t\t<ymax>{ymax}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def make_voc_standin(
    root: str | os.PathLike[str],
    *,
    num_train: int = 40,
    num_val: int = 20,
    img_size: int = 128,
    seed: int = 0,
) -> Path:
    """Write (or reuse) a PASCAL VOC 2007-style stand-in: multi-object scenes of 20 glyph classes.

    Layout (as the VOC 2007 devkit; ``root`` is what torchvision's ``root`` argument takes)::

        root/VOCdevkit/VOC2007/
          JPEGImages/000001.jpg ...            RGB JPEGs, longer side img_size, varying aspect
          Annotations/000001.xml ...           VOC XML: filename, size, segmented, and per object
                                               name, pose, truncated, difficult and bndbox
                                               (xmin ymin xmax ymax: 1-based inclusive pixels,
                                               around the visible part of the object)
          ImageSets/Main/{train,val,trainval}.txt
          ImageSets/Main/<class>_{train,val,trainval}.txt   "<id> <label>": 1 present,
                                               -1 absent, 0 only "difficult" instances present
          ImageSets/Segmentation/{train,val,trainval}.txt
          SegmentationClass/000001.png ...     'P'-mode PNG, VOC palette: 0 background,
                                               k + 1 for VOC_CLASSES[k], 255 void border
          SegmentationObject/000001.png ...    'P'-mode PNG: instance 1, 2, ... in XML order,
                                               0 background, 255 void border
        root/standin.json                      manifest (arguments), written last

    Each scene holds 1 to 4 objects drawn as class-specific glyphs (a bus is a long box with a
    row of windows, a bicycle two rings and a frame, ...), each class with its own hue (jittered)
    so that small models can learn it on a CPU. About one object in five is small (longest side
    8-14% of the image) and marked ``difficult``; objects may be cut by the border
    (``truncated``) and occlude each other. Images ``000001 ..`` are the ``num_train`` training
    images, then the ``num_val`` validation images; every image has a segmentation mask.

    Args:
        root: folder to write (the one to pass to ``torchvision.datasets.VOCDetection``).
        num_train: training images (>= 1).
        num_val: validation images (>= 1).
        img_size: longer side of the images, in pixels (32 to 1024).
        seed: seed of every random choice; the same arguments give byte-identical files.

    Returns:
        ``root`` as an absolute :class:`~pathlib.Path`; the VOC folder is
        ``root / "VOCdevkit" / "VOC2007"``.

    Raises:
        StandinError: invalid arguments, or ``root`` exists, is not empty and is not a stand-in.

    Taught in: chapters/01_imagenet.ipynb, chapters/06_pretraining.ipynb; used by the detection
    and segmentation chapters.
    """
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise StandinError(f"{name} must be an int >= 1, got {value!r}.")
    if not isinstance(img_size, int) or not 32 <= img_size <= 1024:
        raise StandinError(f"img_size must be an int between 32 and 1024, got {img_size!r}.")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise StandinError(f"seed must be an int >= 0, got {seed!r}.")
    manifest = {
        "generator": "imagenet_book.data.standin.make_voc_standin",
        "format_version": VOC_FORMAT_VERSION,
        "arguments": {"num_train": num_train, "num_val": num_val, "img_size": img_size, "seed": seed},
    }

    def build(tmp: Path) -> None:
        voc = tmp / "VOCdevkit" / "VOC2007"
        dirs = {d: voc / d for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject")}
        for d in (*dirs.values(), voc / "ImageSets" / "Main", voc / "ImageSets" / "Segmentation"):
            d.mkdir(parents=True)
        ids = {"train": [], "val": []}
        labels: dict[str, list[list[int]]] = {"train": [], "val": []}
        for n in range(num_train + num_val):
            split = "train" if n < num_train else "val"
            name = f"{n + 1:06d}"
            img, instance, objects = _draw_voc_scene(np.random.default_rng([seed, n]), img_size)
            height, width = instance.shape
            border = _void_border(instance)
            class_map = np.array([0] + [o.cls + 1 for o in objects] + [0] * (255 - len(objects)),
                                 dtype=np.uint8)[instance]
            class_map[border] = 255
            object_map = instance.copy()
            object_map[border] = 255
            _save_jpeg(img, dirs["JPEGImages"] / f"{name}.jpg")
            _write_text(dirs["Annotations"] / f"{name}.xml", _voc_xml(name, width, height, objects))
            _save_png(_palette_png(class_map), dirs["SegmentationClass"] / f"{name}.png")
            _save_png(_palette_png(object_map), dirs["SegmentationObject"] / f"{name}.png")
            ids[split].append(name)
            row = [-1] * len(VOC_CLASSES)
            for obj in objects:  # 1 beats 0 beats -1
                row[obj.cls] = max(row[obj.cls], 0 if obj.difficult else 1)
            labels[split].append(row)
        ids["trainval"] = ids["train"] + ids["val"]
        labels["trainval"] = labels["train"] + labels["val"]
        for split in ("train", "val", "trainval"):
            listing = "".join(f"{i}\n" for i in ids[split])
            _write_text(voc / "ImageSets" / "Main" / f"{split}.txt", listing)
            _write_text(voc / "ImageSets" / "Segmentation" / f"{split}.txt", listing)
            for c, cname in enumerate(VOC_CLASSES):
                text = "".join(f"{i} {row[c]:2d}\n" for i, row in zip(ids[split], labels[split]))
                _write_text(voc / "ImageSets" / "Main" / f"{cname}_{split}.txt", text)

    return _build_atomically(Path(root), manifest, build)


# --------------------------------------------------------------------------------------------
# LFW stand-in: synthetic faces with an identity, in LFW's folder and pairs formats
# --------------------------------------------------------------------------------------------

#: Bump when the face drawing changes what is written: cached LFW stand-ins then regenerate.
LFW_FORMAT_VERSION = 1
_SKIN_LIGHT = np.array([0.96, 0.82, 0.70], dtype=np.float32)
_SKIN_DARK = np.array([0.36, 0.23, 0.15], dtype=np.float32)
_HAIR = np.array([[0.08, 0.06, 0.05], [0.30, 0.18, 0.08], [0.55, 0.38, 0.18], [0.85, 0.72, 0.40],
                  [0.60, 0.60, 0.60], [0.55, 0.15, 0.05]], dtype=np.float32)


def _face_identity(rng: np.random.Generator) -> dict[str, object]:
    """The traits that make one synthetic person: the same in every image of them (in units of
    the image side, the face centred at (0.5, 0.5))."""
    return {
        "skin": _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * rng.uniform(0, 1) + rng.normal(0, 0.03, 3),
        "face": (rng.uniform(0.16, 0.21), rng.uniform(0.21, 0.27)),  # half width, half height
        "hair": _HAIR[int(rng.integers(len(_HAIR)))] + rng.normal(0, 0.04, 3),
        "hair_top": rng.uniform(0.0, 0.09), "hair_sides": bool(rng.random() < 0.4),
        "eye_y": rng.uniform(-0.07, -0.02), "eye_gap": rng.uniform(0.055, 0.095),
        "eye_r": rng.uniform(0.016, 0.028), "iris": rng.uniform(0.05, 0.6, 3),
        "brow": (rng.uniform(0.006, 0.016), rng.uniform(-0.35, 0.35), rng.uniform(0.025, 0.045)),
        "nose": (rng.uniform(0.035, 0.08), rng.uniform(0.012, 0.03)),
        "mouth": (rng.uniform(0.08, 0.14), rng.uniform(0.035, 0.075)),
        "lips": np.array([0.65, 0.25, 0.25], dtype=np.float32) + rng.normal(0, 0.08, 3),
        "glasses": bool(rng.random() < 0.2), "beard": bool(rng.random() < 0.2),
    }


def _colour(c: object, light: float = 1.0) -> tuple[int, int, int, int]:
    rgb = np.clip(np.asarray(c, dtype=np.float32) * light, 0, 1)
    return (*(int(v * 255 + 0.5) for v in rgb), 255)


def _draw_face(person: dict[str, object], rng: np.random.Generator, size: int) -> np.ndarray:
    """One photo of ``person``: their traits, under a random pose (shift, scale, in-plane
    rotation), expression, lighting and background. Returns uint8 ``(size, size, 3)``."""
    big = size * _SUPERSAMPLE
    scale = rng.uniform(0.92, 1.08) * big
    cx, cy = big * (0.5 + rng.uniform(-0.03, 0.03)), big * (0.5 + rng.uniform(-0.03, 0.03))
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)

    def box(x: float, y: float, rx: float, ry: float) -> list[float]:
        return [cx + (x - rx) * scale, cy + (y - ry) * scale, cx + (x + rx) * scale, cy + (y + ry) * scale]

    fw, fh = person["face"]  # type: ignore[misc]
    hair = _colour(person["hair"])
    if person["hair_sides"]:
        draw.ellipse(box(0, -0.02, fw * 1.18, fh * 1.05), fill=hair)
    draw.ellipse(box(0, 0, fw, fh), fill=_colour(person["skin"]))
    if person["hair_top"] > 0.01:  # type: ignore[operator]
        draw.chord(box(0, -fh * 0.45, fw * 1.04, fh * 0.62 + person["hair_top"]), 180, 360, fill=hair)
    if person["beard"]:
        draw.chord(box(0, fh * 0.35, fw * 0.9, fh * 0.6), 0, 180, fill=_colour(person["hair"], 0.8))
    ey, gap, er = person["eye_y"], person["eye_gap"], person["eye_r"]
    open_eye = rng.uniform(0.6, 1.0)
    thick, tilt, above = person["brow"]  # type: ignore[misc]
    for side in (-1, 1):
        ex = side * gap
        draw.ellipse(box(ex, ey, er * 1.6, er * open_eye), fill=(245, 245, 240, 255))
        draw.ellipse(box(ex, ey, er * 0.8, er * 0.8 * open_eye), fill=_colour(person["iris"]))
        draw.ellipse(box(ex, ey, er * 0.35, er * 0.35 * open_eye), fill=(10, 10, 10, 255))
        y0 = ey - above
        draw.line([(cx + (ex - er * 1.8) * scale, cy + (y0 + side * tilt * 0.02) * scale),
                   (cx + (ex + er * 1.8) * scale, cy + (y0 - side * tilt * 0.02) * scale)],
                  fill=_colour(person["hair"], 0.9), width=max(1, int(thick * scale)))
        if person["glasses"]:
            draw.ellipse(box(ex, ey, er * 2.3, er * 2.0), outline=(30, 30, 30, 255), width=max(1, int(0.006 * scale)))
    length, width = person["nose"]  # type: ignore[misc]
    draw.polygon([(cx, cy + (ey + 0.02) * scale), (cx - width * scale, cy + (ey + 0.02 + length) * scale),
                  (cx + width * scale, cy + (ey + 0.02 + length) * scale)], fill=_colour(person["skin"], 0.8))
    my, mw = person["mouth"]  # type: ignore[misc]
    smile = rng.uniform(-0.3, 1.0) * 0.03
    draw.chord(box(0, my - smile, mw, 0.012 + abs(smile)), 0 if smile >= 0 else 180, 180 if smile >= 0 else 360,
               fill=_colour(person["lips"]))
    layer = layer.rotate(rng.uniform(-8, 8), resample=Image.Resampling.BICUBIC, center=(cx, cy))
    layer = layer.resize((size, size), Image.Resampling.BOX)
    rgba = np.asarray(layer, dtype=np.float32) / 255.0
    alpha = rgba[..., 3:]
    lighting = rng.uniform(0.75, 1.2) * (1 + rng.uniform(-0.25, 0.25) * np.linspace(-1, 1, size, dtype=np.float32))
    face = rgba[..., :3] * lighting[None, :, None]
    img = _background(rng, size, size) * (1 - alpha) + face * alpha
    img = img + rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    return _to_uint8(img)


def _sample_pairs(rng: np.random.Generator, counts: dict[str, int], n: int) -> tuple[list[str], list[str]]:
    """``n`` same-person rows ``name i j`` and ``n`` different-person rows ``name1 i name2 j``
    (1-based image numbers), drawn without repetition while there are enough distinct ones."""
    names = sorted(counts)
    same = [(p, i, j) for p in names for i in range(1, counts[p] + 1) for j in range(i + 1, counts[p] + 1)]
    if not same:
        raise StandinError("No person of a fold has two images: raise images_per_person.")
    diff = [(a, i, b, j) for x, a in enumerate(names) for b in names[x + 1:]
            for i in range(1, counts[a] + 1) for j in range(1, counts[b] + 1)]
    pick_same = rng.choice(len(same), n, replace=n > len(same))
    pick_diff = rng.choice(len(diff), n, replace=n > len(diff))
    return (["{}\t{}\t{}".format(*same[k]) for k in sorted(pick_same)],
            ["{}\t{}\t{}\t{}".format(*diff[k]) for k in sorted(pick_diff)])


def make_lfw_standin(
    root: str | os.PathLike[str],
    *,
    num_folds: int = 5,
    people_per_fold: int = 8,
    images_per_person: int = 3,
    pairs_per_fold: int = 8,
    img_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write (or reuse) an LFW-style stand-in: synthetic faces of made-up people, in LFW's formats.

    Layout (as LFW's release: the folder of ``lfw-deepfunneled.tgz`` and its protocol files)::

        root/lfw/<Person>/<Person>_0001.jpg ...  square RGB JPEGs, img_size px, face centred
        root/pairs.txt                            "num_folds<TAB>pairs_per_fold", then per fold
                                                  pairs_per_fold rows "name<TAB>i<TAB>j" (same
                                                  person) and as many "name1<TAB>i<TAB>name2<TAB>j"
        root/people.txt                           "num_folds", then per fold its number of people
                                                  and "name<TAB>images" rows
        root/standin.json                         manifest (arguments), written last

    Every person (``Synthetic_Face_0001``, ...: a made-up name, never a real person's) has fixed
    traits drawn once: face shape, skin tone, hair colour and style, eye spacing, size and
    colour, brows, nose, mouth, glasses, beard. Each photo of them varies the pose (shift,
    scale, in-plane rotation), the expression (smile, eyelids), the lighting and the background.
    So identity is learnable, but two photos of one person are never the same picture: face
    verification on it behaves like on LFW, only easier. Folds are identity-disjoint (as
    LFW's); a person has 1 to ``images_per_person`` photos (at least one person per fold has
    two, for the same-person pairs).

    Args:
        root: folder to write.
        num_folds: folds of people (LFW: 10).
        people_per_fold: people in each fold (>= 2).
        images_per_person: most photos of one person (>= 2).
        pairs_per_fold: same-person rows, and as many different-person rows, per fold (LFW: 300).
        img_size: side of the images (32 to 512; LFW's are 250).
        seed: seed of every random choice; the same arguments give byte-identical files.

    Returns:
        ``root`` as an absolute :class:`~pathlib.Path`.

    Raises:
        StandinError: invalid arguments, or ``root`` exists, is not empty and is not a stand-in.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    for name, value, least in (("num_folds", num_folds, 1), ("people_per_fold", people_per_fold, 2),
                               ("images_per_person", images_per_person, 2), ("pairs_per_fold", pairs_per_fold, 1),
                               ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise StandinError(f"{name} must be an int >= {least}, got {value!r}.")
    if not isinstance(img_size, int) or not 32 <= img_size <= 512:
        raise StandinError(f"img_size must be an int between 32 and 512, got {img_size!r}.")
    manifest = {
        "generator": "imagenet_book.data.standin.make_lfw_standin",
        "format_version": LFW_FORMAT_VERSION,
        "arguments": {"num_folds": num_folds, "people_per_fold": people_per_fold,
                      "images_per_person": images_per_person, "pairs_per_fold": pairs_per_fold,
                      "img_size": img_size, "seed": seed},
    }

    def build(tmp: Path) -> None:
        pairs = [f"{num_folds}\t{pairs_per_fold}"]
        people = [str(num_folds)]
        for fold in range(num_folds):
            rng = np.random.default_rng([seed, fold])
            counts = {}
            for k in range(people_per_fold):
                person = f"Synthetic_Face_{fold * people_per_fold + k + 1:04d}"
                count = 2 if k == 0 else int(rng.integers(1, images_per_person + 1))
                traits = _face_identity(np.random.default_rng([seed, fold, k]))
                folder = tmp / "lfw" / person
                folder.mkdir(parents=True)
                for i in range(1, count + 1):
                    pixels = _draw_face(traits, np.random.default_rng([seed, fold, k, i]), img_size)
                    _save_jpeg(pixels, folder / f"{person}_{i:04d}.jpg")
                counts[person] = count
            same, diff = _sample_pairs(rng, counts, pairs_per_fold)
            pairs += same + diff
            people += [str(len(counts))] + [f"{p}\t{n}" for p, n in counts.items()]
        _write_text(tmp / "pairs.txt", "\n".join(pairs) + "\n")
        _write_text(tmp / "people.txt", "\n".join(people) + "\n")

    return _build_atomically(Path(root), manifest, build)


# --------------------------------------------------------------------------------------------
# Atomic, cached tree building
# --------------------------------------------------------------------------------------------


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _remove_stale_partials(root: Path) -> None:
    """Remove ``.<name>.partial-<pid>-*`` / ``.old-*`` folders left by processes that are gone."""
    for tag in ("partial", "old"):
        for leftover in root.parent.glob(f".{root.name}.{tag}-*"):
            try:
                pid = int(leftover.name.rsplit(f".{tag}-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if not pid_alive(pid):
                shutil.rmtree(leftover, ignore_errors=True)


def _build_atomically(root: Path, manifest: dict, build: Callable[[Path], None]) -> Path:
    """Return ``root`` holding the tree ``build`` writes, reusing it when its manifest matches.

    ``build(tmp)`` writes into a fresh hidden folder beside ``root``; the manifest is written
    last and the folder renamed to ``root`` only then, so ``root`` is either absent, a complete
    earlier tree, or a complete new tree: never half written.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if _read_manifest(root) == manifest:
        return root
    if root.exists():
        if not root.is_dir():
            raise StandinError(f"{str(root)!r} is a file, not a folder: choose another stand-in folder.")
        if _read_manifest(root) is None and any(root.iterdir()):
            raise StandinError(
                f"{str(root)!r} exists, is not empty and is not a stand-in (it has no {MANIFEST_NAME}). "
                "The generator never deletes what it did not write: choose another folder, or empty "
                "this one yourself."
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = root.parent / f".{root.name}.partial-{token}"
    tmp.mkdir()
    try:
        build(tmp)
        _write_text(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if root.exists():  # empty, or a stand-in made with other arguments: swap it out
            old = root.parent / f".{root.name}.old-{token}"
            try:
                os.rename(root, old)
            except FileNotFoundError:  # another process moved it first
                old = None
        else:
            old = None
        try:
            os.rename(tmp, root)
        except OSError:
            # Another process finished the same tree first: use theirs if it is what we want.
            if _read_manifest(root) == manifest:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
