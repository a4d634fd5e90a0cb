"""What pretraining does with its files: it never replaces or deletes a run without being asked.

Issue 12: a run with other settings silently replaced the finished checkpoint the fine-tuning
chapters load; a re-run with any changed setting deleted an interrupted run; two processes with
the same name deleted each other's live run folder; Ctrl-C during a save left a temporary file;
messages about a refused pickle, a missing checkpoint or an edited checkpoint misled.

Everything here is real: checkpoints written by the package (smoke profile, the built-in
stand-in, one epoch of 5 steps), real processes stopped, killed and interrupted with signals, real
files. Nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import imagenet_book as ib
from imagenet_book import cli, recipe, runtime
from imagenet_book.pretrain import (
    CHECKPOINT_FORMAT,
    PretrainError,
    checkpoint_stem,
    default_checkpoint,
    evaluate_checkpoint,
    load_pretrained,
    pretrain,
    read_pretrained,
)

STEM = "resnet18-standin-smoke"  # the smoke profile's default run on the stand-in
POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX signals (SIGSTOP, SIGKILL, SIGINT)")


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGENET_BOOK_")}
    env.update(IMAGENET_BOOK_PROFILE="smoke", IMAGENET_BOOK_CACHE=str(cache), OMP_NUM_THREADS="1",
               IMAGENET_BOOK_DEVICE="cpu", **extra)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imagenet_book", *args]


def _run(*args: str, cache: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), capture_output=True, text=True, timeout=timeout,
                          env=_env(cache))


def _files(folder: Path, stem: str) -> dict[str, bytes]:
    return {ext: (folder / f"{stem}{ext}").read_bytes() for ext in (".pt", ".json", ".csv")}


def _one_line(err: str) -> str:
    """The CLI's whole stderr for a user error: exactly one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name or p.suffix == ".lock"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def smoke(cache, monkeypatch):
    """``start("smoke")`` on the CPU with the module's cache; ``smoke(seed=1)`` for another seed."""
    monkeypatch.setenv(runtime.ENV_CACHE, str(cache))
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    monkeypatch.delenv(runtime.ENV_DATA, raising=False)
    monkeypatch.delenv(runtime.ENV_PROFILE, raising=False)
    return lambda seed=0: ib.start("smoke", seed=seed, quiet=True)


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory) -> Path:
    """A folder with the smoke profile's default run on the stand-in, finished."""
    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(runtime.ENV_CACHE, str(cache))
        mp.setenv(runtime.ENV_DEVICE, "cpu")
        mp.delenv(runtime.ENV_DATA, raising=False)
        result = pretrain(ib.start("smoke", quiet=True), "standin", out_dir=out, progress=False,
                          log=None)
    assert result.checkpoint == out / f"{STEM}.pt"
    return out


# ------------------------------------------------------------- 1. names: other sizes, other files


def test_other_sizes_write_their_own_file_and_keep_the_default_run(finished, cache, smoke):
    """The issue's command: `pretrain --epochs N` after a finished run replaced its .pt, .json
    and .csv without a word."""
    before = _files(finished, STEM)
    done = _run("pretrain", "--data", "standin", "--epochs", "2", "--out", str(finished),
                "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _files(finished, STEM) == before
    written = Path(next(line for line in done.stdout.splitlines()
                        if line.startswith("checkpoint: ")).split(": ", 1)[1])
    assert written.parent == finished and written.name.startswith(f"{STEM}-") and written.is_file()
    assert read_pretrained(written).settings["recipe"]["epochs"] == 2
    # The name the fine-tuning chapters load is still the profile's default run.
    assert default_checkpoint(smoke(), "resnet18", "standin").name == f"{STEM}.pt"


def test_names_the_default_run_by_the_profile_and_other_sizes_by_a_hash(smoke):
    cfg = smoke()
    p = cfg.profile
    assert checkpoint_stem(cfg, "resnet18", "standin") == STEM
    # The profile's own sizes, and the learning rate of the scaling rule, are the default run.
    assert checkpoint_stem(cfg, "resnet18", "standin", epochs=p.epochs, img_size=p.img_size,
                           batch_size=p.batch_size, lr=0.1 * p.batch_size / 256) == STEM
    # The recipe's own weight decay, and no held-out share, are the default run too.
    assert checkpoint_stem(cfg, "resnet18", "standin", weight_decay=recipe.PRETRAIN_WEIGHT_DECAY, holdout=0.0) == STEM
    others = [dict(epochs=p.epochs + 1), dict(img_size=p.img_size * 2), dict(batch_size=8),
              dict(lr=0.05), dict(max_steps=2), dict(epochs=p.epochs + 1, max_steps=2),
              dict(weight_decay=5e-4), dict(holdout=0.1), dict(weight_decay=5e-4, holdout=0.1)]
    stems = [checkpoint_stem(cfg, "resnet18", "standin", **sizes) for sizes in others]
    assert len(set(stems)) == len(others) and all(s.startswith(f"{STEM}-") for s in stems)
    assert stems == [checkpoint_stem(cfg, "resnet18", "standin", **sizes) for sizes in others]
    # A held-out share is a fraction of each class; a weight decay is not negative (refused before any work).
    with pytest.raises(PretrainError, match="holdout is a share of each training class"):
        pretrain(cfg, "standin", holdout=1.0, log=None)
    with pytest.raises(recipe.RecipeError, match="weight_decay must be >= 0"):
        recipe.pretrain_recipe(1, 8, weight_decay=-1e-4)


def test_a_run_in_another_precision_has_a_name_and_settings_of_its_own(finished, cache, smoke):
    """`pretrain --amp bf16 --channels-last` (chapter 11's recorded runs): never the float32 run's file;
    the run's settings, its report line and its saved weights' memory format say how it computed."""
    cfg = smoke()
    assert checkpoint_stem(cfg, "resnet18", "standin", amp=None, channels_last=None) == STEM
    names = {checkpoint_stem(cfg, "resnet18", "standin", max_steps=1, **c)
             for c in ({}, {"channels_last": True}, {"amp": "bf16", "channels_last": True})}
    assert len(names) == 3
    before = _files(finished, STEM)
    done = _run("pretrain", "--data", "standin", "--max-steps", "1", "--amp", "bf16", "--channels-last",
                "--out", str(finished), "--no-progress", cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    stem = checkpoint_stem(cfg, "resnet18", "standin", max_steps=1, amp="bf16", channels_last=True)
    assert f"checkpoint: {finished / stem}.pt" in done.stdout
    assert _files(finished, STEM) == before  # the float32 run is untouched
    saved = read_pretrained(finished / f"{stem}.pt")
    assert saved.settings["amp"] == "bf16" and saved.settings["channels_last"] is True
    assert any(m.endswith("(amp bf16, channels_last True)") and "peak lr" in m for m in done.stdout.splitlines())
    conv = saved.state_dict["conv1.weight"]  # trained in channels_last, saved as it was
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_a_finished_run_with_other_settings_is_refused_until_restart(finished, tmp_path, smoke):
    """Same name (the seed is not part of it), other settings: refused, file untouched."""
    out = tmp_path / "runs"
    out.mkdir()
    for ext in (".pt", ".json", ".csv"):
        shutil.copy2(finished / f"{STEM}{ext}", out)
    before = _files(out, STEM)
    with pytest.raises(PretrainError) as err:
        pretrain(smoke(seed=1), "standin", out_dir=out, progress=False, log=None)
    message = str(err.value)
    assert str(out / f"{STEM}.pt") in message and "seed 0 (here 1)" in message
    assert "--out" in message and "--restart" in message
    assert _files(out, STEM) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{STEM}{e}" for e in (".pt", ".json", ".csv"))
    # Asked to: replaced by the new run once it has finished.
    result = pretrain(smoke(seed=1), "standin", out_dir=out, restart=True, progress=False, log=None)
    assert result.trained and read_pretrained(out / f"{STEM}.pt").settings["seed"] == 1
    assert not _leftovers(out) and not (out / f"{STEM}.run").exists()


def test_a_run_made_before_a_recipe_field_existed_is_still_the_same_run(finished, tmp_path, smoke):
    """A package update that adds a recipe field with a default that changes nothing (here: the
    checkpoint's settings lack grad_clip and backbone_lr_scale, as before they existed) must not
    turn the chapter's finished run into "a run with other settings" that pretraining refuses."""
    out = tmp_path / "runs"
    out.mkdir()
    state = torch.load(finished / f"{STEM}.pt", weights_only=True)
    settings = json.loads(state["pretrain"]["settings"])
    for key in ("grad_clip", "backbone_lr_scale"):
        settings["recipe"].pop(key)
    state["pretrain"]["settings"] = json.dumps(settings, sort_keys=True)
    torch.save(state, out / f"{STEM}.pt")
    result = pretrain(smoke(), "standin", out_dir=out, progress=False, log=None)
    assert not result.trained  # found, loaded: not refused, not trained again


# ------------------------------------------------------------- 2. unfinished runs, two processes


@POSIX
def test_two_processes_never_share_a_run_and_an_unfinished_run_is_kept(cache, tmp_path):
    """A runs and is paused (SIGSTOP) with a step checkpoint written. B, same command: refused by
    the lock (before the fix it took over A's live run). B2, another seed: refused too. A is
    killed (SIGKILL): its lock is recognised as abandoned, but B3 (another seed) is refused
    because the unfinished run has other settings (before the fix it was deleted). C, A's
    command, continues A's run and finishes it."""
    out = tmp_path / "runs"
    command = ["pretrain", "--data", "standin", "--out", str(out), "--epochs", "40",
               "--max-steps", "6", "--checkpoint-every", "1", "--no-progress"]
    a = subprocess.Popen(_cli(*command), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=_env(cache))
    try:
        deadline = time.monotonic() + 150
        while not list(out.glob("*.run/step-*.pt")):
            assert a.poll() is None, "A ended before writing a step checkpoint"
            assert time.monotonic() < deadline, "A wrote no step checkpoint in time"
            time.sleep(0.01)
        os.kill(a.pid, signal.SIGSTOP)
        (run_dir,) = out.glob("*.run")
        stem = run_dir.name[:-len(".run")]
        lock = out / f"{stem}.lock"
        steps = sorted(p.name for p in run_dir.glob("step-*.pt"))

        for extra in ([], ["--seed", "1"]):
            b = _run(*command, *extra, cache=cache)
            assert b.returncode == 2, b.stdout + b.stderr
            line = _one_line(b.stderr)
            assert str(lock) in line and f"process {a.pid}" in line
            assert sorted(p.name for p in run_dir.glob("step-*.pt")) == steps
        assert json.loads(lock.read_text())["pid"] == a.pid
    finally:
        a.kill()  # SIGKILL: no clean-up runs, the lock stays behind
        a.wait()
    assert lock.is_file()

    b3 = _run(*command, "--seed", "1", cache=cache)
    assert b3.returncode == 2, b3.stdout + b3.stderr
    line = _one_line(b3.stderr)
    assert str(run_dir) in line and "seed 0 (here 1)" in line and "--restart" in line
    assert "took over the lock" in b3.stdout  # A is gone: its lock did not block B3
    assert sorted(p.name for p in run_dir.glob("step-*.pt")) == steps and not lock.exists()

    c = _run(*command, cache=cache)
    assert c.returncode == 0, c.stdout + c.stderr
    assert "continuing the unfinished run" in c.stdout
    ckpt = read_pretrained(out / f"{stem}.pt")
    assert ckpt.settings["seed"] == 0 and ckpt.history.steps[-1]["step"] == 6
    assert not run_dir.exists() and not _leftovers(out)


@pytest.mark.parametrize("content", [
    json.dumps({"pid": 1, "host": "a-colab-vm-that-disconnected", "started": None, "since": "then"}),
    ""])  # an owner that died between creating the lock and writing it
def test_a_lock_that_cannot_be_checked_is_respected_until_it_goes_stale(tmp_path, content):
    """A lock of another machine (a run folder on Google Drive) or an unreadable one: its pid
    says nothing here, so it holds until its owner has stopped touching it for a while."""
    from imagenet_book import files

    lock = tmp_path / "run.lock"
    lock.write_text(content)
    with pytest.raises(files.FileLockedError) as err:
        with files.hold_lock(lock, what="the run"):
            pass
    assert str(lock) in str(err.value) and lock.read_text() == content
    old = time.time() - max(files.LOCK_STALE_S, files.UNREADABLE_LOCK_AGE_S) - 60
    os.utime(lock, (old, old))
    taken: list[str] = []
    with files.hold_lock(lock, what="the run", on_stale=taken.append):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert len(taken) == 1 and str(lock) in taken[0] and not lock.exists()


# ------------------------------------------------------------- 3. the output folder, checked first


def test_an_output_folder_that_cannot_be_written_is_refused_before_training(cache, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    monkeypatch.setenv(runtime.ENV_DEVICE, "cpu")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "runs"
    code = cli.main(["pretrain", "--data", "standin", "--out", str(out), "--no-progress",
                     "--cache-root", str(cache)])
    captured = capsys.readouterr()
    assert code == 2
    line = _one_line(captured.err)
    assert str(out) in line and "--out" in line
    assert "pretrain:" not in captured.out  # no data prepared, no training started


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="permission bits do not stop root")
def test_a_read_only_output_folder_is_refused_before_training(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    out = tmp_path / "read-only"
    out.mkdir()
    out.chmod(0o555)
    try:
        code = cli.main(["pretrain", "--data", "standin", "--out", str(out), "--no-progress",
                         "--cache-root", str(cache)])
    finally:
        out.chmod(0o755)
    captured = capsys.readouterr()
    assert code == 2 and str(out) in _one_line(captured.err) and "pretrain:" not in captured.out


# ------------------------------------------------------------- 4. messages that say what happened


class _RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_a_pickle_that_would_run_code_is_refused_for_safety(tmp_path, cache, capsys, monkeypatch):
    marker = tmp_path / "the-code-ran"
    evil = tmp_path / "resnet18-imagenette-full.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _RunsCode(marker)}, evil)
    with pytest.raises(PretrainError) as err:
        read_pretrained(evil)
    message = str(err.value)
    assert str(evil) in message and "for safety" in message and "not plain tensors" in message
    assert "system" in message  # what it asked to run
    assert "weights_only=False" not in message and "truncated or corrupt" not in message
    assert not marker.exists()
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    assert cli.main(["evaluate", "--checkpoint", str(evil), "--cache-root", str(cache)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "for safety" in line and "weights_only=False" not in line and not marker.exists()


def test_finetune_without_from_suggests_the_command_that_makes_its_file(tmp_path, cache, smoke):
    """The command the message suggests, run as printed from a shell that has none of the
    book's variables, writes the very file fine-tuning then finds (before the fix it wrote
    into the default cache root, not the --cache-root the fine-tuning used)."""
    root = tmp_path / "cache-root"
    root.mkdir()
    done = _run("finetune", "--task", "classify", "--cache-root", str(root), cache=cache)
    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_line(done.stderr)
    expected = default_checkpoint(dataclasses.replace(smoke(), cache_root=root))
    assert str(expected) in line
    suggested = line.split("from a terminal: ", 1)[1].split("; or ", 1)[0]
    argv = shlex.split(suggested)
    assert argv[:4] == ["python", "-m", "imagenet_book", "pretrain"]
    shell = {k: v for k, v in os.environ.items() if not k.startswith("IMAGENET_BOOK_")}
    shell.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), IMAGENET_BOOK_DEVICE="cpu", OMP_NUM_THREADS="1")
    made = subprocess.run([sys.executable, *argv[1:], "--no-progress"], capture_output=True,
                          text=True, timeout=180, env=shell)
    assert made.returncode == 0, made.stdout + made.stderr
    assert expected.is_file()
    tuned = _run("finetune", "--task", "classify", "--mode", "probe", "--epochs", "1",
                 "--cache-root", str(root), "--out", str(tmp_path / "ft"), "--no-progress",
                 cache=cache)
    assert tuned.returncode == 0, tuned.stdout + tuned.stderr
    saved = Path(next(line for line in tuned.stdout.splitlines()
                      if line.startswith("saved: ")).split(": ", 1)[1])
    info = json.loads(saved.with_suffix(".json").read_text())
    assert info["checkpoint"] == str(expected)


def test_an_architecture_label_that_does_not_fit_the_weights_is_one_clear_error(
        finished, tmp_path, smoke, cache, capsys, monkeypatch):
    state = torch.load(finished / f"{STEM}.pt", map_location="cpu", weights_only=True)
    state["pretrain"]["arch"] = "resnet34"  # the weights stay a resnet18's
    edited = tmp_path / "edited.pt"
    torch.save(state, edited)
    cfg = smoke()
    for call in (lambda: read_pretrained(edited),
                 lambda: load_pretrained(cfg, "resnet34", "standin", path=edited),
                 lambda: evaluate_checkpoint(cfg, edited, progress=False)):
        with pytest.raises(PretrainError) as err:
            call()
        message = str(err.value)
        assert str(edited) in message and "resnet34" in message and "do not fit" in message
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    assert cli.main(["evaluate", "--checkpoint", str(edited), "--cache-root", str(cache)]) == 2
    assert "do not fit" in _one_line(capsys.readouterr().err)


# ------------------------------------------------------------- 6. nothing half written


def test_save_atomically_keeps_the_old_file_and_no_temporary_on_an_exception(tmp_path):
    from imagenet_book.files import save_atomically

    target = tmp_path / "history.json"
    target.write_text("old")

    def interrupted(text, path):
        path.write_text(text[:3])
        raise KeyboardInterrupt  # what Ctrl-C raises, half way through a write

    with pytest.raises(KeyboardInterrupt):
        save_atomically("new content", target, interrupted)
    assert target.read_text() == "old" and sorted(tmp_path.iterdir()) == [target]
    assert save_atomically("new", target, lambda t, p: p.write_text(t)) == target
    assert target.read_text() == "new" and sorted(tmp_path.iterdir()) == [target]


def test_a_full_disk_is_said_as_such_and_the_old_file_is_kept(small_disk, tmp_path):
    """torch.save on a full disk says only "unexpected pos 576 vs 534"; the book says what it is."""
    from imagenet_book.files import DiskFullError, save_atomically

    disk = small_disk.path
    target = disk / "checkpoint.pt"
    save_atomically({"w": torch.zeros(10)}, target, lambda s, p: torch.save(s, p))
    old = target.read_bytes()
    with pytest.raises(DiskFullError) as caught:  # 4 MB on a 2 MiB disk
        save_atomically({"w": torch.zeros(1_000_000)}, target, lambda s, p: torch.save(s, p))
    message = str(caught.value)
    assert message.startswith("The disk is full") and str(target) in message
    assert "IMAGENET_BOOK_CACHE" in message and "--out" in message
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == old and sorted(disk.iterdir()) == [target]
    with pytest.raises(DiskFullError):  # a plain Python write (a run's JSON record) alike
        save_atomically("x" * 4_000_000, disk / "record.json", lambda t, p: p.write_text(t))
    assert sorted(disk.iterdir()) == [target]

    def broken(text, path):
        raise ValueError("not a disk problem")

    with pytest.raises(ValueError, match="not a disk problem"):  # other errors stay themselves
        save_atomically("new", tmp_path / "other.json", broken)


@POSIX
def test_pretraining_onto_a_full_disk_says_so_and_runs_again_once_there_is_room(cache, small_disk):
    out = small_disk.path / "runs"
    command = ("pretrain", "--data", "standin", "--out", str(out), "--no-progress")
    done = _run(*command, cache=cache)
    assert done.returncode == 2, done.stdout + done.stderr
    line = _one_line(done.stderr)
    assert "The disk is full" in line and str(out) in line and "unexpected pos" not in line
    assert not _leftovers(out), _leftovers(out)
    small_disk.resize("256m")  # room made
    done = _run(*command, cache=cache)
    assert done.returncode == 0, done.stdout + done.stderr
    assert read_pretrained(out / f"{STEM}.pt").data == "standin"  # the whole checkpoint, readable


@POSIX
def test_ctrl_c_while_a_step_checkpoint_is_saved_leaves_no_temporary_file(cache, tmp_path):
    """A real SIGINT, sent while the engine writes a step checkpoint (its temporary file is
    there): the CLI says how to continue, and no temporary file or lock stays behind."""
    out = tmp_path / "runs"
    p = subprocess.Popen(_cli("pretrain", "--data", "standin", "--out", str(out), "--epochs", "40",
                              "--checkpoint-every", "1", "--no-progress"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(cache))
    deadline = time.monotonic() + 150
    seen = False
    while p.poll() is None and time.monotonic() < deadline and not seen:
        for run_dir in out.glob("*.run"):  # the 2nd step's checkpoint, so a 1st one is kept
            names = [e.name for e in os.scandir(run_dir)]
            seen = any(n.startswith("step-") for n in names) and any(".tmp-" in n for n in names)
        if seen:
            p.send_signal(signal.SIGINT)
        else:
            time.sleep(0.001)
    if not seen:
        p.kill()
    stdout, stderr = p.communicate(timeout=60)
    assert seen, "never saw a step checkpoint being written"
    assert p.returncode == 130, stdout + stderr
    assert "interrupted. Run the same command again to continue." in stderr
    assert not _leftovers(out), _leftovers(out)
    assert list(out.glob("*.run/step-*.pt"))  # the run is kept, to continue
    assert "Traceback" not in stderr
