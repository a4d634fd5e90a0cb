"""imagenet_book.faces and the ArcFace loss: the margin against a direct computation (and plain
softmax cross-entropy at m = 0), Eigenfaces recovering a known structure, the threshold and the
ROC against brute force, fold rotation never training on held-out people, the margin task
learning through engine.fit, and verify_folds on the stand-in with a tiny checkpoint."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import imagenet_book as ib
from imagenet_book import engine, faces, losses
from imagenet_book.data import lfw
from imagenet_book.engine import BatchLoader

sys.path.insert(0, str(Path(__file__).parent))
from lfw_trees import write_photos  # noqa: E402


@pytest.fixture(scope="module")
def standin(smoke_cfg) -> lfw.LFWSource:
    return lfw.lfw_source(smoke_cfg)


def _cpu(cfg):
    return dataclasses.replace(cfg, device=torch.device("cpu"))


# ------------------------------------------------------------------------------- the loss


def _direct_arcface_logits(x, w, y, s, m):
    """ArcFace's logits the obvious way: the angle by acos, plus m, cos again."""
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    theta = torch.acos(cos.clamp(-1, 1))
    target = torch.where(theta + m <= math.pi, torch.cos(theta + m), cos - m * math.sin(m))
    onehot = F.one_hot(y, w.shape[0]).bool()
    return s * torch.where(onehot, target, cos)


def test_arcface_logits_and_gradients_match_the_direct_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    w = torch.randn(5, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (64,), generator=g)
    x[0] = -w[y[0]]  # theta = pi: past pi - m, the continuation
    for m in (0.2, 0.5):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = losses.arcface_logits(xa, w, y, 30.0, m)
        direct = _direct_arcface_logits(xb, w, y, 30.0, m)
        torch.testing.assert_close(ours, direct)
        F.cross_entropy(ours[1:], y[1:]).backward()  # acos has no finite gradient at theta = pi
        F.cross_entropy(direct[1:], y[1:]).backward()
        torch.testing.assert_close(xa.grad, xb.grad)
    assert losses.arcface_logits(x, w, y, 30.0, 0.5)[0, y[0]] == pytest.approx(30 * (-1 - 0.5 * math.sin(0.5)))


def test_arcface_with_zero_margin_is_softmax_cross_entropy_of_scaled_cosines():
    g = torch.Generator().manual_seed(1)
    x, w, y = torch.randn(16, 6, generator=g), torch.randn(4, 6, generator=g), torch.randint(0, 4, (16,), generator=g)
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    plain = losses.arcface_loss(x, w, y, scale=10.0, margin=0.0)
    torch.testing.assert_close(plain, F.cross_entropy(10 * cos, y))
    torch.testing.assert_close(plain, losses.cross_entropy(10 * cos, y))
    assert losses.arcface_loss(x, w, y, scale=10.0, margin=0.3) > plain  # the margin only ever costs
    with pytest.raises(ValueError, match="margin >= 0"):
        losses.arcface_loss(x, w, y, margin=-0.1)


# ------------------------------------------------------------------------------- Eigenfaces


def test_eigenfaces_recover_the_subspace_of_synthetic_faces():
    g = torch.Generator().manual_seed(0)
    side, n = 12, 400
    basis = torch.linalg.qr(torch.randn(side * side, 3, generator=g))[0].T  # 3 orthonormal "faces"
    codes = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    mean = torch.rand(side * side, generator=g)
    flat = mean + codes @ basis + 0.01 * torch.randn(n, side * side, generator=g)
    images = flat.view(n, 1, side, side).expand(n, 3, side, side)  # grey: the same in R, G, B
    model = faces.eigenfaces(images, 3, size=side)
    overlap = torch.linalg.svdvals(model.components @ basis.T)  # cosines of the principal angles
    assert overlap.min() > 0.999
    assert model.std.tolist() == pytest.approx([3.0, 2.0, 1.0], rel=0.15)
    torch.testing.assert_close(model.reconstruct(model.project(images)).flatten(1), flat, atol=0.05, rtol=0)
    white = dataclasses.replace(model, whiten=True).project(images)
    assert white.std(0).tolist() == pytest.approx([1.0, 1.0, 1.0], rel=1e-3)


# ------------------------------------------------------------------------------- threshold and ROC


def test_best_threshold_maximises_the_training_accuracy_like_brute_force():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = int(torch.randint(1, 40, (), generator=g))
        labels = torch.randint(0, 2, (n,), generator=g)
        scores = (torch.randn(n, generator=g) + labels).mul(2).round() / 2  # ties on purpose
        t, acc = faces.best_threshold(scores, labels)
        assert ((scores > t).long() == labels).float().mean().item() == pytest.approx(acc)
        candidates = torch.cat([scores, scores - 1e-3, scores + 1e-3])
        brute = max(((scores > c).long() == labels).float().mean().item() for c in candidates)
        assert acc == pytest.approx(brute), trial


def test_roc_curve_and_its_area_match_brute_force():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1, 0] * 15)
    scores = (torch.randn(30, generator=g) + labels).round(decimals=1)
    roc = faces.roc_curve(scores, labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    for fpr, tpr, t in zip(roc.fpr.tolist(), roc.tpr.tolist(), roc.thresholds.tolist()):
        assert tpr == pytest.approx((pos >= t).float().mean().item())
        assert fpr == pytest.approx((neg >= t).float().mean().item())
    assert (roc.fpr[0], roc.tpr[0], roc.fpr[-1], roc.tpr[-1]) == (0, 0, 1, 1)
    pairs = pos[:, None] - neg[None, :]
    assert roc.auc == pytest.approx(((pairs > 0).double() + 0.5 * (pairs == 0).double()).mean().item())


# ------------------------------------------------------------------------------- the protocol


def test_rotation_never_trains_on_a_held_out_or_validation_person(standin, tmp_path):
    for fold in standin.folds:
        rot = faces.rotation(standin, fold.number)
        assert rot.validation.number == fold.number % 5 + 1  # the next fold, wrapping round
        unseen = set(fold.people) | set(rot.validation.people)
        assert not set(rot.train_people) & unseen
        assert {name for name, _ in rot.train_images} == set(rot.train_people)
        assert all(p.name1 not in unseen and p.name2 not in unseen for p in rot.train_pairs)
        assert len(rot.train_pairs) == sum(len(f.pairs) for f in standin.folds if f not in (fold, rot.validation))
        assert rot.threshold_pairs == rot.validation.pairs
        plain = faces.rotation(standin, fold.number, validation=False)
        assert plain.validation is None and plain.threshold_pairs == plain.train_pairs
        assert len(plain.train_people) == sum(len(f.people) for f in standin.folds if f is not fold)
    # A hand-made protocol whose folds share Ann: she is never trained on while fold 2 is held out.
    write_photos(tmp_path / "lfw", {"Ann": 3, "Bob": 2, "Cat": 2})
    (tmp_path / "pairs.txt").write_text("2\t1\nBob\t1\t2\nAnn\t1\tBob\t1\nAnn\t2\t3\nCat\t1\tAnn\t1\n")
    shared = lfw.LFWSource(tmp_path / "lfw", tmp_path / "pairs.txt", None, "subset", "test", "local",
                           lfw.make_folds(tmp_path / "pairs.txt"))
    rot = faces.rotation(shared, 2, validation=False)
    assert rot.train_people == ("Bob",) and rot.train_images == (("Bob", 1), ("Bob", 2))
    assert [p.line for p in rot.train_pairs] == [2]
    with pytest.raises(ValueError, match="No fold 3"):
        faces.rotation(shared, 3, validation=False)
    with pytest.raises(ValueError, match="needs 3 folds"):
        faces.rotation(shared, 1)


class _TinyBackbone(torch.nn.Sequential):
    """Two convolutions: a backbone in the sense of FaceEmbedder, trained in a second."""

    out_channels, input_mean, input_std = 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self) -> None:
        super().__init__(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                         torch.nn.ReLU())


def test_the_margin_task_lowers_its_loss_through_engine_fit():
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(4, 3, 1, 1, generator=g)
    y = torch.arange(4).repeat_interleave(6)
    X = (colours[y] + 0.1 * torch.randn(24, 3, 16, 16, generator=g) - 0.5) / 0.25
    torch.manual_seed(0)
    net = faces.FaceEmbedder(_TinyBackbone(), 4, embed_dim=8)
    task = faces.MarginEmbedding(mode="scratch", scale=10.0, margin=0.2)
    history = engine.fit(net, BatchLoader((X, y), 8, seed=0, drop_last=True), BatchLoader((X, y), 24, shuffle=False),
                         ib.recipe.face_recipe(8, 8, mode="scratch", lr=1e-2), task=task, device="cpu",
                         progress=False, evaluate_every=8)
    assert len(history.steps) == 24
    assert history.epochs[-1]["train_loss"] < 0.5 * history.epochs[0]["train_loss"]
    assert history.epochs[-1]["train_top1"] > history.epochs[0]["train_top1"]
    assert set(history.final) == {"loss", "top1"} and history.final["top1"] > 0.5


def test_imprinted_centres_are_the_mean_directions_of_each_persons_photos():
    torch.manual_seed(0)
    net = faces.FaceEmbedder(_TinyBackbone(), 3, embed_dim=8).eval()
    images = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    centres = faces.imprint_centres(net, images, labels, batch_size=3)
    e = F.normalize(faces.embed(net, images, flip=False), dim=1)
    for c in range(3):
        torch.testing.assert_close(centres[c], F.normalize(e[labels == c].mean(0), dim=0), atol=1e-5, rtol=0)
    assert torch.equal(net.centres.data, centres)


def test_embed_with_flip_averages_the_photo_and_its_mirror_image():
    torch.manual_seed(0)
    net = faces.FaceEmbedder(_TinyBackbone(), 2, embed_dim=16).eval()
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    both = faces.embed(net, images, flip=True, batch_size=2)
    plain = faces.embed(net, images, flip=False)
    mirror = faces.embed(net, images.flip(3), flip=False)
    torch.testing.assert_close(both, (plain + mirror) / 2)
    assert both.shape == (5, 16)
    pairs = torch.tensor([[0, 0], [0, 1]])
    scores = faces.verification_scores(both, pairs)
    assert scores[0].item() == pytest.approx(1.0) and scores[1] < 1


def test_verify_folds_rotates_eigenfaces_over_the_standin(smoke_cfg, standin):
    result = faces.verify_folds(_cpu(smoke_cfg), "eigenfaces", source=standin, num_components=20)
    assert [f.number for f in result.folds] == [1, 2, 3, 4, 5]
    assert result.mean == pytest.approx(sum(result.accuracies) / 5)
    for fold in result.folds:
        rot = faces.rotation(standin, fold.number)
        assert (fold.train_people, fold.train_images) == (len(rot.train_people), len(rot.train_images))
        assert fold.validation == rot.validation.number
        assert len(fold.scores) == len(rot.test.pairs) and 0 <= fold.accuracy <= 1
    row = result.row()
    assert row["run"] == "eigenfaces" and row["metric"] == "accuracy" and row["value"] == result.mean
    assert row["std"] == pytest.approx(torch.tensor(result.accuracies).std().item())
    assert "stand-in" in result.caption and "Eigenfaces (20 components of grey 32 px" in result.caption
    assert result.embedding.startswith("Eigenfaces (20 components of grey 32 px") and result.embedding in result.caption


def test_verify_folds_features_and_finetune_from_a_tiny_checkpoint(smoke_cfg, standin, pretrained):
    cfg = _cpu(smoke_cfg)
    path = pretrained("resnet18").checkpoint
    features = faces.verify_folds(cfg, "features", checkpoint=path, source=standin, folds=[2])
    assert [f.number for f in features.folds] == [2] and features.std == 0.0
    assert path.name in features.caption and "pretrained features" in features.caption
    tuned = faces.verify_folds(cfg, "finetune", checkpoint=path, source=standin, folds=[1], max_steps=1)
    fold = tuned.folds[0]
    assert fold.history is not None and len(fold.history.steps) == 1
    assert f"from {path.name}" in tuned.caption and tuned.settings["recipe"]["backbone_lr_scale"] == 0.1
    # the book's fine-tuning rule: the pretrained BatchNorm statistics are kept (recipe.FREEZE_BN)
    assert tuned.settings["freeze_bn"] is True and tuned.settings["margin"] == ib.recipe.ARC_MARGIN
    scratch = faces.verify_folds(cfg, "scratch", checkpoint=path, source=standin, folds=[1], max_steps=1)
    assert "(random) from scratch" in scratch.caption and scratch.settings["recipe"]["backbone_lr_scale"] == 1.0
    assert scratch.settings["freeze_bn"] is False  # a random network has no statistics to keep
    assert scratch.settings["precise_bn"] is True and tuned.settings["precise_bn"] is True
    with pytest.raises(ib.pretrain.PretrainedNotFoundError, match="No pretrained resnet18 checkpoint"):
        faces.verify_folds(cfg, "features", checkpoint=path.with_name("missing.pt"), source=standin)
    with pytest.raises(ValueError, match="method must be one of"):
        faces.verify_folds(cfg, "pca", source=standin)


def test_trained_embeddings_recompute_the_batchnorm_statistics_training_moved(smoke_cfg, standin, pretrained):
    """Precise BatchNorm after training (engine.recompute_bn): every layer of a scratch network, over
    the training photos in near-equal batches; a fine-tune that keeps the backbone's statistics
    recomputes only its embedding layer's, the backbone's stay as pretrained."""
    cfg = _cpu(smoke_cfg)
    path = pretrained("resnet18").checkpoint
    rot = faces.rotation(standin, 1)
    people = {p: i for i, p in enumerate(rot.train_people)}
    images = lfw.load_faces(standin, rot.train_images, 32)
    labels = torch.tensor([people[name] for name, _ in rot.train_images])
    recipe = ib.recipe.face_recipe(1, 8, img_size=32)
    batches = len(images) // 8

    def train(method, precise_bn):
        task = faces.MarginEmbedding(mode=method, freeze_bn=method == "finetune")
        net, _ = faces._train_embedding(cfg, method, path, images, labels, len(people), recipe, task, 0,
                                        max_steps=1, progress=False, precise_bn=precise_bn)
        return {name: m for name, m in net.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}

    pretrained_state = faces.face_backbone(cfg, path).state_dict()
    for name, bn in train("scratch", True).items():
        assert bn.num_batches_tracked.item() == batches, name  # the one pass, nothing before it
    assert all(bn.num_batches_tracked.item() == 2 for bn in train("scratch", False).values())  # imprint + 1 step
    tuned = train("finetune", True)
    assert tuned["head.3"].num_batches_tracked.item() == batches
    for name, bn in tuned.items():
        if name.startswith("backbone."):
            torch.testing.assert_close(bn.running_mean, pretrained_state[name[len("backbone."):] + ".running_mean"])


def test_the_local_profile_trains_one_rotation_and_scores_every_fold_without_training(smoke_cfg, standin, pretrained):
    """Chapter 11's size switch: under local a trained embedding runs the first rotation only (the
    recorded run asks for every fold), while Eigenfaces and the features cost nothing to rotate."""
    cfg = dataclasses.replace(_cpu(smoke_cfg), profile=ib.runtime.PROFILES["local"])
    path = pretrained("resnet18").checkpoint
    assert ib.recipe.face_sizes("local")["rotations"] == 1 and ib.recipe.face_sizes("smoke")["rotations"] is None
    tuned = faces.verify_folds(cfg, "finetune", checkpoint=path, source=standin, img_size=32, batch_size=8,
                               max_steps=1)
    assert [f.number for f in tuned.folds] == [1]
    every = faces.verify_folds(cfg, "finetune", checkpoint=path, source=standin, img_size=32, batch_size=8,
                               max_steps=1, folds=[1, 2, 3, 4, 5])
    assert [f.number for f in every.folds] == [1, 2, 3, 4, 5]
    eigen = faces.verify_folds(cfg, "eigenfaces", source=standin, num_components=10)
    assert [f.number for f in eigen.folds] == [1, 2, 3, 4, 5]
