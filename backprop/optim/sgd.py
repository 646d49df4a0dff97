"""Plain stochastic gradient descent: w ← w − η ∇w L."""

from __future__ import annotations

import math

from ..errors import ConfigError


def sgd(params: list, grads: list, *, lr: float) -> None:
    """The update itself, in place, for matching lists of parameters and gradients."""
    for param, grad in zip(params, grads):
        param -= lr * grad


class SGD:
    """``SGD(model, lr=0.1)``; call ``step()`` after ``model.backward(...)``."""

    def __init__(self, model, lr: float = 0.01):
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"SGD: learning rate must be a positive finite number, got {lr!r}")
        self.lr = float(lr)
        self.slots = model.parameter_slots()

    def step(self) -> None:
        params, grads = [], []
        for layer, name in self.slots:
            grad = layer.grads.get(name)
            if grad is not None:
                params.append(layer.params[name])
                grads.append(grad)
        sgd(params, grads, lr=self.lr)
