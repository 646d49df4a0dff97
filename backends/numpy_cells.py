"""The LSTM and GRU steps on NumPy: ``NumpyBackend``'s fused recurrent cells.

The same arithmetic as the portable cells in ``backends/base.py``, in fewer and cheaper NumPy calls: one matrix
product, then in-place ufuncs (``out=``) over whole (batch, gates) blocks rather than a new array for each
intermediate. The gates go into the pre-activation array the caller hands over (its own, by the capability's
contract); the gate gradients go into the ``out`` block the caller gives (one step of its (time, batch, gates)
array). Nothing the caller still reads is written: not ``dh``, ``dc``, the weights, nor a cache.

σ(x) is computed as ½ tanh(x/2) + ½ for every gate at once: the LSTM's pre-activations are scaled by ½ in the
sigmoid blocks and 1 in the g block (``_lstm_constants``), one ``tanh`` runs over all four blocks, and a
multiply-add turns the sigmoid blocks' results into σ. NumPy's float32 ``tanh`` is vectorized; SciPy's
``expit`` measured 5x slower here.
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat.numpy as xp
import numpy as np

from . import base


def writable_float(*arrays: Any) -> bool:
    """True when every array is a writeable float32/float64 NumPy array: what the in-place cells need (anything
    else takes the portable cell)."""
    return all(type(a) is np.ndarray and a.dtype in (np.float32, np.float64) and a.flags.writeable
               for a in arrays)


@functools.cache
def _lstm_constants(hidden: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of 4·hidden, read only: ``scale`` (½ in the sigmoid gates' blocks i, f, o; 1 in g's) and ``shift``
    (½ there, 0 in g's), so that gates = tanh(a ⊙ scale) ⊙ scale + shift; and ``g_one`` (1 in g's block, 0
    elsewhere), for the backward's derivative (1 − gate)(gate + g_one): s(1 − s), or 1 − g² for g."""
    def blocks(sigmoid_value, g_value):
        row = np.full(4 * hidden, sigmoid_value, dtype=dtype)
        row[2 * hidden:3 * hidden] = g_value
        row.flags.writeable = False
        return row

    return blocks(0.5, 1.0), blocks(0.5, 0.0), blocks(0.0, 1.0)


def _add_product(a, h, weight):
    """``a += h @ weight`` (a: our own writeable array)."""
    a += h @ weight


def lstm_cell_forward(a: np.ndarray, h_prev: np.ndarray | None, c_prev: np.ndarray | None,
                      weight_hh: np.ndarray) -> tuple[Any, Any, tuple]:
    if not writable_float(a):  # a read-only or non-float block: the portable cell
        return base.lstm_cell_forward(xp, a, h_prev, c_prev, weight_hh)
    hidden = weight_hh.shape[0]
    scale, shift, _ = _lstm_constants(hidden, a.dtype)
    if h_prev is not None:
        _add_product(a, h_prev, weight_hh)
    gates = a  # from here on, in place: a becomes the gates
    gates *= scale
    np.tanh(gates, out=gates)
    gates *= scale
    gates += shift
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    c = np.multiply(i, g)
    if c_prev is not None:
        c += f * c_prev
    tanh_c = np.tanh(c)
    h = np.multiply(o, tanh_c)
    return h, c, (gates, c_prev, tanh_c)


def lstm_cell_backward(dh: np.ndarray, dc: np.ndarray | None, cache: tuple, weight_hh: np.ndarray, pass_back: bool,
                       out: np.ndarray | None = None,
                       weight_hh_t: np.ndarray | None = None) -> tuple[Any, Any, Any]:
    gates, c_prev, tanh_c = cache
    hidden = weight_hh.shape[0]
    if out is None or not writable_float(out) or out.shape != gates.shape or out.dtype != gates.dtype:
        out = np.empty_like(gates)
    _, _, g_one = _lstm_constants(hidden, gates.dtype)
    i, f, g, o = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc_t = np.multiply(tanh_c, tanh_c)  # dc_t = dc + dh ⊙ o ⊙ (1 − tanh² c)
    np.subtract(1.0, dc_t, out=dc_t)
    dc_t *= o
    dc_t *= dh
    if dc is not None:
        dc_t += dc
    da = out
    np.multiply(dc_t, g, out=da[:, :hidden])
    if c_prev is None:
        da[:, hidden:2 * hidden] = 0.0
    else:
        np.multiply(dc_t, c_prev, out=da[:, hidden:2 * hidden])
    np.multiply(dc_t, i, out=da[:, 2 * hidden:3 * hidden])
    np.multiply(dh, tanh_c, out=da[:, 3 * hidden:])
    derivative = np.subtract(1.0, gates)  # (1 − gate)(gate + g_one): s(1 − s) for i, f, o; 1 − g² for g
    derivative *= np.add(gates, g_one)
    da *= derivative
    if not pass_back:
        return da, None, None
    return da, da @ (weight_hh.T if weight_hh_t is None else weight_hh_t), np.multiply(dc_t, f)


def gru_cell_forward(a: np.ndarray, h_prev: np.ndarray | None, weight_hh: np.ndarray,
                     bias_hn: np.ndarray) -> tuple[Any, tuple]:
    if not writable_float(a):
        return base.gru_cell_forward(xp, a, h_prev, weight_hh, bias_hn)
    hidden = weight_hh.shape[0]
    two = 2 * hidden
    rz, n = a[:, :two], a[:, two:]  # in place from here on: a becomes [r, z, n]
    if h_prev is None:
        hn = bias_hn
    else:
        hh = h_prev @ weight_hh
        rz += hh[:, :two]
        hn = hh[:, two:]
        hn += bias_hn
    rz *= 0.5  # σ(x) = ½ tanh(x/2) + ½
    np.tanh(rz, out=rz)
    rz *= 0.5
    rz += 0.5
    r, z = rz[:, :hidden], rz[:, hidden:]
    n += r * hn
    np.tanh(n, out=n)
    if h_prev is None:
        h = np.multiply(z, n)
        np.subtract(n, h, out=h)  # (1 − z) n
    else:
        h = np.subtract(h_prev, n)
        h *= z
        h += n  # n + z (h_prev − n)
    return h, (h_prev, a, hn)


def gru_cell_backward(dh: np.ndarray, cache: tuple, weight_hh: np.ndarray, pass_back: bool, out: Any = None,
                      weight_hh_t: np.ndarray | None = None) -> tuple[Any, Any, Any]:
    h_prev, gates, hn = cache
    hidden = weight_hh.shape[0]
    two = 2 * hidden
    d_in, d_hh = out if out is not None else (None, None)
    if d_in is None or not writable_float(d_in) or d_in.shape != gates.shape or d_in.dtype != gates.dtype:
        d_in = np.empty_like(gates)
    if d_hh is None or not writable_float(d_hh) or d_hh.shape != gates.shape or d_hh.dtype != gates.dtype:
        d_hh = np.empty_like(gates)
    rz, n = gates[:, :two], gates[:, two:]
    r, z = rz[:, :hidden], rz[:, hidden:]
    da_n = d_in[:, two:]
    np.multiply(n, n, out=da_n)  # da_n = dh ⊙ (1 − z) ⊙ (1 − n²)
    np.subtract(1.0, da_n, out=da_n)
    da_n *= dh
    one_minus_z = np.subtract(1.0, z)
    da_n *= one_minus_z
    np.multiply(da_n, hn, out=d_in[:, :hidden])  # dr, before σ'
    if h_prev is None:  # dz = dh ⊙ (h_prev − n)
        np.multiply(dh, n, out=d_in[:, hidden:two])
        np.negative(d_in[:, hidden:two], out=d_in[:, hidden:two])
    else:
        np.subtract(h_prev, n, out=d_in[:, hidden:two])
        d_in[:, hidden:two] *= dh
    np.multiply(one_minus_z, rz[:, hidden:], out=one_minus_z)  # z(1 − z), then r(1 − r) for the r block
    d_in[:, hidden:two] *= one_minus_z
    sigma_r = np.subtract(1.0, r)
    sigma_r *= r
    d_in[:, :hidden] *= sigma_r
    d_hh[:, :two] = d_in[:, :two]
    np.multiply(r, da_n, out=d_hh[:, two:])
    if not pass_back:
        return d_in, d_hh, None
    dh_prev = d_hh @ (weight_hh.T if weight_hh_t is None else weight_hh_t)
    dh_prev += dh * z
    return d_in, d_hh, dh_prev

