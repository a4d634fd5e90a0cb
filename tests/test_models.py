"""imagenet_book.models: same architecture as torchvision, options, init, layer summary.

torchvision is used here only as the reference; the package itself must not import it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import imagenet_book.models as M

ARCHS = ["vgg16", "vgg16_bn", "resnet18", "resnet34", "resnet50"]
#: torchvision networks the book builds from its classes' options rather than a function of their name.
BUILT = {"resnext50_32x4d": lambda: M.ResNet(M.Bottleneck, [3, 4, 6, 3], groups=32, width_per_group=4),
         "wide_resnet50_2": lambda: M.ResNet(M.Bottleneck, [3, 4, 6, 3], width_per_group=128)}


def build(arch: str) -> nn.Module:
    """Our default-option network of torchvision's name ``arch``."""
    return BUILT[arch]() if arch in BUILT else getattr(M, arch)()


def meta(arch: str) -> dict:
    """torchvision's metadata of the ImageNet weights of ``arch`` (offline: nothing downloaded)."""
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1.meta


@functools.cache
def ours_default(arch: str) -> nn.Module:
    """One default-option model per architecture, shared by the tests that only inspect it
    (never load weights into it: test_vgg_init checks its own initialisation)."""
    return build(arch)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding, relative to the tensor's scale (VGG's logits are ~0.5,
    some of its gradients ~1e-4). Bitwise equality, the usual case on one CPU, is checked
    first because ``assert_close`` on VGG's 138M gradients takes seconds."""
    if not torch.equal(actual, expected):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


def test_package_does_not_import_torchvision():
    """The from-scratch networks use torch only (the detection and segmentation heads may use
    torchvision.ops, as chapters 08-09 teach)."""
    package = Path(M.__file__).parent
    for path in (package / "vgg.py", package / "resnet.py", package / "summary.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "torchvision" for n in names), path


@pytest.mark.parametrize("arch", [*ARCHS, *BUILT])
def test_parameter_count_equals_torchvision(arch):
    assert n_params(ours_default(arch)) == meta(arch)["num_params"]


@pytest.mark.parametrize("arch", [*ARCHS, *BUILT])
def test_torchvision_state_dict_loads_strictly_and_outputs_match(arch):
    """Train mode (batch statistics, dropout, running-stat updates, gradients), then eval mode."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, arch)(weights=None)
    ours = build(arch)
    ours.load_state_dict(tv.state_dict(), strict=True)
    # 64x64 keeps VGG affordable on a CPU and is honest: its adaptive pool maps the 2x2 feature
    # map to the same 7x7 grid torchvision's does, so the classifier sees 25,088 features.
    X = torch.randn(2, 3, 64, 64)
    y = torch.tensor([3, 7])

    tv.train(), ours.train()
    torch.manual_seed(1)  # the same dropout masks: both draw them in the same order and shapes
    out_tv = tv(X)
    torch.manual_seed(1)
    out_ours = ours(X)
    assert_same(out_ours, out_tv)
    F.cross_entropy(out_tv, y).backward()
    F.cross_entropy(out_ours, y).backward()
    grads_tv = {name: p.grad for name, p in tv.named_parameters()}
    for name, p in ours.named_parameters():
        assert_same(p.grad, grads_tv[name])
    buffers_tv = dict(tv.named_buffers())  # BatchNorm running statistics, updated by the pass
    for name, b in ours.named_buffers():
        assert_same(b, buffers_tv[name])

    tv.eval(), ours.eval()
    with torch.no_grad():
        assert_same(ours(X), tv(X))


@pytest.mark.parametrize("arch", ["resnet18", "vgg16"])
def test_num_classes_matches_torchvision(arch):
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    ours = getattr(M, arch)(num_classes=10)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert ours.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_input_forward_and_backward_at_32px(arch):
    torch.manual_seed(0)
    net = getattr(M, arch)(num_classes=10, small_input=True)
    X, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 9])
    logits = net(X)
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    F.cross_entropy(logits, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name

    rows = {r.name: r for r in M.layer_table(net, (1, 3, 32, 32)).rows}
    if arch.startswith("resnet"):
        # The CIFAR stem keeps 32 px at full resolution into layer1: layer4 works on 4x4.
        assert rows["conv1"].output_shape == (1, 64, 32, 32)
        last = [r for r in rows.values() if r.name.startswith("layer4.")][-1]
        assert last.output_shape[2:] == (4, 4)
    else:
        assert rows["avgpool"].output_shape == (1, 512, 1, 1)
        assert n_params(net) < 16_000_000  # the 4096-wide classifier (119.5M) is gone


def test_resnet_init():
    torch.manual_seed(0)
    net = M.resnet50(zero_init_residual=True)
    conv = net.layer3[0].conv3  # 256 -> 1024, 1x1: fan_out (1024) != fan_in (256)
    assert conv.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.02)
    assert torch.all(net.bn1.weight == 1) and torch.all(net.bn1.bias == 0)
    for block in [*net.layer1, *net.layer2, *net.layer3, *net.layer4]:
        assert torch.all(block.bn3.weight == 0) and torch.all(block.bn2.weight == 1)
    assert all(torch.all(b.bn2.weight == 0) for b in M.resnet18(zero_init_residual=True).layer1)
    assert all(torch.all(b.bn2.weight == 1) for b in M.resnet18().layer1)


def test_vgg_init():
    net = ours_default("vgg16")
    conv = net.features[5]  # 64 -> 128, 3x3: fan_out (128 * 9) != fan_in (64 * 9)
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.02)
    assert torch.all(conv.bias == 0)
    fc = net.classifier[3]
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02) and torch.all(fc.bias == 0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg16", "resnext50_32x4d"])
def test_summary_totals_match_torchvision_metadata(arch):
    """torchvision's ``_ops`` are GMACs at 224x224 rounded to 3 decimals (1.814 for ResNet-18)."""
    table = M.layer_table(ours_default(arch), (1, 3, 224, 224))
    assert table.total_params == meta(arch)["num_params"]
    assert round(table.total_macs / 1e9, 3) == meta(arch)["_ops"]


def test_summary_counts_by_hand():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2),  # 8*5*5 outputs * (4/2)*3*3 = 3,600 MACs
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(200, 10),  # 200*10 = 2,000 MACs per sample
    )
    net.train()
    table = M.layer_table(net, (3, 4, 5, 5))
    assert [r.macs for r in table.rows] == [3 * 3600, 0, 0, 0, 3 * 2000]
    assert [r.output_shape for r in table.rows][-1] == (3, 10)
    assert table.total_params == n_params(net) == (8 * 2 * 9 + 8) + 16 + (2000 + 10)
    assert net.training  # mode restored
    assert net[1].num_batches_tracked == 0  # the summary pass did not update running stats


def test_summary_counts_a_reused_module_once():
    shared = nn.Linear(6, 6)
    table = M.layer_table(nn.Sequential(shared, nn.ReLU(), shared), (2, 6))
    assert [(r.name, r.params, r.macs) for r in table.rows] == [
        ("0", 42, 72), ("1", 0, 0), ("0", 0, 72)  # one row per call, parameters counted once
    ]
    assert table.total_params == 42


def test_summary_rows_and_grouped_text_table():
    net = M.resnet18()
    table = M.layer_table(net, (1, 3, 64, 64))
    relu_rows = [r for r in table.rows if r.name == "layer1.0.relu"]
    assert len(relu_rows) == 2  # one row per call
    text = M.format_table(table, depth=1)
    names = [line.split()[0] for line in text.splitlines()[2:-2]]
    assert names == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                     "layer4", "avgpool", "fc"]  # fmt: skip
    assert "11,689,512 parameters" in text.splitlines()[-1]
    assert len(M.format_table(table).splitlines()) == len(table.rows) + 4
