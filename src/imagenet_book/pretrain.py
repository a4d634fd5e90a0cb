"""Pretrain a backbone on an ImageNet subset: the one function behind chapter 06 and the CLI.

The notebook and the terminal run the same code::

    result = pretrain(cfg, data="imagenette", arch="resnet18")          # chapters/06
    python -m imagenet_book pretrain --data imagenette --arch resnet18  # cli.py calls pretrain()

What :func:`pretrain` does, in order:

1. **data**: :func:`make_loaders` asks the book's data rule
   (:func:`~imagenet_book.data.imagenet.classification_source`) which data the profile uses, then
   :func:`~imagenet_book.data.fast.fast_loader` decodes each split once into a uint8 cache and
   augments whole batches on the device (random-resized-crop + flip for training, centre crop
   for validation);
2. **model**: :data:`ARCHS` ``[arch](num_classes=..., small_input=...)``, built from scratch;
3. **recipe**: :func:`pretrain_recipe`: SGD with momentum, linear warmup then cosine decay,
   weight decay on weights only, label smoothing, the learning rate scaled with the batch size.
   Its numbers live in the constants below and nowhere else;
4. **training**: :func:`imagenet_book.engine.fit`, with resumable checkpoints, so an interrupted
   run continues where it stopped when the same call is made again (torchrun DDP included);
5. **files**: the weights and what made them, and the History as JSON and CSV.

Files, in ``out_dir`` (default ``cfg.cache_root / "checkpoints"``), named by
:func:`checkpoint_stem`::

    <stem>.pt      weights + metadata (arch, classes, image size, data, metrics, History):
                   what the fine-tuning chapters load with load_pretrained()
    <stem>.json    the History, epochs and steps (History.from_json reads it)
    <stem>.csv     the History, one row per epoch (History.from_csv reads it)
    <stem>.run/    the engine's step-*.pt checkpoints while a run is in progress
    <stem>.lock    while a process runs it: its pid, host and start time

**Names.** The profile's default run is ``f"{arch}-{data}-{profile}"`` (e.g.
``resnet18-imagenette-local``, with ``-standin`` appended when the profile fell back to the
stand-in): the file :func:`default_checkpoint` names and the fine-tuning chapters load. A run
with other sizes than the profile's (``epochs``, ``img_size``, ``batch_size``, ``lr``,
``max_steps``) appends a short hash of them (``resnet18-imagenette-local-3f9a0c1e``), so it never
takes the default run's name.

**Without labels.** :func:`imagenet_book.selfsup.pretrain_simclr` (chapter 11) pretrains with
SimCLR through the same machinery (:func:`run_pretraining`): the same files, named
``f"{arch}-simclr-{data}-{profile}"`` (:data:`METHODS`), with sizes of its own per profile.

**A finished or unfinished run is never replaced or deleted without being asked.**

* A second call with the same settings finds ``<stem>.pt`` and loads it instead of training
  again; ``restart=True`` (``--restart``) trains anew and replaces it when done.
* A finished ``<stem>.pt`` with other settings under the same name (another seed, or a package
  update that changed the recipe) is refused with a message that says how to keep both
  (``out_dir`` / ``--out``) or to replace it (``restart=True`` / ``--restart``); so is a file
  there that cannot be read as a pretrained checkpoint.
* An unfinished run (``<stem>.run/``) with the same settings continues where it stopped; one with
  other settings is refused, naming the folder: resume it with its own settings, train elsewhere
  (``--out``), or discard it (``--restart``).
* ``<stem>.lock`` (:func:`imagenet_book.files.hold_lock`) keeps a second process from running
  the same name at the same time: it is refused, naming the process; a lock left by a killed
  process is recognised and taken over.
* The output folder is checked to be writable before the data is prepared and training starts;
  every file is written atomically (:func:`imagenet_book.files.save_atomically`).

Taught in: chapters/06_pretraining.ipynb.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from . import engine
from .data.fast import FastLoader, fast_loader, holdout_split
from .models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .data.imagenet import DataSource, classification_source
from .engine import History
from .recipe import (CROP_SCALE, PRETRAIN_WEIGHT_DECAY, ZERO_INIT_RESIDUAL, TrainConfig, pretrain_recipe,
                     simclr_recipe, simclr_sizes)
from .errors import BookError
from .files import check_writable, hold_lock, read_state, save_atomically
from .models import (resnet18, resnet18d, resnet34, resnet50, resnet50d, saresnet18d, seresnet18d, seresnet50d,
                     seresnext50d)

__all__ = ["ARCHS", "COMPUTE", "DATASETS", "PretrainError", "PretrainResult", "PretrainedCheckpoint",
           "PretrainedNotFoundError", "METHODS", "build_model", "checkpoint_stem", "default_checkpoint",
           "default_sizes", "evaluate_checkpoint", "how_to_make", "load_pretrained", "make_loaders", "predict",
           "pretrain", "pretrain_recipe", "read_pretrained", "run_pretraining", "run_settings", "uses_real_data"]

#: Architectures :func:`pretrain` builds, by name (the functions of :mod:`imagenet_book.models`).
ARCHS: dict[str, Callable[..., nn.Module]] = {"resnet18": resnet18, "resnet34": resnet34,
                                              "resnet50": resnet50, "resnet18d": resnet18d,
                                              "resnet50d": resnet50d, "seresnet18d": seresnet18d,
                                              "seresnet50d": seresnet50d, "seresnext50d": seresnext50d,
                                              "saresnet18d": saresnet18d}
#: Datasets the data rule knows (``classification_source``): real when present, else stand-in.
DATASETS = ("imagenette", "imagewoof", "standin")
#: How a backbone is pretrained: with the labels (:func:`pretrain`, chapter 06) or without them
#: (:func:`imagenet_book.selfsup.pretrain_simclr`, chapter 11). Both write the same files.
METHODS = ("supervised", "simclr")

# The recipe's numbers live in imagenet_book.recipe with every other recipe's (chapter 06 explains them).
RECIPE_VERSION = 1       # bump when the code changes what a run with the same settings computes

CHECKPOINT_FORMAT = "imagenet_book.pretrained"


class PretrainError(BookError, ValueError):
    """A pretraining request cannot be honoured: unknown arch/dataset, a checkpoint made for
    another network or other classes, a run that would replace another. The message says what
    to do.

    Taught in: chapters/06_pretraining.ipynb.
    """


class PretrainedNotFoundError(BookError, FileNotFoundError):
    """No pretrained checkpoint where one was expected. The message names the path and the fix.

    Taught in: chapters/06_pretraining.ipynb.
    """


# ------------------------------------------------------------------------------- names and paths


def _check_names(arch: str, data: str, method: str = "supervised") -> None:
    if arch not in ARCHS:
        raise PretrainError(f"Unknown arch {arch!r}. Choose one of: {', '.join(ARCHS)}.")
    if data not in DATASETS:
        raise PretrainError(f"Unknown dataset {data!r}. Choose one of: {', '.join(DATASETS)}.")
    if method not in METHODS:
        raise PretrainError(f"Unknown pretraining method {method!r}. Choose one of: {', '.join(METHODS)}.")


def _model_id(arch: str, small_input: bool) -> str:
    return f"{arch}-small_input" if small_input else arch


def uses_real_data(cfg: Any, data: str = "imagenette") -> bool:
    """Whether the data rule gives real images for ``data`` under ``cfg``'s profile, decided
    without downloading or generating anything: never under ``smoke`` or for ``"standin"``; under
    ``local`` when :func:`~imagenet_book.data.imagenet.find_imagenette` finds the dataset under
    ``cfg.data_root``; always under ``full`` (it is downloaded when missing).

    Taught in: chapters/06_pretraining.ipynb.
    """
    from .data.imagenet import find_imagenette

    if data == "standin" or cfg.profile.name == "smoke":
        return False
    return find_imagenette(cfg.data_root, data) is not None or cfg.profile.allow_download


def default_sizes(cfg: Any, method: str = "supervised") -> dict[str, Any]:
    """The sizes of the profile's default run of ``method``: ``{"epochs", "img_size",
    "batch_size", "max_steps"}`` (``max_steps`` ``None``), and for ``"simclr"`` the
    ``"temperature"``: the profile's sizes (:class:`~imagenet_book.runtime.Profile`) for supervised
    pretraining, :func:`~imagenet_book.recipe.simclr_sizes` for SimCLR.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if method not in METHODS:
        raise PretrainError(f"Unknown pretraining method {method!r}. Choose one of: {', '.join(METHODS)}.")
    if method == "simclr":
        return {**simclr_sizes(cfg.profile.name), "max_steps": None}
    p = cfg.profile
    return {"epochs": p.epochs, "img_size": p.img_size, "batch_size": p.batch_size, "max_steps": None}


# How a run computes, named when given: ``amp`` and ``channels_last`` of :func:`imagenet_book.engine.fit`
# (``None``: the engine's choice for the device). Another precision is another run, so another name.
COMPUTE = engine.COMPUTE
# Settings of the supervised recipe that :func:`pretrain` takes beside the sizes, named when they
# change the run: the weight decay, and a held-out share of the training split scored instead of val.
RECIPE_OPTIONS = ("weight_decay", "holdout")


def _sizes(cfg: Any, method: str, given: dict[str, Any]) -> dict[str, Any]:
    """The sizes of ``given`` that differ from the profile's default run (``{}`` for the default run),
    the :data:`COMPUTE` settings given, and a supervised run's :data:`RECIPE_OPTIONS` that change it."""
    default = default_sizes(cfg, method)
    options = RECIPE_OPTIONS if method == "supervised" else ()
    unknown = sorted(k for k, v in given.items() if v is not None and k not in default and k != "lr"
                     and k not in COMPUTE and k not in options)
    if unknown:
        raise PretrainError(f"{', '.join(unknown)} is not a setting of {method} pretraining: leave it out "
                            f"(the settings of {method} runs: {', '.join(sorted(default))}, lr).")
    wanted = {k: default[k] if given.get(k) is None else given[k] for k in default}
    sizes = {k: v for k, v in wanted.items() if v != default[k]}
    rule = (simclr_recipe if method == "simclr" else pretrain_recipe)(1, wanted["batch_size"]).lr
    if given.get("lr") is not None and not math.isclose(given["lr"], rule, rel_tol=1e-9):
        sizes["lr"] = float(given["lr"])  # the linear scaling rule's lr is not an override
    sizes.update({k: given[k] for k in COMPUTE if given.get(k) is not None})
    if "weight_decay" in options and given.get("weight_decay") not in (None, PRETRAIN_WEIGHT_DECAY):
        sizes["weight_decay"] = float(given["weight_decay"])
    if "holdout" in options and given.get("holdout"):
        sizes["holdout"] = float(given["holdout"])
    return sizes


def checkpoint_stem(cfg: Any, arch: str = "resnet18", data: str = "imagenette", *,
                    small_input: bool = False, real: bool | None = None,
                    epochs: int | None = None, img_size: int | None = None,
                    batch_size: int | None = None, lr: float | None = None,
                    max_steps: int | None = None, method: str = "supervised",
                    temperature: float | None = None, amp: str | None = None,
                    channels_last: bool | None = None, weight_decay: float | None = None,
                    holdout: float | None = None) -> str:
    """The file-name stem of a pretraining run:
    ``"{arch}[-small_input][-{method}]-{data}-{profile}[-standin][-{hash}]"``.

    Examples: ``resnet18-imagenette-local`` (real Imagenette), ``resnet18-imagenette-local-standin``
    (the stand-in the local profile falls back to without the data), ``resnet18-standin-smoke``,
    ``resnet18-simclr-imagenette-local`` (SimCLR, chapter 11; supervised runs name no method).
    The profile and the kind of data are part of the name, so neither the ``smoke`` runs of the
    test suite nor a run without the data ever replace a backbone pretrained on real images.

    Sizes left at ``None`` (or equal to the profile's) give the profile's default run, the name
    :func:`default_checkpoint` gives. Other sizes append the first 8 hex digits of the SHA-1 of
    those sizes (``resnet18-imagenette-local-3f9a0c1e``): runs with other sizes never share a
    name with the default run, nor with each other. The seed is not part of the name:
    :func:`pretrain` refuses to replace a finished run with another seed (or recipe version).

    Args:
        real: whether the run uses real images; ``None``: :func:`uses_real_data`.
        epochs, img_size, batch_size, lr, max_steps: as given to :func:`pretrain`.
        method: a name of :data:`METHODS`; its default sizes are :func:`default_sizes`'.
        temperature: SimCLR's (``method="simclr"`` only).
        amp, channels_last: how the run computes (:data:`COMPUTE`); ``None``: the engine's choice.
        weight_decay, holdout: as given to :func:`pretrain` (supervised only; ``None``, the
            recipe's weight decay or ``0`` give the name of the run without them).

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_names(arch, data, method)
    real = uses_real_data(cfg, data) if real is None else real
    suffix = "-standin" if not real and data != "standin" else ""
    sizes = _sizes(cfg, method, dict(epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr,
                                     max_steps=max_steps, temperature=temperature, amp=amp,
                                     channels_last=channels_last, weight_decay=weight_decay, holdout=holdout))
    if sizes:
        digest = hashlib.sha1(json.dumps(sizes, sort_keys=True).encode()).hexdigest()[:8]
        suffix += f"-{digest}"
    named = "" if method == "supervised" else f"-{method}"
    return f"{_model_id(arch, small_input)}{named}-{data}-{cfg.profile.name}{suffix}"


def default_checkpoint(cfg: Any, arch: str = "resnet18", data: str = "imagenette", *,
                       small_input: bool = False, method: str = "supervised") -> Path:
    """Where :func:`pretrain` (or, for ``method="simclr"``,
    :func:`imagenet_book.selfsup.pretrain_simclr`) saves the profile's default run (the
    profile's sizes), and :func:`load_pretrained` looks for the pretrained weights:
    ``cfg.cache_root / "checkpoints" / f"{stem}.pt"`` (stem: :func:`checkpoint_stem`; it depends
    on whether this profile finds the real data).

    Taught in: chapters/06_pretraining.ipynb.
    """
    stem = checkpoint_stem(cfg, arch, data, small_input=small_input, method=method)
    return Path(cfg.cache_root) / "checkpoints" / f"{stem}.pt"


# ------------------------------------------------------------------------------- the parts


def build_model(arch: str = "resnet18", num_classes: int = 10, *, small_input: bool = False,
                zero_init_residual: bool = False) -> nn.Module:
    """A freshly initialised network of :data:`ARCHS`: float32 ``(B, 3, H, W)`` -> logits ``(B, num_classes)``.

    ``small_input=True``: the CIFAR stem (3x3 convolution, stride 1, no max-pool) instead of
    ImageNet's (7x7 stride 2 + max-pool): 16x the compute at the same image size.
    ``zero_init_residual=True``: the last BatchNorm of every block starts at 0, so every block
    starts as the identity (only the initialisation differs).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if arch not in ARCHS:
        raise PretrainError(f"Unknown arch {arch!r}. Choose one of: {', '.join(ARCHS)}.")
    return ARCHS[arch](num_classes=num_classes, small_input=small_input,
                       zero_init_residual=zero_init_residual)


def _loader_device(cfg: Any) -> torch.device:
    """``cfg.device``; under torchrun on CUDA, this process's GPU."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", engine.world().local_rank)
    return device


def _on_rank0(fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 only; every rank gets its result, or raises its error (a user error as
    itself, anything else as a RuntimeError naming it), so no rank waits for one that failed."""
    world = engine.world()
    if world.size == 1:
        return fn()
    box: list[Any] = [None, None]
    if world.rank == 0:
        try:
            box[0] = fn()
        except Exception as err:
            box[1] = err if isinstance(err, BookError) else RuntimeError(
                f"rank 0 failed: {type(err).__name__}: {err}")
            box[0] = None
            tdist.broadcast_object_list(box, src=0)
            raise
    tdist.broadcast_object_list(box, src=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


def make_loaders(cfg: Any, data: str = "imagenette", *, img_size: int | None = None,
                 batch_size: int | None = None, source: DataSource | None = None,
                 progress: bool = True, train_options: dict[str, Any] | None = None,
                 holdout: float = 0.0) -> tuple[DataSource, FastLoader, FastLoader]:
    """The profile's data as ``(source, train_loader, val_loader)``.

    ``source`` comes from :func:`~imagenet_book.data.imagenet.classification_source` (real data
    when the profile finds it, else the stand-in; under ``full`` a missing dataset is downloaded).
    Both loaders come from :func:`~imagenet_book.data.fast.fast_loader` (decoded once into
    ``cfg.cache_root / "fast"``): training batches are random-resized crops (area fraction in
    :data:`CROP_SCALE`), flipped; validation batches are centre crops, in order, all images.

    Args:
        cfg: from ``imagenet_book.start()``.
        data: ``"imagenette"``, ``"imagewoof"`` or ``"standin"``.
        img_size: side of the crops; default ``cfg.profile.img_size``.
        batch_size: default ``cfg.profile.batch_size`` (also used for validation).
        source: use this :class:`~imagenet_book.data.imagenet.DataSource` instead of asking the rule.
        progress: tqdm bars while decoding.
        train_options: other :class:`~imagenet_book.data.fast.FastLoader` settings of the
            training loader (e.g. SimCLR's ``views=2``, ``photometric=...``, ``scale=...``).
        holdout: ``> 0``: hold out this share of each class of the *training* split
            (:func:`~imagenet_book.data.fast.holdout_split`, the profile's seed): the training
            loader draws from the rest, and the second loader evaluates the held-out images
            instead of the validation split (how a setting is chosen without looking at val).

    Returns:
        ``(source, train, val)``; each loader yields float32 ``(B, 3, img_size, img_size)``
        normalised images and int64 ``(B,)`` labels on ``cfg.device`` (with ``views=2`` in
        ``train_options``, the training loader yields ``(X1, X2, y)``: two views of each image).

    Raises:
        DatasetNotFoundError / DatasetLayoutError: from the data rule (the message says how to fix).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if data not in DATASETS:
        raise PretrainError(f"Unknown dataset {data!r}. Choose one of: {', '.join(DATASETS)}.")
    img_size = img_size or cfg.profile.img_size
    batch_size = batch_size or cfg.profile.batch_size
    world = engine.world()
    device = _loader_device(cfg)
    result = None
    for turn in ((0, 1) if world.size > 1 else (world.rank,)):  # rank 0 builds stand-in and caches first
        if turn == world.rank:
            source = source or classification_source(cfg, data)
            kw = dict(source=source, img_size=img_size, batch_size=batch_size, device=device,
                      progress=progress and world.rank == 0)
            options = {"scale": CROP_SCALE, **(train_options or {})}
            train = fast_loader(cfg, "train", **options, **kw)
            if holdout:
                fit, held = holdout_split(train.cache, holdout, seed=cfg.seed)
                result = (source, FastLoader(fit, batch_size, out_size=img_size, device=device, seed=cfg.seed,
                                             **options),
                          FastLoader(held, batch_size, train=False, out_size=img_size, device=device))
            else:
                result = (source, train, fast_loader(cfg, "val", **kw))
        if world.size > 1 and turn == 0:
            tdist.barrier()
    assert result is not None
    return result


@torch.no_grad()
def predict(net: nn.Module, loader: Any, device: str | torch.device | None = None) -> tuple[Tensor, Tensor]:
    """All logits and labels of ``loader`` (one pass, eval mode, no gradients).

    Args:
        net: a classifier, float ``(B, 3, H, W)`` -> ``(B, C)``.
        loader: batches ``(X, y)``; a validation loader gives them in dataset order.
        device: where to run; default: where ``net``'s parameters are.

    Returns:
        ``(logits, labels)``: float32 ``(N, C)`` and int64 ``(N,)``, on the CPU.

    Taught in: chapters/06_pretraining.ipynb.
    """
    device = torch.device(device) if device is not None else next(net.parameters()).device
    was_training = net.training
    net.eval()
    logits, labels = [], []
    for X, y in loader:
        logits.append(net(X.to(device)).float().cpu())
        labels.append(y.cpu())
    net.train(was_training)
    return torch.cat(logits), torch.cat(labels)


# ------------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """A pretrained checkpoint as :func:`read_pretrained` returns it.

    Attributes:
        path: the file.
        arch: e.g. ``"resnet18"``; ``small_input``: which stem; ``num_classes``: outputs of ``fc``.
        img_size: side of the crops it was trained on; ``mean``/``std``: input normalisation.
        data: ``"imagenette"``, ``"imagewoof"`` or ``"standin"``; ``source``: the dataset folder
            name (``"imagenette2-160"``, ``"imagenet-standin"``); ``is_real``; ``description``.
        wnids, class_names: the classes in label order.
        profile: the profile that trained it; ``settings``: everything that defined the run.
        metrics: ``{"loss", "top1", "top5"}`` on the validation split at the end of training
            (SimCLR: those of its linear probe, and ``"knn_top1"``, ...).
        history: the run's :class:`~imagenet_book.engine.History`.
        state_dict: the weights (CPU tensors).
        method: how it was pretrained, a name of :data:`METHODS` (``"simclr"``: its backbone
            never saw a label; ``fc`` is a linear probe trained afterwards on frozen features).

    Taught in: chapters/06_pretraining.ipynb.
    """

    path: Path
    arch: str
    small_input: bool
    num_classes: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    data: str
    source: str
    is_real: bool
    description: str
    wnids: tuple[str, ...]
    class_names: tuple[str, ...]
    profile: str
    settings: dict[str, Any]
    metrics: dict[str, float]
    history: History
    state_dict: dict[str, Tensor]
    method: str = "supervised"

    def build(self) -> nn.Module:
        """The network with these weights (eval mode, on the CPU).

        Raises:
            PretrainError: the weights do not fit the recorded architecture (checked already by
                :func:`read_pretrained`, so only for a hand-made instance).
        """
        net = build_model(self.arch, self.num_classes, small_input=self.small_input)
        try:
            net.load_state_dict(self.state_dict)
        except RuntimeError as err:
            raise PretrainError(_misfit(self.path, _model_id(self.arch, self.small_input),
                                        self.num_classes, _first_problem(str(err)))) from None
        return net.eval()


def _first_problem(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else (lines[0] if lines else "")


def _misfit(path: Path, model_id: str, num_classes: int, problem: str) -> str:
    return (f"{str(path)!r} says it holds a {model_id} with {num_classes} classes, but its "
            f"weights do not fit one ({problem}). The file is damaged or was edited: delete it "
            "and pretrain again (chapters/06_pretraining.ipynb or python -m imagenet_book pretrain).")


def _check_weights(path: Path, arch: str, small_input: bool, num_classes: int,
                   state_dict: Any) -> None:
    """Raise PretrainError unless ``state_dict`` has exactly the keys and shapes of the network
    the file says it holds (built on the meta device: no memory, no time)."""
    model_id = _model_id(arch, small_input)
    if arch not in ARCHS:
        raise PretrainError(f"{str(path)!r} says it holds a {arch!r}, which is none of "
                            f"{', '.join(ARCHS)}: the file is damaged or was edited, or was "
                            "written by another version of the package. Pretrain again.")
    if not isinstance(state_dict, dict):
        raise PretrainError(_misfit(path, model_id, num_classes, "it has no weights dictionary"))
    with torch.device("meta"):
        wanted = build_model(arch, num_classes, small_input=small_input).state_dict()
    missing = [k for k in wanted if k not in state_dict]
    extra = [k for k in state_dict if k not in wanted]
    shapes = [f"{k} is {tuple(state_dict[k].shape)}, a {model_id} has {tuple(v.shape)}"
              for k, v in wanted.items() if k in state_dict
              and tuple(getattr(state_dict[k], "shape", ())) != tuple(v.shape)]
    problems = ([f"{len(missing)} tensors missing, e.g. {missing[0]}"] if missing else []) + \
               ([f"{len(extra)} unexpected tensors, e.g. {extra[0]}"] if extra else []) + shapes[:1]
    if problems:
        raise PretrainError(_misfit(path, model_id, num_classes, "; ".join(problems)))


def how_to_make(cfg: Any, arch: str = "resnet18", data: str = "imagenette",
                small_input: bool = False, out: str | os.PathLike[str] | None = None) -> str:
    """The sentence that tells how to make the pretrained checkpoint :func:`default_checkpoint`
    ``(cfg, arch, data)`` names (or the default run's file in ``out``): chapter 06, or the exact
    ``python -m imagenet_book pretrain ...`` command that writes that very file.

    Args:
        cfg: from ``imagenet_book.start()``: the command then names its profile and its cache
            root (and its data root, where the data rule looks there), so that it writes where
            the caller looks even when those came from flags or variables the shell lacks. Just a
            profile name also works (older callers): the command then names the profile only.
        arch, data, small_input: the run. out: the folder, when not the default one.

    Taught in: chapters/06_pretraining.ipynb.
    """
    profile = cfg if isinstance(cfg, str) else cfg.profile.name
    flags = ["--data", data, "--arch", arch, *(["--small-input"] if small_input else []),
             "--profile", profile]
    if not isinstance(cfg, str):
        flags += ["--cache-root", str(cfg.cache_root)]
        if profile != "smoke" and data != "standin":  # the data rule looks for the real data there
            flags += ["--data-root", str(cfg.data_root)]
    if out is not None:
        flags += ["--out", str(out)]
    return (f"Make it by running chapters/06_pretraining.ipynb under the {profile!r} profile, "
            f"or from a terminal: python -m imagenet_book pretrain {shlex.join(flags)}")


def read_pretrained(path: str | os.PathLike[str]) -> PretrainedCheckpoint:
    """Read a checkpoint written by :func:`pretrain` (``torch.load(weights_only=True)``, CPU).

    Returns:
        A :class:`PretrainedCheckpoint`.

    Raises:
        PretrainedNotFoundError: no such file.
        PretrainError: the file is damaged, refused for safety (its pickle would run code), is
            not a :func:`pretrain` checkpoint (e.g. one of the engine's ``step-*.pt`` files), or
            its weights do not fit the architecture it names.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    state = read_state(
        path, "format", CHECKPOINT_FORMAT, what="the pretrained checkpoint",
        redo="Delete it and pretrain again.", error=PretrainError, missing=PretrainedNotFoundError,
        wrong="is not a pretrained checkpoint written by imagenet_book.pretrain (the engine's "
              "step-*.pt files of a run in progress are not: use the <stem>.pt file the run writes "
              "when it finishes).")
    try:
        meta = state["pretrain"]
        ckpt = PretrainedCheckpoint(
            path=path, arch=meta["arch"], small_input=bool(meta["small_input"]),
            num_classes=int(state["num_classes"]), img_size=meta["img_size"],
            mean=tuple(meta["mean"]), std=tuple(meta["std"]), data=meta["data"],
            source=meta["source"], is_real=meta["is_real"], description=meta["description"],
            wnids=tuple(meta["wnids"]), class_names=tuple(meta["class_names"]),
            profile=meta["profile"], settings=json.loads(meta["settings"]),
            metrics=dict(meta["metrics"]), history=History.from_dict(state["history"]),
            state_dict=state["model"], method=meta.get("method", "supervised"))
    except (KeyError, TypeError, ValueError) as err:
        raise PretrainError(f"{str(path)!r} is a pretrained checkpoint with missing or damaged "
                            f"metadata ({type(err).__name__}: {err}): it was edited or written by "
                            "another version of the package. Delete it and pretrain again.") from None
    _check_weights(path, ckpt.arch, ckpt.small_input, ckpt.num_classes, ckpt.state_dict)
    return ckpt


def load_pretrained(cfg: Any, arch: str = "resnet18", data: str = "imagenette", *,
                    small_input: bool = False, path: str | os.PathLike[str] | None = None,
                    device: str | torch.device | None = None) -> nn.Module:
    """The backbone pretrained by chapter 06 (or the CLI), ready to fine-tune.

    Looks for :func:`default_checkpoint` ``(cfg, arch, data)`` unless ``path`` is given. The
    network comes back in eval mode on ``device`` (default ``cfg.device``) with its pretraining
    classifier ``fc`` (``num_classes`` outputs); to fine-tune, replace it:
    ``net.fc = nn.Linear(net.fc.in_features, C)``. :func:`read_pretrained` gives the metadata
    (image size, classes, metrics).

    Shapes: the network maps float32 ``(B, 3, H, W)``, normalised with ImageNet's mean and std,
    to logits ``(B, num_classes)``.

    Raises:
        PretrainedNotFoundError: no checkpoint there; the message names the path and the command
            (or the chapter) that makes it.
        PretrainError: the file is not a pretrained checkpoint, holds another architecture, or
            its weights do not fit the architecture it names.

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_names(arch, data)
    file = Path(path) if path is not None else default_checkpoint(cfg, arch, data, small_input=small_input)
    if not file.is_file():
        out = None if path is None else file.parent
        why = ""
        if path is None and file.stem.endswith("-standin") and data != "standin" and cfg.profile.name != "smoke":
            why = (f" (This profile finds no {data} under the data root {str(cfg.data_root)!r}, so it "
                   "uses the built-in stand-in; point IMAGENET_BOOK_DATA at the data to use it.)")
        raise PretrainedNotFoundError(
            f"No pretrained {_model_id(arch, small_input)} for {data!r} at {str(file)!r}. "
            + how_to_make(cfg, arch, data, small_input, out) + "." + why)
    ckpt = read_pretrained(file)
    if (ckpt.arch, ckpt.small_input) != (arch, small_input):
        raise PretrainError(
            f"{str(file)!r} holds a {_model_id(ckpt.arch, ckpt.small_input)}, not the "
            f"{_model_id(arch, small_input)} asked for. Ask for arch={ckpt.arch!r}"
            f"{', small_input=True' if ckpt.small_input else ''}, or pretrain a {arch}.")
    return ckpt.build().to(device if device is not None else cfg.device)


# ------------------------------------------------------------------------------- pretraining


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns.

    Attributes:
        net: the trained network (eval mode, on ``cfg.device``): float32 ``(B, 3, H, W)`` ->
            logits ``(B, num_classes)``.
        history: the :class:`~imagenet_book.engine.History` (per epoch and per step).
        metrics: ``{"loss", "top1", "top5"}`` on the validation split after the last epoch.
        source: the :class:`~imagenet_book.data.imagenet.DataSource` trained on.
        train_loader, val_loader: the loaders used (:class:`~imagenet_book.data.fast.FastLoader`).
        checkpoint, history_json, history_csv: the files written (or found).
        settings: everything that defined the run (compared to reuse a finished run).
        trained: ``True`` if this call trained; ``False`` if it loaded a finished run.
        seconds: wall time of this call.
        caption: one line for figures: profile, data, model and image size.

    Taught in: chapters/06_pretraining.ipynb.
    """

    net: nn.Module
    history: History
    metrics: dict[str, float]
    source: DataSource
    train_loader: FastLoader
    val_loader: FastLoader
    checkpoint: Path
    history_json: Path
    history_csv: Path
    settings: dict[str, Any]
    trained: bool
    seconds: float
    caption: str


def run_settings(cfg: Any, arch: str, small_input: bool, data: str, source: DataSource,
                 img_size: int, batch_size: int, recipe: TrainConfig, max_steps: int | None, *,
                 crop_scale: tuple[float, float] = CROP_SCALE, zero_init_residual: bool = ZERO_INIT_RESIDUAL,
                 **method_settings: Any) -> dict[str, Any]:
    """Everything that defines a pretraining run, as plain values: what :func:`run_pretraining`
    compares to reuse a finished run (same settings) or to refuse to replace one (other settings).

    ``method_settings`` are a method's own (SimCLR: ``method``, ``temperature``, the
    augmentation, the projection head, the evaluation); supervised runs have none.

    Taught in: chapters/06_pretraining.ipynb.
    """
    return {"recipe_version": RECIPE_VERSION, "arch": arch, "small_input": small_input,
            "data": data, "source": source.name, "is_real": source.is_real,
            "wnids": list(source.wnids), "train_per_class": source.train_per_class,
            "val_per_class": source.val_per_class, "img_size": img_size,
            "batch_size": batch_size, "seed": cfg.seed, "profile": cfg.profile.name,
            "recipe": asdict(recipe), "crop_scale": list(crop_scale),
            "zero_init_residual": zero_init_residual, "max_steps": max_steps, **method_settings}


_RECIPE_DEFAULTS = asdict(TrainConfig())


def _canonical(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the recipe's fields that are at :class:`TrainConfig`'s defaults left out:
    a package update that adds a recipe field (with a default that changes nothing) does not make a
    finished run look like one with other settings."""
    recipe = {k: v for k, v in dict(settings.get("recipe", {})).items()
              if k not in _RECIPE_DEFAULTS or json.dumps(v) != json.dumps(_RECIPE_DEFAULTS[k])}
    return {**settings, "recipe": recipe}


def _same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(_canonical(a), sort_keys=True) == json.dumps(_canonical(b), sort_keys=True)


def _differences(old: dict[str, Any], new: dict[str, Any], most: int = 4) -> str:
    """``"seed 0 (here 1), recipe.epochs 6 (here 1)"``: what differs between two settings."""
    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(_canonical(old)), flat(_canonical(new))
    diff = [f"{k} {a.get(k, '(none)')} (here {b.get(k, '(none)')})" for k in sorted({*a, *b})
            if json.dumps(a.get(k)) != json.dumps(b.get(k))]
    return ", ".join(diff[:most]) + (f" and {len(diff) - most} more" if len(diff) > most else "")


def _export(path: Path, net: nn.Module, history: History, metrics: dict[str, float],
            settings: dict[str, Any], source: DataSource) -> None:
    arch, small_input = settings["arch"], settings["small_input"]
    method = {"method": settings["method"]} if "method" in settings else {}  # supervised runs name none
    state = {
        # The engine's keys, so engine.load_checkpoint(path, net, arch=...) reads the weights too.
        "format_version": engine.FORMAT_VERSION, "arch": _model_id(arch, small_input),
        "num_classes": source.num_classes,
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "history": history.to_dict(),
        "format": CHECKPOINT_FORMAT,
        "pretrain": {"arch": arch, "small_input": small_input, "img_size": settings["img_size"],
                     "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "data": settings["data"],
                     "source": source.name, "is_real": source.is_real,
                     "description": source.description, "wnids": list(source.wnids),
                     "class_names": list(source.class_names), "profile": settings["profile"],
                     "settings": json.dumps(settings, sort_keys=True), "metrics": metrics, **method},
    }
    save_atomically(state, path, lambda s, p: torch.save(s, p))


def _caption(cfg: Any, source: DataSource, settings: dict[str, Any]) -> str:
    stem = " (small-input stem)" if settings["small_input"] else ""
    how = " SimCLR (no labels)" if settings.get("method") == "simclr" else ""
    return (f"profile {cfg.profile.name}: {settings['arch']}{stem}{how} at {settings['img_size']} px "
            f"on the {source.description}")


@dataclass(frozen=True)
class _Run:
    """The files of one run, by name."""

    folder: Path
    stem: str

    def file(self, ext: str) -> Path:
        return self.folder / f"{self.stem}{ext}"

    @property
    def run_dir(self) -> Path:
        return self.file(".run")

    def leftovers(self) -> list[Path]:
        """Temporary files of killed writers (``save_atomically``'s ``.<name>.tmp-<pid>-*``);
        only called under the run's lock, so no live process is writing them."""
        found = [p for ext in (".pt", ".json", ".csv")
                 for p in self.folder.glob(f".{self.stem}{ext}.tmp-*")]
        return found + (list(self.run_dir.glob(".*.tmp-*")) if self.run_dir.is_dir() else [])


def _finished(run: _Run, settings: dict[str, Any], restart: bool) -> PretrainedCheckpoint | None:
    """The finished run to reuse (same settings), None to train; refuses to replace another."""
    path = run.file(".pt")
    if not path.is_file():
        return None
    keep_both = (f"To keep both, give this run another folder (--out DIR, or out_dir=...); to "
                 f"replace {path.name}, pass --restart (restart=True).")
    try:
        found = read_pretrained(path)
    except PretrainError as err:
        if restart:
            return None
        raise PretrainError(f"{str(path)!r} is in the way of this run and is not a usable "
                            f"pretrained checkpoint ({err}) Pretraining would replace it. "
                            + keep_both) from None
    if _same_settings(found.settings, settings):
        return None if restart else found
    if restart:
        return None
    raise PretrainError(
        f"{str(path)!r} holds a finished run with other settings: "
        f"{_differences(found.settings, settings)}. Pretraining would replace it (and its .json "
        f"and .csv); it may be the checkpoint the fine-tuning chapters load. " + keep_both)


def _prepare_run_dir(run: _Run, settings: dict[str, Any], restart: bool,
                     say: Callable[[str], None]) -> None:
    """Keep an unfinished run with the same settings; refuse to discard one with others."""
    run_dir, settings_file = run.run_dir, run.run_dir / "settings.json"
    if run_dir.is_dir():
        try:
            old = json.loads(settings_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        steps = sorted(run_dir.glob("step-*.pt"))
        if restart:
            say(f"pretrain: discarding the unfinished run in {run_dir} (restart)")
            shutil.rmtree(run_dir)
        elif old is not None and _same_settings(old, settings):
            if steps:
                say(f"pretrain: continuing the unfinished run in {run_dir} ({steps[-1].name})")
            return
        elif old is None and not any(run_dir.iterdir()):
            run_dir.rmdir()  # an empty folder: nothing to lose
        else:
            what = (f"its settings differ: {_differences(old, settings)}" if old is not None else
                    f"it has no readable {settings_file.name}, so its settings are unknown")
            if old is not None and old.get("recipe_version") != settings["recipe_version"]:
                what += (" (another version of the package started it: that version, with the "
                         "same settings, can resume it)")
            raise PretrainError(
                f"An unfinished run is in {str(run_dir)!r} ({len(steps)} step checkpoint"
                f"{'s' if len(steps) != 1 else ''}), and {what}. This run would discard it. "
                f"Resume it by running with its own settings (they are in {settings_file.name}), "
                "keep it and train elsewhere (--out DIR, or out_dir=...), or discard it with "
                "--restart (restart=True).")
    run_dir.mkdir(parents=True)
    save_atomically(json.dumps(settings, sort_keys=True, indent=1), settings_file,
                    lambda t, p: p.write_text(t, encoding="utf-8"))


def pretrain(cfg: Any, data: str = "imagenette", arch: str = "resnet18", *,
             img_size: int | None = None, epochs: int | None = None,
             batch_size: int | None = None, lr: float | None = None, small_input: bool = False,
             out_dir: str | os.PathLike[str] | None = None, restart: bool = False,
             checkpoint_every: int | None = None, max_steps: int | None = None,
             amp: str | None = None, channels_last: bool | None = None,
             weight_decay: float | None = None, holdout: float = 0.0,
             progress: bool = True, log: Callable[[str], None] | None = print) -> PretrainResult:
    """Pretrain ``arch`` on the profile's ``data``; save the weights and the History.

    Sizes come from ``cfg.profile`` (``img_size``, ``epochs``, ``batch_size``, images per class)
    unless overridden here. Under ``torchrun --nproc_per_node=N`` the same call trains with DDP
    (``batch_size`` stays the global batch); only rank 0 writes files and prints.

    The files are named by :func:`checkpoint_stem`: the profile's sizes write the default run
    (:func:`default_checkpoint`), other sizes a name of their own. Nothing is replaced or deleted
    without ``restart=True`` (see the module's docstring): a finished run with other settings
    under the same name, or an unfinished one, is refused with a message that says what to do,
    and so is a second process running the same name.

    Args:
        cfg: from ``imagenet_book.start()``.
        data: ``"imagenette"`` (default), ``"imagewoof"`` or ``"standin"``; which images the
            profile gives for it follows the book's data rule.
        arch: a name of :data:`ARCHS`.
        img_size, epochs, batch_size: override the profile's sizes.
        lr: peak learning rate; default: the linear scaling rule (:func:`pretrain_recipe`).
        small_input: the CIFAR stem (see :func:`build_model`).
        out_dir: folder of the files (default ``cfg.cache_root / "checkpoints"``).
        restart: train from scratch even if a finished run (or an interrupted one) is there
            under this name, whatever its settings; it is replaced when this run finishes.
        checkpoint_every: also save a resumable checkpoint every this many steps (default: at
            the end of each epoch only).
        max_steps: stop after this many optimizer steps (the schedule still spans ``epochs``).
        amp, channels_last: the precision and memory format of :func:`imagenet_book.engine.fit`
            (``None``: its choice for the device: bf16 and channels_last on CUDA, float32 on a
            CPU); given, they are part of the run's name and settings.
        weight_decay: of the convolution and linear weights; default
            :data:`~imagenet_book.recipe.PRETRAIN_WEIGHT_DECAY`.
        holdout: ``> 0``: train on the training split less this share of each class and report
            top-1/top-5 on the held-out training images instead of val (:func:`make_loaders`):
            how chapter 06 chooses a setting without the validation split. Part of the name.
        progress: tqdm bars (decoding, each epoch).
        log: where the few lines of report go (``None``: silent).

    Returns:
        A :class:`PretrainResult`.

    Raises:
        DatasetNotFoundError, DatasetLayoutError: from the data rule.
        PretrainError: an unknown ``arch`` or ``data``; a finished or unfinished run with other
            settings under this name (without ``restart``).
        FolderNotWritableError: ``out_dir`` cannot be written to (checked before training).
        FileLockedError: another live process runs this name in this folder.

    Taught in: chapters/06_pretraining.ipynb.
    """
    _check_names(arch, data)
    if not 0 <= holdout < 1:
        raise PretrainError(f"holdout is a share of each training class, in [0, 1): got {holdout!r}.")
    sizes = dict(epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr, max_steps=max_steps, amp=amp,
                 channels_last=channels_last, weight_decay=weight_decay, holdout=holdout)
    compute = engine.compute_given(amp, channels_last)
    img_size = img_size or cfg.profile.img_size
    batch_size = batch_size or cfg.profile.batch_size
    recipe = pretrain_recipe(epochs or cfg.profile.epochs, batch_size, lr=lr, weight_decay=weight_decay)
    scored_on = "held-out training" if holdout else "val"
    model_id = _model_id(arch, small_input)

    def train(source: DataSource, train_loader: FastLoader, val_loader: FastLoader, run_dir: Path,
              say: Callable[[str], None]) -> tuple[nn.Module, History, dict[str, float]]:
        torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
        net = build_model(arch, source.num_classes, small_input=small_input,
                          zero_init_residual=ZERO_INIT_RESIDUAL)
        n_params = sum(p.numel() for p in net.parameters())
        world = engine.world().size
        say(f"pretrain: {len(train_loader.cache)} train / {len(val_loader.cache)} {scored_on} images, "
            f"{source.num_classes} classes; {model_id}, {n_params:,} parameters; epochs {recipe.epochs} x "
            f"{len(train_loader)} steps at batch {batch_size} ({world} process{'es' if world > 1 else ''}), "
            f"peak lr {recipe.lr:g}; device {cfg.device}{engine.compute_note(amp, channels_last)}")
        history = engine.fit(net, train_loader, val_loader, recipe, device=_loader_device(cfg),
                             checkpoint_dir=run_dir, checkpoint_every=checkpoint_every,
                             resume="auto", progress=progress, max_steps=max_steps, arch=model_id,
                             amp=amp, channels_last=channels_last)
        last = history.epochs[-1]
        metrics = {"loss": last["val_loss"], "top1": last["val_top1"], "top5": last["val_top5"]}
        say(f"pretrain: {scored_on} top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f} at epoch "
            f"{last['epoch']} ({last['wall_s']:.0f} s of training)")
        return net, history, metrics

    return run_pretraining(
        cfg, data, arch, small_input=small_input, sizes=sizes, out_dir=out_dir, restart=restart, log=log,
        prepare=lambda: make_loaders(cfg, data, img_size=img_size, batch_size=batch_size, progress=progress,
                                     holdout=holdout),
        settings=lambda source: run_settings(cfg, arch, small_input, data, source, img_size, batch_size,
                                             recipe, max_steps, **compute, **({"holdout": holdout} if holdout else {})),
        train=train)


def run_pretraining(cfg: Any, data: str, arch: str, *, method: str = "supervised", small_input: bool = False,
                    sizes: dict[str, Any], out_dir: str | os.PathLike[str] | None, restart: bool,
                    log: Callable[[str], None] | None,
                    prepare: Callable[[], tuple[DataSource, Any, Any]],
                    settings: Callable[[DataSource], dict[str, Any]],
                    train: Callable[[DataSource, Any, Any, Path, Callable[[str], None]],
                                    tuple[nn.Module, History, dict[str, Any]]]) -> PretrainResult:
    """What every way of pretraining shares (:func:`pretrain`; SimCLR's
    :func:`imagenet_book.selfsup.pretrain_simclr`): the files, their names and their safety.

    In order: join torchrun's process group (if any); check the output folder is writable; get
    the data (``prepare() -> (source, train_loader, val_loader)``) and the run's
    ``settings(source)`` (:func:`run_settings`); name the files (:func:`checkpoint_stem` with
    ``method`` and ``sizes``); reuse a finished run with the same settings; else take the name's
    lock, refuse to replace a run with other settings (see the module's docstring), and call
    ``train(source, train_loader, val_loader, run_dir, say)``, which trains with
    :func:`imagenet_book.engine.fit` and resumable checkpoints in ``run_dir`` and returns
    ``(classifier, history, metrics)``: a network of :data:`ARCHS` (``fc`` included), saved
    atomically as ``<stem>.pt`` in the format :func:`read_pretrained` reads, with the History as
    ``<stem>.json`` and ``<stem>.csv``. Only rank 0 writes files and prints.

    Args:
        cfg, data, arch, small_input, out_dir, restart, log: as for :func:`pretrain`.
        method: a name of :data:`METHODS` (recorded in the file, part of its name).
        sizes: the sizes given by the caller (``None``: the profile's), for the name.

    Returns:
        A :class:`PretrainResult`.

    Taught in: chapters/06_pretraining.ipynb.
    """
    t0 = time.perf_counter()
    _check_names(arch, data, method)
    created = tdist.is_available() and not tdist.is_initialized()
    engine.init_distributed()  # a no-op outside torchrun
    try:
        return _run_pretraining(cfg, data, arch, method, small_input, sizes, out_dir, restart, log, prepare,
                                settings, train, t0)
    finally:
        if created:
            engine.destroy_distributed()


def _run_pretraining(cfg, data, arch, method, small_input, sizes, out_dir, restart, log, prepare,
                     make_settings, train, t0) -> PretrainResult:
    world = engine.world()
    say = log if (log is not None and world.rank == 0) else (lambda _msg: None)
    folder = Path(out_dir) if out_dir is not None else Path(cfg.cache_root) / "checkpoints"
    # Before the data is prepared and hours are spent training: can the results be saved?
    _on_rank0(lambda: check_writable(folder, fix="Choose another folder with --out DIR "
                                                 "(out_dir=...), or make this one writable."))
    source, train_loader, val_loader = prepare()
    settings = make_settings(source)
    run = _Run(folder, checkpoint_stem(cfg, arch, data, small_input=small_input, real=source.is_real,
                                       method=method, **sizes))
    ckpt_path, json_path, csv_path = (run.file(ext) for ext in (".pt", ".json", ".csv"))
    caption = _caption(cfg, source, settings)

    def result(net, history, metrics, trained):
        net.eval()
        return PretrainResult(net, history, metrics, source, train_loader, val_loader, ckpt_path, json_path,
                              csv_path, settings, trained, time.perf_counter() - t0, caption)

    def reuse(found: PretrainedCheckpoint) -> PretrainResult:
        say(f"pretrain: found a finished run with the same settings: {ckpt_path} "
            "(loading it; restart=True / --restart trains again)")
        return result(found.build().to(cfg.device), found.history, found.metrics, False)

    # A finished run with the same settings: load it (no lock needed to read a finished file).
    if not restart and ckpt_path.is_file():
        with contextlib.suppress(PretrainError):
            found = read_pretrained(ckpt_path)
            if _same_settings(found.settings, settings):
                return reuse(found)

    with contextlib.ExitStack() as held:
        def claim() -> bool:
            """Rank 0, under the lock: True to reuse a run finished meanwhile, else ready to train."""
            held.enter_context(hold_lock(run.file(".lock"), what=f"the pretraining run {run.stem!r}",
                                         on_stale=lambda m: say(f"pretrain: {m}")))
            if _finished(run, settings, restart) is not None:
                return True
            for leftover in run.leftovers():
                leftover.unlink(missing_ok=True)
            _prepare_run_dir(run, settings, restart, say)
            return False

        if _on_rank0(claim):
            return reuse(read_pretrained(ckpt_path))

        say(f"pretrain: {caption}; files {run.folder / run.stem}.*")
        net, history, metrics = train(source, train_loader, val_loader, run.run_dir, say)

        def export() -> None:
            _export(ckpt_path, net, history, metrics, settings, source)
            save_atomically(history, json_path, lambda h, p: h.to_json(p))
            save_atomically(history, csv_path, lambda h, p: h.to_csv(p))
            shutil.rmtree(run.run_dir, ignore_errors=True)  # finished: the step files are redundant

        _on_rank0(export)
    say(f"pretrain: wrote {ckpt_path}, {json_path.name}, {csv_path.name}")
    return result(net, history, metrics, True)


# ------------------------------------------------------------------------------- evaluation


def evaluate_checkpoint(cfg: Any, path: str | os.PathLike[str] | None = None, *,
                        arch: str | None = None, data: str | None = None, split: str = "val",
                        small_input: bool | None = None, batch_size: int | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Top-1 / top-5 of a pretrained checkpoint on a split of the profile's data.

    Args:
        cfg: from ``imagenet_book.start()``; its profile picks the data (and how many images).
        path: the checkpoint; default :func:`default_checkpoint` ``(cfg, arch, data)``.
        arch, small_input: expected architecture (default: whatever the checkpoint holds); a
            different one is an error.
        data: dataset name; default: the checkpoint's.
        split: ``"val"`` or ``"train"`` (centre crops, no augmentation, either way).
        batch_size: default ``cfg.profile.batch_size``.

    Returns:
        ``{"loss", "top1", "top5"}`` (floats; accuracies in ``[0, 1]``), ``"images"`` (int),
        ``"split"``, ``"checkpoint"`` (the path) and ``"description"`` (the data).

    Raises:
        PretrainedNotFoundError: no checkpoint there.
        PretrainError: not a pretrained checkpoint; another architecture than ``arch``; or the
            profile's data has other classes than the checkpoint was trained on.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if split not in ("train", "val"):
        raise PretrainError(f"split must be 'train' or 'val', got {split!r}.")
    if path is None:
        file = default_checkpoint(cfg, arch or "resnet18", data or "imagenette",
                                  small_input=bool(small_input))
        if not file.is_file():
            raise PretrainedNotFoundError(
                f"No pretrained checkpoint at {str(file)!r}. "
                + how_to_make(cfg, arch or "resnet18", data or "imagenette", bool(small_input))
                + "; or pass the file with --checkpoint.")
    else:
        file = Path(path)
    ckpt = read_pretrained(file)
    if (arch is not None and arch != ckpt.arch) or (small_input is not None and small_input != ckpt.small_input):
        wanted = _model_id(arch or ckpt.arch, ckpt.small_input if small_input is None else small_input)
        raise PretrainError(
            f"{str(file)!r} holds a {_model_id(ckpt.arch, ckpt.small_input)} trained on "
            f"{ckpt.data} ({ckpt.num_classes} classes), not a {wanted}. Pass --arch {ckpt.arch}"
            f"{' --small-input' if ckpt.small_input else ''} (or leave --arch out), or give the "
            f"checkpoint of a {wanted}.")
    data = data or ckpt.data
    _check_names(ckpt.arch, data)
    source = classification_source(cfg, data)
    if tuple(source.wnids) != ckpt.wnids:
        raise PretrainError(
            f"{str(file)!r} was trained on the {ckpt.description} (profile {ckpt.profile}), but "
            f"the {cfg.profile.name} profile gives the {source.description}: other classes. "
            f"Evaluate under the profile and data it was trained with (--profile {ckpt.profile}"
            f" --data {ckpt.data}, and the same IMAGENET_BOOK_DATA).")
    loader = fast_loader(cfg, split, source=source, img_size=ckpt.img_size, batch_size=batch_size,
                         device=cfg.device, progress=progress, train=False)
    net = ckpt.build().to(cfg.device)
    metrics = engine.evaluate(net, loader, cfg.device)
    return {**metrics, "images": len(loader.cache), "split": split, "checkpoint": str(file),
            "description": source.description}

