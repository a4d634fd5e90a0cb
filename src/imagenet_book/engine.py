"""The training engine: the book's one loop, :func:`fit`, and :func:`evaluate`, for every task.

The whole algorithm, as :func:`fit` runs it::

    for epoch in range(epochs):
        task.train_mode(net)
        for batch in this epoch's batches (from where a resumed run left off):
            out = task.training_step(net, batch)      # {"loss": ..., other scalars}; autocast on a GPU
            out["loss"].backward(); clip; optimizer.step(); scheduler.step(); ema.update(net)
            every `checkpoint_every` steps: save all that is needed to continue exactly
        evaluate(net, val_loader, task=task): the task's meter; record the epoch; save a checkpoint
        callbacks (e.g. early stopping) may end the run

What differs between problems is the **task** (:mod:`imagenet_book.tasks`): how a batch becomes
a loss, which meter evaluates, which parameters train at which rate, how train mode is set. The
default is :class:`~imagenet_book.tasks.Classification` with the recipe's label smoothing. The
recipe (:class:`~imagenet_book.recipe.TrainConfig`), the optimizer and the schedule come from
:mod:`imagenet_book.recipe`, the same for every task. The loop alone owns mixed precision (bf16
on GPUs that have it, else fp16 with a ``GradScaler``; fp32 on the CPU), ``backward``, clipping,
the step, the schedule, checkpoints, DDP, EMA and logging.

Loss of the classification task: ``torch.nn.functional.cross_entropy``. Chapter 02 shows that
:func:`imagenet_book.losses.cross_entropy` gives the same numbers; PyTorch's is one fused kernel
(faster, less memory), so the task uses it. Validation losses have no label smoothing.

**Exact resume.** A checkpoint stores the weights, optimizer, scheduler, scaler and EMA, every
RNG state, the History, the callbacks' state, and where the data stood: the epoch, the batches
done in it and the loader's :class:`Resumable` state. On the CPU a resumed run ends with weights
bit-identical to an uninterrupted run's (on a GPU, as far as its kernels are deterministic).

**DDP.** Under ``torchrun --nproc_per_node=N`` the same call trains on N processes: each builds
the same global batch and keeps its ``1/N`` slice (:func:`fit` slices tensors and lists, so any
loader works), DDP averages the gradients, so the global batch size is the loader's
``batch_size``. BatchNorm normalises each slice with its own statistics (convert with
``nn.SyncBatchNorm`` for global ones). Only rank 0 writes checkpoints, history and bars; on
resume every rank takes rank 0's RNG states; :func:`evaluate` combines the meters of all ranks.

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
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.distributed as tdist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import BookError
from .files import read_state, save_atomically
from .recipe import TrainConfig, lr_factor, make_optimizer, make_scheduler, param_groups
from .tasks import Classification, Task, World, all_sum

__all__ = ["COMPUTE", "BatchLoader", "Callback", "CheckpointError", "EMA", "EarlyStopping", "History", "Resumable",
           "TrainConfig", "World", "amp_dtype", "bf16_is_fast", "compute_given", "compute_note",
           "destroy_distributed", "evaluate", "fit", "init_distributed", "load_checkpoint", "lr_factor",
           "make_optimizer", "make_scheduler", "param_groups", "plain_values", "recompute_bn", "world"]

FORMAT_VERSION = 2  # of the checkpoint dictionary; bump when its layout changes
COMPUTE = ("amp", "channels_last")  # how fit computes; a run's settings record those that were given
KEEP_CHECKPOINTS = 2  # the newest and the one before it (the fallback if the newest is damaged)
LOG_EVERY = 50  # steps between reads of the loss from the device (each read waits for the GPU)


# ------------------------------------------------------------------------------- EMA


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



@torch.no_grad()
def recompute_bn(net: nn.Module, batches: Iterable[Tensor], *, task: Task | None = None) -> int:
    """Precise BatchNorm: recompute the running statistics of the BatchNorm layers that training
    moves, as plain means over ``batches``, with the network's final weights.

    During training each BatchNorm layer keeps a moving average (``momentum`` 0.1) of its
    batches' means and variances, computed while the weights were still changing: at a high rate
    or after few steps the averages describe earlier weights, and in evaluation mode the layer
    then normalises with statistics its inputs no longer have (a network trained from scratch
    for a few hundred steps can map every image to nearly the same output). One pass over
    training inputs in training mode, with ``momentum=None`` (a cumulative mean) and no
    gradients, replaces them by the statistics the final weights produce (Wu & Johnson, 2021,
    "Rethinking Batch in BatchNorm"). Nothing else changes: no weight moves.

    Which layers: those that ``task.train_mode(net)`` leaves in training mode (default
    :class:`~imagenet_book.tasks.Classification`, i.e. all of them); layers a task keeps frozen
    (a probe's backbone, a fine-tune's ``freeze_bn``) keep their statistics.

    Args:
        net: the trained network; left in evaluation mode.
        batches: float ``(B, ...)`` inputs as the network takes them (normalised, on its device),
            e.g. the training images without augmentation, in batches of the training size.
        task: the task the network was trained with.

    Returns:
        How many BatchNorm layers were recomputed.

    Raises:
        ValueError: ``batches`` is empty.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if isinstance(net, nn.parallel.DistributedDataParallel):
        net = net.module
    (task if task is not None else Classification()).train_mode(net)
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # running_* become cumulative means of the batches' statistics

    def put_back(restore: bool) -> None:
        for m, (momentum, mean, var, count) in zip(layers, saved):
            m.momentum = momentum
            if restore:
                m.running_mean.copy_(mean), m.running_var.copy_(var), m.num_batches_tracked.copy_(count)
        net.eval()

    seen = 0
    try:
        for X in batches:
            net(X)
            seen += len(X)
    except BaseException:  # the statistics as they were, not half recomputed
        put_back(restore=True)
        raise
    put_back(restore=not seen)
    if not seen:
        raise ValueError("recompute_bn: the batches were empty; pass the training inputs.")
    return len(layers)


# ------------------------------------------------------------------------------- data


class Resumable(Protocol):
    """The loader protocol: what :func:`fit` uses, when a training loader has it, to resume.

    A training loader is any iterable of batches (tuples such as ``(X, y)``) with ``len()``. For
    a resumed run to see exactly the batches the interrupted one would have seen:

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
    def __iter__(self) -> Iterator[tuple[Any, ...]]: ...
    def set_epoch(self, epoch: int) -> None: ...
    def iter_from(self, start: int) -> Iterator[tuple[Any, ...]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class BatchLoader:
    """Batches from in-memory tensors or a map-style dataset, in a seeded order.

    Epoch ``e``'s order is ``randperm`` from a ``torch.Generator`` seeded by ``(seed, e)``, so any
    position of any epoch can be regenerated (:class:`Resumable`). Each pass advances the epoch.

    Args:
        data: a tuple of tensors of the same length ``N`` (e.g. ``(X, y)`` or ``(X, y, mask)``):
            each batch is the tuple of their rows; or a dataset whose items are combined by
            ``collate`` (default: items ``(x, label)`` with ``x`` a tensor, stacked into ``(X, y)``).
        batch_size: examples per batch (the global batch under DDP).
        shuffle: a new order each epoch (else ``0 .. N-1``).
        seed: seed of the order.
        drop_last: drop the last, incomplete batch.
        device: move batches there (``None``: leave them where they are); tensors inside lists
            and dicts move too.
        transform_on_device: ``X -> X`` applied to the batch's first element after the move
            (e.g. random flips, normalisation).
        batch_transform: ``(*batch) -> batch`` applied to the whole batch after the move and
            ``transform_on_device`` (e.g. a flip that moves an image and its mask together).
        collate: ``list of items -> batch tuple``, for datasets whose items do not stack (e.g.
            :func:`imagenet_book.data.voc.collate_detection`).

        A random transform (``transform_on_device``, ``batch_transform`` or the dataset's own)
        must draw from the global torch RNG, which checkpoints save, for resume to be exact; it
        then also gives the same draws on every DDP process (all are seeded alike).

    Yields:
        Tuples: ``data``'s rows (e.g. ``X`` float32 ``(B, 3, H, W)``, ``y`` int64 ``(B,)``), or
        what ``collate`` makes of the items.

    Taught in: chapters/06_pretraining.ipynb.
    """

    def __init__(self, data: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, device: str | torch.device | None = None,
                 transform_on_device: Callable[[Tensor], Tensor] | None = None,
                 batch_transform: Callable[..., Sequence[Any]] | None = None,
                 collate: Callable[[list[Any]], Sequence[Any]] | None = None) -> None:
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.drop_last, self.transform_on_device = drop_last, transform_on_device
        self.batch_transform, self.collate = batch_transform, collate
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

    def _fetch(self, index: Tensor) -> tuple[Any, ...]:
        if self.tensors:
            return tuple(t[index] for t in self.data)
        items = [self.data[i] for i in index.tolist()]
        if self.collate is not None:
            return tuple(self.collate(items))
        return torch.stack([x for x, _ in items]), torch.as_tensor([t for _, t in items])

    def iter_from(self, start: int) -> Iterator[tuple[Any, ...]]:
        """One pass of the current epoch, from batch ``start`` on (earlier batches not built)."""
        order, self.epoch = self._order(), self.epoch + 1
        return self._batches(order, start)

    def _batches(self, order: Tensor, start: int) -> Iterator[tuple[Any, ...]]:
        for s in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            batch = self._fetch(order[s:s + self.batch_size])
            if self.device is not None:
                batch = to_device(batch, self.device)
            if self.transform_on_device is not None:
                batch = (self.transform_on_device(batch[0]), *batch[1:])
            if self.batch_transform is not None:
                batch = tuple(self.batch_transform(*batch))
            yield batch

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
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


def _map_tensors(batch: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every tensor inside tuples, lists and dicts (other values unchanged)."""
    if isinstance(batch, Tensor):
        return fn(batch)
    if isinstance(batch, (list, tuple)):
        return type(batch)([_map_tensors(b, fn) for b in batch])
    if isinstance(batch, dict):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    return batch


def to_device(batch: Any, device: torch.device | str, channels_last: bool = False) -> Any:
    """Every tensor of ``batch`` (a tensor, or tuples/lists/dicts of them) moved to ``device``;
    4-D tensors (image batches) in channels_last memory format when ``channels_last``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    def move(t: Tensor) -> Tensor:
        fmt = torch.channels_last if channels_last and t.ndim == 4 else torch.preserve_format
        return t.to(device, non_blocking=True, memory_format=fmt)
    return _map_tensors(batch, move)


def batch_len(batch: Sequence[Any]) -> int:
    """The number of examples in a batch tuple: the length of its first element."""
    return len(batch[0])


# ------------------------------------------------------------------------------- distributed


def init_distributed() -> World:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): NCCL with one GPU per process on
    CUDA, gloo on the CPU. Without torchrun (or ``WORLD_SIZE=1``) it does nothing.

    Returns:
        This process's :class:`~imagenet_book.tasks.World`.

    Taught in: chapters/06_pretraining.ipynb.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not tdist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world()


def world() -> World:
    """This process's place in the current process group (rank 0 of 1 outside one).

    Taught in: chapters/06_pretraining.ipynb.
    """
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
    here = init_distributed()
    try:
        yield here
    finally:
        if created and here.size > 1:
            destroy_distributed()


def _shard(batch: Sequence[Any], here: World, even: bool) -> tuple[Any, ...]:
    """This rank's slice of a global batch (training needs equal slices: DDP averages them).
    Tensors and lists are sliced along their first dimension, other values kept."""
    if here.size == 1:
        return tuple(batch)
    n = batch_len(batch)
    if even and n % here.size:
        raise ValueError(f"A training batch of {n} examples does not split evenly over "
                         f"{here.size} processes. Use drop_last=True and a batch size divisible "
                         f"by {here.size}.")
    sizes = [len(part) for part in torch.arange(n).tensor_split(here.size)]
    start = sum(sizes[:here.rank])
    stop = start + sizes[here.rank]
    return tuple(b[start:stop] if isinstance(b, (Tensor, list, tuple)) else b for b in batch)


# ------------------------------------------------------------------------------- devices


def amp_dtype(amp: str | bool | None, device: str | torch.device) -> torch.dtype | None:
    """The floating-point type the loop computes in on ``device`` for the setting ``amp`` (see
    :func:`fit`): ``None`` (automatic) gives bf16 on CUDA GPUs that have it, fp16 on other CUDA GPUs
    and ``None`` (float32, no autocast) elsewhere; ``"bf16"``, ``"fp16"``, ``"fp32"`` or ``False``
    force one.

    Raises:
        ValueError: any other setting.

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    if amp is None:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    choices = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None, False: None}
    if amp not in choices:
        raise ValueError(f"amp must be None (auto), 'bf16', 'fp16', 'fp32' or False, got {amp!r}")
    return choices[amp]


def bf16_is_fast(device: str | torch.device) -> bool:
    """Whether ``device`` has hardware for bfloat16 matrix products: a CUDA GPU that supports
    bf16, or a CPU with Intel's AMX tiles (Sapphire Rapids and later), where oneDNN runs bf16
    convolutions about twice as fast as float32. Elsewhere bf16 autocast is emulated, and slower.

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # present since torch 2.3
    return bool(amx()) if callable(amx) else False


def compute_given(amp: str | bool | None = None, channels_last: bool | None = None) -> dict[str, Any]:
    """``amp`` and ``channels_last`` of :func:`fit` that were given (not ``None``, the loop's choice
    for the device), as a run's settings record them: ``{}`` when neither was.

    Taught in: chapters/10_practice.ipynb.
    """
    return {k: v for k, v in zip(COMPUTE, (amp, channels_last)) if v is not None}


def compute_note(amp: str | bool | None = None, channels_last: bool | None = None) -> str:
    """:func:`compute_given` for a run's report line: ``""`` when neither was given, else e.g.
    ``" (amp bf16, channels_last True)"``.

    Taught in: chapters/10_practice.ipynb.
    """
    given = [f"{k} {v}" for k, v in compute_given(amp, channels_last).items()]
    return f" ({', '.join(given)})" if given else ""


def autocast(device: str | torch.device, amp: str | bool | None = None) -> Any:
    """The loop's mixed-precision context for ``device``: bf16 on CUDA GPUs that have it, fp16
    on other CUDA GPUs, nothing (fp32) elsewhere; ``amp`` forces one (see :func:`fit`).

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    dtype = amp_dtype(amp, device)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@contextlib.contextmanager
def _explain_oom(what: str, batch_size: int, here: World, lr: float | None = None) -> Iterator[None]:
    """Re-raise an out-of-memory error with a batch size to try."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as err:  # the same class as torch.OutOfMemoryError
        half = max(1, batch_size // 2)
        lr_hint = f" and the learning rate with it (lr={lr / 2:g})" if lr is not None else ""
        raise torch.cuda.OutOfMemoryError(
            f"Out of memory during {what} on a batch of {batch_size} images "
            f"({batch_size // here.size} per process). Try half the batch size, batch_size={half}"
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
    made it (not saved to files; its weights are in the checkpoints). ``final``: the whole last
    evaluation (the task meter's metrics, per-class lists included), or ``None``.

    Taught in: chapters/06_pretraining.ipynb.
    """

    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    ema: EMA | None = field(default=None, repr=False, compare=False)
    final: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"epochs": [...], "steps": [...], "final": {...} or None}`` of plain values (as
        stored in checkpoints)."""
        return {"epochs": self.epochs, "steps": self.steps, "final": self.final}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict`."""
        return cls([dict(r) for r in d["epochs"]], [dict(r) for r in d["steps"]], final=d.get("final"))

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


# ------------------------------------------------------------------------------- callbacks


class Callback:
    """Something that hooks into :func:`fit` at the end of each epoch, without a loop of its own.

    ``on_step_end(step, net)`` runs after every optimizer step (``step`` counts from 1; e.g. an
    EMA teacher that follows the network). ``on_epoch_end(record, net)`` sees the epoch's History
    record (``train_*``, ``val_*``) and the network; it returns ``True`` to end the run after this
    epoch. ``state_dict`` /
    ``load_state_dict`` (plain values and tensors) go into the checkpoints, so a resumed run
    continues with the callback as it was. ``on_fit_end(net)`` runs once when training ends.

    Taught in: chapters/10_practice.ipynb.
    """

    def on_step_end(self, step: int, net: nn.Module) -> None:
        return None

    def on_epoch_end(self, record: dict[str, Any], net: nn.Module) -> bool:
        return False

    def on_fit_end(self, net: nn.Module) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better ``metric``; at the end, put the weights of
    the best epoch back into the network.

    Args:
        metric: a key of the epoch records, e.g. ``"val_loss"`` or ``"val_top1"``.
        mode: ``"min"`` (lower is better: losses) or ``"max"`` (accuracies, mAP, mIoU).
        patience: epochs without improvement before stopping.
        min_delta: an improvement must beat the best by more than this.

    Attributes (after :func:`fit`): ``best_epoch``, ``best`` (the best record's ``val_*``
    entries), ``stopped_epoch``, ``stopped_early``.

    Taught in: chapters/10_practice.ipynb.
    """

    def __init__(self, metric: str = "val_loss", mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best_score, self.best_epoch, self.waited = -math.inf, 0, 0
        self.best: dict[str, Any] = {}
        self.best_state: dict[str, Tensor] | None = None
        self.stopped_epoch, self.stopped_early = 0, False

    def on_epoch_end(self, record: dict[str, Any], net: nn.Module) -> bool:
        value = record.get(self.metric)
        if value is None:
            raise ValueError(f"EarlyStopping watches {self.metric!r}, which the epoch records lack "
                             f"(they have {sorted(record)}): give fit a val_loader, or another metric.")
        score = value if self.mode == "max" else -value
        self.stopped_epoch = record["epoch"]
        if score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.waited = score, record["epoch"], 0
            self.best = {k: v for k, v in record.items() if k.startswith("val_")}
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            return False
        self.waited += 1
        self.stopped_early = self.waited >= self.patience
        return self.stopped_early

    def on_fit_end(self, net: nn.Module) -> None:
        if self.best_state is not None:
            net.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch, "waited": self.waited,
                "best": dict(self.best), "best_state": self.best_state,
                "stopped_epoch": self.stopped_epoch, "stopped_early": self.stopped_early}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# ------------------------------------------------------------------------------- checkpoints


class CheckpointError(BookError, RuntimeError):
    """A checkpoint cannot be used: damaged file, or made for another network. The message says
    which file and what to do. A :class:`~imagenet_book.errors.BookError`.

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
    """Write ``step-<step>.pt`` atomically (:func:`imagenet_book.files.save_atomically`:
    temporary file, fsync, rename; the temporary file goes on any exception, Ctrl-C included);
    keep the newest two."""
    folder.mkdir(parents=True, exist_ok=True)
    path = save_atomically(state, folder / f"step-{state['step']:08d}.pt",
                           lambda s, p: torch.save(s, p))
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
        path, "format_version", FORMAT_VERSION, what="the checkpoint", error=CheckpointError,
        redo="Delete it: resume='auto' then continues from the previous checkpoint in the same "
             "folder, if there is one.",
        wrong=f"is not a checkpoint of imagenet_book.engine (format version {FORMAT_VERSION}).")
    if net is not None:
        _load_weights(net, state, path, ema, arch)
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


def _train_step(model: nn.Module, task: Task, batch: tuple[Any, ...], optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, device: torch.device, amp_dtype: torch.dtype | None,
                grad_clip: float | None) -> dict[str, Tensor]:
    """One optimizer step (the package's only ``backward``); returns the task's detached scalars."""
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = task.training_step(model, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out["loss"]).backward()  # the scaler is a no-op unless amp is fp16
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {k: v.detach().float() for k, v in out.items()}


@torch.no_grad()
def evaluate(net: nn.Module, loader: Iterable, device: str | torch.device | None = None, *,
             task: Task | None = None, amp: str | bool | None = None,
             channels_last: bool | None = None) -> dict[str, Any]:
    """The task's metrics of ``net`` over ``loader`` (eval mode, no gradients, autocast on a GPU).

    Default task: :class:`~imagenet_book.tasks.Classification`, which returns the mean loss (no
    label smoothing), top-1 and top-5 accuracy (``top5`` is top-``min(5, C)``). Under DDP each
    rank evaluates its slice of every batch and the task's meter combines the ranks, so every
    rank returns the metrics of the whole set.

    Args:
        net: the network (a DDP or :class:`EMA` wrapper is unwrapped).
        loader: evaluation batches in the task's format (classification: ``(X, y)``, float
            ``(B, 3, H, W)``, int64 ``(B,)``).
        device: default: where ``net``'s parameters are.
        task: a :class:`~imagenet_book.tasks.Task` (its ``meter()`` does the counting).
        amp, channels_last: as for :func:`fit`.

    Returns:
        The meter's ``{name: value}``: classification ``{"loss", "top1", "top5"}`` (accuracies
        in ``[0, 1]``); multi-label ``{"loss", "mAP", "ap"}``; segmentation ``{"loss",
        "pixel_accuracy", "mean_iou", "iou"}``; detection ``{"map", "map_07", ...}``.

    Taught in: chapters/06_pretraining.ipynb.
    """
    if isinstance(net, (EMA, nn.parallel.DistributedDataParallel)):
        net = net.module
    task = task if task is not None else Classification()
    device = torch.device(device) if device is not None else next(net.parameters()).device
    dtype, here = amp_dtype(amp, device), world()
    channels_last = device.type == "cuda" if channels_last is None else channels_last
    was_training = net.training
    net.eval()
    meter = task.meter()
    for batch in loader:
        size = batch_len(batch)
        batch = to_device(_shard(batch, here, even=False), device, channels_last)
        if batch_len(batch) == 0:
            continue
        with _explain_oom("evaluation", size, here), \
                torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            meter.update(net, batch)
    net.train(was_training)
    return meter.compute(here)


def _check_loader(loader: Any, here: World, checkpointing: bool) -> None:
    if len(loader) == 0:
        raise ValueError("train_loader yields no batches: is the dataset smaller than one batch "
                         "with drop_last=True?")
    if here.size > 1 and (getattr(loader, "batch_size", 0) % here.size
                          or getattr(loader, "drop_last", True) is False):
        raise ValueError(f"Under DDP every process needs an equal slice of every training batch: "
                         f"use drop_last=True and a batch size divisible by {here.size}.")
    if checkpointing and not hasattr(loader, "set_epoch"):
        warnings.warn("train_loader has no set_epoch(): a resumed run will not see the batches the "
                      "interrupted run would have (see the loader protocol in imagenet_book.engine; "
                      "BatchLoader follows it).", stacklevel=3)


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fit(net: nn.Module, train_loader: Resumable | Iterable, val_loader: Iterable | None = None,
        config: TrainConfig | None = None, *, task: Task | None = None,
        device: str | torch.device | None = None,
        amp: str | bool | None = None, channels_last: bool | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_every: int | None = None,
        resume: bool | str | os.PathLike[str] = False, progress: bool = True,
        max_steps: int | None = None, arch: str | None = None,
        batch_transform: Callable[..., Sequence[Any]] | None = None,
        callbacks: Sequence[Callback] = (), evaluate_every: int = 1, **recipe: Any) -> History:
    """Train ``net`` for ``task`` on ``train_loader`` with a recipe; evaluate on ``val_loader``
    each epoch. The book's one training loop.

    Under ``torchrun`` it trains with DDP in the process group of :func:`init_distributed`. A
    script that writes files after ``fit`` should call :func:`init_distributed` first (it
    returns the rank) and :func:`destroy_distributed` at its end: a group that ``fit`` has to
    create itself, it also destroys on return, and every rank then looks like rank 0.

    Args:
        net: the network, trained in place (moved to ``device``; channels_last when that is on).
        train_loader: training batches in the task's format (classification: ``(X, y)``, X float
            ``(B, 3, H, W)``, y int64 ``(B,)`` or class probabilities float ``(B, C)``), with
            ``len()``; under DDP, the global batch. Exact resume needs :class:`Resumable`'s
            methods (:class:`BatchLoader` has them all).
        val_loader: evaluation batches, or ``None``.
        config: the recipe (:class:`~imagenet_book.recipe.TrainConfig`); keyword arguments named
            like its fields (``epochs=``, ``lr=``, ...) override it.
        task: what the batches are for (:mod:`imagenet_book.tasks`); default
            ``Classification(label_smoothing=config.label_smoothing)``. Its ``param_groups``
            decide what trains at which rate (a probe freezes ``net.backbone``).
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
        batch_transform: applied as ``batch_transform(*batch)`` to every training batch on the
            device, after sharding, e.g. :func:`imagenet_book.augment.mix_transform`
            (mixup/cutmix turns ``y`` into probabilities ``(B, C)``: soft targets). It must draw
            its random numbers from torch's global generator (checkpoints keep its state, so a
            resumed run mixes the same pairs).
        callbacks: :class:`Callback` s called after each epoch (e.g. :class:`EarlyStopping`).
        evaluate_every: evaluate every this many epochs (and always after the last one);
            the other epochs record ``None`` for ``val_*``.

    Returns:
        The :class:`History` (also inside every checkpoint): per epoch ``train_<name>`` for each
        scalar of the task's ``training_step`` (``train_loss``, ...), ``val_<name>`` for each
        scalar metric of its meter, ``ema_val_<name>`` with EMA, ``lr``, ``img_per_s``,
        ``wall_s``; ``history.final`` is the whole last evaluation.

    Raises:
        CheckpointError: the checkpoint to resume from is damaged or made for another network.
        torch.OutOfMemoryError: with a batch size to try.

    Taught in: chapters/06_pretraining.ipynb.
    """
    cfg = replace(config or TrainConfig(), **recipe)
    task = task if task is not None else Classification(label_smoothing=cfg.label_smoothing)
    with _distributed() as here:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", here.local_rank)
        dtype = amp_dtype(amp, device)
        channels_last = device.type == "cuda" if channels_last is None else channels_last
        net.to(device)
        if channels_last:
            net.to(memory_format=torch.channels_last)
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        _check_loader(train_loader, here, folder is not None)

        steps_per_epoch = len(train_loader)
        optimizer = make_optimizer(task.param_groups(net, cfg), cfg)
        scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        ema = EMA(net, cfg.ema_decay) if cfg.ema_decay else None
        history = History(ema=ema)
        first_epoch, done, step, seen, epoch_s, elapsed = 0, 0, 0, 0, 0.0, 0.0
        keys: list[str] = []  # the task's scalars, in its order ("loss" first)
        sums: Tensor | None = None  # this epoch's sums of keys x batch size (this rank's)
        path = _resume_path(resume, folder)
        if path is not None:
            state = load_checkpoint(path, net, arch=arch)
            _restore(state, cfg, optimizer, scheduler, scaler, ema, train_loader, callbacks)
            first_epoch, done = state["data"]["epoch"], state["data"]["batches_done"]
            step, elapsed = state["step"], state["elapsed"]
            meter = state["meter"]
            keys, epoch_s = list(meter["sums"]), meter["seconds"]
            if keys:  # the sums over all ranks so far live on rank 0; the others start from 0
                values = list(meter["sums"].values()) if here.rank == 0 else [0.0] * len(keys)
                sums = torch.tensor(values, device=device)
            seen = int(meter["seen"]) // here.size
            history = History.from_dict(state["history"])
            history.ema = ema
            if state.get("stopped"):  # a callback ended this run: it stays ended
                first_epoch = cfg.epochs
        if folder is not None and here.rank == 0:
            for stale in folder.glob(".step-*.tmp-*"):  # left by a run killed while saving
                stale.unlink(missing_ok=True)
        model = net if here.size == 1 else nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
        pending: list[tuple[int, Tensor, float]] = []  # per-step scalars, read in bulk (one sync)
        t_start = t_epoch = time.perf_counter()
        stopped = False

        def flush() -> None:
            values = torch.stack([v for _, v, _ in pending]).tolist() if pending else []
            history.steps += [{"step": s, "epoch": round(s / steps_per_epoch, 4),
                               **dict(zip(keys, row)), "lr": r}
                              for (s, _, r), row in zip(pending, values)]
            pending.clear()

        def checkpoint(epoch: int, done: int) -> None:
            flush()
            # This epoch so far, over all ranks: the sums, examples, seconds.
            totals = all_sum(sums, here).tolist() if sums is not None else []
            if folder is None or here.rank != 0:
                return
            name, classes = _arch_of(net, arch)
            _save_checkpoint({
                "format_version": FORMAT_VERSION, "arch": name, "num_classes": classes,
                "config": asdict(cfg), "step": step, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema else None,
                "rng": _rng_state(), "history": history.to_dict(),
                "meter": {"sums": dict(zip(keys, totals)), "seen": seen * here.size,
                          "seconds": epoch_s + time.perf_counter() - t_epoch},
                "callbacks": [cb.state_dict() for cb in callbacks], "stopped": stopped,
                "elapsed": elapsed + time.perf_counter() - t_start,
                "data": {"epoch": epoch, "batches_done": done, "loader":
                         train_loader.state_dict() if hasattr(train_loader, "state_dict") else {}},
            }, folder)

        for epoch in range(first_epoch, cfg.epochs):
            if max_steps is not None and step >= max_steps:
                break
            bar = tqdm(total=steps_per_epoch, initial=done, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress or here.rank != 0)
            t_epoch = time.perf_counter()
            task.train_mode(model)
            for batch in _epoch_batches(train_loader, epoch, done):
                size = batch_len(batch)
                batch = to_device(_shard(batch, here, even=True), device, channels_last)
                if batch_transform is not None:
                    batch = tuple(batch_transform(*batch))
                lr = optimizer.param_groups[-1]["lr"]  # the new layers' rate when groups differ
                with _explain_oom("training", size, here, cfg.lr):
                    out = _train_step(model, task, batch, optimizer, scaler, device, dtype,
                                      cfg.grad_clip)
                scheduler.step()
                if ema is not None:
                    ema.update(net)
                if not keys:
                    keys = list(out)
                values = torch.stack([out[k] for k in keys])
                n = batch_len(batch)
                sums = values * n if sums is None else sums + values * n
                step, done, seen = step + 1, done + 1, seen + n
                for cb in callbacks:
                    cb.on_step_end(step, net)
                pending.append((step, values, lr))
                bar.update()
                if step % LOG_EVERY == 0:
                    flush()
                    bar.set_postfix(loss=f"{history.steps[-1]['loss']:.3f}")
                if checkpoint_every and step % checkpoint_every == 0 and done < steps_per_epoch:
                    checkpoint(epoch, done)
                if max_steps is not None and step >= max_steps:
                    break

            flush()
            totals = all_sum(sums, here).tolist() if sums is not None else [math.nan] * len(keys)
            seen_all, train_s = seen * here.size, epoch_s + time.perf_counter() - t_epoch
            progress_in_epochs = round(epoch + done / steps_per_epoch, 4)
            record: dict[str, Any] = {
                "epoch": epoch + 1 if done == steps_per_epoch else progress_in_epochs, "step": step,
                **{f"train_{k}": v / max(seen_all, 1) for k, v in zip(keys, totals)}}
            last = epoch + 1 == cfg.epochs or (max_steps is not None and step >= max_steps)
            if val_loader is None or not (last or (epoch + 1) % evaluate_every == 0):
                record.update({f"val_{k}": None for k in task.metric_names})
            else:
                for prefix, module in (("val_", net), ("ema_val_", ema.module if ema else None)):
                    if module is not None:
                        metrics = evaluate(module, val_loader, device, task=task, amp=amp,
                                           channels_last=channels_last)
                        record.update({prefix + k: v for k, v in metrics.items() if _scalar(v)})
                        if prefix == "val_":
                            history.final = plain_values(metrics, nan=math.nan)  # NaN kept: a class absent from the set
            record.update(lr=history.steps[-1]["lr"] if history.steps else None,
                          img_per_s=seen_all / train_s, wall_s=elapsed + time.perf_counter() - t_start)
            history.epochs.append(record)
            shown = ("train_loss", f"val_{task.primary}")
            bar.set_postfix({k: f"{record[k]:.3f}" for k in shown if record.get(k) is not None})
            bar.close()
            stopped = any([cb.on_epoch_end(record, net) for cb in callbacks])
            if done == steps_per_epoch:  # a full epoch: the next starts from zero
                done, seen, epoch_s, t_epoch = 0, 0, 0.0, time.perf_counter()
                sums = None
                checkpoint(epoch + 1, 0)
            else:
                checkpoint(epoch, done)
            if stopped:
                break
        for cb in callbacks:
            cb.on_fit_end(net)
        return history


def plain_values(value: Any, nan: Any = None) -> Any:
    """Tensors and tuples -> lists, recursively, and NaN -> ``nan`` (default ``None``, for JSON):
    values that ``json.dumps`` and ``torch.load(weights_only=True)`` read."""
    if isinstance(value, dict):
        return {k: plain_values(v, nan) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(v, nan) for v in value]
    if isinstance(value, Tensor):
        return plain_values(value.tolist(), nan)
    if isinstance(value, float) and math.isnan(value):
        return nan
    return value


def _restore(state: dict[str, Any], cfg: TrainConfig, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             ema: EMA | None, loader: Any, callbacks: Sequence[Callback]) -> None:
    """Put everything but the weights and the counters back as the checkpoint has it."""
    defaults = asdict(TrainConfig())  # a field added since the checkpoint was written: its default
    changed = sorted(k for k, v in asdict(cfg).items() if state["config"].get(k, defaults[k]) != v)
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
    for cb, cb_state in zip(callbacks, state.get("callbacks", [])):
        cb.load_state_dict(cb_state)
    _set_rng_state(state["rng"])
