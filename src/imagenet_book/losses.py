"""Losses written from first principles: softmax, log-softmax and cross-entropy.

``cross_entropy`` here computes exactly what ``torch.nn.functional.cross_entropy`` computes
(class-index and class-probability targets, ``weight``, ``ignore_index``, ``reduction`` and
``label_smoothing``), in a few readable lines built on the log-sum-exp trick. The tests check the
two agree; the later chapters use this one.

The detection losses (``sigmoid_focal_loss``, ``smooth_l1_loss``, ``box_regression_loss``) are
the two terms of a detector's ``L = L_cls + L_reg``; they agree with
``torchvision.ops.sigmoid_focal_loss`` and ``torch.nn.functional.smooth_l1_loss`` (tested).

Taught in: chapters/02_cross_entropy.ipynb (cross-entropy), chapters/08_detection_voc.ipynb
(detection losses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["softmax", "log_softmax", "cross_entropy", "softmax_cross_entropy_grad",
           "BOX_LOSSES", "sigmoid_focal_loss", "smooth_l1_loss", "box_regression_loss", "multilabel_loss"]


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


# ------------------------------------------------------------------------------- detection losses

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return loss.mean() if reduction == "mean" else loss.sum() if reduction == "sum" else loss


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float | None = 0.25, gamma: float = 2.0,
                       reduction: str = "none") -> Tensor:
    """The focal loss of RetinaNet (Lin et al., 2017), one binary decision per element.

    With ``p = sigmoid(logits)`` and ``p_t = p`` where the target is 1, ``1 - p`` where it is 0::

        FL = -alpha_t * (1 - p_t) ** gamma * log(p_t),   alpha_t = alpha (target 1), 1 - alpha (target 0)

    ``-log(p_t)`` is the binary cross-entropy; the factor ``(1 - p_t) ** gamma`` shrinks the
    loss of elements that are already right (``p_t`` near 1), so the thousands of easy
    background anchors of a detector no longer drown the few objects. ``gamma=0`` and
    ``alpha=None`` give plain BCE (``F.binary_cross_entropy_with_logits``). ``log(p_t)`` is
    computed from the logits (stable for any logit).

    Args:
        logits: float, any shape (a detector: ``(B, N_anchors, C)``).
        targets: float, same shape, 0 or 1 (soft targets in ``[0, 1]`` work too).
        alpha: weight of the positives in ``[0, 1]``; ``None``: no weighting.
        gamma: focusing exponent ``>= 0``.
        reduction: ``"none"`` (same shape as ``logits``), ``"mean"`` or ``"sum"``.

    Returns:
        The loss, float: ``logits``'s shape, or a scalar.

    Equals ``torchvision.ops.sigmoid_focal_loss`` (``alpha=-1`` there is our ``alpha=None``).

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log(p_t)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma if gamma else bce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 1.0, reduction: str = "mean") -> Tensor:
    """Smooth-L1 (Huber-like) loss: quadratic near 0, linear beyond ``beta``.

    With ``x = input - target``::

        loss = 0.5 * x**2 / beta    if |x| < beta
             = |x| - 0.5 * beta     otherwise

    Its gradient is ``x / beta`` near 0 and ``sign(x)`` beyond: never larger than 1 in size,
    so one badly matched box (an outlier) cannot dominate a batch, as it does under the squared
    error, whose gradient ``2 x`` grows with the error. ``beta=0`` gives the L1 loss.

    Args:
        input, target: float, the same shape (a detector: encoded box deltas ``(N, 4)``).
        beta: where the quadratic part ends, ``>= 0``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        The loss, float: ``input``'s shape, or a scalar. Equals
        ``torch.nn.functional.smooth_l1_loss(input, target, beta=beta, reduction=reduction)``.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    x = (input - target).abs()
    loss = x if beta == 0 else torch.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta)
    return _reduce(loss, reduction)


#: The box regression losses :func:`box_regression_loss` knows.
BOX_LOSSES = ("smooth_l1", "l1", "mse")


def box_regression_loss(input: Tensor, target: Tensor, kind: str = "smooth_l1", *, beta: float = 1.0 / 9,
                        reduction: str = "sum") -> Tensor:
    """The box term ``L_reg`` of a detector, by name: ``"smooth_l1"``, ``"l1"`` or ``"mse"``.

    Args:
        input: predicted box deltas, float ``(N, 4)`` (any shape works).
        target: the encoded ground-truth deltas, same shape.
        kind: ``"smooth_l1"`` (:func:`smooth_l1_loss` with ``beta``; the default ``1/9`` is
            Detectron's RetinaNet setting), ``"l1"`` or ``"mse"`` (squared error).
        beta: see :func:`smooth_l1_loss` (``"smooth_l1"`` only).
        reduction: ``"sum"`` (default: a detector divides by its number of positive anchors),
            ``"mean"`` or ``"none"``.

    Returns:
        The loss, float: ``input``'s shape, or a scalar.

    Taught in: chapters/08_detection_voc.ipynb.
    """
    if kind == "smooth_l1":
        return smooth_l1_loss(input, target, beta=beta, reduction=reduction)
    if kind == "l1":
        return smooth_l1_loss(input, target, beta=0.0, reduction=reduction)
    if kind == "mse":
        return _reduce((input - target) ** 2, reduction)
    raise ValueError(f"Unknown box loss {kind!r}. Choose one of: {', '.join(BOX_LOSSES)}.")


def multilabel_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Binary cross-entropy with logits, one independent yes/no question per class, averaged
    over the entries that count (``mask == 1``).

    Args:
        logits: float ``(N, C)``.
        targets: float ``(N, C)`` in {0, 1}.
        mask: float ``(N, C)``: 0 leaves an entry out (VOC: classes present only as difficult
            objects); ``None``: every entry counts.

    Returns:
        A float scalar: ``sum(mask * bce) / sum(mask)`` (0 when nothing counts).

    Taught in: chapters/07_finetune_voc_classification.ipynb
    """
    if logits.shape != targets.shape or (mask is not None and mask.shape != logits.shape):
        raise ValueError(f"logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
                         f"{None if mask is None else tuple(mask.shape)} must all be (N, C).")
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if mask is None:
        return bce.mean()
    return (bce * mask).sum() / mask.sum().clamp(min=1)
