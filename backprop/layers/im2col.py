"""im2col and col2im with standard array operations: the portable core of ``Conv2D`` and the pooling layers.

A 2-D convolution is a matrix product once every receptive field is laid out
as a column ("im2col"). For a kernel offset (i, j), the input pixels that meet
kernel tap (i, j) at all output positions form one strided slice of the padded
input::

    x_pad[:, :, i·dh : i·dh + sh·(OH−1) + 1 : sh,  j·dw : j·dw + sw·(OW−1) + 1 : sw]   →  (N, C, OH, OW)

Stacking the kh·kw slices gives the columns ``(N, C, kh·kw, OH, OW)`` with one
Python loop over kernel offsets, never over pixels or examples. The backward
pass (col2im) adds each slice of the column gradient back where it came from;
overlapping windows (stride < kernel) accumulate.

Output size per axis, as PyTorch: ``⌊(size + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1``.
"""

from __future__ import annotations

from ..errors import ConfigError, ShapeError


def as_pair(value, name: str, owner: str, *, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints >= ``minimum``, as a pair; anything else is a ``ConfigError``."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in pair)):
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum} or a pair (h, w) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis (may be <= 0 when the input is too small)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_shape(layer, x, kernel, stride, padding, dilation) -> tuple[int, int]:
    """(OH, OW) for an input (N, C, H, W); an input smaller than the (dilated) kernel is a one-line ``ShapeError``."""
    height, width = x.shape[2], x.shape[3]
    out = (output_size(height, kernel[0], stride[0], padding[0], dilation[0]),
           output_size(width, kernel[1], stride[1], padding[1], dilation[1]))
    if out[0] < 1 or out[1] < 1:
        span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
        raise ShapeError(
            f"{layer!r}: input of shape {tuple(x.shape)} is too small: its padded size "
            f"({height + 2 * padding[0]}, {width + 2 * padding[1]}) must be at least the kernel's span "
            f"{span}; expected input of shape (batch, C, H >= {span[0] - 2 * padding[0]}, "
            f"W >= {span[1] - 2 * padding[1]})")
    return out


def pad(backend, x, padding, *, value: float = 0.0):
    """``x`` (N, C, H, W) surrounded by ``padding`` = (ph, pw) rows/columns of ``value``: a new array."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = x.shape
    out = backend.xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype, device=backend.device)
    return backend.at_set(out, (slice(None), slice(None), slice(ph, ph + h), slice(pw, pw + w)), x)


def unpad(x, padding):
    """The inner (H, W) part of a padded (N, C, H + 2ph, W + 2pw) array (a slice)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


def offset_slices(kernel, stride, dilation, out_shape):
    """For each kernel offset (i, j), row-major, the (rows, cols) slices of the padded input it touches."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_shape
    return [(slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]


def im2col(xp, x_padded, kernel, stride, dilation, out_shape):
    """Columns ``(N, C, kh·kw, OH, OW)``: entry [n, c, i·kw + j, p, q] = x_pad[n, c, p·sh + i·dh, q·sw + j·dw]."""
    slices = offset_slices(kernel, stride, dilation, out_shape)
    return xp.stack([x_padded[:, :, rows, cols] for rows, cols in slices], axis=2)


def col2im(backend, columns, padded_shape, kernel, stride, dilation, out_shape):
    """The adjoint of ``im2col``: add each offset's slice of ``columns`` (N, C, kh·kw, OH, OW) back into a
    zero array of ``padded_shape``; windows that overlap accumulate."""
    grad = backend.xp.zeros(tuple(padded_shape), dtype=columns.dtype, device=backend.device)
    for k, (rows, cols) in enumerate(offset_slices(kernel, stride, dilation, out_shape)):
        grad = backend.at_add(grad, (slice(None), slice(None), rows, cols), columns[:, :, k, :, :])
    return grad
