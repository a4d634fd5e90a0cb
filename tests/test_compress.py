"""Compression (imagenet_book.compress): magnitude and channel pruning do what they promise
(which weights, how many, same function after cutting channels out), masks become permanent,
int8 quantization gives a smaller model that computes nearly the same outputs, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imagenet_book import compress
from imagenet_book.models import resnet18, resnet50


def _trained_looking(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, as a trained network has (at init
    they are 0/1, which would hide mistakes in how BatchNorm channels are cut)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return net.eval()


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    return _trained_looking(resnet18(num_classes=10))


def test_magnitude_pruning_zeroes_the_smallest_weights_globally(net):
    original = torch.cat([m.weight.detach().flatten().abs() for m, _ in compress.prunable(net)])
    compress.prune_magnitude(net, 0.6)
    s = compress.sparsity(net)
    assert s.zeros == round(0.6 * s.total)
    kept = torch.cat([m.weight.detach().flatten() for m, _ in compress.prunable(net)])
    threshold = original.kthvalue(s.zeros).values
    assert (original[kept == 0] <= threshold).all()
    assert (original[kept != 0] >= threshold).all()
    # global: layers are pruned unevenly (the big late layers have the smallest weights)
    fractions = list(s.per_layer.values())
    assert max(fractions) - min(fractions) > 0.2


def test_make_permanent_keeps_the_zeros_and_drops_the_masks(net):
    X = torch.randn(2, 3, 32, 32)
    compress.prune_magnitude(net, 0.5)
    before = net(X)
    names = set(resnet18(num_classes=10).state_dict())
    compress.make_permanent(net)
    assert set(net.state_dict()) == names  # weight, not weight_orig + weight_mask
    assert compress.sparsity(net).fraction == pytest.approx(0.5, abs=1e-6)
    assert torch.allclose(net(X), before)


def test_channel_pruning_zeroes_whole_channels_and_their_batchnorm(net):
    compress.prune_channels(net, 0.5)
    groups = compress.block_channel_groups(net)
    assert len(groups) == 8  # ResNet-18: 8 BasicBlocks, one inner convolution each
    for conv, bn, _ in groups:
        per_channel = conv.weight.detach().flatten(1).abs().amax(1)
        dead = per_channel == 0
        assert int(dead.sum()) == round(0.5 * conv.out_channels)
        assert (bn.weight[dead] == 0).all() and (bn.bias[dead] == 0).all()
        assert (bn.weight[~dead] != 0).all()


@pytest.mark.parametrize("build", [resnet18, resnet50])
def test_cutting_pruned_channels_out_keeps_the_function_and_shrinks_the_model(build):
    torch.manual_seed(1)
    net = _trained_looking(build(num_classes=10))
    compress.prune_channels(net, 0.5)
    slim = compress.remove_pruned_channels(net)
    X = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(X), net(X), atol=1e-4)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(slim) < 0.75 * n(net)
    assert compress.size_on_disk(slim) < compress.size_on_disk(compress.make_permanent(net))
    block = slim.layer1[0]
    assert block.conv1.out_channels == block.bn1.num_features == block.conv2.in_channels == 32
    assert len(block.bn1.running_mean) == 32
    slim.train()(X).sum().backward()  # the smaller network trains like any other


def test_cutting_channels_leaves_the_original_untouched(net):
    compress.prune_channels(net, 0.25)
    compress.remove_pruned_channels(net)
    assert net.layer1[0].conv1.out_channels == 64
    assert hasattr(net.layer1[0].conv1, "weight_mask")


def test_int8_quantization_is_smaller_and_close():
    torch.manual_seed(0)
    net = _trained_looking(resnet18(num_classes=10))
    calibration = [(torch.randn(8, 3, 32, 32), torch.zeros(8)) for _ in range(3)]
    q = compress.quantize_int8(net, calibration, batches=2)
    assert compress.size_on_disk(q) < compress.size_on_disk(net) / 3
    assert any("quantized" in type(m).__module__ for m in q.modules())
    X = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref, out = net(X), q(X)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert (out - ref).abs().max() < 0.15 * ref.abs().max()
    assert net.fc.weight.dtype == torch.float32  # the original is not modified


def test_quantizing_a_pruned_network_works(net):
    compress.prune_magnitude(net, 0.5)
    q = compress.quantize_int8(net, [torch.randn(4, 3, 32, 32)], batches=1)
    assert q(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_errors_name_the_problem_and_the_fix(net):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        compress.prune_magnitude(net, 1.5)
    with pytest.raises(ValueError, match="prune_magnitude"):
        compress.prune_channels(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match="empty calibration"):
        compress.quantize_int8(net, [])
    with pytest.raises(ValueError, match="not supported"):
        compress.quantize_int8(net, [torch.randn(1, 3, 32, 32)], backend="no-such-engine")


def test_sparsity_counts_exact_zeros():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 0.0, 0.0]]))
    s = compress.sparsity(nn.Sequential(layer))
    assert (s.zeros, s.total, s.fraction) == (5, 8, 5 / 8)
