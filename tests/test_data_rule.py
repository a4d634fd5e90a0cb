"""The book's data rule (issue 13): which VOC data and which Imagenette a profile uses.

VOC (``voc.voc_source``): PASCAL VOC when the data root has it, else the VOC-format real set
``<data root>/vocstyle-coco-pennfudan/VOCdevkit/VOC2012`` (real COCO + Penn-Fudan photos, NOT
PASCAL VOC), else the stand-in; ``smoke`` always the stand-in. Each tree is built here in its real
format (the stand-in writer's VOCdevkit, placed at the right path); one test reads the real set
when IMAGENET_BOOK_DATA points at a folder that holds it.

Imagenette under ``local`` (``imagenet.classification_source``): downloaded from a server on
127.0.0.1 this file starts, or, when the address refuses connections, the stand-in within seconds.
No test reaches anything but 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import shutil
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from imagenet_book import runtime
from imagenet_book.data import download, imagenet, voc
from imagenet_book.finetune import load_voc_tensors

REAL_SET = voc.VOCSTYLE_FOLDER


@pytest.fixture(autouse=True)
def _network_and_notices(only_localhost, monkeypatch):
    """Every test here reaches 127.0.0.1 only (tests/conftest.py) and sees the once-per-process
    notices afresh."""
    monkeypatch.setattr(voc, "_ANNOUNCED", set())


def _cfg(smoke_cfg, tmp_path, profile="local", *, train=3, val=2, **changes):
    """``smoke_cfg`` under ``profile`` (tiny per-class sizes), with a data root and cache of its own."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir(exist_ok=True)
    cache.mkdir(exist_ok=True)
    sizes = {} if profile == "full" else {"img_size": 16, "train_per_class": train, "val_per_class": val}
    prof = dataclasses.replace(runtime.PROFILES[profile], **sizes, **changes)
    return dataclasses.replace(smoke_cfg, profile=prof, data_root=data, cache_root=cache)


def _place(voc_standin: Path, root: Path, year: str) -> Path:
    """Copy the stand-in's VOCdevkit/VOC2007 (8 train + 4 val, real format) to root/VOCdevkit/VOC<year>."""
    dest = root / "VOCdevkit" / f"VOC{year}"
    shutil.copytree(voc_standin / "VOCdevkit" / "VOC2007", dest)
    return dest


def _refused_url(name: str) -> str:
    """A URL on 127.0.0.1 whose port refuses connections (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def _offline(monkeypatch, *names: str) -> None:
    """Point the download table's entries ``names`` at an address that refuses connections."""
    for name in names:
        entry = download.DATASETS[name]
        monkeypatch.setitem(download.DATASETS, name, dataclasses.replace(
            entry, urls=(_refused_url(entry.filename),)))


def _notices(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("imagenet_book:")]


# ------------------------------------------------------------------------------------ VOC


def test_local_voc_rule_official_voc_then_the_real_set_then_the_standin(smoke_cfg, voc_standin, tmp_path,
                                                                       capsys):
    cfg = _cfg(smoke_cfg, tmp_path)
    data = cfg.data_root

    # 3. Nothing in the data root: the stand-in, said once, naming the data root setting.
    standin = voc.voc_source(cfg)
    assert standin.kind == "standin" and not standin.is_real and standin.year == "2007"
    assert str(cfg.cache_root) not in standin.description and str(data) not in standin.description
    (notice,) = _notices(capsys)
    assert "stand-in" in notice and "IMAGENET_BOOK_DATA" in notice and "--data-root" in notice

    # 2. The VOC-format real set: used for 2007 AND 2012 (it has the 2012 layout only).
    _place(voc_standin, data / REAL_SET, "2012")
    real_set = voc.voc_source(cfg)  # year "2007", as chapters 07 and 08 ask
    assert real_set.kind == "vocstyle" and real_set.is_real
    assert real_set.root == data / REAL_SET and real_set.year == "2012"
    assert real_set.description.startswith("real photos in VOC format (COCO + Penn-Fudan), ")
    assert "PASCAL" not in real_set.description
    assert "6 of 8 train + all 4 val images" in real_set.description  # what pick() keeps
    (notice,) = _notices(capsys)
    assert "real photos in VOC format (COCO + Penn-Fudan)" in notice and "VOC2012" in notice
    assert "in place of VOC2007" in notice and "IMAGENET_BOOK_DATA" in notice
    assert voc.voc_source(cfg) == real_set and _notices(capsys) == []  # said once
    assert voc.voc_source(cfg, "2012") == real_set  # chapter 09's year: the same set
    (notice,) = _notices(capsys)  # said for that year too, without the layout remark
    assert "no PASCAL VOC 2012" in notice and "in place of" not in notice
    # The chapters' readers take it as it is, with the profile's counts.
    train_split, val_split = real_set.splits()
    assert (train_split, val_split) == ("train", "val") == real_set.splits("Segmentation")
    assert len(voc.VOCDetection(real_set.root, real_set.year, train_split)) == 8
    assert len(voc.VOCSegmentation(real_set.root, real_set.year, val_split)) == 4
    tensors = load_voc_tensors(real_set, "classify", "train", 32, progress=False)
    assert tensors.images.shape == (6, 3, 32, 32) and tensors.targets.shape == (6, 20)

    # 1. PASCAL VOC 2007 as well: it wins for 2007; 2012 still comes from the real set.
    _place(voc_standin, data, "2007")
    official = voc.voc_source(cfg)
    assert official.kind == "voc" and official.is_real and official.root == data
    assert official.year == "2007" and official.description.startswith("real PASCAL VOC 2007 ")
    assert _notices(capsys) == []  # no notice when PASCAL VOC is used
    assert voc.voc_source(cfg, 2012).kind == "vocstyle"


def test_smoke_uses_the_standin_even_with_both_real_trees(smoke_cfg, voc_standin, tmp_path):
    cfg = _cfg(smoke_cfg, tmp_path, "smoke")
    _place(voc_standin, cfg.data_root, "2007")
    _place(voc_standin, cfg.data_root / REAL_SET, "2012")
    for year in ("2007", "2012"):
        source = voc.voc_source(cfg, year)
        assert source.kind == "standin" and not source.is_real and source.year == "2007"
        assert source.root.is_relative_to(cfg.cache_root)


def test_a_data_root_that_is_the_real_set_is_never_called_pascal_voc(smoke_cfg, voc_standin, tmp_path):
    cfg = _cfg(smoke_cfg, tmp_path)
    folder = tmp_path / REAL_SET
    _place(voc_standin, folder, "2012")
    cfg = dataclasses.replace(cfg, data_root=folder)  # IMAGENET_BOOK_DATA=.../vocstyle-coco-pennfudan
    for year in ("2007", "2012"):
        source = voc.voc_source(cfg, year)
        assert source.kind == "vocstyle" and source.root == folder and "PASCAL" not in source.description


def test_local_profile_counts_on_the_real_set_sizes(smoke_cfg, tmp_path):
    """The local profile's 400 + 100 images of the real set's 417 + 137; a larger profile all."""
    local = _cfg(smoke_cfg, tmp_path, train=runtime.PROFILES["local"].train_per_class,
                 val=runtime.PROFILES["local"].val_per_class)
    main = tmp_path / "data" / REAL_SET / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("".join(f"t{i}\n" for i in range(417)))
    (main / "val.txt").write_text("".join(f"v{i}\n" for i in range(137)))
    source = voc.voc_source(local)
    assert (source.train_images, source.val_images) == (400, 100)
    assert len(source.pick(417, "train")) == 400 and len(source.pick(137, "val")) == 100
    assert "400 of 417 train + 100 of 137 val images" in source.description
    bigger = voc.voc_source(dataclasses.replace(local, profile=dataclasses.replace(
        local.profile, train_per_class=300, val_per_class=100)))
    assert bigger.pick(417, "train") == list(range(417)) and bigger.pick(137, "val") == list(range(137))
    assert "all 417 train + all 137 val images" in bigger.description


def test_full_uses_the_real_set_when_pascal_voc_cannot_be_had(smoke_cfg, voc_standin, tmp_path, monkeypatch,
                                                              capsys):
    cfg = _cfg(smoke_cfg, tmp_path, "full")
    _place(voc_standin, cfg.data_root / REAL_SET, "2012")
    # Downloads allowed but the hosts refuse: the real set, within seconds, said once.
    _offline(monkeypatch, "voc2007-trainval", "voc2012-trainval")
    started = time.perf_counter()
    source = voc.voc_source(cfg)
    assert time.perf_counter() - started < 5
    assert source.kind == "vocstyle" and source.train_images is None and source.year == "2012"
    assert "all 8 train + all 4 val images" in source.description
    (notice,) = _notices(capsys)
    assert "cannot be reached" in notice and "real photos in VOC format" in notice
    assert not (cfg.data_root / "VOCdevkit").exists()  # nothing half-downloaded
    # Downloads off: the real set too, rather than an error.
    no_downloads = dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, allow_download=False))
    assert voc.voc_source(no_downloads, "2012").kind == "vocstyle"


def test_real_set_from_the_data_root_when_available():
    """The real COCO + Penn-Fudan set (train 417 / val 137) through the rule, under ``local``."""
    value = os.environ.get("IMAGENET_BOOK_DATA")
    if not value or not (Path(value) / REAL_SET / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"IMAGENET_BOOK_DATA holds no {REAL_SET}/VOCdevkit/VOC2012 (the real set is not here)")
    if (Path(value) / "VOCdevkit" / "VOC2007").is_dir():
        pytest.skip("IMAGENET_BOOK_DATA holds PASCAL VOC 2007, which the rule prefers")
    cfg = runtime.start("local", quiet=True, data_root=value)
    source = voc.voc_source(cfg, "2007")
    assert source.kind == "vocstyle" and source.is_real and source.year == "2012"
    assert source.description.startswith("real photos in VOC format (COCO + Penn-Fudan), ")
    assert "400 of 417 train + 100 of 137 val images" in source.description
    train_split, val_split = source.splits()
    det = voc.VOCDetection(source.root, source.year, val_split)
    assert len(det) == 137 and len(voc.VOCMultiLabel(source.root, source.year, train_split)) == 417
    assert det.ids[0].startswith(("coco_", "pennfudan_"))
    image, target = det[0]
    assert image.dtype == torch.uint8 and len(target["boxes"]) == len(target["labels"]) > 0
    seg = voc.VOCSegmentation(source.root, source.year, val_split)
    _, mask = seg[0]
    assert len(seg) == 137 and set(mask.unique().tolist()) <= set(range(21)) | {255}
    assert len(source.pick(len(det), "val")) == 100


# ------------------------------------------------------------------------------ Imagenette


def _imagenette_archive(folder: Path, name: str = "imagenette2-160") -> Path:
    """A small .tgz in Imagenette's layout: name/{train,val}/<wnid>/*.JPEG (2 + 1 per class)."""
    release = folder / "build" / name
    for split, n in (("train", 2), ("val", 1)):
        for k, (wnid, _) in enumerate(imagenet.IMAGENETTE_CLASSES):
            (release / split / wnid).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 16), (20 * k, 10 * i, 90)).save(
                    release / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    archive = folder / "served" / f"{name}.tgz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(release, arcname=name)
    return archive


def test_local_downloads_imagenette_160_when_online(smoke_cfg, tmp_path, monkeypatch, capsys):
    archive = _imagenette_archive(tmp_path / "server")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{archive.name}"
        entry = dataclasses.replace(download.DATASETS["imagenette2-160"], urls=(url,),
                                    md5=hashlib.md5(archive.read_bytes()).hexdigest())
        monkeypatch.setitem(download.DATASETS, "imagenette2-160", entry)
        cfg = _cfg(smoke_cfg, tmp_path)
        source = imagenet.classification_source(cfg)
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
    assert source.is_real and source.name == "imagenette2-160"
    assert source.root == (cfg.data_root / "imagenette2-160").resolve()
    assert not (cfg.data_root / archive.name).exists()  # verified, extracted, archive removed
    (notice,) = _notices(capsys)
    assert "downloading imagenette2-160" in notice and "checksummed" in notice
    assert len(imagenet.load_classification(source, "train")) == 20  # 2 per class (< the profile's 3)
    assert imagenet.classification_source(cfg) == source and _notices(capsys) == []  # found, not fetched


def test_local_falls_back_to_the_standin_within_seconds_when_offline(smoke_cfg, tmp_path, monkeypatch, capsys):
    _offline(monkeypatch, "imagenette2-160", "imagewoof2-160")
    cfg = _cfg(smoke_cfg, tmp_path)
    imagenet.classification_source(dataclasses.replace(cfg, profile=runtime.PROFILES["smoke"]))  # warm-up
    capsys.readouterr()
    for dataset in ("imagenette", "imagewoof"):
        started = time.perf_counter()
        source = imagenet.classification_source(cfg, dataset)
        elapsed = time.perf_counter() - started
        assert elapsed < 5, f"the offline fallback took {elapsed:.1f} s"
        assert not source.is_real and source.name == "imagenet-standin"
        (notice,) = _notices(capsys)
        assert "cannot be reached" in notice and "stand-in" in notice and "IMAGENET_BOOK_DATA" in notice
    assert sorted(p.name for p in cfg.data_root.iterdir()) == []  # no archive, no .part


def test_the_probe_fails_fast_for_a_host_that_never_connects(monkeypatch):
    """A refused port fails at once; the probe's timeout bounds a silent one."""
    started = time.perf_counter()
    why = download.reachable(_refused_url("x.tgz"), timeout=0.5)
    assert why is not None and "127.0.0.1" in why and time.perf_counter() - started < 2
