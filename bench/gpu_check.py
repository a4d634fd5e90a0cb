"""``make gpu-check``: the whole test suite (unit tests + every notebook under nbval, smoke profile)
and the benchmarks, on whatever device is present (CUDA when available, else the CPU).

It prints the device name, then writes a JSON summary to
``bench/results/gpu-check-<date>-<device>.json``: the device, library versions, the test counts
and wall time, and every benchmark's figures. Commit that file when it was produced on a GPU.

    python bench/gpu_check.py [--skip-tests] [--skip-bench] [--out bench/results]

Exit status: 0 when the tests passed (or were skipped), 1 otherwise; the JSON is written either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import run_all  # noqa: E402  (bench/run_all.py)


def device_description() -> dict:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"device": "cuda", "device_name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                "bf16": torch.cuda.is_bf16_supported()}
    return {"device": "cpu", "device_name": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}


def run_tests() -> dict:
    """pytest over tests/, chapters/ and labs/ with nbval, smoke profile, on the default device."""
    if importlib.util.find_spec("nbval") is None:
        return {"status": "not run: nbval is not installed in this Python (install the dev extra)"}
    env = dict(os.environ, IMAGENET_BOOK_PROFILE="smoke")
    # The website test reads the book in headless Chromium: get one as `make test` does. Without
    # one, this device check still runs everything else (the browser checks do not depend on it).
    browser = subprocess.run([sys.executable, str(ROOT / "tools" / "browser.py")], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if browser.returncode != 0:
        print((browser.stderr.strip().splitlines() or ["no browser"])[-1], file=sys.stderr, flush=True)
        env["IMAGENET_BOOK_SKIP_BROWSER"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        folders = [d for d in ("tests", "chapters", "labs") if (ROOT / d).is_dir()]
        command = [sys.executable, "-m", "pytest", *folders, "--nbval-lax",
                   "--nbval-cell-timeout=600", "-p", "no:cacheprovider", "-q",
                   f"--junitxml={junit}"]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env)
        wall = time.perf_counter() - start
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        if junit.exists():
            suite = ET.parse(junit).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            counts = {k: int(suite.get(k, 0)) for k in counts}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"status": "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
            "passed": passed, **counts, "wall_s": round(wall, 1),
            "browser": browser.stdout.strip() or "none: the website's browser checks were skipped"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    device = device_description()
    print(f"gpu-check on {device['device']}: {device['device_name']} "
          f"(torch {torch.__version__}, torchvision {torchvision.__version__})", flush=True)
    summary = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               **device, "torch": torch.__version__, "torchvision": torchvision.__version__,
               "python": platform.python_version()}
    summary["tests"] = {"status": "skipped"} if args.skip_tests else run_tests()
    print(f"tests: {summary['tests']}", flush=True)
    summary["benchmarks"] = {} if args.skip_bench else run_all.run_all(torch.device(device["device"]))

    slug = re.sub(r"[^a-z0-9]+", "-", device["device_name"].lower()).strip("-") or "unknown"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu-check-{summary['date'][:10]}-{device['device']}-{slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return 0 if summary["tests"]["status"] in ("passed", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
