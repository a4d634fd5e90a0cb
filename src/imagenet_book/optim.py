"""Three optimizers PyTorch does not ship, written out so they can be read: Lion, LAMB and Ranger.

Both are studied as levers of the fast pretraining recipe (chapter 06's appendix), beside SGD with
(Nesterov) momentum and AdamW, which ``torch.optim`` has. :func:`imagenet_book.recipe.make_optimizer`
builds any of them by name from a :class:`~imagenet_book.recipe.TrainConfig`.

* **Lion** (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the
  *sign* of an interpolation between the momentum and the gradient, so every weight moves by
  exactly ``lr`` per step (plus decoupled weight decay); a second, slower momentum is kept::

      u = sign(beta1 * m + (1 - beta1) * g)
      w <- w - lr * (u + weight_decay * w)
      m <- beta2 * m + (1 - beta2) * g

  Steps of size ``lr`` in every coordinate are larger than Adam's, so Lion's rate is 3-10x
  smaller than AdamW's, and its weight decay as much larger.
* **LAMB** (You et al., 2020, "Large Batch Optimization for Deep Learning"): Adam's update (with
  decoupled weight decay added to it) rescaled per tensor by the *trust ratio*
  ``||w|| / ||update||``, so that every layer moves by the same fraction of its own size::

      m <- beta1 * m + (1 - beta1) * g;   v <- beta2 * v + (1 - beta2) * g^2   (bias-corrected)
      r = m / (sqrt(v) + eps) + weight_decay * w
      w <- w - lr * (||w|| / ||r||) * r     (ratio 1 when either norm is 0)

* **Ranger** (Wright, 2019; fast.ai's Imagenette recipe): RAdam (Liu et al., 2020, "On the
  Variance of the Adaptive Learning Rate and Beyond") inside Lookahead (Zhang et al., 2019,
  "Lookahead Optimizer: k steps forward, 1 step back"). RAdam is Adam whose step is scaled down
  by ``r_t`` while too few squared gradients have been averaged for ``v`` to be trusted (and is a
  plain momentum step before that): a warmup that needs no setting. Lookahead keeps a slow copy
  of the weights and, every ``k`` steps, moves it ``alpha`` of the way to the fast weights, then
  restarts the fast weights from it::

      m, v as Adam's (bias-corrected m_hat, v_hat);  rho_inf = 2 / (1 - beta2) - 1
      rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
      w <- w * (1 - lr * weight_decay)                                  (decoupled)
      w <- w - lr * r_t * m_hat / (sqrt(v_hat) + eps)   if rho_t > 5, else  w <- w - lr * m_hat
      every k steps:  slow <- slow + alpha * (w - slow);  w <- slow

All three follow ``torch.optim.Optimizer``'s contract (parameter groups, ``state_dict``), so the engine
checkpoints and resumes them like SGD.

Taught in: chapters/A2_fast_recipe.ipynb.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

__all__ = ["Lamb", "Lion", "Ranger", "rectification"]


class _TensorByTensor(torch.optim.Optimizer):
    """``step()`` for optimizers written one tensor at a time: the closure, then
    ``self._update(p, group)`` for every parameter that has a gradient."""

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss


def _adam_moments(state: dict[str, Any], p: torch.Tensor, beta1: float,
                  beta2: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One step of Adam's moments in ``state`` (made on the first call): the step count ``t``,
    ``m <- beta1 * m + (1 - beta1) * g`` and ``v <- beta2 * v + (1 - beta2) * g^2``, not
    bias-corrected. Returns ``(m, v, t)``; LAMB and Ranger both start from it."""
    if "step" not in state:
        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
    state["step"] += 1
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.lerp_(p.grad, 1 - beta1)
    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
    return m, v, state["step"]


class Lion(_TensorByTensor):
    """Lion: ``w <- w - lr * (sign(beta1 * m + (1 - beta1) * g) + weight_decay * w)``, then
    ``m <- beta2 * m + (1 - beta2) * g`` (see the module's docstring).

    Args:
        params: parameters or parameter groups.
        lr: the step of every coordinate (typically 3-10x smaller than AdamW's rate).
        betas: ``(beta1, beta2)``: the interpolation of the update and the momentum's decay.
        weight_decay: decoupled, multiplied by ``lr``.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion needs lr > 0 and betas in [0, 1); got lr={lr}, betas={betas}.")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
        update = m.lerp(p.grad, 1 - beta1).sign_()
        p.mul_(1 - group["lr"] * group["weight_decay"]).add_(update, alpha=-group["lr"])
        m.lerp_(p.grad, 1 - beta2)


class Lamb(_TensorByTensor):
    """LAMB: Adam's bias-corrected update plus decoupled weight decay, scaled per tensor by the
    trust ratio ``||w|| / ||update||`` (see the module's docstring).

    Args:
        params: parameters or parameter groups.
        lr: peak rate (the fraction of a tensor's norm it moves per step, at trust ratio 1).
        betas, eps: Adam's.
        weight_decay: added to the update before the trust ratio (decoupled from the gradient).

    Taught in: chapters/A2_fast_recipe.ipynb.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0) -> None:
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LAMB needs lr > 0 and betas in [0, 1); got lr={lr}, betas={betas}.")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        m, v, t = _adam_moments(self.state[p], p, beta1, beta2)
        update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt_().add_(group["eps"]))
        if group["weight_decay"]:
            update.add_(p, alpha=group["weight_decay"])
        w_norm, u_norm = p.norm(), update.norm()
        trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
        p.sub_(update * (group["lr"] * trust))


def rectification(step: int, beta2: float) -> float | None:
    """RAdam's ``r_t`` at optimizer step ``step`` (1-based) for Adam's ``beta2``: the factor on
    Adam's step while the average of squared gradients is still short, rising towards 1; ``None``
    while it is too short to use (``rho_t <= 5``), when RAdam takes a momentum step instead.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2 ** step / (1 - beta2 ** step)
    if rho <= 5:
        return None
    return math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))


class Ranger(_TensorByTensor):
    """Ranger: a RAdam step with decoupled weight decay, inside Lookahead (see the module's
    docstring). fast.ai's Imagenette recipe runs it at lr 1e-2 (weight decay 1e-2, betas
    (0.9, 0.99), eps 1e-6) with the flat-then-cosine schedule and no warmup of its own.

    Args:
        params: parameters or parameter groups.
        lr: peak rate.
        betas, eps: Adam's.
        weight_decay: decoupled, multiplied by ``lr``.
        k, alpha: Lookahead's: every ``k`` steps the slow weights move ``alpha`` of the way to the
            fast ones, and the fast ones restart from them.

    Taught in: chapters/A2_fast_recipe.ipynb.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99),
                 eps: float = 1e-6, weight_decay: float = 0.0, k: int = 6, alpha: float = 0.5) -> None:
        if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas) or k < 1 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"Ranger needs lr > 0, betas in [0, 1), k >= 1 and alpha in (0, 1]; got lr={lr}, "
                             f"betas={betas}, k={k}, alpha={alpha}.")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, k=k, alpha=alpha))

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[p]
        if not state:
            state["slow"] = p.detach().clone()  # Lookahead's slow weights start at the fast ones
        m, v, t = _adam_moments(state, p, beta1, beta2)
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        m_hat = m / (1 - beta1 ** t)
        r = rectification(t, beta2)
        if r is not None:  # enough squared gradients averaged: Adam's step, scaled by RAdam's r_t
            p.addcdiv_(m_hat, (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"]), value=-group["lr"] * r)
        else:  # too few: a momentum step
            p.add_(m_hat, alpha=-group["lr"])
        if t % group["k"] == 0:  # Lookahead: the slow weights move, the fast ones restart from them
            state["slow"].lerp_(p, group["alpha"])
            p.copy_(state["slow"])
