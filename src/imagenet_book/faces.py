"""Face verification as transfer learning: Eigenfaces, pretrained features, a fine-tuned embedding.

Face verification asks of two photos: the same person or not? A model maps each photo to an
embedding; the pair's score is the cosine similarity of the two embeddings; a threshold chosen
on training pairs turns scores into answers. The book compares four embeddings on LFW's
protocol (:mod:`imagenet_book.data.lfw`), all through :func:`verify_folds`:

* ``"eigenfaces"``: the classical baseline (Turk & Pentland, 1991): PCA of grey 32 x 32 face
  crops (:func:`eigenfaces`), fit on the training folds' images; a face is its coordinates on
  the first 100 principal components, **not whitened** by default (the published Eigenfaces
  figure on LFW, about 60%, is for the plain projection; ``whiten=True`` divides each
  coordinate by its standard deviation);
* ``"features"``: the pretrained backbone's pooled features as they are (centred by the
  training images' mean: ReLU features are all positive, and cosine similarity around the
  origin would see every face as alike);
* ``"finetune"``: the backbone plus a small embedding layer (:class:`FaceEmbedder`), trained
  with ArcFace's additive angular margin (:func:`imagenet_book.losses.arcface_loss`, derived
  there) to tell apart the people of the training folds (:class:`MarginEmbedding`, through the
  book's one loop :func:`imagenet_book.engine.fit`), the backbone at a tenth of the rate and its
  BatchNorm statistics kept as pretrained (the book's fine-tuning rule,
  :data:`~imagenet_book.recipe.FREEZE_BN`; re-estimated from batches of 64 faces, they put the
  embedding below the raw features: ``bench/results/lfw-arcface-dev-2026-12-04-cpu.log``); the
  class centres start imprinted from the photos (:func:`imprint_centres`);
* ``"scratch"``: the same network from random weights, everything at one rate.

After training, the BatchNorm statistics that training moved (all of scratch's; only the
embedding layer's when fine-tuning keeps the backbone's) are recomputed over the training photos
with the final weights (``precise_bn``, :func:`imagenet_book.engine.recompute_bn`): a network
trained from random weights for a few hundred steps otherwise evaluates with running averages
of weights it no longer has.

**The protocol** (:func:`rotation`): for each fold in turn, train on the people of the other
folds (every image of theirs on disk; never an image of a held-out person), choose the
threshold that maximises the accuracy on training pairs (:func:`best_threshold`), and measure
the accuracy on the held-out fold's pairs; report the mean and standard deviation over the
rotations, and the ROC curve of the held-out scores (:func:`roc_curve`), as LFW reports.

Which training pairs choose the threshold matters once the embedding is trained on the
training folds' people: it then tells *those* people apart far better than new ones (on the
real 5-fold subset, an ArcFace embedding trained on 4 folds put every same-person training
pair above a cosine of 0.99), so a threshold chosen on their pairs is far too strict for the
held-out fold. By default (``validation=True``) one of the other folds, the one after the
held-out fold, is kept out of training: its people are as new to the embedding as the test
fold's, and its pairs choose the threshold. Every method follows the same rule (Eigenfaces
and the features lose nothing by it); ``validation=False`` chooses on all training folds'
pairs, LFW's protocol for embeddings trained elsewhere.
Photos are embedded as they are and mirrored, and the two embeddings averaged (``flip=True``).

**A caveat the book repeats.** LFW is a research benchmark of news photos of public figures.
Its creators warn that no result on it shows that a system is fit for use on people: it has
few children, old people or women, many ethnicities barely or not at all, little variation in
pose, light or occlusion, and it is too small to test a system thoroughly; and verification
on it says little about recognising a face among many (1:N). A number here measures how much
transfer learning helps on a benchmark, nothing more.

Taught in: chapters/11_self_supervised.ipynb.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import engine, imagenet1k, losses, tasks
from .data.lfw import FaceFold, FacePair, LFWSource, lfw_source, load_faces
from .engine import BatchLoader
from .finetune import IMAGENET1K, IMAGENET1K_RESNET18, backbone_from_checkpoint, resolve_checkpoint
from .models.backbone import ResNetBackbone
from .models.resnet import resnet18
from .recipe import (ARC_MARGIN, ARC_SCALE, EIGEN_COMPONENTS, EIGEN_SIZE, FACE_EMBED_DIM, FREEZE_BN, TrainConfig,
                     face_recipe, face_sizes)

__all__ = ["FACE_METHODS", "ROC", "Eigenfaces", "FaceEmbedder", "FoldResult", "MarginEmbedding", "Rotation",
           "VerificationResult", "best_threshold", "eigenfaces", "embed", "face_backbone", "grey_faces",
           "imprint_centres", "roc_curve", "rotation", "verification_scores", "verify_folds"]

#: The four embeddings :func:`verify_folds` compares.
FACE_METHODS = ("eigenfaces", "features", "finetune", "scratch")


# ------------------------------------------------------------------------------- Eigenfaces


def grey_faces(images: Tensor, size: int = EIGEN_SIZE) -> Tensor:
    """Face crops as grey vectors: luma ``0.299 R + 0.587 G + 0.114 B``, area-resized to ``size``.

    Args:
        images: uint8 ``(N, 3, H, W)`` (or float in ``[0, 1]``).
        size: side of the grey image.

    Returns:
        float32 ``(N, size * size)`` in ``[0, 1]``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    grey = (x * luma).sum(1, keepdim=True)
    if grey.shape[-1] != size or grey.shape[-2] != size:
        grey = F.interpolate(grey, size=(size, size), mode="area")
    return grey.flatten(1)


@dataclass
class Eigenfaces:
    """A PCA of grey face crops: the mean face and the principal components ("eigenfaces").

    Attributes:
        mean: float32 ``(D,)``, ``D = size * size``.
        components: float32 ``(K, D)``, orthonormal rows, by decreasing variance.
        std: float32 ``(K,)``: the standard deviation of the training faces along each.
        size: side of the grey crops. whiten: whether :meth:`project` divides by ``std``.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    mean: Tensor
    components: Tensor
    std: Tensor
    size: int
    whiten: bool = False

    def project(self, images: Tensor) -> Tensor:
        """Coordinates of faces on the components: float32 ``(N, K)`` for images ``(N, 3, H, W)``
        (divided by ``std`` when whitening)."""
        z = (grey_faces(images, self.size) - self.mean) @ self.components.T
        return z / self.std.clamp(min=1e-8) if self.whiten else z

    def reconstruct(self, codes: Tensor) -> Tensor:
        """The grey faces ``(N, size, size)`` that unwhitened coordinates ``(N, K)`` describe."""
        return (self.mean + codes @ self.components).view(-1, self.size, self.size)


def eigenfaces(images: Tensor, num_components: int = EIGEN_COMPONENTS, *, size: int = EIGEN_SIZE,
               whiten: bool = False) -> Eigenfaces:
    """Fit Eigenfaces: the PCA of the training faces (:func:`grey_faces`), by an SVD.

    With ``X`` the centred faces ``(N, D)``, ``X = U S V^T``: the rows of ``V^T`` are the
    principal directions (each an image, an "eigenface"), ``S_k^2 / (N - 1)`` the variance along
    direction ``k``. The first ``K`` rows are kept.

    Args:
        images: the training faces, uint8 ``(N, 3, H, W)``.
        num_components: ``K`` (at most ``min(N, D)``).
        size: side of the grey crops.
        whiten: :meth:`Eigenfaces.project` divides by each component's standard deviation.

    Returns:
        An :class:`Eigenfaces`.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    X = grey_faces(images, size)
    mean = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)
    k = min(num_components, len(S))
    return Eigenfaces(mean, Vh[:k].contiguous(), S[:k] / math.sqrt(max(len(X) - 1, 1)), size, whiten)


# ------------------------------------------------------------------------------- the network


class FaceEmbedder(nn.Module):
    """A face-embedding network: a backbone, average pooling, ``Linear -> BatchNorm1d``, and the
    class centres ArcFace trains against.

    Shapes: float32 ``(N, 3, H, W)`` (normalised with ``input_mean`` / ``input_std``) ->
    ``forward``: float32 ``(N, embed_dim)``, not normalised (cosine similarity ignores length).

    Attributes:
        backbone: a :class:`~imagenet_book.models.ResNetBackbone` (or EfficientNet-Lite one).
        head: ``AdaptiveAvgPool2d(1) -> Flatten -> Linear(out_channels, embed_dim) -> BatchNorm1d``.
        centres: float32 ``(num_classes, embed_dim)``: ``W`` of :func:`~imagenet_book.losses.arcface_loss`,
            one per training person; used for training only.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, embed_dim: int = FACE_EMBED_DIM) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, embed_dim),
                                  nn.BatchNorm1d(embed_dim))
        self.centres = nn.Parameter(torch.randn(num_classes, embed_dim) / math.sqrt(embed_dim))
        self.input_mean, self.input_std = backbone.input_mean, backbone.input_std

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


@torch.no_grad()
def imprint_centres(net: FaceEmbedder, images: Tensor, labels: Tensor, *, batch_size: int = 256,
                    device: str | torch.device | None = None) -> Tensor:
    """Weight imprinting (Qi et al., 2018): each class centre starts as its photos' mean direction.

    A short run cannot wait for a thousand random centres to find their people: with a few
    photos per person, each centre is updated a handful of times, and meanwhile the loss
    pulls the (pretrained) embedding towards random directions. Imprinting puts every centre
    where its photos already are, ``W_c = normalise(mean_i normalise(f(x_i)))`` over person
    ``c``'s photos, so training starts from the network's own view of the people and refines
    it. The network runs in the mode it is in (the caller puts it in training mode, so that
    its BatchNorm layers normalise as they will in training; their running statistics move as
    in a training step) with no gradients, in near-equal chunks of at most ``batch_size``.

    Args:
        net: a :class:`FaceEmbedder`; its ``centres`` are overwritten.
        images: uint8 ``(N, 3, H, W)``, the training photos; labels: int64 ``(N,)``, each
            class present.
        device: default: where ``net``'s parameters are.

    Returns:
        The new centres, float32 ``(C, D)``, unit rows.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    sums = torch.zeros_like(net.centres)
    for index, X in _chunks(images, math.ceil(len(images) / batch_size), net, device):
        sums.index_add_(0, labels[index].to(sums.device), F.normalize(net(X).float(), dim=1))
    net.centres.copy_(F.normalize(sums, dim=1))
    return net.centres.detach()


def _chunks(images: Tensor, count: int, net: nn.Module, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    """``images`` in ``count`` (at least 1) near-equal consecutive chunks: ``(indices, the chunk
    normalised for net, on device)``."""
    for index in torch.arange(len(images)).tensor_split(max(1, count)):
        yield index, _normalise(images[index].to(device), net.input_mean, net.input_std)


class _Pooled(nn.Module):
    """A backbone's features averaged over space: ``(N, 3, H, W) -> (N, out_channels)``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_mean, self.input_std = backbone.input_mean, backbone.input_std

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x).mean((2, 3))


def face_backbone(cfg: Any, checkpoint: str | os.PathLike[str] | None = None, *, pretrained: bool = True,
                  arch: str = "resnet18") -> nn.Module:
    """The backbone a face embedding starts from.

    Args:
        cfg: from ``imagenet_book.start()``.
        checkpoint: a pretraining checkpoint (chapter 06's, or any file
            :func:`imagenet_book.pretrain.pretrain` writes); ``None``: chapter 06's default for
            this profile (:func:`~imagenet_book.finetune.resolve_checkpoint`);
            :data:`~imagenet_book.finetune.IMAGENET1K`: the packaged ImageNet-1k
            EfficientNet-Lite0 (offline); :data:`~imagenet_book.finetune.IMAGENET1K_RESNET18`:
            torchvision's ImageNet-1k ResNet-18 (downloaded: online only).
        pretrained: ``False``: the same architecture with random weights (from torch's global
            generator): "from scratch". With ``checkpoint=None`` that is a standard ResNet-18.
        arch: the architecture a checkpoint must hold.

    Returns:
        A backbone with ``out_channels``, ``input_mean``, ``input_std``, ``checkpoint``.

    Raises:
        PretrainedNotFoundError: no checkpoint file (the message says how to make it).
        PretrainError: the file is not a pretraining checkpoint of ``arch``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if isinstance(checkpoint, str) and checkpoint == IMAGENET1K:
        return imagenet1k.efficientnet_lite0_backbone(pretrained=pretrained)
    if isinstance(checkpoint, str) and checkpoint == IMAGENET1K_RESNET18:
        if not pretrained:
            return ResNetBackbone(resnet18(), arch="resnet18")
        return ResNetBackbone(imagenet1k.resnet18_imagenet1k(), arch="resnet18",
                              checkpoint=imagenet1k.resnet18_weights_file(), img_size=224)
    if not pretrained:
        return backbone_from_checkpoint(checkpoint, arch, pretrained=False)
    return backbone_from_checkpoint(resolve_checkpoint(cfg, checkpoint, arch), arch)


# ------------------------------------------------------------------------------- the task


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


class _MarginMeter(tasks.Meter):
    def __init__(self, scale: float, margin: float) -> None:
        self.scale, self.margin = scale, margin
        self.sums: Tensor | None = None  # loss sum, hits, examples

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        X, y = batch[0], batch[1]
        logits = losses.arcface_logits(net(X).float(), _unwrap(net).centres.float(), y, self.scale, self.margin)
        row = torch.stack([F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float(),
                           torch.tensor(float(len(y)), device=logits.device)])
        self.sums = row if self.sums is None else self.sums + row

    def compute(self, world: tasks.World = tasks.World()) -> dict[str, Any]:
        loss, hits, n = tasks.all_sum(self.sums if self.sums is not None else torch.zeros(3), world).tolist()
        if n == 0:
            raise ValueError("evaluate(): the loader yielded no examples")
        return {"loss": loss / n, "top1": hits / n}


@dataclass
class MarginEmbedding(tasks.Task):
    """Training a face embedding with ArcFace's margin loss: each training person is a class.

    Batches ``(X, y)``: float ``(B, 3, H, W)`` faces, int64 ``(B,)`` person indices. The network
    is a :class:`FaceEmbedder` (its ``centres`` are the classes). ``training_step`` returns
    ``{"loss", "top1"}`` (``top1``: the margin logits' argmax is the person); the meter the
    same over a labelled loader. Modes as for the other tasks (:data:`~imagenet_book.tasks.MODES`):
    ``"finetune"`` trains the backbone at ``backbone_lr_scale`` times the rate, ``"scratch"``
    everything at one rate.

    Attributes:
        scale, margin: ArcFace's ``s`` and ``m`` (:func:`~imagenet_book.losses.arcface_logits`).

    Taught in: chapters/11_self_supervised.ipynb.
    """

    scale: float = ARC_SCALE
    margin: float = ARC_MARGIN
    primary: ClassVar[str] = "top1"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "top1")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        X, y = batch[0], batch[1]
        logits = losses.arcface_logits(net(X).float(), _unwrap(net).centres.float(), y, self.scale, self.margin)
        return {"loss": F.cross_entropy(logits, y), "top1": (logits.detach().argmax(1) == y).float().mean()}

    def meter(self) -> tasks.Meter:
        return _MarginMeter(self.scale, self.margin)


# ------------------------------------------------------------------------------- scores and thresholds


def _normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - m) / s


@torch.no_grad()
def embed(net: nn.Module, images: Tensor, *, flip: bool = True, batch_size: int = 256,
          device: str | torch.device | None = None) -> Tensor:
    """Embeddings of face crops (eval mode, no gradients); with ``flip``, the mean of the
    embeddings of each photo and of its mirror image (faces are nearly symmetric: averaging
    the two removes some of the pose).

    Args:
        net: ``(N, 3, H, W) -> (N, D)``, with ``input_mean`` / ``input_std`` (a
            :class:`FaceEmbedder`, or a pooled backbone).
        images: uint8 ``(N, 3, H, W)``.
        flip: average with the mirrored photo.
        batch_size: photos per forward pass.
        device: default: where ``net``'s parameters are.

    Returns:
        float32 ``(N, D)`` on the CPU (not normalised).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            X = _normalise(images[i:i + batch_size].to(device), net.input_mean, net.input_std)
            e = net(X).float()
            if flip:
                e = (e + net(X.flip(3)).float()) / 2
            out.append(e.cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def verification_scores(embeddings: Tensor, pairs: Tensor, *, center: Tensor | None = None) -> Tensor:
    """The cosine similarity of each pair's two embeddings.

    Flipped-image averaging happens before, in :func:`embed` (``flip=True``).

    Args:
        embeddings: float ``(M, D)``.
        pairs: int64 ``(P, 2)``: row indices into ``embeddings``.
        center: float ``(D,)`` subtracted from every embedding first (e.g. the training
            images' mean), or ``None``.

    Returns:
        float32 ``(P,)`` in ``[-1, 1]``: higher = more alike.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    e = embeddings.float() if center is None else embeddings.float() - center
    e = F.normalize(e, dim=1)
    return (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1)


def best_threshold(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """The threshold ``t`` that maximises the accuracy of "same person iff score > t".

    Only the cut points between consecutive distinct scores matter (and below all, above all):
    sorted once, the accuracy of every cut is the number of different-person pairs below it
    plus the number of same-person pairs above it, both running sums. The threshold returned is
    the midpoint of the best cut (the first, lowest, among equal accuracies).

    Args:
        scores: float ``(P,)``; labels: ``(P,)``, 1 for same person, 0 for different.

    Returns:
        ``(threshold, accuracy)`` on these pairs.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if len(scores) == 0:
        raise ValueError("best_threshold needs at least one pair.")
    s, order = torch.sort(scores.double())
    y = labels[order].double()
    zero = torch.zeros(1, dtype=torch.float64)
    negatives_below = torch.cat([zero, torch.cumsum(1 - y, 0)])  # cut i: indices < i say "different"
    positives_above = y.sum() - torch.cat([zero, torch.cumsum(y, 0)])
    accuracy = (negatives_below + positives_above) / len(s)
    valid = torch.ones(len(s) + 1, dtype=torch.bool)
    valid[1:-1] = s[1:] > s[:-1]  # a cut between equal scores cannot be realised
    i = int(torch.where(valid, accuracy, torch.tensor(-1.0, dtype=torch.float64)).argmax())
    if i == 0:
        t = s[0].item() - 1.0
    elif i == len(s):
        t = s[-1].item() + 1.0
    else:
        t = (s[i - 1].item() + s[i].item()) / 2
    return t, accuracy[i].item()


class ROC(NamedTuple):
    """A ROC curve: float64 ``fpr``, ``tpr`` and ``thresholds`` ``(T,)``, and the area ``auc``.

    Point ``k`` is "same person iff score >= thresholds[k]"; the first point is ``(0, 0)``
    (threshold ``+inf``), the last ``(1, 1)``.
    """

    fpr: Tensor
    tpr: Tensor
    thresholds: Tensor
    auc: float


def roc_curve(scores: Tensor, labels: Tensor) -> ROC:
    """The ROC curve of verification scores: true-positive rate (same-person pairs accepted)
    against false-positive rate (different-person pairs accepted), one point per distinct score.

    Args:
        scores: float ``(P,)``; labels: ``(P,)``, 1 same, 0 different (both present).

    Returns:
        A :class:`ROC`; ``auc`` by the trapezoid rule (the probability that a random
        same-person pair scores above a random different-person one, ties counting half).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    y = labels.double()
    positives, negatives = y.sum().item(), (1 - y).sum().item()
    if positives == 0 or negatives == 0:
        raise ValueError("roc_curve needs same-person and different-person pairs.")
    s, order = torch.sort(scores.double(), descending=True)
    y = y[order]
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] < s[:-1]  # the last index of each distinct score
    tpr = torch.cumsum(y, 0)[last] / positives
    fpr = torch.cumsum(1 - y, 0)[last] / negatives
    zero = torch.zeros(1, dtype=torch.float64)
    fpr, tpr = torch.cat([zero, fpr]), torch.cat([zero, tpr])
    thresholds = torch.cat([torch.tensor([math.inf], dtype=torch.float64), s[last]])
    return ROC(fpr, tpr, thresholds, float(torch.trapezoid(tpr, fpr)))


# ------------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Rotation:
    """One rotation of the protocol: a held-out fold and what may be trained on.

    Attributes:
        test: the held-out :class:`~imagenet_book.data.lfw.FaceFold`.
        validation: the fold whose pairs choose the threshold and whose people are kept out
            of training, or ``None`` (the threshold then comes from the training pairs).
        train_people: the people of the training folds, minus anyone of the test or
            validation fold (sorted).
        train_images: every photo of theirs on disk, ``(name, index)`` keys.
        train_pairs: the training folds' pairs that name only training people.
        threshold_pairs: the pairs that choose the threshold: the validation fold's (those
            naming no test person), else ``train_pairs``.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    test: FaceFold
    validation: FaceFold | None
    train_people: tuple[str, ...]
    train_images: tuple[tuple[str, int], ...]
    train_pairs: tuple[FacePair, ...]
    threshold_pairs: tuple[FacePair, ...]


def _people(fold: FaceFold) -> set[str]:
    return set(fold.people) | fold.pair_people


def rotation(source: LFWSource, held_out: int, *, validation: bool = True) -> Rotation:
    """The rotation that holds out fold ``held_out`` (1-based, :attr:`FaceFold.number`).

    With ``validation``, the fold after it (in file order, wrapping round) is the validation
    fold: kept out of training, its pairs choose the threshold (see the module docstring).
    The other folds are the training folds. LFW's folds are identity-disjoint, so nothing is
    removed from them; a pairs file whose folds share a person (a hand-made one) still never
    trains on a test or validation person: that person's photos and pairs are left out of the
    training side (and a validation pair naming a test person is left out of the threshold).

    Raises:
        ValueError: no such fold; or ``validation`` with fewer than 3 folds.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    numbers = [f.number for f in source.folds]
    if held_out not in numbers:
        raise ValueError(f"No fold {held_out}: the folds are {numbers}.")
    if validation and len(numbers) < 3:
        raise ValueError(f"A validation fold needs 3 folds or more, {source.pairs_file} has {len(numbers)}: "
                         "use validation=False.")
    k = numbers.index(held_out)
    test = source.folds[k]
    val = source.folds[(k + 1) % len(numbers)] if validation else None
    banned = _people(test) | (_people(val) if val is not None else set())
    others = [f for f in source.folds if f is not test and f is not val]
    people = tuple(sorted({p for f in others for p in f.people} - banned))
    pairs = tuple(p for f in others for p in f.pairs if p.name1 not in banned and p.name2 not in banned)
    chooser = pairs if val is None else tuple(p for p in val.pairs if not {p.name1, p.name2} & _people(test))
    return Rotation(test, val, people, tuple(source.images_of(people)), pairs, chooser)


@dataclass
class FoldResult:
    """The result of one rotation.

    Its fields: ``number``, the held-out fold; ``validation``, the fold that chose the threshold
    (``None``: the training folds did); ``threshold``, the chosen one, where the accuracy on the
    pairs that chose it was ``train_accuracy``; ``accuracy``, on the held-out pairs; ``scores`` and
    ``labels``, the held-out pairs' float scores and int labels, each of shape ``(P,)``; ``roc``,
    their :class:`ROC`; ``train_people`` and ``train_images``, how many the embedding was trained
    on; ``seconds``, the wall time; ``history``, the training's
    :class:`~imagenet_book.engine.History` (``None`` if none).

    Taught in: chapters/11_self_supervised.ipynb.
    """

    number: int
    validation: int | None
    threshold: float
    train_accuracy: float
    accuracy: float
    scores: Tensor
    labels: Tensor
    roc: ROC
    train_people: int
    train_images: int
    seconds: float
    history: Any = None


@dataclass
class VerificationResult:
    """What :func:`verify_folds` returns.

    Its fields: ``method``, one of :data:`FACE_METHODS`; ``folds``, a :class:`FoldResult` per
    rotation; ``mean`` and ``std``, the held-out accuracy over the rotations (``std`` is the sample
    standard deviation, and :attr:`sem` is LFW's standard error); ``roc``, the ROC of all held-out
    scores together; ``description``, the data (:attr:`LFWSource.description`); ``caption``, one
    line for figures (method, backbone, sizes, data, profile); ``settings``, the sizes and recipe
    used; ``seconds``, the wall time; ``embedding``, what made the embedding, in words (the
    Eigenfaces' settings, or the backbone and how it was trained; the caption holds it too).

    Taught in: chapters/11_self_supervised.ipynb.
    """

    method: str
    folds: list[FoldResult]
    mean: float
    std: float
    roc: ROC
    description: str
    caption: str
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    embedding: str = ""

    @property
    def accuracies(self) -> list[float]:
        """The held-out accuracy of each rotation."""
        return [f.accuracy for f in self.folds]

    @property
    def sem(self) -> float:
        """The standard error of the mean accuracy, ``std / sqrt(number of folds)``."""
        return self.std / math.sqrt(len(self.folds))

    def row(self) -> dict[str, Any]:
        """The recorded-results row: ``{"run", "metric": "accuracy", "value": mean, "std", "sem",
        "folds", "auc"}``."""
        return {"run": self.method, "metric": "accuracy", "value": self.mean, "std": self.std, "sem": self.sem,
                "folds": self.accuracies, "auc": self.roc.auc}


class _Augment:
    """Training augmentation on the device: a random mirror image and a random shift of up to
    1/16 of the side (reflection padding) per face, then the backbone's normalisation. Draws
    from torch's global generator (the engine's checkpoints keep its state)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, images: Tensor) -> Tensor:
        x = _normalise(images, self.mean, self.std)
        n, _, h, w = x.shape
        flip = torch.rand(n) < 0.5
        x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
        pad = max(1, h // 16)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n)).tolist()
        return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _pair_index(pairs: Sequence[FacePair], row: dict[tuple[str, int], int]) -> tuple[Tensor, Tensor]:
    index = torch.tensor([[row[a], row[b]] for a, b in (p.images for p in pairs)], dtype=torch.int64)
    return index.reshape(-1, 2), torch.tensor([int(p.same) for p in pairs], dtype=torch.int64)


def _train_embedding(cfg: Any, method: str, checkpoint: Any, images: Tensor, labels: Tensor, num_classes: int,
                     recipe: TrainConfig, task: MarginEmbedding, seed: int, *, max_steps: int | None,
                     progress: bool, precise_bn: bool = True, amp: str | None = None,
                     channels_last: bool | None = None) -> tuple[nn.Module, Any]:
    torch.manual_seed(seed)  # the new layers' (and a scratch backbone's) weights
    net = FaceEmbedder(face_backbone(cfg, checkpoint, pretrained=method == "finetune"), num_classes).to(cfg.device)
    task.train_mode(net)
    imprint_centres(net, images, labels)
    loader = BatchLoader((images, labels), min(recipe.batch_size, len(images)), shuffle=True, seed=seed,
                         drop_last=True, device=cfg.device, transform_on_device=_Augment(net.input_mean, net.input_std))
    history = engine.fit(net, loader, None, recipe, task=task, device=cfg.device, progress=progress,
                         max_steps=max_steps, amp=amp, channels_last=channels_last)
    if precise_bn:  # the statistics training moved, recomputed with the final weights
        chunks = _chunks(images, len(images) // loader.batch_size, net, cfg.device)  # of batch_size or more: none of 1
        engine.recompute_bn(net, (X for _, X in chunks), task=task)
    return net.eval(), history


def verify_folds(cfg: Any, method: str = "finetune", *, checkpoint: str | os.PathLike[str] | None = None,
                 source: LFWSource | None = None, folds: Sequence[int] | None = None, img_size: int | None = None,
                 epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                 flip: bool = True, validation: bool = True, whiten: bool = False,
                 num_components: int = EIGEN_COMPONENTS,
                 scale: float = ARC_SCALE, margin: float = ARC_MARGIN, freeze_bn: bool = FREEZE_BN,
                 precise_bn: bool = True, amp: str | None = None, channels_last: bool | None = None,
                 max_steps: int | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> VerificationResult:
    """Face verification with one embedding, rotated over the folds (LFW's protocol).

    For each held-out fold (:func:`rotation`): fit the embedding on the training folds' people
    (Eigenfaces' PCA, or ArcFace training through :func:`imagenet_book.engine.fit`; the
    ``"features"`` embedding has nothing to fit but the centring mean), score the validation
    fold's pairs (or the training pairs) and choose the threshold (:func:`best_threshold`),
    score the held-out pairs (:func:`verification_scores`) and count the right answers.

    Args:
        cfg: from ``imagenet_book.start()``: the profile (sizes: :func:`~imagenet_book.recipe.face_sizes`),
            the device, the seed, the data and cache roots.
        method: ``"eigenfaces"``, ``"features"``, ``"finetune"`` or ``"scratch"``.
        checkpoint: the backbone of ``"features"`` / ``"finetune"`` (and the architecture of
            ``"scratch"``): see :func:`face_backbone` (a pretraining checkpoint, ``None`` for
            chapter 06's, or :data:`~imagenet_book.finetune.IMAGENET1K`).
        source: the faces; default :func:`~imagenet_book.data.lfw.lfw_source` ``(cfg)``.
        folds: the held-out folds to run (1-based); default all of them, except that a trained
            embedding (``"finetune"``, ``"scratch"``) runs the profile's ``rotations`` first ones
            (:data:`~imagenet_book.recipe.FACE_SIZES`: one under ``local``, to keep the chapter short).
        img_size, epochs, batch_size: default the profile's (:data:`~imagenet_book.recipe.FACE_SIZES`).
        lr: the peak rate of the new layers (default :data:`~imagenet_book.recipe.FACE_LR`).
        flip: embed every photo and its mirror image, and average (not for Eigenfaces).
        validation: choose the threshold on a validation fold kept out of training (default),
            else on the training folds' pairs (:func:`rotation`).
        whiten, num_components: Eigenfaces' settings.
        scale, margin: ArcFace's ``s`` and ``m``.
        freeze_bn: keep the pretrained backbone's BatchNorm statistics when fine-tuning
            (default :data:`~imagenet_book.recipe.FREEZE_BN`, as in chapters 07-10).
        precise_bn: after training, recompute the BatchNorm statistics that training moved (all
            of scratch's; the embedding layer's when the backbone's are kept) over the training
            photos with the final weights (:func:`~imagenet_book.engine.recompute_bn`).
        amp, channels_last: the precision and memory format of the training
            (:func:`imagenet_book.engine.fit`; ``None``: its choice for the device).
        max_steps: cut each training short (tests).
        progress: a bar per epoch. log: called with one line per step of the work.

    Returns:
        A :class:`VerificationResult` (mean and standard deviation over the rotations, per
        fold results, the ROC).

    Raises:
        ValueError: an unknown method or fold.
        PretrainedNotFoundError: ``"features"`` / ``"finetune"`` without a checkpoint file.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if method not in FACE_METHODS:
        raise ValueError(f"method must be one of {FACE_METHODS}, got {method!r}.")
    t0 = time.perf_counter()
    say = log if log is not None else (lambda _msg: None)
    source = source or lfw_source(cfg)
    sizes = face_sizes(cfg.profile.name)
    img_size = img_size or sizes["img_size"]
    recipe = face_recipe(epochs or sizes["epochs"], batch_size or sizes["batch_size"], mode=method, lr=lr,
                         img_size=img_size) if method in ("finetune", "scratch") else None
    every = [f.number for f in source.folds]
    trained = method in ("finetune", "scratch") and sizes.get("rotations") is not None
    numbers = list(folds) if folds is not None else every[:sizes["rotations"]] if trained else every
    keys = source.images_of({p for f in source.folds for p in f.people})
    row = {k: i for i, k in enumerate(keys)}
    images = load_faces(source, keys, img_size)
    note = engine.compute_note(amp, channels_last) if recipe is not None else ""
    say(f"verify {method}: {len(keys):,} photos at {img_size} px{note}, folds {numbers}, {source.description}")
    backbone_name = "-"
    features = None
    if method == "features":
        backbone = face_backbone(cfg, checkpoint).to(cfg.device)
        backbone_name = _backbone_name(backbone)
        features = embed(_Pooled(backbone), images, flip=flip, device=cfg.device)
    keep_bn = freeze_bn and method == "finetune"  # a random network has no statistics to keep
    results = []
    for number in numbers:
        t_fold = time.perf_counter()
        rot = rotation(source, number, validation=validation)
        train_rows = torch.tensor([row[k] for k in rot.train_images], dtype=torch.int64)
        history = None
        center = None
        if method == "eigenfaces":
            model = eigenfaces(images[train_rows], num_components, whiten=whiten)
            emb = model.project(images)
        elif method == "features":
            emb, center = features, features[train_rows].mean(0)
        else:
            people = {p: i for i, p in enumerate(rot.train_people)}
            labels = torch.tensor([people[name] for name, _ in rot.train_images], dtype=torch.int64)
            task = MarginEmbedding(mode=method, freeze_bn=keep_bn, scale=scale, margin=margin)
            net, history = _train_embedding(cfg, method, checkpoint, images[train_rows], labels, len(people),
                                            recipe, task, cfg.seed + number, max_steps=max_steps, progress=progress,
                                            precise_bn=precise_bn, amp=amp, channels_last=channels_last)
            backbone_name = _backbone_name(net.backbone)
            used = torch.tensor(sorted({row[k] for p in rot.threshold_pairs + rot.test.pairs for k in p.images}))
            part = embed(net, images[used], flip=flip, device=cfg.device)  # only the pairs' photos
            emb = torch.zeros(len(images), part.shape[1])
            emb[used] = part
        train_index, train_labels = _pair_index(rot.threshold_pairs, row)
        threshold, train_acc = best_threshold(verification_scores(emb, train_index, center=center), train_labels)
        test_index, test_labels = _pair_index(rot.test.pairs, row)
        scores = verification_scores(emb, test_index, center=center)
        accuracy = ((scores > threshold).long() == test_labels).float().mean().item()
        results.append(FoldResult(number, rot.validation.number if rot.validation else None, threshold, train_acc,
                                  accuracy, scores, test_labels, roc_curve(scores, test_labels),
                                  len(rot.train_people), len(rot.train_images), time.perf_counter() - t_fold,
                                  history))
        chose = f"fold {rot.validation.number}'s pairs" if rot.validation else "training pairs"
        say(f"verify {method}: fold {number}: accuracy {accuracy:.4f} (threshold {threshold:.3f}, {chose} "
            f"{train_acc:.4f}; trained on {len(rot.train_images):,} photos of {len(rot.train_people):,} people; "
            f"{results[-1].seconds:.0f} s)")
    accs = np.array([r.accuracy for r in results])
    pooled = roc_curve(torch.cat([r.scores for r in results]), torch.cat([r.labels for r in results]))
    what = {"eigenfaces": f"Eigenfaces ({num_components} components of grey {EIGEN_SIZE} px crops"
                          f"{', whitened' if whiten else ''})",
            "features": f"{backbone_name} pretrained features", "finetune": f"{backbone_name} fine-tuned with ArcFace",
            "scratch": f"{backbone_name} from scratch with ArcFace"}[method]
    settings = {"img_size": img_size, "flip": flip, "folds": numbers, "validation": validation,
                **({"whiten": whiten, "num_components": num_components} if method == "eigenfaces" else {}),
                **({"recipe": asdict(recipe), "scale": scale, "margin": margin, "freeze_bn": keep_bn,
                    "precise_bn": precise_bn,
                    **engine.compute_given(amp, channels_last)}
                   if recipe is not None else {})}
    result = VerificationResult(
        method, results, float(accs.mean()), float(accs.std(ddof=1)) if len(accs) > 1 else 0.0, pooled,
        source.description, f"profile {cfg.profile.name}: {what} at {img_size} px, {len(results)} rotations, on the "
        f"{source.description}", settings, time.perf_counter() - t0, what)
    say(f"verify {method}: {result.mean:.4f} +- {result.std:.4f} over {len(results)} folds ({result.seconds:.0f} s)")
    return result


def _backbone_name(backbone: nn.Module) -> str:
    start = getattr(backbone, "checkpoint", None)
    return f"{getattr(backbone, 'arch', type(backbone).__name__)} ({'from ' + start.name if start else 'random'})"
