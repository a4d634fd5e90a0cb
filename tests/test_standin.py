"""The built-in stand-ins: real formats, deterministic, atomic, cached, and learnable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.datasets import ImageFolder, VOCDetection, VOCSegmentation

from imagenet_book.data import standin
from imagenet_book.data.standin import (
    MANIFEST_NAME,
    STANDIN_CLASSES,
    VOC_CLASSES,
    StandinError,
    make_imagenet_standin,
    make_voc_standin,
)
from imagenet_book.data.voc import voc_palette

SMOKE = dict(train_per_class=8, val_per_class=4, img_size=32)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ ImageNet stand-in


def test_imagenet_standin_is_an_imagenet_tree(tmp_path):
    root = make_imagenet_standin(tmp_path / "standin", **SMOKE)
    assert root == (tmp_path / "standin").resolve()
    mapping = (root / "LOC_synset_mapping.txt").read_text().splitlines()
    assert [line.split(" ", 1)[0] for line in mapping] == [w for w, _ in STANDIN_CLASSES[:10]]
    for split, n in (("train", 8), ("val", 4)):
        ds = ImageFolder(root / split)
        assert ds.classes == [line.split(" ", 1)[0] for line in mapping]
        assert all(w.startswith("n") and len(w) == 9 and w[1:].isdigit() for w in ds.classes)
        assert len(ds) == 10 * n and np.bincount(ds.targets).tolist() == [n] * 10
        image, label = ds[0]
        assert image.size == (32, 32) and image.mode == "RGB" and label == 0
    assert (root / "train" / "n99000001" / "n99000001_0.JPEG").is_file()
    assert (root / "val" / "n99000010" / "n99000010_val_3.JPEG").is_file()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["arguments"] == {"num_classes": 10, "seed": 0, **SMOKE}


def test_imagenet_standin_is_deterministic(tmp_path):
    a = _tree_bytes(make_imagenet_standin(tmp_path / "a", **SMOKE))
    b = _tree_bytes(make_imagenet_standin(tmp_path / "b", **SMOKE))
    c = _tree_bytes(make_imagenet_standin(tmp_path / "c", **SMOKE, seed=1))
    assert a == b
    assert a.keys() == c.keys()
    jpegs = [k for k in a if k.endswith(".JPEG")]
    assert all(a[k] != c[k] for k in jpegs)


def test_second_call_reuses_and_other_arguments_regenerate(tmp_path):
    root = make_imagenet_standin(tmp_path / "s", **SMOKE)
    first = root / "train" / "n99000001" / "n99000001_0.JPEG"
    stamp = first.stat().st_mtime_ns
    os.utime(first, ns=(stamp - 10**9, stamp - 10**9))  # mark it: a rewrite would reset it
    assert make_imagenet_standin(tmp_path / "s", **SMOKE) == root
    assert first.stat().st_mtime_ns == stamp - 10**9

    make_imagenet_standin(tmp_path / "s", **{**SMOKE, "train_per_class": 3})
    assert len(ImageFolder(root / "train")) == 30
    assert json.loads((root / MANIFEST_NAME).read_text())["arguments"]["train_per_class"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no partial/old folders left


def test_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "my_data"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    with pytest.raises(StandinError, match="my_data"):
        make_imagenet_standin(mine, **SMOKE)
    assert (mine / "precious.txt").read_text() == "keep me"


def test_interrupted_generation_leaves_no_complete_looking_tree(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = standin._save_jpeg

    def failing_save(pixels, path):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt("simulated interruption")
        real_save(pixels, path)

    monkeypatch.setattr(standin, "_save_jpeg", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_imagenet_standin(tmp_path / "s", **SMOKE)
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []  # the partial folder was removed too

    # A complete earlier tree survives a failed regeneration with other arguments.
    monkeypatch.setattr(standin, "_save_jpeg", real_save)
    root = make_imagenet_standin(tmp_path / "s", **SMOKE)
    before = _tree_bytes(root)
    calls["n"] = 0
    monkeypatch.setattr(standin, "_save_jpeg", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_imagenet_standin(tmp_path / "s", **{**SMOKE, "seed": 5})
    assert _tree_bytes(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


@pytest.mark.skipif(os.name != "posix", reason="stale-folder clean-up probes process ids on POSIX only")
def test_partial_folder_of_a_dead_process_is_cleaned_up(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(done.stdout)
    leftover = tmp_path / f".s.partial-{dead_pid}-deadbeef"
    (leftover / "train").mkdir(parents=True)
    make_imagenet_standin(tmp_path / "s", **SMOKE)
    assert not leftover.exists()


def test_bad_arguments_are_reported(tmp_path):
    with pytest.raises(StandinError, match="num_classes"):
        make_imagenet_standin(tmp_path / "s", num_classes=99)
    with pytest.raises(StandinError, match="img_size"):
        make_imagenet_standin(tmp_path / "s", img_size=4)


def test_a_small_cnn_learns_the_imagenet_standin(tmp_path):
    """The stand-in must be learnable: a tiny CNN beats chance (10%) by far after a few epochs."""
    root = make_imagenet_standin(tmp_path / "s", train_per_class=30, val_per_class=10, img_size=32)

    def load(split):
        ds = ImageFolder(root / split)
        X = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in ds.samples])
        return torch.from_numpy(X).permute(0, 3, 1, 2).float().div(255), torch.tensor(ds.targets)

    X_train, y_train = load("train")
    X_val, y_val = load("val")
    mean, std = X_train.mean((0, 2, 3), keepdim=True), X_train.std((0, 2, 3), keepdim=True)
    X_train, X_val = (X_train - mean) / std, (X_val - mean) / std

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and robust to a busy machine
    try:
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        )
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _epoch in range(15):
            net.train()
            for idx in torch.randperm(len(y_train), generator=gen).split(32):
                X = X_train[idx]
                flip = torch.rand(len(idx), generator=gen) < 0.5
                X = torch.where(flip[:, None, None, None], X.flip(3), X)
                loss = nn.functional.cross_entropy(net(X), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            accuracy = (net(X_val).argmax(1) == y_val).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 3 * 0.1, f"held-out accuracy {accuracy:.2f} is not clearly above chance (0.10)"


# ------------------------------------------------------------------ VOC stand-in


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc_standin(tmp_path_factory.mktemp("voc") / "voc", num_train=24, num_val=12, img_size=96)


def test_voc_standin_reads_with_torchvision_detection(voc_root):
    sizes = {}
    for image_set, n in (("train", 24), ("val", 12), ("trainval", 36)):
        ds = VOCDetection(str(voc_root), year="2007", image_set=image_set, download=False)
        assert len(ds) == n
        sizes[image_set] = ds
    names, difficult, truncated, mixed = [], [], [], 0
    for image, target in sizes["trainval"]:
        ann = target["annotation"]
        width, height = int(ann["size"]["width"]), int(ann["size"]["height"])
        assert image.size == (width, height) and max(width, height) == 96
        objects = ann["object"] if isinstance(ann["object"], list) else [ann["object"]]
        for obj in objects:
            box = {k: int(v) for k, v in obj["bndbox"].items()}
            assert 1 <= box["xmin"] <= box["xmax"] <= width
            assert 1 <= box["ymin"] <= box["ymax"] <= height
            names.append(obj["name"])
            difficult.append(int(obj["difficult"]))
            truncated.append(int(obj["truncated"]))
            assert obj["pose"] in ("Left", "Right", "Unspecified")
            if obj["difficult"] == "1":  # the stand-in's difficult objects are the small ones
                longest = max(box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]) + 1
                assert longest <= 0.15 * 96 + 1, f"a difficult object {longest} px long: {obj}"
        mixed += len({obj["difficult"] for obj in objects}) == 2
    assert set(names) <= set(VOC_CLASSES) and len(set(names)) >= 10
    assert 0 < sum(difficult) < len(difficult)
    assert mixed > 0, "no image has both difficult and normal objects: each object needs its own flag"
    assert 0 < sum(truncated) < len(truncated)


def test_voc_per_class_image_sets_match_the_annotations(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2007"
    ds = VOCDetection(str(voc_root), year="2007", image_set="val", download=False)
    ids = (voc / "ImageSets" / "Main" / "val.txt").read_text().split()
    expected = {c: {} for c in VOC_CLASSES}
    for image_id, (_, target) in zip(ids, ds):
        objs = target["annotation"]["object"]
        objs = objs if isinstance(objs, list) else [objs]
        for c in VOC_CLASSES:
            labels = [0 if obj["difficult"] == "1" else 1 for obj in objs if obj["name"] == c]
            expected[c][image_id] = max(labels) if labels else -1
    for c in VOC_CLASSES:
        rows = [line.split() for line in (voc / "ImageSets" / "Main" / f"{c}_val.txt").read_text().splitlines()]
        assert {i: int(label) for i, label in rows} == expected[c]


def test_voc_standin_reads_with_torchvision_segmentation(voc_root):
    det = VOCDetection(str(voc_root), year="2007", image_set="train", download=False)
    seg = VOCSegmentation(str(voc_root), year="2007", image_set="train", download=False)
    assert len(seg) == len(det) == 24
    palette = voc_palette()
    assert palette[:6] == [0, 0, 0, 128, 0, 0] and palette[-3:] == [224, 224, 192]
    saw_border = False
    for (image, mask), (_, target) in zip(seg, det):
        assert mask.mode == "P" and mask.size == image.size
        assert mask.getpalette()[:768] == palette
        values = np.asarray(mask)
        assert set(np.unique(values).tolist()) <= set(range(21)) | {255}
        objs = target["annotation"]["object"]
        objs = objs if isinstance(objs, list) else [objs]
        in_xml = {VOC_CLASSES.index(o["name"]) + 1 for o in objs}
        assert set(np.unique(values).tolist()) - {0, 255} <= in_xml
        saw_border |= bool((values == 255).any())
        # As in VOC, a void band separates every object from the background and from other
        # objects: no two different non-void labels are 8-neighbours.
        padded = np.pad(values, 1, constant_values=255)
        h, w = values.shape
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                shifted = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                touching = (values != 255) & (shifted != 255) & (shifted != values)
                assert not touching.any()
    assert saw_border


def test_voc_standin_is_deterministic_and_atomic(tmp_path, monkeypatch):
    a = _tree_bytes(make_voc_standin(tmp_path / "a", num_train=4, num_val=2, img_size=64))
    b = _tree_bytes(make_voc_standin(tmp_path / "b", num_train=4, num_val=2, img_size=64))
    assert a == b and "VOCdevkit/VOC2007/SegmentationClass/000006.png" in a

    def broken_png(image, path):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(standin, "_save_png", broken_png)
    with pytest.raises(OSError, match="simulated"):
        make_voc_standin(tmp_path / "c", num_train=4, num_val=2, img_size=64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
