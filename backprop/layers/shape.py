"""``Flatten`` and ``Reshape``: change how each example's values are arranged, not the values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from backends import Backend
from backends.array_types import Array

from .. import validators as check
from ..errors import ShapeError
from .base import Backprop, Layer


class _Rearrange(Layer):
    """What Flatten and Reshape share: the backward pass puts the gradient back in the input's shape."""

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {}  # no parameters or buffers

    def _rearrange(self, x, shape):
        xp, input_shape = self.xp, tuple(x.shape)

        def backprop(grad_output):
            return xp.reshape(grad_output, input_shape)

        return xp.reshape(x, shape), backprop


class Flatten(_Rearrange):
    """``(batch, d1, d2, ...)`` → ``(batch, d1·d2·...)``, in row-major order (as ``torch.flatten(x, 1)``).

    Forward: y = reshape(x, (batch, −1));   backward: dL/dx = reshape(dL/dy, shape of x).
    """

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        self.check_input(x, min_ndim=2, expected="(batch, ...)")
        return self._rearrange(x, (x.shape[0], math.prod(x.shape[1:])))


class Reshape(_Rearrange):
    """``(batch, ...)`` → ``(batch, *shape)`` when each example holds ``prod(shape)`` values; for instance
    ``Reshape((1, 28, 28))`` turns flat MNIST rows of 784 features into images for ``Conv2D``.

    Forward: y = reshape(x, (batch, *shape));   backward: dL/dx = reshape(dL/dy, shape of x).
    """

    def __init__(self, shape: Sequence[int], *, backend: Backend | str | None = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        self.shape = check.positive_ints(shape, "shape", owner="Reshape")
        self.size = math.prod(self.shape)

    def extra_repr(self) -> str:
        return f"{self.shape}"

    def config(self) -> dict:
        return {"shape": list(self.shape)}

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        expected = f"(batch, {self.size}) or any (batch, ...) with {self.size} values per example"
        self.check_input(x, min_ndim=1, expected=expected)
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.size:
            raise ShapeError(f"{self!r}: expected input of shape {expected}, got {tuple(x.shape)}")
        return self._rearrange(x, (x.shape[0], *self.shape))
