"""RMSprop, as ``torch.optim.RMSprop`` (not centered); ε is added after the square root::

    g ← ∇w L + λ w                          (weight_decay λ)
    s ← α s + (1 − α) g²
    b ← μ b + g / (√s + ε);  w ← w − η b    (momentum μ > 0)
    w ← w − η g / (√s + ε)                  (momentum 0)
"""

from __future__ import annotations

from typing import Any

from backends import Backend
from backends.base import Updated, rmsprop_update
from backends.base import add_scaled as _add_scaled  # portable, for cores without a backend

from .. import validators as check
from .base import Optimizer, namespace


def rmsprop(params: list, grads: list, square_avgs: list, momentum_buffers: Updated | None = None, *, lr: float,
            alpha: float, eps: float, momentum: float = 0.0, weight_decay: float = 0.0,
            backend: Backend | None = None) -> tuple[Updated, Updated, Updated | None]:
    """The update; ``momentum_buffers`` are needed when ``momentum`` is not 0. Returns the updated
    ``(params, square_avgs, momentum_buffers)``, which the caller must keep (see ``sgd``; with a ``backend``,
    its ``multi_tensor_rmsprop``)."""
    if not params:
        return [], [], [] if momentum > 0 else None
    options = {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum, "weight_decay": weight_decay}
    if backend is None:
        return rmsprop_update(namespace(params), _add_scaled, params, grads, square_avgs, momentum_buffers,
                              **options)
    return backend.multi_tensor_rmsprop(params, grads, square_avgs, momentum_buffers, **options)


class RMSprop(Optimizer):
    """``RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0)``."""

    name = "rmsprop"
    hyperparameter_names = ("alpha", "eps", "momentum", "weight_decay")
    # the defaults of the groups, set from hyperparameter_names by Optimizer.__init__
    alpha: float
    eps: float
    momentum: float
    weight_decay: float

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay)

    def _validate(self, hp: dict) -> dict:
        owner = type(self).__name__
        return {
            "alpha": check.number(hp["alpha"], "alpha", low=0, high=1, high_open=True, owner=owner),
            "eps": check.number(hp["eps"], "eps", low=0, low_open=True, owner=owner),
            "momentum": check.number(hp["momentum"], "momentum", low=0, high=1, high_open=True, owner=owner),
            "weight_decay": check.number(hp["weight_decay"], "weight_decay", low=0, owner=owner),
        }

    def buffer_names(self, group: dict | None = None) -> tuple[str, ...]:
        momentum = self.momentum if group is None else group["momentum"]
        return ("square_avg", "momentum_buffer") if momentum > 0 else ("square_avg",)

    def _update(self, group, params, grads, states, steps):
        momentum = group["momentum"]
        buffers: Updated | None = self._buffer_list(states, "momentum_buffer") if momentum > 0 else None
        params, square_avgs, buffers = rmsprop(
            params, grads, self._buffer_list(states, "square_avg"), buffers, lr=group["lr"], alpha=group["alpha"],
            eps=group["eps"], momentum=momentum, weight_decay=group["weight_decay"], backend=self.backend)
        if buffers is None:
            return params, [{"square_avg": s} for s in square_avgs]
        return params, [{"square_avg": s, "momentum_buffer": b} for s, b in zip(square_avgs, buffers)]
