"""A tiny training script that tests/test_engine.py runs in subprocesses (and under torchrun).

    python tests/engine_worker.py OUT [--bn] [--epochs E] [--ckpt DIR] [--checkpoint-every K]
                                      [--resume] [--pause-at M]

Trains a small CNN on separable synthetic images with :func:`imagenet_book.engine.fit` and, on
rank 0, writes ``OUT/final.pt`` (the weights and the EMA weights) and ``OUT/history.json``.
``--pause-at M`` prints ``step N`` after each training forward pass and stops (sleeps) in
step ``M``, so that a test can SIGKILL it at a known point. Under ``torchrun`` the same script
trains with DDP (gloo on the CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn

NUM_CLASSES = 4


def make_data(n: int, seed: int, size: int = 16) -> tuple[Tensor, Tensor]:
    """float32 ``(n, 3, size, size)`` images: a fixed pattern per class plus noise; int64 labels."""
    patterns = torch.randn(NUM_CLASSES, 3, size, size, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return patterns[y] + torch.randn(n, 3, size, size, generator=g), y


class SmallCNN(nn.Module):
    """Two 3x3 convolutions (optionally with BatchNorm), global pooling, dropout, a linear head."""

    def __init__(self, bn: bool = False, dropout: float = 0.0, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=not bn), norm(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=not bn), norm(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def random_flip(X: Tensor) -> Tensor:
    """Mirror a random half of the batch (draws from the global torch RNG)."""
    flip = torch.rand(len(X), device=X.device) < 0.5
    return torch.where(flip[:, None, None, None], X.flip(3), X)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--bn", action="store_true", help="BatchNorm, dropout and an EMA")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-at", type=int)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one thread: the same reduction order in every run
    from imagenet_book.engine import BatchLoader, destroy_distributed, fit, init_distributed

    # Join torchrun's group here, as a training script does: fit() then uses it and leaves it
    # alone, and the rank is still known after fit() (a group fit() creates, it also destroys).
    world = init_distributed()  # a no-op without torchrun

    torch.manual_seed(0)
    net = SmallCNN(bn=args.bn, dropout=0.2 if args.bn else 0.0)
    if args.pause_at:
        def report(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if module.training:
                report.count += 1
                print(f"step {report.count}", flush=True)
                if report.count == args.pause_at:
                    print("paused", flush=True)
                    time.sleep(600)
        report.count = 0
        net.register_forward_hook(report)
    train = BatchLoader(make_data(192, seed=1), 32, shuffle=True, seed=7, drop_last=True,
                        transform_on_device=random_flip)
    val = BatchLoader(make_data(64, seed=2), 32, shuffle=False)
    history = fit(net, train, val, epochs=args.epochs, lr=0.05, weight_decay=5e-4, warmup_steps=3,
                  label_smoothing=0.1 if args.bn else 0.0, ema_decay=0.9 if args.bn else None,
                  device="cpu", checkpoint_dir=args.ckpt, checkpoint_every=args.checkpoint_every,
                  resume="auto" if args.resume else False, progress=False)
    if world.rank == 0:  # one writer: two ranks writing the same files interleave them
        args.out.mkdir(parents=True, exist_ok=True)
        ema = history.ema.module.state_dict() if history.ema else None
        torch.save({"model": net.state_dict(), "ema": ema}, args.out / "final.pt")
        history.to_json(args.out / "history.json")
    destroy_distributed()


if __name__ == "__main__":
    main()
