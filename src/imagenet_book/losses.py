"""Losses written from first principles: softmax, log-softmax and cross-entropy.

``cross_entropy`` here computes exactly what ``torch.nn.functional.cross_entropy`` computes
(class-index and class-probability targets, ``weight``, ``ignore_index``, ``reduction`` and
``label_smoothing``), in a few readable lines built on the log-sum-exp trick. The tests check the
two agree; the later chapters use this one.

Taught in: chapters/02_cross_entropy.ipynb.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["softmax", "log_softmax", "cross_entropy", "softmax_cross_entropy_grad"]


def log_softmax(z: Tensor, dim: int = -1) -> Tensor:
    """log softmax(z) along ``dim``, stable for large logits.

    ``log softmax(z)_k = z_k - log sum_j exp(z_j)``, and the log-sum-exp is computed as
    ``m + log sum_j exp(z_j - m)`` with ``m = max_j z_j`` so that no ``exp`` overflows.

    Args:
        z: logits, float tensor of any shape ``(..., C, ...)``.
        dim: the class dimension.

    Returns:
        Log-probabilities, same shape and dtype as ``z``.

    Taught in: chapters/02_cross_entropy.ipynb.
    """
    m = z.amax(dim=dim, keepdim=True).detach()  # a constant shift: it does not change the value
    return z - m - torch.log(torch.exp(z - m).sum(dim=dim, keepdim=True))


def softmax(z: Tensor, dim: int = -1) -> Tensor:
    """softmax(z) along ``dim``: non-negative, sums to 1. Same shape and dtype as ``z``.

    Taught in: chapters/02_cross_entropy.ipynb.
    """
    return torch.exp(log_softmax(z, dim=dim))


def cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy between ``softmax(logits)`` and the targets, as ``F.cross_entropy`` defines it.

    Args:
        logits: float ``(N, C)`` or ``(N, C, d1, ..., dk)`` (for example ``(N, C, H, W)`` in
            segmentation); the class dimension is 1.
        target: either class indices, int64 ``(N,)`` / ``(N, d1, ..., dk)`` with values in
            ``[0, C)`` or ``ignore_index``; or class probabilities, float, same shape as ``logits``.
        weight: optional float ``(C,)``, a weight per class.
        ignore_index: index targets equal to it contribute nothing (index targets only).
        reduction: ``"mean"`` (for index targets: weighted mean over the non-ignored elements,
            divided by the sum of their weights), ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in ``[0, 1]``: the target becomes ``(1 - eps) * y + eps / C``.

    Returns:
        A scalar for ``"mean"``/``"sum"``; for ``"none"``, one loss per element, shape
        ``(N,)`` / ``(N, d1, ..., dk)``.

    Taught in: chapters/02_cross_entropy.ipynb.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    num_classes = logits.shape[1]
    logp = log_softmax(logits, dim=1)
    # A weight per class, broadcast along the class dimension: shape (1, C, 1, ..., 1).
    w = torch.ones(num_classes, dtype=logp.dtype, device=logp.device) if weight is None else weight
    w = w.reshape(1, num_classes, *([1] * (logits.dim() - 2)))

    if target.is_floating_point():  # class probabilities
        if label_smoothing > 0:
            target = target * (1 - label_smoothing) + label_smoothing / num_classes
        loss = -(w * target * logp).sum(dim=1)
        if reduction == "mean":
            return loss.sum() / (logits.numel() // num_classes)
        return loss.sum() if reduction == "sum" else loss

    keep = target != ignore_index
    safe_target = torch.where(keep, target, torch.zeros_like(target)).unsqueeze(1)
    w_target = w.expand_as(logp).gather(1, safe_target).squeeze(1) * keep  # (N, d1, ..., dk)
    nll = -logp.gather(1, safe_target).squeeze(1) * w_target
    # Label smoothing adds eps/C times the loss against the uniform distribution.
    smooth = -(w * logp).sum(dim=1) * keep
    if reduction == "none":
        return (1 - label_smoothing) * nll + label_smoothing / num_classes * smooth
    if reduction == "sum":
        return (1 - label_smoothing) * nll.sum() + label_smoothing / num_classes * smooth.sum()
    denom = w_target.sum()
    return ((1 - label_smoothing) * nll.sum() + label_smoothing / num_classes * smooth.sum()) / denom


def softmax_cross_entropy_grad(logits: Tensor, target: Tensor) -> Tensor:
    """The analytic gradient of the mean cross-entropy with respect to the logits.

    ``dL/dz = (softmax(z) - onehot(y)) / N`` for ``L = mean_i CE(z_i, y_i)``.

    Args:
        logits: float ``(N, C)``.
        target: int64 ``(N,)`` class indices.

    Returns:
        float ``(N, C)``, the same as ``torch.autograd.grad(cross_entropy(z, y), z)``.

    Taught in: chapters/02_cross_entropy.ipynb.
    """
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
    return (softmax(logits, dim=1) - onehot) / logits.shape[0]
