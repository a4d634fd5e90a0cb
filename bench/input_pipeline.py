"""Benchmark (not a test): images/s of the textbook input pipeline vs ours (imagenet_book.data.fast).

Measured in the same run, on real Imagenette when the data root has it, else on a 160 px stand-in:

(a) the textbook loader: ``ImageFolder`` + PIL + ``RandomResizedCrop(img_size)`` +
    ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize``, ``DataLoader(num_workers=2)``;
(b) ours with the augmentation on the CPU: ``FastLoader`` over the uint8 cache, normalised float
    batches out (random-resized-crop, flip and normalisation as batched tensor ops);
(c) the host-side part of ours when the augmentation runs on an accelerator: per batch, the order,
    the crop boxes and the uint8 gather from the cache into the (pinned, when CUDA exists) buffer
    that is copied to the device: all a 2-vCPU Colab must still do;
(d) only when CUDA is available: ours end to end with the augmentation on the GPU.

OpenMP: unless ``OMP_WAIT_POLICY`` is already set, this script sets it to ``PASSIVE`` before
importing torch (it only takes effect then: run the script itself, or export it for the runner).
With the default (active) policy, torch's idle OpenMP threads spin; on a machine whose cores are
also busy with other processes, those spinning threads take turns blocking each other and
multi-threaded torch ops (our (b)) slow down by 5-10x at random, while (a)'s single-threaded
workers do not. The policy in force and the load average are printed with the results.

Fairness: each pipeline is warmed up, then (a), (b), (c) are timed in turn (rotating the order),
``repeats`` times, each timing over the same number of images; the median is reported. Every
timing of (a) uses a fresh ``DataLoader`` iterator whose first ``2 * workers`` batches (worker
start-up, prefetch) are consumed before the clock starts, and which is shut down after, so its
workers never run while (b) or (c) is timed (they may have begun the first timed batches
during the warm-up: a head start of about one batch at most, in (a)'s favour). The uint8 cache
is built before timing (its build time is printed, not counted).

    IMAGENET_BOOK_DATA=... IMAGENET_BOOK_CACHE=... python bench/input_pipeline.py \\
        [--img-size 128 --batch-size 256 --seconds 5 --repeats 3 --json out.json]

prints img/s of each, its ratio to (a), and the targets ((b) >= 2x, (c) >= 10x): PASS or
BELOW. It only prints; the exit code is 0. ``run(...)`` returns the same figures as a dict.
"""

from __future__ import annotations

import os
import sys

# Before torch is imported (see the docstring); recorded in the results either way.
if "OMP_WAIT_POLICY" in os.environ:
    _POLICY = os.environ["OMP_WAIT_POLICY"] + " (from the environment)"
elif "torch" in sys.modules:
    _POLICY = "default (torch was imported before this script could set PASSIVE)"
else:
    os.environ["OMP_WAIT_POLICY"] = _POLICY = "PASSIVE"  # set by this script

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterator  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler  # noqa: E402
from torchvision import transforms as T  # noqa: E402
from torchvision.datasets import ImageFolder  # noqa: E402

import imagenet_book  # noqa: E402
from imagenet_book.data.fast import IMAGENET_MEAN, IMAGENET_STD, FastLoader, decode_cache  # noqa: E402
from imagenet_book.data.imagenet import find_imagenette  # noqa: E402
from imagenet_book.data.standin import make_imagenet_standin  # noqa: E402

TARGETS = {"b": 2.0, "c": 10.0}  # ratio to (a) on a 2-core machine
LABELS = {
    "a": "(a) textbook: ImageFolder+PIL+RRC+flip+ToTensor+Normalize, DataLoader(num_workers={w})",
    "b": "(b) ours, augmentation on the CPU",
    "c": "(c) ours, host side only (order, boxes, uint8 gather for the transfer)",
    "d": "(d) ours, augmentation on CUDA (end to end)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-size", type=int, default=128, help="crop size (default 128)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seconds", type=float, default=5.0, help="about how long one timing of (a) lasts")
    p.add_argument("--batches", type=int, help="batches per timing (default: from --seconds)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p


def _options(cfg_or_args: Any) -> tuple[argparse.Namespace, Any]:
    """(options, cfg) from None, a dict, an argparse.Namespace or an imagenet_book Setup."""
    opts = _parser().parse_args([])
    cfg = None
    if hasattr(cfg_or_args, "profile") and hasattr(cfg_or_args, "cache_root"):
        cfg = cfg_or_args
    elif cfg_or_args is not None:
        given = cfg_or_args if isinstance(cfg_or_args, dict) else vars(cfg_or_args)
        for key, value in given.items():
            setattr(opts, key.replace("-", "_"), value)
    return opts, cfg or imagenet_book.start("local", quiet=True)


def _train_folder(cfg: Any) -> tuple[Path, str, bool]:
    folder = find_imagenette(cfg.data_root)
    if folder is not None:
        return folder / "train", f"real Imagenette ({folder.name}/train)", True
    root = make_imagenet_standin(Path(cfg.cache_root) / "standins" / "bench-input-pipeline-160px",
                                 num_classes=10, train_per_class=64, val_per_class=1, img_size=160)
    return root / "train", "built-in stand-in (no Imagenette under the data root; 160 px)", False


def _cycle(make: Callable[[], Iterator]) -> Iterator:
    return itertools.chain.from_iterable(make() for _ in itertools.count())


def _time(batches: Iterator, n: int, sync: bool = False) -> float:
    """Seconds to take ``n`` batches from ``batches``."""
    start = time.perf_counter()
    for _ in range(n):
        next(batches)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(cfg_or_args: Any = None) -> dict:
    """Measure (a), (b), (c) [and (d) on CUDA]; return a JSON-ready dict of img/s and ratios."""
    opts, cfg = _options(cfg_or_args)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    B, size, workers = opts.batch_size, opts.img_size, opts.workers
    train_dir, data, is_real = _train_folder(cfg)

    tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    textbook = ImageFolder(str(train_dir), transform=tf)
    warm_a = 2 * max(1, workers)

    def textbook_timing(n: int) -> float:  # a fresh iterator: start-up and prefetch not timed
        sampler = RandomSampler(textbook, replacement=True, num_samples=(warm_a + n) * B)
        it = iter(DataLoader(textbook, batch_size=B, sampler=sampler, num_workers=workers))
        _time(it, warm_a)
        seconds = _time(it, n)
        del it  # shuts its workers down before anything else is timed
        return seconds

    started = time.perf_counter()
    cache = decode_cache(ImageFolder(str(train_dir)), cache_dir=Path(cfg.cache_root) / "fast",
                         name=train_dir.parent.name)
    cache_seconds = time.perf_counter() - started
    cpu = FastLoader(cache, B, out_size=size, device="cpu", seed=0)
    host = FastLoader(cache, B, out_size=size, device="cpu", seed=0)
    streams = {"b": _cycle(lambda: iter(cpu)), "c": _cycle(lambda: host.host_batches(gather=True))}
    if torch.cuda.is_available():
        gpu = FastLoader(cache, B, out_size=size, device="cuda", seed=0)
        streams["d"] = _cycle(lambda: iter(gpu))

    # Warm-up; the speed of (a) seen here sets the number of batches per timing.
    for name, stream in streams.items():
        _time(stream, 3, sync=name == "d")
    estimate = warm_a * B / textbook_timing(warm_a)
    n = opts.batches or max(2, math.ceil(opts.seconds * estimate / B))

    samples: dict[str, list[float]] = {k: [] for k in ("a", *streams)}
    order = list(samples)
    for r in range(opts.repeats):
        for name in order[r % len(order):] + order[: r % len(order)]:
            seconds = textbook_timing(n) if name == "a" else _time(streams[name], n, sync=name == "d")
            samples[name].append(n * B / seconds)
    rows = {}
    for name, values in samples.items():
        ips = statistics.median(values)
        ratio = ips / statistics.median(samples["a"])
        target = TARGETS.get(name)
        rows[name] = {"label": LABELS[name].format(w=workers), "img_per_s": ips, "ratio_to_a": ratio,
                      "target_ratio": target, "samples_img_per_s": values,
                      "status": None if target is None else ("PASS" if ratio >= target else "BELOW")}
    return {
        "benchmark": "input pipeline: img/s of the textbook loader vs imagenet_book.data.fast",
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": _POLICY,
        "load_average_1min": [load_before, os.getloadavg()[0] if load_before is not None else None],
        "data": data, "is_real": is_real,
        # The data's name, not its path: results are committed and must not show this machine's folders.
        "train_split": f"{train_dir.parent.name}/{train_dir.name}", "images": len(cache), "img_size": size,
        "batch_size": B,
        "cache_size_px": cache.size, "cache_mb": cache.images.numel() / 1e6,
        "cache_file": cache.path.name, "cache_ready_s": cache_seconds,
        "batches_per_timing": n, "images_per_timing": n * B, "repeats": opts.repeats,
        "rows": rows,
    }


def run_default(device: torch.device) -> dict:
    """``make bench`` / ``make gpu-check``: the default sizes; (d) is measured when CUDA is present."""
    return run()


def _loads(pair: list) -> str:
    return "n/a" if pair[0] is None else f"{pair[0]:.1f} before, {pair[1]:.1f} after"


def format_result(result: dict) -> str:
    lines = [
        f"input pipeline on {result['data']}: {result['images']} images, "
        f"{result['img_size']} px crops, batch {result['batch_size']}",
        f"torch {result['torch']}, torchvision {result['torchvision']}; {result['machine']}, "
        f"{result['threads']} torch threads; CUDA: {result['cuda'] or 'none'}; OMP_WAIT_POLICY="
        f"{result['omp_wait_policy']}; load average {_loads(result['load_average_1min'])}",
        f"uint8 cache: {result['cache_size_px']} px, {result['cache_mb']:.0f} MB, ready in "
        f"{result['cache_ready_s']:.1f} s ({result['cache_file']}; built on first use, not timed)",
        f"{result['repeats']} interleaved repeats x {result['batches_per_timing']} batches "
        f"({result['images_per_timing']} images) per timing, median",
    ]
    for row in result["rows"].values():
        target = "" if row["target_ratio"] is None else f"  target >= {row['target_ratio']:g}x  {row['status']}"
        lines.append(f"{row['label']:<88} {row['img_per_s']:>9.0f} img/s {row['ratio_to_a']:>7.2f}x{target}")
    return "\n".join(lines)


def main() -> None:
    args = _parser().parse_args()
    result = run(args)
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
