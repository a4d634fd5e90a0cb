"""A head on frozen features (imagenet_book.probe): the features are the backbone's pooled
features, augmented views differ, per-class splits are disjoint and balanced, and early stopping
is an uninterrupted fit cut short that leaves the best epoch's weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imagenet_book import engine, probe
from imagenet_book.data.fast import FastLoader, ImageCache
from imagenet_book.engine import BatchLoader, TrainConfig
from imagenet_book.models import resnet18


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ImageCache:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 20, 20), dtype=torch.uint8, generator=g)
    return ImageCache(images, torch.arange(12) % 3, ["a", "b", "c"], tmp_path_factory.mktemp("c"), 20)


def test_features_are_the_input_of_fc(cache):
    torch.manual_seed(0)
    net = resnet18(num_classes=3).eval()
    fc = net.fc
    loader = FastLoader(cache, 5, train=False, out_size=16)
    feats, labels = probe.extract_features(net, loader)
    assert feats.shape == (12, 512) and torch.equal(labels, cache.labels)
    assert net.fc is fc  # put back
    X = torch.cat([x for x, _ in loader])
    with torch.no_grad():
        assert torch.allclose(fc(feats), net(X), atol=1e-5)


def test_augmented_views_are_different_crops_of_the_same_images(cache):
    net = resnet18(num_classes=3).eval()
    loader = FastLoader(cache, 5, train=True, shuffle=False, drop_last=False, out_size=16)
    views, labels = probe.extract_features(net, loader, views=3)
    assert views.shape == (3, 12, 512) and torch.equal(labels, cache.labels)
    assert not torch.allclose(views[0], views[1])
    shuffled = FastLoader(cache, 5, train=True, out_size=16)  # shuffles: views would not line up
    with pytest.raises(ValueError, match="shuffle=False"):
        probe.extract_features(net, shuffled, views=2)
    with pytest.raises(AttributeError, match="fc"):
        probe.extract_features(nn.Sequential(nn.Flatten()), loader)


def test_split_per_class_is_disjoint_balanced_and_seeded():
    labels = torch.arange(30) % 3
    a, b, c = probe.split_per_class(labels, (2, 3, None), seed=1)
    assert len(set(a.tolist()) | set(b.tolist()) | set(c.tolist())) == 30
    assert not (set(a.tolist()) & set(b.tolist())) and not (set(b.tolist()) & set(c.tolist()))
    assert torch.bincount(labels[a]).tolist() == [2, 2, 2]
    assert torch.bincount(labels[b]).tolist() == [3, 3, 3]
    assert torch.bincount(labels[c]).tolist() == [5, 5, 5]
    again = probe.split_per_class(labels, (2, 3, None), seed=1)
    assert all(torch.equal(x, y) for x, y in zip((a, b, c), again))
    assert not torch.equal(probe.split_per_class(labels, (2, 3, None), seed=2)[0], a)
    with pytest.raises(ValueError, match="None"):
        probe.split_per_class(labels, (None, 2))


def test_feature_views_draw_a_view_per_access():
    views = torch.arange(4.0).view(4, 1, 1).expand(4, 3, 2).clone()  # view v is filled with v
    ds = probe.FeatureViews(views, torch.tensor([0, 1, 2]))
    torch.manual_seed(0)
    seen = {float(ds[0][0][0]) for _ in range(40)}
    assert seen == {0.0, 1.0, 2.0, 3.0}
    assert ds[2][1] == 2 and len(ds) == 3
    with pytest.raises(ValueError, match=r"\(V, N, D\)"):
        probe.FeatureViews(torch.zeros(3, 2), torch.zeros(3))


def test_make_head_shapes_and_dropout():
    assert probe.make_head(8, 3)(torch.zeros(5, 8)).shape == (5, 3)
    mlp = probe.make_head(8, 3, hidden=16, dropout=0.5)
    assert [type(m).__name__ for m in mlp] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert mlp[0].p == 0.5 and mlp(torch.zeros(5, 8)).shape == (5, 3)
    with pytest.raises(ValueError, match="dropout"):
        probe.make_head(8, 3, dropout=1.0)


def _noisy_task():
    """Random labels: a big head memorises them, so the validation loss rises after a while."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(48, 10, generator=g), torch.randint(0, 3, (48,), generator=g)
    return (X[:32], y[:32]), (X[32:], y[32:])


def test_early_stopping_is_an_uninterrupted_fit_cut_short_with_the_best_weights():
    (Xt, yt), (Xv, yv) = _noisy_task()
    config = TrainConfig(epochs=30, lr=0.1, weight_decay=0.0)

    def make():
        torch.manual_seed(0)
        return probe.make_head(10, 3, hidden=64)

    val = BatchLoader((Xv, yv), 64, shuffle=False)
    full = engine.fit(make(), BatchLoader((Xt, yt), 8, seed=0), val, config, device="cpu", progress=False)
    net = make()
    stop = probe.fit_early_stopping(net, BatchLoader((Xt, yt), 8, seed=0), val, config, patience=3,
                                    device="cpu", progress=False)
    assert stop.stopped_early and stop.stopped_epoch < 30
    assert stop.stopped_epoch == stop.best_epoch + 3
    ran = stop.history.epochs
    assert [r["val_loss"] for r in ran] == [r["val_loss"] for r in full.epochs[:len(ran)]]
    best = min(ran, key=lambda r: r["val_loss"])
    assert stop.best_epoch == best["epoch"] and stop.best["val_loss"] == best["val_loss"]
    assert engine.evaluate(net, val)["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    gap = probe.train_val_gap(stop.history, stop.best_epoch)
    assert gap["gap"] == pytest.approx(best["train_top1"] - best["val_top1"])
    assert probe.train_val_gap(full)["epoch"] == 30


def test_early_stopping_checks_its_arguments():
    (Xt, yt), (Xv, yv) = _noisy_task()
    head, train = probe.make_head(10, 3), BatchLoader((Xt, yt), 8)
    with pytest.raises(ValueError, match="metric"):
        probe.fit_early_stopping(head, train, None, TrainConfig(epochs=2), metric="accuracy")
    with pytest.raises(ValueError, match="validation loader"):
        probe.fit_early_stopping(head, train, None, TrainConfig(epochs=2))
    with pytest.raises(TypeError, match="max_steps"):
        probe.fit_early_stopping(head, train, BatchLoader((Xv, yv), 8), TrainConfig(epochs=2), max_steps=3)
