"""imagenet_book.start(): profile, device, seed, data and cache roots, and its errors."""

from __future__ import annotations

import pytest
import torch

import imagenet_book as ib
from imagenet_book import runtime


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No IMAGENET_BOOK_* variables, and a user cache folder inside tmp_path."""
    for var in (runtime.ENV_PROFILE, runtime.ENV_DATA, runtime.ENV_CACHE, runtime.ENV_DEVICE):
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
