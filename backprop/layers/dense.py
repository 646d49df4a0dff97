"""``Dense``: the fully connected layer ``y = x @ W + b``."""

from __future__ import annotations

from typing import Any

from backends import Backend, HostRandom
from backends.array_types import Array

from .. import validators as check
from ..init import host_random, initialize
from ..on_device import on_device_update
from ..parameters import Parameter, accumulate, gradient_space
from .base import Backprop, Layer


class Dense(Layer):
    """Fully connected layer. ``weight`` has shape ``(in_features, out_features)``.

    Input ``(batch, in_features)``, or ``(batch, ..., in_features)`` (a sequence, say): the same weights apply
    at every position.

    Forward:  y = x W + b
    Backward: dL/dW += xᵀ dL/dy,   dL/db += Σ_batch dL/dy,   dL/dx = dL/dy Wᵀ
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True,
                 init: str = "glorot_uniform", rng: HostRandom | int | None = None,
                 backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        in_features = check.positive_int(in_features, "in_features", owner="Dense")
        out_features = check.positive_int(out_features, "out_features", owner="Dense")
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
        shapes: dict[str, tuple] = {"param/weight": (config.get("in_features"), out_features)}
        if config.get("bias", True):
            shapes["param/bias"] = (out_features,)
        return shapes

    can_skip_input_grad = True

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        return self.begin_fused_update(x, None)

    @on_device_update
    def begin_fused_update(self, x: Array, activation: str | None,
                           negative_slope: float = 0.01) -> tuple[Array, Backprop]:
        """``begin_update`` of this layer followed by ``activation`` (a name of ``FUSED_ACTIVATIONS``): one
        fused forward and backward pass through the backend (``Backend.dense_forward`` / ``dense_backward``:
        on a GPU a GEMM and one kernel each way). ``Sequential`` calls this for a Dense layer followed by an
        activation layer."""
        self.check_input(x, min_ndim=2, last_dim=self.in_features, expected=f"(batch, {self.in_features})")
        weight, bias = self.params["weight"], self.params.get("bias")
        backend = self.backend
        # the weight this call used, also for its backward pass (arrays may be replaced later)
        y, saved = backend.dense_forward(x, weight.value, None if bias is None else bias.value, activation,
                                         negative_slope=negative_slope)

        def backprop(grad_output, input_grad: bool = True):
            grad_input, grad_weight, grad_bias = backend.dense_backward(
                grad_output, saved, input_grad=input_grad, weight_grad_out=gradient_space(weight),
                bias_grad_out=None if bias is None else gradient_space(bias))
            accumulate(backend, weight, grad_weight)
            if bias is not None:
                accumulate(backend, bias, grad_bias)
            return grad_input

        return y, backprop
