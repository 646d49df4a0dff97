"""Every CUDA kernel the project ships, registered in one place.

The CuPy backend gets its kernels only from here: ``kernel(name)`` builds the CuPy object (``cupy.RawModule``
or ``cupy.ElementwiseKernel``) from the registered source, once per process. ``backends/nvrtc_check.py``
compiles every registered source with NVRTC for the GPU architectures the project supports, without a GPU,
and ``tests/test_cuda_kernels.py`` runs that in CI: a kernel with an undefined identifier fails there, not on
the first GPU. A kernel built anywhere else would escape the check, so a test refuses any ``RawKernel``,
``RawModule``, ``ElementwiseKernel`` or ``ReductionKernel`` created outside this module.

Each kernel is a ``register(RawSource(...))`` or ``register(ElementwiseSource(...))`` below.

CuPy is imported only when a kernel is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass


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
def kernel(name: str):
    """The CuPy object of registered kernel ``name``: ``cupy.RawModule`` (call ``.get_function(k)``) or
    ``cupy.ElementwiseKernel``. CuPy compiles it for the current GPU when it is first used."""
    import cupy

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


__all__ = ["KERNELS", "ElementwiseSource", "RawSource", "kernel", "register"]
