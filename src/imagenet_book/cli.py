"""The command line: ``python -m imagenet_book prepare | pretrain | evaluate | finetune``.

Runs outside notebooks call the very functions the chapters call (:mod:`imagenet_book.pretrain`,
:mod:`imagenet_book.finetune`, :mod:`imagenet_book.models.detection`),
with the same profiles: ``--profile`` (or ``IMAGENET_BOOK_PROFILE``) sets the sizes, and flags
override single sizes. Errors a user can fix (a missing dataset, a missing or wrong checkpoint,
an unknown profile, a run that would replace another: every
:class:`~imagenet_book.errors.BookError`) print one message and exit with status 2, without a
traceback.

Taught in: chapters/06_pretraining.ipynb (``finetune``: chapters/07_finetune_voc_classification.ipynb;
``pretrain --method simclr``: chapters/11_self_supervised.ipynb).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from .errors import BookError

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
PROG = "python -m imagenet_book"

_MAIN_EPILOG = f"""\
examples:
  {PROG} prepare --data imagenette                 # stand-in, download (full) or decode cache
  {PROG} pretrain --data imagenette --arch resnet18 --img-size 128 --epochs 5
  {PROG} pretrain --method simclr                  # self-supervised: no labels (chapter 11)
  {PROG} evaluate                                  # the default checkpoint, on val
  {PROG} finetune --task classify --mode finetune  # VOC, from the default checkpoint

Run '{PROG} COMMAND --help' for the options of each command.

environment:
  IMAGENET_BOOK_PROFILE  smoke | local | full (default: full with CUDA, else local)
  IMAGENET_BOOK_DATA     the data root (datasets in their official layouts)
  IMAGENET_BOOK_CACHE    stand-ins, decoded caches and checkpoints
  IMAGENET_BOOK_DEVICE   cpu | cuda | cuda:N | mps
"""

_PREPARE_EPILOG = f"""\
what it does, by profile:
  smoke   generates the built-in stand-in (always the stand-in under smoke)
  local   finds the real dataset under the data root, else generates the stand-in
  full    finds the real dataset, else downloads it into the data root
and then decodes the train and val splits once into the uint8 caches training reads.

examples:
  {PROG} prepare --data imagenette --profile full
  IMAGENET_BOOK_DATA=~/datasets {PROG} prepare --data imagewoof --img-size 128
"""

_PRETRAIN_EPILOG = f"""\
sizes come from the profile (see PROFILES in imagenet_book/runtime.py) unless a flag overrides
them. Files (default folder: <cache root>/checkpoints; name: ARCH-DATA-PROFILE, with -standin
appended when the profile fell back to the built-in stand-in):
  ARCH-DATA-PROFILE.pt     the weights + metadata; the fine-tuning chapters load this file
  ARCH-DATA-PROFILE.json   the training history (epochs and steps)
  ARCH-DATA-PROFILE.csv    the training history, one row per epoch
  ARCH-DATA-PROFILE.run/   resumable checkpoints while the run is in progress
  ARCH-DATA-PROFILE.lock   while a process runs it (a second one is refused)
Other sizes than the profile's (--epochs, --img-size, --batch-size, --lr, --max-steps), --amp,
--channels-last, --weight-decay and --holdout add a short hash of them to the name
(ARCH-DATA-PROFILE-1a2b3c4d), so they never replace the default run.
--method simclr pretrains without the labels (SimCLR, chapter 11): two augmented views of every
image, the contrastive loss at --temperature, its own sizes per profile (SIMCLR_SIZES in
imagenet_book/recipe.py); then k-NN and linear-probe accuracy of the frozen features on val. Its
files are named ARCH-simclr-DATA-PROFILE and hold a ResNet whose fc is the linear probe, so
'finetune --from ARCH-simclr-DATA-PROFILE.pt' fine-tunes it as it does a supervised one.
Run the same command again to continue an interrupted run, or to reuse a finished one with the
same settings. A finished or unfinished run with other settings under the same name (another
--seed, another version of the recipe) is never replaced: the command refuses and says how to
keep both (--out DIR) or to replace it (--restart, which also trains from scratch).

examples:
  {PROG} pretrain                                             # profile defaults
  {PROG} pretrain --data imagenette --arch resnet18 --img-size 128 --epochs 5
  {PROG} pretrain --profile full --data imagewoof --epochs 80 --out runs/woof
  {PROG} pretrain --method simclr --epochs 30 --batch-size 256 --temperature 0.2
  torchrun --nproc_per_node=2 -m imagenet_book pretrain --profile full --batch-size 512
"""

_EVALUATE_EPILOG = f"""\
The data comes from the profile, as for pretrain: evaluate under the profile (and data root) the
checkpoint was trained with. Prints top-1 and top-5 accuracy (centre crops).

examples:
  {PROG} evaluate                                      # resnet18-imagenette-PROFILE.pt, val
  {PROG} evaluate --checkpoint runs/woof/resnet18-imagewoof-full.pt --profile full
  {PROG} evaluate --arch resnet18 --data imagenette --split train
"""


_REFERENCE_EPILOG = f"""\
The data root must hold the real data (Imagenette-160 for pretrain-imagenette and fast-recipe;
PASCAL VOC, or the VOC-format real set vocstyle-coco-pennfudan/, for the VOC experiments). The
whole splits are used;
each training run's numbers are kept under <cache root>/reference/ as soon as it ends, so the
command continues where an interrupted one stopped; an experiment whose results file exists is
skipped (--force runs it again).

examples:
  {PROG} reference --data-root ~/datasets                   # every experiment, in order (not the studies)
  {PROG} reference voc-multilabel --data-root ~/datasets    # one experiment
  make reference                                             # the same, from the Makefile
"""

_FINETUNE_EPILOG = f"""\
The backbone comes from a pretraining checkpoint (default: the one 'pretrain' writes for this
profile, <cache root>/checkpoints/resnet18-imagenette-PROFILE[-standin].pt), or is randomly
initialised with --from scratch. VOC comes from the profile's data rule: the built-in stand-in
under smoke (and under local when the data root has no VOCdevkit/), the real VOC otherwise
(downloaded under full). Sizes come from the profile unless a flag overrides them.

modes:
  probe      freeze the backbone, train only the new head (a linear probe for classify)
  finetune   train everything, the backbone at a tenth of the head's learning rate
  (--from scratch: random weights, everything at the head's rate)

files (in --out, default <cache root>/finetune; checked writable before training; SOURCE: the
pretraining checkpoint's name or 'scratch', HASH: of the checkpoint, recipe and data):
  TASK-MODE-ARCH-PROFILE-from-SOURCE-HASH.pt    the trained network
                               (imagenet_book.finetune.load_finetuned reads classify/segment files)
  TASK-MODE-ARCH-PROFILE-from-SOURCE-HASH.json  metrics, budget (epochs, images, image size),
                               recipe, history
The command prints the file it saved on its 'saved:' line.

examples:
  {PROG} finetune --task classify --mode probe
  {PROG} finetune --task classify --from scratch --epochs 8
  {PROG} finetune --task segment --from runs/resnet18-imagenette-full.pt --profile full
  {PROG} finetune --task detect --mode finetune --img-size 256 --out runs/voc
"""


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("setup")
    g.add_argument("--profile", choices=["smoke", "local", "full"],
                   help="sizes and data rule (default: env IMAGENET_BOOK_PROFILE, else full with "
                        "CUDA, local without)")
    g.add_argument("--data-root", metavar="DIR",
                   help="data root (default: env IMAGENET_BOOK_DATA, else the user cache)")
    g.add_argument("--cache-root", metavar="DIR",
                   help="cache root (default: env IMAGENET_BOOK_CACHE, else the user cache)")
    g.add_argument("--seed", type=int, default=0, help="seed of every generator (default: 0)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m imagenet_book`` (five sub-commands).

    Taught in: chapters/06_pretraining.ipynb.
    """
    from .pretrain import ARCHS, DATASETS, METHODS

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt, epilog=_MAIN_EPILOG,
        description="Pretrain, evaluate and fine-tune the book's backbones outside notebooks, with "
                    "the same functions and profiles as the chapters.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prepare", formatter_class=fmt, epilog=_PREPARE_EPILOG,
                       help="get a dataset ready: stand-in, download (full profile), decode cache",
                       description="Make a dataset ready for training: build the stand-in, find "
                                   "or download the real data, and decode it once into the cache.")
    p.add_argument("--data", choices=DATASETS, default="imagenette", help="dataset (default: imagenette)")
    p.add_argument("--img-size", type=_positive, metavar="PX",
                   help="training image size the cache is made for (default: the profile's)")
    _add_common(p)

    p = sub.add_parser("pretrain", formatter_class=fmt, epilog=_PRETRAIN_EPILOG,
                       help="pretrain a backbone; writes a checkpoint and the history (JSON, CSV)",
                       description="Pretrain a backbone from scratch on an ImageNet subset, as "
                                   "chapter 06 does (imagenet_book.pretrain.pretrain).")
    p.add_argument("--data", choices=DATASETS, default="imagenette", help="dataset (default: imagenette)")
    p.add_argument("--arch", choices=list(ARCHS), default="resnet18", help="network (default: resnet18)")
    p.add_argument("--method", choices=list(METHODS), default="supervised",
                   help="supervised: with the labels (chapter 06); simclr: without them, contrastive "
                        "learning of two views (chapter 11) (default: supervised)")
    p.add_argument("--temperature", type=float, metavar="TAU",
                   help="--method simclr: temperature of the contrastive loss (default: the recipe's)")
    p.add_argument("--small-input", action="store_true",
                   help="CIFAR stem (3x3 conv, stride 1, no max-pool) for 32-64 px images: 4x the "
                        "resolution in each direction after the stem, about 15x the compute")
    p.add_argument("--img-size", type=_positive, metavar="PX", help="image side (default: the profile's)")
    p.add_argument("--epochs", type=_positive, help="passes over the data (default: the profile's)")
    p.add_argument("--batch-size", type=_positive, metavar="B",
                   help="global batch, over all processes (default: the profile's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 0.1 * B / 256; simclr: 0.3 * B / 256)")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help="supervised: weight decay of the conv and linear weights (default: the recipe's, "
                        "PRETRAIN_WEIGHT_DECAY in imagenet_book/recipe.py)")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="supervised: train on the training split less this share of each class and report "
                        "top-1/top-5 on those held-out training images instead of val (to choose a setting "
                        "without the val split)")
    p.add_argument("--out", metavar="DIR", help="folder for the files (default: <cache root>/checkpoints)")
    p.add_argument("--restart", action="store_true",
                   help="train from scratch, replacing (when done) a finished run of this name and "
                        "discarding an interrupted one, whatever their settings")
    p.add_argument("--checkpoint-every", type=_positive, metavar="STEPS",
                   help="also save a resumable checkpoint every STEPS steps (default: every epoch)")
    p.add_argument("--max-steps", type=_positive, metavar="STEPS",
                   help="stop after STEPS optimizer steps (the schedule still spans --epochs)")
    p.add_argument("--amp", choices=("bf16", "fp16", "fp32"),
                   help="compute precision of the training (default: bf16 on a CUDA GPU that has it, fp32 "
                        "elsewhere); bf16 pays on a CPU with AMX units (chapter 10), part of the run's name")
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="NHWC memory format for weights and batches (default: on a CUDA GPU only); part of "
                        "the run's name")
    _add_common(p)

    p = sub.add_parser("evaluate", formatter_class=fmt, epilog=_EVALUATE_EPILOG,
                       help="top-1/top-5 of a pretrained checkpoint on a split",
                       description="Evaluate a checkpoint written by pretrain on a split of the "
                                   "profile's data and print top-1 and top-5 accuracy.")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="the .pt file (default: <cache root>/checkpoints/ARCH-DATA-PROFILE[-standin].pt)")
    p.add_argument("--arch", choices=list(ARCHS),
                   help="expected architecture (default: the checkpoint's; resnet18 to find the default file)")
    p.add_argument("--data", choices=DATASETS, help="dataset (default: the checkpoint's)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="split (default: val)")
    p.add_argument("--batch-size", type=_positive, metavar="B", help="batch size (default: the profile's)")
    _add_common(p)

    p = sub.add_parser("finetune", formatter_class=fmt, epilog=_FINETUNE_EPILOG,
                       help="fine-tune a backbone on PASCAL VOC: classify, detect or segment",
                       description="Fine-tune a pretrained backbone (or train from scratch) on "
                                   "PASCAL VOC, as chapters 07-09 do, and report the task's metric "
                                   "(classification mAP, detection mAP@0.5, segmentation mIoU).")
    p.add_argument("--task", choices=["classify", "detect", "segment"], required=True,
                   help="multi-label classification, detection, or semantic segmentation")
    p.add_argument("--from", dest="start", metavar="CHECKPOINT|imagenet1k|scratch",
                   help="pretraining checkpoint (.pt written by 'pretrain'), 'imagenet1k' for the "
                        "ImageNet-1k EfficientNet-Lite0 of the imagenet1k extra, 'imagenet1k-resnet18' for "
                        "ResNet-18 with torchvision's ImageNet-1k weights (downloaded: online only), or "
                        "'scratch' for random weights (default: the checkpoint 'pretrain' writes for this "
                        "profile)")
    p.add_argument("--mode", choices=["probe", "finetune"], default="finetune",
                   help="probe: frozen backbone; finetune: everything (default: finetune); "
                        "ignored with --from scratch")
    p.add_argument("--arch", choices=list(ARCHS), default="resnet18", help="backbone (default: resnet18)")
    p.add_argument("--year", choices=["2007", "2012"],
                   help="VOC year (default: 2007 for classify/detect, 2012 for segment)")
    p.add_argument("--epochs", type=_positive, help="passes over the training images (default: from the profile)")
    p.add_argument("--img-size", type=_positive, metavar="PX", help="image side (default: the profile's)")
    p.add_argument("--batch-size", type=_positive, metavar="B", help="batch size (default: from the profile)")
    p.add_argument("--lr", type=float, help="the head's peak learning rate (default: 0.1 * B / 256)")
    p.add_argument("--out", metavar="DIR", help="folder for the files (default: <cache root>/finetune)")
    _add_common(p)

    p = sub.add_parser("reference", formatter_class=fmt, epilog=_REFERENCE_EPILOG,
                       help="the book's reference runs on real data, recorded in book/results/",
                       description="Run the book's key experiments at a scale where they answer the "
                                   "chapters' questions (the same functions as the chapters, on the "
                                   "real data under the data root) and record each as "
                                   "book/results/<name>.json. Resumable: run it again after an "
                                   "interruption. Experiments, in order: pretrain-imagenette, "
                                   "pretrain-weight-decay, voc-multilabel, voc-data-efficiency, "
                                   "voc-detection, voc-segmentation, backbone-stages, fast-recipe, "
                                   "fast-recipe-search, fast-recipe-second-round, fast-recipe-third-round, "
                                   "fast-recipe-fourth-round, selfsup-imagenette, "
                                   "selfsup-schedule, lfw-verification. "
                                   "pretrain-weight-decay is a study, run once to choose the "
                                   "pretraining's weight decay: it runs only when named. "
                                   "selfsup-schedule is a study, run once to measure SimCLR at three "
                                   "times chapter 11's schedule: it runs only when named. "
                                   "fast-recipe-second-round is a study, run once to search on from "
                                   "the recipe fast-recipe-search chose: it runs only when named. "
                                   "fast-recipe-third-round is a study, run once to search on from "
                                   "the recipe the second round kept: it runs only when named. "
                                   "fast-recipe-fourth-round is a study, run once to try self-attention "
                                   "in ResNet-18-D: it runs only when named. "
                                   "fast-recipe and fast-recipe-search are sized for a GPU: on a "
                                   "CPU they run only when named.")
    p.add_argument("names", nargs="*", metavar="EXPERIMENT", help="experiments to run (default: all)")
    p.add_argument("--force", action="store_true", help="run experiments whose results file exists again")
    p.add_argument("--out", metavar="DIR", help="results folder (default: book/results of this repository)")
    _add_common(p)
    return parser


def _setup(args: argparse.Namespace):
    """``ib.start()`` with the flags; quiet on every process but rank 0 under torchrun."""
    from . import runtime

    quiet = int(os.environ.get("RANK", "0")) != 0
    return runtime.start(args.profile, seed=args.seed, quiet=quiet, data_root=args.data_root,
                         cache_root=args.cache_root, origin="command line")


def _prepare(args: argparse.Namespace) -> None:
    from .pretrain import make_loaders

    cfg = _setup(args)
    t0 = time.perf_counter()
    source, train, val = make_loaders(cfg, args.data, img_size=args.img_size,
                                      progress=not args.no_progress)
    print(f"data: the {source.description}")
    print(f"classes: {source.num_classes} ({', '.join(source.class_names)})")
    for name, loader in (("train", train), ("val", val)):
        cache = loader.cache
        print(f"{name}: {len(cache)} images, cached at {cache.size} px in {cache.path} "
              f"({cache.path.stat().st_size / 2**20:.1f} MiB)")
    print(f"ready in {time.perf_counter() - t0:.1f} s")


def _pretrain(args: argparse.Namespace) -> None:
    from .pretrain import PretrainError, pretrain

    kwargs = dict(img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  small_input=args.small_input, out_dir=args.out, restart=args.restart,
                  checkpoint_every=args.checkpoint_every, max_steps=args.max_steps, amp=args.amp,
                  channels_last=args.channels_last, progress=not args.no_progress)
    if args.method == "supervised" and args.temperature is not None:
        raise PretrainError("--temperature is a setting of self-supervised pretraining: add --method simclr, "
                            "or leave --temperature out.")
    supervised_only = [flag for flag, value in (("--weight-decay", args.weight_decay), ("--holdout", args.holdout))
                       if value is not None]
    if args.method != "supervised" and supervised_only:
        raise PretrainError(f"{' and '.join(supervised_only)}: settings of supervised pretraining (SimCLR's "
                            "are in its recipe): leave them out, or leave out --method simclr.")
    cfg = _setup(args)
    if args.method == "simclr":
        from .selfsup import pretrain_simclr

        result = pretrain_simclr(cfg, args.data, args.arch, temperature=args.temperature, **kwargs)
    else:
        result = pretrain(cfg, args.data, args.arch, weight_decay=args.weight_decay, holdout=args.holdout or 0.0,
                          **kwargs)
    if int(os.environ.get("RANK", "0")) == 0:
        m = result.metrics
        if args.method == "simclr":
            print(f"k-NN top-1 {m['knn_top1']:.4f}  linear probe top-1 {m['probe_top1']:.4f}  "
                  f"contrastive val loss {m['contrastive_loss']:.4f}")
        else:
            split = "held-out training images' loss" if args.holdout else "val loss"
            print(f"top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  {split} {m['loss']:.4f}")
        print(f"checkpoint: {result.checkpoint}")
        print(f"history: {result.history_json} {result.history_csv}")


def _evaluate(args: argparse.Namespace) -> None:
    from .pretrain import evaluate_checkpoint

    cfg = _setup(args)
    r = evaluate_checkpoint(cfg, args.checkpoint, arch=args.arch, data=args.data, split=args.split,
                            batch_size=args.batch_size, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"checkpoint: {r['checkpoint']}")
        print(f"data: {r['split']} split of the {r['description']} ({r['images']} images)")
        print(f"top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  loss {r['loss']:.4f}")
        print(json.dumps({k: r[k] for k in ("top1", "top5", "loss", "images", "split")}))


def _finetune(args: argparse.Namespace) -> None:
    from pathlib import Path

    from . import finetune as ft

    cfg = _setup(args)
    scratch = args.start is not None and args.start.lower() == "scratch"
    mode = "scratch" if scratch else args.mode
    checkpoint = None if scratch or args.start is None else args.start
    year = args.year or ("2012" if args.task == "segment" else "2007")
    out = Path(args.out) if args.out else Path(cfg.cache_root) / "finetune"
    sizes = dict(epochs=args.epochs, img_size=args.img_size, batch_size=args.batch_size, lr=args.lr)
    run = {"classify": ft.finetune_classifier, "segment": ft.finetune_segmenter,
           "detect": ft.finetune_detector}[args.task]
    # out_dir: the fine-tuning checks the folder can be written BEFORE training, and saves there.
    result = run(cfg, checkpoint, mode=mode, year=year, arch=args.arch, out_dir=out,
                 progress=not args.no_progress, **sizes)
    saved = out / f"{result.stem}.pt"
    shown = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    print(f"{args.task} / {mode}: " + "  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    print(f"saved: {saved}")
    print(json.dumps({"task": args.task, "mode": mode, **shown}))


def _reference(args: argparse.Namespace) -> None:
    from .reference import run_reference

    cfg = _setup(args)
    run_reference(cfg, args.names or None, folder=args.out, force=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 a user error, 130 interrupted).

    Taught in: chapters/06_pretraining.ipynb.
    """
    args = build_parser().parse_args(argv)
    command = {"prepare": _prepare, "pretrain": _pretrain, "evaluate": _evaluate,
               "finetune": _finetune, "reference": _reference}[args.command]
    try:
        command(args)
    except BookError as err:  # every error whose message tells the user what to fix
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        hint = " Run the same command again to continue." if args.command == "pretrain" else ""
        print(f"{PROG} {args.command}: interrupted.{hint}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
