"""Imagenette / Imagewoof / Tiny-ImageNet / ImageNet-1k readers and the profile data rule.

Every test builds the folders it reads (tiny JPEGs in the datasets' real layouts) under tmp_path,
except the last one, which reads the real Imagenette when IMAGENET_BOOK_DATA points at a copy.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import Imagenette

import imagenet_book
from imagenet_book import runtime
from imagenet_book.data.imagenet import (
    IMAGENETTE_CLASSES,
    IMAGEWOOF_CLASSES,
    DatasetLayoutError,
    DatasetNotFoundError,
    ImageNetSubset,
    classification_source,
    find_imagenette,
    imagenet_class_subset,
    imagenette,
    load_classification,
    read_synset_mapping,
    tiny_imagenet,
)

# Official imagenette2 per-class image counts (fast.ai release), in wnid order.
IMAGENETTE2_TRAIN = [963, 955, 993, 858, 941, 956, 961, 931, 951, 960]
IMAGENETTE2_VAL = [387, 395, 357, 386, 409, 394, 389, 419, 399, 390]


def _jpeg(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value % 256, 40, 200)).save(path, format="JPEG")


def _fake_release(data_root: Path, folder: str, wnids, train: int = 5, val: int = 2) -> Path:
    """A fast.ai-style release folder: <folder>/{train,val}/<wnid>/*.JPEG with tiny images."""
    for split, n in (("train", train), ("val", val)):
        for k, w in enumerate(wnids):
            for i in range(n):
                name = f"{w}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{k * 100 + i:08d}.JPEG"
                _jpeg(data_root / folder / split / w / name, k * 20 + i)
    return data_root / folder


IMAGENETTE_WNIDS = [w for w, _ in IMAGENETTE_CLASSES]


# ------------------------------------------------------------------ class tables and finder


def test_class_tables_are_sorted_by_wnid():
    for table in (IMAGENETTE_CLASSES, IMAGEWOOF_CLASSES):
        wnids = [w for w, _ in table]
        assert len(table) == 10 and wnids == sorted(wnids) and len(set(wnids)) == 10
        assert all(w.startswith("n") and len(w) == 9 for w in wnids)
    assert IMAGENETTE_CLASSES[0] == ("n01440764", "tench")
    assert IMAGEWOOF_CLASSES[-1] == ("n02115641", "dingo")
    # The same wnids as torchvision's Imagenette (its class table ships offline).
    assert sorted(Imagenette._WNID_TO_CLASS) == IMAGENETTE_WNIDS


def test_find_imagenette_prefers_the_largest_images(tmp_path):
    assert find_imagenette(tmp_path) is None
    _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS)
    assert find_imagenette(tmp_path) == (tmp_path / "imagenette2-160").resolve()
    _fake_release(tmp_path, "imagenette2-320", IMAGENETTE_WNIDS)
    assert find_imagenette(tmp_path) == (tmp_path / "imagenette2-320").resolve()
    # The data root may also be the release folder itself.
    assert find_imagenette(tmp_path / "imagenette2-160") == (tmp_path / "imagenette2-160").resolve()
    assert find_imagenette(tmp_path, "imagewoof") is None
    _fake_release(tmp_path, "imagewoof2-160", [w for w, _ in IMAGEWOOF_CLASSES])
    assert find_imagenette(tmp_path, "imagewoof").name == "imagewoof2-160"
    with pytest.raises(ValueError, match="variant"):
        find_imagenette(tmp_path, "imagenet")


def test_find_imagenette_reports_a_broken_copy(tmp_path):
    _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS[:7])
    with pytest.raises(DatasetLayoutError, match="imagenette2-160.*missing"):
        find_imagenette(tmp_path)
    (tmp_path / "imagenette2").mkdir()
    with pytest.raises(DatasetLayoutError, match="no train/ folder"):
        find_imagenette(tmp_path)


def test_imagenette_reader_matches_torchvision(tmp_path):
    _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS, train=5, val=2)
    train = imagenette(tmp_path, "train")
    val = imagenette(tmp_path, "val", per_class=1)
    assert train.wnids == IMAGENETTE_WNIDS and train.class_names[0] == "tench"
    assert len(train) == 50 and len(val) == 10
    assert np.bincount(val.targets).tolist() == [1] * 10
    reference = Imagenette(str(tmp_path), split="train", size="160px", download=False)
    assert reference.wnids == train.wnids
    assert len(reference) == len(train) and reference[7][1] == train[7][1]
    image, label = train[7]
    assert image.mode == "RGB" and label == 1
    with pytest.raises(DatasetNotFoundError, match="imagenette2-160"):
        imagenette(tmp_path / "nowhere", "train")


def test_per_class_subset_is_deterministic_and_nested(tmp_path):
    _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS, train=8, val=1)
    split = tmp_path / "imagenette2-160" / "train"
    a = ImageNetSubset(split, per_class=3, seed=0).samples
    assert a == ImageNetSubset(split, per_class=3, seed=0).samples
    assert a != ImageNetSubset(split, per_class=3, seed=1).samples
    assert set(a) <= set(ImageNetSubset(split, per_class=5, seed=0).samples)
    assert np.bincount([t for _, t in a]).tolist() == [3] * 10
    first = ImageNetSubset(split, per_class=2, pick="first").samples
    assert [Path(p).name for p, _ in first[:2]] == ["n01440764_0.JPEG", "n01440764_1.JPEG"]
    assert len(ImageNetSubset(split, per_class=100)) == 80  # a class with fewer keeps them all
    with pytest.raises(ValueError, match="per_class"):
        ImageNetSubset(split, per_class=0)
    with pytest.raises(DatasetNotFoundError, match="nope"):
        ImageNetSubset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="no class folders"):
        ImageNetSubset(tmp_path / "empty")


# ------------------------------------------------------------------ Tiny-ImageNet, ImageNet-1k


def _fake_tiny_imagenet(root: Path, wnids, train: int = 4, val: int = 3) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted
    words = {"n00001740": "entity", **{w: f"thing {k}, synonym" for k, w in enumerate(wnids)}}
    (base / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in words.items()))
    lines = []
    for k, w in enumerate(wnids):
        for i in range(train):
            _jpeg(base / "train" / w / "images" / f"{w}_{i}.JPEG", k * 10 + i)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in range(val):
            name = f"val_{k * val + i}.JPEG"
            _jpeg(base / "val" / "images" / name, k)
            lines.append(f"{name}\t{w}\t0\t0\t7\t7\n")
    (base / "val" / "val_annotations.txt").write_text("".join(lines))
    return base


def test_tiny_imagenet_reader(tmp_path):
    wnids = ["n01443537", "n01629819", "n01641577"]
    base = _fake_tiny_imagenet(tmp_path, wnids)
    train = tiny_imagenet(tmp_path, "train")  # the parent folder works too
    assert train.wnids == sorted(wnids) and train.class_names == ["thing 0", "thing 1", "thing 2"]
    assert len(train) == 12 and np.bincount(train.targets).tolist() == [4, 4, 4]
    val = tiny_imagenet(base, "val")
    assert len(val) == 9 and np.bincount(val.targets).tolist() == [3, 3, 3]
    image, label = val[0]
    assert image.size == (8, 8) and label == 0
    sub = tiny_imagenet(base, "train", per_class=2, seed=3)
    assert sub.samples == tiny_imagenet(base, "train", per_class=2, seed=3).samples
    assert np.bincount(sub.targets).tolist() == [2, 2, 2]
    with pytest.raises(DatasetNotFoundError, match="wnids.txt"):
        tiny_imagenet(tmp_path / "missing")
    with pytest.raises(ValueError, match="split"):
        tiny_imagenet(base, "test")
    with open(base / "val" / "val_annotations.txt", "a") as f:
        f.write("val_99.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetLayoutError, match="n09999999"):
        tiny_imagenet(base, "val")


def test_imagenet_class_subset_is_a_seeded_file_list(tmp_path):
    wnids = [f"n0{1000000 + k * 7:07d}" for k in range(6)]
    for k, w in enumerate(wnids):
        for i in range(5):
            _jpeg(tmp_path / "train" / w / f"{w}_{i}.JPEG", k)
    (tmp_path / "LOC_synset_mapping.txt").write_text("".join(f"{w} class {k}, alias\n" for k, w in enumerate(wnids)))
    sub = imagenet_class_subset(tmp_path, num_classes=3, per_class=2, seed=0)
    again = imagenet_class_subset(tmp_path, num_classes=3, per_class=2, seed=0)
    assert sub.samples == again.samples and len(sub) == 6
    assert sub.wnids == sorted(sub.wnids) and set(sub.wnids) <= set(wnids)
    assert sub.class_names == [f"class {wnids.index(w)}" for w in sub.wnids]
    assert all(p.is_file() and p.parent.name == sub.wnids[t] for p, t in sub.samples)
    other = [imagenet_class_subset(tmp_path, num_classes=3, per_class=2, seed=s).wnids for s in range(1, 6)]
    assert any(o != sub.wnids for o in other)
    fixed = imagenet_class_subset(tmp_path, num_classes=0, per_class=None, wnids=[wnids[4], wnids[1]])
    assert fixed.wnids == [wnids[1], wnids[4]] and len(fixed) == 10
    assert read_synset_mapping(tmp_path / "LOC_synset_mapping.txt")[0] == (wnids[0], "class 0")
    with pytest.raises(DatasetLayoutError, match="6 class folders"):
        imagenet_class_subset(tmp_path, num_classes=7, per_class=1)
    with pytest.raises(DatasetNotFoundError, match="val"):
        imagenet_class_subset(tmp_path, num_classes=2, per_class=1, split="val")


def test_an_empty_class_folder_is_named(tmp_path):
    """torchvision's ImageFolder raises FileNotFoundError for the whole split; we name the folder."""
    release = _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS, train=2, val=1)
    empty = release / "train" / IMAGENETTE_WNIDS[3]
    for f in empty.iterdir():
        f.unlink()
    (empty / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetLayoutError, match=IMAGENETTE_WNIDS[3]) as info:
        ImageNetSubset(release / "train")
    assert str(empty) in str(info.value)
    with pytest.raises(DatasetLayoutError, match=IMAGENETTE_WNIDS[3]):
        imagenette(tmp_path, "train")
    with pytest.raises(DatasetLayoutError, match=IMAGENETTE_WNIDS[3]):
        imagenet_class_subset(release, num_classes=0, per_class=None, wnids=[IMAGENETTE_WNIDS[3]])


# ------------------------------------------------------------------ the profile rule


@pytest.fixture
def roots(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    cache.mkdir()
    monkeypatch.setenv(runtime.ENV_DATA, str(data))
    monkeypatch.setenv(runtime.ENV_CACHE, str(cache))
    monkeypatch.delenv(runtime.ENV_DEVICE, raising=False)
    # Keep the local profile's stand-in tiny: the rule is under test here, not the sizes.
    small = dataclasses.replace(runtime.PROFILES["local"], img_size=16, train_per_class=3, val_per_class=2)
    monkeypatch.setitem(runtime.PROFILES, "local", small)
    return data, cache


def _start(monkeypatch, profile):
    monkeypatch.setenv(runtime.ENV_PROFILE, profile)
    return imagenet_book.start(quiet=True)


def test_smoke_always_uses_the_standin(roots, monkeypatch):
    data, cache = roots
    _fake_release(data, "imagenette2-160", IMAGENETTE_WNIDS)
    cfg = _start(monkeypatch, "smoke")
    src = classification_source(cfg)
    assert not src.is_real and src.name == "imagenet-standin"
    assert src.root.is_relative_to(cache.resolve())
    assert src.wnids[0] == "n99000001" and src.class_names[:3] == ("circle", "square", "triangle")
    assert str(cache) not in src.description and "32 px" in src.description
    assert src.description == classification_source(cfg).description  # reused, same words
    train = load_classification(src, "train")
    val = load_classification(src, "val")
    p = cfg.profile
    assert len(train) == 10 * p.train_per_class and len(val) == 10 * p.val_per_class
    assert train.class_names == list(src.class_names) and train[0][0].size == (p.img_size, p.img_size)


def _offline(monkeypatch):
    """The local profile downloads a missing Imagenette/Imagewoof when online: point both 160 px
    releases at a port on 127.0.0.1 that refuses connections, so the test never downloads."""
    import socket

    from imagenet_book.data import download

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("imagenette2-160", "imagewoof2-160"):
        entry = download.DATASETS[name]
        monkeypatch.setitem(download.DATASETS, name, dataclasses.replace(
            entry, urls=(f"http://127.0.0.1:{port}/{entry.filename}",)))


def test_local_uses_real_data_when_present_else_the_standin(roots, monkeypatch, capsys):
    data, _ = roots
    _offline(monkeypatch)
    cfg = _start(monkeypatch, "local")
    fallback = classification_source(cfg)
    assert not fallback.is_real and "16 px" in fallback.description
    notice = capsys.readouterr().out
    assert notice.count("\n") == 1 and "stand-in" in notice and "IMAGENET_BOOK_DATA" in notice
    assert len(load_classification(fallback, "train")) == 30

    _fake_release(data, "imagenette2-160", IMAGENETTE_WNIDS, train=5, val=3)
    real = classification_source(cfg)
    assert capsys.readouterr().out == "", "no notice when the real data is used"
    assert real.is_real and real.name == "imagenette2-160"
    assert real.description.startswith("real Imagenette (imagenette2-160, from ")
    assert real.wnids == tuple(IMAGENETTE_WNIDS) and real.class_names[0] == "tench"
    train = load_classification(real, "train")  # the local profile keeps 3 per class
    assert len(train) == 30 and train.wnids == IMAGENETTE_WNIDS
    assert len(load_classification(dataclasses.replace(real, train_per_class=None), "train")) == 50
    assert len(load_classification(real, "val", per_class=1)) == 10
    assert not classification_source(cfg, "imagewoof").is_real
    assert not classification_source(cfg, "standin").is_real


def test_full_without_downloads_names_the_missing_folder(roots, monkeypatch):
    data, _ = roots
    cfg = _start(monkeypatch, "full")
    cfg = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, allow_download=False))
    with pytest.raises(DatasetNotFoundError) as info:
        classification_source(cfg)
    assert str(data.resolve()) in str(info.value) and "imagenette2-160" in str(info.value)
    _fake_release(data, "imagenette2", IMAGENETTE_WNIDS, train=2, val=1)
    src = classification_source(cfg)
    assert src.is_real and src.name == "imagenette2" and src.train_per_class is None
    assert len(load_classification(src, "train")) == 20
    with pytest.raises(ValueError, match="dataset"):
        classification_source(cfg, "cifar10")


def test_full_downloads_the_missing_release_over_http(roots, monkeypatch, tmp_path):
    """The full profile fetches imagenette2-320 (here from a server on 127.0.0.1) and uses it."""
    import functools
    import hashlib
    import http.server
    import tarfile
    import threading

    from imagenet_book.data import download

    data, _ = roots
    served = tmp_path / "served"
    release = _fake_release(tmp_path / "build", "imagenette2-320", IMAGENETTE_WNIDS, train=2, val=1)
    served.mkdir()
    with tarfile.open(served / "imagenette2-320.tgz", "w:gz") as tar:
        tar.add(release, arcname="imagenette2-320")
    md5 = hashlib.md5((served / "imagenette2-320.tgz").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/imagenette2-320.tgz"
        entry = dataclasses.replace(download.DATASETS["imagenette2-320"], urls=(url,), md5=md5,
                                    sha256=None, size=None, head_md5=None)
        monkeypatch.setitem(download.DATASETS, "imagenette2-320", entry)
        cfg = _start(monkeypatch, "full")
        src = classification_source(cfg)
    finally:
        server.shutdown()
        thread.join()
    assert src.is_real and src.name == "imagenette2-320"
    assert (data / "imagenette2-320" / "val").is_dir()
    assert len(load_classification(src, "val")) == 10


# ------------------------------------------------------------------ the real Imagenette


def _real_imagenette_root() -> Path | None:
    value = os.environ.get("IMAGENET_BOOK_DATA")
    if not value or not Path(value).is_dir():
        return None
    return find_imagenette(value)


def test_real_imagenette_when_available():
    folder = _real_imagenette_root()
    if folder is None:
        pytest.skip("real Imagenette not found: set IMAGENET_BOOK_DATA to a folder holding imagenette2*/")
    train = ImageNetSubset(folder / "train", class_names=dict(IMAGENETTE_CLASSES))
    val = ImageNetSubset(folder / "val", class_names=dict(IMAGENETTE_CLASSES))
    assert train.wnids == val.wnids == IMAGENETTE_WNIDS and train.num_classes == 10
    assert len(train) == 9469 and len(val) == 3925
    assert np.bincount(train.targets).tolist() == IMAGENETTE2_TRAIN
    assert np.bincount(val.targets).tolist() == IMAGENETTE2_VAL
    sub = imagenette(folder.parent, "val", per_class=50, seed=0)
    assert np.bincount(sub.targets).tolist() == [50] * 10
    image, label = sub[0]
    assert image.mode == "RGB" and label == 0


def test_a_truncated_jpeg_names_the_file(tmp_path):
    release = _fake_release(tmp_path, "imagenette2-160", IMAGENETTE_WNIDS, train=1, val=1)
    bad = sorted((release / "train" / IMAGENETTE_WNIDS[0]).glob("*.JPEG"))[0]
    bad.write_bytes(bad.read_bytes()[:40])
    train = ImageNetSubset(release / "train")
    with pytest.raises(DatasetLayoutError, match=bad.name) as info:
        train[0]
    assert "corrupt or truncated" in str(info.value)
    assert train[1][0].mode == "RGB", "the other files still load"
