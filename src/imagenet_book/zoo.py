"""Choosing a pretrained model: accuracy, parameters, multiply-adds and measured latency.

* :func:`torchvision_zoo`: one :class:`ZooEntry` per torchvision classification architecture,
  from its default weights' metadata (``torchvision.models.get_model_weights(name).DEFAULT.meta``:
  ImageNet-1k top-1/top-5, parameters, GMACs at the evaluation size, file size). The metadata
  ships with torchvision: no download, works offline.
* :func:`count_macs`: multiply-accumulates of one forward pass, counted by forward hooks on the
  convolutions and linear layers (:func:`imagenet_book.models.layer_table`, the convention of
  torchvision's ``_ops``).
* :func:`measure_latency`: the measured side: each model built with random weights (latency does
  not depend on the values of the weights), timed by :func:`imagenet_book.speed.latency`.
* :func:`checkpoint_entry`: the same row for one of the book's own checkpoints (chapter 06).

Families are the architecture's name without its size (``resnet50`` -> ``resnet``,
``efficientnet_v2_s`` -> ``efficientnet_v2``).

Taught in: chapters/10_practice.ipynb.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torchvision
from torch import nn

from .models.summary import layer_table
from .pretrain import read_pretrained
from .speed import compare_latency, latency

__all__ = ["ZooEntry", "as_rows", "checkpoint_entry", "count_macs", "family_of", "measure_latency",
           "pareto_front", "torchvision_zoo"]

IMAGENET = "ImageNet-1K"


@dataclass(frozen=True)
class ZooEntry:
    """One model of the comparison.

    Attributes:
        name: the architecture (``torchvision.models.get_model`` name, or the book's ``arch``).
        family: the architecture family (:func:`family_of`).
        weights: the weights' name, e.g. ``"ResNet18_Weights.IMAGENET1K_V1"``, or the book's
            checkpoint file name.
        top1, top5: accuracy in percent on ``dataset``'s validation images.
        dataset: what the accuracy was measured on (``"ImageNet-1K"`` for torchvision's).
        params: number of parameters.
        gmacs: billions of multiply-accumulates per image at ``img_size``.
        file_mb: size of the weights file in MB (``None`` when unknown).
        img_size: the side of the evaluation crops the accuracy and GMACs refer to.
        latency_ms: measured median milliseconds per image (batch 1); ``None`` until measured.
        latency_device: where it was measured.

    Taught in: chapters/10_practice.ipynb.
    """

    name: str
    family: str
    weights: str
    top1: float
    top5: float | None
    dataset: str
    params: int
    gmacs: float
    file_mb: float | None
    img_size: int
    latency_ms: float | None = None
    latency_device: str | None = None


_SIZE_WORDS = {"tiny", "small", "base", "large", "huge", "t", "s", "b", "m", "l", "h", "bn"}


def family_of(name: str) -> str:
    """The family of an architecture name: the name without its size.

    ``resnet18`` -> ``resnet``; ``wide_resnet50_2`` -> ``wide_resnet``; ``efficientnet_v2_s`` ->
    ``efficientnet_v2``; ``regnet_y_400mf`` -> ``regnet_y``; ``vit_b_16`` -> ``vit``;
    ``mobilenet_v3_small`` -> ``mobilenet_v3``; ``vgg16_bn`` -> ``vgg``.

    Taught in: chapters/10_practice.ipynb.
    """
    parts: list[str] = []
    for token in name.lower().split("_"):
        if re.fullmatch(r"v\d+", token):              # a version: mobilenet_v3, swin_v2
            parts.append(token)
        elif re.search(r"\d", token):                 # a size: 50, 400mf, x1, b0, 32x8d
            head = re.match(r"[a-z]+", token)
            if head and len(head.group()) > 1 and head.group() not in _SIZE_WORDS:
                parts.append(head.group())            # resnet50 -> resnet
        elif token not in _SIZE_WORDS:                # tiny, small, b, bn ...: sizes and variants
            parts.append(token)
    return "_".join(parts) or name


def torchvision_zoo(names: Sequence[str] | None = None) -> list[ZooEntry]:
    """Every torchvision classification model (or ``names``) with its default weights' metadata.

    Reads ``torchvision.models.get_model_weights(name).DEFAULT.meta`` only: nothing is built or
    downloaded. Accuracies are torchvision's, on the ImageNet-1k validation set at the weights'
    evaluation crop size (``img_size``: 224 for most, more for some EfficientNets and ViTs).

    Args:
        names: architecture names (``torchvision.models.list_models``); default: all of
            ``torchvision.models`` (the classification models).

    Returns:
        A list of :class:`ZooEntry`, sorted by GMACs, with ``latency_ms=None``.

    Raises:
        ValueError: a name that torchvision does not know (the message lists the known ones).

    Taught in: chapters/10_practice.ipynb.
    """
    known = torchvision.models.list_models(module=torchvision.models)
    names = list(known) if names is None else list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"Unknown torchvision classification model(s) {unknown}. "
                         f"Known: {', '.join(known)}.")
    rows = []
    for name in names:
        w = torchvision.models.get_model_weights(name).DEFAULT
        meta = w.meta
        metrics = meta["_metrics"][IMAGENET]
        crop = getattr(w.transforms, "keywords", {}).get("crop_size", 224)
        rows.append(ZooEntry(name=name, family=family_of(name), weights=str(w),
                             top1=float(metrics["acc@1"]), top5=float(metrics["acc@5"]),
                             dataset=IMAGENET, params=int(meta["num_params"]),
                             gmacs=float(meta["_ops"]), file_mb=float(meta["_file_size"]),
                             img_size=int(crop)))
    return sorted(rows, key=lambda e: e.gmacs)


def count_macs(net: nn.Module, input_size: Sequence[int] = (1, 3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass of ``net`` on a batch of ``input_size``.

    Counts ``Conv2d`` and ``Linear`` layers (forward hooks; see :mod:`imagenet_book.models.summary`
    for the convention). Operations outside such layers (the attention products of a
    transformer, for one) are not counted, so this is exact for CNNs like ResNet and a lower
    bound otherwise.

    Returns:
        MACs for the whole batch (an ``int``); divide by the batch size for per-image MACs.

    Taught in: chapters/10_practice.ipynb.
    """
    return layer_table(net, tuple(input_size)).total_macs


def measure_latency(entries: Sequence[ZooEntry], *, device: str | torch.device = "cpu",
                    repeats: int = 5, warmup: int = 1, img_size: int | None = None,
                    threads: int | None = None) -> list[ZooEntry]:
    """Fill in ``latency_ms`` of torchvision entries: batch 1, random weights, on ``device``.

    Each model is built with ``torchvision.models.get_model(name, weights=None)`` (no download).
    Models with the same image size (the entry's ``img_size``, or ``img_size``) are timed
    together by :func:`imagenet_book.speed.compare_latency`, in interleaved rounds, so that load
    on a shared machine hits them alike; all of them are in memory at once.

    Returns:
        New entries (the inputs are not modified), in the same order.

    Taught in: chapters/10_practice.ipynb.
    """
    sizes = {e.name: img_size or e.img_size for e in entries}
    found: dict[str, float] = {}
    for size in sorted(set(sizes.values())):
        names = [e.name for e in entries if sizes[e.name] == size]
        torch.manual_seed(0)
        nets = {n: torchvision.models.get_model(n, weights=None).to(device) for n in names}
        times = compare_latency(nets, (1, 3, size, size), device=device, repeats=repeats,
                                warmup=warmup, threads=threads)
        found.update({n: t.ms for n, t in times.items()})
        del nets
    return [dataclasses.replace(e, latency_ms=found[e.name], latency_device=str(device)) for e in entries]


def checkpoint_entry(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                     repeats: int = 5, warmup: int = 1) -> ZooEntry:
    """A :class:`ZooEntry` for one of the book's pretrained checkpoints (``pretrain(cfg)``'s file).

    Accuracy: the validation top-1/top-5 the checkpoint recorded when it was trained, on ITS
    data (e.g. Imagenette's 10 classes): not comparable with ImageNet-1k accuracies.
    Parameters and MACs are counted at the checkpoint's image size, and latency measured there.

    Raises:
        PretrainedNotFoundError, PretrainError: from :func:`imagenet_book.pretrain.read_pretrained`.

    Taught in: chapters/10_practice.ipynb.
    """
    ckpt = read_pretrained(path)
    net = ckpt.build().to(device)
    size = ckpt.img_size
    macs = count_macs(net, (1, 3, size, size))
    t = latency(net, (1, 3, size, size), device=device, repeats=repeats, warmup=warmup)
    return ZooEntry(name=ckpt.arch, family=family_of(ckpt.arch), weights=os.path.basename(str(path)),
                    top1=100 * ckpt.metrics["top1"], top5=100 * ckpt.metrics["top5"],
                    dataset=ckpt.description, params=sum(p.numel() for p in net.parameters()),
                    gmacs=macs / 1e9, file_mb=os.path.getsize(path) / 1e6, img_size=size,
                    latency_ms=t.ms, latency_device=str(device))


def pareto_front(entries: Sequence[ZooEntry], cost: str = "gmacs") -> list[ZooEntry]:
    """The entries no other entry beats on both accuracy and ``cost``: for each, every model
    that costs less is also less accurate. Sorted by cost.

    Args:
        cost: ``"gmacs"``, ``"params"``, ``"latency_ms"`` or ``"file_mb"`` (entries without a
            value are skipped).

    Taught in: chapters/10_practice.ipynb.
    """
    if cost not in ("gmacs", "params", "latency_ms", "file_mb"):
        raise ValueError(f"cost must be 'gmacs', 'params', 'latency_ms' or 'file_mb', got {cost!r}.")
    rows = sorted((e for e in entries if getattr(e, cost) is not None),
                  key=lambda e: (getattr(e, cost), -e.top1))
    front, best = [], float("-inf")
    for e in rows:
        if e.top1 > best:
            front.append(e)
            best = e.top1
    return front


def as_rows(entries: Sequence[ZooEntry]) -> list[dict[str, Any]]:
    """Entries as plain dicts (for a table or JSON).

    Taught in: chapters/10_practice.ipynb.
    """
    return [dataclasses.asdict(e) for e in entries]
