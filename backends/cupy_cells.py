"""The LSTM and GRU steps on CuPy: ``CupyBackend``'s fused recurrent cells. UNTESTED on a GPU (none here).

Each step is one cuBLAS matrix product and one elementwise kernel (``backends/cuda_kernels.py``: the gates'
nonlinearities, the state update and their chain rule for every hidden unit in one pass; the forward kernel
also adds the recurrent product in), where the portable cells launch about fifteen kernels; the GRU's backward
adds one more launch for its direct path dh ⊙ z. Absent arrays (the zero state at the first step, no cell
gradient from a later step) are passed as a flag and a stand-in array the kernel does not read. The kernels'
CUDA source compiles with NVRTC in CI (``tests/test_cuda_kernels.py``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from . import cuda_kernels
from .array_types import Array

#: What the LSTM's forward step keeps for its backward step: the gates, the previous cell state, tanh(c).
LstmCache = tuple[Array, Array | None, Array]
#: What the GRU's forward step keeps: the previous state (None at the first step), the gates, and hn (the n block
#: of h W_hh + b_hn, or b_hn alone at the first step).
GruCache = tuple[Array | None, Array, Array]


def _kernel(source: cuda_kernels.RawSource | cuda_kernels.ElementwiseSource) -> Any:
    return cuda_kernels.kernel(source.name)


def _absent(cupy: ModuleType, like: Array) -> Array:
    """A stand-in for an absent state the kernel is told not to read: a 0-d array (it broadcasts to any shape;
    not an output array, which CuPy would copy first)."""
    return cupy.zeros((), dtype=like.dtype)


def _block(cupy: ModuleType, out: Array | None, like: Array) -> Array:
    """``out`` when it can take a result shaped like ``like``, else a new array."""
    if out is not None and out.shape == like.shape and out.dtype == like.dtype and out.flags.c_contiguous:
        return out
    return cupy.empty(like.shape, dtype=like.dtype)


def lstm_cell_forward(cupy: ModuleType, a: Array, h_prev: Array | None, c_prev: Array | None, weight_hh: Array
                      ) -> tuple[Array, Array, LstmCache]:
    hidden = weight_hh.shape[0]
    gates = a if a.flags.c_contiguous else cupy.ascontiguousarray(a)
    batch = gates.shape[0]
    c, tanh_c, h = (cupy.empty((batch, hidden), dtype=gates.dtype) for _ in range(3))
    if h_prev is None:  # the zero state: no recurrent product (c_prev, hh: not read)
        absent = _absent(cupy, gates)
        _kernel(cuda_kernels.LSTM_FORWARD)(absent, absent, hidden, 0, gates, c, tanh_c, h)
    else:
        _kernel(cuda_kernels.LSTM_FORWARD)(c_prev, h_prev @ weight_hh, hidden, 1, gates, c, tanh_c, h)
    return h, c, (gates, c_prev, tanh_c)


def lstm_cell_backward(cupy: ModuleType, dh: Array, dc: Array | None, cache: LstmCache, weight_hh: Array,
                       pass_back: bool, out: Array | None = None, weight_hh_t: Array | None = None
                       ) -> tuple[Array, Array | None, Array | None]:
    gates, c_prev, tanh_c = cache
    hidden = weight_hh.shape[0]
    da = _block(cupy, out, gates)
    dc_prev = cupy.empty(tanh_c.shape, dtype=gates.dtype)
    has_dc, has_prev = dc is not None, c_prev is not None
    _kernel(cuda_kernels.LSTM_BACKWARD)(dh, dc if has_dc else dh, c_prev if has_prev else dh, tanh_c, gates, hidden,
                                        int(has_dc), int(has_prev), da, dc_prev)
    if not pass_back:
        return da, None, None
    return da, da @ (weight_hh.T if weight_hh_t is None else weight_hh_t), dc_prev


def gru_cell_forward(cupy: ModuleType, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array
                     ) -> tuple[Array, GruCache]:
    hidden = weight_hh.shape[0]
    gates = a if a.flags.c_contiguous else cupy.ascontiguousarray(a)
    h = cupy.empty((gates.shape[0], hidden), dtype=gates.dtype)
    if h_prev is None:
        absent = _absent(cupy, gates)
        _kernel(cuda_kernels.GRU_FORWARD)(absent, bias_hn, hidden, 0, gates, cupy.empty((1,), gates.dtype), h)
        return h, (None, gates, bias_hn)
    hh = h_prev @ weight_hh  # its n block becomes h W_hn + b_hn, which the backward reads
    _kernel(cuda_kernels.GRU_FORWARD)(h_prev, bias_hn, hidden, 1, gates, hh, h)
    return h, (h_prev, gates, hh)


def gru_cell_backward(cupy: ModuleType, dh: Array, cache: GruCache, weight_hh: Array, pass_back: bool,
                      out: tuple[Array | None, Array | None] | None = None, weight_hh_t: Array | None = None
                      ) -> tuple[Array, Array, Array | None]:
    h_prev, gates, hn = cache
    hidden = weight_hh.shape[0]
    d_in, d_hh = out if out is not None else (None, None)
    d_in, d_hh = _block(cupy, d_in, gates), _block(cupy, d_hh, gates)
    dh_direct = cupy.empty((gates.shape[0], hidden), dtype=gates.dtype)
    if h_prev is None:  # hn is bias_hn (hidden,)
        hn_row, hn_offset = 0, 0
    else:  # hn is the n block of h W_hh + [0, 0, b_hn] (batch, 3·hidden)
        hn_row, hn_offset = 3 * hidden, 2 * hidden
    _kernel(cuda_kernels.GRU_BACKWARD)(dh, dh if h_prev is None else h_prev, gates, hn, hidden, hn_row, hn_offset,
                                       int(h_prev is not None), d_in, d_hh, dh_direct)
    if not pass_back:
        return d_in, d_hh, None
    dh_prev = d_hh @ (weight_hh.T if weight_hh_t is None else weight_hh_t)
    dh_prev += dh_direct
    return d_in, d_hh, dh_prev
