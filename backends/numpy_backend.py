"""NumPy on the host CPU: always available."""

from __future__ import annotations

import functools
import math
import os
import resource
import sys
from typing import Any

import array_api_compat.numpy as xp
import numpy as np

from . import numpy_cells
from .base import (
    Array,
    Backend,
    FlatTensors,
    Scalar,
    ThreadLimit,
    Updated,
    activation_backward,
    activation_forward,
    flat_views,
)
from .errors import BackendUnavailable
from .random import DeviceRandom, Seed, _entropy


class NumpyRandom(DeviceRandom):
    def __init__(self, backend: Backend, seed: Seed):
        super().__init__(backend, seed)
        self._rng = np.random.default_rng(_entropy(seed))

    def _uniform01(self, shape, dtype):
        if dtype in (np.float32, np.float64):
            return self._rng.random(shape, dtype=dtype)
        return self._rng.random(shape).astype(dtype)

    def _normal01(self, shape, dtype):
        if dtype in (np.float32, np.float64):
            return self._rng.standard_normal(shape, dtype=dtype)
        return self._rng.standard_normal(shape).astype(dtype)

    def permutation(self, n: int) -> np.ndarray:
        return self._rng.permutation(n)


# BLAS fast paths through SciPy (a dependency; without it NumPy's own operations run): a fused update (axpy)
# or an outer product (gemm with an inner size of 1) in one pass, where NumPy makes a temporary or runs a slow
# broadcast loop; each is about twice as fast. Below this many elements a NumPy call is as fast as the BLAS one.
BLAS_MIN_SIZE = 1 << 15
_BLAS_TYPES = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}


@functools.cache
def _scipy_blas():
    """SciPy's BLAS wrappers, or None without SciPy. Imported on first need: ``scipy.linalg`` takes ~0.3 s."""
    try:
        # lazy: an optional library, and ~0.3 s
        import scipy
        from scipy.linalg import blas
    except ImportError:
        return None
    _single_thread_bundled_blas(scipy)
    return blas


def _single_thread_bundled_blas(scipy) -> None:
    """SciPy's wheels bundle an OpenBLAS of their own beside NumPy's. Two pools of worker threads spinning on
    the same cores make each call of either library many times slower (measured on 2 cores: a matrix product
    followed by an update, 0.1 ms alone, took 9.8 ms), and the single passes we use SciPy for gain little from
    threads: its own copy runs on one thread. A BLAS the two libraries share (conda, system) is left alone."""
    try:
        from threadpoolctl import ThreadpoolController  # lazy: only needed once SciPy is loaded
    except ImportError:
        return
    site = os.path.dirname(os.path.dirname(os.path.realpath(scipy.__file__)))
    bundled = os.path.join(site, "scipy")  # scipy.libs/ (Linux, Windows wheels) or scipy/.dylibs/ (macOS)
    for library in ThreadpoolController().lib_controllers:
        if library.user_api == "blas" and os.path.realpath(library.filepath).startswith(bundled):
            library.set_num_threads(1)


def _blas_routine(name, a, b):
    """SciPy's BLAS routine ``name`` for two arrays of one float dtype, or None."""
    prefix = _BLAS_TYPES.get(a.dtype)
    if prefix is None or b.dtype != a.dtype:
        return None
    blas = _scipy_blas()
    return None if blas is None else getattr(blas, prefix + name)


class NumpyBackend(Backend):
    library = "numpy"

    def __init__(self):
        super().__init__("numpy", xp, "cpu", device_name="CPU", version=np.__version__)

    def owns(self, x: Any) -> bool:
        return type(x) is np.ndarray

    def to_host(self, x: Array) -> np.ndarray:
        return np.array(x, copy=True)

    def random(self, seed: Seed) -> NumpyRandom:
        return NumpyRandom(self, seed)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        """threadpoolctl's limit on every BLAS and OpenMP pool loaded in the process; SciPy's own BLAS stays on
        one thread. Not applied without threadpoolctl."""
        if threads is None:
            return ThreadLimit(False)
        try:
            from threadpoolctl import threadpool_limits  # lazy: ~10 ms, paid only by code that limits threads
        except ImportError:
            return ThreadLimit(False)
        limits = threadpool_limits(limits=max(1, int(threads)))
        if _scipy_blas() is not None:  # loaded now or before: keep SciPy's own BLAS on one thread
            _single_thread_bundled_blas(sys.modules["scipy"])
        return ThreadLimit(True, limits.restore_original_limits)

    def outer(self, a: Array, b: Array) -> Array:
        gemm = _blas_routine("gemm", a, b) if a.size * b.size >= BLAS_MIN_SIZE else None
        if gemm is None:
            return np.multiply.outer(a, b)
        out = np.empty((a.shape[0], b.shape[0]), dtype=a.dtype)
        # BLAS is column-major: it sees our row-major ``out`` as outᵀ = b aᵀ, a product with an inner size of 1.
        out_t = gemm(1.0, b.reshape(-1, 1), a.reshape(1, -1), beta=0.0, c=out.T, overwrite_c=True)
        return out_t.T

    # Updates write into the target when NumPy lets us (a read-only array, such as one NumPy made from a
    # buffer it does not own, gets the portable new array instead).
    def add_scaled(self, target: Array, source: Array, alpha: Scalar = 1.0, *, beta: Scalar = 1.0) -> Array:
        if target.size >= BLAS_MIN_SIZE and getattr(source, "shape", None) == target.shape:
            axpy = (_blas_routine("axpy", target, source) if target.flags.c_contiguous and target.flags.writeable
                    else None)
            if axpy is not None:  # one fused pass
                if beta != 1.0:
                    target *= beta
                flat = target.reshape(-1)
                result = axpy(source.reshape(-1), flat, a=alpha)  # in place on ``flat`` (a float array of its type)
                if result is not flat:  # f2py had to copy: never for the arrays we let through
                    flat[...] = result
                return target
        if not target.flags.writeable:
            return super().add_scaled(target, source, alpha, beta=beta)
        if beta != 1.0:
            target *= beta
        if alpha == 1.0:
            target += source
        else:
            target += alpha * source
        return target

    def scale(self, target: Array, factor: Scalar) -> Array:
        if not target.flags.writeable:
            return super().scale(target, factor)
        target *= factor
        return target

    def at_set(self, x: Array, index: Any, values: Array | float) -> Array:
        if not x.flags.writeable:
            return super().at_set(x, index, values)
        x[index] = values
        return x

    def at_add(self, x: Array, index: Any, values: Array | float) -> Array:
        if not x.flags.writeable:
            return super().at_add(x, index, values)
        x[index] += values
        return x

    # -- fused and multi-tensor capabilities: in place, with as few passes and temporaries as NumPy allows ----
    def dense_forward(self, x: Array, weight: Array, bias: Array | None = None, activation: str | None = None, *,
                      negative_slope: float = 0.01) -> tuple[Array, tuple]:
        y = x @ weight
        if bias is not None:
            y += bias
        if activation == "relu":
            np.maximum(y, 0.0, out=y)
        elif activation is not None:
            z = y
            y = activation_forward(np, z, activation, negative_slope)
            if activation == "gelu":
                return y, (x, weight, z, activation, negative_slope, bias is not None)
        return y, (x, weight, y, activation, negative_slope, bias is not None)

    def dense_backward(self, grad_output: Array, saved: tuple, *, input_grad: bool = True,
                       weight_grad_out: Array | None = None,
                       bias_grad_out: Array | None = None) -> tuple[Array | None, Array, Array | None]:
        x, weight, kept, activation, slope, has_bias = saved
        if activation == "relu":  # the 0/1 mask as a bool operand: no float copy of it
            grad = np.multiply(grad_output, kept > 0)
        else:
            grad = activation_backward(np, grad_output, kept, activation, slope)
        inputs, flat_grad = x, grad
        if inputs.ndim > 2:
            inputs = inputs.reshape(-1, weight.shape[0])
            flat_grad = grad.reshape(-1, weight.shape[1])
        out = _writable_like(weight_grad_out, weight.shape, flat_grad.dtype)
        if inputs.shape[0] == 1:
            grad_weight = self._outer_into(inputs[0], flat_grad[0], out)
        elif out is not None and inputs.dtype == flat_grad.dtype:
            grad_weight = np.matmul(inputs.T, flat_grad, out=out)
        else:
            grad_weight = inputs.T @ flat_grad
        grad_bias = None
        if has_bias:
            out = _writable_like(bias_grad_out, weight.shape[1:], flat_grad.dtype)
            grad_bias = np.sum(flat_grad, axis=0, out=out)
        grad_input = grad @ weight.T if input_grad else None
        return grad_input, grad_weight, grad_bias

    def _outer_into(self, a, b, out):
        if out is None:
            return self.outer(a, b)
        gemm = _blas_routine("gemm", a, b) if a.size * b.size >= BLAS_MIN_SIZE and out.dtype == a.dtype else None
        if gemm is None:
            return np.multiply.outer(a, b, out=out)
        gemm(1.0, b.reshape(-1, 1), a.reshape(1, -1), beta=0.0, c=out.T, overwrite_c=True)  # see outer()
        return out

    def softmax_cross_entropy(self, logits: Array, labels: Array, *, grad_scale: Scalar = 1.0,
                              metrics: Array | None = None,
                              with_grad: bool = True) -> tuple[Array, Array | None, Array | None]:
        classes = logits.shape[-1]
        z, index = logits.reshape(-1, classes), labels.reshape(-1)
        positions = z.shape[0]
        rows = np.arange(positions)
        shifted = z - z.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        loss = np.asarray(-(shifted[rows, index] - np.log(sums[:, 0])).sum() / positions, dtype=logits.dtype)
        grad = None
        if with_grad:  # softmax, minus 1 at each label: no one-hot array
            grad = np.divide(exp, sums, out=exp)
            grad[rows, index] -= 1.0
            grad *= grad_scale / positions
            grad = grad.reshape(logits.shape)
        if metrics is not None:
            correct = np.count_nonzero(z.argmax(axis=1) == index)
            metrics = self.add_step_metrics(metrics, loss, correct, logits.shape[0])
        return loss, grad, metrics

    def add_step_metrics(self, metrics: Array, loss: Array, correct: Array | int, examples: int) -> Array:
        if not metrics.flags.writeable:
            return super().add_step_metrics(metrics, loss, np.asarray(correct), examples)
        loss = float(loss)  # a host value already: no synchronization
        metrics[0] += loss * examples
        metrics[1] += correct
        metrics[2] += not math.isfinite(loss)
        return metrics

    def close_step_metrics(self, metrics: Array) -> Array:
        if not metrics.flags.writeable:
            return super().close_step_metrics(metrics)
        if metrics[2] == 0:
            metrics[3] += 1
        return metrics

    def multi_tensor_adam(self, params: Any, grads: Any, exp_avgs: Any, exp_avg_sqs: Any, *, lr: Scalar, step: Scalar,
                          beta1: float, beta2: float, eps: float, weight_decay: float = 0.0,
                          decoupled_weight_decay: bool = False) -> tuple[Updated, Updated, Updated]:
        flat = _flat_arrays(params, grads, exp_avgs, exp_avg_sqs)
        if flat is None or not all(isinstance(v, (int, float)) for v in (lr, step)):
            return super().multi_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, lr=lr, step=step, beta1=beta1,
                                             beta2=beta2, eps=eps, weight_decay=weight_decay,
                                             decoupled_weight_decay=decoupled_weight_decay)
        # The portable update's operations in its order over the flat buffers (the same roundings), with one
        # scratch array for g², the denominator and the step instead of a new array for each.
        param, grad, exp_avg, exp_avg_sq = flat
        if weight_decay != 0:
            if decoupled_weight_decay:
                param *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * param
        self.add_scaled(exp_avg, grad, 1 - beta1, beta=beta1)
        scratch = np.multiply(grad, grad)
        self.add_scaled(exp_avg_sq, scratch, 1 - beta2, beta=beta2)
        np.sqrt(exp_avg_sq, out=scratch)
        scratch /= math.sqrt(1 - beta2 ** step)
        scratch += eps
        np.divide(exp_avg, scratch, out=scratch)
        self.add_scaled(param, scratch, -(lr / (1 - beta1 ** step)))
        return params, exp_avgs, exp_avg_sqs

    def flat_buffer(self, shapes: Any, dtype: Any) -> tuple[Array, list]:
        total = sum(math.prod(shape) for shape in shapes)
        flat = np.zeros(total, dtype=dtype)
        return flat, flat_views(np, flat, shapes)

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        if not target.flags.writeable:
            target = target.copy()
        np.add.at(target, indices, values)
        return target

    def conv2d_forward(self, x: Array, weight: Array, bias: Array | None, *, stride: tuple[int, int],
                       padding: tuple[int, int], dilation: tuple[int, int]) -> tuple[Array, Any]:
        return _conv2d_forward(x, weight, bias, stride, padding, dilation)

    def conv2d_backward(self, grad_output: Array, saved: Any, *, bias: bool,
                        input_grad: bool = True) -> tuple[Array | None, Array, Array | None]:
        return _conv2d_backward(grad_output, saved, bias, input_grad)

    # The LSTM and GRU steps in a few in-place NumPy calls (backends/numpy_cells.py).
    cells_write_out = True

    def lstm_cell_forward(self, a: Array, h_prev: Array | None, c_prev: Array | None,
                          weight_hh: Array) -> tuple[Array, Array, tuple]:
        return numpy_cells.lstm_cell_forward(a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh: Array, dc: Array | None, cache: tuple, weight_hh: Array, *, pass_back: bool,
                           out: Array | None = None,
                           weight_hh_t: Array | None = None) -> tuple[Array, Array | None, Array | None]:
        return numpy_cells.lstm_cell_backward(dh, dc, cache, weight_hh, pass_back, out, weight_hh_t)

    def gru_cell_forward(self, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array) -> tuple[Array, tuple]:
        return numpy_cells.gru_cell_forward(a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh: Array, cache: tuple, weight_hh: Array, *, pass_back: bool, out: Any = None,
                          weight_hh_t: Array | None = None) -> tuple[Array, Array, Array | None]:
        return numpy_cells.gru_cell_backward(dh, cache, weight_hh, pass_back, out, weight_hh_t)

    def transposed_for_products(self, weight: Array) -> Array:
        return np.ascontiguousarray(weight.T)

    def memory_stats(self) -> dict[str, int]:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        return {"host_peak_rss_bytes": peak if sys.platform == "darwin" else peak * 1024}


def _writable_like(out, shape, dtype):
    """``out`` when a result of ``shape`` and ``dtype`` can be written into it, else None."""
    if (out is None or type(out) is not np.ndarray or out.shape != tuple(shape) or out.dtype != dtype
            or not out.flags.writeable or not out.flags.c_contiguous):
        return None
    return out


def _flat_arrays(*lists):
    """The flat arrays of ``FlatTensors`` lists (of one dtype and size, writeable), or None."""
    flats = []
    for views in lists:
        if not isinstance(views, FlatTensors) or views.flat is None:
            return None
        flats.append(views.flat)
    first = flats[0]
    if any(f.dtype != first.dtype or f.shape != first.shape or not f.flags.writeable for f in flats):
        return None
    return flats


# -- convolution fast path ------------------------------------------------------------------------------------
# im2col with channel-major columns: cols has shape (C, kh, kw, N, OH, OW), so each kernel offset's slice copy
# moves whole rows of OW contiguous floats, and the arithmetic is one BLAS matrix product with the weight as it
# is stored, (O, C·kh·kw):  Y = W cols (O, N·OH·OW),  dW = dY colsᵀ,  dcols = Wᵀ dY.  Y comes back as an NCHW
# view of channel-major (C, N, H, W) memory: elementwise NumPy operations keep that layout, so the pooling
# and activation layers between convolutions and the gradients flowing back stay in it without copies.
# (Tried and measured slower in a training step: columns as "row strips" that read across row ends, which make
# the copies 2.5x faster but leave Y a view with gaps, and the ReLU after it 1.6x slower.)

#: Columns per block of the products with the columns matrix (few rows, N·OH·OW columns): OpenBLAS runs them
#: faster in blocks that stay in the CPU's cache than in one call (measured, one thread, 8 and 9 rows by 93,184
#: columns: dW = cols dYᵀ 0.79 ms in one call, 0.20 ms in blocks of 8,192; Y = W cols 0.31 ms, 0.18 ms).
GEMM_CHUNK = 8192


def _product_nt(a, b):
    """``a @ b.T`` for two matrices with few rows and many columns, in blocks of ``GEMM_CHUNK`` columns."""
    columns = a.shape[1]
    if columns <= 2 * GEMM_CHUNK:
        return a @ b.T
    out = a[:, :GEMM_CHUNK] @ b[:, :GEMM_CHUNK].T
    for start in range(GEMM_CHUNK, columns, GEMM_CHUNK):
        out += a[:, start:start + GEMM_CHUNK] @ b[:, start:start + GEMM_CHUNK].T
    return out


def _product_nn(a, b):
    """``a @ b`` for a small ``a`` and a ``b`` with many columns, block of ``GEMM_CHUNK`` columns by block."""
    columns = b.shape[1]
    if columns <= 2 * GEMM_CHUNK or a.shape[1] > 32:  # a deep product (many rows of b) gains nothing from blocks
        return a @ b
    out = np.empty((a.shape[0], columns), dtype=np.result_type(a, b))
    for start in range(0, columns, GEMM_CHUNK):
        np.matmul(a, b[:, start:start + GEMM_CHUNK], out=out[:, start:start + GEMM_CHUNK])
    return out


def _conv2d_forward(x, weight, bias, stride, padding, dilation):
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x_cnhw = x.transpose(1, 0, 2, 3)
    if ph or pw:
        padded = np.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x_cnhw
    else:
        padded = x_cnhw
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = padded[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
    cols = cols.reshape(c * kh * kw, n * oh * ow)
    w2 = weight.reshape(o, c * kh * kw)
    y = _product_nn(w2, cols)
    if bias is not None:
        y += bias[:, None]
    saved = (x.shape, padded.shape, cols, w2, (kh, kw), (oh, ow), stride, padding, dilation)
    return y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3), saved


def _conv2d_backward(grad_output, saved, bias, input_grad=True):
    x_shape, padded_shape, cols, w2, (kh, kw), (oh, ow), stride, padding, dilation = saved
    n, c, h, w = x_shape
    o = grad_output.shape[1]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    g2 = grad_output.transpose(1, 0, 2, 3).reshape(o, n * oh * ow)  # no copy when dY is channel-major
    grad_weight = _product_nt(cols, g2).T.reshape(o, c, kh, kw)  # (cols dYᵀ)ᵀ: OpenBLAS's faster orientation
    grad_bias = g2.sum(axis=1) if bias else None
    if not input_grad:
        return None, grad_weight, grad_bias
    grad_cols = (w2.T @ g2).reshape(c, kh, kw, n, oh, ow)
    grad_padded = np.zeros(padded_shape, dtype=grad_output.dtype)  # (C, N, H + 2ph, W + 2pw)
    for i in range(kh):
        for j in range(kw):
            grad_padded[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += \
                grad_cols[:, i, j]
    grad_input = grad_padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)
    return grad_input, grad_weight, grad_bias


def load(device: str | None) -> Backend:
    if device not in (None, "cpu"):
        raise BackendUnavailable(f"numpy:{device}", "numpy runs only on the host CPU (device 'cpu')")
    return NumpyBackend()
