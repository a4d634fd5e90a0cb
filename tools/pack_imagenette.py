"""Pack Imagenette small enough to travel to a GPU machine that cannot download it.

A device machine receives a copy of the working tree (64 MiB at most) and reaches no network.
imagenette2-160's JPEGs are 103 MB. The fast loader (``imagenet_book.data.fast``) only ever uses
each image's centre square at its stored side (160 px for 128 px crops), so this tool writes
exactly those squares, re-encoded as WebP, in Imagenette's layout::

    python tools/pack_imagenette.py ../shared/data/imagenette2-160 .gpudata --side 160 --quality 70

gives ``.gpudata/imagenette2-160/{train,val}/<wnid>/<name>.webp`` (about 51 MB at quality 70) and
``.gpudata/PACKED.json`` (what was done, and the mean PSNR of the re-encoding against the squares
the fast loader decodes from the JPEGs). The book's data rule reads the copy like the release
(``IMAGENET_BOOK_DATA=.gpudata``); the ``fast-recipe`` result counts its ``.webp`` files, so a run
on the copy says so. The copy is lossy: it is for timing and ablations on a machine that has no
other way to get the data, never a replacement for the release. Keep it out of git (the repository
must not hold the dataset's images).

``--zip`` also stores the folder in one uncompressed ``imagenette2-160.zip`` beside it (a
transfer of 13,394 small files costs a disk block each; one archive does not): carry only the
archive and ``PACKED.json``, and extract it on the other machine (``bench/fast_recipe_device.sh``
does).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from imagenet_book.data.fast import _decode_image  # noqa: E402  (the fast loader's own decoding)


def pack_one(src: Path, dst: Path, side: int, quality: int) -> tuple[int, float]:
    square = _decode_image(str(src), side).transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(square).save(buffer, "WEBP", quality=quality, method=6)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(buffer.getvalue())
    back = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(np.float64)
    mse = float(((back - square) ** 2).mean())
    return len(buffer.getvalue()), 10 * math.log10(255 ** 2 / max(mse, 1e-12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="an imagenette2-160 (or -320) folder with train/ and val/")
    parser.add_argument("out", type=Path, help="folder to write imagenette2-160/ and PACKED.json into")
    parser.add_argument("--side", type=int, default=160, help="stored square side (the fast loader's)")
    parser.add_argument("--quality", type=int, default=70, help="WebP quality (0-100)")
    parser.add_argument("--zip", action="store_true", help="also write imagenette2-160.zip (stored, one file)")
    args = parser.parse_args(argv)
    files = sorted(p for split in ("train", "val") for p in (args.source / split).glob("*/*")
                   if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if not files:
        parser.error(f"no train/<wnid>/*.JPEG or val/<wnid>/*.JPEG under {args.source}: give an "
                     "imagenette2-160 folder (e.g. ../shared/data/imagenette2-160).")
    target = args.out / "imagenette2-160"
    jobs = [(f, target / f.relative_to(args.source).with_suffix(".webp")) for f in files]
    with ThreadPoolExecutor() as pool:
        done = list(pool.map(lambda job: pack_one(*job, args.side, args.quality), jobs))
    sizes, psnr = zip(*done)
    summary = {"source": args.source.name, "images": len(files), "side": args.side, "format": "WEBP",
               "quality": args.quality, "bytes": int(sum(sizes)), "mean_psnr_db": round(float(np.mean(psnr)), 2)}
    (args.out / "PACKED.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if args.zip:
        with zipfile.ZipFile(args.out / "imagenette2-160.zip", "w", zipfile.ZIP_STORED) as archive:
            for _, dst in jobs:
                archive.write(dst, dst.relative_to(args.out).as_posix())
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
