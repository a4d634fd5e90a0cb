"""Self-supervised pretraining (SimCLR, chapter 11): the loss against its formula, the two views,
training through the book's one loop (without the labels), exact resume, the k-NN classifier
against a brute-force one, the linear probe, the checkpoint the fine-tuning code loads, the CLI.

Everything runs on tiny sizes: ResNet-18 on 16-32 px images, a few steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

import imagenet_book as ib
from imagenet_book import cli, engine, runtime
from imagenet_book.data.fast import FastLoader, ImageCache, Photometric, photometric, photometric_params, resized_crop
from imagenet_book.errors import BookError
from imagenet_book.finetune import backbone_from_checkpoint, finetune_classifier
from imagenet_book.losses import contrastive_logits, nt_xent
from imagenet_book.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from imagenet_book.pretrain import (PretrainError, checkpoint_stem, default_checkpoint, evaluate_checkpoint,
                                    make_loaders, read_pretrained)
from imagenet_book.speed import num_threads
from imagenet_book.selfsup import (Contrastive, SelfSupError, SimCLR, encoder_features, evaluate_frozen,
                                   knn_accuracy, knn_scores, linear_probe, pretrain_simclr, simclr_net,
                                   to_classifier, two_view_loader)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images: one thread is fastest, and robust to a CPU shared with other processes."""
    with num_threads(1):
        yield


@pytest.fixture
def cpu_cfg(smoke_cfg):
    return dataclasses.replace(smoke_cfg, device=torch.device("cpu"))


def _cache(n: int = 24, size: int = 20, seed: int = 0, classes: int = 4) -> ImageCache:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return ImageCache(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)], None, size)


# ------------------------------------------------------------------------------------ the loss


def _nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """The formula, one anchor at a time, in Python floats."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n, total = len(z1), 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)  # 2N - 1 terms
        total += -math.log(math.exp(float(z[i] @ z[positive]) / tau) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.5, 0.1])
def test_nt_xent_equals_the_formula_computed_directly(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(_nt_xent_by_hand(z1, z2, tau), rel=1e-5)
    assert nt_xent(z2, z1, tau).item() == pytest.approx(nt_xent(z1, z2, tau).item(), rel=1e-6)  # symmetric
    assert nt_xent(3 * z1, 0.5 * z2, tau).item() == pytest.approx(nt_xent(z1, z2, tau).item(), rel=1e-5)  # cosine


def test_nt_xent_is_lower_when_the_positives_agree_and_starts_near_log_2n_minus_1():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(8, 16, generator=g)
    aligned = nt_xent(z1, z1 + 0.05 * torch.randn(8, 16, generator=g), 0.2)
    unrelated = nt_xent(z1, torch.randn(8, 16, generator=g), 0.2)
    assert aligned < 0.5 < unrelated
    for n in (4, 64):  # random embeddings in high dimension: about log(2N - 1), more negatives, higher
        z = torch.randn(2, n, 4096, generator=g)
        assert nt_xent(z[0], z[1], 1.0).item() == pytest.approx(math.log(2 * n - 1), rel=0.02)


def test_contrastive_logits_leave_out_self_pairs_and_point_at_the_other_view():
    logits, targets = contrastive_logits(torch.randn(3, 4), torch.randn(3, 4), 0.5)
    assert logits.shape == (6, 6) and torch.isinf(logits.diagonal()).all()
    assert targets.tolist() == [3, 4, 5, 0, 1, 2]
    with pytest.raises(ValueError, match="same N"):
        contrastive_logits(torch.randn(3, 4), torch.randn(2, 4), 0.5)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(3, 4), torch.randn(3, 4), 0.0)
    with pytest.raises(SelfSupError, match="temperature"):
        Contrastive(temperature=-1.0)
    assert issubclass(SelfSupError, BookError)


# ------------------------------------------------------------------------------------ the views


def _factors(b=1.0, c=1.0, s=1.0, h=0.0, gray=0.0, sigma=0.0, n=3):
    return torch.tensor([[b, c, s, h, gray, sigma]]).expand(n, 6).clone()


@pytest.mark.parametrize("name, factors, reference", [
    ("brightness", _factors(b=1.3), lambda x: TF.adjust_brightness(x, 1.3)),
    ("contrast", _factors(c=0.6), lambda x: TF.adjust_contrast(x, 0.6)),
    ("saturation", _factors(s=1.5), lambda x: TF.adjust_saturation(x, 1.5)),
    ("hue", _factors(h=0.13), lambda x: TF.adjust_hue(x, 0.13)),
    ("hue backwards", _factors(h=-0.45), lambda x: TF.adjust_hue(x, -0.45)),
    ("grayscale", _factors(gray=1.0), lambda x: TF.rgb_to_grayscale(x, num_output_channels=3)),
    ("blur", _factors(sigma=1.2), lambda x: TF.gaussian_blur(x, [3, 3], [1.2, 1.2])),
    ("jitter in order", _factors(b=1.2, c=0.7, s=1.3, h=0.05),
     lambda x: TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x, 1.2), 0.7), 1.3), 0.05)),
])
def test_each_colour_operation_equals_torchvision(name, factors, reference):
    X = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    X[0, :, :5] = 0.4  # gray pixels (no hue) too
    expected = torch.stack([reference(x) for x in X])
    assert torch.allclose(photometric(X, factors), expected, atol=1e-5), name


def test_colour_draws_follow_the_probabilities_and_leave_the_rest_unchanged():
    spec = Photometric(jitter=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2, blur_p=0.5)
    p = photometric_params(20000, spec, torch.Generator().manual_seed(0))
    jittered = (p[:, :4] != torch.tensor([1.0, 1.0, 1.0, 0.0])).any(1)
    assert jittered.float().mean().item() == pytest.approx(0.8, abs=0.02)
    assert p[:, 4].mean().item() == pytest.approx(0.2, abs=0.02) and set(p[:, 4].tolist()) == {0.0, 1.0}
    assert (p[:, 5] > 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert p[:, :3].min() >= 0.6 and p[:, :3].max() <= 1.4 and p[:, 3].abs().max() <= 0.1
    X = torch.rand(2, 3, 8, 8)
    assert torch.allclose(photometric(X, _factors(n=2)), X, atol=1e-5)  # identity factors: no change
    with pytest.raises(ValueError, match="probabilities"):
        Photometric(jitter_p=1.5)


def test_two_views_of_one_image_differ_but_come_from_that_image():
    # Images of one flat grey level each: any crop of image i, flipped or not, is that level.
    levels = torch.arange(0, 240, 10, dtype=torch.uint8)
    flat = ImageCache(levels.view(-1, 1, 1, 1).expand(24, 3, 12, 12).contiguous(), torch.arange(24) % 4,
                      list("abcd"), None, 12)
    X1, X2, y = next(iter(FastLoader(flat, 8, out_size=8, seed=3, views=2)))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    level = lambda X: (X * std + mean) * 255  # noqa: E731
    assert torch.allclose(level(X1), level(X2), atol=1e-3)  # the same image in both views
    assert level(X1).std((1, 2, 3)).max() < 1e-3 and len(set(level(X1)[:, 0, 0, 0].round().tolist())) == 8

    # Patterned images, with colour: each view is its own crop, flip and colour of the batch's image.
    cache = _cache()
    loader = FastLoader(cache, 8, out_size=16, seed=3, views=2, photometric=Photometric(blur_p=0.5))
    loader.set_epoch(4)
    host = next(loader.host_batches())
    loader.set_epoch(4)
    X1, X2, y = next(iter(loader))
    assert torch.equal(y, cache.labels[host.index])
    for v, X in enumerate((X1, X2)):
        rows = slice(8 * v, 8 * v + 8)
        crop = resized_crop(cache.images, host.boxes[rows], 16, index=host.index, flip=host.flip[rows]) / 255
        assert torch.allclose(X, (photometric(crop, host.colour[rows]) - mean) / std, atol=1e-4)
    assert not torch.equal(host.boxes[:8], host.boxes[8:]) and not torch.allclose(X1, X2)
    assert not torch.equal(host.colour[:8], host.colour[8:])  # independent draws
    loader.set_epoch(4)
    again = next(iter(loader))
    assert torch.equal(again[0], X1) and torch.equal(again[1], X2)  # (seed, epoch) fixes every draw


def test_evaluation_views_are_the_same_at_every_pass():
    views = two_view_loader(_cache(), 8, img_size=16, evaluation=True, max_images=16)
    first, second = [b[0].clone() for b in views], [b[0].clone() for b in views]
    assert len(views) == len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------------ training


def _standin_views(cfg, batch_size: int = 8, img_size: int = 32):
    source, train, val = make_loaders(cfg, "standin", img_size=img_size, batch_size=batch_size, progress=False)
    return train.cache, val.cache


def test_training_through_the_loop_lowers_the_contrastive_loss(cpu_cfg):
    """Twelve steps of engine.fit with the Contrastive task on two views of 16 images of the
    real-format stand-in (JPEGs in class folders, decoded by the book's cache): the loss falls
    well below where it started. (Mild augmentation, so that a few steps suffice.)"""
    train_cache, _ = _standin_views(cpu_cfg)
    subset = ImageCache(train_cache.images[:16], train_cache.labels[:16], train_cache.classes, None,
                        train_cache.size)
    mild = Photometric(jitter=0.2, hue=0.02, jitter_p=0.5, grayscale_p=0.0)
    views = two_view_loader(subset, 16, img_size=24, photometric=mild, scale=(0.5, 1.0), seed=1)
    fixed = two_view_loader(subset, 16, img_size=24, photometric=mild, scale=(0.5, 1.0), evaluation=True)
    torch.manual_seed(0)
    history = engine.fit(simclr_net("resnet18"), views, fixed, epochs=12, lr=0.05, weight_decay=0.0,
                         task=Contrastive(temperature=0.2), device="cpu", progress=False, evaluate_every=12)
    losses = [s["loss"] for s in history.steps]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    last = history.epochs[-1]
    assert {"train_loss", "train_top1", "val_loss", "val_top1"} <= set(last) and 0 <= last["val_top1"] <= 1


def _simclr_steps(cache: ImageCache, **fit_kwargs) -> nn.Module:
    """A fresh SimCLR ResNet-18 (seed 0) trained on two views of ``cache`` (16 px, batches of 8)."""
    torch.manual_seed(0)
    net = simclr_net("resnet18")
    engine.fit(net, two_view_loader(cache, 8, img_size=16, seed=5), None, lr=0.05, task=Contrastive(),
               device="cpu", progress=False, **fit_kwargs)
    return net


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_labels_are_never_used():
    """Two runs whose images are the same but whose labels differ end with the same weights."""
    cache = _cache(n=16, size=20)
    relabelled = ImageCache(cache.images, cache.labels.flip(0) * 7 + 1, cache.classes, None, 20)
    assert _same_weights(_simclr_steps(cache, epochs=1), _simclr_steps(relabelled, epochs=1))


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    cache, folder = _cache(n=24, size=20), tmp_path / "ckpt"
    whole = _simclr_steps(cache, epochs=2)
    _simclr_steps(cache, epochs=2, checkpoint_dir=folder, max_steps=4)  # 3 steps per epoch: stops in epoch 2
    assert _same_weights(whole, _simclr_steps(cache, epochs=2, checkpoint_dir=folder, resume="auto"))


# ------------------------------------------------------------------------------------ evaluation


def _knn_by_hand(train_f, train_y, query_f, k, tau, num_classes):
    predictions = []
    for q in query_f:
        sims = sorted(((float(q @ f / (q.norm() * f.norm())), int(c)) for f, c in zip(train_f, train_y)), reverse=True)
        votes = [0.0] * num_classes
        for s, c in sims[:k]:
            votes[c] += math.exp(s / tau)
        predictions.append(max(range(num_classes), key=lambda c: votes[c]))
    return predictions


def test_knn_equals_a_brute_force_computation():
    g = torch.Generator().manual_seed(0)
    train_f, train_y = torch.randn(40, 6, generator=g).double(), torch.randint(0, 4, (40,), generator=g)
    query_f, query_y = torch.randn(15, 6, generator=g).double(), torch.randint(0, 4, (15,), generator=g)
    for k, tau in ((5, 0.1), (12, 0.5), (100, 0.07)):  # k > N uses every training example
        scores = knn_scores(train_f, train_y, query_f, k=k, temperature=tau, num_classes=4, chunk=4)
        expected = _knn_by_hand(train_f, train_y, query_f, k, tau, 4)
        assert scores.argmax(1).tolist() == expected
        accuracy = sum(p == int(t) for p, t in zip(expected, query_y)) / len(query_y)
        found = knn_accuracy(train_f, train_y, query_f, query_y, k=k, temperature=tau, chunk=7)
        assert found == pytest.approx(accuracy)
    with pytest.raises(SelfSupError, match="k of the k-NN"):
        knn_scores(train_f, train_y, query_f, k=0)
    with pytest.raises(SelfSupError, match="temperature"):
        knn_scores(train_f, train_y, query_f, temperature=0.0)
    with pytest.raises(SelfSupError, match="same network"):
        knn_scores(train_f, train_y[:-1], query_f)


def _clusters(n_per_class: int, seed: int, classes: int = 5, dim: int = 32):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 4
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + torch.randn(len(y), dim, generator=g) * 0.5 + 3.0, y


def test_knn_and_the_linear_probe_separate_separable_clusters():
    train_f, train_y = _clusters(30, seed=1)
    val_f, val_y = _clusters(10, seed=2)
    assert knn_accuracy(train_f, train_y, val_f, val_y, k=20, temperature=0.1) == 1.0
    assert knn_accuracy(train_f, train_y, val_f, val_y.roll(10), k=20, temperature=0.1) == 0.0
    fc, metrics = linear_probe(train_f, train_y, val_f, val_y, epochs=100)
    assert metrics["top1"] == 1.0 and metrics["loss"] < 0.5 * math.log(5)  # well below chance's loss
    assert (fc(val_f).argmax(1) == val_y).all()  # the returned layer takes the raw features


def test_frozen_evaluation_scores_any_backbone_the_same_way(cpu_cfg):
    train_cache, val_cache = _standin_views(cpu_cfg)
    train = FastLoader(train_cache, 16, train=False, out_size=32)
    val = FastLoader(val_cache, 16, train=False, out_size=32)
    torch.manual_seed(0)
    net = simclr_net("resnet18")
    features, labels = encoder_features(net, val)
    assert features.shape == (len(val_cache), 512) and torch.equal(labels, val_cache.labels)
    classifier = to_classifier(net, nn.Linear(512, 10))
    again, _ = encoder_features(classifier, val)  # through its fc's input: the same features
    assert torch.allclose(features, again, atol=1e-5)
    scores, fc = evaluate_frozen(net.backbone, train, val, k=5, probe_epochs=2, num_classes=10)
    assert set(scores) == {"knn_top1", "probe_loss", "probe_top1", "probe_top5"} and fc.out_features == 10
    assert all(0.0 <= scores[k] <= 1.0 for k in ("knn_top1", "probe_top1", "probe_top5"))


# ------------------------------------------------------------------------------------ the run and its file


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory, smoke_cfg):
    """A two-step SimCLR run on the smoke stand-in, files and all (cut short: a name of its own)."""
    cfg = dataclasses.replace(smoke_cfg, device=torch.device("cpu"))
    out = tmp_path_factory.mktemp("simclr")
    return cfg, pretrain_simclr(cfg, "standin", max_steps=2, out_dir=out, progress=False, log=None)


def test_the_checkpoint_loads_as_a_backbone_like_a_supervised_one(simclr_run):
    cfg, result = simclr_run
    assert result.trained and result.checkpoint.name.startswith("resnet18-simclr-standin-smoke-")
    ckpt = read_pretrained(result.checkpoint)
    assert ckpt.method == "simclr" and ckpt.num_classes == 10 and ckpt.img_size == 32
    assert set(ckpt.metrics) >= {"knn_top1", "probe_top1", "top1", "top5", "loss", "contrastive_loss"}
    backbone = backbone_from_checkpoint(result.checkpoint)
    assert backbone.pretrained and backbone.img_size == 32
    trained = {k: v for k, v in result.net.state_dict().items() if not k.startswith("fc.")}
    assert trained.keys() == backbone.state_dict().keys()
    assert all(torch.equal(v.cpu(), backbone.state_dict()[k]) for k, v in trained.items())
    torch.manual_seed(cfg.seed)
    initial = simclr_net("resnet18").backbone.state_dict()  # the weights it started from
    assert not torch.equal(initial["layer4.1.conv2.weight"], backbone.state_dict()["layer4.1.conv2.weight"])
    # Its fc is the linear probe: the checkpoint, evaluated as a classifier, scores the probe's top-1.
    scores = evaluate_checkpoint(cfg, result.checkpoint, progress=False)
    assert scores["top1"] == pytest.approx(ckpt.metrics["probe_top1"], abs=1e-6)
    history = json.loads(result.history_json.read_text())
    assert history["epochs"][-1]["step"] == 2 and "val_top1" in history["epochs"][-1]


def test_a_second_call_reuses_the_run_and_other_settings_are_refused(simclr_run, tmp_path):
    cfg, result = simclr_run
    again = pretrain_simclr(cfg, "standin", max_steps=2, out_dir=result.checkpoint.parent, progress=False, log=None)
    assert not again.trained and again.metrics == pytest.approx(result.metrics)
    other = dataclasses.replace(cfg, seed=1)
    with pytest.raises(PretrainError, match="other settings"):
        pretrain_simclr(other, "standin", max_steps=2, out_dir=result.checkpoint.parent, progress=False, log=None)


def test_simclr_runs_have_names_of_their_own(smoke_cfg):
    assert checkpoint_stem(smoke_cfg, "resnet18", "standin", method="simclr") == "resnet18-simclr-standin-smoke"
    assert checkpoint_stem(smoke_cfg, "resnet18", "standin") == "resnet18-standin-smoke"  # supervised: unchanged
    default = "resnet18-simclr-standin-smoke"
    hashed = checkpoint_stem(smoke_cfg, "resnet18", "standin", method="simclr", temperature=0.5)
    assert hashed.startswith(default + "-") and len(hashed) == len(default) + 9
    assert default_checkpoint(smoke_cfg, "resnet18", "standin", method="simclr").name == default + ".pt"
    with pytest.raises(PretrainError, match="temperature is not a setting of supervised"):
        checkpoint_stem(smoke_cfg, "resnet18", "standin", temperature=0.5)
    with pytest.raises(PretrainError, match="Unknown pretraining method"):
        checkpoint_stem(smoke_cfg, "resnet18", "standin", method="byol")


def test_the_simclr_backbone_fine_tunes_on_voc_like_a_supervised_one(simclr_run):
    cfg, result = simclr_run
    run = finetune_classifier(cfg, result.checkpoint, mode="probe", epochs=1, max_steps=1, progress=False, log=None)
    assert run.checkpoint == result.checkpoint and 0.0 <= run.metrics["mAP"] <= 1.0


# ------------------------------------------------------------------------------------ the command line


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    for var in (runtime.ENV_DATA, runtime.ENV_CACHE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    yield tmp_path
    for var in (runtime.ENV_DATA, runtime.ENV_CACHE):  # the command line sets them for its process
        os.environ.pop(var, None)


def test_the_command_line_pretrains_with_simclr(cli_env, capsys):
    code = cli.main(["pretrain", "--method", "simclr", "--data", "standin", "--max-steps", "1",
                     "--cache-root", str(cli_env), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "k-NN top-1" in captured.out and "linear probe top-1" in captured.out
    saved = list((cli_env / "checkpoints").glob("resnet18-simclr-standin-smoke-*.pt"))
    assert len(saved) == 1 and read_pretrained(saved[0]).method == "simclr"


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0.5"], "--temperature is a setting of self-supervised"),
    (["--method", "simclr", "--temperature", "0"], "temperature of the contrastive loss"),
    (["--method", "simclr", "--weight-decay", "1e-3"], "--weight-decay: settings of supervised pretraining"),
    (["--holdout", "1.5"], "holdout is a share of each training class"),
])
def test_command_line_settings_that_cannot_work_are_one_line_and_exit_2(cli_env, capsys, args, message):
    code = cli.main(["pretrain", "--data", "standin", *args, "--cache-root", str(cli_env), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_the_package_exports_the_chapter_api():
    assert ib.selfsup.SimCLR is SimCLR and ib.selfsup.nt_xent is nt_xent
    assert {"nt_xent", "contrastive_logits"} <= set(ib.losses.__all__)
