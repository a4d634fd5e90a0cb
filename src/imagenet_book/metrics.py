"""Evaluation metrics.

Taught in: chapters/01_imagenet.ipynb (top-k accuracy).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_correct", "topk_accuracy"]


def topk_correct(logits: Tensor, target: Tensor, k: int) -> Tensor:
    """Whether each example's true class is among its ``k`` highest scores.

    Args:
        logits: float ``(N, C)`` scores (logits or probabilities: only their order matters).
        target: int64 ``(N,)`` true class indices.
        k: how many guesses each example gets, ``1 <= k <= C``.

    Returns:
        bool ``(N,)``.

    Taught in: chapters/01_imagenet.ipynb.
    """
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f"k must be between 1 and the number of classes {logits.shape[1]}, got {k}")
    top = logits.topk(k, dim=1).indices  # (N, k)
    return (top == target.unsqueeze(1)).any(dim=1)


def topk_accuracy(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy, as a fraction in [0, 1], for each k in ``ks``.

    Args:
        logits: float ``(N, C)``.
        target: int64 ``(N,)``.
        ks: the values of k; those larger than C are skipped.

    Returns:
        ``{k: accuracy}``.

    Taught in: chapters/01_imagenet.ipynb.
    """
    with torch.no_grad():
        return {k: topk_correct(logits, target, k).float().mean().item()
                for k in ks if k <= logits.shape[1]}
