"""Measuring speed (imagenet_book.speed): latency is a median of real forward passes, the
training-speed table times every setting against the baseline of the same run, and a setting
that cannot run here says so instead of giving a number."""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

import imagenet_book as ib
from imagenet_book import speed
from imagenet_book.speed import SpeedSetting


class Sleepy(nn.Module):
    """A 'network' whose forward pass takes a known time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0
        self.modes: list[bool] = []

    def forward(self, x):
        self.calls += 1
        self.modes.append(self.training)
        time.sleep(self.seconds)
        return x * self.scale


def test_latency_is_the_median_of_timed_forward_passes():
    net = Sleepy(0.02).train()
    t = speed.latency(net, (2, 3, 8, 8), repeats=3, warmup=2)
    assert net.calls == 5 and len(t.times) == 3
    assert 0.02 <= t.seconds < 0.5 and t.ms == pytest.approx(1000 * t.seconds)
    assert t.images_per_s == pytest.approx(2 / t.seconds)
    assert net.modes == [False] * 5 and net.training  # measured in eval mode, mode restored
    with pytest.raises(ValueError, match="repeats"):
        speed.latency(net, repeats=0)


def test_speed_settings_add_one_switch_each_to_the_fast_pipeline():
    settings = speed.speed_settings(16, "cpu")
    assert settings[0] == SpeedSetting("baseline", batch_size=16)
    assert [s.name for s in settings] == ["baseline", "+ fast input pipeline", "fast + channels_last",
                                          "fast + AMP (bf16)", "fast + 2x batch", "fast + torch.compile"]
    fields = ("loader", "channels_last", "amp", "compile", "batch_size")

    def changed(a, b):
        return [f for f in fields if getattr(a, f) != getattr(b, f)]

    assert changed(settings[0], settings[1]) == ["loader"]
    for s in settings[2:]:  # exactly one switch on top of the fast pipeline
        assert len(changed(settings[1], s)) == 1
    every = speed.speed_settings(16, "cpu", combined=True)[-1]
    assert every.name == "fast + all of them"
    assert (every.loader, every.channels_last, every.amp, every.batch_size, every.compile) == \
        ("fast", True, "bf16", 32, True)
    with pytest.raises(ValueError, match="loader"):
        SpeedSetting("x", loader="magic")


def test_compile_support_explains_a_missing_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    ok, why = speed.compile_support("cpu")
    assert not ok and "no-such-compiler-here" in why and "install" in why
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", "")
    ok, why = speed.compile_support("cpu")
    assert not ok and "g++" in why


def test_training_speed_times_each_setting_against_the_baseline(smoke_cfg, monkeypatch):
    monkeypatch.setattr(speed, "compile_support", lambda device: (False, "no compiler in this test"))
    settings = [SpeedSetting("baseline", batch_size=8), SpeedSetting("fast", loader="fast", batch_size=8),
                SpeedSetting("compiled", loader="fast", compile=True, batch_size=8)]
    table = speed.training_speed(smoke_cfg, settings=settings, steps=1, repeats=2, warmup_steps=1, workers=0)
    base, fast, compiled = table.rows
    assert base.status == fast.status == "ok"
    assert base.ratio == pytest.approx(1.0) and base.images_per_s > 0
    assert len(base.times) == len(fast.times) == 2
    assert fast.ratio == pytest.approx(statistics.median(tb / t for t, tb in zip(fast.times, base.times)))
    assert fast.images_per_s == pytest.approx(8 / statistics.median(fast.times))
    assert compiled.status == "not run: no compiler in this test"
    assert compiled.images_per_s is None and compiled.ratio is None
    text = speed.format_speed(table)
    assert "not run: no compiler in this test" in text and "baseline" in text
    assert table.img_size == smoke_cfg.profile.img_size and "stand-in" in table.data


def test_training_speed_times_a_network_it_is_given(smoke_cfg):
    """``build=`` times any network through the same loop (bench/cpu_precision.py's EfficientNet-Lite0),
    in channels_last when the setting says so; the table carries the name it was given."""
    from imagenet_book import models

    built: list = []

    def build(num_classes):
        built.append(models.efficientnet_lite0(num_classes=num_classes))
        return built[-1]

    settings = [SpeedSetting("nchw", loader="fast", batch_size=8),
                SpeedSetting("channels_last", loader="fast", channels_last=True, batch_size=8)]
    table = speed.training_speed(smoke_cfg, arch="efficientnet_lite0", build=build, settings=settings, steps=1,
                                 repeats=1, warmup_steps=0)
    assert table.arch == "efficientnet_lite0" and [r.status for r in table.rows] == ["ok", "ok"]
    assert len(built) == 2 and all(isinstance(n, models.EfficientNetLite) for n in built)
    conv = next(w for w in built[1].parameters() if w.dim() == 4 and w.shape[-1] > 1)  # the 3 x 3 stem
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_training_speed_reports_a_failing_setting(smoke_cfg, monkeypatch):
    real_fit = ib.engine.fit

    def fit(net, *args, amp=None, **kwargs):
        if amp == "fp16":
            raise RuntimeError("fp16 is broken here\nsecond line")
        return real_fit(net, *args, amp=amp, **kwargs)

    monkeypatch.setattr(ib.engine, "fit", fit)
    settings = [SpeedSetting("baseline", loader="fast", batch_size=8),
                SpeedSetting("fp16", loader="fast", amp="fp16", batch_size=8)]
    table = speed.training_speed(smoke_cfg, settings=settings, steps=1, repeats=1)
    assert table.rows[0].status == "ok"
    assert table.rows[1].status == "failed: RuntimeError: fp16 is broken here"


def test_training_speed_rejects_empty_work(smoke_cfg):
    with pytest.raises(ValueError, match="steps >= 1"):
        speed.training_speed(smoke_cfg, steps=0)
    with pytest.raises(ValueError, match="at least one setting"):
        speed.training_speed(smoke_cfg, settings=[])


def test_compare_latency_interleaves_the_networks_in_rotating_order():
    log: list[str] = []

    class Named(Sleepy):
        def __init__(self, name, seconds):
            super().__init__(seconds)
            self.name = name

        def forward(self, x):
            log.append(self.name)
            return super().forward(x)

    nets = {"fast": Named("fast", 0.005), "slow": Named("slow", 0.03)}
    times = speed.compare_latency(nets, (1, 3, 4, 4), repeats=4, warmup=1)
    assert log == ["fast", "slow"] + ["fast", "slow", "slow", "fast"] * 2  # warm-up, then rotating rounds
    assert times["fast"].seconds < times["slow"].seconds
    assert len(times["slow"].times) == 4 and times["slow"].device == "cpu"
    with pytest.raises(ValueError, match="at least one"):
        speed.compare_latency({})


def test_num_threads_sets_and_restores():
    before = torch.get_num_threads()
    with speed.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with speed.num_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n >= 1"):
        with speed.num_threads(0):
            pass
