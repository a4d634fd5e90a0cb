"""A fast pretraining recipe, built one lever at a time: the ablation of chapter 06's appendix.

Chapter 06 pretrains with a sound but plain recipe. What does a *good* recipe buy in a fixed,
small budget (5 epochs of Imagenette at 128 px)? This module answers it by measurement:

* :class:`Recipe` holds every setting a lever touches; :data:`TEXTBOOK` is the recipe a textbook
  gives (torchvision's ResNet-18, random-resized crops of 8-100% of the image and flips, SGD
  with Nesterov momentum, the one-cycle schedule peaking at 0.4, batch 64, label smoothing 0.1,
  weight decay on every parameter, float32);
* :data:`LADDER` lists the levers in the order they are added, each on top of the previous one
  (decided before any run, and never from the validation split): mixed precision and
  channels-last memory, no weight decay on BatchNorm and biases, zero-initialised last BatchNorm
  of each block, milder crops, the ResNet-D network, a deeper ResNet-50-D, progressive resizing,
  an exponential moving average (EMA) of the weights, test-time flips, and a test-time resolution
  that matches the crops' apparent object size; the last rung is :func:`final_recipe`;
* :data:`SIDE` lists levers measured *instead of* a choice of the ladder (another schedule, other
  optimizers, no label smoothing), each on top of the final recipe, not carried forward;
* :func:`train_recipe` trains one recipe with the book's one loop (:func:`imagenet_book.engine.fit`)
  on the book's fast loader and evaluates it four ways (plain, flipped, larger, both);
* :func:`ablation` runs the ladder and the side rows and returns one row per lever: what the
  ``fast-recipe`` reference run (:mod:`imagenet_book.reference`) records;
* :func:`search` *chooses* a recipe instead of fixing it beforehand, one :class:`Stage` (a lever
  and its options, :data:`STAGES`) at a time, each option scored on held-out *training* images
  (:func:`~imagenet_book.data.fast.holdout_split`), never on the validation split; the chosen recipe
  is then trained on the whole training split and measured once on val: the ``fast-recipe-search`` reference run;
* :data:`SECOND_ROUND`: the search again, from the recipe it chose (:data:`SEARCHED`), in one stage
  that chooses network and optimizer together, with levers of fast.ai's leaderboard recipe it did
  not have (the Ranger optimizer, squeeze-excitation gates) and depth tried again with Ranger: the
  ``fast-recipe-second-round`` study;
* :data:`THIRD_ROUND`: the leaderboard's own network (SE-ResNeXt-50-D) with Ranger against the recipe
  the second round kept, then the test-time levers again: the ``fast-recipe-third-round`` study.
* :data:`FOURTH_ROUND`: fast.ai's self-attention layer in ResNet-18-D (``saresnet18d``), with SGD and
  with Ranger, against the recipe kept, then the test-time levers: the ``fast-recipe-fourth-round`` study.

In the ladder every choice is fixed before the runs, and in the search every choice is made on
held-out training images, so the validation split is only ever measured, never tuned on. One
seed per row: differences below about a point are within the noise of a single 5-epoch run (the
chapter says so).

Taught in: chapters/A2_fast_recipe.ipynb.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import engine, pretrain
from .speed import sync
from .data.fast import FastLoader, fast_loader, holdout_split
from .data.imagenet import DataSource
from .recipe import TrainConfig

__all__ = ["ACTIVATIONS", "FOURTH_ROUND", "FlipAverage", "HOLDOUT_FRACTION", "LADDER", "Lever", "RANGER", "Recipe",
           "SEARCHED", "SEARCH_START", "SECOND_ROUND", "SIDE", "STAGES", "Stage", "TEXTBOOK", "TEST_SIZE_FACTOR",
           "THIRD_ROUND", "ablation",
           "ablation_table", "final_recipe", "holdout_split", "metric_key", "progressive_sizes", "recipe_config",
           "rung", "run_key", "search", "search_table", "train_recipe", "use_activation"]

TEST_SIZE_FACTOR = 1.25   # test at this times the training side, on the whole stored square (FixRes's point)
PROGRESSIVE_START = 0.75  # progressive resizing: the first epochs at this fraction of the final side ...
PROGRESSIVE_RAMP = 0.6    # ... growing linearly to the full side at this fraction of the run
EMA_TIME_FRACTION = 0.1   # the EMA averages over about this fraction of the run's steps
HOLDOUT_FRACTION = 0.1    # the search scores its options on this share of each training class

#: The activation functions a recipe may put in place of every ReLU (none has parameters, so the
#: state_dict keys stay the same).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "mish": nn.Mish, "silu": nn.SiLU}


@dataclass(frozen=True)
class Recipe:
    """Every setting the levers touch (the sizes, epochs/img_size/batch_size, are given apart).

    Attributes:
        arch: a name of :data:`imagenet_book.pretrain.ARCHS`.
        activation: a name of :data:`ACTIVATIONS`, put in place of every ReLU (:func:`use_activation`).
        zero_init_residual: the last BatchNorm of every block starts at 0.
        crop_scale: area fractions of the random-resized crops.
        optimizer, lr, nesterov, weight_decay, schedule, warmup_fraction, label_smoothing,
            decay_norm_and_bias: as in :class:`~imagenet_book.recipe.TrainConfig`.
        mixed_precision: channels-last memory, and bf16 autocast where the hardware has it
            (:func:`~imagenet_book.engine.bf16_is_fast`: a GPU that supports it, or a CPU with
            AMX tiles, where a ResNet-18-D step at 128 px runs 3.3x as fast; elsewhere the
            engine's automatic choice: fp16 on older GPUs, float32 on other CPUs).
        progressive: progressive resizing (:func:`progressive_sizes`).
        ema: evaluate an EMA of the weights (:data:`EMA_TIME_FRACTION`).
        test_flip: average the logits of each test image and its mirror image.
        test_size: test at :data:`TEST_SIZE_FACTOR` times the training side, on the whole stored
            square, instead of the centre 87.5% at the training side.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """

    arch: str = "resnet18"
    activation: str = "relu"
    zero_init_residual: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)
    optimizer: str = "sgd"
    lr: float = 0.4
    nesterov: bool = True
    weight_decay: float = 5e-5
    decay_norm_and_bias: bool = True
    schedule: str = "onecycle"
    warmup_fraction: float = 0.25
    label_smoothing: float = 0.1
    mixed_precision: bool = False
    progressive: bool = False
    ema: bool = False
    test_flip: bool = False
    test_size: bool = False

    def training_key(self) -> dict[str, Any]:
        """The settings that change the trained weights (the test-time ones do not)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("test_flip", "test_size")}


TEXTBOOK = Recipe()


@dataclass(frozen=True)
class Lever:
    """One row of the ablation: ``name``, what it does (``what``) and the settings it changes."""

    name: str
    what: str
    changes: dict[str, Any]


LADDER: tuple[Lever, ...] = (
    Lever("textbook", "ResNet-18, crops 8-100%, SGD Nesterov, one-cycle to 0.4, batch 64, label smoothing 0.1, "
                      "decay on all, fp32", {}),
    Lever("mixed-precision", "bf16 autocast + channels_last (GPU)", {"mixed_precision": True}),
    Lever("no-decay-bn-bias", "no weight decay on BatchNorm and biases", {"decay_norm_and_bias": False}),
    Lever("zero-init", "last BatchNorm of each block starts at 0", {"zero_init_residual": True}),
    Lever("mild-crops", "crops of 35-100% of the image", {"crop_scale": (0.35, 1.0)}),
    Lever("resnet-d", "ResNet-18-D: deep stem, average-pool shortcut", {"arch": "resnet18d"}),
    Lever("resnet50-d", "ResNet-50-D: bottleneck blocks, 3-4-6-3", {"arch": "resnet50d"}),
    Lever("progressive", "progressive resizing, 75% -> 100% of the side", {"progressive": True}),
    Lever("ema", "evaluate an EMA of the weights", {"ema": True}),
    Lever("test-flip", "average the test image and its mirror", {"test_flip": True}),
    Lever("test-size", f"test at {TEST_SIZE_FACTOR:g}x the side, whole image", {"test_size": True}),
)

SIDE: tuple[Lever, ...] = (
    Lever("flat-cosine", "instead of one-cycle: flat at the peak, then cosine", {"schedule": "flatcos"}),
    Lever("lion", "instead of SGD: Lion, lr 3e-4, decay 0.1", {"optimizer": "lion", "lr": 3e-4, "weight_decay": 0.1}),
    Lever("lamb", "instead of SGD: LAMB, lr 5e-3, decay 0.01", {"optimizer": "lamb", "lr": 5e-3, "weight_decay": 0.01}),
    Lever("no-label-smoothing", "instead of 0.1: no label smoothing", {"label_smoothing": 0.0}),
    Lever("peak-lr-0.2", "instead of 0.4: a peak rate of 0.2", {"lr": 0.2}),
)


def rung(name: str) -> Recipe:
    """The recipe at the rung ``name`` of :data:`LADDER`: :data:`TEXTBOOK` with that lever and
    every lever before it applied.

    Raises:
        ValueError: no lever of the ladder has that name (the message lists them).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    names = [lever.name for lever in LADDER]
    if name not in names:
        raise ValueError(f"No rung {name!r} in the ladder. Choose one of: {', '.join(names)}.")
    recipe = TEXTBOOK
    for lever in LADDER[:names.index(name) + 1]:
        recipe = dataclasses.replace(recipe, **lever.changes)
    return recipe


def final_recipe() -> Recipe:
    """The last rung of :data:`LADDER`: :data:`TEXTBOOK` with every lever applied.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    return rung(LADDER[-1].name)


def progressive_sizes(img_size: int, epochs: int) -> tuple[int, ...]:
    """The side of each epoch's crops: :data:`PROGRESSIVE_START` of ``img_size`` at first, growing
    linearly to ``img_size`` at :data:`PROGRESSIVE_RAMP` of the run, rounded to multiples of 8
    (5 epochs at 128 px: ``(96, 112, 120, 128, 128)``).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    ramp = max(1.0, PROGRESSIVE_RAMP * (epochs - 1))
    fractions = [PROGRESSIVE_START + (1 - PROGRESSIVE_START) * min(1.0, e / ramp) for e in range(epochs)]
    return tuple(max(8, min(img_size, 8 * round(img_size * f / 8))) for f in fractions)


def recipe_config(recipe: Recipe, *, epochs: int, steps_per_epoch: int, batch_size: int,
                  img_size: int) -> TrainConfig:
    """The engine's :class:`~imagenet_book.recipe.TrainConfig` for ``recipe`` (the EMA's decay
    follows the run's length: it averages over :data:`EMA_TIME_FRACTION` of the steps).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    ema = 1 - 1 / max(2.0, EMA_TIME_FRACTION * epochs * steps_per_epoch) if recipe.ema else None
    return TrainConfig(epochs=epochs, optimizer=recipe.optimizer, lr=recipe.lr, nesterov=recipe.nesterov,
                       momentum=0.9, weight_decay=recipe.weight_decay, schedule=recipe.schedule,
                       warmup_fraction=recipe.warmup_fraction, label_smoothing=recipe.label_smoothing,
                       decay_norm_and_bias=recipe.decay_norm_and_bias, ema_decay=ema,
                       batch_size=batch_size, img_size=img_size)


def use_activation(net: nn.Module, name: str) -> nn.Module:
    """``net`` with every ``nn.ReLU`` module replaced by a new :data:`ACTIVATIONS` ``[name]`` (in
    place; also returned). Mish, ``x * tanh(softplus(x))``, and SiLU, ``x * sigmoid(x)``, are smooth
    and let a little of the negative side through.

    Raises:
        ValueError: an unknown name (the message lists them).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}. Choose one of: {', '.join(ACTIVATIONS)}.")
    if name != "relu":
        for module in list(net.modules()):
            for child, layer in module.named_children():
                if isinstance(layer, nn.ReLU):
                    setattr(module, child, ACTIVATIONS[name]())
    return net


class FlipAverage(nn.Module):
    """Test-time flips: the mean of ``net``'s logits for each image and its mirror image.

    Shapes: float (N, 3, H, W) -> float logits (N, C).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (self.net(x) + self.net(x.flip(3)))


def train_recipe(cfg: Any, recipe: Recipe, *, epochs: int, img_size: int, batch_size: int,
                 data: str = "imagenette", source: DataSource | None = None, holdout: float = 0.0,
                 build: Callable[[int], nn.Module] | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train ``recipe`` for ``epochs`` at ``img_size`` with :func:`imagenet_book.engine.fit` on the
    profile's ``data`` (the book's fast loader), then evaluate it on the whole val split four ways.

    ``build``: a network of your own, ``build(num_classes)``, trained by the recipe instead of
    ``recipe.arch``'s (``recipe.zero_init_residual`` is then left to it; the recipe's activation
    still replaces its ``nn.ReLU`` modules).

    ``holdout > 0``: train on the training split less a held-out share of each class
    (:func:`~imagenet_book.data.fast.holdout_split` with that fraction) and evaluate on the
    held-out images instead of val (how :func:`search` scores its options).

    Returns:
        ``{"top1", "top1_flip", "top1_size", "top1_flip_size"}`` (accuracies in ``[0, 1]``: plain
        centre crops at ``img_size``; test-time flips; the whole stored square at
        ``TEST_SIZE_FACTOR * img_size``; both), ``"top5"`` (plain), ``"train_s"`` (the loop's
        seconds, data loading included), ``"eval_s"``, ``"sizes"`` (each epoch's side),
        ``"train"``/``"val"`` (images trained on / evaluated on), ``"evaluated_on"`` (``"val"`` or
        ``"holdout"``), ``"data"`` (the source's description), ``"amp"``.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    sizes = progressive_sizes(img_size, epochs) if recipe.progressive else (img_size,) * epochs
    on_gpu = torch.device(cfg.device).type == "cuda"  # the decoded images then live in GPU memory
    options = {"scale": recipe.crop_scale, "sizes": sizes if recipe.progressive else None,
               "preload": on_gpu and not holdout}
    source, train_loader, _ = pretrain.make_loaders(cfg, data, img_size=img_size, batch_size=batch_size,
                                                    source=source, progress=progress, train_options=options)
    device, test_side = train_loader.device, round(TEST_SIZE_FACTOR * img_size)
    if holdout:
        fit, held = holdout_split(train_loader.cache, holdout)
        train_loader = FastLoader(fit, batch_size, out_size=img_size, device=device, seed=cfg.seed,
                                  **{**options, "preload": on_gpu})

        def evaluation(side: int, fraction: float) -> FastLoader:
            return FastLoader(held, batch_size, train=False, out_size=side, crop_fraction=fraction, device=device,
                              preload=on_gpu)
    else:
        def evaluation(side: int, fraction: float) -> FastLoader:
            return fast_loader(cfg, "val", source=source, img_size=side, batch_size=batch_size,
                               crop_fraction=fraction, store_size=train_loader.cache.size, device=device,
                               preload=on_gpu, progress=progress, train=False)
    val_loader, big_loader = (evaluation(side, fraction) for side, fraction in ((img_size, 0.875), (test_side, 1.0)))
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed only
    if build is None:
        net, name = pretrain.build_model(recipe.arch, source.num_classes,
                                         zero_init_residual=recipe.zero_init_residual), recipe.arch
    else:
        net = build(source.num_classes)
        name = getattr(build, "__name__", type(net).__name__)
    use_activation(net, recipe.activation)
    config = recipe_config(recipe, epochs=epochs, steps_per_epoch=len(train_loader), batch_size=batch_size,
                           img_size=img_size)
    # mixed precision: bf16 where the hardware has it (a GPU; a CPU with AMX tiles), else float32
    amp = ("bf16" if engine.bf16_is_fast(device) else None) if recipe.mixed_precision else "fp32"
    channels_last = recipe.mixed_precision
    if log is not None:
        activation = "its own activations" if build is not None and recipe.activation == "relu" else recipe.activation
        log(f"fast recipe: {name} ({activation}), {len(train_loader.cache)} images x {epochs} epochs "
            f"at {list(sizes)} px, "
            f"{config.optimizer} peak {config.lr:g} ({config.schedule}), device {device}")
    sync(device)
    t0 = time.perf_counter()
    history = engine.fit(net, train_loader, None, config, device=device, amp=amp, channels_last=channels_last,
                         progress=progress)
    sync(device)
    train_s = time.perf_counter() - t0
    model = history.ema.module if history.ema is not None else net
    found: dict[str, Any] = {}
    t0 = time.perf_counter()
    for key, wrapped, loader in (("top1", model, val_loader), ("top1_flip", FlipAverage(model), val_loader),
                                 ("top1_size", model, big_loader),
                                 ("top1_flip_size", FlipAverage(model), big_loader)):
        metrics = engine.evaluate(wrapped.to(device), loader, device, amp=amp, channels_last=channels_last)
        found[key] = float(metrics["top1"])
        if key == "top1":
            found["top5"] = float(metrics["top5"])
    sync(device)
    found.update(train_s=round(train_s, 2), eval_s=round(time.perf_counter() - t0, 2), sizes=list(sizes),
                 train=len(train_loader.cache), val=len(val_loader.cache), data=source.description,
                 evaluated_on="holdout" if holdout else "val",
                 amp=str(engine.amp_dtype(amp, device)).replace("torch.", ""),
                 train_loss=history.epochs[-1].get("train_loss") if history.epochs else math.nan)
    if log is not None:
        log(f"fast recipe: {found['evaluated_on']} top-1 {found['top1']:.4f} (flip {found['top1_flip']:.4f}, "
            f"{test_side} px {found['top1_size']:.4f}, both {found['top1_flip_size']:.4f}); {train_s:.1f} s training")
    return found


def run_key(recipe: Recipe) -> str:
    """A short name for the training run of ``recipe`` (its arch and a hash of its training
    settings): recipes that differ only at test time share it.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    digest = hashlib.sha1(json.dumps(recipe.training_key(), sort_keys=True).encode()).hexdigest()[:10]
    return f"{recipe.arch}-{digest}"


def metric_key(recipe: Recipe) -> str:
    """The key of :func:`train_recipe`'s result that ``recipe``'s test-time levers read:
    ``"top1"``, ``"top1_flip"``, ``"top1_size"`` or ``"top1_flip_size"``.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    return "top1" + ("_flip" if recipe.test_flip else "") + ("_size" if recipe.test_size else "")


def _measurer(cfg: Any, *, epochs: int, img_size: int, batch_size: int, data: str, holdout: float,
              run: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] | None,
              log: Callable[[str], None] | None) -> Callable[[Recipe], dict[str, Any]]:
    """``measure(recipe)``: :func:`train_recipe`'s result for ``recipe``, trained once per training
    key (:func:`run_key`, ``"holdout-"`` first when scored on held-out images) and kept through
    ``run(key, make)`` when given."""
    done: dict[str, dict[str, Any]] = {}

    def measure(recipe: Recipe) -> dict[str, Any]:
        key = f"{'holdout-' if holdout else ''}{run_key(recipe)}"
        if key not in done:
            make = lambda: train_recipe(cfg, recipe, epochs=epochs, img_size=img_size,  # noqa: E731
                                        batch_size=batch_size, data=data, holdout=holdout, log=log)
            done[key] = run(key, make) if run is not None else make()
        return done[key]

    return measure


def ablation(cfg: Any, *, epochs: int, img_size: int, batch_size: int, data: str = "imagenette",
             levers: tuple[Lever, ...] = LADDER, side: tuple[Lever, ...] = SIDE,
             run: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
             log: Callable[[str], None] | None = print) -> list[dict[str, Any]]:
    """The ablation: one row per lever of ``levers`` (each on top of the previous), then one per
    lever of ``side`` (each on top of the whole ladder, not carried forward).

    Runs with the same training settings are trained once (a test-time lever only re-reads the
    previous run's other evaluation). ``run(key, make)`` may keep finished runs (the reference
    run's resumable store); default: train every time.

    Returns:
        One dict per lever, in order, with the keys ``run`` (the lever's name), ``metric``
        (``"top1"``), ``value``, ``epochs``, ``img_size``, ``what``, ``carried`` (True for the
        ladder), ``arch``, ``train_s`` and ``top5``.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    measure = _measurer(cfg, epochs=epochs, img_size=img_size, batch_size=batch_size, data=data, holdout=0.0,
                        run=run, log=log)
    rows, recipe = [], TEXTBOOK  # recipe: the ladder so far (the side levers go on its last rung)
    for carried, group in ((True, levers), (False, side)):
        for lever in group:
            this = dataclasses.replace(recipe, **lever.changes)
            found = measure(this)
            rows.append({"run": lever.name, "metric": "top1", "value": found[metric_key(this)],
                         "epochs": epochs, "img_size": img_size, "what": lever.what, "carried": carried,
                         "arch": this.arch, "train_s": found["train_s"], "top5": found["top5"]})
            if carried:
                recipe = this
    return rows


def ablation_table(result: dict[str, Any]) -> str:
    """A recorded ablation (the ``fast-recipe`` result) as a Markdown table: each lever, what it
    changes, top-1, its change (a ladder rung against the rung before it; a side lever against
    the whole ladder's last rung) and the training seconds of its run.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    lines = ["| lever | what it changes | top-1 | change | training s |", "|---|---|---:|---:|---:|"]
    previous, last = None, [r for r in result["rows"] if r["carried"]][-1]["value"]
    for row in result["rows"]:
        base = previous if row["carried"] else last
        change = "" if base is None else f"{100 * (row['value'] - base):+.1f}"
        lines.append(f"| {row['run']}{'' if row['carried'] else ' (side)'} | {row['what']} | "
                     f"{100 * row['value']:.1f}% | {change} | {row['train_s']:.1f} |")
        if row["carried"]:
            previous = row["value"]
    return "\n".join(lines)


@dataclass(frozen=True)
class Stage:
    """One step of the :func:`search`: a lever (``name``, the question it asks: ``what``) and its
    ``options``, each a :class:`Lever` whose ``changes`` set every setting the stage decides."""

    name: str
    what: str
    options: tuple[Lever, ...]


def _options(*named: tuple[str, dict[str, Any]]) -> tuple[Lever, ...]:
    return tuple(Lever(name, name, changes) for name, changes in named)


#: The optimizers the search tries, each with its peak rate and weight decay.
_OPTIMIZERS: dict[str, dict[str, Any]] = {
    **{f"SGD {lr:g}": {"optimizer": "sgd", "lr": lr, "weight_decay": 5e-5} for lr in (0.4, 0.2, 0.1)},
    "Lion 3e-4, decay 0.1": {"optimizer": "lion", "lr": 3e-4, "weight_decay": 0.1},
    "Lion 1e-4, decay 0.3": {"optimizer": "lion", "lr": 1e-4, "weight_decay": 0.3},
    "AdamW 3e-3, decay 0.01": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01},
}


#: Where the search starts: the textbook recipe with mixed precision and channels-last on, a
#: speed lever (on a GPU; it changes nothing on a CPU) kept in every run.
SEARCH_START = dataclasses.replace(TEXTBOOK, mixed_precision=True)

#: The search's stages, in order, and their options (the first option of a stage that changes
#: nothing keeps the recipe so far). A greedy search chooses the network before the optimizer, so
#: a network that needs another rate never gets it: the "deeper network" stage gives ResNet-50-D
#: its own rates, on top of everything chosen by then. Fixed before any run, like the ladder; the
#: search only chooses among them, on held-out training images. Optimizers come with a rate and decay each
#: (Lion's rate 3-10x below AdamW's and its decay as much above, as its authors advise).
STAGES: tuple[Stage, ...] = (
    Stage("decay", "weight decay on BatchNorm and biases too?",
          _options(("on all", {"decay_norm_and_bias": True}), ("not on BN/bias", {"decay_norm_and_bias": False}))),
    Stage("zero-init", "last BatchNorm of each block starts at 0?",
          _options(("off", {"zero_init_residual": False}), ("on", {"zero_init_residual": True}))),
    Stage("crops", "area of the random-resized crops",
          _options(*((f"{round(100 * s)}-100%", {"crop_scale": (s, 1.0)}) for s in (0.08, 0.25, 0.35, 0.5)))),
    Stage("network", "which network",
          _options(("ResNet-18", {"arch": "resnet18"}), ("ResNet-18-D", {"arch": "resnet18d"}),
                   ("ResNet-50-D", {"arch": "resnet50d"}))),
    Stage("activation", "ReLU or a smooth activation",
          _options(("ReLU", {"activation": "relu"}), ("Mish", {"activation": "mish"}))),
    Stage("optimizer", "optimizer, peak rate and weight decay", _options(*_OPTIMIZERS.items())),
    Stage("schedule", "one-cycle or flat-then-cosine",
          _options(("one-cycle", {"schedule": "onecycle"}), ("flat-cosine", {"schedule": "flatcos"}))),
    Stage("progressive", "progressive resizing?",
          _options(("off", {"progressive": False}), ("on", {"progressive": True}))),
    Stage("label-smoothing", "label smoothing",
          _options(("0.1", {"label_smoothing": 0.1}), ("0", {"label_smoothing": 0.0}))),
    Stage("ema", "evaluate an EMA of the weights?", _options(("off", {"ema": False}), ("on", {"ema": True}))),
    Stage("deeper network", "a deeper network with its own rate (chosen together: greedy stages cannot)",
          _options(("as chosen", {}), *((f"ResNet-50-D, {name}", {"arch": "resnet50d", **_OPTIMIZERS[name]})
                                        for name in ("SGD 0.4", "SGD 0.2", "SGD 0.1", "AdamW 3e-3, decay 0.01")))),
    Stage("test-time", "test-time flips and size (no training: the same run evaluated four ways)",
          _options(("plain", {"test_flip": False, "test_size": False}),
                   ("flips", {"test_flip": True, "test_size": False}),
                   (f"{TEST_SIZE_FACTOR:g}x size", {"test_flip": False, "test_size": True}),
                   ("both", {"test_flip": True, "test_size": True}))),
)


#: The recipe the recorded search chose (``fast-recipe-search``'s ``extra["recipe"]``): where the
#: second round starts.
SEARCHED = dataclasses.replace(SEARCH_START, arch="resnet18d", activation="mish", zero_init_residual=True,
                               crop_scale=(0.35, 1.0), schedule="flatcos", ema=True)

#: fast.ai's Imagenette optimizer: Ranger at lr 1e-2, decoupled decay 1e-2, and no warmup of the
#: schedule's (RAdam's rectification is a warmup of its own).
RANGER = {"optimizer": "ranger", "lr": 1e-2, "weight_decay": 1e-2, "warmup_fraction": 0.0}

#: A second round of the search, from :data:`SEARCHED`: one stage that chooses the network and the
#: optimizer *together* (the first round's greedy stages could not), with two levers of the
#: leaderboard's recipe the first round did not have: the Ranger optimizer and squeeze-excitation
#: gates; and depth again, now with Ranger. Fixed before its runs, like :data:`STAGES`.
SECOND_ROUND: tuple[Stage, ...] = (
    Stage("network and optimizer", "chosen together: Ranger, squeeze-excitation gates, depth with Ranger",
          _options(("ResNet-18-D, SGD 0.4 (as searched)", {}), ("ResNet-18-D, Ranger", RANGER),
                   ("SE-ResNet-18-D, SGD 0.4", {"arch": "seresnet18d"}),
                   ("ResNet-50-D, Ranger", {"arch": "resnet50d", **RANGER}))),
)

#: A third round, from the recipe the second round kept (:data:`SEARCHED` again): the leaderboard's
#: own network, SE-ResNeXt-50-D (squeeze-excitation gates and ResNeXt's grouped convolutions on
#: ResNet-50-D), with the leaderboard's optimizer, against the recipe kept so far; then the
#: test-time stage of the first round again (free: the same runs evaluated four ways), since a
#: larger network may read flips and a larger test image differently. Fixed before its runs.
THIRD_ROUND: tuple[Stage, ...] = (
    Stage("the leaderboard's network", "SE-ResNeXt-50-D with Ranger, against the recipe kept so far",
          _options(("ResNet-18-D, SGD 0.4 (as kept)", {}),
                   ("SE-ResNeXt-50-D, Ranger", {"arch": "seresnext50d", **RANGER}))),
    STAGES[-1],
)

#: A fourth round, from :data:`SEARCHED` again: the lever the cross-check against fast.ai's own code
#: pointed to (without it, fastai's ResNet-18 lost 1.4 of its 2.2 points over the book's): fast.ai's
#: self-attention layer in the last block of the first stage (``saresnet18d``), with the kept
#: optimizer and with the leaderboard's, against the recipe kept so far; then the test-time stage.
#: ResNet-18's size: a quarter of SE-ResNeXt-50-D's training time. Fixed before its runs.
FOURTH_ROUND: tuple[Stage, ...] = (
    Stage("self-attention", "fast.ai's self-attention layer in ResNet-18-D, with SGD or Ranger",
          _options(("ResNet-18-D, SGD 0.4 (as kept)", {}),
                   ("SA-ResNet-18-D, SGD 0.4", {"arch": "saresnet18d"}),
                   ("SA-ResNet-18-D, Ranger", {"arch": "saresnet18d", **RANGER}))),
    STAGES[-1],
)


def search(cfg: Any, *, epochs: int, img_size: int, batch_size: int, data: str = "imagenette",
           stages: tuple[Stage, ...] = STAGES, start: Recipe = SEARCH_START, holdout: float = HOLDOUT_FRACTION,
           run: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
           log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Choose a recipe without the validation split: a greedy search, one stage at a time.

    From ``start``, each stage of ``stages`` tries every one of its options on top of the recipe
    chosen so far, each trained on the training split less ``holdout`` of every class and scored
    (top-1) on those held-out images (:func:`train_recipe` with ``holdout``); the best option is
    kept (on a tie, the earlier one) and the next stage starts from it. Options with the same
    training settings are trained once (test-time options re-read a run's other evaluations).
    ``run(key, make)`` may keep finished runs (the reference run's resumable store).

    Greedy means each lever is chosen given the ones before it, not jointly; and the held-out
    images are few (about ``holdout`` of the split): a difference of a point or two may be noise.

    Returns:
        A dict: ``recipe``, the chosen :class:`Recipe`; ``rows``, one dict per option tried, in
        order, with the keys ``run`` (``"stage: option"``), ``metric`` (``"holdout_top1"``),
        ``value``, ``epochs``, ``img_size``, ``stage``, ``option``, ``chosen`` (True for each
        stage's pick), ``arch``, ``train_s`` and ``held_out`` (the images scored).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    measure = _measurer(cfg, epochs=epochs, img_size=img_size, batch_size=batch_size, data=data, holdout=holdout,
                        run=run, log=log)
    rows: list[dict[str, Any]] = []
    recipe = start
    for stage in stages:
        tried = []
        for option in stage.options:
            this = dataclasses.replace(recipe, **option.changes)
            found = measure(this)
            tried.append((this, {"run": f"{stage.name}: {option.name}", "metric": "holdout_top1",
                                 "value": found[metric_key(this)], "epochs": epochs, "img_size": img_size,
                                 "stage": stage.name, "option": option.name, "chosen": False, "arch": this.arch,
                                 "train_s": found["train_s"], "held_out": found["val"]}))
        best = max(range(len(tried)), key=lambda i: (tried[i][1]["value"], -i))
        tried[best][1]["chosen"] = True
        recipe = tried[best][0]
        rows.extend(row for _, row in tried)
        if log is not None:
            scores = ", ".join(f"{r['option']} {100 * r['value']:.1f}" for _, r in tried)
            log(f"search: {stage.name}: {tried[best][1]['option']} ({scores})")
    return {"recipe": recipe, "rows": rows}


def search_table(result: dict[str, Any]) -> str:
    """A recorded search (the ``fast-recipe-search`` result) as a Markdown table: each stage, its
    options with their held-out top-1 (the chosen one in bold), then the chosen recipe measured
    once on val beside the textbook recipe.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    lines = ["| stage | options: held-out top-1 (chosen in bold) |", "|---|---|"]
    stages: dict[str, list[str]] = {}
    for row in result["rows"]:
        if row["metric"] == "holdout_top1":
            cell = f"{row['option']} {100 * row['value']:.1f}%"
            stages.setdefault(row["stage"], []).append(f"**{cell}**" if row["chosen"] else cell)
    lines += [f"| {stage} | {'; '.join(cells)} |" for stage, cells in stages.items()]
    for row in result["rows"]:
        if row["metric"] == "top1":
            lines.append(f"| {row['run']} (val) | {100 * row['value']:.1f}% top-1 on the validation split |")
    return "\n".join(lines)
