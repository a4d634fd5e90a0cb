"""A classifier head on a frozen backbone: features once, then many cheap training runs.

Chapter 10 asks questions that need many training runs (a hyper-parameter search, the effect of
each regulariser). Fine-tuning a whole ResNet for each would take hours on a CPU. Freezing the
backbone makes each run cheap: the images go through the backbone once (:func:`extract_features`),
and each run trains only a small head (:func:`make_head`) on the stored features, with the
book's training loop (:func:`imagenet_book.engine.fit`).

* :func:`extract_features`: the backbone's pooled features ``(N, D)``, or ``(V, N, D)`` for
  ``V`` augmented views of every image (random-resized crops and flips: augmentation that
  survives freezing the backbone);
* :func:`split_per_class`: disjoint, class-balanced index sets (train / validation / test);
* :class:`FeatureViews`: a dataset that gives one random view of each image per epoch;
* :func:`make_head`: ``Dropout -> Linear`` or a small MLP with dropout;
* :func:`stage_features`: each stage's feature maps averaged over space (``layer1`` .. ``layer4``),
  for a linear probe per stage: what each depth of a backbone has learned;
* :func:`fit_early_stopping`: :func:`~imagenet_book.engine.fit` with an early-stopping callback,
  keeping the best epoch's weights and stopping after ``patience`` epochs without improvement.

Taught in: chapters/10_practice.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from . import engine
from .pretrain import predict

__all__ = ["EarlyStoppingResult", "FeatureViews", "extract_features", "fit_early_stopping",
           "make_head", "split_per_class", "stage_features", "train_val_gap"]


@torch.no_grad()
def extract_features(net: nn.Module, loader: Any, *, views: int = 1,
                     device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The input of ``net``'s final ``fc`` layer for every image of ``loader``.

    ``net.fc`` is replaced by ``nn.Identity`` for the passes and put back after, so ``net``
    must have an ``fc`` attribute (the book's and torchvision's ResNets do).

    Args:
        net: a classifier with an ``fc`` layer, float32 ``(B, 3, H, W)`` -> ``(B, C)``.
        loader: batches ``(X, y)`` in a fixed image order (a validation
            :class:`~imagenet_book.data.fast.FastLoader`, or a training one with
            ``shuffle=False, drop_last=False`` for augmented views).
        views: passes over ``loader``; with a training loader every pass gives new random crops
            of the same images (the loader's ``set_epoch(v)`` is called before pass ``v``).
        device: default: where ``net``'s parameters are.

    Returns:
        ``(features, labels)``: float32 ``(N, D)`` when ``views == 1``, else ``(views, N, D)``;
        int64 ``(N,)``; both on the CPU.

    Raises:
        AttributeError: ``net`` has no ``fc``.
        ValueError: the passes do not give the same labels in the same order.

    Taught in: chapters/10_practice.ipynb.
    """
    if not hasattr(net, "fc"):
        raise AttributeError(f"extract_features needs a network with an `fc` layer (a ResNet); "
                             f"got a {type(net).__name__}.")
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}.")
    fc, net.fc = net.fc, nn.Identity()
    try:
        feats, labels = [], None
        for v in range(views):
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(v)
            f, y = predict(net, loader, device)
            if labels is not None and not torch.equal(labels, y):
                raise ValueError("The loader gave other labels, or another order, on its second "
                                 "pass: use shuffle=False for augmented views.")
            feats.append(f)
            labels = y
    finally:
        net.fc = fc
    return (feats[0] if views == 1 else torch.stack(feats)), labels


@torch.no_grad()
def stage_features(backbone: nn.Module, loader: Iterable, *,
                   device: str | torch.device | None = None) -> dict[str, Tensor]:
    """Each stage's feature maps averaged over space, for every image of ``loader``.

    Args:
        backbone: has ``features(x) -> {"layer1": ..., "layer4": ...}`` (the book's
            :class:`~imagenet_book.models.backbone.ResNetBackbone` and
            :class:`~imagenet_book.models.efficientnet_lite.EfficientNetLiteBackbone`); run in
            evaluation mode (its BatchNorm statistics as they are), then put back as it was.
        loader: batches whose first element is the images, float32 ``(B, 3, H, W)``, in a fixed order.
        device: default: where ``backbone``'s parameters are.

    Returns:
        ``{"layer1": float32 (N, C1), ..., "layer4": (N, C4)}`` on the CPU.

    Taught in: chapters/06_pretraining.ipynb.
    """
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    parts: dict[str, list[Tensor]] = {}
    try:
        for batch in loader:
            for name, fmap in backbone.features(batch[0].to(device)).items():
                parts.setdefault(name, []).append(fmap.float().mean((2, 3)).cpu())
    finally:
        backbone.train(was_training)
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def split_per_class(labels: Tensor, counts: Sequence[int | None], *, seed: int = 0) -> list[Tensor]:
    """Disjoint index sets with ``counts[k]`` examples of every class in set ``k``.

    Each class's examples are shuffled by a generator seeded with ``(seed, class)`` and cut in
    order: the first ``counts[0]`` go to set 0, the next ``counts[1]`` to set 1, ...; a
    ``None`` count takes all that are left. Classes with fewer examples fill the sets in order.

    Args:
        labels: int64 ``(N,)``.
        counts: examples per class in each set, e.g. ``(10, 20, None)`` for train/val/test.
        seed: the shuffle's seed.

    Returns:
        One sorted int64 index tensor per set.

    Raises:
        ValueError: a negative count, or a ``None`` before the last set.

    Taught in: chapters/10_practice.ipynb.
    """
    counts = list(counts)
    if any(c is not None and c < 0 for c in counts) or None in counts[:-1]:
        raise ValueError(f"counts must be ints >= 0, with None (all the rest) only last; got {counts}.")
    sets: list[list[int]] = [[] for _ in counts]
    labels = torch.as_tensor(labels)
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten().numpy()
        idx = idx[np.random.default_rng([seed, int(c)]).permutation(len(idx))]
        start = 0
        for k, n in enumerate(counts):
            stop = len(idx) if n is None else start + n
            sets[k] += idx[start:stop].tolist()
            start = stop
    return [torch.tensor(sorted(s), dtype=torch.int64) for s in sets]


class FeatureViews(torch.utils.data.Dataset):
    """Stored features of ``V`` augmented views per image; each access returns a random view.

    Item ``i`` is ``(features[v, i], labels[i])`` with ``v`` drawn from the global torch RNG (which
    the engine's checkpoints save, so a resumed run draws the same views). With
    :class:`~imagenet_book.engine.BatchLoader` this is data augmentation for a head trained on
    frozen features: every epoch sees another crop of each image.

    Args:
        features: float32 ``(V, N, D)``.
        labels: int64 ``(N,)``.

    Taught in: chapters/10_practice.ipynb.
    """

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        if features.ndim != 3 or features.shape[1] != len(labels):
            raise ValueError(f"FeatureViews needs features (V, N, D) and labels (N,); got "
                             f"{tuple(features.shape)} and {tuple(labels.shape)}.")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        v = int(torch.randint(len(self.features), ()))
        return self.features[v, i], int(self.labels[i])


def make_head(in_features: int, num_classes: int, *, hidden: int | None = None,
              dropout: float = 0.0) -> nn.Sequential:
    """A classifier head: ``Dropout(p) -> Linear`` or, with ``hidden``, an MLP
    ``Dropout -> Linear -> ReLU -> Dropout -> Linear``.

    Shapes: float32 ``(B, in_features)`` -> logits ``(B, num_classes)``.

    Taught in: chapters/10_practice.ipynb.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))


def train_val_gap(history: Any, epoch: int | None = None) -> dict[str, float]:
    """Training and validation top-1 at one epoch of a History, and their difference.

    Args:
        history: an :class:`~imagenet_book.engine.History` with validation metrics.
        epoch: which epoch (1-based, as recorded); default the last.

    Returns:
        ``{"epoch", "train_top1", "val_top1", "gap", "train_loss", "val_loss"}``; ``gap`` is
        ``train_top1 - val_top1`` (positive: the model does better on what it was trained on).
        The training numbers are the epoch's running averages (see chapter 06).

    Taught in: chapters/10_practice.ipynb.
    """
    rows = history.epochs
    r = rows[-1] if epoch is None else next(r for r in rows if r["epoch"] == epoch)
    return {"epoch": r["epoch"], "train_top1": r["train_top1"], "val_top1": r["val_top1"],
            "gap": r["train_top1"] - r["val_top1"], "train_loss": r["train_loss"],
            "val_loss": r["val_loss"]}


@dataclass
class EarlyStoppingResult:
    """What :func:`fit_early_stopping` returns.

    Attributes:
        history: the :class:`~imagenet_book.engine.History` of the epochs that ran.
        best_epoch: the epoch whose weights ``net`` now holds (best ``metric``).
        stopped_epoch: the last epoch that ran.
        best: the validation metrics of ``best_epoch``.
        stopped_early: whether it stopped before ``config.epochs``.

    Taught in: chapters/10_practice.ipynb.
    """

    history: Any
    best_epoch: int
    stopped_epoch: int
    best: dict[str, float]
    stopped_early: bool


def fit_early_stopping(net: nn.Module, train_loader: Any, val_loader: Iterable, config: Any, *,
                       patience: int = 3, metric: str = "val_loss", min_delta: float = 0.0,
                       **fit_kwargs: Any) -> EarlyStoppingResult:
    """Train with :func:`~imagenet_book.engine.fit` and an
    :class:`~imagenet_book.engine.EarlyStopping` callback: stop after ``patience`` epochs without
    a better ``metric``; leave ``net`` with the weights of its best epoch.

    The epochs that run are exactly those of an uninterrupted ``fit`` with the same ``config``
    (same learning-rate schedule over ``config.epochs``, same batches), only cut short.

    Args:
        net: the network (trained in place).
        train_loader, val_loader: as for ``fit`` (a validation loader is required).
        config: the :class:`~imagenet_book.recipe.TrainConfig` (its ``epochs`` is the most).
        patience: epochs without improvement before stopping.
        metric: ``"val_loss"`` (lower is better) or ``"val_top1"`` (higher is better).
        min_delta: an improvement must beat the best by more than this.
        fit_kwargs: passed on to ``fit`` (``device``, ``amp``, ``progress``, ``checkpoint_dir``,
            ...; not ``max_steps`` or ``callbacks``).

    Returns:
        An :class:`EarlyStoppingResult`.

    Taught in: chapters/10_practice.ipynb.
    """
    if metric not in ("val_loss", "val_top1"):
        raise ValueError(f"metric must be 'val_loss' or 'val_top1', got {metric!r}.")
    if val_loader is None:
        raise ValueError("Early stopping needs a validation loader.")
    for key in ("max_steps", "callbacks"):
        if key in fit_kwargs:
            raise TypeError(f"fit_early_stopping sets {key} itself.")
    stop = engine.EarlyStopping(metric, "max" if metric == "val_top1" else "min", patience, min_delta)
    history = engine.fit(net, train_loader, val_loader, config, callbacks=[stop], **fit_kwargs)
    stopped = history.epochs[-1]["epoch"]
    return EarlyStoppingResult(history, stop.best_epoch, stopped, stop.best, stopped < config.epochs)
