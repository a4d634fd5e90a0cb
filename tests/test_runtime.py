"""imagenet_book.start(): profile, device, seed, data and cache roots, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import imagenet_book as ib
from imagenet_book import runtime


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No IMAGENET_BOOK_* variables, and a user cache folder inside tmp_path."""
    for var in (runtime.ENV_PROFILE, runtime.ENV_DATA, runtime.ENV_CACHE, runtime.ENV_DEVICE,
                runtime.ENV_DRIVE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    return tmp_path


def test_argument_beats_env(clean_env, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "local")
    cfg = ib.start("smoke", quiet=True)
    assert cfg.profile is ib.PROFILES["smoke"]
    assert cfg.reasons["profile"] == "argument"


def test_env_beats_default(clean_env, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smoke")
    cfg = ib.start(quiet=True)
    assert cfg.profile.name == "smoke"
    assert runtime.ENV_PROFILE in cfg.reasons["profile"]


def test_default_is_local_without_cuda_and_full_with_it(clean_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ib.start(quiet=True).profile.name == "local"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    cfg = ib.start(quiet=True)
    assert cfg.profile.name == "full"
    assert cfg.device.type == "cuda"
    assert "CUDA available" in cfg.reasons["profile"]


def test_unknown_profile_names_value_and_choices_and_writes_nothing(clean_env, monkeypatch):
    monkeypatch.setenv(runtime.ENV_PROFILE, "smok")
    with pytest.raises(ib.SetupError) as err:
        ib.start()
    message = str(err.value)
    assert "'smok'" in message and runtime.ENV_PROFILE in message
    for name in ib.PROFILES:
        assert name in message
    assert not (clean_env / "xdg").exists(), "start() created folders before failing"


def test_missing_data_root_is_a_clear_error_and_writes_nothing(clean_env, monkeypatch):
    missing = clean_env / "no" / "such" / "data"
    monkeypatch.setenv(runtime.ENV_DATA, str(missing))
    with pytest.raises(ib.SetupError) as err:
        ib.start("smoke")
    assert str(missing) in str(err.value) and runtime.ENV_DATA in str(err.value)
    assert "does not exist" in str(err.value)
    assert not missing.exists() and not (clean_env / "xdg").exists()


def test_data_root_that_is_a_file_is_refused(clean_env, monkeypatch):
    not_a_dir = clean_env / "data.txt"
    not_a_dir.write_text("x")
    monkeypatch.setenv(runtime.ENV_DATA, str(not_a_dir))
    with pytest.raises(ib.SetupError, match="is not a folder"):
        ib.start("smoke")


def test_roots_from_env_and_defaults(clean_env, monkeypatch):
    data = clean_env / "mydata"
    data.mkdir()
    monkeypatch.setenv(runtime.ENV_DATA, str(data))
    cfg = ib.start("smoke", quiet=True)
    assert cfg.data_root == data.resolve()
    assert cfg.cache_root == clean_env / "xdg" / "imagenet_book"
    assert cfg.cache_root.is_dir()


def test_cuda_device_asked_without_cuda_is_refused(clean_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(runtime.ENV_DEVICE, "cuda")
    with pytest.raises(ib.SetupError, match=runtime.ENV_DEVICE):
        ib.start("smoke")
    monkeypatch.setenv(runtime.ENV_DEVICE, "gpu0")
    with pytest.raises(ib.SetupError, match="'gpu0'"):
        ib.start("smoke")


def test_seed_makes_every_generator_repeat(clean_env):
    import random

    import numpy as np

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    ib.start("smoke", seed=7, quiet=True)
    first = draw()
    ib.start("smoke", seed=7, quiet=True)
    assert draw() == first
    ib.start("smoke", seed=8, quiet=True)
    assert draw() != first


def test_prints_exactly_one_line_naming_each_choice(clean_env, capsys):
    cfg = ib.start("smoke")
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    for piece in ("profile=smoke", "(argument)", f"device={cfg.device}", "seed=0",
                  str(cfg.data_root), str(cfg.cache_root)):
        assert piece in out


def test_profiles_differ_in_sizes_only_and_grow():
    smoke, local, full = (ib.PROFILES[n] for n in ("smoke", "local", "full"))
    assert type(smoke) is type(local) is type(full)
    for field in ("img_size", "batch_size", "epochs"):
        assert getattr(smoke, field) <= getattr(local, field) <= getattr(full, field), field
    assert smoke.train_per_class < local.train_per_class and full.train_per_class is None
    assert full.allow_download and not smoke.allow_download


# ----------------------------------------------------------------------------- Google Colab
# Colab is faked only at the import boundary: a tiny `google.colab` module in sys.modules (Colab's
# kernel imports the real one at start-up) whose drive.mount records the call and makes the
# MyDrive folder the real mount makes, with a tmp folder as the mount point.


@pytest.fixture
def fake_colab(monkeypatch, clean_env):
    import sys
    import types

    mounts = []

    def mount(mountpoint, force_remount=False):
        mounts.append(mountpoint)
        (Path(mountpoint) / "MyDrive").mkdir(parents=True, exist_ok=True)

    drive = types.ModuleType("google.colab.drive")
    drive.mount = mount
    colab = types.ModuleType("google.colab")
    colab.drive = drive
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.drive", drive)
    monkeypatch.setattr(runtime, "COLAB_DRIVE_MOUNT", clean_env / "content" / "drive")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    return mounts


def test_drive_on_colab_keeps_the_runs_on_drive_and_the_rest_local(fake_colab, clean_env, capsys):
    cfg = ib.start(drive=True)
    mount = clean_env / "content" / "drive"
    runs = mount / "MyDrive" / "imagenet_book"
    assert fake_colab == [str(mount)]
    assert cfg.cache_root == clean_env / "xdg" / "imagenet_book" and cfg.cache_root.is_dir()
    for name in runtime.DRIVE_FOLDERS:
        assert (cfg.cache_root / name).is_symlink() and (cfg.cache_root / name).resolve() == runs / name
    assert "Google Drive" in cfg.reasons["cache_root"] and str(runs) in cfg.reasons["cache_root"]
    # What pretrain() resumes from is written through the link onto Drive, so it outlives the
    # Colab session; stand-ins and decoded caches are made on the machine's own disk.
    checkpoint = ib.pretrain.default_checkpoint(cfg)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"run")
    assert (runs / checkpoint.relative_to(cfg.cache_root)).read_bytes() == b"run"
    assert not (runs / "standins").exists() and not (runs / "fast").exists()
    assert cfg.profile.name == "full" and cfg.device.type == "cuda"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(cfg.cache_root) in out and "Google Drive" in out


def test_drive_refuses_a_local_run_folder_before_mounting(fake_colab, clean_env):
    local = clean_env / "xdg" / "imagenet_book" / "checkpoints"
    local.mkdir(parents=True)
    (local / "run.pt").write_bytes(b"x")
    with pytest.raises(ib.SetupError) as err:
        ib.start(drive=True)
    assert str(local) in str(err.value) and "MyDrive" in str(err.value)
    assert fake_colab == [] and (local / "run.pt").read_bytes() == b"x"


def test_drive_from_env_and_twice_in_a_row(fake_colab, monkeypatch):
    monkeypatch.setenv(runtime.ENV_DRIVE, "1")
    first = ib.start(quiet=True)
    second = ib.start(quiet=True)  # running the notebook again: Colab's mount is idempotent
    assert first.cache_root == second.cache_root and len(fake_colab) == 2
    assert runtime.ENV_DRIVE in first.reasons["cache_root"]


def test_colab_without_drive_offers_it_and_mounts_nothing(fake_colab, clean_env):
    cfg = ib.start(quiet=True)
    assert fake_colab == []
    assert cfg.cache_root == clean_env / "xdg" / "imagenet_book"
    assert "ib.start(drive=True)" in cfg.reasons["cache_root"]


def test_colab_without_gpu_says_how_to_get_one(fake_colab, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = ib.start(quiet=True)
    assert cfg.device.type == "cpu" and cfg.profile.name == "local"
    assert "Change runtime type" in cfg.reasons["device"]
    assert "GPU" in cfg.summary()


def test_drive_outside_colab_changes_nothing(clean_env, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    cfg = ib.start("smoke", drive=True, quiet=True)
    assert cfg.cache_root == clean_env / "xdg" / "imagenet_book"
    assert "not on Colab" in cfg.reasons["cache_root"]
    assert "Change runtime type" not in cfg.reasons["device"]


def test_drive_with_a_cache_variable_links_the_runs_into_that_cache(fake_colab, clean_env, monkeypatch):
    cache = clean_env / "mycache"
    cache.mkdir()
    monkeypatch.setenv(runtime.ENV_CACHE, str(cache))
    cfg = ib.start(drive=True, quiet=True)
    assert cfg.cache_root == cache and (cache / "checkpoints").is_symlink()
    drive = clean_env / "content" / "drive" / "MyDrive" / "imagenet_book"
    assert (cache / "checkpoints").resolve() == drive / "checkpoints"


def test_invalid_drive_variable_names_the_value(clean_env, monkeypatch):
    monkeypatch.setenv(runtime.ENV_DRIVE, "maybe")
    with pytest.raises(ib.SetupError, match="'maybe'.*IMAGENET_BOOK_DRIVE"):
        ib.start("smoke")
    assert not (clean_env / "xdg").exists()


def test_roots_given_as_arguments_or_options_are_reported_as_such(clean_env, monkeypatch, capsys):
    """A root passed to start() (or by the command line's --data-root) is named as such, in the
    printed line and in errors, not blamed on the environment variable."""
    monkeypatch.setenv(runtime.ENV_DATA, str(clean_env))  # set, but overridden by the argument
    missing = clean_env / "no" / "such" / "data"
    with pytest.raises(ib.SetupError) as err:
        ib.start("smoke", data_root=missing)
    assert f"{str(missing)!r} (from argument data_root=) does not exist" in str(err.value)
    with pytest.raises(ib.SetupError) as err:
        ib.start("smoke", cache_root=missing, origin="command line")
    assert "(from option --cache-root)" in str(err.value) and "from env" not in str(err.value)
    data, cache = clean_env / "data", clean_env / "cache"
    data.mkdir()
    cache.mkdir()
    cfg = ib.start("smoke", data_root=data, cache_root=cache, origin="command line")
    line = capsys.readouterr().out
    assert cfg.data_root == data and cfg.cache_root == cache
    assert f"data={data} (option --data-root)" in line and f"cache={cache} (option --cache-root)" in line
    assert ib.start("smoke", data_root=data, quiet=True).reasons["data_root"] == "argument data_root="
    assert ib.start("smoke", quiet=True).reasons["data_root"] == f"env {runtime.ENV_DATA}"
    with pytest.raises(ib.SetupError, match="option --profile"):
        ib.start("smok", origin="command line")


def test_a_relative_env_root_is_read_from_the_current_folder_and_says_so(clean_env, monkeypatch):
    """A notebook runs in chapters/, not where `make` or Jupyter started: a relative
    IMAGENET_BOOK_DATA is resolved from the kernel's folder, and the setup line and the error say
    which folder that was, and that an absolute path avoids the guess."""
    (clean_env / "chapters").mkdir()
    (clean_env / "data").mkdir()
    monkeypatch.chdir(clean_env / "chapters")
    monkeypatch.setenv(runtime.ENV_DATA, "../data")
    cfg = ib.start("smoke", quiet=True)
    assert cfg.data_root == clean_env / "data"
    assert cfg.reasons["data_root"] == (f"env {runtime.ENV_DATA}='../data', relative to the current folder "
                                        f"{str(clean_env / 'chapters')!r}")
    monkeypatch.setenv(runtime.ENV_DATA, "shared/data")  # meant from the repository root
    with pytest.raises(ib.SetupError) as err:
        ib.start("smoke", quiet=True)
    message = str(err.value)
    assert f"{str(clean_env / 'chapters' / 'shared' / 'data')!r}" in message and "does not exist" in message
    assert f"relative to the current folder {str(clean_env / 'chapters')!r}" in message
    assert "(an absolute path: notebooks run in their own folder)" in message
    monkeypatch.setenv(runtime.ENV_DATA, str(clean_env / "data"))  # absolute: no note
    assert ib.start("smoke", quiet=True).reasons["data_root"] == f"env {runtime.ENV_DATA}"


def _read_only_folder(tmp_path: Path) -> Path:
    """A real folder in which no file can be created: chmod 555, or, for root (whom permissions do
    not stop), a folder of a read-only file system such as /sys."""
    import os
    import tempfile

    candidates = [tmp_path / "read-only", Path("/sys/kernel"), Path("/proc/sys")]
    candidates[0].mkdir()
    candidates[0].chmod(0o555)
    for folder in candidates:
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError:
            return folder
        if folder == candidates[0]:
            os.chmod(folder, 0o755)
    pytest.skip("no read-only folder on this machine")


def test_a_read_only_cache_root_is_refused_at_start(clean_env, monkeypatch):
    read_only = _read_only_folder(clean_env)
    monkeypatch.setenv(runtime.ENV_CACHE, str(read_only))
    with pytest.raises(ib.SetupError) as err:
        ib.start("smoke", quiet=True)
    message = str(err.value)
    assert str(read_only) in message and f"env {runtime.ENV_CACHE}" in message
    assert f"set {runtime.ENV_CACHE} to an existing, writable folder" in message
    monkeypatch.delenv(runtime.ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only / "xdg"))  # the default root, unwritable
    with pytest.raises(ib.SetupError, match=f"set {runtime.ENV_CACHE} to a writable folder"):
        ib.start("smoke", quiet=True)


def test_mps_asked_without_mps_is_refused(clean_env, monkeypatch):
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    monkeypatch.setenv(runtime.ENV_DEVICE, "mps")
    with pytest.raises(ib.SetupError, match=f"'mps' \\(from env {runtime.ENV_DEVICE}\\).*MPS"):
        ib.start("smoke", quiet=True)
