"""Normalization layers: ``BatchNorm1D``, ``BatchNorm2D`` (statistics over the batch) and ``LayerNorm``
(statistics over each example's trailing axes).

All three compute x̂ = (x − μ) / √(σ² + ε) over some axes and return y = γ ⊙ x̂ + β, with γ (``weight``,
ones) and β (``bias``, zeros) learned per feature. The backward pass goes through μ and σ² as well,
since both depend on every input element of the group they were computed over.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from backends import Backend
from backends.array_types import Array

from .. import validators as check
from ..errors import ShapeError
from ..parameters import Parameter, accumulate
from .base import Backprop, Layer


def _normalize_backward(xp, grad_x_hat, x_hat, inv_std, axes):
    """dL/dx of x̂ = (x − μ)·s, s = 1/√(σ² + ε), with μ and σ² the (biased) mean and variance over ``axes``.

    With N elements per group and g = dL/dx̂:
        ∂x̂ⱼ/∂xᵢ = s (δᵢⱼ − 1/N − x̂ᵢ x̂ⱼ / N)
    (the −1/N term comes through μ; the −x̂ᵢx̂ⱼ/N term through σ², because ∂σ²/∂xᵢ = 2(xᵢ − μ)/N and
    ∂s/∂σ² = −s³/2), so
        dL/dxᵢ = Σⱼ gⱼ ∂x̂ⱼ/∂xᵢ = s (gᵢ − mean(g) − x̂ᵢ · mean(g ⊙ x̂)).
    """
    mean_g = xp.mean(grad_x_hat, axis=axes, keepdims=True)
    mean_gx = xp.mean(grad_x_hat * x_hat, axis=axes, keepdims=True)
    return inv_std * (grad_x_hat - mean_g - x_hat * mean_gx)


def _affine(layer: Layer) -> tuple[Parameter, Parameter] | None:
    """``(weight, bias)``, γ and β, of a normalization layer that learns them (made together), else None."""
    if "weight" not in layer.params:
        return None
    return layer.params["weight"], layer.params["bias"]


class _BatchNorm(Layer):
    """Shared code of ``BatchNorm1D`` and ``BatchNorm2D``; channels are axis 1 of the input.

    Training (``training=True``): μ_c and σ²_c are the mean and the biased variance of channel c over
    the batch (and length, or height and width): x̂ = (x − μ)/√(σ² + ε), y = γ x̂ + β. The running
    estimates follow PyTorch exactly (``momentum`` weights the new batch, and the running variance
    uses the unbiased batch variance σ² · n/(n − 1), n = values per channel):
        running_mean ← (1 − momentum) · running_mean + momentum · μ
        running_var  ← (1 − momentum) · running_var  + momentum · σ² n/(n − 1)
    They are updated in place in the ``buffers`` arrays, so references to them (and the optimizer,
    checkpoints, model files) always see the current values.

    Evaluation (``training=False``): μ and σ² are the running estimates, so each example is
    normalized on its own and the layer is a fixed per-channel affine map.

    Backward, with g = dL/dy and sums over the batch (and spatial) axes of each channel (the parameter
    gradients are added to what the parameters hold, as for every layer):
        dL/dβ = Σ g,   dL/dγ = Σ g ⊙ x̂,   dL/dx̂ = γ g
      training (μ, σ² depend on x; see ``_normalize_backward``):
        dL/dx = s (dL/dx̂ − mean(dL/dx̂) − x̂ ⊙ mean(dL/dx̂ ⊙ x̂)),   s = 1/√(σ² + ε)
      evaluation (running statistics are constants):
        dL/dx = s · dL/dx̂

    A batch with a single value per channel cannot be normalized in training (its variance is
    undefined), so it raises ``ShapeError``, as PyTorch does.
    """

    _ndims: tuple[int, ...] = ()
    _features_name = "num_features"

    @property
    def _expected(self) -> str:
        """The input shapes this layer takes, as error messages name them."""
        return ""

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True,
                 backend=None, dtype=None):
        super().__init__(backend=backend, dtype=dtype)
        name = type(self).__name__
        self.num_features = check.positive_int(num_features, self._features_name, owner=name)
        self.momentum = check.number(momentum, "momentum", low=0, high=1, owner=name)
        self.eps = check.positive_number(eps, "eps", owner=name)
        self.affine = check.flag(affine, "affine", owner=name)
        xp, device, shape = self.xp, self.backend.device, (self.num_features,)
        with self.backend.activate():  # the parameters are created on the layer's device
            if affine:
                self.params["weight"] = Parameter(xp.ones(shape, dtype=self.dtype, device=device))
                self.params["bias"] = Parameter(xp.zeros(shape, dtype=self.dtype, device=device))
            self.buffers["running_mean"] = xp.zeros(shape, dtype=self.dtype, device=device)
            self.buffers["running_var"] = xp.ones(shape, dtype=self.dtype, device=device)

    def extra_repr(self) -> str:
        text = f"{self.num_features}"
        if self.momentum != 0.1:
            text += f", momentum={self.momentum:g}"
        if self.eps != 1e-5:
            text += f", eps={self.eps:g}"
        return text + ("" if self.affine else ", affine=False")

    def config(self) -> dict:
        return {self._features_name: self.num_features, "momentum": self.momentum, "eps": self.eps,
                "affine": self.affine}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        shape = (config.get(cls._features_name),)
        shapes = {"param/weight": shape, "param/bias": shape} if config.get("affine", True) else {}
        return {**shapes, "buffer/running_mean": shape, "buffer/running_var": shape}

    def _channel_shape(self, ndim: int) -> tuple[int, ...]:
        """(1, C, 1, ...): a per-channel vector shaped to broadcast against the input."""
        return (1, self.num_features) + (1,) * (ndim - 2)

    def begin_update(self, x, *, training: bool = True):
        self.check_input(x)
        if x.ndim not in self._ndims or x.shape[1] != self.num_features:
            raise ShapeError(f"{self!r}: expected input of shape {self._expected}, got {tuple(x.shape)}")
        xp, backend = self.xp, self.backend
        axes = (0,) + tuple(range(2, x.ndim))  # every axis but the channels
        count = math.prod(x.shape[a] for a in axes)  # values per channel
        shape = self._channel_shape(x.ndim)
        if training:
            if count < 2:
                raise ShapeError(f"{self!r}: training needs more than 1 value per channel to compute batch "
                                 f"statistics, got input of shape {tuple(x.shape)}; use a batch of 2 or more "
                                 f"examples (or training=False)")
            mean = xp.mean(x, axis=axes, keepdims=True)
            centered = x - mean
            var = xp.mean(centered * centered, axis=axes, keepdims=True)  # biased: used to normalize
            inv_std = 1.0 / xp.sqrt(var + self.eps)
            x_hat = centered * inv_std
            self._update_running_stats(xp.reshape(mean, (-1,)), xp.reshape(var, (-1,)) * (count / (count - 1)))
        else:
            mean = xp.reshape(self.buffers["running_mean"], shape)
            inv_std = 1.0 / xp.sqrt(xp.reshape(self.buffers["running_var"], shape) + self.eps)
            x_hat = (x - mean) * inv_std
        affine = _affine(self)
        gamma = None if affine is None else xp.reshape(affine[0].value, shape)

        def backprop(grad_output):
            grad_x_hat = grad_output
            if affine is not None:
                weight, bias = affine
                accumulate(backend, weight, xp.sum(grad_output * x_hat, axis=axes))
                accumulate(backend, bias, xp.sum(grad_output, axis=axes))
                grad_x_hat = grad_output * gamma
            if not training:
                return grad_x_hat * inv_std
            return _normalize_backward(xp, grad_x_hat, x_hat, inv_std, axes)

        if affine is None:
            return x_hat, backprop
        return x_hat * gamma + xp.reshape(affine[1].value, shape), backprop

    def _update_running_stats(self, batch_mean, unbiased_var) -> None:
        m, update = self.momentum, self.backend.add_scaled  # in place where the backend allows
        self.buffers["running_mean"] = update(self.buffers["running_mean"], batch_mean, m, beta=1.0 - m)
        self.buffers["running_var"] = update(self.buffers["running_var"], unbiased_var, m, beta=1.0 - m)


class BatchNorm1D(_BatchNorm):
    """Batch normalization of features ``(batch, features)`` or of channels ``(batch, channels, length)``
    (statistics per channel over batch and length), as ``torch.nn.BatchNorm1d``.

    See ``_BatchNorm`` for the formulas, the running statistics and the backward pass.
    """

    _ndims = (2, 3)
    _features_name = "num_features"

    @property
    def _expected(self) -> str:
        return f"(batch, {self.num_features}) or (batch, {self.num_features}, length)"


class BatchNorm2D(_BatchNorm):
    """Batch normalization of images ``(batch, channels, height, width)``: statistics per channel over
    batch, height and width, as ``torch.nn.BatchNorm2d``.

    See ``_BatchNorm`` for the formulas, the running statistics and the backward pass.
    """

    _ndims = (4,)
    _features_name = "num_channels"

    def __init__(self, num_channels: int, *, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True,
                 backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(num_channels, momentum=momentum, eps=eps, affine=affine, backend=backend, dtype=dtype)

    @property
    def num_channels(self) -> int:
        return self.num_features

    @property
    def _expected(self) -> str:
        return f"(batch, {self.num_features}, height, width)"


class LayerNorm(Layer):
    """Layer normalization: each example is normalized over its trailing ``normalized_shape`` axes, as
    ``torch.nn.LayerNorm``. The same in training and evaluation (no batch statistics, no buffers).

    Input ``(batch, ..., *normalized_shape)``: at least one leading axis before the normalized ones.
    ``weight`` (γ, ones) and ``bias`` (β, zeros) have shape ``normalized_shape`` (with
    ``elementwise_affine=True``).

    Forward, μ and σ² the mean and biased variance over the normalized axes of each example:
        x̂ = (x − μ) / √(σ² + ε),   y = γ ⊙ x̂ + β
    Backward, g = dL/dy, sums over the leading axes:
        dL/dβ = Σ g,   dL/dγ = Σ g ⊙ x̂,   dL/dx̂ = γ ⊙ g,
        dL/dx = s (dL/dx̂ − mean(dL/dx̂) − x̂ ⊙ mean(dL/dx̂ ⊙ x̂)),  s = 1/√(σ² + ε), means over the
    normalized axes (see ``_normalize_backward`` for the derivation).
    """

    def __init__(self, normalized_shape: int | Sequence[int], *, eps: float = 1e-5, elementwise_affine: bool = True,
                 backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        self.normalized_shape = check.positive_ints(
            (normalized_shape,) if check.is_integer(normalized_shape) else normalized_shape, "normalized_shape",
            owner="LayerNorm", expected="a positive integer or a non-empty tuple of positive integers")
        self.eps = check.positive_number(eps, "eps", owner="LayerNorm")
        self.elementwise_affine = check.flag(elementwise_affine, "elementwise_affine", owner="LayerNorm")
        if elementwise_affine:
            xp, device = self.xp, self.backend.device
            with self.backend.activate():  # the parameters are created on the layer's device
                self.params["weight"] = Parameter(xp.ones(self.normalized_shape, dtype=self.dtype, device=device))
                self.params["bias"] = Parameter(xp.zeros(self.normalized_shape, dtype=self.dtype, device=device))

    def extra_repr(self) -> str:
        shape = self.normalized_shape
        text = str(shape[0]) if len(shape) == 1 else str(shape)
        if self.eps != 1e-5:
            text += f", eps={self.eps:g}"
        return text + ("" if self.elementwise_affine else ", elementwise_affine=False")

    def config(self) -> dict:
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        declared: Any = config.get("normalized_shape")  # as the file gives it: a bad one fails here (TypeError)
        shape = (declared,) if isinstance(declared, int) else tuple(declared)
        return {"param/weight": shape, "param/bias": shape} if config.get("elementwise_affine", True) else {}

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        k = len(self.normalized_shape)
        self.check_input(x)
        if x.ndim <= k or tuple(x.shape[x.ndim - k:]) != self.normalized_shape:
            trailing = ", ".join(str(n) for n in self.normalized_shape)
            raise ShapeError(f"{self!r}: expected input of shape (batch, ..., {trailing}), got {tuple(x.shape)}")
        xp, backend = self.xp, self.backend
        axes = tuple(range(x.ndim - k, x.ndim))
        mean = xp.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        var = xp.mean(centered * centered, axis=axes, keepdims=True)
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = centered * inv_std
        affine = _affine(self)
        gamma = None if affine is None else affine[0].value

        def backprop(grad_output):
            grad_x_hat = grad_output
            if affine is not None:
                weight, bias = affine
                leading = tuple(range(x_hat.ndim - len(axes)))
                accumulate(backend, weight, xp.sum(grad_output * x_hat, axis=leading))
                accumulate(backend, bias, xp.sum(grad_output, axis=leading))
                grad_x_hat = grad_output * gamma
            return _normalize_backward(xp, grad_x_hat, x_hat, inv_std, axes)

        if affine is None:
            return x_hat, backprop
        return x_hat * gamma + affine[1].value, backprop
