"""The LSTM and GRU steps on PyTorch: ``TorchBackend``'s fused recurrent cells.

The arithmetic of the portable cells in ``backends/base.py`` with PyTorch's in-place and fused operations:
``addmm_`` for the recurrent product added to the pre-activations, ``sigmoid_``/``tanh_`` on the gate blocks
in place, ``addcmul_`` for the cell state, and ``out=`` into the caller's gradient block. (PyTorch's own fused
cells, ``torch._thnn_fused_lstm_cell`` and ``_thnn_fused_gru_cell``, run only on CUDA and take PyTorch's weight
layout with two biases; these work on every device.) Nothing the caller still reads is written.
"""

from __future__ import annotations

import functools
from types import ModuleType

from .array_types import Array, Device, DType

#: What the LSTM's forward step keeps for its backward step: the gates, the previous cell state, tanh(c).
LstmCache = tuple[Array, Array | None, Array]
#: What the GRU's forward step keeps: the previous state, the gates, and h W_hn + b_hn (or b_hn alone).
GruCache = tuple[Array | None, Array, Array]


def _usable(out: Array | None, like: Array) -> bool:
    return out is not None and out.shape == like.shape and out.dtype == like.dtype and out.device == like.device


@functools.cache
def _g_one(torch: ModuleType, hidden: int, dtype: DType, device: Device) -> Array:
    """A (4·hidden,) row: 1 in the g gate's block, 0 elsewhere (made once per size, dtype and device)."""
    row = torch.zeros(4 * hidden, dtype=dtype, device=device)
    row[2 * hidden:3 * hidden] = 1.0
    return row


def lstm_cell_forward(torch: ModuleType, a: Array, h_prev: Array | None, c_prev: Array | None,
                      weight_hh: Array) -> tuple[Array, Array, LstmCache]:
    hidden = weight_hh.shape[0]
    if h_prev is not None:
        a.addmm_(h_prev, weight_hh)
    gates = a  # in place from here on: a becomes the gates
    gates[:, :2 * hidden].sigmoid_()
    gates[:, 2 * hidden:3 * hidden].tanh_()
    gates[:, 3 * hidden:].sigmoid_()
    i, f, g, o = gates.split(hidden, dim=1)
    c = torch.mul(i, g)
    if c_prev is not None:
        c.addcmul_(f, c_prev)
    tanh_c = torch.tanh(c)
    return torch.mul(o, tanh_c), c, (gates, c_prev, tanh_c)


def lstm_cell_backward(torch: ModuleType, dh: Array, dc: Array | None, cache: LstmCache, weight_hh: Array,
                       pass_back: bool, out: Array | None = None, weight_hh_t: Array | None = None
                       ) -> tuple[Array, Array | None, Array | None]:
    gates, c_prev, tanh_c = cache
    hidden = weight_hh.shape[0]
    da: Array = out if _usable(out, gates) else torch.empty_like(gates)
    i, f, g, o = gates.split(hidden, dim=1)
    dc_t = torch.mul(tanh_c, tanh_c).neg_().add_(1.0).mul_(o).mul_(dh)  # dh ⊙ o ⊙ (1 − tanh² c)
    if dc is not None:
        dc_t.add_(dc)
    torch.mul(dc_t, g, out=da[:, :hidden])
    if c_prev is None:
        da[:, hidden:2 * hidden].zero_()
    else:
        torch.mul(dc_t, c_prev, out=da[:, hidden:2 * hidden])
    torch.mul(dc_t, i, out=da[:, 2 * hidden:3 * hidden])
    torch.mul(dh, tanh_c, out=da[:, 3 * hidden:])
    # (1 − gate)(gate + g_one): s(1 − s) for i, f, o; 1 − g² for g
    da.mul_(torch.rsub(gates, 1.0).mul_(gates + _g_one(torch, hidden, gates.dtype, gates.device)))
    if not pass_back:
        return da, None, None
    return da, torch.mm(da, weight_hh.t() if weight_hh_t is None else weight_hh_t), torch.mul(dc_t, f)


def gru_cell_forward(torch: ModuleType, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array
                     ) -> tuple[Array, GruCache]:
    hidden = weight_hh.shape[0]
    two = 2 * hidden
    rz, n = a[:, :two], a[:, two:]  # in place from here on: a becomes [r, z, n]
    if h_prev is None:
        hn = bias_hn
    else:
        hh = torch.mm(h_prev, weight_hh)
        rz.add_(hh[:, :two])
        hn = hh[:, two:].add_(bias_hn)
    rz.sigmoid_()
    r, z = rz[:, :hidden], rz[:, hidden:]
    n.addcmul_(r, hn).tanh_()
    if h_prev is None:
        h = torch.mul(z, n).neg_().add_(n)  # (1 − z) n
    else:
        h = torch.sub(h_prev, n).mul_(z).add_(n)  # n + z (h_prev − n)
    return h, (h_prev, a, hn)


def gru_cell_backward(torch: ModuleType, dh: Array, cache: GruCache, weight_hh: Array, pass_back: bool,
                      out: tuple[Array | None, Array | None] | None = None, weight_hh_t: Array | None = None
                      ) -> tuple[Array, Array, Array | None]:
    h_prev, gates, hn = cache
    hidden = weight_hh.shape[0]
    two = 2 * hidden
    given_in, given_hh = out if out is not None else (None, None)
    d_in: Array = given_in if _usable(given_in, gates) else torch.empty_like(gates)
    d_hh: Array = given_hh if _usable(given_hh, gates) else torch.empty_like(gates)
    r, z, n = gates[:, :hidden], gates[:, hidden:two], gates[:, two:]
    one_minus_z = torch.rsub(z, 1.0)
    da_n = torch.mul(n, n, out=d_in[:, two:]).neg_().add_(1.0).mul_(dh).mul_(one_minus_z)  # dh (1 − z)(1 − n²)
    torch.mul(da_n, hn, out=d_in[:, :hidden]).mul_(torch.rsub(r, 1.0).mul_(r))  # da_r = da_n hn r(1 − r)
    if h_prev is None:
        torch.mul(dh, n, out=d_in[:, hidden:two]).neg_()
    else:
        torch.sub(h_prev, n, out=d_in[:, hidden:two]).mul_(dh)
    d_in[:, hidden:two].mul_(one_minus_z.mul_(z))  # da_z = dz z(1 − z)
    d_hh[:, :two].copy_(d_in[:, :two])
    torch.mul(r, da_n, out=d_hh[:, two:])
    if not pass_back:
        return d_in, d_hh, None
    return d_in, d_hh, torch.mm(d_hh, weight_hh.t() if weight_hh_t is None else weight_hh_t).addcmul_(dh, z)
