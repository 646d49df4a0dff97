"""Adam and AdamW, as ``torch.optim.Adam`` / ``torch.optim.AdamW`` (without amsgrad).

For step t (counted per parameter from 1)::

    w ← w (1 − η λ)                         (AdamW: decoupled weight decay λ)
    g ← ∇w L + λ w                          (Adam: L2 weight decay λ, added to the gradient)
    m ← β1 m + (1 − β1) g
    v ← β2 v + (1 − β2) g²
    w ← w − η / (1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε)
"""

from __future__ import annotations

from typing import Any

from backends import Backend
from backends.base import Updated, adam_update
from backends.base import add_scaled as _add_scaled  # portable, for cores without a backend
from backends.base import scale as _scale

from .. import validators as check
from ..errors import ConfigError
from .base import Optimizer, namespace


def adam(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list, *, lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
         decoupled_weight_decay: bool = False, backend: Backend | None = None) -> tuple[Updated, Updated, Updated]:
    """The update; ``steps[i]`` is parameter i's step number including this one (an int, or a 0-d array: a
    device scalar). Returns the updated ``(params, exp_avgs, exp_avg_sqs)``, which the caller must keep (see
    ``sgd``). With a ``backend``, its multi-tensor update runs (``multi_tensor_adam``), once per distinct step
    number (once, unless some parameters missed some steps)."""
    if not params:
        return [], [], []
    options: dict[str, Any] = {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps, "weight_decay": weight_decay,
               "decoupled_weight_decay": decoupled_weight_decay}
    if backend is None:
        xp = namespace(params)
        return _by_step(lambda p, g, m, v, step: adam_update(xp, _add_scaled, _scale, p, g, m, v, step=step,
                                                             **options), params, grads, exp_avgs, exp_avg_sqs, steps)
    return _by_step(lambda p, g, m, v, step: backend.multi_tensor_adam(p, g, m, v, step=step, **options),
                    params, grads, exp_avgs, exp_avg_sqs, steps)


def _by_step(update, params, grads, exp_avgs, exp_avg_sqs, steps):
    """``update`` over every parameter at once when they share a step number, else once per step number."""
    if Optimizer._same_step(steps):
        return update(params, grads, exp_avgs, exp_avg_sqs, steps[0])
    new = [list(params), list(exp_avgs), list(exp_avg_sqs)]
    for step in dict.fromkeys(steps):
        chosen = [i for i, s in enumerate(steps) if s == step]
        results = update(*([lst[i] for i in chosen] for lst in (params, grads, exp_avgs, exp_avg_sqs)), step)
        for target, result in zip(new, results):
            for i, array in zip(chosen, result):
                target[i] = array
    return tuple(new)


def adamw(params: list, grads: list, exp_avgs: list, exp_avg_sqs: list, steps: list[int], *, lr: float,
          beta1: float, beta2: float, eps: float, weight_decay: float,
          backend: Backend | None = None) -> tuple[Updated, Updated, Updated]:
    """Adam with decoupled weight decay: ``w ← w (1 − η λ)`` before the Adam step."""
    return adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=weight_decay, decoupled_weight_decay=True, backend=backend)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)``; weight decay is L2."""

    name = "adam"
    hyperparameter_names = ("betas", "eps", "weight_decay")
    # the defaults of the groups, set from hyperparameter_names by Optimizer.__init__
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    decoupled_weight_decay = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _validate(self, hp: dict) -> dict:
        owner = type(self).__name__
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"{owner}: betas must be a pair of numbers in [0, 1), got {betas!r}")
        beta1 = check.number(betas[0], "betas[0]", low=0, high=1, high_open=True, owner=owner)
        beta2 = check.number(betas[1], "betas[1]", low=0, high=1, high_open=True, owner=owner)
        eps = check.number(hp["eps"], "eps", low=0, low_open=True, owner=owner)
        weight_decay = check.number(hp["weight_decay"], "weight_decay", low=0, owner=owner)
        return {"betas": (beta1, beta2), "eps": eps, "weight_decay": weight_decay}

    def buffer_names(self, group: dict | None = None) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _update(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        params, exp_avgs, exp_avg_sqs = adam(
            params, grads, self._buffer_list(states, "exp_avg"), self._buffer_list(states, "exp_avg_sq"), steps,
            lr=group["lr"],
            beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
            decoupled_weight_decay=self.decoupled_weight_decay, backend=self.backend)
        return params, [{"exp_avg": m, "exp_avg_sq": v} for m, v in zip(exp_avgs, exp_avg_sqs)]


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)``; decoupled weight decay."""

    name = "adamw"
    decoupled_weight_decay = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay)
