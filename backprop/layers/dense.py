"""``Dense``: the fully connected layer ``y = x @ W + b``."""

from __future__ import annotations

from ..errors import ConfigError
from ..init import host_random, initialize
from ..parameters import Parameter, accumulate
from .base import Layer


class Dense(Layer):
    """Fully connected layer. ``weight`` has shape ``(in_features, out_features)``.

    Input ``(batch, in_features)``, or ``(batch, ..., in_features)`` (a sequence, say): the same weights apply
    at every position.

    Forward:  y = x W + b
    Backward: dL/dW += xᵀ dL/dy,   dL/db += Σ_batch dL/dy,   dL/dx = dL/dy Wᵀ
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

    can_skip_input_grad = True

    def begin_update(self, x, *, training: bool = True):
        self.check_input(x, min_ndim=2, last_dim=self.in_features, expected=f"(batch, {self.in_features})")
        weight, bias = self.params["weight"], self.params.get("bias")
        w = weight.value  # the weight this call used, also for its backward pass (arrays may be replaced later)
        y = x @ w
        if bias is not None:
            y = self.backend.add_scaled(y, bias.value)  # in place where allowed: y is our own
        backend = self.backend

        def backprop(grad_output, input_grad: bool = True):
            inputs, grad = x, grad_output
            if inputs.ndim > 2:  # every position is one more example for the weight gradient
                inputs = backend.xp.reshape(inputs, (-1, w.shape[0]))
                grad = backend.xp.reshape(grad, (-1, w.shape[1]))
            if inputs.shape[0] == 1:  # one example: an outer product; a matmul with an inner size of 1 is far slower
                accumulate(backend, weight, backend.outer(inputs[0, ...], grad[0, ...]))
            else:
                accumulate(backend, weight, inputs.T @ grad)
            if bias is not None:
                accumulate(backend, bias, backend.xp.sum(grad, axis=0))
            if not input_grad:
                return None
            return grad_output @ backend.xp.matrix_transpose(w)

        return y, backprop
