"""Self-supervised pretraining: SimCLR built from the book's parts, trained by the book's one loop.

SimCLR (Chen et al., 2020) learns features from images alone. Each training step::

    X1, X2, _ = batch                          # two augmented views of the same N images; labels unused
    z1, z2 = net(X1), net(X2)                  # backbone -> pooled features h -> projection head -> z
    loss = nt_xent(z1, z2, temperature)        # each view must pick its partner among 2N - 1 candidates

The pieces, each where the book keeps its kind:

* **the two views**: :class:`~imagenet_book.data.fast.FastLoader` with ``views=2`` and
  :class:`~imagenet_book.data.fast.Photometric` colour distortion (chapter 06's decoded cache and
  batched random-resized crops, plus colour jitter, grayscale and optional blur), built by
  :func:`two_view_loader`; still resumable: every random number comes from the loader's
  ``(seed, epoch)`` generator;
* **the loss**: :func:`imagenet_book.losses.nt_xent` (re-exported here), cross-entropy over
  :func:`~imagenet_book.losses.contrastive_logits`: ``2N`` anchors, one positive and ``2N - 2``
  negatives each. It starts at about ``log(2N - 1)``, so a larger batch asks more of each
  embedding (more negatives to tell apart) and gives a better estimate of the contrast;
* **the network**: :class:`SimCLR`: a ``backbone`` (the book's ResNet without its classifier,
  :class:`~imagenet_book.models.backbone.ResNetBackbone`), global average pooling, and a
  :class:`ProjectionHead`; the loss sees the projection ``z``, transfer uses the features ``h``;
* **the task**: :class:`Contrastive`, a task of :func:`imagenet_book.engine.fit` like
  classification (no loop of its own); its meter reports the contrastive loss and how often the
  positive is the most similar of the ``2N - 1`` candidates (``top1``) on validation views.
  SimCLR needs no EMA teacher (BYOL and MoCo would keep one in a
  :class:`~imagenet_book.engine.Callback`'s ``on_step_end``);
* **evaluation without fine-tuning** (:func:`evaluate_frozen`): the pooled features of
  centre crops (:func:`encoder_features`), classified by the weighted k-NN of Wu et al. (2018)
  (:func:`knn_accuracy`) and by a linear probe (:func:`linear_probe`);
* **the run** (:func:`pretrain_simclr`): data, recipe (:func:`~imagenet_book.recipe.simclr_recipe`),
  training, evaluation and files, with the machinery of chapter 06's
  :func:`~imagenet_book.pretrain.pretrain` (:func:`~imagenet_book.pretrain.run_pretraining`: names,
  settings check, lock, resumable checkpoints, atomic writes). The file is a ResNet whose ``fc``
  is the linear probe, in the format of a supervised one, so the fine-tuning chapters load its
  backbone the same way (:func:`imagenet_book.finetune.backbone_from_checkpoint`, ``--from FILE``).

Under torchrun DDP each process contrasts its own slice of the batch: its negatives are the
``2N/P - 2`` of its slice (SimCLR gathers the embeddings of all devices).

Taught in: chapters/11_self_supervised.ipynb.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Any, Callable, ClassVar, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import engine
from .data.fast import FastLoader, ImageCache, Photometric
from .engine import BatchLoader
from .errors import BookError
from .losses import contrastive_logits, nt_xent
from .models.backbone import ResNetBackbone
from .pretrain import (PretrainResult, build_model, default_sizes, make_loaders, predict,
                       run_pretraining, run_settings)
from .probe import extract_features
from .recipe import (KNN_K, KNN_TEMPERATURE, PROBE_BATCH, PROBE_EPOCHS, SIMCLR_BLUR_P, SIMCLR_CROP_SCALE,
                     SIMCLR_GRAYSCALE_P, SIMCLR_HIDDEN, SIMCLR_HUE, SIMCLR_JITTER, SIMCLR_JITTER_P, SIMCLR_OUT,
                     SIMCLR_TEMPERATURE, SIMCLR_VAL_IMAGES, probe_recipe, simclr_recipe)
from .speed import num_threads
from .tasks import Meter, Task, World, all_sum

__all__ = ["Contrastive", "ProjectionHead", "SelfSupError", "SimCLR", "encoder_features", "evaluate_frozen",
           "knn_accuracy", "knn_scores", "linear_probe", "nt_xent", "pretrain_simclr", "simclr_net",
           "simclr_photometric", "to_classifier", "two_view_loader"]


class SelfSupError(BookError, ValueError):
    """A self-supervised setting that cannot be used (a temperature or ``k`` below 1, features
    and labels that do not match). The message names the setting and the fix.

    Taught in: chapters/11_self_supervised.ipynb.
    """


# ------------------------------------------------------------------------------- the network


class ProjectionHead(nn.Sequential):
    """SimCLR's projection head ``g``: ``Linear -> BatchNorm -> ReLU -> Linear``.

    The contrastive loss is computed on ``z = g(h)``, not on the backbone's features ``h``:
    ``g`` can throw away what the loss does not need (colour, orientation: what the views
    differ by), so ``h`` keeps more of what transfers (SimCLR, section 4.2).

    Shapes: float32 ``(B, in_features)`` -> ``(B, out_features)``.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    def __init__(self, in_features: int = 512, hidden: int = SIMCLR_HIDDEN, out_features: int = SIMCLR_OUT) -> None:
        super().__init__(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class SimCLR(nn.Module):
    """A backbone, global average pooling and a :class:`ProjectionHead`.

    Shapes: float32 ``(B, 3, H, W)`` -> ``forward``: projections ``z`` ``(B, out_features)``;
    :meth:`encode`: features ``h`` ``(B, backbone.out_channels)`` (what transfer uses).

    Attributes:
        backbone: e.g. a :class:`~imagenet_book.models.backbone.ResNetBackbone` (anything with
            ``out_channels`` that returns feature maps ``(B, C, h, w)``); the tasks' modes and
            :func:`to_classifier` know it by this name.
        pool: ``AdaptiveAvgPool2d(1)`` then ``Flatten``.
        projector: the :class:`ProjectionHead`.

    Taught in: chapters/11_self_supervised.ipynb.
    """

    def __init__(self, backbone: nn.Module, hidden: int = SIMCLR_HIDDEN, out_features: int = SIMCLR_OUT) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = ProjectionHead(backbone.out_channels, hidden, out_features)

    def encode(self, x: Tensor) -> Tensor:
        """The pooled backbone features ``h``: ``(B, backbone.out_channels)``."""
        return self.pool(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encode(x))


def simclr_net(arch: str = "resnet18", *, small_input: bool = False, hidden: int = SIMCLR_HIDDEN,
               out_features: int = SIMCLR_OUT) -> SimCLR:
    """A freshly initialised :class:`SimCLR` on the book's ``arch``
    (:func:`imagenet_book.pretrain.build_model` without its classifier, as a
    :class:`~imagenet_book.models.backbone.ResNetBackbone`).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    resnet = build_model(arch, small_input=small_input)
    return SimCLR(ResNetBackbone(resnet, arch=arch, small_input=small_input), hidden, out_features)


def to_classifier(net: SimCLR, fc: nn.Linear) -> nn.Module:
    """The network of :data:`imagenet_book.pretrain.ARCHS` with ``net``'s backbone and ``fc`` as
    its classifier (the projection head is left behind): what a supervised pretraining run
    saves, so the fine-tuning code loads its backbone the same way.

    Shapes: float32 ``(B, 3, H, W)`` -> logits ``(B, fc.out_features)``; on the CPU, eval mode.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    backbone = net.backbone
    resnet = build_model(backbone.arch, fc.out_features, small_input=backbone.small_input)
    weights = {**backbone.state_dict(), "fc.weight": fc.weight, "fc.bias": fc.bias}
    resnet.load_state_dict({k: v.detach().cpu() for k, v in weights.items()})
    return resnet.eval()


# ------------------------------------------------------------------------------- the task


def _contrast(net: nn.Module, batch: Sequence[Any], temperature: float) -> tuple[Tensor, Tensor]:
    """Both views through ``net`` in one pass (BatchNorm sees all ``2N``); the logits and targets."""
    z = net(torch.cat([batch[0], batch[1]])).float()
    z1, z2 = z.chunk(2)
    return contrastive_logits(z1, z2, temperature)


class _ContrastiveMeter(Meter):
    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.sums: Tensor | None = None  # loss sum, positives ranked first, anchors

    def update(self, net: nn.Module, batch: Sequence[Any]) -> None:
        logits, targets = _contrast(net, batch, self.temperature)
        row = torch.stack([F.cross_entropy(logits, targets, reduction="sum"),
                           (logits.argmax(1) == targets).sum().float(),
                           torch.tensor(float(len(targets)), device=logits.device)])
        self.sums = row if self.sums is None else self.sums + row

    def compute(self, world: World = World()) -> dict[str, Any]:
        sums = self.sums if self.sums is not None else torch.zeros(3)
        loss, hits, n = all_sum(sums, world).tolist()
        if n == 0:
            raise ValueError("evaluate(): the loader yielded no examples")
        return {"loss": loss / n, "top1": hits / n}


@dataclass
class Contrastive(Task):
    """Contrastive learning of two views (SimCLR): the NT-Xent loss, no labels.

    Batches ``(X1, X2, ...)``: float ``(N, 3, H, W)`` twice, two views of the same ``N`` images
    row by row; anything after them (a loader's labels) is ignored. ``training_step`` returns
    ``{"loss", "top1"}``: :func:`~imagenet_book.losses.nt_xent` at ``temperature``, and the
    fraction of the ``2N`` anchors whose most similar candidate is their positive. The meter
    returns the same two over an evaluation set (e.g. :func:`two_view_loader` with
    ``evaluation=True``); both depend on the batch size (more candidates, harder).

    Taught in: chapters/11_self_supervised.ipynb.
    """

    temperature: float = SIMCLR_TEMPERATURE
    primary: ClassVar[str] = "top1"
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "top1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise SelfSupError(f"The temperature of the contrastive loss must be a number > 0 (SimCLR uses "
                               f"0.1 to 0.5), got {self.temperature!r}: set temperature= (--temperature).")

    def training_step(self, net: nn.Module, batch: Sequence[Any]) -> dict[str, Tensor]:
        logits, targets = _contrast(net, batch, self.temperature)
        return {"loss": F.cross_entropy(logits, targets),
                "top1": (logits.detach().argmax(1) == targets).float().mean()}

    def meter(self) -> Meter:
        return _ContrastiveMeter(self.temperature)


# ------------------------------------------------------------------------------- the views


def simclr_photometric() -> Photometric:
    """SimCLR's colour distortion with the recipe's numbers (:data:`~imagenet_book.recipe.SIMCLR_JITTER`, ...).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    return Photometric(jitter=SIMCLR_JITTER, hue=SIMCLR_HUE, jitter_p=SIMCLR_JITTER_P,
                       grayscale_p=SIMCLR_GRAYSCALE_P, blur_p=SIMCLR_BLUR_P)


def _view_options(photometric: Photometric | None = None,
                  scale: tuple[float, float] = SIMCLR_CROP_SCALE) -> dict[str, Any]:
    return {"views": 2, "photometric": photometric or simclr_photometric(), "scale": scale}


class _SameViews:
    """The first ``batches`` batches of the loader's epoch 0, on every pass: the same views of
    the same images at every evaluation, so that epochs compare."""

    def __init__(self, loader: FastLoader, batches: int) -> None:
        self.loader, self.batches = loader, min(batches, len(loader))

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        self.loader.set_epoch(0)
        return islice(iter(self.loader), self.batches)


def two_view_loader(cache: ImageCache, batch_size: int, *, img_size: int, device: str | torch.device = "cpu",
                    seed: int = 0, evaluation: bool = False, photometric: Photometric | None = None,
                    scale: tuple[float, float] = SIMCLR_CROP_SCALE,
                    max_images: int | None = None) -> Any:
    """Batches ``(X1, X2, y)`` of two independently augmented views of the same images.

    A :class:`~imagenet_book.data.fast.FastLoader` with ``views=2``: per view its own
    random-resized crop (area fraction in ``scale``), flip and colour distortion
    (``photometric``, default :func:`simclr_photometric`), normalised with ImageNet's statistics.

    Args:
        cache: a decoded split (``loader.cache`` of any FastLoader of it).
        batch_size: ``N`` images per batch (``2N`` views).
        img_size: side of the views.
        device: where the batches are made.
        seed: with the epoch, fixes the order and every random draw.
        evaluation: ``False``: a training loader (shuffled, ``drop_last``, new views every epoch,
            resumable like every FastLoader). ``True``: the same views of the same (shuffled)
            images at every pass, at most ``max_images`` of them (whole batches), for the
            :class:`Contrastive` meter.

    Yields:
        ``(X1, X2, y)``: float32 ``(N, 3, img_size, img_size)`` twice, int64 ``(N,)`` on ``device``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    loader = FastLoader(cache, batch_size, train=True, out_size=img_size, device=device, seed=seed,
                        drop_last=len(cache) >= batch_size, **_view_options(photometric, scale))
    if not evaluation:
        return loader
    return _SameViews(loader, math.ceil((max_images or len(cache)) / batch_size))


# ------------------------------------------------------------------------------- evaluation


def encoder_features(net: nn.Module, loader: Any, *, device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The pooled backbone features of every image of ``loader`` (eval mode, no gradients).

    Args:
        net: a :class:`SimCLR` (its ``h``, not its projection), a classifier with an ``fc``
            (its input, :func:`imagenet_book.probe.extract_features`), anything with a
            ``backbone``, or a backbone itself (e.g.
            :func:`imagenet_book.finetune.backbone_from_checkpoint`'s): feature maps averaged
            over space.
        loader: batches ``(X, y)`` in a fixed order (centre crops: a FastLoader with ``train=False``).
        device: default: where ``net``'s parameters are.

    Returns:
        ``(features, labels)``: float32 ``(N, D)`` and int64 ``(N,)`` on the CPU.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if isinstance(getattr(net, "fc", None), nn.Module):
        return extract_features(net, loader, device=device)
    backbone = getattr(net, "backbone", net)
    encoder = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten()).train(backbone.training)
    return predict(encoder, loader, device)


def _check_features(train_features: Tensor, train_labels: Tensor, query_features: Tensor,
                    k: int, temperature: float) -> None:
    if not (isinstance(k, int) and k >= 1):
        raise SelfSupError(f"k of the k-NN classifier must be an int >= 1, got {k!r}: set k= (200 is usual).")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise SelfSupError(f"The temperature of the k-NN votes must be > 0, got {temperature!r}: set "
                           "temperature= (0.07 to 0.1 is usual).")
    if (train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]
            or len(train_features) != len(train_labels) or len(train_features) == 0):
        raise SelfSupError(f"k-NN needs training features (N, D) with N labels and query features (Q, D); got "
                           f"{tuple(train_features.shape)}, {tuple(train_labels.shape)} labels and "
                           f"{tuple(query_features.shape)}: compute both with the same network "
                           "(encoder_features) and keep the labels of the same loader.")


@torch.no_grad()
def knn_scores(train_features: Tensor, train_labels: Tensor, query_features: Tensor, *, k: int = KNN_K,
               temperature: float = KNN_TEMPERATURE, num_classes: int | None = None, chunk: int = 1024) -> Tensor:
    """The class votes of the weighted k-NN classifier of Wu et al. (2018).

    For each query ``q``: the cosine similarity ``s_i`` to every training feature, the ``k``
    most similar ones, and for each class ``c`` the score ``sum over those neighbours of class c
    of exp(s_i / temperature)``: near neighbours count more, and ``temperature`` says how much
    more. Queries go ``chunk`` at a time, so ``(chunk, N)`` similarities are in memory at once
    (Imagenette: 1024 x 9,469 floats, 39 MB).

    Args:
        train_features: float ``(N, D)``; train_labels: int64 ``(N,)`` in ``0 .. C-1``.
        query_features: float ``(Q, D)``.
        k: neighbours (at most ``N`` are used).
        temperature: of the votes, ``> 0``.
        num_classes: ``C``; default ``max(train_labels) + 1``.
        chunk: queries per step.

    Returns:
        float32 ``(Q, C)`` on the CPU; ``scores.argmax(1)`` is the prediction.

    Raises:
        SelfSupError: ``k < 1``, ``temperature <= 0``, or shapes that do not fit.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    _check_features(train_features, train_labels, query_features, k, temperature)
    bank = F.normalize(train_features.float(), dim=1)
    labels = train_labels.to(torch.int64)
    C = int(labels.max()) + 1 if num_classes is None else num_classes
    out = torch.zeros(len(query_features), C)
    for s in range(0, len(query_features), chunk):
        sim = F.normalize(query_features[s:s + chunk].float(), dim=1) @ bank.T
        top, idx = sim.topk(min(k, len(bank)), dim=1)
        out[s:s + chunk].scatter_add_(1, labels[idx], (top / temperature).exp())
    return out


def knn_accuracy(train_features: Tensor, train_labels: Tensor, val_features: Tensor, val_labels: Tensor, *,
                 k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> float:
    """Top-1 accuracy of the weighted k-NN classifier (:func:`knn_scores`) on ``val``: how well
    the features alone, without any training on the labels, separate the classes.

    Args:
        train_features, val_features: float ``(N, D)``, ``(Q, D)`` from the same network.
        train_labels, val_labels: int64 ``(N,)``, ``(Q,)``.
        k, temperature, chunk: as for :func:`knn_scores` (defaults :data:`~imagenet_book.recipe.KNN_K`,
            :data:`~imagenet_book.recipe.KNN_TEMPERATURE`: Wu et al.'s 200 neighbours).

    Returns:
        A float in ``[0, 1]``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if len(val_features) != len(val_labels):
        raise SelfSupError(f"{len(val_features)} validation features but {len(val_labels)} labels: take both "
                           "from the same loader.")
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    scores = knn_scores(train_features, train_labels, val_features, k=k, temperature=temperature,
                        num_classes=num_classes, chunk=chunk)
    return (scores.argmax(1) == val_labels.cpu()).float().mean().item()


def linear_probe(train_features: Tensor, train_labels: Tensor, val_features: Tensor, val_labels: Tensor, *,
                 num_classes: int | None = None, epochs: int = PROBE_EPOCHS, seed: int = 0,
                 device: str | torch.device = "cpu", progress: bool = False) -> tuple[nn.Linear, dict[str, float]]:
    """A linear classifier trained on frozen features with the book's loop; evaluated on ``val``.

    The features are centred on the training set's mean and divided by their overall standard
    deviation, one number (so one learning rate suits any backbone; a per-feature scale would
    blow up the features that are all but constant in training, as dead ReLU units are), a
    ``Linear(D, C)`` is trained with :func:`imagenet_book.engine.fit` and
    :func:`~imagenet_book.recipe.probe_recipe` (AdamW, cosine), and the scaling is folded into
    its weights: the returned layer takes the raw features (``W / std``, ``b - (W / std) mean``).

    Args:
        train_features, val_features: float ``(N, D)``, ``(Q, D)``.
        train_labels, val_labels: int64 ``(N,)``, ``(Q,)``.
        num_classes: ``C``; default: the largest label + 1.
        epochs: passes over the training features.
        seed: the layer's initial weights and the order of the batches.
        device: where it trains (small: the CPU is fine).

    Returns:
        ``(fc, metrics)``: the ``nn.Linear(D, C)`` on the CPU, and ``{"loss", "top1", "top5"}``
        on ``val`` after the last epoch.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if len(train_features) != len(train_labels) or len(val_features) != len(val_labels) or len(train_features) < 2:
        raise SelfSupError(f"The linear probe needs at least 2 training features with one label each and one "
                           f"label per validation feature; got {len(train_features)} / {len(train_labels)} and "
                           f"{len(val_features)} / {len(val_labels)}.")
    mean = train_features.float().mean(0)
    std = (train_features.float() - mean).pow(2).mean().sqrt().clamp(min=1e-12)
    C = num_classes or int(max(train_labels.max(), val_labels.max())) + 1
    world = engine.world()  # under torchrun every process trains it together: equal, whole batches
    batch = min(PROBE_BATCH, len(train_features))
    batch -= batch % world.size if world.size > 1 else 0
    torch.manual_seed(seed)
    fc = nn.Linear(train_features.shape[1], C)
    with num_threads(1 if torch.device(device).type == "cpu" else None):  # a tiny model: one thread is fastest
        history = engine.fit(
            fc, BatchLoader(((train_features.float() - mean) / std, train_labels), batch, seed=seed,
                            drop_last=world.size > 1),
            BatchLoader(((val_features.float() - mean) / std, val_labels), 1024, shuffle=False),
            replace(probe_recipe(epochs), batch_size=batch), device=device, progress=progress,
            evaluate_every=epochs)
    fc = fc.cpu()
    with torch.no_grad():
        fc.weight.div_(std)
        fc.bias.sub_(fc.weight @ mean)
    return fc.eval(), {k: float(history.final[k]) for k in ("loss", "top1", "top5")}


def evaluate_frozen(net: nn.Module, train_loader: Any, val_loader: Any, *, k: int = KNN_K,
                    temperature: float = KNN_TEMPERATURE, num_classes: int | None = None,
                    probe_epochs: int = PROBE_EPOCHS, seed: int = 0,
                    device: str | torch.device | None = None) -> tuple[dict[str, float], nn.Linear]:
    """How good a backbone's features are as they are: k-NN and linear-probe accuracy on ``val``.

    The features of both splits come from :func:`encoder_features` (one pass each, eval mode);
    the same function scores a SimCLR network, a supervised classifier or any backbone, so
    they compare on equal terms.

    Args:
        net: see :func:`encoder_features`.
        train_loader, val_loader: batches ``(X, y)`` of centre crops, in a fixed order (FastLoaders
            with ``train=False``); the labels are used here, and only here.
        k, temperature: of :func:`knn_accuracy`; num_classes, probe_epochs, seed: of
            :func:`linear_probe` (``num_classes``: the outputs of its layer, default: the largest label + 1).
        device: where the network runs; default: where its parameters are.

    Returns:
        ``(scores, fc)``: ``{"knn_top1", "probe_loss", "probe_top1", "probe_top5"}`` (floats),
        and the probe's layer (takes the raw features).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    train_f, train_y = encoder_features(net, train_loader, device=device)
    val_f, val_y = encoder_features(net, val_loader, device=device)
    knn = knn_accuracy(train_f, train_y, val_f, val_y, k=k, temperature=temperature)
    fc, probe = linear_probe(train_f, train_y, val_f, val_y, num_classes=num_classes, epochs=probe_epochs,
                             seed=seed)
    return {"knn_top1": knn, **{f"probe_{name}": value for name, value in probe.items()}}, fc


# ------------------------------------------------------------------------------- the run


def pretrain_simclr(cfg: Any, data: str = "imagenette", arch: str = "resnet18", *,
                    epochs: int | None = None, img_size: int | None = None, batch_size: int | None = None,
                    lr: float | None = None, temperature: float | None = None, small_input: bool = False,
                    out_dir: str | os.PathLike[str] | None = None, restart: bool = False,
                    checkpoint_every: int | None = None, max_steps: int | None = None, amp: str | None = None,
                    channels_last: bool | None = None, progress: bool = True,
                    log: Callable[[str], None] | None = print) -> PretrainResult:
    """Pretrain ``arch`` with SimCLR on the profile's ``data`` WITHOUT its labels; evaluate the
    frozen features (k-NN, linear probe); save a checkpoint the fine-tuning code loads.

    What it does, in order:

    1. **data** (:func:`imagenet_book.pretrain.make_loaders`): the training images as two views
       (:func:`two_view_loader`'s options); the validation images as centre crops;
    2. **model**: :func:`simclr_net` ``(arch)``, initialised from ``cfg.seed``;
    3. **training**: :func:`imagenet_book.engine.fit` with the :class:`Contrastive` task and
       :func:`~imagenet_book.recipe.simclr_recipe`, evaluated each epoch on
       :data:`~imagenet_book.recipe.SIMCLR_VAL_IMAGES` validation images in fixed views,
       with resumable checkpoints: the same call continues an interrupted run;
    4. **evaluation** (:func:`evaluate_frozen`): k-NN and linear-probe top-1 on the validation
       split, from the features of centre crops; the labels are used here and only here;
    5. **files** (:func:`imagenet_book.pretrain.run_pretraining`, shared with chapter 06's
       :func:`~imagenet_book.pretrain.pretrain`): ``<stem>.pt`` holds a ResNet whose backbone
       SimCLR trained and whose ``fc`` is the linear probe, in the supervised format
       (:func:`~imagenet_book.pretrain.read_pretrained` gives ``method == "simclr"``), so
       :func:`imagenet_book.finetune.backbone_from_checkpoint` and ``finetune --from FILE``
       use it as they use a supervised one; ``<stem>.json`` / ``.csv``: the History.

    The name is ``{arch}-simclr-{data}-{profile}[-standin][-{hash}]``
    (:func:`~imagenet_book.pretrain.checkpoint_stem` with ``method="simclr"``): the default
    sizes are :func:`~imagenet_book.recipe.simclr_sizes` of the profile, and other sizes get a
    name of their own. A finished run with the same settings is loaded instead of trained;
    nothing is replaced without ``restart=True``.

    Args:
        cfg: from ``imagenet_book.start()``.
        data: ``"imagenette"`` (default), ``"imagewoof"`` or ``"standin"``.
        arch: a name of :data:`imagenet_book.pretrain.ARCHS`.
        epochs, img_size, batch_size, temperature: override the profile's SimCLR sizes.
        lr: peak learning rate; default ``SIMCLR_BASE_LR * batch_size / 256``.
        small_input, out_dir, restart, checkpoint_every, max_steps, amp, channels_last, progress, log:
            as for :func:`imagenet_book.pretrain.pretrain` (the frozen evaluation computes in float32).

    Returns:
        A :class:`~imagenet_book.pretrain.PretrainResult`: ``net`` is the ResNet with the probe
        as ``fc``; ``metrics`` ``{"knn_top1", "probe_top1", "probe_top5", "probe_loss",
        "top1", "top5", "loss"}`` (the last three: the probe's, under the names of a supervised
        run) and ``"contrastive_loss"``, ``"contrastive_top1"`` (validation views, last epoch);
        ``train_loader``: the two-view loader; ``val_loader``: the centre crops.

    Raises:
        SelfSupError: a temperature that is not > 0.
        PretrainError, DatasetNotFoundError, FolderNotWritableError, FileLockedError: as
            :func:`imagenet_book.pretrain.pretrain` raises them.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    default = default_sizes(cfg, "simclr")
    task = Contrastive(temperature=default["temperature"] if temperature is None else temperature)
    sizes = dict(epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr, max_steps=max_steps,
                 temperature=temperature, amp=amp, channels_last=channels_last)
    compute = engine.compute_given(amp, channels_last)
    img_size = img_size or default["img_size"]
    batch_size = batch_size or default["batch_size"]
    recipe = replace(simclr_recipe(epochs or default["epochs"], batch_size, lr=lr), img_size=img_size)
    views = _view_options()
    model_id = f"{arch}-small_input" if small_input else arch

    def prepare() -> tuple[Any, FastLoader, FastLoader]:
        return make_loaders(cfg, data, img_size=img_size, batch_size=batch_size, progress=progress,
                            train_options=views)

    def settings(source: Any) -> dict[str, Any]:
        return run_settings(cfg, arch, small_input, data, source, img_size, batch_size, recipe, max_steps,
                            crop_scale=views["scale"], zero_init_residual=False, method="simclr",
                            temperature=task.temperature, photometric=asdict(views["photometric"]),
                            projection=[SIMCLR_HIDDEN, SIMCLR_OUT], val_images=SIMCLR_VAL_IMAGES,
                            evaluation={"knn_k": KNN_K, "knn_temperature": KNN_TEMPERATURE,
                                        "probe": asdict(probe_recipe())}, **compute)

    def train(source: Any, train_loader: FastLoader, val_loader: FastLoader, run_dir: Any,
              say: Callable[[str], None]) -> tuple[nn.Module, Any, dict[str, float]]:
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        net = simclr_net(arch, small_input=small_input)
        device = train_loader.device
        views_val = two_view_loader(val_loader.cache, batch_size, img_size=img_size, device=device,
                                    seed=cfg.seed, evaluation=True, max_images=SIMCLR_VAL_IMAGES)
        world = engine.world().size
        say(f"pretrain: SimCLR on {len(train_loader.cache)} train images WITHOUT labels (2 views each), "
            f"{model_id} + projection head, {sum(p.numel() for p in net.parameters()):,} parameters; epochs "
            f"{recipe.epochs} x {len(train_loader)} steps at batch {batch_size} ({2 * batch_size} views, "
            f"{world} process{'es' if world > 1 else ''}), peak lr {recipe.lr:g}, temperature "
            f"{task.temperature:g}; device {device}{engine.compute_note(amp, channels_last)}")
        history = engine.fit(net, train_loader, views_val, recipe, task=task, device=device,
                             checkpoint_dir=run_dir, checkpoint_every=checkpoint_every, resume="auto",
                             progress=progress, max_steps=max_steps, arch=f"simclr-{model_id}", amp=amp,
                             channels_last=channels_last)
        centre_train = FastLoader(train_loader.cache, batch_size, train=False, out_size=img_size, device=device)
        scores, fc = evaluate_frozen(net, centre_train, val_loader, num_classes=source.num_classes, seed=cfg.seed)
        last = history.epochs[-1]
        metrics = {**scores, "loss": scores["probe_loss"], "top1": scores["probe_top1"],
                   "top5": scores["probe_top5"], "contrastive_loss": last["val_loss"],
                   "contrastive_top1": last["val_top1"]}
        say(f"pretrain: frozen features on {len(val_loader.cache)} val images: k-NN top-1 "
            f"{scores['knn_top1']:.4f}, linear probe top-1 {scores['probe_top1']:.4f} (epoch {last['epoch']}, "
            f"{last['wall_s']:.0f} s of training)")
        return to_classifier(net, fc).to(device), history, metrics

    return run_pretraining(cfg, data, arch, method="simclr", small_input=small_input, sizes=sizes,
                           out_dir=out_dir, restart=restart, log=log, prepare=prepare, settings=settings,
                           train=train)
