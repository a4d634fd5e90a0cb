"""The fast input pipeline: uint8 cache on disk, batched augmentation as tensor ops.

Every test writes the tiny trees it reads under tmp_path (or uses the smoke stand-in), so the file
runs in seconds on 2 CPU cores and never needs real data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

import imagenet_book
from imagenet_book import runtime
from imagenet_book.data import fast
from imagenet_book.data.fast import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CacheBuildError,
    FastLoader,
    center_crop_boxes,
    decode_cache,
    fast_loader,
    random_resized_crop_boxes,
    resized_crop,
)

# ------------------------------------------------------------------ resampling and boxes


def _random_images(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("out_size", [16, 29, 64])
def test_resized_crop_matches_torchvision_bilinear_without_antialias(out_size):
    images = _random_images(6, 37, 53)  # not square, odd sizes
    boxes = random_resized_crop_boxes(6, 37, 53, generator=torch.Generator().manual_seed(1))
    boxes[0] = torch.tensor([0, 0, 37, 53])  # the whole image
    boxes[1] = torch.tensor([5, 50, 9, 3])   # a thin box at the right edge: strong upscaling
    ours = resized_crop(images, boxes, out_size, chunk=4)
    assert ours.shape == (6, 3, out_size, out_size) and ours.dtype == torch.float32
    for img, (top, left, h, w), mine in zip(images, boxes.tolist(), ours):
        exact = TF.resized_crop(img.float(), top, left, h, w, [out_size, out_size], antialias=False)
        torch.testing.assert_close(mine, exact, atol=1e-3, rtol=0)
        rounded = TF.resized_crop(img, top, left, h, w, [out_size, out_size], antialias=False)
        assert (mine - rounded.float()).abs().max() <= 1.0  # torchvision rounds to uint8


def test_index_flip_and_normalisation():
    images = _random_images(5, 24, 24, seed=2)
    index = torch.tensor([4, 0, 4, 2])
    boxes = torch.tensor([[0, 0, 24, 24], [3, 1, 10, 20], [2, 5, 12, 12], [0, 4, 20, 16]])
    raw = resized_crop(images, boxes, 12, index=index)
    torch.testing.assert_close(raw, resized_crop(images[index], boxes, 12))
    flip = torch.tensor([True, False, True, False])
    flipped = resized_crop(images, boxes, 12, index=index, flip=flip)
    torch.testing.assert_close(flipped[flip], raw[flip].flip(-1))
    torch.testing.assert_close(flipped[~flip], raw[~flip])
    normed = resized_crop(images, boxes, 12, index=index, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(normed, (raw / 255 - mean) / std, atol=1e-5, rtol=1e-5)


def test_crop_boxes_follow_torchvision_get_params():
    g = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(20000, 60, 80, generator=g)
    top, left, h, w = boxes.T
    assert boxes.dtype == torch.int64
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 80).all()
    area = (h * w).double() / (60 * 80)
    assert area.min() >= 0.06 and area.max() <= 1.0
    assert (w / h).min() > 0.7 and (w / h).max() < 1.45  # ratio (3/4, 4/3) up to rounding
    # Same distribution as torchvision's sampler (not the same random numbers).
    torch.manual_seed(0)
    theirs = torch.tensor([RandomResizedCrop.get_params(torch.empty(1, 60, 80), [0.08, 1.0], [3 / 4, 4 / 3])
                           for _ in range(4000)]).double()
    assert torch.allclose(boxes.double().mean(0), theirs.mean(0), atol=1.5)
    assert torch.allclose(boxes.double().std(0), theirs.std(0), atol=1.5)
    # Impossible scales: every try fails, and both fall back to the same centre crop.
    for height, width in ((50, 50), (30, 90), (90, 30)):
        ours = random_resized_crop_boxes(3, height, width, scale=(2.0, 3.0))
        fallback = RandomResizedCrop.get_params(torch.empty(1, height, width), [2.0, 3.0], [3 / 4, 4 / 3])
        assert ours.tolist() == [list(fallback)] * 3


def test_center_crop_boxes():
    assert center_crop_boxes(2, 160, 0.875).tolist() == [[10, 10, 140, 140]] * 2
    assert center_crop_boxes(1, 32, 1.0).tolist() == [[0, 0, 32, 32]]


# ------------------------------------------------------------------ the cache


def _write_tree(root: Path, sizes=((40, 30), (30, 40), (36, 36)), classes=("a", "b")) -> ImageFolder:
    """classes x sizes small JPEGs (not all square) with smooth, distinct content."""
    for k, cls in enumerate(classes):
        for i, (w, h) in enumerate(sizes):
            _smooth_jpeg(root / cls / f"{cls}_{i}.JPEG", w, h, seed=10 * k + i)
    return ImageFolder(str(root))


def _smooth_jpeg(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pixels = np.stack([(xx * rng.uniform(1, 5) + yy * rng.uniform(1, 5) + rng.uniform(0, 80)) % 256
                       for _ in range(3)], -1)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG", quality=95)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_holds_decoded_images_and_labels(tmp_path):
    ds = _write_tree(tmp_path / "data" / "train")
    cache = decode_cache(ds, cache_dir=tmp_path / "cache", progress=False)
    assert cache.size == 30  # default: the shorter side of the first image (40x30)
    assert cache.images.shape == (6, 3, 30, 30) and cache.images.dtype == torch.uint8
    assert cache.labels.tolist() == [0, 0, 0, 1, 1, 1] and cache.classes == ["a", "b"]
    assert cache.path.name.startswith("data-train-30px-") and cache.path.suffix == ".u8"
    for (path, _), stored in zip(ds.samples, cache.images):
        with Image.open(path) as im:  # shorter side -> 30 (antialiased bilinear), centre square
            im = im.convert("RGB")
            scale = 30 / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
            left, top = (im.width - 30) // 2, (im.height - 30) // 2
            expected = np.asarray(im.crop((left, top, left + 30, top + 30))).transpose(2, 0, 1)
        np.testing.assert_array_equal(stored.numpy(), expected)


def test_cache_is_reused_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    ds = _write_tree(tmp_path / "data" / "train")
    calls = []
    decode = fast._decode_image
    monkeypatch.setattr(fast, "_decode_image", lambda p, s: calls.append(p) or decode(p, s))
    first = decode_cache(ds, 16, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6
    again = decode_cache(ds, 16, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 6 and again.path == first.path  # reused: nothing decoded
    torch.testing.assert_close(again.images, first.images)
    other = decode_cache(ds, 12, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 12 and other.path != first.path  # the size is part of the key
    changed = ds.samples[4][0]
    _smooth_jpeg(Path(changed), 30, 40, seed=99)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = decode_cache(ds, 16, cache_dir=tmp_path / "cache", progress=False)
    assert len(calls) == 18 and rebuilt.path == first.path
    assert not torch.equal(rebuilt.images[4], first.images[4])
    torch.testing.assert_close(rebuilt.images[:4], again.images[:4])


@pytest.mark.parametrize("existing", [False, True])
def test_an_interrupted_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch, existing):
    ds = _write_tree(tmp_path / "data" / "train")
    cache_dir = tmp_path / "cache"
    if existing:  # a complete cache whose source then changes: the rebuild is interrupted
        decode_cache(ds, 16, cache_dir=cache_dir, progress=False)
        changed = ds.samples[0][0]
        st = os.stat(changed)
        os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    decode, calls = fast._decode_image, []

    def flaky(path, size):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the build
        return decode(path, size)

    monkeypatch.setattr(fast, "_decode_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        decode_cache(ds, 16, cache_dir=cache_dir, workers=1, progress=False)
    names = _files(cache_dir)
    assert not any(n.endswith(".json") or "partial" in n for n in names), names
    monkeypatch.setattr(fast, "_decode_image", decode)
    cache = decode_cache(ds, 16, cache_dir=cache_dir, progress=False)  # builds afresh, completes
    assert len(cache) == 6 and cache.images[5].float().std() > 0
    assert len([n for n in _files(cache_dir) if n.endswith(".json")]) == 1


def test_a_truncated_jpeg_is_named_in_the_error(tmp_path):
    ds = _write_tree(tmp_path / "data" / "train", sizes=((64, 64), (64, 64)))
    bad = Path(ds.samples[2][0])
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(CacheBuildError, match=bad.name) as info:
        decode_cache(ds, cache_dir=tmp_path / "cache", progress=False)
    assert str(bad) in str(info.value)
    assert not any(n.endswith(".json") for n in _files(tmp_path / "cache"))


def test_an_unreadable_first_image_is_named_when_the_size_is_probed(tmp_path):
    """size=None reads the first image's size: a damaged first file gives CacheBuildError naming
    it, not PIL's traceback."""
    ds = _write_tree(tmp_path / "data" / "train", sizes=((64, 64), (64, 64)))
    first = Path(ds.samples[0][0])
    first.write_bytes(b"not a JPEG at all")
    with pytest.raises(CacheBuildError, match=first.name) as info:
        decode_cache(ds, cache_dir=tmp_path / "cache", progress=False)
    assert str(first) in str(info.value)


def test_fast_loader_names_an_unreadable_first_image(tmp_path, monkeypatch):
    for env, folder in ((runtime.ENV_DATA, "data"), (runtime.ENV_CACHE, "cache")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(env, str(tmp_path / folder))
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    cfg = imagenet_book.start("smoke", seed=1, quiet=True)
    from imagenet_book.data.imagenet import classification_source, load_classification

    source = classification_source(cfg)
    first = Path(load_classification(source, "val").samples[0][0])
    first.write_bytes(b"\x00" * 100)
    with pytest.raises(CacheBuildError, match=first.name):
        fast_loader(cfg, "val", source=source, progress=False)


# ------------------------------------------------------------------ the loader


@pytest.fixture
def cache(tmp_path):
    sizes = [(24 + i, 20 + 2 * i) for i in range(5)]
    ds = _write_tree(tmp_path / "data" / "train", sizes=sizes, classes=("a", "b", "c"))
    return decode_cache(ds, 20, cache_dir=tmp_path / "cache", progress=False)  # 15 images


def _epochs(loader: FastLoader, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [[(X.clone(), y.clone()) for X, y in loader] for _ in range(n)]


def test_training_batches(cache):
    loader = FastLoader(cache, 4, out_size=16, seed=0)
    assert len(loader) == 3  # 15 images, drop_last
    batches = [(X.clone(), y) for X, y in loader]  # kept beyond the ring's lifetime: cloned
    assert len(batches) == 3
    for X, y in batches:
        assert X.shape == (4, 3, 16, 16) and X.dtype == torch.float32 and y.dtype == torch.int64
        assert X.min() >= (0 - max(IMAGENET_MEAN)) / min(IMAGENET_STD) - 1e-4
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == 12 and set(seen.tolist()) <= {0, 1, 2}
    # The same batches when consumed one at a time (buffers recycled) and when kept.
    loader.set_epoch(0)
    for (X, y), (X_kept, y_kept) in zip(loader, batches):
        torch.testing.assert_close(X, X_kept)
        assert torch.equal(y, y_kept)


def test_cpu_batches_live_in_a_fixed_ring_and_stay_intact_while_the_next_two_are_made(cache):
    """FastLoader's promise: on the CPU, X is one of RING preallocated buffers used in turn, valid
    while the next RING - 1 batches are produced; the buffers never grow in number."""
    expected = [[X.clone() for X, _ in FastLoader(cache, 4, out_size=16, seed=2)]]
    loader = FastLoader(cache, 4, out_size=16, seed=2)
    held, buffers = [], set()
    for epoch in range(3):
        loader.set_epoch(0)  # the same three batches every time
        for k, (X, _) in enumerate(loader):
            held.append((X, expected[0][k]))  # the caller keeps every batch it was given
            buffers.add(X.data_ptr())
            for kept, want in held[-3:]:  # this one and the two before it
                torch.testing.assert_close(kept, want)
    assert len(buffers) == 3  # 9 batches, 3 buffers: reused, no growth
    assert FastLoader.RING == 3
    assert held[0][0].data_ptr() == held[3][0].data_ptr()


def test_same_seed_same_batches_and_new_crops_every_epoch(cache):
    a = _epochs(FastLoader(cache, 4, out_size=16, seed=3), 2)
    b = _epochs(FastLoader(cache, 4, out_size=16, seed=3), 2)
    c = _epochs(FastLoader(cache, 4, out_size=16, seed=4), 1)
    for epoch_a, epoch_b in zip(a, b):
        for (Xa, ya), (Xb, yb) in zip(epoch_a, epoch_b):
            assert torch.equal(Xa, Xb) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0][0], a[1][0][0])  # epoch 2: new order and crops
    assert not torch.equal(a[0][0][0], c[0][0][0])  # another seed
    resumed = FastLoader(cache, 4, out_size=16, seed=3)
    resumed.set_epoch(1)
    assert all(torch.equal(X, Xa) for (X, _), (Xa, _) in zip(resumed, a[1]))


def test_gathered_path_equals_direct_path(cache):
    """What a CUDA run does (gather uint8 on the host, augment the copy) gives the same batches."""
    direct = FastLoader(cache, 4, out_size=16, seed=5)
    gathered = FastLoader(cache, 4, out_size=16, seed=5)
    count = 0
    for (X, y), host in zip(direct, gathered.host_batches(gather=True)):  # in step: 2 buffers
        assert host.images.shape == (4, 3, 20, 20) and host.images.dtype == torch.uint8
        assert torch.equal(host.images, cache.images[host.index])
        Xg, yg = gathered.augment(host)
        torch.testing.assert_close(X, Xg)
        assert torch.equal(y, yg)
        count += 1
    assert count == 3


def test_evaluation_batches_are_centre_crops_of_every_image(cache):
    loader = FastLoader(cache, 4, train=False, out_size=16, crop_fraction=0.8)
    assert len(loader) == 4
    batches = [(X.clone(), y) for X, y in loader]  # 4 batches kept: more than the ring's 3
    assert [len(y) for _, y in batches] == [4, 4, 4, 3]
    X = torch.cat([X for X, _ in batches])
    assert torch.equal(torch.cat([y for _, y in batches]), cache.labels)
    expected = resized_crop(cache.images, center_crop_boxes(15, 20, 0.8), 16,
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)
    torch.testing.assert_close(X, expected)


def test_fast_loader_reads_the_profiles_data(tmp_path, monkeypatch):
    for env, folder in ((runtime.ENV_DATA, "data"), (runtime.ENV_CACHE, "cache")):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(env, str(tmp_path / folder))
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    cfg = imagenet_book.start("smoke", seed=1, quiet=True)
    train = fast_loader(cfg, "train", progress=False)
    val = fast_loader(cfg, "val", progress=False)
    p = cfg.profile
    assert len(train.cache) == 10 * p.train_per_class and len(val.cache) == 10 * p.val_per_class
    assert len(train) == len(train.cache) // p.batch_size
    assert len(val) == math.ceil(len(val.cache) / p.batch_size)
    X, y = next(iter(train))
    assert X.shape == (p.batch_size, 3, p.img_size, p.img_size) and y.shape == (p.batch_size,)
    assert (tmp_path / "cache" / "fast").is_dir()
