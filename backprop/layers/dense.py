"""``Dense``: the fully connected layer ``y = x @ W + b``."""

from __future__ import annotations

from ..errors import ConfigError
from ..init import host_random, initialize
from ..parameters import Parameter
from .base import Layer


class Dense(Layer):
    """Fully connected layer. ``weight`` has shape ``(in_features, out_features)``.

    Input ``(batch, in_features)``, or ``(batch, ..., in_features)`` (a sequence, say): the same weights apply
    at every position.

    Forward:  y = x W + b
    Backward: dL/dW = xᵀ dL/dy,   dL/db = Σ_batch dL/dy,   dL/dx = dL/dy Wᵀ
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str = "glorot_uniform", rng=None, backend=None, dtype=None):
        super().__init__(backend=backend, dtype=dtype)
        for label, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Dense: {label} must be a positive integer, got {value!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.init = init
        self.use_bias = bias
        rng = host_random(rng)
        self.params["weight"] = Parameter(initialize(init, (in_features, out_features), rng=rng,
                                                     backend=self.backend, dtype=self.dtype))
        if bias:
            self.params["bias"] = Parameter(initialize("zeros", (out_features,), rng=rng, backend=self.backend,
                                                       dtype=self.dtype))
        self._x = None

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}" + ("" if self.use_bias else ", bias=False")

    def config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.use_bias,
                "init": self.init}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        out_features = config.get("out_features")
        shapes = {"param/weight": (config.get("in_features"), out_features)}
        if config.get("bias", True):
            shapes["param/bias"] = (out_features,)
        return shapes

    def forward(self, x, *, training: bool = False):
        self.check_input(x, min_ndim=2, last_dim=self.in_features, expected=f"(batch, {self.in_features})")
        self._x = x
        y = x @ self.params["weight"].value
        if self.use_bias:
            y = self.backend.add_scaled(y, self.params["bias"].value)  # in place where allowed: y is our own
        return y

    can_skip_input_grad = True

    def backward(self, grad_output, *, input_grad: bool = True):
        if self._x is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        x, grad = self._x, grad_output
        if x.ndim > 2:  # every position is one more example for the weight gradient
            x = self.xp.reshape(x, (-1, self.in_features))
            grad = self.xp.reshape(grad, (-1, self.out_features))
        if x.shape[0] == 1:  # one example: an outer product; a matmul with an inner size of 1 is far slower
            self.params["weight"].grad = self.backend.outer(x[0, ...], grad[0, ...])
        else:
            self.params["weight"].grad = x.T @ grad
        if self.use_bias:
            self.params["bias"].grad = self.xp.sum(grad, axis=0)
        if not input_grad:
            return None
        return grad_output @ self.xp.matrix_transpose(self.params["weight"].value)

    def _clear_cache(self) -> None:
        self._x = None
