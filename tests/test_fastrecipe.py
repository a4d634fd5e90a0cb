"""The fast pretraining recipe (``imagenet_book.fastrecipe``) and the levers it is built from: Lion,
LAMB and Ranger against their update rules, the flat-then-cosine schedule, weight decay on every
parameter, ResNet-D, progressive resizing in the fast loader, test-time flips, the ablation's rows,
and the ``fast-recipe`` reference run on a real-format tree."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from imagenet_book import fastrecipe, reference, results
from imagenet_book.data.fast import FastLoader, ImageCache
from imagenet_book.models import (BasicBlock, Bottleneck, ResNet, SelfAttention, SqueezeExcite, resnet18, resnet18d,
                                  resnet50d, saresnet18d, seresnet18d, seresnet50d, seresnext50d)
from imagenet_book.optim import Lamb, Lion, Ranger
from imagenet_book.recipe import FLAT_FRACTION, RecipeError, TrainConfig, lr_factor, make_optimizer, param_groups

from test_reference import _imagenette_tree, tiny  # noqa: F401  (the fixture; tests/ is on sys.path)


def _one_step(opt_cls, w0, g, **kw):
    w = nn.Parameter(w0.clone())
    opt = opt_cls([w], **kw)
    w.grad = g.clone()
    opt.step()
    return w.detach(), opt


def test_lion_moves_every_weight_by_the_rate_times_the_sign():
    torch.manual_seed(0)
    w0, g1, g2 = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    lr, wd, (b1, b2) = 0.01, 0.1, (0.9, 0.99)
    w, opt = _one_step(Lion, w0, g1, lr=lr, betas=(b1, b2), weight_decay=wd)
    m = torch.zeros_like(w0)
    expected = w0 * (1 - lr * wd) - lr * torch.sign(b1 * m + (1 - b1) * g1)
    torch.testing.assert_close(w, expected)
    m = b2 * m + (1 - b2) * g1
    # A second step uses the momentum kept in the state (and survives a state_dict round trip).
    p = opt.param_groups[0]["params"][0]
    again = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    again.load_state_dict(opt.state_dict())
    p.grad = g2.clone()
    again.step()
    torch.testing.assert_close(p.detach(), expected * (1 - lr * wd) - lr * torch.sign(b1 * m + (1 - b1) * g2))


def test_lamb_scales_adams_update_by_the_trust_ratio():
    torch.manual_seed(1)
    w0, g = torch.randn(4, 6), torch.randn(4, 6)
    lr, wd, (b1, b2), eps = 0.05, 0.01, (0.9, 0.999), 1e-6
    w, _ = _one_step(Lamb, w0, g, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    m_hat, v_hat = (1 - b1) * g / (1 - b1), (1 - b2) * g * g / (1 - b2)
    r = m_hat / (v_hat.sqrt() + eps) + wd * w0
    torch.testing.assert_close(w, w0 - lr * (w0.norm() / r.norm()) * r)
    # A zero tensor (a fresh bias) has no norm to be a fraction of: trust ratio 1.
    b, _ = _one_step(Lamb, torch.zeros(3), torch.ones(3), lr=lr)
    torch.testing.assert_close(b, torch.full((3,), -lr), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="LAMB needs lr > 0"):
        Lamb([nn.Parameter(torch.zeros(1))], lr=0)


def test_ranger_is_radam_with_decoupled_decay_inside_lookahead():
    torch.manual_seed(2)
    w0, grads = torch.randn(5, 3), [torch.randn(5, 3) for _ in range(12)]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=1e-2)
    # Lookahead never syncing (k beyond the steps): torch's RAdam with decoupled weight decay, through
    # RAdam's momentum-only first steps (rho_t <= 5) and its rectified ones.
    ours, radam = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt, ref = Ranger([ours], k=100, **kw), torch.optim.RAdam([radam], decoupled_weight_decay=True, **kw)
    fast = []
    for g in grads:
        ours.grad, radam.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        fast.append(ours.detach().clone())
    torch.testing.assert_close(ours.detach(), radam.detach())
    # k = 3, alpha = 0.5: after 3 steps the weights are half way from the start to where RAdam took them.
    w = nn.Parameter(w0.clone())
    opt = Ranger([w], k=3, alpha=0.5, **kw)
    for g in grads[:3]:
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), w0 + 0.5 * (fast[2] - w0))
    torch.testing.assert_close(opt.state[w]["slow"], w.detach())
    # The state (moments, step count, slow weights) survives a state_dict round trip: a copy of the
    # weights under a new optimizer loaded from it takes the same next steps (one more sync included).
    twin = nn.Parameter(w.detach().clone())
    again = Ranger([twin], k=3, alpha=0.5, **kw)
    again.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in grads[3:6]:
        w.grad, twin.grad = g.clone(), g.clone()
        opt.step()
        again.step()
    torch.testing.assert_close(twin.detach(), w.detach())
    assert again.state[twin]["step"] == 6
    assert isinstance(make_optimizer(nn.Linear(2, 2), TrainConfig(optimizer="ranger", lr=1e-2)), Ranger)
    with pytest.raises(ValueError, match="Ranger needs lr > 0"):
        Ranger([nn.Parameter(torch.zeros(1))], lr=1e-2, k=0)


def test_flat_cosine_stays_at_the_peak_then_anneals_to_zero():
    total, warmup = 120, 5
    f = [lr_factor(s, total, warmup, "flatcos") for s in range(total + 1)]
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    start = round(FLAT_FRACTION * total)
    assert all(v == 1.0 for v in f[warmup:start + 1])
    assert all(a >= b for a, b in zip(f[start:], f[start + 1:])) and f[-1] == pytest.approx(0.0, abs=1e-12)
    assert start == 90 and f[105] == pytest.approx(0.5)  # half way through the cosine
    with pytest.raises(RecipeError, match="schedule must be one of"):
        TrainConfig(schedule="step")


def test_textbook_decay_reaches_norms_and_biases_and_nesterov_is_passed_on():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    book = param_groups(net, 1e-4)
    textbook = param_groups(net, 1e-4, decay_all=True)
    assert [g["weight_decay"] for g in book] == [1e-4, 0.0]
    assert [g["weight_decay"] for g in textbook] == [1e-4, 1e-4]
    assert [len(g["params"]) for g in book] == [len(g["params"]) for g in textbook] == [2, 4]
    opt = make_optimizer(net, TrainConfig(nesterov=True, decay_norm_and_bias=True, weight_decay=0.5))
    assert opt.defaults["nesterov"] and all(g["weight_decay"] == 0.5 for g in opt.param_groups)
    assert isinstance(make_optimizer(net, TrainConfig(optimizer="lion", lr=1e-4)), Lion)
    with pytest.raises(RecipeError, match="optimizer must be one of"):
        TrainConfig(optimizer="adagrad")


def test_squeeze_excite_gates_each_channel_by_the_whole_image():
    torch.manual_seed(3)
    se = SqueezeExcite(32)
    assert se.fc1.out_channels == 8  # 32 // 16 = 2, raised to at least 8
    x = torch.randn(2, 32, 5, 7)
    gate = torch.sigmoid(se.fc2(torch.relu(se.fc1(x.mean((2, 3), keepdim=True)))))
    torch.testing.assert_close(se(x), x * gate)
    # One image's gate depends on that image only (each channel scaled by one number in (0, 1)).
    y = x.clone()
    y[1] = torch.randn(32, 5, 7)
    torch.testing.assert_close(se(y)[0], se(x)[0])
    ratio = se(x) / x
    assert torch.allclose(ratio, ratio[..., :1, :1].expand_as(ratio), atol=1e-5) and 0 < ratio.min() < ratio.max() < 1
    # SE-ResNet-D: a gate in every block, before the addition; the plain networks keep torchvision's keys.
    net = seresnet18d(num_classes=10, zero_init_residual=True)
    assert sum(isinstance(m, SqueezeExcite) for m in net.modules()) == 8
    assert sum(isinstance(m, SqueezeExcite) for m in seresnet50d().modules()) == 16
    # SE-ResNeXt-50-D: the same gates, and every bottleneck's 3x3 convolution in 32 groups, twice as wide.
    xnet = seresnext50d(num_classes=10)
    blocks = [m for m in xnet.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and all(hasattr(m, "se") and m.conv2.groups == 32 for m in blocks)
    assert [blocks[i].conv2.out_channels for i in (0, 3, 7, 13)] == [128, 256, 512, 1024]
    assert xnet(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    with pytest.raises(ValueError, match="Bottleneck"):
        ResNet(BasicBlock, [2, 2, 2, 2], groups=32, width_per_group=4)
    assert not any(isinstance(m, SqueezeExcite) for m in resnet18d().modules())
    assert not any(".se." in k for k in resnet18().state_dict())
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    # With zero-init, every block starts as the identity (its gate multiplies a zero branch).
    block = net.layer1[1].eval()
    z = torch.rand(1, 64, 8, 8)
    torch.testing.assert_close(block(z), z)


def test_self_attention_adds_the_images_gram_matrix_times_a_spectrally_normed_projection():
    torch.manual_seed(4)
    layer = SelfAttention(6)
    x = torch.randn(2, 6, 4, 5)
    torch.testing.assert_close(layer(x), x)  # gamma starts at 0: the identity
    with torch.no_grad():
        layer.gamma.fill_(0.5)
    for _ in range(50):  # training-mode calls run the power iteration that estimates the top singular value
        layer(x)
    layer.eval()
    w = layer.conv.parametrizations.weight.original.detach().squeeze(-1)
    w_sn = w / torch.linalg.matrix_norm(w, 2)
    assert torch.linalg.matrix_norm(layer.conv.weight.detach().squeeze(-1), 2).item() == pytest.approx(1.0, abs=1e-4)
    flat = x.flatten(2)
    expected = x + 0.5 * (flat @ flat.transpose(1, 2) @ (w_sn @ flat)).view_as(x)
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-4)
    # Unlike a convolution, it mixes the whole image: one far pixel changes the output at another,
    # and one image's output does not depend on the others in the batch.
    y = x.clone()
    y[0, :, 3, 4] += 1.0
    assert not torch.allclose(layer(y)[0, :, 0, 0], layer(x)[0, :, 0, 0])
    torch.testing.assert_close(layer(y)[1], layer(x)[1])


def test_sa_resnet_d_has_one_self_attention_layer_at_the_end_of_the_first_stage():
    net = saresnet18d(num_classes=10, zero_init_residual=True)
    where = [name for name, m in net.named_modules() if isinstance(m, SelfAttention)]
    assert where == ["layer1.1.attention"]
    plain = resnet18d(num_classes=10)
    assert sum(p.numel() for p in net.parameters()) - sum(p.numel() for p in plain.parameters()) == 64 * 64 + 1
    assert not any("attention" in k for k in plain.state_dict())
    # Everything but the new layer has ResNet-18-D's keys and shapes.
    keys = {k: v.shape for k, v in net.state_dict().items() if ".attention." not in k}
    assert keys == {k: v.shape for k, v in plain.state_dict().items()}
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    # Bottlenecks take it too (in the last block of the first stage), and the EMA's copy keeps it.
    deep = ResNet(Bottleneck, [2, 1, 1, 1], num_classes=10, self_attention=True)
    assert deep.layer1[1].attention.conv.in_channels == 256 and not hasattr(deep.layer1[0], "attention")
    assert isinstance(copy.deepcopy(net).layer1[1].attention, SelfAttention)


def test_resnet_d_has_the_deep_stem_and_the_pooling_shortcut():
    net = resnet18d(num_classes=10)
    assert [m.kernel_size for m in net.conv1 if isinstance(m, nn.Conv2d)] == [(3, 3)] * 3
    assert net.conv1[0].stride == (2, 2) and net.conv1[-1].out_channels == 64
    shortcut = net.layer2[0].downsample
    assert isinstance(shortcut[0], nn.AvgPool2d) and shortcut[1].stride == (1, 1)
    assert not isinstance(net.layer1[0].downsample, nn.Sequential) or len(net.layer1[0].downsample) == 2
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    assert sum(p.numel() for p in resnet50d().parameters()) == 25_576_264  # timm's resnet50d
    # The default ResNet is untouched: torchvision's keys and shapes.
    plain = resnet18()
    assert isinstance(plain.conv1, nn.Conv2d) and plain.layer2[0].downsample[0].stride == (2, 2)


def _cache(n=12, side=20):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    return ImageCache(images, torch.arange(n) % 3, ["a", "b", "c"], path=None, size=side)


def test_progressive_resizing_changes_the_side_per_epoch_and_resumes_on_its_epoch():
    assert fastrecipe.progressive_sizes(128, 5) == (96, 112, 120, 128, 128)
    assert fastrecipe.progressive_sizes(64, 1) == (48,) and fastrecipe.progressive_sizes(32, 3)[-1] == 32
    loader = FastLoader(_cache(), 4, sizes=(8, 12, 16))
    seen = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        seen.append({tuple(X.shape[-2:]) for X, _ in loader})
    assert seen == [{(8, 8)}, {(12, 12)}, {(16, 16)}, {(16, 16)}]
    with pytest.raises(RecipeError, match="sizes must be image sides"):
        FastLoader(_cache(), 4, sizes=(8, 0))


def test_test_time_flips_average_the_image_and_its_mirror():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(5))
    x = torch.randn(2, 3, 8, 8)
    net(x)
    torch.testing.assert_close(fastrecipe.FlipAverage(net)(x), (net(x) + net(x.flip(3))) / 2)
    symmetric = x + x.flip(3)
    torch.testing.assert_close(fastrecipe.FlipAverage(net)(symmetric), net(symmetric))


def test_the_ladder_starts_at_the_textbook_recipe_and_applies_every_lever():
    t = fastrecipe.TEXTBOOK
    assert (t.arch, t.lr, t.schedule, t.nesterov, t.label_smoothing, t.crop_scale) == \
        ("resnet18", 0.4, "onecycle", True, 0.1, (0.08, 1.0))
    assert t.decay_norm_and_bias and not t.mixed_precision
    names = [lever.name for lever in fastrecipe.LADDER + fastrecipe.SIDE]
    assert len(names) == len(set(names)) and names[0] == "textbook"
    final = fastrecipe.final_recipe()
    later: set[str] = set()  # a setting a later lever changes again (resnet-d -> resnet50-d)
    for lever in reversed(fastrecipe.LADDER):
        assert all(getattr(final, k) == v for k, v in lever.changes.items() if k not in later), lever.name
        later |= set(lever.changes)
    # Test-time levers share the training run; training levers do not.
    flipped = dataclasses.replace(final, test_flip=False, test_size=False)
    assert fastrecipe.run_key(flipped) == fastrecipe.run_key(final)
    assert fastrecipe.run_key(dataclasses.replace(final, lr=0.2)) != fastrecipe.run_key(final)
    cfg = fastrecipe.recipe_config(final, epochs=5, steps_per_epoch=148, batch_size=64, img_size=128)
    assert cfg.ema_decay == pytest.approx(1 - 1 / 74) and cfg.schedule == "onecycle"
    assert fastrecipe.recipe_config(t, epochs=5, steps_per_epoch=148, batch_size=64, img_size=128).ema_decay is None


def test_the_ablation_gives_one_row_per_lever_and_trains_each_recipe_once(smoke_cfg):
    trained = []

    def run(key, make):
        trained.append(key)
        return make()

    side = fastrecipe.SIDE[:1]
    rows = fastrecipe.ablation(smoke_cfg, epochs=1, img_size=16, batch_size=16, side=side, run=run, log=None)
    assert [r["run"] for r in rows] == [lever.name for lever in fastrecipe.LADDER + side]
    assert [r["carried"] for r in rows] == [True] * len(fastrecipe.LADDER) + [False] * len(side)
    assert all(r["metric"] == "top1" and 0.0 <= r["value"] <= 1.0 and (r["epochs"], r["img_size"]) == (1, 16)
               for r in rows)
    assert len(trained) == len(set(trained)) == len(fastrecipe.LADDER) - 2 + len(side)  # two test-time rows
    by = {r["run"]: r for r in rows}
    assert by["test-flip"]["train_s"] == by["ema"]["train_s"] == by["test-size"]["train_s"]
    assert by["resnet50-d"]["arch"] == "resnet50d" and by["textbook"]["arch"] == "resnet18"


def test_fast_recipe_reference_records_the_ladder_and_the_end_to_end_time(tiny, tmp_path, monkeypatch):  # noqa: F811
    _imagenette_tree(tiny.data_root, train=2, val=1)
    monkeypatch.setattr(reference, "FAST", {"epochs": 1, "img_size": 24, "batch_size": 10})
    ladder = tuple(lever for lever in fastrecipe.LADDER if lever.name in ("textbook", "mild-crops", "test-flip"))
    monkeypatch.setattr(fastrecipe, "LADDER", ladder)
    monkeypatch.setattr(fastrecipe, "SIDE", ())
    out = tmp_path / "results"
    reference.run_reference(tiny, ["fast-recipe"], folder=out, log=lambda _: None)
    result = results.read_result("fast-recipe", out)
    assert result["chapter"] == "chapters/A2_fast_recipe.ipynb"
    assert result["data"] == {"name": "real Imagenette (imagenette2-160)", "real": True, "train": 20, "val": 10}
    assert [r["run"] for r in result["rows"]] == ["textbook", "mild-crops", "test-flip"]
    assert all(r["epochs"] == 1 and r["img_size"] == 24 for r in result["rows"])
    extra = result["extra"]
    assert extra["end_to_end_s"] >= extra["train_s"] > 0 and extra["file_types"] == {".JPEG": 30}
    assert extra["final_top1"] == result["rows"][-1]["value"]
    # Resumed from the kept runs: nothing trains again, the rows are the same.
    monkeypatch.setattr(fastrecipe, "train_recipe", lambda *a, **k: pytest.fail("trained again"))
    reference.run_reference(tiny, ["fast-recipe"], folder=out, force=True, log=lambda _: None)
    assert results.read_result("fast-recipe", out)["rows"] == result["rows"]
    assert math.isfinite(result["wall_s"])


def test_rungs_table_and_plot_of_a_recorded_ablation(tmp_path):
    assert fastrecipe.rung("textbook") == fastrecipe.TEXTBOOK
    assert fastrecipe.rung("zero-init").zero_init_residual and not fastrecipe.rung("zero-init").progressive
    with pytest.raises(ValueError, match="No rung 'mixup'.*textbook, mixed-precision"):
        fastrecipe.rung("mixup")
    rows = [{"run": name, "metric": "top1", "value": v, "epochs": 5, "img_size": 128, "what": name, "carried": c,
             "arch": "resnet18", "train_s": 1.0, "top5": 0.9}
            for name, v, c in (("textbook", 0.70, True), ("zero-init", 0.74, True), ("lion", 0.76, False))]
    path = results.write_result("fast-recipe", chapter="chapters/A2_fast_recipe.ipynb", command="make reference",
                                commit="abc", device="cpu", data={"name": "x", "real": True, "train": 1, "val": 1},
                                rows=rows, wall_s=1.0, folder=tmp_path)
    recorded = results.read_result("fast-recipe", path.parent)
    table = fastrecipe.ablation_table(recorded).splitlines()
    assert len(table) == 2 + 3 and "| 70.0% |  |" in table[2]
    assert "| 74.0% | +4.0 |" in table[3] and "lion (side)" in table[4] and "| 76.0% | +2.0 |" in table[4]
    from imagenet_book import viz

    fig = viz.ablation_plot(recorded, target=0.875)
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["textbook", "zero-init", "lion"]


def _numbered_cache(counts):
    """An ImageCache whose image i is filled with the value i (so a split can be traced back)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()
    return ImageCache(images, labels, [f"c{c}" for c in range(len(counts))], path=__import__("pathlib").Path("x"),
                      size=4)


def test_holdout_split_holds_out_a_share_of_every_class_disjoint_and_repeatable():
    cache = _numbered_cache([20, 10, 2])
    fit, held = fastrecipe.holdout_split(cache, 0.1, seed=0)
    assert torch.bincount(held.labels).tolist() == [2, 1, 1]  # round(10%), at least one, never all
    assert torch.bincount(fit.labels).tolist() == [18, 9, 1]
    ids = lambda part: part.images[:, 0, 0, 0].tolist()  # noqa: E731
    assert sorted(ids(fit) + ids(held)) == list(range(32)) and not set(ids(fit)) & set(ids(held))
    assert all(cache.labels[i] == label for i, label in zip(ids(held), held.labels.tolist()))
    assert ids(fastrecipe.holdout_split(cache, 0.1, seed=0)[1]) == ids(held)
    assert any(ids(fastrecipe.holdout_split(cache, 0.1, seed=s)[1]) != ids(held) for s in (1, 2, 3))
    with pytest.raises(ValueError, match="Class 'c1' .* has 1 training image"):
        fastrecipe.holdout_split(_numbered_cache([5, 1]), 0.1)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        fastrecipe.holdout_split(cache, 1.0)


def test_use_activation_replaces_every_relu_and_keeps_the_weights():
    torch.manual_seed(0)
    net = resnet18d(num_classes=10).eval()
    relus = sum(isinstance(m, nn.ReLU) for m in net.modules())
    x, keys = torch.randn(2, 3, 64, 64), list(net.state_dict())
    before = net(x)
    assert fastrecipe.use_activation(net, "relu") is net and torch.equal(net(x), before)
    fastrecipe.use_activation(net, "mish")
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert sum(isinstance(m, nn.Mish) for m in net.modules()) == relus > 10
    assert list(net.state_dict()) == keys and not torch.allclose(net(x), before)
    with pytest.raises(ValueError, match="Unknown activation 'gelu'.*relu, mish, silu"):
        fastrecipe.use_activation(net, "gelu")


def test_training_on_a_holdout_scores_held_out_training_images_not_val(smoke_cfg):
    full = fastrecipe.train_recipe(smoke_cfg, fastrecipe.TEXTBOOK, epochs=1, img_size=16, batch_size=8, log=None)
    held = fastrecipe.train_recipe(smoke_cfg, fastrecipe.TEXTBOOK, epochs=1, img_size=16, batch_size=8,
                                   holdout=0.25, log=None)
    assert (full["evaluated_on"], held["evaluated_on"]) == ("val", "holdout")
    assert held["train"] + held["val"] == full["train"] and 0 < held["val"] < full["train"] // 2


def test_a_network_of_ones_own_is_trained_by_the_recipe_in_place_of_its_arch(smoke_cfg):
    built, initial = [], []

    def small_net(num_classes):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(8, num_classes))
        built.append(net)
        initial.extend(p.detach().clone() for p in net.parameters())
        return net

    found = fastrecipe.train_recipe(smoke_cfg, fastrecipe.TEXTBOOK, epochs=1, img_size=16, batch_size=8,
                                    build=small_net, log=None)
    (net,) = built  # built once, for the source's classes, and that network is the one trained
    assert net[-1].out_features == 10 and 0.0 <= found["top1"] <= 1.0
    assert any(not torch.equal(a, b.detach().cpu()) for a, b in zip(initial, net.parameters()))


def test_search_keeps_each_stages_best_held_out_option_and_trains_each_recipe_once(smoke_cfg):
    trained = []

    def run(key, make):
        trained.append(key)
        return make()

    stages = (fastrecipe.STAGES[2], fastrecipe.STAGES[-1])  # crops (4 trainings), test-time (none more)
    found = fastrecipe.search(smoke_cfg, epochs=1, img_size=16, batch_size=8, stages=stages, holdout=0.25,
                              run=run, log=None)
    rows = found["rows"]
    assert [r["stage"] for r in rows] == ["crops"] * 4 + ["test-time"] * 4
    assert all(r["metric"] == "holdout_top1" and r["run"] == f"{r['stage']}: {r['option']}" for r in rows)
    assert len(trained) == len(set(trained)) == 4 and all(k.startswith("holdout-") for k in trained)
    for stage in ("crops", "test-time"):
        tried = [r for r in rows if r["stage"] == stage]
        values = [r["value"] for r in tried]
        assert [r["chosen"] for r in tried] == [i == values.index(max(values)) for i in range(len(values))]
    picked = {r["stage"]: r["option"] for r in rows if r["chosen"]}
    recipe = found["recipe"]
    assert f"{round(100 * recipe.crop_scale[0])}-100%" == picked["crops"]
    test_time = {"plain": (False, False), "flips": (True, False), "1.25x size": (False, True), "both": (True, True)}
    assert (recipe.test_flip, recipe.test_size) == test_time[picked["test-time"]]
    assert (recipe.arch, recipe.optimizer, recipe.mixed_precision) == ("resnet18", "sgd", True)  # the start


def test_fast_recipe_search_reference_records_the_search_and_one_val_measurement(tiny, tmp_path,  # noqa: F811
                                                                                 monkeypatch):
    _imagenette_tree(tiny.data_root, train=2, val=1)
    monkeypatch.setattr(reference, "FAST", {"epochs": 1, "img_size": 24, "batch_size": 10})
    monkeypatch.setattr(fastrecipe, "STAGES", (fastrecipe.STAGES[1], fastrecipe.STAGES[-1]))
    out = tmp_path / "results"
    reference.run_reference(tiny, ["fast-recipe-search"], folder=out, log=lambda _: None)
    result = results.read_result("fast-recipe-search", out)
    assert result["chapter"] == "chapters/A2_fast_recipe.ipynb"
    assert result["data"] == {"name": "real Imagenette (imagenette2-160)", "real": True, "train": 20, "val": 10}
    runs = [r["run"] for r in result["rows"]]
    assert runs[:2] == ["zero-init: off", "zero-init: on"] and runs[-2:] == ["textbook", "searched"]
    assert result["extra"]["held_out"] == 10 and result["extra"]["end_to_end_s"] > 0
    chosen = {r["stage"]: r["option"] for r in result["rows"] if r.get("chosen")}
    assert result["extra"]["recipe"]["zero_init_residual"] == (chosen["zero-init"] == "on")
    table = fastrecipe.search_table(result)
    assert "| zero-init |" in table and "| searched (val) |" in table and table.count("**") == 4
    # Resumed from the kept runs: nothing trains again, the rows are the same.
    monkeypatch.setattr(fastrecipe, "train_recipe", lambda *a, **k: pytest.fail("trained again"))
    reference.run_reference(tiny, ["fast-recipe-search"], folder=out, force=True, log=lambda _: None)
    assert results.read_result("fast-recipe-search", out)["rows"] == result["rows"]


def test_the_second_round_starts_from_the_recipe_the_recorded_search_chose():
    recorded = results.read_result("fast-recipe-search")
    assert recorded is not None, "book/results/fast-recipe-search.json is committed with the book"
    chosen = dict(recorded["extra"]["recipe"], crop_scale=tuple(recorded["extra"]["recipe"]["crop_scale"]))
    assert dataclasses.asdict(fastrecipe.SEARCHED) == chosen
    first = fastrecipe.SECOND_ROUND[0].options[0]
    assert first.changes == {} and dataclasses.replace(fastrecipe.SEARCHED, **fastrecipe.RANGER).optimizer == "ranger"
    assert fastrecipe.SECOND_ROUND[0].options[-1].changes == {"arch": "resnet50d", **fastrecipe.RANGER}


def test_second_round_study_records_its_stages_and_one_val_measurement(tiny, tmp_path, monkeypatch):  # noqa: F811
    _imagenette_tree(tiny.data_root, train=2, val=1)
    monkeypatch.setattr(reference, "FAST", {"epochs": 1, "img_size": 24, "batch_size": 10})
    # The real stage, less its ResNet-50-D option (the smallest networks suffice here).
    stage = fastrecipe.SECOND_ROUND[0]
    monkeypatch.setattr(fastrecipe, "SECOND_ROUND", (dataclasses.replace(stage, options=stage.options[:3]),))
    out = tmp_path / "results"
    assert "fast-recipe-second-round" in reference.STUDIES
    reference.run_reference(tiny, ["fast-recipe-second-round"], folder=out, log=lambda _: None)
    result = results.read_result("fast-recipe-second-round", out)
    assert result["chapter"] == "chapters/A2_fast_recipe.ipynb"
    assert result["command"] == "python -m imagenet_book reference fast-recipe-second-round"
    runs = [r["run"] for r in result["rows"]]
    assert runs == [f"network and optimizer: {o.name}" for o in stage.options[:3]] + ["second round"]
    chosen = [r["option"] for r in result["rows"] if r.get("chosen")]
    extra = result["extra"]
    assert len(chosen) == 1 and extra["start"]["arch"] == "resnet18d" and extra["start"]["optimizer"] == "sgd"
    assert (extra["recipe"]["arch"], extra["recipe"]["optimizer"]) == {
        "ResNet-18-D, SGD 0.4 (as searched)": ("resnet18d", "sgd"), "ResNet-18-D, Ranger": ("resnet18d", "ranger"),
        "SE-ResNet-18-D, SGD 0.4": ("seresnet18d", "sgd")}[chosen[0]]
    table = fastrecipe.search_table(result)
    assert "| network and optimizer |" in table and "| second round (val) |" in table and table.count("**") == 2
    # Resumed from the kept runs: nothing trains again, the rows are the same.
    monkeypatch.setattr(fastrecipe, "train_recipe", lambda *a, **k: pytest.fail("trained again"))
    reference.run_reference(tiny, ["fast-recipe-second-round"], folder=out, force=True, log=lambda _: None)
    assert results.read_result("fast-recipe-second-round", out)["rows"] == result["rows"]


def test_the_third_round_starts_from_the_recipe_the_second_round_kept():
    recorded = results.read_result("fast-recipe-second-round")
    assert recorded is not None, "book/results/fast-recipe-second-round.json is committed with the book"
    kept = dict(recorded["extra"]["recipe"], crop_scale=tuple(recorded["extra"]["recipe"]["crop_scale"]))
    assert dataclasses.asdict(fastrecipe.SEARCHED) == kept
    network, test_time = fastrecipe.THIRD_ROUND
    assert [o.changes for o in network.options] == [{}, {"arch": "seresnext50d", **fastrecipe.RANGER}]
    assert test_time == fastrecipe.STAGES[-1] and all(
        set(o.changes) == {"test_flip", "test_size"} for o in test_time.options)


def test_the_fourth_round_tries_self_attention_with_both_optimizers_from_the_kept_recipe():
    attention, test_time = fastrecipe.FOURTH_ROUND
    tried = [dataclasses.replace(fastrecipe.SEARCHED, **o.changes) for o in attention.options]
    assert [(r.arch, r.optimizer) for r in tried] == [("resnet18d", "sgd"), ("saresnet18d", "sgd"),
                                                      ("saresnet18d", "ranger")]
    assert tried[2] == dataclasses.replace(fastrecipe.SEARCHED, arch="saresnet18d", **fastrecipe.RANGER)
    assert test_time == fastrecipe.STAGES[-1]


@pytest.mark.parametrize("experiment, label, stages", [
    ("fast-recipe-third-round", "third round", fastrecipe.THIRD_ROUND),
    ("fast-recipe-fourth-round", "fourth round", fastrecipe.FOURTH_ROUND)])
def test_later_round_studies_record_both_stages_from_one_training_per_recipe(tiny, tmp_path, monkeypatch,  # noqa: F811
                                                                             experiment, label, stages):
    _imagenette_tree(tiny.data_root, train=2, val=1)
    monkeypatch.setattr(reference, "FAST", {"epochs": 1, "img_size": 24, "batch_size": 10})
    trained = []
    train = fastrecipe.train_recipe
    monkeypatch.setattr(fastrecipe, "train_recipe", lambda cfg, recipe, **k: trained.append(recipe) or train(
        cfg, recipe, **k))
    out = tmp_path / "results"
    assert experiment in reference.STUDIES
    reference.run_reference(tiny, [experiment], folder=out, log=lambda _: None)
    result = results.read_result(experiment, out)
    assert result["command"] == f"python -m imagenet_book reference {experiment}"
    network, test_time = stages
    assert [r["run"] for r in result["rows"]] == (
        [f"{network.name}: {o.name}" for o in network.options]
        + [f"{test_time.name}: {o.name}" for o in test_time.options] + [label])
    # Each option of the network stage trained on the held-out split, then the chosen one on the
    # whole: the test-time stage re-reads the chosen network's run.
    chosen = {r["stage"]: r["option"] for r in result["rows"] if r.get("chosen")}
    options = [dataclasses.replace(fastrecipe.SEARCHED, **o.changes) for o in network.options]
    pick = options[[o.name for o in network.options].index(chosen[network.name])]
    assert [r.training_key() for r in trained] == [r.training_key() for r in options + [pick]]
    assert (result["extra"]["recipe"]["arch"], result["extra"]["recipe"]["optimizer"]) == (pick.arch, pick.optimizer)
    kept = next(r for r in result["rows"] if r.get("stage") == network.name and r["chosen"])
    read = [r for r in result["rows"] if r.get("stage") == test_time.name]
    assert {r["train_s"] for r in read} == {kept["train_s"]} and read[0]["value"] == kept["value"]
    assert result["extra"]["recipe"]["test_flip"] == (chosen[test_time.name] in ("flips", "both"))
    table = fastrecipe.search_table(result)
    assert f"| {network.name} |" in table and f"| {label} (val) |" in table and table.count("**") == 4
