"""Benchmark (not a test): training images/s of chapter 11's two networks in float32 and bf16
autocast, NCHW and channels_last, on the device present: what ``reference.train_compute``
chooses for the recorded runs.

Networks and sizes are those of the recorded runs: ResNet-18 at 64 px, batch 256 (SimCLR's
pretraining, and the supervised one beside it), and EfficientNet-Lite0 at 64 px, batch 64 (the
ArcFace fine-tuning on LFW). Each step is the loop's (``engine.autocast``, forward, cross-entropy,
backward, SGD step) on random images: the arithmetic does not depend on the pixels. Every setting
is timed in the same run as the float32 NCHW baseline, in an order that rotates from round to
round; reported: median images/s and the median over rounds of the ratio to the baseline.
Only prints; exit code 0.

    python bench/cpu_precision.py [--device cpu] [--steps 3] [--repeats 3]

OpenMP: unless ``OMP_WAIT_POLICY`` is already set, it is set to ``PASSIVE`` before torch is
imported (see bench/input_pipeline.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from imagenet_book import engine, models  # noqa: E402

NETWORKS = {"resnet18 64px b256": (lambda: models.resnet18(num_classes=10), 64, 256),
            "efficientnet_lite0 64px b64": (lambda: models.efficientnet_lite0(num_classes=1000), 64, 64)}
SETTINGS = {"fp32 NCHW (baseline)": ("fp32", False), "fp32 channels_last": ("fp32", True),
            "bf16 NCHW": ("bf16", False), "bf16 channels_last": ("bf16", True)}


def _step(state: dict, device: torch.device, amp: str) -> None:
    net, opt, x, y = state["net"], state["opt"], state["x"], state["y"]
    with engine.autocast(device, amp):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _prepare(make, size: int, batch: int, channels_last: bool, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = make().to(device).train()
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    return {"net": net, "opt": torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), "x": x, "y": y}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(device: torch.device, steps: int, repeats: int) -> None:
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" (capability {torch.backends.cpu.get_cpu_capability()}, "
                                 f"{torch.get_num_threads()} threads)")
          + f"; bf16 hardware: {engine.bf16_is_fast(device)}; torch {torch.__version__}")
    for name, (make, size, batch) in NETWORKS.items():
        states = {s: _prepare(make, size, batch, cl, device) for s, (_, cl) in SETTINGS.items()}
        for s, (amp, _) in SETTINGS.items():  # warm-up, untimed
            _step(states[s], device, amp)
        speeds: dict[str, list[float]] = {s: [] for s in SETTINGS}
        ratios: dict[str, list[float]] = {s: [] for s in SETTINGS}
        order = list(SETTINGS)
        for r in range(repeats):
            got = {}
            for s in order[r % len(order):] + order[:r % len(order)]:
                amp = SETTINGS[s][0]
                _sync(device)
                t = time.perf_counter()
                for _ in range(steps):
                    _step(states[s], device, amp)
                _sync(device)
                got[s] = steps * batch / (time.perf_counter() - t)
            base = got[order[0]]
            for s in order:
                speeds[s].append(got[s])
                ratios[s].append(got[s] / base)
        print(f"\n{name}: {steps} steps x {repeats} rounds per setting")
        for s in order:
            print(f"  {s:22s} {statistics.median(speeds[s]):7.1f} img/s   x{statistics.median(ratios[s]):.2f}")


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
