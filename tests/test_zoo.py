"""Choosing a model (imagenet_book.zoo): torchvision's metadata read offline, MACs counted by
hooks agree with torchvision and with torch.utils.flop_counter, latency measured, the Pareto
front, and the row for one of the book's own checkpoints."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from imagenet_book import zoo
from imagenet_book.models import resnet18, resnet50


def test_torchvision_zoo_reads_every_classifier_offline():
    table = zoo.torchvision_zoo()
    assert len(table) == len(torchvision.models.list_models(module=torchvision.models))
    assert [e.gmacs for e in table] == sorted(e.gmacs for e in table)
    for e in table:
        assert 0 < e.top1 < 100 and e.top5 > e.top1 and e.params > 0 and e.gmacs > 0
        assert e.dataset == "ImageNet-1K" and e.latency_ms is None
    r18 = next(e for e in table if e.name == "resnet18")
    assert (r18.top1, r18.params, r18.gmacs, r18.img_size) == (69.758, 11689512, 1.814, 224)
    assert r18.weights == "ResNet18_Weights.IMAGENET1K_V1"
    assert next(e for e in table if e.name == "efficientnet_b3").img_size == 300


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="resnet9000.*Known: .*resnet18"):
        zoo.torchvision_zoo(["resnet9000"])


@pytest.mark.parametrize("build, name", [(resnet18, "resnet18"), (resnet50, "resnet50")])
def test_count_macs_agrees_with_torchvision_metadata(build, name):
    meta = torchvision.models.get_model_weights(name).DEFAULT.meta
    assert zoo.count_macs(build(), (1, 3, 224, 224)) / 1e9 == pytest.approx(meta["_ops"], abs=6e-4)


def test_count_macs_agrees_with_torch_flop_counter():
    net = resnet18(num_classes=10).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.randn(2, 3, 64, 64))
    assert zoo.count_macs(net, (2, 3, 64, 64)) == counter.get_total_flops() // 2  # 1 MAC = 2 FLOPs


@pytest.mark.parametrize("name, family", [
    ("resnet18", "resnet"), ("wide_resnet50_2", "wide_resnet"), ("resnext101_32x8d", "resnext"),
    ("efficientnet_v2_s", "efficientnet_v2"), ("efficientnet_b0", "efficientnet"),
    ("regnet_y_400mf", "regnet_y"), ("vit_b_16", "vit"), ("swin_v2_t", "swin_v2"),
    ("mobilenet_v3_small", "mobilenet_v3"), ("shufflenet_v2_x1_0", "shufflenet_v2"),
    ("vgg16_bn", "vgg"), ("convnext_tiny", "convnext"), ("inception_v3", "inception_v3"),
    ("mnasnet0_5", "mnasnet"), ("squeezenet1_1", "squeezenet")])
def test_family_of(name, family):
    assert zoo.family_of(name) == family


def _entry(name, top1, gmacs, latency=None):
    return zoo.ZooEntry(name, name, "w", top1, None, "x", 1, gmacs, None, 224, latency)


def test_pareto_front_keeps_only_undominated_models():
    entries = [_entry("a", 70, 1.0), _entry("b", 65, 2.0), _entry("c", 75, 3.0),
               _entry("d", 75, 4.0), _entry("e", 60, 0.5)]
    assert [e.name for e in zoo.pareto_front(entries)] == ["e", "a", "c"]
    assert [e.name for e in zoo.pareto_front(entries + [_entry("f", 80, 9, 1.0)], "latency_ms")] == ["f"]
    with pytest.raises(ValueError, match="cost"):
        zoo.pareto_front(entries, "speed")


def test_measure_latency_fills_in_a_time_without_touching_the_input():
    entries = zoo.torchvision_zoo(["mobilenet_v3_small", "resnet18"])
    measured = zoo.measure_latency(entries, repeats=2, warmup=0, img_size=32)
    assert [e.name for e in measured] == ["mobilenet_v3_small", "resnet18"]
    assert all(e.latency_ms > 0 and e.latency_device == "cpu" for e in measured)
    assert all(e.latency_ms is None for e in entries)


def test_checkpoint_entry_describes_the_book_s_own_model(smoke_cfg, pretrained):
    cfg, result = smoke_cfg, pretrained("resnet18")
    entry = zoo.checkpoint_entry(result.checkpoint, repeats=2, warmup=0)
    assert entry.name == "resnet18" and entry.family == "resnet"
    assert entry.img_size == cfg.profile.img_size
    assert entry.top1 == pytest.approx(100 * result.metrics["top1"])
    assert "stand-in" in entry.dataset
    assert entry.params == sum(p.numel() for p in result.net.parameters())
    assert entry.gmacs * 1e9 == zoo.count_macs(result.net, (1, 3, entry.img_size, entry.img_size))
    assert entry.latency_ms > 0 and entry.file_mb > 40
