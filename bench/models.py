"""Benchmark (not a test): training-step throughput of our models vs torchvision's.

For each architecture, torchvision's model is built with random weights, its ``state_dict`` is
loaded into ours (``strict=True``), and both run the same step (forward, cross-entropy,
backward) on the same batch in the same process. After two warm-up steps each, the two are
interleaved step by step, A B | B A | A B ... for ``steps`` pairs: the order flips every pair
so neither always runs first, and the two steps of a pair are neighbours in time, so drift in
the machine's speed (clocks, other processes on a shared CPU) hits both. Each step is timed
alone (bracketed by ``torch.cuda.synchronize()`` on CUDA). Reported: img/s of each from its
median step time, and the median over pairs of the ratio ours/torchvision.

    python bench/models.py --img-size 64 --batch-size 16 --steps 5 --json out.json

prints one row per architecture with img/s for each implementation, the ratio ours/torchvision
and the target (ours >= 0.97x torchvision): PASS or BELOW. It only prints; the exit code is 0.
``run(...)`` returns the same numbers as a dict for other scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import imagenet_book.models as ours_models
from imagenet_book import PROFILES

TARGET = 0.97  # ours must keep at least this fraction of torchvision's throughput
ARCHS = ("resnet18", "resnet50", "vgg16")
WARMUP = 2  # untimed steps per implementation: allocator, oneDNN/cuDNN setup and autotuning
# (img_size, batch_size, timed step pairs): about 1-2 minutes on a 2-core CPU. The resolution
# is the profile's: local on a CPU, full on CUDA.
DEFAULTS = {"cpu": (PROFILES["local"].img_size, 16, 10), "cuda": (PROFILES["full"].img_size, 64, 30)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _step_time(model: nn.Module, X: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    """Seconds for one forward + backward pass."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(X), y).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _measure_arch(
    arch: str, X: torch.Tensor, y: torch.Tensor, steps: int, device: torch.device
) -> dict:
    """Interleaved step times of ours and torchvision's ``arch`` on the batch (X, y)."""
    tv = getattr(torchvision.models, arch)(weights=None)
    ours = getattr(ours_models, arch)()
    ours.load_state_dict(tv.state_dict(), strict=True)
    impls = [("ours", ours.to(device).train()), ("torchvision", tv.to(device).train())]
    for _, model in impls:
        for _ in range(WARMUP):
            _step_time(model, X, y, device)
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for i in range(steps):
        for name, model in impls if i % 2 == 0 else impls[::-1]:
            times[name].append(_step_time(model, X, y, device))
    ratio = statistics.median(t_tv / t for t, t_tv in zip(times["ours"], times["torchvision"]))
    return {
        "arch": arch,
        "ours_img_per_s": len(X) / statistics.median(times["ours"]),
        "torchvision_img_per_s": len(X) / statistics.median(times["torchvision"]),
        "ratio": ratio,
        "status": "PASS" if ratio >= TARGET else "BELOW",
        "step_seconds": times,
    }


def run(
    img_size: int,
    batch_size: int,
    steps: int,
    device: str | torch.device = "cpu",
    archs: tuple[str, ...] | list[str] = ARCHS,
) -> dict:
    """Measure img/s of ours and torchvision's model for each arch; return a JSON-ready dict."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the same for both implementations
    torch.manual_seed(0)
    X = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    rows = []
    for arch in archs:
        rows.append(_measure_arch(arch, X, y, steps, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the arch's models are gone: give their memory back
    return {
        "benchmark": "models: forward+backward img/s, ours vs torchvision (same weights, batch)",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "img_size": img_size,
        "batch_size": batch_size,
        "steps": steps,
        "target_ratio": TARGET,
        "rows": rows,
    }


def run_default(device: torch.device) -> dict:
    """``make bench`` / ``make gpu-check``: every arch at the device's default sizes."""
    img_size, batch_size, steps = DEFAULTS[torch.device(device).type]
    return run(img_size=img_size, batch_size=batch_size, steps=steps, device=device)


def format_result(result: dict) -> str:
    lines = [
        f"torch {result['torch']}, torchvision {result['torchvision']}; device {result['device']}"
        f" ({result['device_name']}, {result['threads']} threads)",
        f"train step (forward + backward), {result['img_size']}x{result['img_size']} px, "
        f"batch {result['batch_size']}, {result['steps']} interleaved step pairs; "
        f"medians of step time and of the per-pair ratio ours/tv",
        f"{'arch':<10} {'ours img/s':>11} {'tv img/s':>11} {'ours/tv':>8}  target",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['arch']:<10} {r['ours_img_per_s']:>11.1f} {r['torchvision_img_per_s']:>11.1f} "
            f"{r['ratio']:>7.3f}x  >= {result['target_ratio']}x {r['status']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img-size", type=int, help="default: 64 on CPU, 224 on CUDA")
    parser.add_argument("--batch-size", type=int, help="default: 16 on CPU, 64 on CUDA")
    parser.add_argument("--steps", type=int, help="timed step pairs; default: 10 CPU, 30 CUDA")
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument(
        "--threads", type=int, help="CPU threads (torch.set_num_threads). When other processes "
        "share the cores, 1 is steadier: every parallel op waits for its slowest thread"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    img_size, batch_size, steps = DEFAULTS[torch.device(args.device).type]
    result = run(
        img_size=args.img_size or img_size,
        batch_size=args.batch_size or batch_size,
        steps=args.steps or steps,
        device=args.device,
        archs=args.archs,
    )
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
