"""Small LFW trees in LFW's real formats, written by the tests (tests/test_lfw.py, tests/test_faces.py).

Photos are PIL JPEGs (``<images>/<Person>/<Person>_NNNN.jpg``); each person has a colour of
their own, so photos of one person look alike. The protocol files follow LFW's formats
(``pairs.txt``: ``folds<TAB>N`` then N same + N different rows per fold; ``people.txt``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

#: Two identity-disjoint folds: people and their numbers of photos.
PEOPLE = [{"Ann_Alpha": 3, "Bob_Beta": 2, "Cid_Gamma": 1},
          {"Dee_Delta": 2, "Eve_Epsilon": 3, "Fay_Zeta": 1}]
#: Their pairs: per fold 2 same-person rows and 2 different-person rows.
PAIRS = [(["Ann_Alpha\t1\t2", "Bob_Beta\t1\t2"], ["Ann_Alpha\t3\tCid_Gamma\t1", "Bob_Beta\t2\tCid_Gamma\t1"]),
         (["Dee_Delta\t1\t2", "Eve_Epsilon\t2\t3"], ["Dee_Delta\t1\tFay_Zeta\t1", "Eve_Epsilon\t1\tFay_Zeta\t1"])]


def write_photos(images_dir: Path, people: dict[str, int], size: int = 40, seed: int = 0) -> None:
    """``people[name]`` JPEGs per person: their own colour plus noise."""
    for k, (name, count) in enumerate(sorted(people.items())):
        rng = np.random.default_rng([seed, k])
        colour = rng.integers(40, 215, 3)
        (images_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            pixels = np.clip(colour + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(images_dir / name / f"{name}_{i:04d}.jpg", quality=90)


def pairs_text(pairs=PAIRS) -> str:
    n = len(pairs[0][0])
    return "\n".join([f"{len(pairs)}\t{n}"] + [row for same, diff in pairs for row in same + diff]) + "\n"


def people_text(people=PEOPLE) -> str:
    lines = [str(len(people))]
    for fold in people:
        lines += [str(len(fold))] + [f"{name}\t{count}" for name, count in fold.items()]
    return "\n".join(lines) + "\n"


def write_full(data_root: Path) -> Path:
    """The whole-LFW layout (torchvision's): ``data_root/lfw-py/{lfw-deepfunneled/, pairs.txt,
    people.txt}``. Returns the ``lfw-py`` folder."""
    folder = data_root / "lfw-py"
    write_photos(folder / "lfw-deepfunneled", {k: v for fold in PEOPLE for k, v in fold.items()})
    (folder / "pairs.txt").write_text(pairs_text())
    (folder / "people.txt").write_text(people_text())
    return folder


def write_subset(data_root: Path) -> Path:
    """The shared subset's layout: ``data_root/lfw-deepfunneled-5folds/{lfw/, pairs_5folds.txt}``."""
    folder = data_root / "lfw-deepfunneled-5folds"
    write_photos(folder / "lfw", {k: v for fold in PEOPLE for k, v in fold.items()})
    (folder / "pairs_5folds.txt").write_text(pairs_text())
    return folder
