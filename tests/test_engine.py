"""The training engine: learning, exact resume after SIGKILL, torchrun DDP, checkpoint errors,
out-of-memory advice, History files, weight-decay groups.

Tiny CNNs on 16 px synthetic images (tests/engine_worker.py): the whole file takes well under a
minute on 2 CPU cores, most of it in the start-up of the subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from engine_worker import NUM_CLASSES, SmallCNN, make_data  # noqa: E402

from imagenet_book.engine import (  # noqa: E402
    BatchLoader,
    amp_dtype,
    Callback,
    EarlyStopping,
    CheckpointError,
    History,
    TrainConfig,
    fit,
    load_checkpoint,
    lr_factor,
    make_optimizer,
    recompute_bn,
)
from imagenet_book.models import resnet18  # noqa: E402
from imagenet_book.tasks import Classification  # noqa: E402

WORKER = str(Path(__file__).parent / "engine_worker.py")
STEPS_PER_EPOCH = 192 // 32  # the worker's training set and batch size


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short fit with checkpoints: (net, history, checkpoint folder)."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    net = SmallCNN(bn=True)
    train = BatchLoader(make_data(256, seed=1), 32, seed=0)
    val = BatchLoader(make_data(128, seed=2), 64, shuffle=False)
    history = fit(net, train, val, epochs=4, lr=0.1, warmup_steps=2, device="cpu",
                  checkpoint_dir=folder, checkpoint_every=5, progress=False)
    return net, history, folder


def _final(out: Path) -> tuple[dict, History]:
    return torch.load(out / "final.pt", weights_only=True), History.from_json(out / "history.json")


def _run_worker(*args: str, torchrun: bool = False) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = (launcher if torchrun else [sys.executable]) + [WORKER, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------------------------ learning


def test_fit_lowers_the_loss_and_beats_chance(trained):
    _, history, _ = trained
    first, last = history.epochs[0], history.epochs[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"]
    assert last["val_top1"] > 2 / NUM_CLASSES  # chance is 1/4; this run reaches about 0.85
    assert [r["epoch"] for r in history.epochs] == [1, 2, 3, 4]
    assert len(history.steps) == 4 * 8 and history.steps[-1]["step"] == 32
    assert all(r["img_per_s"] > 0 and r["val_top5"] == 1.0 for r in history.epochs)  # C = 4 < 5


def test_callbacks_see_every_step_and_early_stopping_ends_the_run_for_good(tmp_path):
    class Steps(Callback):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def on_step_end(self, step, net) -> None:
            self.seen.append(step)

    def run(net, callbacks, resume=False):
        return fit(net, BatchLoader(make_data(64, seed=3), 16, seed=0),
                   BatchLoader(make_data(32, seed=4), 32, shuffle=False), epochs=6, lr=0.05, device="cpu",
                   progress=False, checkpoint_dir=tmp_path, resume=resume, callbacks=callbacks)

    torch.manual_seed(0)
    net, steps = SmallCNN(), Steps()
    stop = EarlyStopping("val_loss", "min", patience=1, min_delta=1e9)  # only epoch 1 counts as better
    history = run(net, [steps, stop])
    assert [r["epoch"] for r in history.epochs] == [1, 2] and stop.stopped_early and stop.best_epoch == 1
    assert steps.seen == list(range(1, 9))  # 4 steps an epoch, every one seen
    assert all(torch.equal(v, stop.best_state[k]) for k, v in net.state_dict().items())  # epoch 1's weights
    again = run(SmallCNN(), [EarlyStopping("val_loss", "min", patience=1, min_delta=1e9)], resume="auto")
    assert [r["epoch"] for r in again.epochs] == [1, 2]  # a stopped run stays stopped when resumed


def test_lr_schedule_warms_up_then_decays():
    assert [lr_factor(s, 10, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0 and lr_factor(10, 10, 4, "cosine") == 0.0
    assert lr_factor(7, 10, 4, "onecycle") == pytest.approx(0.5)
    assert lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ resume


def test_batch_loader_regenerates_any_position():
    X, y = torch.arange(50.0)[:, None], torch.arange(50)
    loader = BatchLoader((X, y), 8, seed=3)
    loader.set_epoch(2)
    full = [b for _, b in loader]
    loader.set_epoch(2)
    tail = [b for _, b in loader.iter_from(4)]
    assert len(full) == len(loader) == 7 and all(torch.equal(a, b) for a, b in zip(full[4:], tail))
    assert not torch.equal(torch.cat(full), torch.cat([b for _, b in loader]))  # epoch 3 differs
    other = BatchLoader((X, y), 10, seed=3)
    with pytest.raises(ValueError, match="batch_size"):
        other.load_state_dict(loader.state_dict())


def test_fast_loader_stops_and_resumes_exactly(tmp_path):
    """data.fast.FastLoader has set_epoch() and seeded crops: a run stopped mid-epoch (max_steps)
    and resumed ends with the weights of an uninterrupted one, though it has no iter_from()."""
    from imagenet_book.data.fast import FastLoader, ImageCache

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (80, 3, 20, 20), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (80,), generator=g)
    cache = ImageCache(images, labels, list("abcd"), tmp_path / "unused.u8", 20)

    def run(**kwargs) -> nn.Module:
        torch.manual_seed(0)
        net = SmallCNN()
        fit(net, FastLoader(cache, 16, out_size=16, seed=5), epochs=2, lr=0.05, device="cpu",
            progress=False, **kwargs)
        return net

    whole = run()
    run(checkpoint_dir=tmp_path / "ckpt", max_steps=7)  # 5 steps per epoch: stops in epoch 2
    resumed = run(checkpoint_dir=tmp_path / "ckpt", resume="auto")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_mixup_batches_train_on_soft_targets_and_resume_exactly(tmp_path):
    """fit(batch_transform=mix_transform(...)): the loss takes the mixed probabilities, the
    training top-1 is counted against their largest class, and a run stopped mid-epoch resumes
    to the same weights (the mixing draws come from the checkpointed torch generator)."""
    from imagenet_book.augment import mix_transform

    seen: list[torch.Tensor] = []
    mix = mix_transform(NUM_CLASSES, mixup_alpha=0.4, cutmix_alpha=1.0)

    def recording_mix(X, y):
        X, y = mix(X, y)
        seen.append(y)
        return X, y

    def run(**kwargs) -> tuple[nn.Module, History]:
        torch.manual_seed(0)
        net = SmallCNN(bn=True)
        history = fit(net, BatchLoader(make_data(96, seed=1), 16, seed=0), epochs=2, lr=0.05,
                      device="cpu", progress=False, batch_transform=recording_mix, **kwargs)
        return net, history

    whole, history = run()
    assert len(seen) == 12 and all(y.shape == (16, NUM_CLASSES) and y.dtype == torch.float32 for y in seen)
    assert all(torch.allclose(y.sum(1), torch.ones(16)) for y in seen)
    assert any(bool((y.max(1).values < 1).any()) for y in seen)  # really mixed, not one-hot
    assert all(0.0 <= e["train_top1"] <= 1.0 for e in history.epochs)
    run(checkpoint_dir=tmp_path / "ckpt", max_steps=9)  # 6 steps per epoch: stops in epoch 2
    resumed, _ = run(checkpoint_dir=tmp_path / "ckpt", resume="auto")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_soft_targets_from_the_loader_are_learned():
    """y given as probabilities (B, C) by the loader: cross-entropy with soft targets still
    learns the classes (train top-1 well above chance after a few epochs)."""
    X, y = make_data(256, seed=3)
    soft = torch.nn.functional.one_hot(y, NUM_CLASSES).float() * 0.9 + 0.1 / NUM_CLASSES
    torch.manual_seed(0)
    history = fit(SmallCNN(bn=True), BatchLoader((X, soft), 32, seed=0), epochs=4, lr=0.1,
                  device="cpu", progress=False)
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"]
    assert history.epochs[-1]["train_top1"] > 2.0 / NUM_CLASSES


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    common = ["--bn", "--checkpoint-every", "4"]  # BatchNorm, dropout, EMA, random flips
    _run_worker(str(tmp_path / "whole"), "--ckpt", str(tmp_path / "ckpt_whole"), *common)

    ckpt = tmp_path / "ckpt_killed"
    _kill_in_step(tmp_path / "killed", ckpt, 10, *common)
    newest = sorted(ckpt.glob("step-*.pt"))[-1]
    data = load_checkpoint(newest)["data"]
    assert newest.name == "step-00000008.pt" and 0 < data["batches_done"] < STEPS_PER_EPOCH

    _run_worker(str(tmp_path / "killed"), "--ckpt", str(ckpt), *common, "--resume")
    (whole, h_whole), (resumed, h_resumed) = _final(tmp_path / "whole"), _final(tmp_path / "killed")
    for part in ("model", "ema"):
        assert whole[part].keys() == resumed[part].keys()
        for name in whole[part]:
            assert torch.equal(whole[part][name], resumed[part][name]), f"{part} {name}"
    assert [s["loss"] for s in h_whole.steps] == [s["loss"] for s in h_resumed.steps]
    for a, b in zip(h_whole.epochs, h_resumed.epochs, strict=True):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "ema_val_loss", "lr"):
            assert a[key] == b[key], key


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_torchrun_ddp_matches_single_process(tmp_path):
    _run_worker(str(tmp_path / "single"), "--epochs", "2")
    _run_worker(str(tmp_path / "ddp"), "--epochs", "2", torchrun=True)
    (single, h_single), (ddp, h_ddp) = _final(tmp_path / "single"), _final(tmp_path / "ddp")
    torch.manual_seed(0)
    init = SmallCNN().state_dict()
    for name, w in single["model"].items():
        assert (w - init[name]).abs().max() > 1e-3  # the runs did train
        # Not bit-identical: DDP averages two half-batch gradients, a different order of float
        # additions than one full-batch mean (about 1e-7 per step here). No BatchNorm in this
        # model: each rank would normalise its half batch with its own statistics.
        torch.testing.assert_close(ddp["model"][name], w, rtol=0, atol=1e-5)
    for a, b in zip(h_single.epochs, h_ddp.epochs, strict=True):
        assert a["val_top1"] == b["val_top1"]  # all-reduced over both ranks' halves of val
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)


OTHER_TASKS = ("multilabel", "segment", "detect")


def _kill_in_step(out: Path, ckpt: Path, pause_at: int, *args: str) -> None:
    """Start the worker, SIGKILL it while it is inside training step ``pause_at``."""
    victim = subprocess.Popen([sys.executable, WORKER, str(out), "--ckpt", str(ckpt), *args,
                               "--pause-at", str(pause_at)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in victim.stdout:  # one line per training step; it stops inside step pause_at
            lines.append(line.strip())
            if lines[-1] == "paused":
                break
        assert lines[-1] == "paused", lines
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
        victim.stdout.close()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
@pytest.mark.parametrize("task", OTHER_TASKS)
def test_every_task_resumes_bit_identically_after_sigkill(tmp_path, task):
    """Multi-label (backbone at a tenth of the rate, masked BCE, mAP), segmentation (void pixels,
    mIoU) and detection (focal + smooth-L1, gradient clipping, box-aware random flips, mAP):
    killed mid-epoch and resumed, the run ends bit-identical to an uninterrupted one."""
    common = ["--task", task, "--checkpoint-every", "4", "--epochs", "2"]
    _run_worker(str(tmp_path / "whole"), "--ckpt", str(tmp_path / "ckpt_whole"), *common)
    ckpt = tmp_path / "ckpt_killed"
    _kill_in_step(tmp_path / "killed", ckpt, 10, *common)
    newest = sorted(ckpt.glob("step-*.pt"))[-1]
    assert newest.name == "step-00000008.pt"
    assert 0 < load_checkpoint(newest)["data"]["batches_done"] < STEPS_PER_EPOCH
    _run_worker(str(tmp_path / "killed"), "--ckpt", str(ckpt), *common, "--resume")
    (whole, h_whole), (resumed, h_resumed) = _final(tmp_path / "whole"), _final(tmp_path / "killed")
    assert whole["model"].keys() == resumed["model"].keys()
    for name in whole["model"]:
        assert torch.equal(whole["model"][name], resumed["model"][name]), name
    assert h_whole.steps == h_resumed.steps  # every logged scalar of every step, and the lr
    assert h_whole.final == h_resumed.final  # the task's whole last evaluation
    for a, b in zip(h_whole.epochs, h_resumed.epochs, strict=True):
        assert {k: v for k, v in a.items() if k not in ("img_per_s", "wall_s")} == \
               {k: v for k, v in b.items() if k not in ("img_per_s", "wall_s")}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
@pytest.mark.parametrize("task", OTHER_TASKS)
def test_every_task_under_torchrun_ddp_matches_single_process(tmp_path, task):
    """Two gloo processes train the same weights as one, and evaluate the same metrics (the
    worker's data give every process the same loss normaliser: equal masks, void pixels and
    positive anchors per image; no BatchNorm)."""
    _run_worker(str(tmp_path / "single"), "--task", task, "--epochs", "2")
    _run_worker(str(tmp_path / "ddp"), "--task", task, "--epochs", "2", torchrun=True)
    (single, h_single), (ddp, h_ddp) = _final(tmp_path / "single"), _final(tmp_path / "ddp")
    for name, w in single["model"].items():
        torch.testing.assert_close(ddp["model"][name], w, rtol=0, atol=1e-5)
    for a, b in zip(h_single.epochs, h_ddp.epochs, strict=True):
        for key, value in a.items():
            if key.startswith(("train_", "val_")) and value is not None:
                assert b[key] == pytest.approx(value, abs=1e-4), key
    assert len(h_single.steps) == len(h_ddp.steps) > 0


# ------------------------------------------------------------------------------------ errors


def test_checkpoint_loads_with_weights_only(trained):
    net, history, folder = trained
    files = sorted(folder.glob("step-*.pt"))
    assert [f.name for f in files] == ["step-00000030.pt", "step-00000032.pt"]  # newest two
    state = torch.load(files[-1], weights_only=True)
    assert state["arch"] == "SmallCNN" and state["num_classes"] == NUM_CLASSES
    assert state["data"] == {"epoch": 4, "batches_done": 0, "loader": {
        "seed": 0, "batch_size": 32, "num_examples": 256, "shuffle": True, "drop_last": False}}
    assert History.from_dict(state["history"]) == history
    fresh = SmallCNN(bn=True)
    load_checkpoint(files[-1], fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


def test_wrong_architecture_is_named(trained):
    _, _, folder = trained
    newest = sorted(folder.glob("step-*.pt"))[-1]
    other = resnet18(small_input=True, num_classes=NUM_CLASSES)
    with pytest.raises(CheckpointError, match="SmallCNN.*ResNet") as err:
        load_checkpoint(newest, other)
    assert str(newest) in str(err.value) and "folder of its own" in str(err.value)
    loader = BatchLoader(make_data(64, seed=1), 32)
    with pytest.raises(CheckpointError, match="ResNet"):
        fit(other, loader, epochs=1, device="cpu", checkpoint_dir=folder, resume="auto", progress=False)
    with pytest.raises(FileExistsError, match="resume='auto'"):  # never mix two runs in one folder
        fit(SmallCNN(bn=True), loader, epochs=1, device="cpu", checkpoint_dir=folder, progress=False)


def test_truncated_checkpoint_is_named(trained, tmp_path):
    _, _, folder = trained
    good = sorted(folder.glob("step-*.pt"))[-1].read_bytes()
    bad = tmp_path / "step-00000032.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "Delete it" in str(err.value)


class GreedyNet(nn.Module):
    """Raises the real out-of-memory exception type on batches of more than 8 examples."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.fc(x)


def test_out_of_memory_suggests_a_batch_size():
    loader = BatchLoader((torch.randn(64, 4), torch.randint(0, 2, (64,))), 32)
    with pytest.raises(torch.OutOfMemoryError, match=r"batch of 32 images.*batch_size=16") as err:
        fit(GreedyNet(), loader, epochs=1, lr=0.2, device="cpu", progress=False)
    assert "lr=0.1" in str(err.value) and "Tried to allocate" in str(err.value)
    assert isinstance(err.value.__cause__, torch.OutOfMemoryError)


# ------------------------------------------------------------------------------------ history, groups


def test_history_round_trips_and_plots(trained, tmp_path):
    _, history, _ = trained
    history.to_json(tmp_path / "h.json")
    assert History.from_json(tmp_path / "h.json") == history
    history.to_csv(tmp_path / "h.csv")
    assert History.from_csv(tmp_path / "h.csv").epochs == history.epochs
    fig = history.plot(title="smoke")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    matplotlib.pyplot.close(fig)


def test_no_weight_decay_on_norm_layers_and_biases():
    net = resnet18(small_input=True, num_classes=10)
    optimizer = make_optimizer(net, TrainConfig(weight_decay=0.05))
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.05 for p in g["params"]}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    for module in net.modules():
        for name, p in module.named_parameters(recurse=False):
            is_weight = isinstance(module, (nn.Conv2d, nn.Linear)) and name == "weight"
            assert id(p) in (decay if is_weight else no_decay), (type(module).__name__, name)
    assert len(decay) + len(no_decay) == len(list(net.parameters()))


def test_amp_dtype_is_float32_on_a_cpu_unless_forced_and_rejects_unknown_settings():
    assert amp_dtype(None, "cpu") is None and amp_dtype("fp32", "cuda") is None and amp_dtype(False, "cuda") is None
    assert amp_dtype("bf16", "cpu") is torch.bfloat16 and amp_dtype("fp16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="amp must be None .* got 'int8'"):
        amp_dtype("int8", "cpu")


# ------------------------------------------------------------------------------------ precise BatchNorm


class _Backboned(nn.Module):
    """A backbone with BatchNorm and a head with BatchNorm1d, as fine-tuned networks are."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        return self.head(self.backbone(x))


def _spoil(bn: nn.Module) -> None:
    bn.running_mean.fill_(5.0), bn.running_var.fill_(100.0)


def test_recompute_bn_replaces_moving_averages_by_plain_means_of_the_batches():
    torch.manual_seed(0)
    net = _Backboned()
    bn2d, bn1d = net.backbone[1], net.head[3]
    _spoil(bn2d), _spoil(bn1d)
    batches = [torch.randn(8, 3, 6, 6) * 3 + 1, torch.randn(8, 3, 6, 6)]
    assert recompute_bn(net, batches) == 2
    with torch.no_grad():
        conv = [net.backbone[0](X) for X in batches]
    want_mean = torch.stack([a.mean((0, 2, 3)) for a in conv]).mean(0)
    want_var = torch.stack([a.var((0, 2, 3)) for a in conv]).mean(0)  # unbiased, as BatchNorm keeps it
    torch.testing.assert_close(bn2d.running_mean, want_mean)
    torch.testing.assert_close(bn2d.running_var, want_var)
    assert not net.training and bn2d.momentum == 0.1 and bn1d.momentum == 0.1
    # evaluation mode now normalises each batch's conv outputs to (nearly) zero mean overall
    with torch.no_grad():
        out = torch.cat([net.backbone[1](a) for a in conv])
    assert out.mean((0, 2, 3)).abs().max() < 0.2


def test_recompute_bn_keeps_the_statistics_a_task_freezes():
    torch.manual_seed(0)
    net = _Backboned()
    bn2d, bn1d = net.backbone[1], net.head[3]
    _spoil(bn2d), _spoil(bn1d)
    X = torch.randn(16, 3, 6, 6)
    assert recompute_bn(net, [X], task=Classification(mode="finetune", freeze_bn=True)) == 1
    assert torch.all(bn2d.running_mean == 5.0) and torch.all(bn2d.running_var == 100.0)  # the pretrained ones
    with torch.no_grad():  # the head's statistics: of its inputs through the frozen backbone
        z = net.head[:3](net.backbone.eval()(X))
    torch.testing.assert_close(bn1d.running_mean, z.mean(0))
    torch.testing.assert_close(bn1d.running_var, z.var(0))


def test_recompute_bn_leaves_the_statistics_as_they_were_on_no_batches_or_an_error():
    net = _Backboned()
    bn2d = net.backbone[1]
    _spoil(bn2d)

    def failing():
        yield torch.randn(8, 3, 6, 6)
        raise OSError("disk gone")

    with pytest.raises(ValueError, match="batches were empty"):
        recompute_bn(net, [])
    with pytest.raises(OSError, match="disk gone"):
        recompute_bn(net, failing())
    assert torch.all(bn2d.running_mean == 5.0) and torch.all(bn2d.running_var == 100.0)
    assert bn2d.momentum == 0.1 and not net.training
