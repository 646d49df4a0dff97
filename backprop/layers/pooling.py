"""``MaxPool2D`` and ``AvgPool2D``: downsampling over (kh, kw) windows of NCHW inputs, per channel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backends.convolution import pad, unpad

from ..errors import ConfigError
from .base import Layer
from .windows import as_pair, output_shape

_NO_DILATION = (1, 1)


class _Pool2D(Layer):
    """Shared set-up: ``kernel_size``, ``stride`` (default: the kernel size, windows side by side) and
    ``padding`` (at most half the kernel, as PyTorch, so every window holds at least one real pixel)."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None,
                 padding: int | tuple[int, int] = 0, *, backend: Any = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        name = type(self).__name__
        self.kernel_size = as_pair(kernel_size, "kernel_size", name, minimum=1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", name, minimum=1)
        self.padding = as_pair(padding, "padding", name, minimum=0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ConfigError(f"{name}: padding must be at most half the kernel size {self.kernel_size}, "
                              f"got {self.padding}")

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        if self.stride != self.kernel_size:
            text += f", stride={self.stride}"
        return text + (f", padding={self.padding}" if self.padding != (0, 0) else "")

    def config(self) -> dict:
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding)}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        return {}  # no parameters or buffers

    def _windows(self, x, fill: float):
        """The padded input, and the row slices and column slices of the kernel offsets: window row i of
        every output position lies in ``padded[:, :, rows[i], :]``, window column j of a row-reduced array in
        ``reduced[..., cols[j]]``. Pooling is separable (reduce over kernel rows, then over kernel columns),
        which takes kh + kw − 2 elementwise steps instead of kh·kw − 1."""
        self.check_input(x, ndim=4, expected="(batch, channels, H, W)")
        oh, ow = output_shape(self, x, self.kernel_size, self.stride, self.padding, _NO_DILATION)
        padded = pad(self.backend, x, self.padding, value=fill)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        rows = [slice(i, i + sh * (oh - 1) + 1, sh) for i in range(kh)]
        cols = [slice(j, j + sw * (ow - 1) + 1, sw) for j in range(kw)]
        return padded, rows, cols


def _rows(index):
    """An index that takes rows ``index`` of an (N, C, H, W) array."""
    return slice(None), slice(None), index, slice(None)


def _columns(index):
    """An index that takes columns ``index`` of an (N, C, H, W) array."""
    return slice(None), slice(None), slice(None), index


def _accumulate(backend, target, index, value, disjoint: bool):
    """``target`` with ``target[index] += value``, or ``= value`` when the slices of different kernel offsets
    never overlap (in place where the backend allows: use the returned array)."""
    return backend.at_set(target, index, value) if disjoint else backend.at_add(target, index, value)


class MaxPool2D(_Pool2D):
    """Maximum over each window; padding counts as −∞ (never the maximum).

    Forward:  y[p] = max_{k in window(p)} x[k]   (computed as a max over the window's rows, then its columns)
    Backward: dL/dx[k] = dL/dy[p] at the window's maximum, 0 elsewhere (summed over windows that overlap).

    Ties: when several pixels of a window hold the maximum, the whole gradient goes to one of them, always
    the same: the leftmost column of the window that holds the maximum, and the topmost such pixel in it
    (PyTorch's CPU kernel takes the first in row-major order instead; the two differ only on ties).
    """

    def begin_update(self, x: Any, *, training: bool = True) -> tuple[Any, Callable[..., Any]]:
        padded, rows, cols = self._windows(x, float("-inf"))
        xp = self.xp
        row_max = padded[:, :, rows[0], :]  # (N, C, OH, Wp): the max over each window's rows, per column
        for index in rows[1:]:
            row_max = xp.maximum(row_max, padded[:, :, index, :])
        y = row_max[:, :, :, cols[0]]
        for index in cols[1:]:
            y = xp.maximum(y, row_max[:, :, :, index])
        (kh, kw), (sh, sw) = self.kernel_size, self.stride

        def backprop(grad_output):
            # over the columns: to the leftmost column whose row-maximum is the window's maximum ...
            grad_row_max = self._route(xp.zeros_like(row_max), [_columns(index) for index in cols], row_max, y,
                                       grad_output, disjoint=sw >= kw)
            # ... then over the rows: to the topmost pixel of that column that holds it
            grad = self._route(xp.zeros_like(padded), [_rows(index) for index in rows], padded, row_max,
                               grad_row_max, disjoint=sh >= kh)
            return unpad(grad, self.padding)

        return y, backprop

    def _route(self, grad, slices, values, maxima, grad_maxima, *, disjoint: bool):
        """grad[s] += dL/d(maxima) where values[s] == maxima, for the first slice s (in order) that matches."""
        xp = self.xp
        unclaimed = None  # positions whose maximum has not been found yet
        for number, index in enumerate(slices):
            if unclaimed is None:
                hit = values[index] == maxima
            elif number == len(slices) - 1:  # every maximum is one of the values: the last slice holds the rest
                hit = unclaimed
            else:
                hit = xp.logical_and(values[index] == maxima, unclaimed)
            # a 0/1 mask times the gradient rather than where(): NumPy's where branches on every element and
            # is ~20x slower on the random masks max pooling makes (the one difference: a NaN or infinite
            # gradient also turns the window's other pixels to NaN, where training has failed anyway)
            grad = _accumulate(self.backend, grad, index, xp.astype(hit, grad_maxima.dtype) * grad_maxima, disjoint)
            if number < len(slices) - 1:
                missed = xp.logical_not(hit)
                unclaimed = missed if unclaimed is None else xp.logical_and(unclaimed, missed)
        return grad


class AvgPool2D(_Pool2D):
    """Mean over each window; padded zeros count in the mean (PyTorch's default ``count_include_pad=True``).

    Forward:  y[p] = (1 / kh·kw) Σ_{k in window(p)} x[k]   (a sum over the window's rows, then its columns)
    Backward: dL/dx[k] = Σ_{windows p containing k} dL/dy[p] / (kh·kw)
    """

    def begin_update(self, x: Any, *, training: bool = True) -> tuple[Any, Callable[..., Any]]:
        padded, rows, cols = self._windows(x, 0.0)
        xp, backend = self.xp, self.backend
        row_sum = padded[:, :, rows[0], :]
        for index in rows[1:]:
            row_sum = row_sum + padded[:, :, index, :]
        total = row_sum[:, :, :, cols[0]]
        for index in cols[1:]:
            total = total + row_sum[:, :, :, index]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride

        def backprop(grad_output):
            share = grad_output * (1.0 / (kh * kw))
            grad_row_sum = xp.zeros_like(row_sum)  # (zeros_like keeps the layout: NumPy's conv is channel-major)
            for index in cols:
                grad_row_sum = _accumulate(backend, grad_row_sum, _columns(index), share, sw >= kw)
            grad = xp.zeros_like(padded)
            for index in rows:
                grad = _accumulate(backend, grad, _rows(index), grad_row_sum, sh >= kh)
            return unpad(grad, self.padding)

        return total * (1.0 / (kh * kw)), backprop
