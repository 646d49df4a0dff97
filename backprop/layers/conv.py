"""``Conv2D``: the 2-D convolution (cross-correlation, as in every deep-learning library), NCHW."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from backends import Backend

from .. import validators as check
from ..errors import ShapeError
from ..init import host_random, initialize
from ..parameters import Parameter, accumulate
from .base import Layer
from .windows import as_pair, output_shape


class Conv2D(Layer):
    """2-D convolution over inputs ``(batch, in_channels, H, W)``; ``weight`` has shape
    ``(out_channels, in_channels, kh, kw)``, ``bias`` shape ``(out_channels,)``.

    ``kernel_size``, ``stride``, ``padding`` (zeros) and ``dilation`` are ints or (h, w) pairs. The output is
    ``(batch, out_channels, OH, OW)`` with ``OH = ⌊(H + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1`` (likewise OW), as
    PyTorch.

    With X the im2col columns of the padded input (one column of C·kh·kw pixels per output position, see
    ``backends/convolution.py``) and W the weight as an (out_channels, C·kh·kw) matrix:

    Forward:  Y = W X + b
    Backward: dL/dW += Σ_batch dL/dY Xᵀ,   dL/db += Σ_batch,positions dL/dY,   dL/dX = col2im(Wᵀ dL/dY)

    The convolution is the backend's (``backend.conv2d_forward`` / ``conv2d_backward``): by default the
    portable im2col convolution written with standard array operations; NumPy overrides it with one that lays
    the columns out channel-major and multiplies in cache-sized blocks, PyTorch and JAX with their own
    convolution kernels. Set ``use_fast_path = False`` on a layer to run the portable default whatever the
    backend (the tests compare the two).
    """

    #: Use the backend's own convolution (False: the portable default of ``Backend``, whatever the backend).
    use_fast_path = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int], *,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, bias: bool = True, init: str = "he_uniform", rng: Any = None,
                 backend: Any = None, dtype: Any = None):
        super().__init__(backend=backend, dtype=dtype)
        self.in_channels = check.positive_int(in_channels, "in_channels", owner="Conv2D")
        self.out_channels = check.positive_int(out_channels, "out_channels", owner="Conv2D")
        check.flag(bias, "bias", owner="Conv2D")
        self.kernel_size = as_pair(kernel_size, "kernel_size", "Conv2D", minimum=1)
        self.stride = as_pair(stride, "stride", "Conv2D", minimum=1)
        self.padding = as_pair(padding, "padding", "Conv2D", minimum=0)
        self.dilation = as_pair(dilation, "dilation", "Conv2D", minimum=1)
        self.init = init
        self.use_bias = bias
        rng = host_random(rng)
        self.params["weight"] = Parameter(initialize(init, (out_channels, in_channels, *self.kernel_size), rng=rng,
                                                     backend=self.backend, dtype=self.dtype))
        if bias:
            self.params["bias"] = Parameter(initialize("zeros", (out_channels,), rng=rng, backend=self.backend,
                                                       dtype=self.dtype))

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        for name, default in (("stride", (1, 1)), ("padding", (0, 0)), ("dilation", (1, 1))):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text + ("" if self.use_bias else ", bias=False")

    def config(self) -> dict:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "bias": self.use_bias, "init": self.init}

    @classmethod
    def array_shapes(cls, config: dict) -> dict[str, tuple]:
        out_channels = config.get("out_channels")
        kernel = as_pair(config.get("kernel_size"), "kernel_size", "Conv2D", minimum=1)
        shapes: dict[str, tuple] = {"param/weight": (out_channels, config.get("in_channels"), *kernel)}
        if config.get("bias", True):
            shapes["param/bias"] = (out_channels,)
        return shapes

    can_skip_input_grad = True

    def begin_update(self, x: Any, *, training: bool = True) -> tuple[Any, Callable[..., Any]]:
        expected = f"(batch, {self.in_channels}, H, W)"
        self.check_input(x, ndim=4, expected=expected)
        if x.shape[1] != self.in_channels:
            raise ShapeError(f"{self!r}: expected input of shape {expected}, got {tuple(x.shape)}")
        output_shape(self, x, self.kernel_size, self.stride, self.padding, self.dilation)  # a clear error if empty
        weight, bias = self.params["weight"], self.params.get("bias")
        backend = self.backend
        if self.use_fast_path:
            forward, backward = backend.conv2d_forward, backend.conv2d_backward
        else:  # the base class's portable convolution, run on this backend
            forward, backward = partial(Backend.conv2d_forward, backend), partial(Backend.conv2d_backward, backend)
        y, saved = forward(x, weight.value, None if bias is None else bias.value, stride=self.stride,
                           padding=self.padding, dilation=self.dilation)

        def backprop(grad_output: Any, input_grad: bool = True) -> Any:
            grad_input, grad_weight, grad_bias = backward(grad_output, saved, bias=bias is not None,
                                                          input_grad=input_grad)
            accumulate(backend, weight, grad_weight)
            if bias is not None:
                accumulate(backend, bias, grad_bias)
            return grad_input

        return y, backprop
