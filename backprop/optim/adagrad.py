"""AdaGrad, as ``torch.optim.Adagrad`` (without lr_decay); ε is added after the square root::

    g ← ∇w L + λ w                          (weight_decay λ)
    s ← s + g²                              (s starts at initial_accumulator_value)
    w ← w − η g / (√s + ε)
"""

from __future__ import annotations

from typing import Any

from backends import Backend
from backends.base import Updated, adagrad_update
from backends.base import add_scaled as _add_scaled  # portable, for cores without a backend

from .. import validators as check
from .base import Optimizer, namespace


def adagrad(params: list, grads: list, state_sums: list, *, lr: float, eps: float, weight_decay: float = 0.0,
            backend: Backend | None = None) -> tuple[Updated, Updated]:
    """The update. Returns the updated ``(params, state_sums)``, which the caller must keep (see ``sgd``; with a
    ``backend``, its ``multi_tensor_adagrad``)."""
    if not params:
        return [], []
    if backend is None:
        return adagrad_update(namespace(params), _add_scaled, params, grads, state_sums, lr=lr, eps=eps,
                              weight_decay=weight_decay)
    return backend.multi_tensor_adagrad(params, grads, state_sums, lr=lr, eps=eps, weight_decay=weight_decay)


class AdaGrad(Optimizer):
    """``AdaGrad(params, lr=1e-2, eps=1e-10, weight_decay=0.0, initial_accumulator_value=0.0)``."""

    name = "adagrad"
    hyperparameter_names = ("eps", "weight_decay", "initial_accumulator_value")
    # the defaults of the groups, set from hyperparameter_names by Optimizer.__init__
    eps: float
    weight_decay: float
    initial_accumulator_value: float

    def __init__(self, params: Any, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0):
        super().__init__(params, lr, eps=eps, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value)

    def _validate(self, hp: dict) -> dict:
        owner = type(self).__name__
        return {
            "eps": check.number(hp["eps"], "eps", low=0, low_open=True, owner=owner),
            "weight_decay": check.number(hp["weight_decay"], "weight_decay", low=0, owner=owner),
            "initial_accumulator_value": check.number(hp["initial_accumulator_value"], "initial_accumulator_value",
                                                      low=0, owner=owner),
        }

    def buffer_names(self, group: dict | None = None) -> tuple[str, ...]:
        return ("sum",)

    def _init_buffer(self, buffer: str, param, group):
        return self.backend.xp.full(param.shape, group["initial_accumulator_value"], dtype=param.dtype,
                                    device=self.backend.device)

    def _update(self, group, params, grads, states, steps):
        params, sums = adagrad(params, grads, self._buffer_list(states, "sum"), lr=group["lr"], eps=group["eps"],
                               weight_decay=group["weight_decay"], backend=self.backend)
        return params, [{"sum": s} for s in sums]


Adagrad = AdaGrad  # PyTorch's spelling
