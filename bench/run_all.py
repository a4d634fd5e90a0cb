"""Run every benchmark (``make bench``): each prints its figures and ratios against a baseline
measured in the same run. Benchmarks are not tests: they never fail on a number.

Each benchmark module in this folder exposes ``run_default(device) -> dict`` (its figures, JSON-
ready, sized for the device) and ``format_result(dict) -> str``.

    python bench/run_all.py [--device cuda] [--only models] [--json out.json]
"""

from __future__ import annotations

import os

# On a busy 2-core machine, OpenMP threads that spin while waiting slow every parallel op down
# by several times at random; passive waiting keeps timings steady. It must be set before torch
# is imported, and applies to the baseline and our code alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("models", "input_pipeline", "training_speed")


def load(name: str):
    """Import bench/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all(device: torch.device, only: list[str] | None = None) -> dict[str, dict]:
    """Run the benchmarks on ``device``, printing each; return ``{name: figures}``."""
    results = {}
    for name in only or BENCHMARKS:
        if not (HERE / f"{name}.py").exists():
            print(f"[{name}] not present, skipped")
            continue
        module = load(name)
        print(f"\n[{name}]", flush=True)
        start = time.perf_counter()
        figures = module.run_default(device)
        figures["wall_s"] = round(time.perf_counter() - start, 1)
        print(module.format_result(figures), flush=True)
        results[name] = figures
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS)
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    results = run_all(torch.device(args.device), args.only)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
