"""Benchmark (not a test): training images/s of chapter 11's two networks in float32 and bf16
autocast, NCHW and channels_last, on the device present: what ``reference.train_compute``
chooses for the recorded runs.

Networks and sizes are those of the recorded runs: ResNet-18 at 64 px, batch 256 (SimCLR's
pretraining, and the supervised one beside it), and EfficientNet-Lite0 at 64 px, batch 64 (the
ArcFace fine-tuning on LFW). The measurement is ``imagenet_book.speed.training_speed``, the one
chapter 10 runs: steps of the book's one loop (``engine.fit``) fed by the fast input pipeline,
on the data the local profile's rule gives (real Imagenette when the data root has it, else the
built-in stand-in; never a download). Every setting is timed in the same run as the float32 NCHW
baseline, in an order that rotates from round to round; reported: median images/s and the median
over rounds of the ratio to the baseline. Only prints; exit code 0.

    IMAGENET_BOOK_DATA=... python bench/cpu_precision.py [--device cpu] [--steps 3] [--repeats 3]

OpenMP: unless ``OMP_WAIT_POLICY`` is already set, it is set to ``PASSIVE`` before torch is
imported (see bench/input_pipeline.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402

import torch  # noqa: E402

import imagenet_book  # noqa: E402
from imagenet_book import engine, models, speed  # noqa: E402

# name: (build(num_classes) or None for pretrain.build_model, img_size, batch_size)
NETWORKS = {"resnet18": (None, 64, 256),
            "efficientnet_lite0": (lambda n: models.efficientnet_lite0(num_classes=n), 64, 64)}
# name: (amp, channels_last); the first is the baseline
SETTINGS = {"fp32 NCHW (baseline)": ("fp32", False), "fp32 channels_last": ("fp32", True),
            "bf16 NCHW": ("bf16", False), "bf16 channels_last": ("bf16", True)}


def run(device: torch.device, steps: int, repeats: int) -> None:
    cfg = dataclasses.replace(imagenet_book.start("local", quiet=True), device=device)
    print(f"device {device}; bf16 hardware: {engine.bf16_is_fast(device)}; torch {torch.__version__}; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    for arch, (build, img_size, batch) in NETWORKS.items():
        settings = [speed.SpeedSetting(name, loader="fast", amp=amp, channels_last=cl, batch_size=batch)
                    for name, (amp, cl) in SETTINGS.items()]
        table = speed.training_speed(cfg, arch=arch, build=build, img_size=img_size, batch_size=batch,
                                     steps=steps, repeats=repeats, settings=settings)
        # The data's name, not where it lies (logs are committed).
        print("\n" + speed.format_speed(table).replace(str(cfg.data_root), "the data root"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    run(torch.device(args.device), args.steps, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
