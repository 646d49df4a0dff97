"""Elementwise activations and softmax, each with its derivative beside it."""

from __future__ import annotations

import math
from typing import Any

from backends.array_types import Array

from .. import validators as check
from ..errors import ConfigError, ShapeError
from .base import Backprop, Layer


class Activation(Layer):
    """A parameter-free layer applied elementwise; a subclass defines ``_begin(x) -> (y, backprop)``, the
    function and its derivative side by side."""

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {}  # no parameters or buffers

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        self.check_input(x)
        return self._begin(x)

    def _begin(self, x):  # pragma: no cover - abstract
        raise NotImplementedError


class Sigmoid(Activation):
    """σ(x) = 1 / (1 + e⁻ˣ);  σ'(x) = σ(x)(1 − σ(x)).  Saturates for large |x|: gradients vanish."""

    def _begin(self, x):
        # σ(x) = ½(1 + tanh(x/2)): the same function, finite for any x, and no branch per element.
        y = 0.5 + 0.5 * self.xp.tanh(0.5 * x)

        def backprop(grad_output):
            return grad_output * y * (1.0 - y)

        return y, backprop


class Tanh(Activation):
    """tanh(x);  tanh'(x) = 1 − tanh²(x)."""

    def _begin(self, x):
        y = self.xp.tanh(x)

        def backprop(grad_output):
            return grad_output * (1.0 - y * y)

        return y, backprop


class ReLU(Activation):
    """max(x, 0);  derivative 1 where x > 0, else 0."""

    def _begin(self, x):
        xp = self.xp
        y = xp.maximum(x, 0.0)

        def backprop(grad_output):
            # A multiply by the 0/1 mask is many times faster than where() on NumPy.
            return grad_output * xp.astype(y > 0, grad_output.dtype)

        return y, backprop


class LeakyReLU(Activation):
    """x for x > 0, else αx;  derivative 1 or α. Keeps a small gradient for negative inputs."""

    def __init__(self, negative_slope: float = 0.01, **kwargs: Any):
        super().__init__(**kwargs)
        self.negative_slope = check.number(negative_slope, "negative_slope", low=0, high=1, owner="LeakyReLU")

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def config(self) -> dict:
        return {"negative_slope": self.negative_slope}

    def _begin(self, x):
        xp, slope = self.xp, self.negative_slope

        def backprop(grad_output):
            return grad_output * (slope + (1.0 - slope) * xp.astype(x > 0, grad_output.dtype))

        return xp.maximum(x, slope * x), backprop  # for 0 <= α <= 1 this is the leaky ReLU


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class GELU(Activation):
    """Gaussian error linear unit, tanh approximation (the standard has no erf):

    gelu(x) = ½ x (1 + tanh(u)),  u = √(2/π)(x + 0.044715 x³)
    gelu'(x) = ½ (1 + tanh u) + ½ x (1 − tanh² u) √(2/π)(1 + 3·0.044715 x²)
    """

    def _begin(self, x):
        t = self.xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))

        def backprop(grad_output):
            du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
            return grad_output * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)

        return 0.5 * x * (1.0 + t), backprop


class Softmax(Activation):
    """softmax(x)ᵢ = eˣⁱ / Σⱼ eˣʲ over the last axis;  dx = s ⊙ (dy − Σ(dy ⊙ s)).

    For classification, prefer ``CrossEntropy`` on the raw scores: it fuses
    softmax with the loss and is stable for large logits.
    """

    def _begin(self, x):
        xp = self.xp
        if x.ndim < 1:
            raise ShapeError(f"{self!r}: expected an input with at least one axis, got a scalar")
        shifted = x - xp.max(x, axis=-1, keepdims=True)
        e = xp.exp(shifted)
        y = e / xp.sum(e, axis=-1, keepdims=True)

        def backprop(grad_output):
            return y * (grad_output - xp.sum(grad_output * y, axis=-1, keepdims=True))

        return y, backprop


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "gelu": GELU,
    "softmax": Softmax,
}


def activation(name: str, **kwargs: Any) -> Activation:
    """An activation layer by name (``"relu"``, ``"tanh"``, ...)."""
    try:
        cls = ACTIVATIONS[name.lower().replace("-", "_")]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None
    return cls(**kwargs)
