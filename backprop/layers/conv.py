"""``Conv2D``: the 2-D convolution (cross-correlation, as in every deep-learning library), NCHW."""

from __future__ import annotations

from ..errors import ConfigError, ShapeError
from ..init import host_random, initialize
from ..parameters import Parameter, accumulate
from .base import Layer
from .im2col import as_pair, col2im, im2col, output_shape, pad, unpad


class Conv2D(Layer):
    """2-D convolution over inputs ``(batch, in_channels, H, W)``; ``weight`` has shape
    ``(out_channels, in_channels, kh, kw)``, ``bias`` shape ``(out_channels,)``.

    ``kernel_size``, ``stride``, ``padding`` (zeros) and ``dilation`` are ints or (h, w) pairs. The output is
    ``(batch, out_channels, OH, OW)`` with ``OH = ⌊(H + 2·ph − dh·(kh − 1) − 1) / sh⌋ + 1`` (likewise OW), as
    PyTorch.

    With X the im2col columns of the padded input (one column of C·kh·kw pixels per output position, see
    ``im2col.py``) and W the weight as an (out_channels, C·kh·kw) matrix:

    Forward:  Y = W X + b
    Backward: dL/dW += Σ_batch dL/dY Xᵀ,   dL/db += Σ_batch,positions dL/dY,   dL/dX = col2im(Wᵀ dL/dY)

    The backend may supply a faster implementation of the same computation (``backend.conv2d_forward``:
    NumPy lays the columns out channel-major and multiplies in cache-sized blocks; PyTorch and JAX use their
    own convolution kernels); every other backend runs the portable im2col path written with standard array
    operations. Set ``use_fast_path = False`` on a layer to force the portable path (the tests compare the
    two).
    """

    #: Use the backend's convolution when it has one (False: always the portable im2col path).
    use_fast_path = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1, padding=0, dilation=1,
                 bias: bool = True, init: str = "he_uniform", rng=None, backend=None, dtype=None):
        super().__init__(backend=backend, dtype=dtype)
        for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"Conv2D: {label} must be a positive integer, got {value!r}")
        if not isinstance(bias, bool):
            raise ConfigError(f"Conv2D: bias must be True or False, got {bias!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
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
        shapes = {"param/weight": (out_channels, config.get("in_channels"), *kernel)}
        if config.get("bias", True):
            shapes["param/bias"] = (out_channels,)
        return shapes

    can_skip_input_grad = True

    def begin_update(self, x, *, training: bool = True):
        expected = f"(batch, {self.in_channels}, H, W)"
        self.check_input(x, ndim=4, expected=expected)
        if x.shape[1] != self.in_channels:
            raise ShapeError(f"{self!r}: expected input of shape {expected}, got {tuple(x.shape)}")
        out_hw = output_shape(self, x, self.kernel_size, self.stride, self.padding, self.dilation)
        weight, bias = self.params["weight"], self.params.get("bias")
        w, b = weight.value, None if bias is None else bias.value
        backend = self.backend
        fast = None
        if self.use_fast_path:
            fast = backend.conv2d_forward(x, w, b, stride=self.stride, padding=self.padding, dilation=self.dilation)
        if fast is not None:
            y, saved = fast

            def fast_backprop(grad_output, input_grad: bool = True):
                grad_input, grad_weight, grad_bias = backend.conv2d_backward(grad_output, saved, bias=bias is not None,
                                                                             input_grad=input_grad)
                accumulate(backend, weight, grad_weight)
                if bias is not None:
                    accumulate(backend, bias, grad_bias)
                return grad_input

            return y, fast_backprop
        xp = self.xp
        n, out_channels, in_channels = x.shape[0], self.out_channels, self.in_channels
        kernel, stride, dilation, padding = self.kernel_size, self.stride, self.dilation, self.padding
        padded = pad(backend, x, padding)
        columns = im2col(xp, padded, kernel, stride, dilation, out_hw)  # (N, C, kh·kw, OH, OW)
        rows = in_channels * kernel[0] * kernel[1]
        columns = xp.reshape(columns, (n, rows, out_hw[0] * out_hw[1]))
        y = xp.reshape(w, (out_channels, rows)) @ columns  # (N, out, OH·OW)
        y = xp.reshape(y, (n, out_channels, *out_hw))
        if b is not None:
            y = y + xp.reshape(b, (1, out_channels, 1, 1))
        padded_shape = tuple(padded.shape)

        def backprop(grad_output, input_grad: bool = True):
            grad = xp.reshape(grad_output, (n, out_channels, out_hw[0] * out_hw[1]))
            accumulate(backend, weight, xp.reshape(xp.tensordot(grad, columns, axes=([0, 2], [0, 2])),
                                                   tuple(w.shape)))
            if bias is not None:
                accumulate(backend, bias, xp.sum(grad, axis=(0, 2)))
            if not input_grad:
                return None
            grad_columns = xp.reshape(xp.matrix_transpose(xp.reshape(w, (out_channels, rows))) @ grad,
                                      (n, in_channels, rows // in_channels, *out_hw))
            grad_padded = col2im(backend, grad_columns, padded_shape, kernel, stride, dilation, out_hw)
            return unpad(grad_padded, padding)

        return y, backprop
