"""Benchmark (not a test): training images/s of ResNet-18 as the speed switches are turned on.

The measurement is ``imagenet_book.speed.training_speed`` (the function chapter 10 runs), on the
data the local profile's rule gives (real Imagenette when the data root has it, else the built-in
stand-in; never a download), on the device present. Rows:

    baseline (textbook DataLoader, fp32, NCHW, eager) | + fast input pipeline
    | fast + channels_last | fast + AMP (bf16, or fp16 on GPUs without bf16) | fast + 2x batch
    | fast + torch.compile | fast + all of them

Every setting is timed in the same run as the baseline, in rotating order; reported: median
images/s, the median over rounds of the ratio to the baseline, and the untimed warm-up
(for ``torch.compile``: the compilation). A setting that cannot run here (``torch.compile``
without a C++ compiler or Triton) is reported as "not run: why". Only prints; exit code 0.

    IMAGENET_BOOK_DATA=... python bench/training_speed.py [--device cuda] [--img-size 224]
        [--batch-size 128] [--steps 5] [--repeats 3] [--json out.json]

OpenMP: unless ``OMP_WAIT_POLICY`` is already set, it is set to ``PASSIVE`` before torch is
imported (see bench/input_pipeline.py: spinning OpenMP threads make timings on a shared CPU
erratic).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402

import imagenet_book  # noqa: E402
from imagenet_book import speed  # noqa: E402

# (img_size, batch_size, steps, repeats) per device type: a few minutes on a 2-core CPU (most of
# it torch.compile's compilation), under a minute of timing on a GPU.
DEFAULTS = {"cpu": (64, 32, 3, 2), "cuda": (224, 128, 10, 3)}


def run(device: str | torch.device = "cpu", img_size: int | None = None, batch_size: int | None = None,
        steps: int | None = None, repeats: int | None = None) -> dict:
    """Measure every setting on ``device``; return a JSON-ready dict."""
    device = torch.device(device)
    d_size, d_batch, d_steps, d_repeats = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    # The local profile's data rule: real Imagenette when the data root has it, else the
    # stand-in; never a download (a benchmark machine may be offline).
    cfg = dataclasses.replace(imagenet_book.start("local", quiet=True), device=device)
    batch_size = batch_size or d_batch
    table = speed.training_speed(cfg, img_size=img_size or d_size, batch_size=batch_size,
                                 steps=steps or d_steps, repeats=repeats or d_repeats,
                                 settings=speed.speed_settings(batch_size, device, combined=True))
    result = table.to_dict()
    # The data's name, not where it lies: results are committed and must not show this machine's
    # folders (real data is described as "real Imagenette (imagenette2-160, from <data root>)").
    result["data"] = result["data"].replace(str(Path(cfg.data_root)), "the data root")
    result.update(benchmark="training speed: ResNet-18 images/s as each switch is turned on",
                  torch=torch.__version__, torchvision=torchvision.__version__,
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    return result


def run_default(device: torch.device) -> dict:
    """``make bench`` / ``make gpu-check``: the device's default sizes."""
    return run(device)


def format_result(result: dict) -> str:
    lines = [f"torch {result['torch']}, torchvision {result['torchvision']}; "
             f"OMP_WAIT_POLICY={result['omp_wait_policy']}"]
    rows = [speed.SpeedRow(setting=speed.SpeedSetting(**r["setting"]),
                           **{k: v for k, v in r.items() if k != "setting"}) for r in result["rows"]]
    fields = {f.name for f in dataclasses.fields(speed.SpeedTable)} - {"rows"}
    table = speed.SpeedTable(rows=rows, **{k: result[k] for k in fields})
    lines.append(speed.format_speed(table))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img-size", type=int, help="default: 64 on CPU, 224 on CUDA")
    parser.add_argument("--batch-size", type=int, help="baseline batch; default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--steps", type=int, help="timed steps per round; default: 3 CPU, 10 CUDA")
    parser.add_argument("--repeats", type=int, help="rounds; default: 2 CPU, 3 CUDA")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    result = run(args.device, args.img_size, args.batch_size, args.steps, args.repeats)
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
