"""imagenet_book.losses must compute exactly what torch.nn.functional computes."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from imagenet_book import losses


def _case(shape, num_classes, seed, ignore_fraction=0.0, ignore_index=-100):
    g = torch.Generator().manual_seed(seed)
    n, *spatial = shape
    logits = torch.randn(n, num_classes, *spatial, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, num_classes, (n, *spatial), generator=g)
    if ignore_fraction:
        drop = torch.rand(target.shape, generator=g) < ignore_fraction
        target = torch.where(drop, torch.full_like(target, ignore_index), target)
    weight = torch.rand(num_classes, generator=g, dtype=torch.float64) + 0.1
    return logits, target, weight


@pytest.mark.parametrize(
    "shape,reduction,use_weight,smoothing,ignore",
    list(itertools.product([(7,), (3, 4, 5)], ["mean", "sum", "none"], [False, True],
                           [0.0, 0.1, 0.7], [0.0, 0.3])),
)
def test_index_targets_match_torch(shape, reduction, use_weight, smoothing, ignore):
    logits, target, weight = _case(shape, 6, seed=len(shape) * 100 + int(smoothing * 10),
                                   ignore_fraction=ignore, ignore_index=3)
    kwargs = dict(weight=weight if use_weight else None, ignore_index=3,
                  reduction=reduction, label_smoothing=smoothing)
    torch.testing.assert_close(losses.cross_entropy(logits, target, **kwargs),
                               F.cross_entropy(logits, target, **kwargs))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("use_weight", [False, True])
def test_probability_targets_match_torch(reduction, smoothing, use_weight):
    logits, _, weight = _case((4, 3, 2), 5, seed=11)
    probs = torch.softmax(torch.randn_like(logits), dim=1)
    kwargs = dict(weight=weight if use_weight else None, reduction=reduction,
                  label_smoothing=smoothing)
    torch.testing.assert_close(losses.cross_entropy(logits, probs, **kwargs),
                               F.cross_entropy(logits, probs, **kwargs))


def test_softmax_and_log_softmax_match_torch_and_survive_huge_logits():
    z = torch.tensor([[1000.0, 999.0, -1000.0], [0.5, 0.2, 0.1]])
    torch.testing.assert_close(losses.log_softmax(z, dim=1), F.log_softmax(z, dim=1))
    torch.testing.assert_close(losses.softmax(z, dim=1), F.softmax(z, dim=1))
    naive = torch.exp(z) / torch.exp(z).sum(dim=1, keepdim=True)
    assert torch.isnan(naive).any(), "the naive formula should overflow here"
    loss = losses.cross_entropy(z, torch.tensor([1, 0]))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(z, torch.tensor([1, 0])))


def test_analytic_gradient_equals_autograd():
    logits, target, _ = _case((9,), 7, seed=3)
    logits.requires_grad_(True)
    (auto,) = torch.autograd.grad(losses.cross_entropy(logits, target), logits)
    torch.testing.assert_close(losses.softmax_cross_entropy_grad(logits.detach(), target), auto)


def test_gradcheck_with_weights_smoothing_and_ignore():
    logits, target, weight = _case((5,), 4, seed=5, ignore_fraction=0.3, ignore_index=1)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: losses.cross_entropy(z, target, weight=weight, ignore_index=1,
                                       label_smoothing=0.1), (logits,))


def test_bad_arguments_are_refused():
    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="reduction"):
        losses.cross_entropy(z, y, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.cross_entropy(z, y, label_smoothing=1.5)
