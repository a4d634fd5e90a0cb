"""A tiny training script that tests/test_engine.py runs in subprocesses (and under torchrun).

    python tests/engine_worker.py OUT [--task classify|multilabel|segment|detect] [--bn]
                                      [--epochs E] [--ckpt DIR] [--checkpoint-every K]
                                      [--resume] [--pause-at M]

Trains a small network for the task on separable synthetic data with
:func:`imagenet_book.engine.fit` (and the task of :mod:`imagenet_book.tasks`) and, on rank 0,
writes ``OUT/final.pt`` (the weights and the EMA weights) and ``OUT/history.json``. The
multi-label and detection networks have a ``backbone`` and train in mode ``"finetune"`` (the
backbone at a tenth of the rate), so resume covers discriminative parameter groups too.
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


class TinyBackbone(nn.Module):
    """Strided convolutions with the interface of ``ResNetBackbone``: ``features(x)`` gives
    ``layer1..layer4`` maps at strides 4, 8, 16, 32 and ``channels`` their widths; no BatchNorm
    (each DDP process would normalise its half batch with its own statistics)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=4, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.channels = {"layer1": width, "layer2": width, "layer3": 2 * width, "layer4": 2 * width}
        self.out_channels, self.small_input = 2 * width, False

    def features(self, x: Tensor) -> dict[str, Tensor]:
        out, x = {}, self.stem(x)
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            out[name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)["layer4"]


def multilabel_data(n: int, seed: int, size: int = 16) -> tuple[Tensor, Tensor, Tensor]:
    """Images that hold a pattern for each class present; multi-hot targets; an all-ones mask
    (equal loss normalisers on every DDP process)."""
    patterns = torch.randn(NUM_CLASSES, 3, size, size, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, NUM_CLASSES, generator=g) < 0.4).float()
    X = torch.einsum("nc,chw->nhw", y, patterns.flatten(1).view(NUM_CLASSES, 3, -1)).view(n, 3, size, size)
    return X + 0.5 * torch.randn(n, 3, size, size, generator=g), y, torch.ones(n, NUM_CLASSES)


def segmentation_data(n: int, seed: int, size: int = 16) -> tuple[Tensor, Tensor]:
    """Images whose left or right half is bright; masks: class 1 or 2 there, 0 elsewhere, and a
    void (255) column in the middle of every image (the same void count in each)."""
    g = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (n,), generator=g)
    X = torch.randn(n, 3, size, size, generator=g) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.uint8)
    for i in range(n):
        cols = slice(0, size // 2) if side[i] == 0 else slice(size // 2, size)
        X[i, :, :, cols] += 1.0
        y[i, :, cols] = 1 + side[i]
    y[:, :, size // 2] = 255
    return X, y


class BoxDataset(torch.utils.data.Dataset):
    """One bright square per image (class 0 or 1 by its colour), the same size everywhere and
    centred on a cell of the anchor grid, so that every image (flipped or not) has the same
    number of positive anchors; items ``(uint8 image, target dict)``."""

    def __init__(self, n: int, seed: int, size: int = 32) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            x0, y0 = (1 + (size // 2) * int(v) for v in torch.randint(0, 2, (2,), generator=g))
            image = torch.randint(0, 60, (3, size, size), generator=g, dtype=torch.uint8)
            image[label, y0:y0 + 14, x0:x0 + 14] = 250
            self.items.append((image, {"boxes": torch.tensor([[x0, y0, x0 + 14.0, y0 + 14.0]]),
                                       "labels": torch.tensor([label]),
                                       "difficult": torch.tensor([False])}))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def random_flip(X: Tensor) -> Tensor:
    """Mirror a random half of the batch (draws from the global torch RNG)."""
    flip = torch.rand(len(X), device=X.device) < 0.5
    return torch.where(flip[:, None, None, None], X.flip(3), X)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=["classify", "multilabel", "segment", "detect"], default="classify")
    parser.add_argument("--bn", action="store_true", help="BatchNorm, dropout and an EMA")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ckpt", type=Path)
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--pause-at", type=int)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one thread: the same reduction order in every run
    from imagenet_book import tasks
    from imagenet_book.data.voc import collate_detection
    from imagenet_book.engine import BatchLoader, destroy_distributed, fit, init_distributed
    from imagenet_book.models import BackboneClassifier
    from imagenet_book.models.detection import Detector

    # Join torchrun's group here, as a training script does: fit() then uses it and leaves it
    # alone, and the rank is still known after fit() (a group fit() creates, it also destroys).
    world = init_distributed()  # a no-op without torchrun

    torch.manual_seed(0)
    task = None  # fit's default: classification
    if args.task == "classify":
        net = SmallCNN(bn=args.bn, dropout=0.2 if args.bn else 0.0)
        train = BatchLoader(make_data(192, seed=1), 32, shuffle=True, seed=7, drop_last=True,
                            transform_on_device=random_flip)
        val = BatchLoader(make_data(64, seed=2), 32, shuffle=False)
    elif args.task == "multilabel":
        net, task = BackboneClassifier(TinyBackbone(), NUM_CLASSES), tasks.MultiLabel(mode="finetune")
        train = BatchLoader(multilabel_data(192, seed=1), 32, seed=7, drop_last=True,
                            transform_on_device=random_flip)
        val = BatchLoader(multilabel_data(64, seed=2), 32, shuffle=False)
    elif args.task == "segment":
        from imagenet_book.models.segmentation import FCN
        net, task = FCN(TinyBackbone(), 3), tasks.Segmentation(num_classes=3)
        train = BatchLoader(segmentation_data(192, seed=1), 32, seed=7, drop_last=True)
        val = BatchLoader(segmentation_data(64, seed=2), 32, shuffle=False)
    else:
        from torchvision.transforms import v2
        flip = v2.RandomHorizontalFlip(0.5)  # boxes move with the image; draws from torch's RNG

        def collate(items):
            images, targets = [], []
            for image, target in items:
                from torchvision import tv_tensors
                boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(32, 32))
                image, boxes = flip(image, boxes)
                images.append(image)
                targets.append({**target, "boxes": boxes.as_subclass(torch.Tensor)})
            return torch.stack(images), targets

        net = Detector(TinyBackbone(), 2, img_size=32, channels=32, num_convs=1)
        task = tasks.Detection(mode="finetune", num_classes=2)
        train = BatchLoader(BoxDataset(96, seed=1), 16, seed=7, drop_last=True, collate=collate)
        val = BatchLoader(BoxDataset(32, seed=2), 16, shuffle=False, collate=collate_detection)
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
    history = fit(net, train, val, epochs=args.epochs, lr=0.05, weight_decay=5e-4, warmup_steps=3,
                  task=task, grad_clip=10.0 if args.task == "detect" else None,
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
