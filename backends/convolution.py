"""The portable 2-D convolution (NCHW), im2col and col2im with standard array operations only:
``Backend.conv2d_forward``/``conv2d_backward``'s default, and the padding of the pooling layers.

A 2-D convolution is a matrix product once every receptive field is laid out
as a column ("im2col"). For a kernel offset (i, j), the input pixels that meet
kernel tap (i, j) at all output positions form one strided slice of the padded
input::

    x_pad[:, :, i·dh : i·dh + sh·(OH−1) + 1 : sh,  j·dw : j·dw + sw·(OW−1) + 1 : sw]   →  (N, C, OH, OW)

Stacking the kh·kw slices gives the columns ``(N, C, kh·kw, OH, OW)`` with one
Python loop over kernel offsets, never over pixels or examples. The backward
pass (col2im) adds each slice of the column gradient back where it came from;
overlapping windows (stride < kernel) accumulate. With X the columns and W the
weight as an (out_channels, C·kh·kw) matrix:

    Forward:  Y = W X + b
    Backward: dL/dW = Σ_batch dL/dY Xᵀ,   dL/db = Σ_batch,positions dL/dY,   dL/dX = col2im(Wᵀ dL/dY)

Output size per axis, as PyTorch: ``⌊(size + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1``.

Everything here goes through ``backend.xp`` and the backend's update methods (``at_set``, ``at_add``), so it
runs on every backend, immutable arrays included; backends with a faster convolution override the two
``Backend`` methods (NumPy: channel-major columns and blocked products; PyTorch and JAX: their own kernels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .array_types import Array

if TYPE_CHECKING:  # base.py imports this module: only the annotations name Backend
    from .base import Backend

Pair = tuple[int, int]


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis (may be <= 0 when the input is too small)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad(backend: Backend, x: Array, padding: Pair, *, value: float = 0.0) -> Array:
    """``x`` (N, C, H, W) surrounded by ``padding`` = (ph, pw) rows/columns of ``value``: a new array.

    Not ``array_api_extra.pad``: for a library it does not know (the ``immutable`` test backend, the model of
    any library whose arrays cannot be written) it writes ``x`` into the padded array with ``x[...] = v``, which
    fails there; ``backend.at_set`` asks the backend, which knows."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    out = backend.xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=backend.device)
    return backend.at_set(out, (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w)), x)


def unpad(x: Array, padding: Pair) -> Array:
    """The inner (H, W) part of a padded (N, C, H + 2ph, W + 2pw) array (a slice)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


def offset_slices(kernel: Pair, stride: Pair, dilation: Pair, out_shape: Pair) -> list[tuple[slice, slice]]:
    """For each kernel offset (i, j), row-major, the (rows, cols) slices of the padded input it touches."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_shape
    return [(slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]


def im2col(xp: Any, x_padded: Array, kernel: Pair, stride: Pair, dilation: Pair, out_shape: Pair) -> Array:
    """Columns ``(N, C, kh·kw, OH, OW)``: entry [n, c, i·kw + j, p, q] = x_pad[n, c, p·sh + i·dh, q·sw + j·dw]."""
    slices = offset_slices(kernel, stride, dilation, out_shape)
    return xp.stack([x_padded[:, :, rows, cols] for rows, cols in slices], axis=2)


def col2im(backend: Backend, columns: Array, padded_shape: tuple[int, ...], kernel: Pair, stride: Pair,
           dilation: Pair, out_shape: Pair) -> Array:
    """The adjoint of ``im2col``: add each offset's slice of ``columns`` (N, C, kh·kw, OH, OW) back into a
    zero array of ``padded_shape``; windows that overlap accumulate."""
    grad = backend.xp.zeros(tuple(padded_shape), dtype=columns.dtype, device=backend.device)
    for k, (rows, cols) in enumerate(offset_slices(kernel, stride, dilation, out_shape)):
        grad = backend.at_add(grad, (slice(None), slice(None), rows, cols), columns[:, :, k, :, :])
    return grad


def conv2d_forward(backend: Backend, x: Array, weight: Array, bias: Array | None, *, stride: Pair, padding: Pair,
                   dilation: Pair) -> tuple[Array, tuple]:
    """``(y, saved)``: the convolution of ``x`` (N, C, H, W) with ``weight`` (O, C, kh, kw) plus ``bias`` (O,)
    (or None), and what ``conv2d_backward`` needs. The caller checked that the output is not empty."""
    xp = backend.xp
    n, in_channels = x.shape[0], x.shape[1]
    out_channels, kernel = weight.shape[0], (weight.shape[2], weight.shape[3])
    out_hw = (output_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0]),
              output_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1]))
    padded = pad(backend, x, padding)
    rows = in_channels * kernel[0] * kernel[1]
    columns = xp.reshape(im2col(xp, padded, kernel, stride, dilation, out_hw), (n, rows, out_hw[0] * out_hw[1]))
    weight_matrix = xp.reshape(weight, (out_channels, rows))
    y = xp.reshape(weight_matrix @ columns, (n, out_channels, *out_hw))  # (N, O, OH·OW) -> (N, O, OH, OW)
    if bias is not None:
        y = y + xp.reshape(bias, (1, out_channels, 1, 1))
    geometry = (tuple(padded.shape), kernel, tuple(stride), tuple(padding), tuple(dilation), out_hw)
    return y, (columns, weight_matrix, tuple(weight.shape), geometry)


def conv2d_backward(backend: Backend, grad_output: Array, saved: tuple, *, bias: bool,
                    input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
    """``(grad_input, grad_weight, grad_bias)`` for a ``conv2d_forward`` call (``grad_bias`` None without
    ``bias``, ``grad_input`` None without ``input_grad``)."""
    xp = backend.xp
    columns, weight_matrix, weight_shape, geometry = saved
    padded_shape, kernel, stride, padding, dilation, out_hw = geometry
    n, out_channels, in_channels = grad_output.shape[0], weight_shape[0], weight_shape[1]
    grad = xp.reshape(grad_output, (n, out_channels, out_hw[0] * out_hw[1]))
    grad_weight = xp.reshape(xp.tensordot(grad, columns, axes=([0, 2], [0, 2])), weight_shape)
    grad_bias = xp.sum(grad, axis=(0, 2)) if bias else None
    if not input_grad:
        return None, grad_weight, grad_bias
    grad_columns = xp.reshape(xp.matrix_transpose(weight_matrix) @ grad,
                              (n, in_channels, kernel[0] * kernel[1], *out_hw))
    grad_padded = col2im(backend, grad_columns, padded_shape, kernel, stride, dilation, out_hw)
    return unpad(grad_padded, padding), grad_weight, grad_bias


__all__ = ["col2im", "conv2d_backward", "conv2d_forward", "im2col", "offset_slices", "output_size", "pad", "unpad"]
