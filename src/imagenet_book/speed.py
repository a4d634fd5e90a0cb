"""Measuring speed: the latency of inference and the throughput of training, on the device present.

Two questions a practitioner asks of a network and a training setup, answered by measuring:

* :func:`latency`: seconds per forward pass of a batch (by default one image), median of
  ``repeats`` timed calls after ``warmup`` untimed ones, in eval mode without gradients. This
  is what "fast enough to deploy" is about (chapter 10's model choice and compression sections).
* :func:`training_speed`: training images per second of the book's training step
  (:func:`imagenet_book.engine.fit` on the profile's data) under the usual switches
  (:func:`speed_settings`): the fast input pipeline (:mod:`imagenet_book.data.fast`) instead of
  the textbook ``DataLoader``, then on top of it channels-last memory format, mixed precision
  (AMP), a larger batch, or ``torch.compile``. Every setting is timed in the same run as the
  baseline, in rotating order, and reported as a ratio to it.

What the numbers include: a training timing is ``steps`` optimizer steps of ``engine.fit``
(loading the batches, forward, backward, optimizer step), measured from outside the call, after
``warmup_steps`` untimed steps of the same network and loader (for ``torch.compile`` those are
where the compilation happens: their time is reported separately as ``first_s``).

Where a setting cannot run here (``torch.compile`` without a C++ compiler on a CPU, or without
Triton on a GPU; bf16 on a GPU without it), its row says so (``status``) instead of a number.

Taught in: chapters/10_practice.ipynb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from . import augment, engine, pretrain
from .data.fast import fast_loader
from .data.imagenet import classification_source, load_classification

__all__ = ["Latency", "SpeedRow", "SpeedSetting", "SpeedTable", "compare_latency", "compile_support",
           "device_name", "format_speed", "latency", "num_threads", "speed_settings", "sync",
           "training_speed"]


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); no-op on the CPU.

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: str | torch.device) -> str:
    """A readable name of the device: the GPU's name, or the CPU's and its core count.

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads")


# ------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """The result of :func:`latency`.

    Attributes:
        seconds: median seconds per forward pass of the batch.
        times: every timed call, in seconds.
        input_shape: shape of the batch, e.g. ``(1, 3, 224, 224)``.
        device: where it ran, as a string.

    Taught in: chapters/10_practice.ipynb.
    """

    seconds: float
    times: tuple[float, ...]
    input_shape: tuple[int, ...]
    device: str

    @property
    def ms(self) -> float:
        """Median milliseconds per forward pass."""
        return 1000 * self.seconds

    @property
    def images_per_s(self) -> float:
        """Images per second at the median (``batch / seconds``)."""
        return self.input_shape[0] / self.seconds


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, then restore the previous number.

    ``None`` leaves it unchanged. One thread is the right choice for tiny models (a classifier
    head on stored features): their operations are too small for the threads to pay for their
    synchronisation, and on a CPU shared with other processes waiting threads can slow every
    operation down many times.

    Taught in: chapters/10_practice.ipynb.
    """
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"num_threads needs n >= 1 (or None), got {n}.")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _device_of(net: nn.Module) -> torch.device:
    first = next(iter(net.parameters()), None)
    if first is None:
        first = next(iter(net.buffers()), None)
    return first.device if first is not None and not first.is_quantized else torch.device("cpu")


@torch.no_grad()
def compare_latency(nets: Mapping[str, nn.Module], input_shape: Sequence[int] = (1, 3, 224, 224), *,
                    device: str | torch.device | None = None, repeats: int = 10, warmup: int = 2,
                    threads: int | None = None) -> dict[str, Latency]:
    """Median forward-pass time of several networks, measured in interleaved rounds.

    After ``warmup`` untimed passes of each, every round times one pass of every network, in an
    order that rotates from round to round: a burst of load on a shared machine hits all of them
    alike instead of the one that happened to be measured then. Eval mode, no gradients, a random
    float32 batch of ``input_shape``.

    Args:
        nets: ``{name: network}``; each already on ``device``.
        input_shape: the batch, ``(B, 3, H, W)``; ``B = 1`` measures the latency one request sees.
        device: default: where each network's first parameter or buffer is (the CPU for
            quantized networks).
        repeats: timed rounds (the median is reported).
        warmup: untimed passes of each network first (allocation, kernel selection).
        threads: CPU threads for the measurement (:func:`num_threads`); ``None``: as set.

    Returns:
        ``{name: Latency}`` in the order of ``nets``.

    Raises:
        ValueError: ``repeats < 1``, ``warmup < 0`` or no networks.

    Taught in: chapters/10_practice.ipynb.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    if not nets:
        raise ValueError("compare_latency needs at least one network.")
    names = list(nets)
    devices = {k: torch.device(device) if device is not None else _device_of(nets[k]) for k in names}
    inputs = {k: torch.randn(*input_shape, device=devices[k]) for k in names}
    modes = {k: nets[k].training for k in names}
    times: dict[str, list[float]] = {k: [] for k in names}

    def once(k: str) -> float:
        sync(devices[k])
        start = time.perf_counter()
        nets[k](inputs[k])
        sync(devices[k])
        return time.perf_counter() - start

    with num_threads(threads):
        try:
            for k in names:
                nets[k].eval()
                for _ in range(warmup):
                    once(k)
            for r in range(repeats):
                for k in names[r % len(names):] + names[:r % len(names)]:
                    times[k].append(once(k))
        finally:
            for k in names:
                nets[k].train(modes[k])
    return {k: Latency(statistics.median(times[k]), tuple(times[k]), tuple(input_shape), str(devices[k]))
            for k in names}


def latency(net: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224), *,
            device: str | torch.device | None = None, repeats: int = 10, warmup: int = 2,
            threads: int | None = None) -> Latency:
    """Median time of a forward pass of ``net`` on a random batch, in eval mode, no gradients.

    Args:
        net: float32 ``input_shape`` -> anything. Put in eval mode for the measurement and
            restored afterwards; it must already be on ``device``.
        input_shape: the batch, ``(B, 3, H, W)``; ``B = 1`` measures the latency one request sees.
        device: default: where ``net``'s first parameter or buffer is (CPU if it has none;
            quantized models run on the CPU).
        repeats: timed calls (the median is reported: robust to a busy machine).
        warmup: untimed calls first (memory allocation, kernel selection, lazy initialisation).
        threads: CPU threads for the measurement (:func:`num_threads`); ``None``: as set.

    Returns:
        A :class:`Latency`. To compare networks, :func:`compare_latency` interleaves them.

    Raises:
        ValueError: ``repeats < 1`` or ``warmup < 0``.

    Taught in: chapters/10_practice.ipynb.
    """
    return compare_latency({"net": net}, input_shape, device=device, repeats=repeats,
                           warmup=warmup, threads=threads)["net"]


# ------------------------------------------------------------------------------- training speed


@dataclass(frozen=True)
class SpeedSetting:
    """One configuration of the training step that :func:`training_speed` times.

    Attributes:
        name: what this setting adds, e.g. ``"+ channels_last"``.
        loader: ``"textbook"`` (``ImageFolder`` + per-image PIL transforms + ``DataLoader``
            with worker processes) or ``"fast"`` (:class:`~imagenet_book.data.fast.FastLoader`:
            decoded once, augmented as batched tensor operations on the device).
        channels_last: channels-last memory format for weights and batches.
        amp: the autocast dtype for :func:`~imagenet_book.engine.fit`: ``"fp32"`` (none),
            ``"bf16"`` or ``"fp16"``.
        compile: wrap the network in ``torch.compile``.
        batch_size: images per step.

    Taught in: chapters/10_practice.ipynb.
    """

    name: str
    loader: str = "textbook"
    channels_last: bool = False
    amp: str = "fp32"
    compile: bool = False
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.loader not in ("textbook", "fast"):
            raise ValueError(f"SpeedSetting.loader must be 'textbook' or 'fast', got {self.loader!r}.")
        if self.amp not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"SpeedSetting.amp must be 'fp32', 'bf16' or 'fp16', got {self.amp!r}.")
        if self.batch_size < 1:
            raise ValueError(f"SpeedSetting.batch_size must be >= 1, got {self.batch_size}.")


def _amp_for(device: torch.device) -> str:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp16"
    return "bf16"  # CUDA GPUs with bf16, and the CPU (whose autocast is bf16)


def speed_settings(batch_size: int, device: str | torch.device = "cpu", *,
                   combined: bool = False) -> list[SpeedSetting]:
    """The switches of chapter 10: the input pipeline first, then each other switch on top of it.

    1. ``baseline``: the textbook ``DataLoader``, fp32, contiguous (NCHW) tensors, eager mode;
    2. ``+ fast input pipeline``: every later row starts from this one (the pipeline must keep
       up before anything else can show);
    3. ``fast + channels_last`` (rows 3 to 6: one switch each);
    4. ``fast + AMP`` (bf16 where the device has it, else fp16);
    5. ``fast + 2x batch``;
    6. ``fast + torch.compile``;
    7. with ``combined``: ``fast + all of them``.

    Returns:
        A list of :class:`SpeedSetting`, the baseline first.

    Taught in: chapters/10_practice.ipynb.
    """
    amp = _amp_for(torch.device(device))
    base = SpeedSetting("baseline", batch_size=batch_size)
    fast = dataclasses.replace(base, name="+ fast input pipeline", loader="fast")
    switches = {"channels_last": {"channels_last": True}, f"AMP ({amp})": {"amp": amp},
                "2x batch": {"batch_size": 2 * batch_size}, "torch.compile": {"compile": True}}
    settings = [base, fast] + [dataclasses.replace(fast, name=f"fast + {name}", **change)
                               for name, change in switches.items()]
    if combined:
        everything = {k: v for change in switches.values() for k, v in change.items()}
        settings.append(dataclasses.replace(fast, name="fast + all of them", **everything))
    return settings


def compile_support(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``torch.compile``'s default backend (Inductor) can generate code here, and why not.

    On a CPU Inductor writes C++ and needs a compiler (``$CXX``, else ``g++``, ``c++`` or
    ``clang++`` on the PATH); on a CUDA GPU it writes Triton kernels and needs ``triton``. This
    checks the prerequisites only: :func:`training_speed` still reports a compilation that fails.

    Returns:
        ``(True, what was found)`` or ``(False, why not, and the fix)``.

    Taught in: chapters/10_practice.ipynb.
    """
    device = torch.device(device)
    if not hasattr(torch, "compile"):
        return False, f"torch {torch.__version__} has no torch.compile (it needs torch >= 2.0)"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return False, "torch.compile on CUDA needs the triton package (pip install triton)"
        return True, "triton is installed"
    if device.type != "cpu":
        return False, f"this measurement compiles for the CPU and CUDA only, not {device.type}"
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in candidates:
        found = shutil.which(name)
        if found:
            return True, f"C++ compiler {found}"
    return False, ("torch.compile on the CPU needs a C++ compiler and none was found "
                   f"(looked for {', '.join(candidates)}): install g++ (e.g. apt-get install g++)")


@dataclass(frozen=True)
class SpeedRow:
    """One setting's measurement.

    Attributes:
        setting: the :class:`SpeedSetting`.
        images_per_s: median training images per second (``None`` when it did not run).
        ratio: ``images_per_s`` over the baseline's, median over rounds (``None`` likewise).
        first_s: seconds of the untimed warm-up steps (the compilation, for ``torch.compile``).
        status: ``"ok"``, or why there is no number (``"not run: ..."``, ``"failed: ..."``).
        times: seconds of each timed round of ``steps`` steps.

    Taught in: chapters/10_practice.ipynb.
    """

    setting: SpeedSetting
    images_per_s: float | None
    ratio: float | None
    first_s: float | None
    status: str
    times: tuple[float, ...] = ()


@dataclass(frozen=True)
class SpeedTable:
    """The result of :func:`training_speed`: one :class:`SpeedRow` per setting, and what ran.

    Attributes:
        rows: in the order of the settings, the baseline first.
        arch, img_size, steps, repeats: what was timed: ``repeats`` rounds of ``steps`` steps.
        device, device_name: where.
        data: the data the loaders read (its description).
        threads: torch's CPU threads.

    Taught in: chapters/10_practice.ipynb.
    """

    rows: list[SpeedRow]
    arch: str
    img_size: int
    steps: int
    repeats: int
    device: str
    device_name: str
    data: str
    threads: int = field(default_factory=torch.get_num_threads)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for JSON)."""
        return dataclasses.asdict(self)


def _textbook_loader(dataset: Any, batch_size: int, device: torch.device, workers: int, seed: int):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed))


@contextlib.contextmanager
def _quiet_cuda_home() -> Iterator[None]:
    """Inductor looks for a CUDA toolkit even when compiling for the CPU, and logs a warning
    when it finds one without a GPU: irrelevant to this measurement, so not shown."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def training_speed(cfg: Any, *, arch: str = "resnet18", build: Callable[[int], nn.Module] | None = None,
                   img_size: int | None = None,
                   batch_size: int | None = None, steps: int = 3, warmup_steps: int = 1,
                   repeats: int = 2, settings: Sequence[SpeedSetting] | None = None,
                   source: Any = None, workers: int = 2, threads: int | None = None,
                   progress: bool = False) -> SpeedTable:
    """Training images per second of ``arch`` under each setting, on ``cfg.device``.

    For each setting: a fresh network (seeded by ``cfg.seed``), its loader, ``warmup_steps``
    untimed steps of :func:`~imagenet_book.engine.fit`, then ``repeats`` rounds in which every
    setting runs ``steps`` timed steps, in an order that rotates from round to round (drift in
    the machine's speed hits every setting alike). Reported: median images/s and the median
    over rounds of the ratio to the first setting (the baseline).

    Args:
        cfg: from ``imagenet_book.start()``: the data (its data rule), the device, the seed.
        arch: a name of :data:`imagenet_book.pretrain.ARCHS`, or with ``build`` the table's name
            for the network.
        build: ``build(num_classes)`` makes the network to time (e.g. an EfficientNet-Lite0 of
            :mod:`imagenet_book.models`); default :func:`imagenet_book.pretrain.build_model` of ``arch``.
        img_size, batch_size: default: the profile's (``batch_size`` is the baseline's; a
            setting's own ``batch_size`` wins when ``settings`` is given).
        steps: timed optimizer steps per round and setting.
        warmup_steps: untimed steps first (compilation, allocator, worker start-up).
        repeats: rounds.
        settings: default :func:`speed_settings` ``(batch_size, cfg.device)``.
        source: a :class:`~imagenet_book.data.imagenet.DataSource` (default: the data rule's).
        workers: worker processes of the textbook ``DataLoader``.
        threads: CPU threads of this process during the measurement (:func:`num_threads`);
            ``None``: as set.
        progress: tqdm bar while the fast loader's cache is decoded.

    Returns:
        A :class:`SpeedTable` (:func:`format_speed` prints it).

    Raises:
        ValueError: ``steps``, ``repeats`` < 1, or an empty ``settings``.

    Taught in: chapters/10_practice.ipynb.
    """
    with num_threads(threads):
        return _training_speed(cfg, arch, build, img_size, batch_size, steps, warmup_steps, repeats,
                               settings, source, workers, progress)


def _training_speed(cfg, arch, build, img_size, batch_size, steps, warmup_steps, repeats, settings, source,
                    workers, progress) -> SpeedTable:
    if steps < 1 or repeats < 1 or warmup_steps < 0:
        raise ValueError(f"training_speed() needs steps >= 1, repeats >= 1, warmup_steps >= 0; got "
                         f"steps={steps}, repeats={repeats}, warmup_steps={warmup_steps}.")
    device = torch.device(cfg.device)
    img_size = img_size or cfg.profile.img_size
    batch_size = batch_size or cfg.profile.batch_size
    settings = list(settings) if settings is not None else speed_settings(batch_size, device)
    if not settings:
        raise ValueError("training_speed() needs at least one setting (the first is the baseline).")
    source = source or classification_source(cfg)
    loaders: dict[tuple[str, int], Any] = {}

    def loader_for(s: SpeedSetting):
        key = (s.loader, s.batch_size)
        if key not in loaders:
            if s.loader == "fast":
                loaders[key] = fast_loader(cfg, "train", source=source, img_size=img_size,
                                           batch_size=s.batch_size, scale=pretrain.CROP_SCALE,
                                           progress=progress)
            else:
                transform = augment.train_transform(img_size, scale=pretrain.CROP_SCALE)
                dataset = load_classification(source, "train", transform=transform)
                loaders[key] = _textbook_loader(dataset, s.batch_size, device, workers, cfg.seed)
            if len(loaders[key]) == 0:
                raise ValueError(f"The training split of the {source.description} has fewer images "
                                 f"than one batch of {s.batch_size}: use a smaller batch_size.")
        return loaders[key]

    runs: list[dict[str, Any]] = []
    for s in settings:
        run: dict[str, Any] = {"setting": s, "status": "ok", "first_s": None, "times": []}
        runs.append(run)
        if s.compile:
            ok, why = compile_support(device)
            if not ok:
                run["status"] = f"not run: {why}"
                continue
        if s.amp != "fp32" and device.type == "cuda" and s.amp == "bf16" and not torch.cuda.is_bf16_supported():
            run["status"] = "not run: this GPU has no bf16"
            continue
        loader = loader_for(s)
        torch.manual_seed(cfg.seed)
        net = build(source.num_classes) if build is not None else pretrain.build_model(arch, source.num_classes)
        recipe = engine.TrainConfig(epochs=math.ceil((warmup_steps + steps) / len(loader)) + 1,
                                    lr=pretrain.pretrain_recipe(1, s.batch_size).lr)
        run["net"] = torch.compile(net) if s.compile else net

        def go(n: int, run=run, loader=loader, recipe=recipe, s=s) -> float:
            sync(device)
            start = time.perf_counter()
            engine.fit(run["net"], loader, None, recipe, device=device, amp=s.amp,
                       channels_last=s.channels_last, progress=False, max_steps=n)
            sync(device)
            return time.perf_counter() - start

        run["go"] = go
        try:
            with _quiet_cuda_home():
                run["first_s"] = go(warmup_steps) if warmup_steps else 0.0
        except Exception as err:  # a compiler error, an unsupported dtype, ...: report it
            run["status"] = f"failed: {_first_line(err)}"
            run.pop("net")

    active = [r for r in runs if r["status"] == "ok"]
    for k in range(repeats):
        order = active[k % len(active):] + active[:k % len(active)] if active else []
        for run in order:
            if run["status"] != "ok":
                continue
            try:
                run["times"].append(run["go"](steps))
            except Exception as err:
                run["status"] = f"failed: {_first_line(err)}"
    for loader in loaders.values():  # end the textbook loaders' worker processes now
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    base = runs[0]
    rows = []
    for run in runs:
        s, times = run["setting"], run["times"]
        ok = run["status"] == "ok" and len(times) == repeats
        ips = s.batch_size * steps / statistics.median(times) if ok else None
        ratio = None
        if ok and base["status"] == "ok" and len(base["times"]) == repeats:
            b = base["setting"].batch_size
            ratio = statistics.median((s.batch_size / t) / (b / tb) for t, tb in zip(times, base["times"]))
        rows.append(SpeedRow(s, ips, ratio, run["first_s"], run["status"], tuple(times)))
    return SpeedTable(rows, arch, img_size, steps, repeats, str(device), device_name(device),
                      source.description)


def format_speed(table: SpeedTable) -> str:
    """The table as text: one line per setting with images/s, ratio to the baseline, warm-up.

    Taught in: chapters/10_practice.ipynb.
    """
    lines = [f"{table.arch} training at {table.img_size} px on {table.device} ({table.device_name}); "
             f"{table.repeats} rounds of {table.steps} steps per setting; data: {table.data}",
             f"{'setting':<26} {'batch':>5} {'images/s':>9} {'vs baseline':>11} {'warm-up s':>9}  status"]
    for r in table.rows:
        ips = f"{r.images_per_s:9.1f}" if r.images_per_s is not None else f"{'-':>9}"
        ratio = f"{r.ratio:10.2f}x" if r.ratio is not None else f"{'-':>11}"
        first = f"{r.first_s:9.1f}" if r.first_s is not None else f"{'-':>9}"
        lines.append(f"{r.setting.name:<26} {r.setting.batch_size:>5} {ips} {ratio} {first}  {r.status}")
    return "\n".join(lines)
