"""The fused LSTM and GRU cells (``Backend.lstm_cell_*``, ``gru_cell_*``) on every backend, against the portable
cells of ``backends/base.py`` computed in float64 on the host; and how the recurrent layers use them."""

from __future__ import annotations

import array_api_compat.numpy as host_xp
import numpy as np
import pytest

from backends import base, get_backend
from backprop.layers.recurrent import GRU, LSTM

from conftest import assert_on_backend

B, H = 2, 3  # the shapes of tests/test_recurrent.py: jax:cpu compiles nothing new for them
GATES = {"lstm": 4, "gru": 3}


def _host(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape) for shape in shapes]


def _reference(kind, a, state, weight_hh, bias_hn, dh, dc, pass_back):
    """Forward and backward of the portable cell on float64 host arrays: (outputs, gradients)."""
    if kind == "lstm":
        h_prev, c_prev = state
        h, c, cache = base.lstm_cell_forward(host_xp, a.copy(), h_prev, c_prev, weight_hh)
        return (h, c), base.lstm_cell_backward(host_xp, dh, dc, cache, weight_hh.T, pass_back)
    h, cache = base.gru_cell_forward(host_xp, a.copy(), state[0], weight_hh, bias_hn)
    return (h,), base.gru_cell_backward(host_xp, dh, cache, weight_hh.T, pass_back)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(("first", "pass_back"), [(True, False), (False, True)], ids=["first-step", "later-step"])
def test_fused_cells_match_the_portable_cell(backend, kind, first, pass_back):
    width = GATES[kind] * H
    a, h_prev, c_prev, weight_hh, bias_hn, dh, dc = _host(0, (B, width), (B, H), (B, H), (H, width), (H,), (B, H),
                                                          (B, H))
    state = (None, None) if first else (h_prev, c_prev if kind == "lstm" else None)
    dc = None if first or kind == "gru" else dc
    expected_out, expected_grads = _reference(kind, a, state, weight_hh, bias_hn, dh, dc, pass_back)

    def put(array):
        return None if array is None else backend.from_host(array.astype(np.float32))

    weight, d_h, d_c, bias = put(weight_hh), put(dh), put(dc), put(bias_hn)
    h0, c0 = put(state[0]), put(state[1])
    kept = {name: backend.to_host(v) for name, v in
            {"weight_hh": weight, "dh": d_h, "dc": d_c, "h_prev": h0, "c_prev": c0}.items() if v is not None}
    with backend.activate():
        buffers = [backend.xp.zeros((2, B, width), dtype=backend.xp.float32, device=backend.device)
                   for _ in range(2)]
        out = tuple(buffer[1, ...] for buffer in buffers)  # a step's block of (time, batch, gates) arrays
    # a later step also takes W_hhᵀ as the layer hands it over (NumPy: a contiguous copy; else None)
    weight_t = None if first else backend.transposed_for_products(weight)
    if kind == "lstm":
        h, c, cache = backend.lstm_cell_forward(put(a), h0, c0, weight)
        outputs = (h, c)
        grads = backend.lstm_cell_backward(d_h, d_c, cache, weight, pass_back=pass_back, out=out[0],
                                           weight_hh_t=weight_t)
        written = grads[:1]
    else:
        h, cache = backend.gru_cell_forward(put(a), h0, weight, bias)
        outputs = (h,)
        grads = backend.gru_cell_backward(d_h, cache, weight, pass_back=pass_back, out=out, weight_hh_t=weight_t)
        written = grads[:2]
    for got, want in zip(outputs, expected_out):
        assert_on_backend(got, backend, shape=(B, H))
        np.testing.assert_allclose(backend.to_host(got), want, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        if want is None:
            assert got is None
            continue
        assert_on_backend(got, backend, shape=want.shape)
        np.testing.assert_allclose(backend.to_host(got), want, rtol=1e-5, atol=1e-6)
    for k, (got, block) in enumerate(zip(written, out)):
        if backend.cells_write_out:  # written into the caller's block, and returned as it
            assert got is block
            np.testing.assert_array_equal(backend.to_host(buffers[k])[1], backend.to_host(got))
    for name, value in kept.items():  # what the caller still reads is left as it was
        np.testing.assert_array_equal(backend.to_host({"weight_hh": weight, "dh": d_h, "dc": d_c, "h_prev": h0,
                                                       "c_prev": c0}[name]), value, err_msg=name)


def test_numpy_cells_leave_a_read_only_input_alone():
    a, weight_hh = _host(1, (B, 4 * H), (H, 4 * H))
    a, weight_hh = a.astype(np.float32), weight_hh.astype(np.float32)
    frozen = a.copy()
    frozen.flags.writeable = False
    backend = get_backend("numpy")
    h, c, _ = backend.lstm_cell_forward(frozen, None, None, weight_hh)
    expected_h, expected_c, _ = base.lstm_cell_forward(host_xp, a, None, None, weight_hh)
    np.testing.assert_allclose(h, expected_h, rtol=1e-6)
    np.testing.assert_allclose(c, expected_c, rtol=1e-6)
    np.testing.assert_array_equal(frozen, a)


@pytest.mark.parametrize("layer_class", [LSTM, GRU])
def test_the_layers_step_through_the_backends_fused_cells(monkeypatch, layer_class):
    backend = get_backend("numpy")
    kind = layer_class.__name__.lower()
    calls = {"forward": 0, "backward": 0}
    for direction in calls:
        name = f"{kind}_cell_{direction}"
        original = getattr(backend, name)

        def spy(*args, _original=original, _direction=direction, **kwargs):
            calls[_direction] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(backend, name, spy)
    layer = layer_class(3, H, bidirectional=True, rng=0, backend=backend)
    y, backprop = layer.begin_update(np.ones((B, 4, 3), np.float32))
    backprop(np.ones_like(y))
    assert calls == {"forward": 8, "backward": 8}  # each of the 4 steps, in each direction


@pytest.mark.parametrize("layer_class", [LSTM, GRU])
def test_a_recurrent_step_builds_no_array_from_python_values(monkeypatch, layer_class):
    """The gates' constants are not rebuilt from Python lists at every forward pass (on a GPU, a copy from the
    host each time): nothing in a forward and backward pass makes an array from a list or tuple."""
    backend = get_backend("numpy")
    layer = layer_class(3, H, rng=0, backend=backend)
    x = np.ones((B, 4, 3), np.float32)
    original = backend.xp.asarray

    def asarray(obj, *args, **kwargs):
        assert not isinstance(obj, (list, tuple)), "an array built from Python values during a recurrent step"
        return original(obj, *args, **kwargs)

    monkeypatch.setattr(backend.xp, "asarray", asarray)
    y, backprop = layer.begin_update(x)
    backprop(np.ones_like(y))
    assert layer.params["weight_hh"].grad is not None
