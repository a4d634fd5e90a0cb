"""Training recipes: the one recipe type, the one optimizer and schedule builder, and the numbers
of the fine-tuning and detection recipes.

Every run of the book, whatever its task, is described by a :class:`TrainConfig` and trained by
:func:`imagenet_book.engine.fit`, which builds its optimizer with :func:`make_optimizer` over the
task's parameter groups and its learning-rate schedule with :func:`make_scheduler`:

* :func:`param_groups`: weights of convolutions and linear layers decay, biases and norm weights
  do not;
* :func:`finetune_param_groups`: the same, split into a pretrained ``backbone`` (at
  ``backbone_lr_scale`` times the rate, or frozen for a linear probe) and the new layers;
* :func:`lr_factor`: linear warmup, then half a cosine (or a straight line) down to 0.

The recipes' numbers live in this module's constants, and nowhere else, each explained in the
chapter that uses it: :func:`pretrain_recipe` (chapter 06), :func:`finetune_recipe` (chapter 07)
and :func:`detection_recipe` (chapter 08) derive a whole recipe from the sizes (the profile's:
the same code at every scale).

Taught in: chapters/06_pretraining.ipynb (the schedule, the no-decay rule),
chapters/07_finetune_voc_classification.ipynb (discriminative rates, the fine-tuning recipe),
chapters/11_self_supervised.ipynb (the SimCLR recipe, k-NN and linear-probe evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .errors import BookError
from .optim import Lamb, Lion, Ranger

__all__ = ["ADAMW_LR", "ARC_MARGIN", "ARC_SCALE", "BACKBONE_LR_SCALE", "EIGEN_COMPONENTS", "EIGEN_SIZE",
           "FACE_EMBED_DIM", "FACE_SIZES", "FREEZE_BN", "face_recipe", "face_sizes",
           "KNN_K", "KNN_TEMPERATURE", "RecipeError", "SIMCLR_SIZES",
           "TrainConfig", "detection_recipe", "finetune_param_groups", "finetune_recipe", "lr_factor",
           "make_optimizer", "make_scheduler", "param_groups", "pretrain_recipe", "probe_recipe", "simclr_recipe",
           "simclr_sizes"]

# Shared by pretraining and fine-tuning.
BASE_LR = 0.1            # peak learning rate for a batch of BASE_BATCH (Goyal et al., 2017) ...
BASE_BATCH = 256         # ... scaled linearly: lr = BASE_LR * batch_size / BASE_BATCH
MOMENTUM = 0.9
OPTIMIZERS = ("sgd", "adamw", "lion", "lamb", "ranger")
SCHEDULES = ("cosine", "onecycle", "flatcos")
FLAT_FRACTION = 0.75     # "flatcos": the rate stays at its peak for this fraction of the run (fast.ai's)

# The pretraining recipe (chapter 06 explains each number).
PRETRAIN_WEIGHT_DECAY = 5e-5    # on conv/linear weights only (param_groups)
LABEL_SMOOTHING = 0.1
PRETRAIN_WARMUP_EPOCHS = 2.0    # linear warmup, at most this long ...
PRETRAIN_WARMUP_FRACTION = 0.25  # ... and at most this fraction of the run
CROP_SCALE = (0.35, 1.0)  # area fraction of the random-resized crops: milder than torchvision's
                          # (0.08, 1), made for 90+ epochs; as in fast.ai's Imagenette baselines
ZERO_INIT_RESIDUAL = False  # start each residual block as the identity (Goyal et al., 2017)? The largest
                            # gain of appendix A2's 5-epoch search, but none in a 16-epoch run of chapter 06's
                            # reference recipe (80.8% with, 80.9% without: bench/results/README.md)

# The fine-tuning recipe (chapter 07 explains each number).
OPTIMIZER = "sgd"        # "sgd" (with momentum) or "adamw"
ADAMW_LR = 1e-3          # head's peak lr with AdamW (not scaled with the batch)
BACKBONE_LR_SCALE = 0.1  # the backbone learns at a tenth of the head's rate ("discriminative rates")
WEIGHT_DECAY = 1e-4      # on conv/linear weights only (param_groups)
WARMUP_FRACTION = 0.1    # linear warmup over the first 10% of the steps, then cosine to 0
FREEZE_BN = True         # fine-tuning keeps the backbone's BatchNorm statistics as pretrained: re-estimated
                         # from batches of 32 small images they wrecked ImageNet-1k features (VOC-format
                         # real set, EfficientNet-Lite0, 96 px: mAP 0.198 with, 0.405 without re-estimating)
EPOCHS_PER_PROFILE_EPOCH = 1  # fine-tuning epochs = this * cfg.profile.epochs (smoke 1, local 4, full 40)
SEG_BATCH_DIVISOR = 4    # segmentation batch = cfg.profile.batch_size // this (bigger outputs)

# The detection recipe (chapter 08): how it follows the profile, and its own rates.
DET_SIZE_FACTOR = 2      # detection img_size = this * cfg.profile.img_size (local 128, full 448)
DET_BATCH_DIVISOR = 4    # detection batch = cfg.profile.batch_size // this (local 16)
DET_EPOCH_FACTOR = 1     # detection epochs = this * cfg.profile.epochs (local 4)
DET_BASE_LR, DET_BASE_BATCH = 0.01, 16  # SGD peak lr of the new layers for a batch of 16
                                        # (RetinaNet's), scaled linearly with the batch size
DET_GRAD_CLIP = 10.0     # max gradient norm: the first steps of a random head can be large
DET_CROP_PROB = 0.5      # probability of an SSD-style random IoU crop in training

TASKS = ("classify", "segment", "detect")

# The SimCLR recipe (chapter 11 explains each number). Its own sizes per profile: two views of
# every image and a batch large enough for many negatives (SimCLR's loss needs them).
SIMCLR_SIZES = {  # profile -> epochs, image side, batch (the global batch of N images: 2N views)
    "smoke": {"epochs": 1, "img_size": 32, "batch_size": 16},
    "local": {"epochs": 2, "img_size": 64, "batch_size": 128},  # chapter 11 in about a minute on 2 CPU cores
    # (the profile's 2,000 images); the recorded run on all of Imagenette: reference.SIMCLR
    "full": {"epochs": 200, "img_size": 128, "batch_size": 512},
}
SIMCLR_BASE_LR = 0.3     # SGD peak lr for a batch of BASE_BATCH images, scaled linearly with the batch
SIMCLR_WEIGHT_DECAY = 5e-4  # on conv/linear weights only; short runs on small images want more than 1e-6 (LARS)
SIMCLR_WARMUP_FRACTION = 0.05  # linear warmup over the first 5% of the steps, then cosine to 0
SIMCLR_TEMPERATURE = 0.2  # tau of the NT-Xent loss
SIMCLR_HIDDEN, SIMCLR_OUT = 512, 128  # the projection head: 512 -> 512 -> 128 (SimCLR: 2048 -> 2048 -> 128)
SIMCLR_CROP_SCALE = (0.2, 1.0)  # area fraction of each view's crop (SimCLR: (0.08, 1); small images: 0.2)
SIMCLR_JITTER, SIMCLR_HUE = 0.4, 0.1  # colour jitter strength s = 0.5 (SimCLR: 0.8 s, 0.8 s, 0.8 s, 0.2 s)
SIMCLR_JITTER_P, SIMCLR_GRAYSCALE_P = 0.8, 0.2  # how often each image is jittered / turned gray
SIMCLR_BLUR_P = 0.0      # Gaussian blur: SimCLR's ImageNet setting is 0.5; at 64-96 px it removes what is left
SIMCLR_VAL_IMAGES = 1024  # validation images (fixed views) the contrastive loss is measured on each epoch
KNN_K, KNN_TEMPERATURE = 200, 0.1  # the weighted k-NN classifier (Wu et al., 2018): k neighbours, exp(s / T) votes
PROBE_EPOCHS = 100       # the linear probe on frozen, standardised features: epochs of AdamW ...
PROBE_LR, PROBE_WEIGHT_DECAY, PROBE_BATCH = 1e-3, 5e-4, 256  # ... at this rate, decay and batch

# The face-verification recipe (chapter 11): an embedding trained with ArcFace's margin loss on
# the identities of the training folds, at sizes of its own per profile.
FACE_SIZES = {  # profile -> epochs, face-crop side, batch, trained rotations (None: every fold in turn)
    "smoke": {"epochs": 1, "img_size": 32, "batch_size": 16, "rotations": None},
    "local": {"epochs": 2, "img_size": 64, "batch_size": 64, "rotations": 1},  # chapter 11: one rotation in
    # under a minute on 2 CPU cores; the recorded run (every rotation, longer): reference.FACES
    "full": {"epochs": 30, "img_size": 112, "batch_size": 128, "rotations": None},
}
FACE_EMBED_DIM = 128     # the embedding: pooled backbone features -> Linear -> BatchNorm1d, 128 numbers
FACE_LR = 3e-3           # AdamW peak lr of the new layers (the backbone: x BACKBONE_LR_SCALE when fine-tuning)
FACE_WEIGHT_DECAY = 5e-4  # on conv/linear weights only (the class centres included)
FACE_WARMUP_FRACTION = 0.1  # linear warmup over the first 10% of the steps, then cosine to 0
# ArcFace's s and m (radians): s cos(theta_y + m) for the target class. Not the paper's s = 64, m = 0.5,
# made for millions of photos: LFW's training folds give about 1.8 photos per person, and on the first
# rotation's validation pairs (fold 2, never its held-out fold) s = 30, m = 0.5 scored 0.763 against
# 0.775 for s = 16, m = 0.2 (6 epochs, BatchNorm statistics kept, in a variant whose embedding layer
# started from the features' principal directions; m = 0.1 against 0.2 at 8 epochs: 0.793, 0.792).
ARC_SCALE, ARC_MARGIN = 16.0, 0.2
EIGEN_SIZE, EIGEN_COMPONENTS = 32, 100  # Eigenfaces: grey face crops of 32 x 32, 100 principal components


class RecipeError(BookError, ValueError):
    """A recipe setting that cannot be used (an unknown optimizer or schedule, a size below 1).
    The message names the setting and the value.

    Taught in: chapters/06_pretraining.ipynb.
    """


@dataclass(frozen=True)
class TrainConfig:
    """The numbers of a training recipe (defaults: torchvision's ResNet recipe, cosine schedule).

    Attributes:
        epochs: passes over the training set.
        optimizer: ``"sgd"`` (with momentum), ``"adamw"``, ``"lion"``, ``"lamb"`` or ``"ranger"``
            (:mod:`imagenet_book.optim`).
        lr: peak learning rate, reached after warmup, for the global batch (the new layers'
            rate when a backbone learns at ``backbone_lr_scale`` times it).
        weight_decay: L2 penalty on weights; biases and norm-layer weights get none.
        momentum: SGD momentum (AdamW, Lion, LAMB, Ranger: beta1).
        nesterov: SGD with Nesterov's momentum (the gradient taken after the momentum's step).
        warmup_epochs: linear warmup from 0, in epochs (fractions allowed).
        warmup_steps: the same in optimizer steps; overrides ``warmup_epochs`` when given.
        warmup_fraction: the same as a fraction of all the run's steps (at least one step);
            overrides ``warmup_epochs`` when given (``warmup_steps`` wins over both).
        schedule: after warmup, ``"cosine"`` (half cosine to 0), ``"onecycle"`` (straight
            line to 0: with warmup, the triangular one-cycle policy) or ``"flatcos"`` (flat at
            the peak until :data:`FLAT_FRACTION` of the run, then half a cosine to 0).
        decay_norm_and_bias: weight decay on every parameter, biases and norm weights included
            (the textbook way); ``False`` (default): :func:`param_groups`' rule.
        label_smoothing: ``eps`` of the classification loss (target ``(1 - eps) * onehot + eps / C``).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            ``0.999``), evaluated each epoch beside the weights; ``None``: no EMA.
        grad_clip: clip the gradients' global norm to this before each step; ``None``: no clip.
        backbone_lr_scale: a network's ``backbone`` learns at this times ``lr`` (fine-tuning's
            discriminative rates; 1.0: one rate for all).
        batch_size, img_size: the sizes the run uses (recorded with the recipe; the loaders,
            not the engine, apply them). ``None``: not stated.

    Taught in: chapters/06_pretraining.ipynb.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    warmup_fraction: float | None = None
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    decay_norm_and_bias: bool = False
    ema_decay: float | None = None
    grad_clip: float | None = None
    backbone_lr_scale: float = 1.0
    batch_size: int | None = None
    img_size: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for key in ("epochs", "batch_size", "img_size"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise RecipeError(f"{key} must be an int >= 1, got {value!r}.")


# ------------------------------------------------------------------------------- parameter groups


def param_groups(net: nn.Module, weight_decay: float, *, decay_all: bool = False) -> list[dict[str, Any]]:
    """Two parameter groups: weights of convolutions and linear layers (``ndim >= 2``) decay;
    biases and normalisation weights (``ndim <= 1``) do not: a BatchNorm scale or a bias that
    shrinks towards 0 is not a simpler function, the decay only fights the layer.
    ``decay_all=True``: both groups decay (the textbook recipe, for comparison).

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``
        (trainable parameters only).

    Taught in: chapters/06_pretraining.ipynb.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": weight_decay if decay_all else 0.0}]


def finetune_param_groups(net: nn.Module, *, lr: float, backbone_lr_scale: float = BACKBONE_LR_SCALE,
                          weight_decay: float = WEIGHT_DECAY,
                          freeze_backbone: bool = False) -> list[dict[str, Any]]:
    """Optimizer parameter groups with discriminative learning rates.

    ``net.backbone`` learns at ``lr * backbone_lr_scale``, every other parameter (the head) at
    ``lr``; within each, conv/linear weights decay and biases and norm weights do not (the
    rule of :func:`param_groups`). ``freeze_backbone=True`` (the linear probe) sets
    ``requires_grad=False`` on the backbone and leaves it out; ``False`` sets it back to
    ``True``. Empty groups are left out. A scheduler scales each group's ``lr`` by the same
    factor, so the ratio holds for the whole run.

    Args:
        net: a module with a ``backbone`` attribute.
        lr: the head's learning rate.
        backbone_lr_scale: the backbone's rate relative to ``lr`` (1.0: one rate for all).
        weight_decay: on weights with ``ndim >= 2``.
        freeze_backbone: the linear probe.

    Returns:
        ``[{"params", "lr", "weight_decay", "name"}, ...]`` with names ``"backbone"``,
        ``"backbone (no decay)"``, ``"head"``, ``"head (no decay)"``: pass to any
        ``torch.optim`` optimizer.

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise RecipeError(f"{type(net).__name__} has no .backbone module: finetune_param_groups needs "
                         "to know which parameters are pretrained.")
    backbone.requires_grad_(not freeze_backbone)
    in_backbone = {id(p) for p in backbone.parameters()}
    head = nn.ParameterList([p for p in net.parameters() if id(p) not in in_backbone])
    parts = [("head", head, lr)]
    if not freeze_backbone:
        parts.insert(0, ("backbone", backbone, lr * backbone_lr_scale))
    groups = []
    for name, module, part_lr in parts:
        decay, no_decay = param_groups(module, weight_decay)
        for group, suffix in ((decay, ""), (no_decay, " (no decay)")):
            if group["params"]:
                groups.append({**group, "lr": part_lr, "name": name + suffix})
    return groups


def make_optimizer(net: nn.Module | list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (``cfg.nesterov``: Nesterov's), AdamW, Lion, LAMB or Ranger at ``cfg.lr``, over
    :func:`param_groups` of ``net`` or over the given parameter groups (a group's own ``"lr"``
    wins over ``cfg.lr``). ``cfg.momentum`` is SGD's momentum, the others' beta1.

    Taught in: chapters/06_pretraining.ipynb (Lion, LAMB: chapters/A2_fast_recipe.ipynb).
    """
    groups = (param_groups(net, cfg.weight_decay, decay_all=cfg.decay_norm_and_bias)
              if isinstance(net, nn.Module) else net)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.lr, betas=(cfg.momentum, 0.99))
    if cfg.optimizer == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))
    if cfg.optimizer == "ranger":
        return Ranger(groups, lr=cfg.lr, betas=(cfg.momentum, 0.99), eps=1e-6)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


# ------------------------------------------------------------------------------- the schedule


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps``, then from 1 down to 0 at ``total_steps``: half a
    cosine (``"cosine"``), a straight line (``"onecycle"``), or flat at 1 until
    :data:`FLAT_FRACTION` of ``total_steps`` and half a cosine from there (``"flatcos"``).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "flatcos":
        start = max(warmup_steps, round(FLAT_FRACTION * total_steps))
        if step < start:
            return 1.0
        warmup_steps = start
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule in ("cosine", "flatcos") else 1.0 - t


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The number of warmup steps of ``cfg`` for a run of ``cfg.epochs * steps_per_epoch`` steps.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    if cfg.warmup_fraction is not None:
        return max(1, round(cfg.warmup_fraction * cfg.epochs * steps_per_epoch))
    return round(cfg.warmup_epochs * steps_per_epoch)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` over ``cfg.epochs * steps_per_epoch``
    steps, with :func:`warmup_steps` of warmup.

    Taught in: chapters/06_pretraining.ipynb.
    """
    total, warmup = cfg.epochs * steps_per_epoch, warmup_steps(cfg, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))


# ------------------------------------------------------------------------------- the recipes


def pretrain_recipe(epochs: int, batch_size: int, *, lr: float | None = None,
                    weight_decay: float | None = None) -> TrainConfig:
    """The pretraining recipe for ``epochs`` passes at a global batch of ``batch_size``.

    * SGD with momentum :data:`MOMENTUM`;
    * peak learning rate ``lr``, default ``BASE_LR * batch_size / BASE_BATCH`` (the linear
      scaling rule: a batch twice as large averages the gradient over twice the images, so the
      step can be twice as long);
    * linear warmup for ``min(PRETRAIN_WARMUP_EPOCHS, PRETRAIN_WARMUP_FRACTION * epochs)`` epochs, then half a cosine
      down to 0;
    * weight decay ``weight_decay`` (default :data:`PRETRAIN_WEIGHT_DECAY`) on convolution and linear
      weights, none on biases and BatchNorm parameters (:func:`param_groups`);
    * label smoothing :data:`LABEL_SMOOTHING` (chapter 02).

    Returns:
        A :class:`TrainConfig` for :func:`imagenet_book.engine.fit`.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if epochs < 1 or batch_size < 1:
        raise RecipeError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}.")
    if weight_decay is not None and weight_decay < 0:
        raise RecipeError(f"weight_decay must be >= 0, got {weight_decay}.")
    return TrainConfig(
        epochs=epochs, optimizer="sgd", lr=BASE_LR * batch_size / BASE_BATCH if lr is None else lr,
        momentum=MOMENTUM, weight_decay=PRETRAIN_WEIGHT_DECAY if weight_decay is None else weight_decay,
        schedule="cosine",
        warmup_epochs=min(PRETRAIN_WARMUP_EPOCHS, PRETRAIN_WARMUP_FRACTION * epochs), label_smoothing=LABEL_SMOOTHING)


def finetune_recipe(cfg: Any, task: str = "classify", *, epochs: int | None = None,
                    batch_size: int | None = None, img_size: int | None = None,
                    lr: float | None = None, optimizer: str = OPTIMIZER,
                    backbone_lr_scale: float = BACKBONE_LR_SCALE) -> TrainConfig:
    """The sizes and rates of a fine-tuning run, derived from ``cfg.profile``.

    * ``epochs``: :data:`EPOCHS_PER_PROFILE_EPOCH` x ``cfg.profile.epochs``;
    * ``batch_size``: the profile's, divided by :data:`SEG_BATCH_DIVISOR` for segmentation
      (its outputs are images too);
    * ``img_size``: the profile's;
    * ``optimizer``: :data:`OPTIMIZER` (SGD with momentum) or ``"adamw"``;
    * ``lr``: the head's peak rate; for SGD ``BASE_LR * batch_size / BASE_BATCH`` (the linear
      scaling rule of pretraining), for AdamW :data:`ADAMW_LR`; the backbone learns at
      ``lr * backbone_lr_scale`` (:data:`BACKBONE_LR_SCALE`) when fine-tuning;
    * warmup over the first :data:`WARMUP_FRACTION` of the steps, then cosine to 0.

    Returns:
        A :class:`TrainConfig` (``batch_size`` and ``img_size`` set).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if task not in TASKS:
        raise RecipeError(f"task must be one of {TASKS}, got {task!r}.")
    if optimizer not in ("sgd", "adamw"):
        raise RecipeError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}.")
    p = cfg.profile
    divisor = SEG_BATCH_DIVISOR if task == "segment" else 1
    batch_size = batch_size or max(2, p.batch_size // divisor)
    if lr is None:
        lr = BASE_LR * batch_size / BASE_BATCH if optimizer == "sgd" else ADAMW_LR
    return TrainConfig(epochs=epochs or EPOCHS_PER_PROFILE_EPOCH * p.epochs, optimizer=optimizer, lr=lr,
                       weight_decay=WEIGHT_DECAY, momentum=MOMENTUM, warmup_fraction=WARMUP_FRACTION,
                       schedule="cosine", backbone_lr_scale=backbone_lr_scale, batch_size=batch_size,
                       img_size=img_size or p.img_size)


def detection_recipe(cfg: Any, *, epochs: int | None = None, img_size: int | None = None,
                     batch_size: int | None = None, lr: float | None = None,
                     backbone_lr_scale: float = BACKBONE_LR_SCALE) -> TrainConfig:
    """The sizes and rates of a detection run, derived from ``cfg.profile`` (sizes only):

    * ``img_size = DET_SIZE_FACTOR * img_size`` (smoke 64, local 128, full 448): a stride-16
      map needs more pixels than a classifier;
    * ``batch_size = max(2, batch_size // DET_BATCH_DIVISOR)`` (smoke 4, local 16, full 64);
    * ``epochs = DET_EPOCH_FACTOR * epochs`` (smoke 1, local 4, full 40) over the profile's images;
    * ``lr``: the head's peak rate for SGD with momentum, ``DET_BASE_LR * batch_size /
      DET_BASE_BATCH`` (RetinaNet's 0.01 at batch 16, scaled linearly);
    * the rest is chapter 07's recipe (:func:`finetune_recipe`): momentum, weight decay, warmup
      fraction, and the backbone at ``backbone_lr_scale`` (a tenth) of ``lr`` when fine-tuning;
      plus the gradient-norm clip :data:`DET_GRAD_CLIP`.

    Returns:
        A :class:`TrainConfig`.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    p = cfg.profile
    batch_size = batch_size or max(2, p.batch_size // DET_BATCH_DIVISOR)
    base = finetune_recipe(cfg, "detect", epochs=epochs or DET_EPOCH_FACTOR * p.epochs,
                           batch_size=batch_size, img_size=img_size or DET_SIZE_FACTOR * p.img_size,
                           lr=lr if lr is not None else DET_BASE_LR * batch_size / DET_BASE_BATCH,
                           backbone_lr_scale=backbone_lr_scale)
    return replace(base, grad_clip=DET_GRAD_CLIP)


def simclr_sizes(profile: str) -> dict[str, Any]:
    """The profile's SimCLR sizes (:data:`SIMCLR_SIZES`) with the temperature:
    ``{"epochs", "img_size", "batch_size", "temperature"}``.

    Raises:
        RecipeError: an unknown profile name.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if profile not in SIMCLR_SIZES:
        raise RecipeError(f"No SimCLR sizes for the profile {profile!r}: choose one of {', '.join(SIMCLR_SIZES)}.")
    return {**SIMCLR_SIZES[profile], "temperature": SIMCLR_TEMPERATURE}


def simclr_recipe(epochs: int, batch_size: int, *, lr: float | None = None) -> TrainConfig:
    """The SimCLR pretraining recipe for ``epochs`` passes at a global batch of ``batch_size`` images.

    SGD with momentum :data:`MOMENTUM` (SimCLR's LARS is made for batches of thousands); peak
    learning rate ``lr``, default ``SIMCLR_BASE_LR * batch_size / BASE_BATCH``; linear warmup over
    :data:`SIMCLR_WARMUP_FRACTION` of the steps, then half a cosine to 0; weight decay
    :data:`SIMCLR_WEIGHT_DECAY` on weights only (:func:`param_groups`). No label smoothing: there
    are no labels.

    Returns:
        A :class:`TrainConfig` (``batch_size`` set).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if epochs < 1 or batch_size < 2:
        raise RecipeError(f"SimCLR needs epochs >= 1 and batch_size >= 2 (the other images are the negatives), "
                          f"got {epochs} and {batch_size}.")
    return TrainConfig(epochs=epochs, optimizer="sgd", momentum=MOMENTUM, schedule="cosine",
                       lr=SIMCLR_BASE_LR * batch_size / BASE_BATCH if lr is None else lr,
                       weight_decay=SIMCLR_WEIGHT_DECAY, warmup_fraction=SIMCLR_WARMUP_FRACTION,
                       batch_size=batch_size)


def probe_recipe(epochs: int = PROBE_EPOCHS) -> TrainConfig:
    """The linear probe's recipe: AdamW at :data:`PROBE_LR` with decay :data:`PROBE_WEIGHT_DECAY`,
    batch :data:`PROBE_BATCH`, a tenth of the steps of warmup, cosine to 0, for ``epochs``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    return TrainConfig(epochs=epochs, optimizer="adamw", lr=PROBE_LR, weight_decay=PROBE_WEIGHT_DECAY,
                       warmup_fraction=0.1, schedule="cosine", batch_size=PROBE_BATCH)


def face_sizes(profile: str) -> dict[str, Any]:
    """The profile's face-embedding sizes (:data:`FACE_SIZES`): ``{"epochs", "img_size", "batch_size",
    "rotations"}`` (``rotations``: how many held-out folds :func:`imagenet_book.faces.verify_folds`
    trains an embedding for by default; ``None``: all).

    Raises:
        RecipeError: an unknown profile name.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if profile not in FACE_SIZES:
        raise RecipeError(f"No face sizes for the profile {profile!r}: choose one of {', '.join(FACE_SIZES)}.")
    return dict(FACE_SIZES[profile])


def face_recipe(epochs: int, batch_size: int, *, mode: str = "finetune", lr: float | None = None,
                img_size: int | None = None) -> TrainConfig:
    """The recipe of a face embedding trained with ArcFace (chapter 11).

    AdamW at peak rate ``lr`` (default :data:`FACE_LR`: the new embedding layer and class centres
    start from random and a short run needs the adaptive steps), weight decay
    :data:`FACE_WEIGHT_DECAY` on weights only, warmup over :data:`FACE_WARMUP_FRACTION` of the
    steps then half a cosine to 0; with ``mode="finetune"`` the pretrained backbone learns at
    :data:`BACKBONE_LR_SCALE` times ``lr``, with ``"scratch"`` at ``lr``.

    Returns:
        A :class:`TrainConfig` (``batch_size`` and ``img_size`` set).

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if mode not in ("finetune", "scratch", "probe", "full"):
        raise RecipeError(f"mode must be 'finetune', 'scratch', 'probe' or 'full', got {mode!r}.")
    if epochs < 1 or batch_size < 2:
        raise RecipeError(f"A face embedding needs epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}.")
    return TrainConfig(epochs=epochs, optimizer="adamw", lr=FACE_LR if lr is None else lr,
                       weight_decay=FACE_WEIGHT_DECAY, warmup_fraction=FACE_WARMUP_FRACTION, schedule="cosine",
                       backbone_lr_scale=BACKBONE_LR_SCALE if mode == "finetune" else 1.0,
                       batch_size=batch_size, img_size=img_size)
