"""Top-k accuracy and the ILSVRC class list."""

from __future__ import annotations

import re

import pytest
import torch

from imagenet_book.data.ilsvrc import imagenet_classes
from imagenet_book.metrics import topk_accuracy, topk_correct


def test_topk_on_a_hand_worked_example():
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.9],    # ranking 3, 1, 2, 0
                           [2.0, 1.0, 0.0, -1.0],   # ranking 0, 1, 2, 3
                           [0.3, 0.2, 0.1, 0.0]])   # ranking 0, 1, 2, 3
    y = torch.tensor([1, 0, 3])
    assert topk_correct(logits, y, 1).tolist() == [False, True, False]
    assert topk_correct(logits, y, 2).tolist() == [True, True, False]
    assert topk_accuracy(logits, y, ks=(1, 2, 4)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 4: 1.0})
    assert 5 not in topk_accuracy(logits, y, ks=(1, 5))


def test_topk_agrees_with_a_loop_on_random_cases():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(200, 30, generator=g), torch.randint(0, 30, (200,), generator=g)
    for k in (1, 5, 30):
        ranks = [(row > row[t]).sum().item() for row, t in zip(logits, y)]
        assert topk_correct(logits, y, k).tolist() == [r < k for r in ranks]


def test_topk_rejects_impossible_k():
    with pytest.raises(ValueError, match="k must be"):
        topk_correct(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 4)


def test_imagenet_classes_are_the_ilsvrc_list():
    classes = imagenet_classes()
    wnids = [c.wnid for c in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids), "class index order is the sorted WordNet-id order"
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert [c.index for c in classes] == list(range(1000))
    by_wnid = {c.wnid: c.name for c in classes}
    # The ten Imagenette classes, with the names fast.ai documents for them.
    assert by_wnid["n01440764"] == "tench"
    assert by_wnid["n02102040"] == "English springer"
    assert by_wnid["n02979186"] == "cassette player"
    assert by_wnid["n03000684"] == "chain saw"
    assert by_wnid["n03028079"] == "church"
    assert by_wnid["n03394916"] == "French horn"
    assert by_wnid["n03417042"] == "garbage truck"
    assert by_wnid["n03425413"] == "gas pump"
    assert by_wnid["n03445777"] == "golf ball"
    assert by_wnid["n03888257"] == "parachute"


def _cfg(tmp_path, profile):
    import imagenet_book as ib

    return ib.Setup(profile=ib.PROFILES[profile], device=torch.device("cpu"), seed=0,
                    data_root=tmp_path, cache_root=tmp_path, reasons={})


def test_imagenet_samples_found_in_class_order_except_under_smoke(tmp_path):
    from PIL import Image

    from imagenet_book.data.ilsvrc import SAMPLES_FOLDER, imagenet_samples

    folder = tmp_path / SAMPLES_FOLDER
    folder.mkdir()
    for name in ("n03888257_parachute", "n01440764_tench"):
        Image.new("RGB", (8, 8)).save(folder / f"{name}.JPEG")
    found = imagenet_samples(_cfg(tmp_path, "local"))
    assert [(p.name, c.index, c.name) for p, c in found] == [
        ("n01440764_tench.JPEG", 0, "tench"), ("n03888257_parachute.JPEG", 701, "parachute")]
    assert imagenet_samples(_cfg(tmp_path, "smoke")) == []
    assert imagenet_samples(_cfg(tmp_path / "elsewhere", "local")) == []
    Image.new("RGB", (8, 8)).save(folder / "n00000000_nothing.JPEG")
    with pytest.raises(ValueError, match="n00000000_nothing.JPEG"):
        imagenet_samples(_cfg(tmp_path, "local"))
