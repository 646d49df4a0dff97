"""Every CUDA kernel the project ships, registered in one place.

The CuPy backend gets its kernels only from here: ``kernel(name)`` builds the CuPy object (``cupy.RawModule``
or ``cupy.ElementwiseKernel``) from the registered source, once per process. ``backends/nvrtc_check.py``
compiles every registered source with NVRTC for the GPU architectures the project supports, without a GPU,
and ``tests/test_cuda_kernels.py`` runs that in CI: a kernel with an undefined identifier fails there, not on
the first GPU. A kernel built anywhere else would escape the check, so a test refuses any ``RawKernel``,
``RawModule``, ``ElementwiseKernel`` or ``ReductionKernel`` created outside this module.

The kernels of the recurrent cells and of the fused and multi-tensor capabilities are registered below,
each as a ``register(RawSource(...))`` or ``register(ElementwiseSource(...))``.

CuPy is imported only when a kernel is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawSource:
    """CUDA C++ source with ``extern "C" __global__`` functions: a ``cupy.RawModule``.

    ``kernels`` names the functions the backend calls (``kernel(name).get_function(k)``); the check finds each
    one in the compiled PTX, so a misspelt name or a missing ``extern "C"`` (a C++-mangled name) fails there.
    """

    name: str
    code: str
    kernels: tuple[str, ...]
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ElementwiseSource:
    """A ``cupy.ElementwiseKernel``: CuPy generates its CUDA source per argument types when first called.

    ``dtypes`` are the types its type placeholders (``T``) take in use; the check compiles the source CuPy
    generates for each (every placeholder that type). ``scalars`` names the parameters the backend passes as
    Python numbers rather than arrays (their generated code differs)."""

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""
    dtypes: tuple[str, ...] = ("float32",)
    scalars: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


KERNELS: dict[str, RawSource | ElementwiseSource] = {}


def register(source: RawSource | ElementwiseSource) -> RawSource | ElementwiseSource:
    """Add a kernel source to the registry (its ``name`` must be new)."""
    if not isinstance(source, (RawSource, ElementwiseSource)):
        raise TypeError(f"expected a RawSource or an ElementwiseSource, got {type(source).__name__}")
    if source.name in KERNELS:
        raise ValueError(f"a CUDA kernel named {source.name!r} is already registered")
    KERNELS[source.name] = source
    return source


@functools.cache
def kernel(name: str) -> Any:
    """The CuPy object of registered kernel ``name``: ``cupy.RawModule`` (call ``.get_function(k)``) or
    ``cupy.ElementwiseKernel``. CuPy compiles it for the current GPU when it is first used."""
    import cupy  # lazy: optional library (this module loads without it, for the kernels' sources)

    source = KERNELS[name]
    if isinstance(source, RawSource):
        return cupy.RawModule(code=source.code, options=source.options)
    return cupy.ElementwiseKernel(source.in_params, source.out_params, source.operation, source.name,
                                  preamble=source.preamble, options=source.options)


# -- the kernels --------------------------------------------------------------------------------------------------

# The recurrent cells (backends/cupy_cells.py): one thread per (batch row, hidden unit), which reads and writes
# that unit's entry in each gate block of a (batch, gates · hidden) row. The recurrent matrix product h W_hh
# (a cuBLAS call before the forward kernel, which adds it in) and da W_hhᵀ (after the backward kernel) are
# the only other launches of a step. Gate order and formulas: PyTorch's, as the
# portable cells in backends/base.py.
_CELL_PREAMBLE = r"""
template <typename T> __device__ __forceinline__ T cell_sigmoid(T x) {
    return (T)0.5 * tanh((T)0.5 * x) + (T)0.5;
}
"""
_CELL_INDEX = """
const ptrdiff_t row = i / hidden;
const ptrdiff_t col = i - row * hidden;
"""

LSTM_FORWARD = register(ElementwiseSource(
    "backprop_lstm_forward", "T c_prev, raw T hh, int32 hidden, int32 has_prev", "raw T gates, T c, T tanh_c, T h",
    _CELL_INDEX + """
const ptrdiff_t k = row * 4 * hidden + col;
const T ig = cell_sigmoid(has_prev ? gates[k] + hh[k] : gates[k]);
const T fg = cell_sigmoid(has_prev ? gates[k + hidden] + hh[k + hidden] : gates[k + hidden]);
const T gg = tanh(has_prev ? gates[k + 2 * hidden] + hh[k + 2 * hidden] : gates[k + 2 * hidden]);
const T og = cell_sigmoid(has_prev ? gates[k + 3 * hidden] + hh[k + 3 * hidden] : gates[k + 3 * hidden]);
gates[k] = ig;
gates[k + hidden] = fg;
gates[k + 2 * hidden] = gg;
gates[k + 3 * hidden] = og;
c = has_prev ? fg * c_prev + ig * gg : ig * gg;
tanh_c = tanh(c);
h = og * tanh_c;
""", preamble=_CELL_PREAMBLE, dtypes=("float32", "float64"), scalars=("hidden", "has_prev")))

LSTM_BACKWARD = register(ElementwiseSource(
    "backprop_lstm_backward", "T dh, T dc, T c_prev, T tanh_c, raw T gates, int32 hidden, int32 has_dc, "
    "int32 has_prev", "raw T da, T dc_prev",
    _CELL_INDEX + """
const ptrdiff_t k = row * 4 * hidden + col;
const T ig = gates[k];
const T fg = gates[k + hidden];
const T gg = gates[k + 2 * hidden];
const T og = gates[k + 3 * hidden];
T dct = dh * og * ((T)1 - tanh_c * tanh_c);
if (has_dc) dct += dc;
da[k] = dct * gg * ig * ((T)1 - ig);
da[k + hidden] = has_prev ? dct * c_prev * fg * ((T)1 - fg) : (T)0;
da[k + 2 * hidden] = dct * ig * ((T)1 - gg * gg);
da[k + 3 * hidden] = dh * tanh_c * og * ((T)1 - og);
dc_prev = dct * fg;
""", dtypes=("float32", "float64"), scalars=("hidden", "has_dc", "has_prev")))

GRU_FORWARD = register(ElementwiseSource(
    "backprop_gru_forward", "T h_prev, raw T bias_hn, int32 hidden, int32 has_prev", "raw T gates, raw T hh, T h",
    _CELL_INDEX + """
const ptrdiff_t k = row * 3 * hidden + col;
const T r = cell_sigmoid(has_prev ? gates[k] + hh[k] : gates[k]);
const T z = cell_sigmoid(has_prev ? gates[k + hidden] + hh[k + hidden] : gates[k + hidden]);
const T hn = has_prev ? hh[k + 2 * hidden] + bias_hn[col] : bias_hn[col];
const T n = tanh(gates[k + 2 * hidden] + r * hn);
gates[k] = r;
gates[k + hidden] = z;
gates[k + 2 * hidden] = n;
if (has_prev) hh[k + 2 * hidden] = hn;
h = has_prev ? n + z * (h_prev - n) : n - z * n;
""", preamble=_CELL_PREAMBLE, dtypes=("float32", "float64"), scalars=("hidden", "has_prev")))

GRU_BACKWARD = register(ElementwiseSource(
    "backprop_gru_backward", "T dh, T h_prev, raw T gates, raw T hn, int32 hidden, int32 hn_row, int32 hn_offset, "
    "int32 has_prev", "raw T d_in, raw T d_hh, T dh_direct",
    _CELL_INDEX + """
const ptrdiff_t k = row * 3 * hidden + col;
const T r = gates[k];
const T z = gates[k + hidden];
const T n = gates[k + 2 * hidden];
const T da_n = dh * ((T)1 - z) * ((T)1 - n * n);
const T dz = has_prev ? dh * (h_prev - n) : -(dh * n);
const T da_r = da_n * hn[row * hn_row + hn_offset + col] * r * ((T)1 - r);
const T da_z = dz * z * ((T)1 - z);
d_in[k] = da_r;
d_in[k + hidden] = da_z;
d_in[k + 2 * hidden] = da_n;
d_hh[k] = da_r;
d_hh[k + hidden] = da_z;
d_hh[k + 2 * hidden] = r * da_n;
dh_direct = dh * z;
""", dtypes=("float32", "float64"), scalars=("hidden", "hn_row", "hn_offset", "has_prev")))

# The fused and multi-tensor capabilities of the CuPy backend (backends/cupy_backend.py; each one launch, see
# its KERNEL_LAUNCHES). Written and compiled with NVRTC here; NOT YET RUN ON A GPU (none was available).
# ``T`` is the arrays' float type; ``S`` a learning rate or step number: a Python number, or a 0-d array (a
# device scalar, float64), cast to ``T`` where it meets the arrays, as NumPy casts a Python number.

# Activations by number (the order of backends.base.FUSED_ACTIVATIONS, GELU apart): 0 none, 1 relu, 2 leaky_relu,
# 3 tanh, 4 sigmoid. The formulas are the activation layers'.
_ACTIVATIONS = r"""
template <typename T> __device__ T act_forward(T z, int act, T slope) {
    if (act == 1) return z > T(0) ? z : T(0);
    if (act == 2) return z > slope * z ? z : slope * z;
    if (act == 3) return tanh(z);
    if (act == 4) return T(0.5) + T(0.5) * tanh(T(0.5) * z);
    return z;
}
template <typename T> __device__ T act_derivative(T y, int act, T slope) {  // from the output y
    if (act == 1) return y > T(0) ? T(1) : T(0);
    if (act == 2) return y > T(0) ? T(1) : slope;
    if (act == 3) return T(1) - y * y;
    if (act == 4) return y * (T(1) - y);
    return T(1);
}
"""

_GELU = r"""
template <typename T> __device__ T gelu_tanh(T z) {
    return tanh(T(0.7978845608028654) * (z + T(0.044715) * z * z * z));
}
"""

# dense_forward: the GEMM's output y (rows x cols) gets the bias and the activation in place.
register(ElementwiseSource(
    "dense_bias_activation", "raw T bias, int64 cols, int32 has_bias, int32 act, T slope", "T y",
    "T z = has_bias ? y + bias[i % cols] : y; y = act_forward(z, act, slope);",
    preamble=_ACTIVATIONS, dtypes=("float32", "float64"), scalars=("cols", "has_bias", "act", "slope")))

# dense_forward with GELU: z keeps the pre-activation (its derivative needs it), y the output.
register(ElementwiseSource(
    "dense_bias_gelu", "raw T bias, int64 cols, int32 has_bias", "T z, T y",
    "if (has_bias) z = z + bias[i % cols]; y = T(0.5) * z * (T(1) + gelu_tanh(z));",
    preamble=_GELU, dtypes=("float32", "float64"), scalars=("cols", "has_bias")))

# dense_backward: dL/dz = dL/dy times the activation's derivative (written to grad unless there is no
# activation), fused with the bias gradient's column sums. A block takes 32 columns; its 32 x 8 threads walk
# the rows, then sum over their 8 rows in shared memory: one write per column, no atomics.
register(RawSource("dense_backward", _ACTIVATIONS + _GELU + r"""
template <typename T>
__device__ void grad_and_bias(const T* grad_out, const T* kept, T* grad, T* grad_bias, long long rows,
                              long long cols, int act, T slope, int gelu, int want_bias) {
    __shared__ T partial[8][33];
    long long col = (long long)blockIdx.x * 32 + threadIdx.x;
    T sum = T(0);
    if (col < cols) {
        for (long long row = threadIdx.y; row < rows; row += 8) {
            long long at = row * cols + col;
            T g = grad_out[at];
            if (gelu) {
                T z = kept[at], t = gelu_tanh(z);
                T du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * z * z);
                g = g * (T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * du);
                grad[at] = g;
            } else if (act != 0) {
                g = g * act_derivative(kept[at], act, slope);
                grad[at] = g;
            }
            sum += g;
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols && want_bias) {
        T total = T(0);
        for (int k = 0; k < 8; ++k) total += partial[k][threadIdx.x];
        grad_bias[col] = total;
    }
}

extern "C" __global__ void dense_grad_bias_f32(const float* grad_out, const float* kept, float* grad,
                                               float* grad_bias, long long rows, long long cols, int act,
                                               float slope, int gelu, int want_bias) {
    grad_and_bias<float>(grad_out, kept, grad, grad_bias, rows, cols, act, slope, gelu, want_bias);
}

extern "C" __global__ void dense_grad_bias_f64(const double* grad_out, const double* kept, double* grad,
                                               double* grad_bias, long long rows, long long cols, int act,
                                               double slope, int gelu, int want_bias) {
    grad_and_bias<double>(grad_out, kept, grad, grad_bias, rows, cols, act, slope, gelu, want_bias);
}
""", kernels=("dense_grad_bias_f32", "dense_grad_bias_f64")))

# softmax_cross_entropy: one block; each thread takes rows (softmax through the row's maximum, the loss
# log Σ exp(z - max) - (z_label - max), the gradient (softmax - 1 at the label) times scale / positions, the
# prediction: the first maximum), then the block sums the losses (in double) and the counts; thread 0 writes
# the mean loss and adds to the metrics (loss · examples, correct, 1 if the loss is not finite).
register(RawSource("softmax_cross_entropy", r"""
template <typename T, typename L>
__device__ void xent(const T* logits, const L* labels, T* grad, T* loss_out, T* metrics, long long rows,
                     long long classes, double scale, double examples, int want_grad, int want_metrics) {
    __shared__ double loss_part[256];
    __shared__ long long correct_part[256];
    double loss_sum = 0.0;
    long long correct = 0;
    T factor = T(scale / (double)rows);
    for (long long row = threadIdx.x; row < rows; row += blockDim.x) {
        const T* z = logits + row * classes;
        long long label = (long long)labels[row];
        T top = z[0];
        long long best = 0;
        for (long long c = 1; c < classes; ++c) {
            if (z[c] > top) { top = z[c]; best = c; }
        }
        T total = T(0);
        for (long long c = 0; c < classes; ++c) total += exp(z[c] - top);
        T log_total = log(total);
        loss_sum += (double)(log_total - (z[label] - top));
        correct += (best == label);
        if (want_grad) {
            T* g = grad + row * classes;
            for (long long c = 0; c < classes; ++c) {
                T p = exp(z[c] - top) / total;
                g[c] = (p - (c == label ? T(1) : T(0))) * factor;
            }
        }
    }
    loss_part[threadIdx.x] = loss_sum;
    correct_part[threadIdx.x] = correct;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            loss_part[threadIdx.x] += loss_part[threadIdx.x + half];
            correct_part[threadIdx.x] += correct_part[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        T mean = T(loss_part[0] / (double)rows);
        loss_out[0] = mean;
        if (want_metrics) {
            metrics[0] += mean * T(examples);
            metrics[1] += T(correct_part[0]);
            metrics[2] += isfinite(mean) ? T(0) : T(1);
        }
    }
}

#define XENT(NAME, T, L)                                                                                    \
extern "C" __global__ void NAME(const T* logits, const L* labels, T* grad, T* loss_out, T* metrics,           \
                                long long rows, long long classes, double scale, double examples,           \
                                int want_grad, int want_metrics) {                                          \
    xent<T, L>(logits, labels, grad, loss_out, metrics, rows, classes, scale, examples, want_grad,           \
               want_metrics);                                                                               \
}
XENT(softmax_xent_f32_i64, float, long long)
XENT(softmax_xent_f32_i32, float, int)
XENT(softmax_xent_f64_i64, double, long long)
XENT(softmax_xent_f64_i32, double, int)
""", kernels=("softmax_xent_f32_i64", "softmax_xent_f32_i32", "softmax_xent_f64_i64", "softmax_xent_f64_i32")))

# add_step_metrics (losses without the fused path): one thread adds a batch's figures.
register(ElementwiseSource(
    "add_step_metrics", "raw T loss, raw C correct, float64 examples", "raw T metrics",
    "metrics[0] += loss[0] * (T)examples; metrics[1] += (T)correct[0]; metrics[2] += isfinite(loss[0]) ? 0 : 1;",
    dtypes=("float32", "float64"), scalars=("examples",)))

# close_step_metrics: one more good step while no loss so far was not finite.
register(ElementwiseSource(
    "close_step_metrics", "", "raw T metrics", "if (metrics[2] == 0) metrics[3] += 1;",
    dtypes=("float32", "float64")))

# tensor_norms: the arrays by a table of pointers and sizes (cached while the arrays stay: the flat buffers'
# views always do). First kernel: blocks (array, chunk) write partial sums of squares; second: one block per
# array sums its partials, takes the square root and adds it to the sums (norms_out) when asked.
register(RawSource("tensor_norms", r"""
template <typename T>
__device__ void partial_squares(const unsigned long long* pointers, const long long* sizes, double* partial,
                                int chunks) {
    __shared__ double part[256];
    int array = blockIdx.y, chunk = blockIdx.x;
    const T* data = (const T*)pointers[array];
    long long n = sizes[array];
    double sum = 0.0;
    for (long long i = (long long)chunk * blockDim.x + threadIdx.x; i < n; i += (long long)chunks * blockDim.x) {
        double v = (double)data[i];
        sum += v * v;
    }
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[array * chunks + chunk] = part[0];
}

extern "C" __global__ void norm_partials_f32(const unsigned long long* pointers, const long long* sizes,
                                             double* partial, int chunks) {
    partial_squares<float>(pointers, sizes, partial, chunks);
}

extern "C" __global__ void norm_partials_f64(const unsigned long long* pointers, const long long* sizes,
                                             double* partial, int chunks) {
    partial_squares<double>(pointers, sizes, partial, chunks);
}

template <typename T>
__device__ void finish(const double* partial, int chunks, T* norms, int add) {
    __shared__ double part[256];
    int array = blockIdx.x;
    double sum = 0.0;
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) sum += partial[array * chunks + c];
    part[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        T norm = T(sqrt(part[0]));
        norms[array] = add ? norms[array] + norm : norm;
    }
}

extern "C" __global__ void norm_finish_f32(const double* partial, int chunks, float* norms, int add) {
    finish<float>(partial, chunks, norms, add);
}

extern "C" __global__ void norm_finish_f64(const double* partial, int chunks, double* norms, int add) {
    finish<double>(partial, chunks, norms, add);
}
""", kernels=("norm_partials_f32", "norm_partials_f64", "norm_finish_f32", "norm_finish_f64")))

# clip_coefficient: min(1, max_norm / (sqrt(Σ norms²) + 1e-6)), one thread.
register(ElementwiseSource(
    "clip_coefficient", "raw T norms, int64 n, float64 max_norm", "raw T coefficient",
    "double total = 0; for (long long k = 0; k < n; ++k) total += (double)norms[k] * (double)norms[k]; "
    "T c = (T)(max_norm / (sqrt(total) + 1e-6)); coefficient[0] = c < (T)1 ? c : (T)1;",
    dtypes=("float32", "float64"), scalars=("n", "max_norm")))

# The optimizers over flat buffers (or one array): the portable updates' operations, in their order.
register(ElementwiseSource(
    "sgd_update", "T g, S lr, float64 weight_decay", "T p",
    "T grad = weight_decay != 0 ? g + (T)weight_decay * p : g; p = p - (T)lr * grad;",
    dtypes=("float32", "float64"), scalars=("lr", "weight_decay")))

register(ElementwiseSource(
    "sgd_momentum_update", "T g, S lr, float64 momentum, float64 weight_decay, int32 nesterov", "T p, T buf",
    "T grad = weight_decay != 0 ? g + (T)weight_decay * p : g; buf = (T)momentum * buf + grad; "
    "T step = nesterov ? grad + (T)momentum * buf : buf; p = p - (T)lr * step;",
    dtypes=("float32", "float64"), scalars=("lr", "momentum", "weight_decay", "nesterov")))

register(ElementwiseSource(
    "adam_update", "T g, S lr, U step, float64 beta1, float64 beta2, float64 eps, float64 weight_decay, "
                   "int32 decoupled", "T p, T m, T v",
    "T grad = g; "
    "if (weight_decay != 0) { if (decoupled) p = p * ((T)1 - (T)lr * (T)weight_decay); "
    "else grad = grad + (T)weight_decay * p; } "
    "double bias1 = 1.0 - pow(beta1, (double)step), bias2_sqrt = sqrt(1.0 - pow(beta2, (double)step)); "
    "m = (T)beta1 * m + (T)(1.0 - beta1) * grad; "
    "v = (T)beta2 * v + (T)(1.0 - beta2) * (grad * grad); "
    "T denom = sqrt(v) / (T)bias2_sqrt + (T)eps; "
    "p = p - (T)((double)lr / bias1) * (m / denom);",
    dtypes=("float32", "float64"), scalars=("lr", "step", "beta1", "beta2", "eps", "weight_decay", "decoupled")))

register(ElementwiseSource(
    "rmsprop_update", "T g, S lr, float64 alpha, float64 eps, float64 weight_decay", "T p, T square_avg",
    "T grad = weight_decay != 0 ? g + (T)weight_decay * p : g; "
    "square_avg = (T)alpha * square_avg + (T)(1.0 - alpha) * (grad * grad); "
    "p = p - (T)lr * (grad / (sqrt(square_avg) + (T)eps));",
    dtypes=("float32", "float64"), scalars=("lr", "alpha", "eps", "weight_decay")))

register(ElementwiseSource(
    "rmsprop_momentum_update", "T g, S lr, float64 alpha, float64 eps, float64 momentum, float64 weight_decay",
    "T p, T square_avg, T buf",
    "T grad = weight_decay != 0 ? g + (T)weight_decay * p : g; "
    "square_avg = (T)alpha * square_avg + (T)(1.0 - alpha) * (grad * grad); "
    "buf = (T)momentum * buf + grad / (sqrt(square_avg) + (T)eps); p = p - (T)lr * buf;",
    dtypes=("float32", "float64"), scalars=("lr", "alpha", "eps", "momentum", "weight_decay")))

register(ElementwiseSource(
    "adagrad_update", "T g, S lr, float64 eps, float64 weight_decay", "T p, T state_sum",
    "T grad = weight_decay != 0 ? g + (T)weight_decay * p : g; state_sum = state_sum + grad * grad; "
    "p = p - (T)lr * (grad / (sqrt(state_sum) + (T)eps));",
    dtypes=("float32", "float64"), scalars=("lr", "eps", "weight_decay")))

# add_scaled (every in-place update the layers make): beta · y + alpha · x in one pass.
register(ElementwiseSource(
    "axpby", "T x, A alpha, B beta", "T y", "y = (T)beta * y + (T)alpha * x;",
    dtypes=("float32", "float64"), scalars=("alpha", "beta")))

# Uniform random numbers from a counter-based generator (Philox4x32-10, as cuRAND's and JAX's): the numbers of
# a draw are a function of (key, the counter on the device, the element's index), and a second kernel advances
# the counter. A CUDA Graph replays both, so each replay draws new numbers (cuRAND's host-side generator
# would replay the same ones).
register(RawSource("philox", r"""
__device__ void philox_round(unsigned int* ctr, const unsigned int* key) {
    unsigned long long p0 = (unsigned long long)0xD2511F53u * ctr[0];
    unsigned long long p1 = (unsigned long long)0xCD9E8D57u * ctr[2];
    unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
    unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
    unsigned int c0 = hi1 ^ ctr[1] ^ key[0], c2 = hi0 ^ ctr[3] ^ key[1];
    ctr[0] = c0; ctr[1] = lo1; ctr[2] = c2; ctr[3] = lo0;
}

__device__ void philox(unsigned int* ctr, unsigned int k0, unsigned int k1) {
    unsigned int key[2] = {k0, k1};
    for (int round = 0; round < 10; ++round) {
        philox_round(ctr, key);
        key[0] += 0x9E3779B9u; key[1] += 0xBB67AE85u;
    }
}

template <typename T>
__device__ void uniform(unsigned long long seed, const unsigned long long* counter, T* out, long long n) {
    long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long first = block * 4;
    if (first >= n) return;
    unsigned long long draw = counter[0];
    unsigned int ctr[4] = {(unsigned int)block, (unsigned int)(block >> 32), (unsigned int)draw,
                           (unsigned int)(draw >> 32)};
    philox(ctr, (unsigned int)seed, (unsigned int)(seed >> 32));
    for (int k = 0; k < 4 && first + k < n; ++k) {
        out[first + k] = T((ctr[k] >> 8) * (1.0 / 16777216.0));  // 24 bits: exact in float32, in [0, 1)
    }
}

extern "C" __global__ void philox_uniform_f32(unsigned long long seed, const unsigned long long* counter,
                                              float* out, long long n) {
    uniform<float>(seed, counter, out, n);
}

extern "C" __global__ void philox_uniform_f64(unsigned long long seed, const unsigned long long* counter,
                                              double* out, long long n) {
    uniform<double>(seed, counter, out, n);
}

extern "C" __global__ void philox_advance(unsigned long long* counter) {
    counter[0] += 1;
}
""", kernels=("philox_uniform_f32", "philox_uniform_f64", "philox_advance")))


__all__ = ["KERNELS", "ElementwiseSource", "RawSource", "kernel", "register"]
