"""Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

As ``torch.optim.SGD`` (without dampening)::

    g ← ∇w L + λ w                          (weight_decay λ)
    b ← μ b + g                             (momentum μ; b starts at g)
    g ← g + μ b  if nesterov,  else  g ← b
    w ← w − η g
"""

from __future__ import annotations

from typing import Any

from backends import Backend
from backends.base import Updated, sgd_update
from backends.base import add_scaled as _add_scaled  # portable, for cores without a backend

from .. import validators as check
from ..errors import ConfigError
from .base import Optimizer


def sgd(params: list, grads: list, momentum_buffers: Updated | None = None, *, lr: float, momentum: float = 0.0,
        nesterov: bool = False, weight_decay: float = 0.0,
        backend: Backend | None = None) -> tuple[Updated, Updated | None]:
    """The update for matching lists of parameters, gradients and momentum buffers: returns the updated
    ``(params, momentum_buffers)``, which the caller must keep (the arrays passed in may or may not have been
    updated in place: see ``Backend.add_scaled``).

    ``momentum_buffers`` (needed when ``momentum`` is not 0) start as zeros, which gives PyTorch's first step
    (the buffer becomes the gradient). With a ``backend``, its multi-tensor update runs (``multi_tensor_sgd``:
    in place, a few passes over every parameter at once on NumPy, PyTorch and CuPy); without one, the portable
    update, as new arrays. ``lr`` may be a 0-d array (a device scalar).
    """
    if backend is None:
        return sgd_update(_add_scaled, params, grads, momentum_buffers, lr=lr, momentum=momentum,
                          nesterov=nesterov, weight_decay=weight_decay)
    return backend.multi_tensor_sgd(params, grads, momentum_buffers, lr=lr, momentum=momentum, nesterov=nesterov,
                                    weight_decay=weight_decay)


class SGD(Optimizer):
    """``SGD(params, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0)``."""

    name = "sgd"
    hyperparameter_names = ("momentum", "nesterov", "weight_decay")
    # the defaults of the groups, set from hyperparameter_names by Optimizer.__init__
    momentum: float
    nesterov: bool
    weight_decay: float

    def __init__(self, params: Any, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)

    def _validate(self, hp: dict) -> dict:
        owner = type(self).__name__
        momentum = check.number(hp["momentum"], "momentum", low=0, high=1, high_open=True, owner=owner)
        nesterov = check.flag(hp["nesterov"], "nesterov", owner=owner)
        if nesterov and momentum == 0:
            raise ConfigError(f"{owner}: nesterov=True needs a momentum > 0")
        weight_decay = check.number(hp["weight_decay"], "weight_decay", low=0, owner=owner)
        return {"momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}

    def buffer_names(self, group: dict | None = None) -> tuple[str, ...]:
        momentum = self.momentum if group is None else group["momentum"]
        return ("momentum_buffer",) if momentum != 0 else ()

    def _update(self, group, params, grads, states, steps):
        momentum = group["momentum"]
        buffers: Updated | None = self._buffer_list(states, "momentum_buffer") if momentum != 0 else None
        params, buffers = sgd(params, grads, buffers, lr=group["lr"], momentum=momentum, nesterov=group["nesterov"],
                              weight_decay=group["weight_decay"], backend=self.backend)
        if buffers is None:
            return params, states  # no state: the (empty) dicts stay as they are
        return params, [{"momentum_buffer": b} for b in buffers]
