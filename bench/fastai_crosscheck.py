"""Cross-check for issue 16: fast.ai's own leaderboard recipe, run by fast.ai's own code, on the
Imagenette copy under the book's data root.

The Imagenette leaderboard's 128 px / 5-epoch figures come from fastai's ``train_imagenette.py``
with the "Jan 2020" parameters (fastai/imagenette, 2020-01-train.md):

    --lr 8e-3 --sqrmom 0.99 --mom 0.95 --eps 1e-6 --bs 64 --opt ranger --sa 1
    --fp16 1 --arch xse_resnext50 --pool MaxPool      (and --size 128 --epochs 5)

i.e. fastai's xse_resnext50 (Mish, self-attention, max-pool shortcuts), Ranger, a flat-then-cosine
schedule, weight decay 1e-2, label smoothing, random-resized crops of 35-100% and flips, trained
from the 320 px release. This script builds that run with the fastai library's public API (it
does not use the book's package at all), on whatever folder ``--data`` names, so the book's own
figures can be read against the recipe they are compared with *on the same images*: if fastai's
run lands where the book's does, the gap to the leaderboard is the data copy, not the book's code.

fastai is not a dependency of the book. Install it beside the project's environment, without
letting pip touch torch:

    .venv/bin/pip install --target /tmp/fastai_pkgs --no-deps fastai fastdownload fastcore \\
        fasttransform 'fastprogress==1.0.3' scikit-learn 'plum-dispatch<2.10' cloudpickle \\
        beartype typing-extensions rich
    PYTHONPATH=/tmp/fastai_pkgs .venv/bin/python bench/fastai_crosscheck.py \\
        --data "$IMAGENET_BOOK_DATA/imagenette2-160" --json /tmp/xse_resnext50.json
    (the same with --arch xresnet18 --json /tmp/xresnet18.json, for a network of ResNet-18's size;
    with --book-loop --mom 0.9, fastai's network trained by the book's code; and with
    --arch book:saresnet18d --book-loop --mom 0.9, the book's own network at the same settings)
    .venv/bin/python bench/fastai_crosscheck.py --record-from /tmp/xse_resnext50.json /tmp/xresnet18.json

The raw records hold machine paths, so they stay out of the repository; the last command writes
``book/results/fastai-crosscheck.json`` (rows: val top-1 after each epoch of each network).

On a CPU it trains in float32 (fastai's ``to_fp16`` needs CUDA); with ``--fp16`` on a GPU it
matches the leaderboard's setting. Figures are whatever the run prints: nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = Path(os.environ.get("IMAGENET_BOOK_DATA", "data")) / "imagenette2-160"
    parser.add_argument("--data", type=Path, default=default_data,
                        help="an Imagenette folder with train/ and val/ (default: %(default)s)")
    parser.add_argument("--arch", default="xse_resnext50",
                        help="a network of fastai's xresnet module, or book:NAME for the book's own network NAME "
                             "(imagenet_book.pretrain.ARCHS; with Mish and zero-initialised residual branches, as "
                             "fastai's; --book-loop only): the control beside fastai's network")
    parser.add_argument("--book-shortcut", choices=("avg", "max"), default="avg",
                        help="with --arch book:NAME: the downsampling shortcut's pooling (max: fastai's MaxPool)")
    parser.add_argument("--book-init", choices=("book", "fastai"), default="book",
                        help="with --arch book:NAME: the book's initialisation, or fastai's init_cnn (Kaiming normal "
                             "by fan-in of every convolution and linear layer, biases 0)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=8e-3)
    parser.add_argument("--mom", type=float, default=0.95)
    parser.add_argument("--sqrmom", type=float, default=0.99)
    parser.add_argument("--eps", type=float, default=1e-6)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--sa", type=int, default=1)
    parser.add_argument("--pool", default="MaxPool", choices=("MaxPool", "AvgPool"))
    parser.add_argument("--fp16", action="store_true", help="mixed precision (CUDA only)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-batches", type=int, default=0,
                        help="stop each epoch after this many batches (a trial of the set-up only)")
    parser.add_argument("--book-loop", action="store_true",
                        help="train fastai's network with the book's code instead of fastai's: its fast loader, "
                             "engine.fit, its Ranger (beta1 0.9: pass --mom 0.9) and flat-then-cosine schedule, "
                             "bf16 where the hardware has it; the network and the settings stay fastai's")
    parser.add_argument("--json", type=Path, help="write the run's raw record here")
    parser.add_argument("--record-from", type=Path, nargs="+", metavar="RAW",
                        help=f"train nothing: write book/results/{RESULT}.json (what chapter A2 renders) from "
                             "the raw records of finished runs (--json), one or several networks")
    parser.add_argument("--commit", help="with --record-from: the commit of the code a raw record's run used, "
                                          "for raw records that lack one (default: this checkout's)")
    args = parser.parse_args(argv)
    if args.record_from is not None:
        commit = args.commit or git_commit()
        return write_book_record([{"commit": commit, **read_raw(path)} for path in args.record_from])

    book_arch = book_network_name(args)
    for split in ("train", "val"):
        if not (args.data / split).is_dir():
            sys.exit(f"{args.data / split}: not a folder. Point --data (or IMAGENET_BOOK_DATA) at an "
                     "Imagenette copy with train/ and val/ class folders.")
    try:
        import torch
        from fastai.callback.core import Callback, CancelEpochException
        from fastai.layers import MaxPool, AvgPool, Mish
        from fastai.losses import LabelSmoothingCrossEntropy
        from fastai.metrics import accuracy
        from fastai.optimizer import ranger
        from fastai.torch_core import set_seed
        from fastai.vision import models as fastai_models
        from fastai.vision.all import (CategoryBlock, DataBlock, FlipItem, GrandparentSplitter,
                                       ImageBlock, Learner, Normalize, RandomResizedCrop,
                                       get_image_files, imagenet_stats, parent_label)
        import fastai
    except ImportError as error:
        sys.exit(f"{error}: this cross-check needs the fastai library; see the install line at the "
                 f"top of {Path(__file__).name}.")
    pool = {"MaxPool": MaxPool, "AvgPool": AvgPool, None: None}[args.pool]

    def network(num_classes: int) -> torch.nn.Module:
        if book_arch is not None:
            return book_network(book_arch, num_classes, shortcut=args.book_shortcut, init=args.book_init)
        return getattr(fastai_models.xresnet, args.arch)(n_out=num_classes, act_cls=Mish, sa=args.sa, sym=0,
                                                         pool=pool)

    network.__name__ = ("" if book_arch else "fastai's ") + network_label(vars(args))  # as the rows name it
    common = {"name": RESULT, "commit": git_commit(),
              "command": "python bench/fastai_crosscheck.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "fastai": fastai.__version__,
              "data": str(args.data),
              "settings": {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}}
    if args.book_loop:
        return save(args, {**common, **book_loop(args, network)})
    set_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    block = DataBlock(blocks=(ImageBlock, CategoryBlock),
                      splitter=GrandparentSplitter(valid_name="val"),
                      get_items=get_image_files, get_y=parent_label,
                      item_tfms=[RandomResizedCrop(args.size, min_scale=0.35), FlipItem(0.5)],
                      batch_tfms=[Normalize.from_stats(*imagenet_stats)])
    dls = block.dataloaders(args.data, path=args.data, bs=args.bs, num_workers=args.workers,
                            device=device)
    model = network(len(dls.vocab))
    opt = partial(ranger, mom=args.mom, sqr_mom=args.sqrmom, eps=args.eps, beta=0.0)

    class Limit(Callback):
        order = 1

        def after_batch(self):
            if self.training and args.limit_batches and self.iter + 1 >= args.limit_batches:
                raise CancelEpochException()

    learn = Learner(dls, model, opt_func=opt, metrics=[accuracy],
                    loss_func=LabelSmoothingCrossEntropy(), cbs=[Limit()] if args.limit_batches else [])
    if args.fp16:
        learn = learn.to_fp16()
    start = time.perf_counter()
    learn.fit_flat_cos(args.epochs, args.lr, wd=1e-2)
    wall = time.perf_counter() - start
    # The recorder holds [train loss, valid loss, accuracy] per epoch.
    per_epoch = [float(values[2]) for values in learn.recorder.values if len(values) > 2]
    return save(args, {
        **common, "loop": "fastai",
        "device": torch_device_name(device), "train_images": len(dls.train_ds), "val_images": len(dls.valid_ds),
        "precision": "fp16 mixed" if args.fp16 else "fp32",
        "val_top1_per_epoch": per_epoch, "val_top1": per_epoch[-1] if per_epoch else None,
        "wall_s": round(wall, 1)})


def book_network_name(args: argparse.Namespace) -> str | None:
    """The book's network ``--arch book:NAME`` asks for (None for a fastai network), checked before
    fastai is imported or anything trains; ``--sa``/``--pool`` (fastai's options) are then set to
    None, and for a fastai network ``--book-shortcut``/``--book-init``, so the record holds only
    the options that applied."""
    if not args.arch.startswith("book:"):
        if (args.book_shortcut, args.book_init) != ("avg", "book"):
            sys.exit("--book-shortcut and --book-init change the book's network: use them with --arch book:NAME.")
        args.book_shortcut = args.book_init = None
        return None
    name = args.arch.removeprefix("book:")
    sys.path.insert(0, str(ROOT / "src"))
    from imagenet_book.pretrain import ARCHS

    if name not in ARCHS:
        sys.exit(f"--arch {args.arch}: the book has no network {name!r}; choose one of: "
                 + ", ".join(f"book:{arch}" for arch in ARCHS))
    if not args.book_loop:
        sys.exit(f"--arch {args.arch}: the book's own network runs with --book-loop (and --mom 0.9) only: it is "
                 "the control beside fastai's network in the book's loop.")
    if args.sa != 1 or args.pool != "MaxPool":
        sys.exit("--sa and --pool are options of fastai's networks; leave them out with --arch book:NAME.")
    args.sa = args.pool = None
    return name


def book_network(name: str, num_classes: int, *, shortcut: str = "avg", init: str = "book"):
    """The book's network ``name`` as the control runs it: with Mish in place of every ReLU and
    zero-initialised residual branches, as fastai's xresnet has both; with ``shortcut="max"`` the
    downsampling shortcuts max-pool instead of average-pooling, and with ``init="fastai"`` every
    convolution and linear layer is initialised as fastai's ``init_cnn`` does it (Kaiming normal by
    fan-in, biases 0; the last BatchNorm of each block stays at 0): fastai's two other differences."""
    import torch
    from torch import nn
    from torch.nn.utils import parametrize

    from imagenet_book import fastrecipe
    from imagenet_book.pretrain import ARCHS

    net = fastrecipe.use_activation(ARCHS[name](num_classes=num_classes, zero_init_residual=True), "mish")
    if shortcut == "max":
        for module in net.modules():
            if isinstance(module, nn.Sequential) and module and isinstance(module[0], nn.AvgPool2d):
                module[0] = nn.MaxPool2d(module[0].kernel_size, ceil_mode=True)
    if init == "fastai":
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                    spectral = parametrize.is_parametrized(module, "weight")  # the self-attention's W
                    nn.init.kaiming_normal_(module.parametrizations.weight.original if spectral else module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
    return net


def book_loop(args: argparse.Namespace, network) -> dict:
    """fastai's network trained by the book's fast recipe code (``fastrecipe.train_recipe`` with
    ``build=``) at fastai's settings; the val top-1 at the end (the book's loop measures once)."""
    import dataclasses

    sys.path.insert(0, str(ROOT / "src"))
    import imagenet_book
    from imagenet_book import fastrecipe as fr

    if args.mom != 0.9 or args.sqrmom != 0.99 or args.eps != 1e-6:
        sys.exit("--book-loop: the book's fast recipe runs Ranger with beta1 0.9, beta2 0.99 and eps 1e-6; pass "
                 "--mom 0.9 (and leave --sqrmom and --eps at their defaults) so the record says what ran.")
    if args.data.name not in ("imagenette2-160", "imagenette2-320", "imagenette2"):
        sys.exit(f"--book-loop: {args.data} must be named imagenette2-160 (or -320, or imagenette2), "
                 "as the book's data rule looks for it in its data root.")
    cfg = imagenet_book.start("local", seed=args.seed, quiet=True, data_root=args.data.parent)
    every = dataclasses.replace(cfg.profile, train_per_class=None, val_per_class=None)  # all images, as fastai
    cfg = dataclasses.replace(cfg, profile=every)
    recipe = fr.Recipe(arch="not used: build=", crop_scale=(0.35, 1.0), optimizer="ranger", lr=args.lr,
                       weight_decay=1e-2, decay_norm_and_bias=False, schedule="flatcos", warmup_fraction=0.0,
                       label_smoothing=0.1, mixed_precision=True, ema=False)
    found = fr.train_recipe(cfg, recipe, epochs=args.epochs, img_size=args.size, batch_size=args.bs,
                            build=network, log=print)
    device = torch_device_name(cfg.device)
    return {"loop": "book", "device": device, "train_images": found["train"], "val_images": found["val"],
            "precision": found["amp"], "val_top1_per_epoch": None, "val_top1": found["top1"],
            "val_top1_flips": found["top1_flip"], "val_top5": found["top5"], "wall_s": found["train_s"],
            "recipe": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}}


def torch_device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


def save(args: argparse.Namespace, record: dict) -> dict:
    """Print the run's raw record and write it to ``--json`` (atomically)."""
    print(json.dumps(record, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(args.json)
    return record


RESULT = "fastai-crosscheck"
#: How the book's record names the data and the command (no machine paths go into book/results).
DATA_NAME = "Imagenette, the data root's copy (imagenette2-160)"
COMMAND = ("PYTHONPATH=<fastai> python bench/fastai_crosscheck.py --data $IMAGENET_BOOK_DATA/imagenette2-160 "
           "[--arch ARCH] --json RAW.json, then --record-from RAW.json ...")


def read_raw(path: Path) -> dict:
    """A raw record this script wrote with ``--json``; a clear error for anything else."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"{path}: cannot read it as JSON ({error}); pass the file a run wrote with --json.")
    missing = [k for k in ("val_top1_per_epoch", "settings", "device", "date", "train_images", "val_images")
               if k not in raw]
    if missing or raw.get("name") != RESULT:
        sys.exit(f"{path}: not a raw record of {Path(__file__).name} (missing {missing}); "
                 "pass the file a run wrote with --json.")
    return raw


def network_label(settings: dict) -> str:
    """The network a run trained, as rows and the record's settings name it: the arch, and what of
    the leaderboard's settings it leaves out (``--sa 0``, ``--pool AvgPool``); for ``book:NAME``,
    "the book's NAME"."""
    if settings["arch"].startswith("book:"):
        name = f"the book's {settings['arch'].removeprefix('book:')}"
        changes = [change for change, on in (("max-pool shortcuts", settings.get("book_shortcut") == "max"),
                                             ("fastai's initialisation", settings.get("book_init") == "fastai")) if on]
        return f"{name} with {' and '.join(changes)}" if changes else name
    return (settings["arch"] + ("" if settings["sa"] else " without self-attention")
            + ("" if settings["pool"] == "MaxPool" else f" with {settings['pool']} shortcuts"))


def book_rows(raw: dict) -> list[dict]:
    """The record's rows, each with ``epochs`` and ``img_size`` as the fast-recipe records carry them:
    for a run of fastai's loop, val top-1 after each epoch (the last row is the run's result); for a
    run of the book's loop (``--book-loop``), which measures once, one row at the end."""
    settings = raw["settings"]
    book = settings["arch"].startswith("book:")
    owner = "" if book else "fastai's "  # network_label says "the book's" itself
    network = (f"{network_label(settings)} (Mish, zero-initialised residual branches)" if book else
               f"{settings['arch']} (Mish, self-attention {'on' if settings['sa'] else 'off'}, "
               f"{settings['pool']} shortcuts)")
    same = {"img_size": settings["size"], "arch": settings["arch"], "network": network_label(settings),
            "commit": raw["commit"], "device": raw["device"], "train_s": raw["wall_s"]}
    if raw.get("loop", "fastai") == "book":
        what = (f"{owner}{network} trained by the book's fast recipe code: its fast loader, engine.fit, "
                f"Ranger {settings['lr']:g} (beta1 0.9), flat-then-cosine, decoupled decay 1e-2 (not on BN/bias), "
                f"label smoothing 0.1, crops 35-100% + flips, batch {settings['bs']}, {raw['precision']}")
        return [{"run": f"{owner}{network_label(settings)}, the book's loop", "metric": "top1",
                 "value": float(raw["val_top1"]), "epochs": settings["epochs"], "loop": "book", "what": what,
                 "top5": raw["val_top5"], "top1_flips": raw["val_top1_flips"], **same}]
    per_epoch = raw["val_top1_per_epoch"]
    if len(per_epoch) != settings["epochs"]:
        raise ValueError(f"the run recorded {len(per_epoch)} of its {settings['epochs']} epochs' val accuracy "
                         "(a trial with --limit-batches, or a run cut short): nothing to record")
    what = (f"fastai {raw['fastai']}: {network}, Ranger {settings['lr']:g} (mom {settings['mom']}, sqr_mom "
            f"{settings['sqrmom']}), flat-cos, wd 1e-2, label smoothing, batch {settings['bs']}, "
            f"crops 35-100% + flips, {raw['precision']}")
    return [{"run": f"fastai {network_label(settings)}, epoch {epoch}", "metric": "top1", "value": float(value),
             "epochs": epoch, "loop": "fastai", "what": what, **same}
            for epoch, value in enumerate(per_epoch, start=1)]


#: Options a raw record may hold that are not the run's settings (or are machine paths).
_NOT_SETTINGS = ("data", "json", "record_from", "commit")


def git_commit() -> str:
    """This checkout's commit (short), ``+changes`` when its tracked files differ from it."""
    run = partial(subprocess.run, cwd=ROOT, capture_output=True, text=True)
    commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip() or "unknown"
    return commit + ("+changes" if run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout else "")


def write_book_record(raws: list[dict], folder: Path = ROOT / "book" / "results") -> dict:
    """Write ``<folder>/fastai-crosscheck.json`` (default: the book's results) from finished runs'
    raw records, one network each, on the same data; returns what was written."""
    sys.path.insert(0, str(ROOT / "src"))
    from imagenet_book.results import write_result

    runs = [(network_label(raw["settings"]), raw.get("loop", "fastai")) for raw in raws]
    if len(set(runs)) != len(runs):
        raise ValueError(f"two raw records of the same network and loop ({runs}): record each once")
    if len({(raw["train_images"], raw["val_images"]) for raw in raws}) != 1:
        raise ValueError("the raw records were made on different data (their image counts differ)")

    def joined(key: str) -> str:
        return ", ".join(dict.fromkeys(raw[key] for raw in raws))

    path = write_result(RESULT, chapter="chapters/A2_fast_recipe.ipynb", command=COMMAND,
                        commit=joined("commit"), device=joined("device"), day=max(raw["date"] for raw in raws),
                        data={"name": DATA_NAME, "real": True, "train": raws[0]["train_images"],
                              "val": raws[0]["val_images"]},
                        rows=[row for raw in raws for row in book_rows(raw)],
                        wall_s=sum(raw["wall_s"] for raw in raws), folder=folder,
                        extra={"torch": joined("torch"), "fastai": joined("fastai"), "settings": {
                            f"{arch}, {loop} loop": {k: v for k, v in raw["settings"].items() if k not in _NOT_SETTINGS}
                            for (arch, loop), raw in zip(runs, raws)}})
    print(f"wrote {path}")
    return json.loads(path.read_text())


if __name__ == "__main__":
    main()
