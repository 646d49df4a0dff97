"""Adam and AdamW, as ``torch.optim.Adam`` / ``torch.optim.AdamW`` (without amsgrad).

For step t (counted per parameter from 1)::

    w ← w (1 − η λ)                         (AdamW: decoupled weight decay λ)
    g ← ∇w L + λ w                          (Adam: L2 weight decay λ, added to the gradient)
    m ← β1 m + (1 − β1) g
    v ← β2 v + (1 − β2) g²
    w ← w − η / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
"""

from __future__ import annotations

import math

from backends.base import add_scaled as _add_scaled  # portable, for cores without a backend
from backends.base import scale as _scale

from ..errors import ConfigError
from .base import Optimizer, check_number, namespace


def adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list[int], *, lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
         decoupled_weight_decay: bool = False, backend=None) -> tuple[list, list, list]:
    """The update; ``steps[i]`` is parameter i's step number including this one. Returns the updated
    ``(params, exp_avgs, exp_avg_sqs)``, which the caller must keep (see ``sgd``)."""
    if not params:
        return [], [], []
    xp = namespace(params) if backend is None else backend.xp
    update = _add_scaled if backend is None else backend.add_scaled
    scale = _scale if backend is None else backend.scale
    new_params, new_avgs, new_avg_sqs = [], [], []
    for param, grad, exp_avg, exp_avg_sq, step in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        if weight_decay != 0:
            if decoupled_weight_decay:
                param = scale(param, 1 - lr * weight_decay)
            else:
                grad = grad + weight_decay * param
        exp_avg = update(exp_avg, grad, 1 - beta1, beta=beta1)
        exp_avg_sq = update(exp_avg_sq, grad * grad, 1 - beta2, beta=beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        denom = xp.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
        new_params.append(update(param, exp_avg / denom, -(lr / bias_correction1)))
        new_avgs.append(exp_avg)
        new_avg_sqs.append(exp_avg_sq)
    return new_params, new_avgs, new_avg_sqs


def adamw(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list[int], *, lr: float,
          beta1: float, beta2: float, eps: float, weight_decay: float, backend=None) -> tuple[list, list, list]:
    """Adam with decoupled weight decay: ``w ← w (1 − η λ)`` before the Adam step."""
    return adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=weight_decay, decoupled_weight_decay=True, backend=backend)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``; weight decay is L2."""

    name = "adam"
    hyperparameter_names = ("betas", "eps", "weight_decay")
    decoupled_weight_decay = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _validate(self, hp: dict) -> dict:
        owner = type(self).__name__
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"{owner}: betas must be a pair of numbers in [0, 1), got {betas!r}")
        beta1 = check_number(owner, "betas[0]", betas[0], low=0, high=1, high_open=True)
        beta2 = check_number(owner, "betas[1]", betas[1], low=0, high=1, high_open=True)
        eps = check_number(owner, "eps", hp["eps"], low=0, low_open=True)
        weight_decay = check_number(owner, "weight_decay", hp["weight_decay"], low=0)
        return {"betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay}

    def buffer_names(self, group=None) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _update(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        params, exp_avgs, exp_avg_sqs = adam(
            params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], steps, lr=group["lr"],
            beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            decoupled_weight_decay=self.decoupled_weight_decay, backend=self.backend)
        return params, [{"exp_avg": m, "exp_avg_sq": v} for m, v in zip(exp_avgs, exp_avg_sqs)]


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``; decoupled weight decay."""

    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)
