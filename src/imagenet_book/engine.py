"""The training engine: :func:`fit` and :func:`evaluate` for image classification.

The whole algorithm, as :func:`fit` runs it::

    for epoch in range(epochs):
        for X, y in this epoch's batches (from where a resumed run left off):
            loss = F.cross_entropy(net(X), y)     # under autocast on a GPU
            loss.backward(); optimizer.step(); scheduler.step(); ema.update(net)
            every `checkpoint_every` steps: save all that is needed to continue exactly
        evaluate on the validation set, record the epoch in the History, save a checkpoint

The rest of this file is that loop's parts, one small function each: the recipe
(:class:`TrainConfig`, its numbers live there and nowhere else), no weight decay on biases and
normalisation weights (:func:`param_groups`), linear warmup then cosine or one-cycle decay
(:func:`lr_factor`), mixed precision (bf16 on GPUs that have it, else fp16 with a ``GradScaler``;
fp32 on the CPU), checkpoints, and torchrun DDP.

Loss: ``torch.nn.functional.cross_entropy``. Chapter 02 shows that
:func:`imagenet_book.losses.cross_entropy` gives the same numbers; PyTorch's is one fused kernel
(faster, less memory), so the engine uses it. Validation losses have no label smoothing.

**Exact resume.** A checkpoint stores the weights, optimizer, scheduler, scaler and EMA, every
RNG state, the History, and where the data stood: the epoch, the batches done in it and the
loader's :class:`Resumable` state. On the CPU a resumed run ends with weights bit-identical to
an uninterrupted run's (on a GPU, as far as its kernels are deterministic).

**DDP.** Under ``torchrun --nproc_per_node=N`` the same call trains on N processes: each builds
the same global batch and keeps its ``1/N`` slice (:func:`fit` slices, so any loader works), DDP
averages the gradients, so the global batch size is the loader's ``batch_size``. BatchNorm
normalises each slice with its own statistics (convert with ``nn.SyncBatchNorm`` for global
ones). Only rank 0 writes checkpoints, history and bars; on resume every rank takes rank 0's RNG
states; :func:`evaluate` sums its counts over all ranks.

Taught in: chapters/06_pretraining.ipynb.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .metrics import topk_correct

__all__ = ["BatchLoader", "CheckpointError", "EMA", "History", "Resumable", "TrainConfig", "World",
           "destroy_distributed", "evaluate", "fit", "init_distributed", "load_checkpoint", "read_state",
           "lr_factor", "make_optimizer", "make_scheduler", "param_groups"]

FORMAT_VERSION = 1  # of the checkpoint dictionary; bump when its layout changes
KEEP_CHECKPOINTS = 2  # the newest and the one before it (the fallback if the newest is damaged)
LOG_EVERY = 50  # steps between reads of the loss from the device (each read waits for the GPU)


# ------------------------------------------------------------------------------- the recipe


@dataclass(frozen=True)
class TrainConfig:
    """The numbers of a training recipe (defaults: torchvision's ResNet recipe, cosine schedule).

    Attributes:
        epochs: passes over the training set.
        optimizer: ``"sgd"`` (with momentum) or ``"adamw"``.
        lr: peak learning rate, reached after warmup, for the global batch.
        weight_decay: L2 penalty on weights; biases and norm-layer weights get none.
        momentum: SGD momentum (AdamW: beta1).
        warmup_epochs: linear warmup from 0, in epochs (fractions allowed).
        warmup_steps: the same in optimizer steps; overrides ``warmup_epochs`` when given.
        schedule: after warmup, ``"cosine"`` (half cosine to 0) or ``"onecycle"`` (straight
            line to 0: with warmup, the triangular one-cycle policy).
        label_smoothing: ``eps`` of the training loss (target ``(1 - eps) * onehot + eps / C``).
        ema_decay: keep an exponential moving average of the weights with this decay (e.g.
            ``0.999``), evaluated each epoch beside the weights; ``None``: no EMA.

    Taught in: chapters/06_pretraining.ipynb.
    """

    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "onecycle"):
            raise ValueError(f"schedule must be 'cosine' or 'onecycle', got {self.schedule!r}")


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: weights of convolutions and linear layers (``ndim >= 2``) decay;
    biases and normalisation weights (``ndim <= 1``) do not: shrinking a BatchNorm scale or a
    bias towards 0 does not regularise, it only fights the layer.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    params = [p for p in net.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW over :func:`param_groups`, at ``cfg.lr``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    groups = param_groups(net, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps``, then from 1 down to 0 at ``total_steps``: half a
    cosine (``"cosine"``) or a straight line (``"onecycle"``).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step ``LambdaLR`` following :func:`lr_factor` over ``cfg.epochs * steps_per_epoch``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, cfg.schedule))


class EMA:
    """Exponential moving average of a network's weights: ``ema = decay * ema + (1 - decay) * w``
    after every step. Float buffers (BatchNorm's running statistics) are averaged too; integer
    ones (its step count) are copied.

    ``module`` is an eval-mode copy of the network holding the averages: evaluate it like ``net``.

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(net).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        for ema_v, v in zip(self.module.state_dict().values(), net.state_dict().values()):
            if ema_v.is_floating_point():
                ema_v.lerp_(v, 1 - self.decay)
            else:
                ema_v.copy_(v)


# ------------------------------------------------------------------------------- data


class Resumable(Protocol):
    """The loader protocol: what :func:`fit` uses, when a training loader has it, to resume.

    A training loader is any iterable of ``(X, y)`` batches with ``len()``. For a resumed run to
    see exactly the batches the interrupted one would have seen:

    * ``set_epoch(epoch)``: the next pass yields epoch ``epoch``. Its order and augmentation must
      depend on the loader's seed and ``epoch`` only, or else draw from the global RNG (which
      checkpoints save) *and* the loader must have ``iter_from``, so that skipped batches draw
      nothing;
    * ``iter_from(start)``: one pass of that epoch from batch ``start`` on. Without it, :func:`fit`
      draws and drops ``start`` batches: exact for ``data.fast.FastLoader`` (its crops come from
      a generator seeded by ``(seed, epoch)``), it only costs time;
    * ``state_dict()`` / ``load_state_dict(state)``: plain values that define the order (seed,
      batch size, dataset length), stored in checkpoints, restored and checked on resume.

    :class:`BatchLoader` has all of it.

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchLoader:
    """Batches from in-memory tensors ``(X, y)`` or a map-style dataset, in a seeded order.

    Epoch ``e``'s order is ``randperm`` from a ``torch.Generator`` seeded by ``(seed, e)``, so any
    position of any epoch can be regenerated (:class:`Resumable`). Each pass advances the epoch.

    Args:
        data: ``(X, y)`` tensors, ``X`` of shape ``(N, ...)`` and ``y`` int64 ``(N,)``; or a
            dataset whose items are ``(x, label)`` with ``x`` a tensor (stacked into batches).
        batch_size: examples per batch (the global batch under DDP).
        shuffle: a new order each epoch (else ``0 .. N-1``).
        seed: seed of the order.
        drop_last: drop the last, incomplete batch.
        device: move batches there (``None``: leave them where they are).
        transform_on_device: ``X -> X`` applied to each batch after the move (e.g. random flips,
            normalisation). If it draws random numbers, it must draw them from the global torch
            RNG (which checkpoints save) for resume to be exact.

    Yields:
        ``(X, y)``: ``X`` ``(B, ...)`` as stored (e.g. float32 ``(B, 3, H, W)``), ``y`` int64 ``(B,)``.

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __init__(self, data: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device: str | torch.device | None = None,
                 transform_on_device: Any = None) -> None:
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.drop_last, self.transform_on_device = drop_last, transform_on_device
        self.device = None if device is None else torch.device(device)
        self.tensors = isinstance(data, (tuple, list)) and all(isinstance(t, Tensor) for t in data)
        self.num_examples = len(data[0]) if self.tensors else len(data)
        self.epoch = 0

    def __len__(self) -> int:
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.epoch = epoch

    def _order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        return torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(seed))

    def _fetch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        if self.tensors:
            return self.data[0][index], self.data[1][index]
        items = [self.data[i] for i in index.tolist()]
        return torch.stack([x for x, _ in items]), torch.as_tensor([t for _, t in items])

    def iter_from(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass of the current epoch, from batch ``start`` on (earlier batches not built)."""
        order, self.epoch = self._order(), self.epoch + 1
        return self._batches(order, start)

    def _batches(self, order: Tensor, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            X, y = self._fetch(order[s:s + self.batch_size])
            if self.device is not None:
                X, y = X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield (X if self.transform_on_device is None else self.transform_on_device(X)), y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.iter_from(0)

    def state_dict(self) -> dict[str, Any]:
        """The values that define the order: plain ints and bools."""
        return {"seed": self.seed, "batch_size": self.batch_size, "num_examples": self.num_examples,
                "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the seed from ``state``; raise ``ValueError`` if the data or batching differ."""
        mine = self.state_dict()
        changed = {k: (state.get(k), mine[k]) for k in mine if k != "seed" and state.get(k) != mine[k]}
        if changed:
            raise ValueError(f"This loader differs from the checkpoint's (checkpoint, now): {changed}; "
                             "the interrupted order cannot be continued. Use the same data and batch "
                             "settings, or start a new run in an empty checkpoint folder.")
        self.seed = state["seed"]


def _epoch_batches(loader: Iterable, epoch: int, start: int) -> Iterator:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if hasattr(loader, "iter_from"):
        return loader.iter_from(start)
    return islice(iter(loader), start, None)


# ------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly 1-process) run: ``rank`` of ``size``, ``local_rank``
    on its machine (the GPU it uses).

    Taught in: chapters/06_pretraining.ipynb.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0


def init_distributed() -> World:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL with one GPU per process on
    CUDA, gloo on the CPU. Without torchrun (or ``WORLD_SIZE=1``) it does nothing.

    Taught in: chapters/06_pretraining.ipynb.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return _world()


def _world() -> World:
    if tdist.is_available() and tdist.is_initialized():
        return World(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def destroy_distributed() -> None:
    """Leave the process group, if any (call once, at the end of the script).

    Taught in: chapters/06_pretraining.ipynb.
    """
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def _distributed() -> Iterator[World]:
    """:func:`init_distributed`; on exit, destroy the group if this call created it."""
    created = tdist.is_available() and not tdist.is_initialized()
    world = init_distributed()
    try:
        yield world
    finally:
        if created and world.size > 1:
            destroy_distributed()


def _shard(X: Tensor, y: Tensor, world: World, even: bool) -> tuple[Tensor, Tensor]:
    """This rank's slice of a global batch (training needs equal slices: DDP averages them)."""
    if world.size == 1:
        return X, y
    if even and len(y) % world.size:
        raise ValueError(f"A training batch of {len(y)} examples does not split evenly over "
                         f"{world.size} processes. Use drop_last=True and a batch size divisible "
                         f"by {world.size}.")
    return X.tensor_split(world.size)[world.rank], y.tensor_split(world.size)[world.rank]


def _all_sum(t: Tensor, world: World) -> Tensor:
    if world.size > 1:
        t = t.clone()
        tdist.all_reduce(t)
    return t


# ------------------------------------------------------------------------------- devices


def _amp_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """None (auto), 'bf16', 'fp16', 'fp32' or False -> the autocast dtype (None: fp32)."""
    if amp is None:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, False: None}
    if amp not in choices:
        raise ValueError(f"amp must be None (auto), 'bf16', 'fp16', 'fp32' or False, got {amp!r}")
    return choices[amp]


def _to_device(X: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    fmt = torch.channels_last if channels_last and X.ndim == 4 else torch.preserve_format
    return X.to(device, non_blocking=True, memory_format=fmt), y.to(device, non_blocking=True)


@contextlib.contextmanager
def _explain_oom(what: str, batch_size: int, world: World, lr: float | None = None) -> Iterator[None]:
    """Re-raise an out-of-memory error with a batch size to try."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:  # the same class as torch.OutOfMemoryError
        half = max(1, batch_size // 2)
        lr_hint = f" and the learning rate with it (lr={lr / 2:g})" if lr is not None else ""
        raise torch.cuda.OutOfMemoryError(
            f"Out of memory during {what} on a batch of {batch_size} images "
            f"({batch_size // world.size} per process). Try half the batch size, batch_size={half}"
            f"{lr_hint}; mixed precision (amp='bf16' or 'fp16') also halves activation memory. "
            f"Original error: {err}") from err


# ------------------------------------------------------------------------------- history


@dataclass
class History:
    """What a run did.

    ``epochs``: one dict per epoch with ``epoch`` (epochs done), ``step``, ``train_loss`` (the
    training objective, label smoothing included), ``train_top1``, ``val_loss``, ``val_top1``,
    ``val_top5`` (``None`` without a validation loader), ``ema_val_*`` (with EMA), ``lr``,
    ``img_per_s`` (training images per second, all processes) and ``wall_s`` (seconds since the
    run began, across resumes). ``steps``: one dict per optimizer step: ``step``, ``epoch``
    (fractional), ``loss`` (rank 0's batch), ``lr``. ``ema``: the :class:`EMA` of the run that
    made it (not saved to files; its weights are in the checkpoints).

    Taught in: chapters/06_pretraining.ipynb.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    ema: EMA | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, list]:
        """``{"epochs": [...], "steps": [...]}`` of plain values (as stored in checkpoints)."""
        return {"epochs": self.epochs, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> History:
        """The inverse of :meth:`to_dict`."""
        return cls([dict(r) for r in d["epochs"]], [dict(r) for r in d["steps"]])

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write epochs and steps to a JSON file (:meth:`from_json` reads it back)."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> History:
        """Read a :meth:`to_json` file."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the per-epoch table, one row per epoch (:meth:`from_csv` reads it back)."""
        columns = list(dict.fromkeys(k for r in self.epochs for k in r))
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in r.items()}
                             for r in self.epochs)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> History:
        """The epochs of a :meth:`to_csv` file (empty cells become ``None``; no steps)."""
        def value(text: str) -> int | float | None:
            if text == "":
                return None
            return int(text) if text.lstrip("-").isdigit() else float(text)
        with open(path, newline="", encoding="utf-8") as f:
            return cls([{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)])

    def plot(self, title: str | None = None):
        """Loss (per step and per epoch) and top-1 curves against epochs; returns the figure.

        Taught in: chapters/06_pretraining.ipynb.
        """
        import matplotlib.pyplot as plt

        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
        if self.steps:
            ax_loss.plot([s["epoch"] for s in self.steps], [s["loss"] for s in self.steps],
                         alpha=0.3, lw=0.8, label="train (each step)")
        x = [r["epoch"] for r in self.epochs]
        for ax, keys in ((ax_loss, ("train_loss", "val_loss", "ema_val_loss")),
                         (ax_acc, ("train_top1", "val_top1", "val_top5", "ema_val_top1"))):
            for key in keys:
                ys = [r.get(key) for r in self.epochs]
                if any(v is not None for v in ys):
                    ax.plot(x, [math.nan if v is None else v for v in ys], "o-", label=key)
            ax.set_xlabel("epoch")
            ax.legend()
        ax_loss.set_ylabel("cross-entropy")
        ax_acc.set_ylabel("accuracy")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig


# ------------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: damaged file, or made for another network. The message says
    which file and what to do.

    Taught in: chapters/06_pretraining.ipynb.
    """


def _arch_of(net: nn.Module, arch: str | None = None) -> tuple[str, int | None]:
    """(architecture name, number of classes = outputs of the last Linear layer)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    return arch or type(net).__name__, (linears[-1].out_features if linears else None)


def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain numbers (loadable with ``weights_only=True``)."""
    version, state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, torch.tensor(state, dtype=torch.int64), gauss],
            "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(s: dict[str, Any]) -> None:
    version, state, gauss = s["python"]
    random.setstate((version, tuple(state.tolist()), gauss))
    keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob("step-*.pt"))  # zero-padded step numbers: oldest first


def _save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Write ``step-<step>.pt`` atomically (temporary file, fsync, rename); keep the newest two."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state['step']:08d}.pt"
    tmp = folder / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    for old in _checkpoints(folder)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike[str], net: nn.Module | None = None, *,
                    ema: bool = False, arch: str | None = None) -> dict[str, Any]:
    """Read a checkpoint of :func:`fit` with ``torch.load(weights_only=True)``, on the CPU.

    Args:
        path: a ``step-*.pt`` file.
        net: if given, load the weights into it, after checking it is the same architecture
            (name, default the class name, and number of classes) as the checkpoint's.
        ema: load the EMA weights instead of the trained ones.
        arch: the architecture name ``fit`` was given, if any.

    Returns:
        The checkpoint: ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``rng``,
        ``data`` (``epoch``, ``batches_done``, ``loader``), ``step``, ``history``, ``config``,
        ``arch``, ``num_classes``, ``format_version``.

    Raises:
        CheckpointError: a truncated or corrupt file, or a different architecture.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    state = read_state(
        path, "format_version", FORMAT_VERSION, what="the checkpoint",
        redo="Delete it: resume='auto' then continues from the previous checkpoint in the same "
             "folder, if there is one.",
        wrong=f"is not a checkpoint of imagenet_book.engine (format version {FORMAT_VERSION}).")
    if net is not None:
        _load_weights(net, state, path, ema, arch)
    return state


def read_state(path: str | os.PathLike[str], key: str, value: Any, *, what: str, redo: str,
               wrong: str, error: type[Exception] = CheckpointError,
               missing: type[FileNotFoundError] = FileNotFoundError) -> dict[str, Any]:
    """Read a file the book wrote with ``torch.save`` (``torch.load(weights_only=True)``, CPU) and
    check it is the kind expected: a dict whose ``state[key] == value``.

    Every checkpoint reader of the package goes through here (the engine's, pretraining's,
    fine-tuning's, the detector's), so all say the same things about a bad file.

    Args:
        path: the file. key, value: the format tag the writer put in the dict.
        what: the file's kind for messages (``"the checkpoint"``, ``"the detector checkpoint"``).
        redo: the sentence telling the user how to get a good file again.
        wrong: the end of the message for a readable file of another kind
            (``"<path> " + wrong``).
        error: the exception for a damaged or wrong file; missing: the one for no file.

    Raises:
        ``missing``: no such file. ``error``: a truncated or corrupt file, or another kind.

    Taught in: chapters/06_pretraining.ipynb.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{what[:1].upper()}{what[1:]} {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...: the causes vary by version
        raise error(f"Cannot read {what} {str(path)!r}: the file is truncated or corrupt "
                    f"({type(err).__name__}: {err}). {redo}") from err
    if not isinstance(state, dict) or state.get(key) != value:
        raise error(f"{str(path)!r} {wrong}")
    return state


def _load_weights(net: nn.Module, state: dict, path: Path, ema: bool, arch: str | None) -> None:
    name, classes = _arch_of(net, arch)
    made_for = f"a {state['arch']} with {state['num_classes']} classes"
    fix = ("Give checkpoint_dir a folder of its own for each architecture, or build the network "
           "the checkpoint was made for.")
    if (name, classes) != (state["arch"], state["num_classes"]):
        raise CheckpointError(f"The checkpoint {str(path)!r} holds {made_for}, but the network "
                              f"given is a {name} with {classes} classes. {fix}")
    try:
        net.load_state_dict(state["ema" if ema else "model"])
    except RuntimeError as err:
        raise CheckpointError(f"The checkpoint {str(path)!r} holds {made_for} whose layers differ "
                              f"from this {name}'s ({err}). {fix}") from err


def _resume_path(resume: bool | str | os.PathLike[str], folder: Path | None) -> Path | None:
    if resume is True:
        resume = "auto"
    if resume is False or resume is None:
        if folder is not None and _checkpoints(folder):
            raise FileExistsError(f"{str(folder)!r} already holds checkpoints of a run. Pass "
                                  "resume='auto' to continue it, or use an empty folder.")
        return None
    if resume == "auto":
        if folder is None:
            raise ValueError("resume='auto' needs checkpoint_dir")
        found = _checkpoints(folder)
        return found[-1] if found else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={str(resume)!r}: no such checkpoint file")
    return Path(resume)


# ------------------------------------------------------------------------------- the loop


def _train_step(model: nn.Module, X: Tensor, y: Tensor, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
                label_smoothing: float) -> tuple[Tensor, Tensor]:
    """One optimizer step; returns the (detached) loss and logits ``(B, C)``."""
    with torch.autocast(X.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(X)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # the scaler is a no-op unless amp is fp16
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable, device: str | torch.device | None = None, *,
             amp: str | bool | None = None, channels_last: bool | None = None) -> dict[str, float]:
    """Mean loss (no label smoothing), top-1 and top-5 accuracy of ``net`` over ``loader``.

    Under DDP each rank evaluates its slice of every batch and the sums are all-reduced, so
    every rank returns the metrics of the whole set. ``top5`` is top-``min(5, C)``.

    Args:
        net: the network (a DDP or :class:`EMA` wrapper is unwrapped).
        loader: batches ``(X, y)``: float ``(B, 3, H, W)``, int64 ``(B,)``.
        device: default: where ``net``'s parameters are.
        amp, channels_last: as for :func:`fit`.

    Returns:
        ``{"loss": float, "top1": float, "top5": float}``, accuracies in ``[0, 1]``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if isinstance(net, (EMA, nn.parallel.DistributedDataParallel)):
        net = net.module
    device = torch.device(device) if device is not None else next(net.parameters()).device
    amp_dtype, world = _amp_dtype(amp, device), _world()
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    was_training = net.training
    net.eval()
    sums = torch.zeros(4, device=device)  # loss, top-1 hits, top-5 hits, examples
    for X, y in loader:
        batch_size = len(y)
        X, y = _to_device(*_shard(X, y, world, even=False), device, channels_last)
        if len(y) == 0:
            continue
        with _explain_oom("evaluation", batch_size, world), \
                torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = net(X).float()
        k = min(5, logits.shape[1])
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"),
                             topk_correct(logits, y, 1).sum(), topk_correct(logits, y, k).sum(),
                             torch.tensor(float(len(y)), device=device)])
    net.train(was_training)
    loss, top1, top5, n = _all_sum(sums, world).tolist()
    if n == 0:
        raise ValueError("evaluate(): the loader yielded no examples")
    return {"loss": loss / n, "top1": top1 / n, "top5": top5 / n}


def _check_loader(loader: Any, world: World, checkpointing: bool) -> None:
    if len(loader) == 0:
        raise ValueError("train_loader yields no batches: is the dataset smaller than one batch "
                         "with drop_last=True?")
    if world.size > 1 and (getattr(loader, "batch_size", 0) % world.size
                           or getattr(loader, "drop_last", True) is False):
        raise ValueError(f"Under DDP every process needs an equal slice of every training batch: "
                         f"use drop_last=True and a batch size divisible by {world.size}.")
    if checkpointing and not hasattr(loader, "set_epoch"):
        warnings.warn("train_loader has no set_epoch(): a resumed run will not see the batches the "
                      "interrupted run would have (see the loader protocol in imagenet_book.engine; "
                      "BatchLoader follows it).", stacklevel=3)


def fit(net: nn.Module, train_loader: Resumable | Iterable, val_loader: Iterable | None = None,
        config: TrainConfig | None = None, *, device: str | torch.device | None = None,
        amp: str | bool | None = None, channels_last: bool | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_every: int | None = None,
        resume: bool | str | os.PathLike[str] = False, progress: bool = True,
        max_steps: int | None = None, arch: str | None = None,
        batch_transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        **recipe: Any) -> History:
    """Train ``net`` on ``train_loader`` with a recipe; evaluate on ``val_loader`` each epoch.

    Under ``torchrun`` it trains with DDP in the process group of :func:`init_distributed`. A
    script that writes files after ``fit`` should call :func:`init_distributed` first (it
    returns the rank) and :func:`destroy_distributed` at its end: a group that ``fit`` has to
    create itself, it also destroys on return, and every rank then looks like rank 0.

    Args:
        net: a classifier, float ``(B, 3, H, W)`` -> logits ``(B, C)``. Trained in place (moved
            to ``device``; channels_last when that is on).
        train_loader: batches ``(X, y)``, X float ``(B, 3, H, W)``, y int64 ``(B,)`` (or class
            probabilities, float ``(B, C)``), with ``len()``; under DDP, the global batch. Exact resume needs :class:`Resumable`'s
            methods (:class:`BatchLoader` has them all).
        val_loader: evaluation batches, or ``None``.
        config: the recipe (:class:`TrainConfig`); keyword arguments named like its fields
            (``epochs=``, ``lr=``, ...) override it.
        device: default ``"cuda"`` if available (``cuda:LOCAL_RANK`` under torchrun), else CPU.
        amp: ``None`` (auto: bf16 on CUDA GPUs that support it, fp16 with a ``GradScaler`` on
            other CUDA GPUs, fp32 elsewhere), ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``False``.
        channels_last: memory format of weights and batches; ``None``: on for CUDA.
        checkpoint_dir: where ``step-<N>.pt`` checkpoints go (the newest two are kept); one
            is written at the end of every epoch and every ``checkpoint_every`` steps.
        resume: ``False`` (fresh run; refuses a ``checkpoint_dir`` that holds checkpoints),
            ``"auto"`` or ``True`` (the newest checkpoint in ``checkpoint_dir``, else a fresh
            run) or a checkpoint file. A finished run's checkpoint loads its weights and
            History and trains no further.
        progress: a tqdm bar per epoch (rank 0 only).
        max_steps: stop after this many optimizer steps in all (the schedule still spans
            ``epochs``); the last, partial epoch is evaluated and recorded.
        arch: architecture name stored in checkpoints and checked on resume (default: the
            class name of ``net``).
        batch_transform: applied to every training batch on the device, after sharding, e.g.
            :func:`imagenet_book.augment.mix_transform` (mixup/cutmix). It may turn ``y`` into
            probabilities ``(B, C)``; the loss then uses them as soft targets and the training
            top-1 counts a hit when the top logit is the target's largest class. It must draw
            its random numbers from torch's global generator (checkpoints keep its state, so a
            resumed run mixes the same pairs).

    Returns:
        The :class:`History` (also inside every checkpoint).

    Raises:
        CheckpointError: the checkpoint to resume from is damaged or made for another network.
        torch.OutOfMemoryError: with a batch size to try.

    Taught in: chapters/06_pretraining.ipynb.
    """
    cfg = replace(config or TrainConfig(), **recipe)
    with _distributed() as world:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", world.local_rank)
        amp_dtype = _amp_dtype(amp, device)
        channels_last = device.type == "cuda" if channels_last is None else channels_last
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        _check_loader(train_loader, world, folder is not None)

        steps_per_epoch = len(train_loader)
        optimizer = make_optimizer(net, cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        ema = EMA(net, cfg.ema_decay) if cfg.ema_decay else None
        history = History(ema=ema)
        first_epoch, done, step, seen, epoch_s, elapsed = 0, 0, 0, 0, 0.0, 0.0
        meter = torch.zeros(2, device=device)  # this epoch's training loss sum and top-1 hits
        path = _resume_path(resume, folder)
        if path is not None:
            state = load_checkpoint(path, net, arch=arch)
            _restore(state, cfg, optimizer, scheduler, scaler, ema, train_loader)
            first_epoch, done = state["data"]["epoch"], state["data"]["batches_done"]
            step, elapsed = state["step"], state["elapsed"]
            loss_sum, hits, seen_all, epoch_s = state["meter"]
            if world.rank == 0:  # the sums over all ranks so far; the others start from 0
                meter = torch.tensor([loss_sum, hits], device=device)
            seen = int(seen_all) // world.size
            history = History.from_dict(state["history"])
            history.ema = ema
        if folder is not None and world.rank == 0:
            for stale in folder.glob(".step-*.tmp-*"):  # left by a run killed while saving
                stale.unlink(missing_ok=True)
        model = net if world.size == 1 else nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
        pending: list[tuple[int, Tensor, float]] = []  # per-step losses, read in bulk (one sync)
        t_start = time.perf_counter()

        def flush() -> None:
            losses = torch.stack([loss for _, loss, _ in pending]).tolist() if pending else []
            history.steps += [{"step": s, "epoch": round(s / steps_per_epoch, 4), "loss": v, "lr": r}
                              for (s, _, r), v in zip(pending, losses)]
            pending.clear()

        def checkpoint(epoch: int, done: int) -> None:
            flush()
            # This epoch so far, over all ranks: loss sum, top-1 hits, examples, seconds.
            totals = _all_sum(meter, world).tolist() + [seen * world.size,
                                                        epoch_s + time.perf_counter() - t_epoch]
            if folder is None or world.rank != 0:
                return
            name, classes = _arch_of(net, arch)
            _save_checkpoint({
                "format_version": FORMAT_VERSION, "arch": name, "num_classes": classes,
                "config": asdict(cfg), "step": step, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema else None,
                "rng": _rng_state(), "meter": totals, "history": history.to_dict(),
                "elapsed": elapsed + time.perf_counter() - t_start,
                "data": {"epoch": epoch, "batches_done": done, "loader":
                         train_loader.state_dict() if hasattr(train_loader, "state_dict") else {}},
            }, folder)

        for epoch in range(first_epoch, cfg.epochs):
            if max_steps is not None and step >= max_steps:
                break
            bar = tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress or world.rank != 0)
            t_epoch = time.perf_counter()
            model.train()
            for X, y in _epoch_batches(train_loader, epoch, done):
                batch_size = len(y)
                X, y = _to_device(*_shard(X, y, world, even=True), device, channels_last)
                if batch_transform is not None:
                    X, y = batch_transform(X, y)
                lr = optimizer.param_groups[0]["lr"]
                with _explain_oom("training", batch_size, world, cfg.lr):
                    loss, logits = _train_step(model, X, y, optimizer, scaler, amp_dtype,
                                               cfg.label_smoothing)
                scheduler.step()
                if ema is not None:
                    ema.update(net)
                step, done, seen = step + 1, done + 1, seen + len(y)
                hard = y.argmax(1) if y.is_floating_point() else y  # soft targets: their top class
                meter += torch.stack([loss * len(y), topk_correct(logits, hard, 1).sum()])
                pending.append((step, loss, lr))
                bar.update()
                if step % LOG_EVERY == 0:
                    flush()
                    bar.set_postfix(loss=f"{history.steps[-1]['loss']:.3f}")
                if checkpoint_every and step % checkpoint_every == 0 and done < steps_per_epoch:
                    checkpoint(epoch, done)
                if max_steps is not None and step >= max_steps:
                    break

            flush()
            loss_sum, hits = _all_sum(meter, world).tolist()
            seen_all, train_s = seen * world.size, epoch_s + time.perf_counter() - t_epoch
            progress_in_epochs = round(epoch + done / steps_per_epoch, 4)
            record = {"epoch": epoch + 1 if done == steps_per_epoch else progress_in_epochs,
                      "step": step, "train_loss": loss_sum / seen_all, "train_top1": hits / seen_all,
                      "val_loss": None, "val_top1": None, "val_top5": None}
            if val_loader is not None:
                for prefix, module in (("val_", net), ("ema_val_", ema.module if ema else None)):
                    if module is not None:
                        metrics = evaluate(module, val_loader, device, amp=amp,
                                           channels_last=channels_last)
                        record.update({prefix + k: v for k, v in metrics.items()})
            record.update(lr=history.steps[-1]["lr"] if history.steps else None,
                          img_per_s=seen_all / train_s, wall_s=elapsed + time.perf_counter() - t_start)
            history.epochs.append(record)
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("train_loss", "val_top1")
                             if record[k] is not None})
            bar.close()
            if done == steps_per_epoch:  # a full epoch: the next starts from zero
                done, seen, epoch_s, t_epoch = 0, 0, 0.0, time.perf_counter()
                meter.zero_()
                checkpoint(epoch + 1, 0)
            else:
                checkpoint(epoch, done)
        return history


def _restore(state: dict[str, Any], cfg: TrainConfig, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             ema: EMA | None, loader: Any) -> None:
    """Put everything but the weights and the counters back as the checkpoint has it."""
    changed = sorted(k for k, v in asdict(cfg).items() if state["config"].get(k) != v)
    if changed:
        warnings.warn(f"Resuming with a recipe that differs from the checkpoint's in {changed}: "
                      "the run will not match an uninterrupted one.", stacklevel=3)
    optimizer.load_state_dict(state["optimizer"])  # after the scheduler set its initial lr
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.module.load_state_dict(state["ema"])
    if hasattr(loader, "load_state_dict") and state["data"]["loader"]:
        loader.load_state_dict(state["data"]["loader"])
    _set_rng_state(state["rng"])
