"""Elementwise activations and softmax, each with its derivative beside it."""

from __future__ import annotations

import math

from ..errors import ConfigError
from .base import Layer


class Activation(Layer):
    """A parameter-free layer applied elementwise; subclasses define forward and backward."""

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {}  # no parameters or buffers

    def forward(self, x, *, training: bool = False):
        self.check_input(x)
        return self._forward(x)

    def _forward(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _need(self, cached):
        if cached is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return cached


class Sigmoid(Activation):
    """σ(x) = 1 / (1 + e⁻ˣ);  σ'(x) = σ(x)(1 − σ(x)).  Saturates for large |x|: gradients vanish."""

    _y = None

    def _forward(self, x):
        # σ(x) = ½(1 + tanh(x/2)): the same function, finite for any x, and no branch per element.
        self._y = 0.5 + 0.5 * self.xp.tanh(0.5 * x)
        return self._y

    def backward(self, grad_output):
        y = self._need(self._y)
        return grad_output * y * (1.0 - y)

    def _clear_cache(self):
        self._y = None


class Tanh(Activation):
    """tanh(x);  tanh'(x) = 1 − tanh²(x)."""

    _y = None

    def _forward(self, x):
        self._y = self.xp.tanh(x)
        return self._y

    def backward(self, grad_output):
        y = self._need(self._y)
        return grad_output * (1.0 - y * y)

    def _clear_cache(self):
        self._y = None


class ReLU(Activation):
    """max(x, 0);  derivative 1 where x > 0, else 0."""

    _y = None

    def _forward(self, x):
        self._y = self.xp.maximum(x, 0.0)
        return self._y

    def backward(self, grad_output):
        y = self._need(self._y)
        # A multiply by the 0/1 mask is many times faster than where() on NumPy.
        return grad_output * self.xp.astype(y > 0, grad_output.dtype)

    def _clear_cache(self):
        self._y = None


class LeakyReLU(Activation):
    """x for x > 0, else αx;  derivative 1 or α. Keeps a small gradient for negative inputs."""

    _x = None

    def __init__(self, negative_slope: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if (not isinstance(negative_slope, (int, float)) or not math.isfinite(negative_slope)
                or not 0 <= negative_slope <= 1):
            raise ConfigError(f"LeakyReLU: negative_slope must be a finite number in [0, 1], got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"

    def config(self):
        return {"negative_slope": self.negative_slope}

    def _forward(self, x):
        self._x = x
        return self.xp.maximum(x, self.negative_slope * x)  # for 0 <= α <= 1 this is the leaky ReLU

    def backward(self, grad_output):
        x = self._need(self._x)
        slope = self.negative_slope
        return grad_output * (slope + (1.0 - slope) * self.xp.astype(x > 0, grad_output.dtype))

    def _clear_cache(self):
        self._x = None


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


class GELU(Activation):
    """Gaussian error linear unit, tanh approximation (the standard has no erf):

    gelu(x) = ½ x (1 + tanh(u)),  u = √(2/π)(x + 0.044715 x³)
    gelu'(x) = ½ (1 + tanh u) + ½ x (1 − tanh² u) √(2/π)(1 + 3·0.044715 x²)
    """

    _x = None
    _t = None

    def _forward(self, x):
        self._x = x
        self._t = self.xp.tanh(_SQRT_2_OVER_PI * (x + _GELU_C * x * x * x))
        return 0.5 * x * (1.0 + self._t)

    def backward(self, grad_output):
        x, t = self._need(self._x), self._t
        du_dx = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_C * x * x)
        return grad_output * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)

    def _clear_cache(self):
        self._x = self._t = None


class Softmax(Activation):
    """softmax(x)ᵢ = eˣⁱ / Σⱼ eˣʲ over the last axis;  dx = s ⊙ (dy − Σ(dy ⊙ s)).

    For classification, prefer ``CrossEntropy`` on the raw scores: it fuses
    softmax with the loss and is stable for large logits.
    """

    _y = None

    def _forward(self, x):
        xp = self.xp
        if x.ndim < 1:
            from ..errors import ShapeError

            raise ShapeError(f"{self!r}: expected an input with at least one axis, got a scalar")
        shifted = x - xp.max(x, axis=-1, keepdims=True)
        e = xp.exp(shifted)
        self._y = e / xp.sum(e, axis=-1, keepdims=True)
        return self._y

    def backward(self, grad_output):
        y = self._need(self._y)
        return y * (grad_output - self.xp.sum(grad_output * y, axis=-1, keepdims=True))

    def _clear_cache(self):
        self._y = None


ACTIVATIONS = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "gelu": GELU,
    "softmax": Softmax,
}


def activation(name: str, **kwargs) -> Activation:
    """An activation layer by name (``"relu"``, ``"tanh"``, ...)."""
    try:
        cls = ACTIVATIONS[name.lower().replace("-", "_")]
    except (KeyError, AttributeError):
        raise ConfigError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}") from None
    return cls(**kwargs)
