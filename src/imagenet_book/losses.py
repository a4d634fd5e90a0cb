"""Losses written from first principles: softmax, log-softmax and cross-entropy.

``cross_entropy`` here computes exactly what ``torch.nn.functional.cross_entropy`` computes
(class-index and class-probability targets, ``weight``, ``ignore_index``, ``reduction`` and
``label_smoothing``), in a few readable lines built on the log-sum-exp trick. The tests check the
two agree; the later chapters use this one.

The detection losses (``sigmoid_focal_loss``, ``smooth_l1_loss``, ``box_regression_loss``) are
the two terms of a detector's ``L = L_cls + L_reg``; they agree with
``torchvision.ops.sigmoid_focal_loss`` and ``torch.nn.functional.smooth_l1_loss`` (tested).

The contrastive loss of SimCLR (``nt_xent``, built on ``contrastive_logits``) is cross-entropy
again: each of ``2N`` embeddings classifies which of the other ``2N - 1`` is its positive.

The face-embedding loss of ArcFace (``arcface_loss``, built on ``arcface_logits``) is cross-entropy
once more, over cosines between normalised embeddings and class centres, the target's angle
widened by an additive margin.

Taught in: chapters/02_cross_entropy.ipynb (cross-entropy), chapters/08_detection_voc.ipynb
(detection losses), chapters/11_self_supervised.ipynb (the contrastive loss, the ArcFace loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["softmax", "log_softmax", "cross_entropy", "softmax_cross_entropy_grad",
           "BOX_LOSSES", "sigmoid_focal_loss", "smooth_l1_loss", "box_regression_loss", "multilabel_loss",
           "contrastive_logits", "nt_xent", "arcface_logits", "arcface_loss"]


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


# ------------------------------------------------------------------------------- contrastive loss


def contrastive_logits(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """The ``2N``-way classification problem inside SimCLR's loss: its logits and targets.

    The ``2N`` embeddings ``z = [z1; z2]`` are L2-normalised, so ``z_i . z_j`` is the cosine
    similarity ``s_ij``. Row ``i`` of the logits is ``s_ij / temperature`` for every ``j``, with
    ``-inf`` at ``j = i`` (an embedding is not a candidate for itself); its target is the index
    of the other view of the same image (``i + N`` for ``i < N``, ``i - N`` after). The other
    ``2N - 2`` candidates are the negatives.

    Args:
        z1, z2: float ``(N, D)``: the embeddings of two views of the same ``N`` images, row by row.
        temperature: ``tau > 0``; a small ``tau`` sharpens the softmax onto the hardest negatives.

    Returns:
        ``(logits, targets)``: float ``(2N, 2N)``, int64 ``(2N,)``.

    Raises:
        ValueError: the shapes differ or are not ``(N, D)``, or ``temperature <= 0``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must both be (N, D) embeddings of the same N images, got "
                         f"{tuple(z1.shape)} and {tuple(z2.shape)}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pairs, float("-inf"))
    i = torch.arange(n, device=z.device)
    return logits, torch.cat([i + n, i])


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (NT-Xent; Chen et al., 2020).

    With ``z = [z1; z2]`` L2-normalised and ``s_ij = z_i . z_j``, anchor ``i`` and its positive
    ``p(i)`` (the other view of the same image) have the loss::

        l_i = -log( exp(s_i,p(i) / tau) / sum_{k != i} exp(s_ik / tau) )

    the denominator running over the positive and the ``2N - 2`` negatives (every view of every
    other image of the batch); the loss is the mean of ``l_i`` over all ``2N`` anchors, which
    is cross-entropy over :func:`contrastive_logits`. It is symmetric in ``z1`` and ``z2``; it
    is at least ``0`` and starts near ``log(2N - 1)`` for random embeddings, so a larger batch
    gives more negatives to tell apart.

    Args:
        z1, z2: float ``(N, D)``: the projections of two views of the same ``N`` images.
        temperature: ``tau > 0``.

    Returns:
        A float scalar.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    logits, targets = contrastive_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


# ------------------------------------------------------------------------------- face embeddings


def arcface_logits(embeddings: Tensor, weight: Tensor, target: Tensor, scale: float, margin: float) -> Tensor:
    """The logits of ArcFace's additive angular margin softmax (Deng et al., 2019).

    Derivation. A linear classifier's logit is ``W_j . x = |W_j| |x| cos(theta_j)``, with
    ``theta_j`` the angle between the embedding ``x`` and class ``j``'s weight ``W_j``.
    Normalising both (``|W_j| = |x| = 1``) leaves only the angle, and a fixed scale ``s`` makes
    the softmax sharp enough to train: ``z_j = s cos(theta_j)``. Cross-entropy on these logits
    pulls ``x`` towards its class centre ``W_y`` and away from the others, on the unit sphere.
    Verification later compares embeddings by the same cosine. ArcFace asks for more than
    winning: the target's angle is charged an extra ``m`` radians,
    ``z_y = s cos(theta_y + m)``, so the loss is low only when ``theta_y + m < theta_j`` for
    every other class ``j``: a geodesic margin of ``m`` between ``x`` and every other class.
    Same-person photos are pressed into a tighter cone than a plain softmax needs, which is
    what a threshold on the cosine then separates. ``cos(theta + m)`` is computed without
    ``acos`` (whose gradient blows up at +-1), by the angle-sum rule:

        cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m),   sin(theta) = sqrt(1 - cos^2(theta))

    (``theta`` is in ``[0, pi]``, so the root is the sine). Past ``theta = pi - m``,
    ``cos(theta + m)`` would rise again (the penalty would reward a worse angle), so there the
    target logit continues as ``s (cos(theta) - m sin(m))``, a decreasing function of theta
    (insightface's rule). With ``m = 0`` this is the normalised softmax: cross-entropy on
    ``s cos(theta_j)``.

    Args:
        embeddings: float ``(N, D)``, any length (normalised here).
        weight: float ``(C, D)``: one centre per class (normalised here).
        target: int64 ``(N,)`` class indices.
        scale: ``s > 0`` (e.g. 30 or 64).
        margin: ``m >= 0``, in radians (e.g. 0.5).

    Returns:
        float ``(N, C)``: ``s cos(theta_j)`` for ``j != y`` and ``s cos(theta_y + m)`` (or its
        continuation) for the target.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    if scale <= 0 or margin < 0:
        raise ValueError(f"scale must be > 0 and margin >= 0, got scale={scale}, margin={margin}.")
    cos = F.normalize(embeddings, dim=1) @ F.normalize(weight, dim=1).T  # (N, C)
    cos_y = cos.gather(1, target[:, None]).clamp(-1.0, 1.0)  # (N, 1)
    sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(min=1e-12))
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    with_margin = cos_y * cos_m - sin_y * sin_m  # cos(theta_y + m)
    beyond = cos_y - margin * sin_m  # theta_y > pi - m: keep decreasing
    target_logit = torch.where(cos_y > math.cos(math.pi - margin), with_margin, beyond)
    return scale * cos.scatter(1, target[:, None], target_logit)


def arcface_loss(embeddings: Tensor, weight: Tensor, target: Tensor, scale: float = 30.0,
                 margin: float = 0.5) -> Tensor:
    """ArcFace's loss: cross-entropy over :func:`arcface_logits` (mean over the batch).

    Shapes: embeddings float ``(N, D)``, weight ``(C, D)``, target int64 ``(N,)`` -> a float
    scalar. With ``margin=0`` it equals ``F.cross_entropy(scale * cos, target)`` (the
    normalised softmax), and it is never smaller than that for ``margin > 0``.

    Taught in: chapters/11_self_supervised.ipynb.
    """
    return F.cross_entropy(arcface_logits(embeddings, weight, target, scale, margin), target)
