"""The window settings shared by ``Conv2D`` and the pooling layers: (h, w) pairs and the output size.

Output size per axis, as PyTorch: ``⌊(size + 2·padding − dilation·(kernel − 1) − 1) / stride⌋ + 1``. The array
work over the windows (im2col, col2im, padding) is the backend's: ``backends/convolution.py`` holds the portable
version, ``Backend.conv2d_forward``'s default (backends/ cannot import this package, so it lives there).
"""

from __future__ import annotations

from typing import Any

from backends.convolution import Pair, output_size

from ..errors import ConfigError, ShapeError
from ..validators import is_integer


def as_pair(value: object, name: str, owner: str, *, minimum: int) -> Pair:
    """An int or an (h, w) pair of ints >= ``minimum``, as a pair; anything else is a ``ConfigError``."""
    pair = (value, value) if is_integer(value) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(not is_integer(v) or v < minimum for v in pair)):
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum} or a pair (h, w) of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def output_shape(layer: object, x: Any, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
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


__all__ = ["as_pair", "output_shape", "output_size"]
