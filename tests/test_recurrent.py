"""RNN, LSTM and GRU: forward and BPTT against PyTorch and against an explicitly unrolled network, gradcheck,
truncated BPTT against detached chunks, the gradient-through-time diagnostic, errors, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigError, DTypeError, ShapeError
from backprop.layers.recurrent import GRU, LSTM, RNN
from backprop.on_device import on_device
from backprop.parameters import Parameter

from conftest import assert_on_backend, ones_like, weights

KINDS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
B, T, F, H = 2, 4, 3, 3  # batch, time, features, hidden: tiny, so array_api_strict stays quick


def _x(backend, shape=(B, T, F), seed=0):
    host = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    return host, backend.from_host(host)


def _layer(kind, backend, **options):
    return KINDS[kind](F, H, rng=3, backend=backend, **options)


# -- PyTorch as the oracle ------------------------------------------------------------------------------------

def _torch_module(kind, bidirectional=False, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    return cls(F, H, batch_first=True, bidirectional=bidirectional)


def _copy_from_torch(layer, module, suffix="", torch_suffix="_l0"):
    """PyTorch's weights into ours: transposed, and the two biases folded into one (but the GRU's b_hn)."""
    def get(name):
        return getattr(module, name + torch_suffix).detach().numpy().astype(np.float32)

    layer.params["weight_ih" + suffix].value = layer.backend.from_host(get("weight_ih").T.copy())
    layer.params["weight_hh" + suffix].value = layer.backend.from_host(get("weight_hh").T.copy())
    b_ih, b_hh = get("bias_ih"), get("bias_hh")
    if isinstance(layer, GRU):
        bias = b_ih.copy()
        bias[:2 * H] += b_hh[:2 * H]
        layer.params["bias" + suffix].value = layer.backend.from_host(bias)
        layer.params["bias_hn" + suffix].value = layer.backend.from_host(b_hh[2 * H:].copy())
    else:
        layer.params["bias" + suffix].value = layer.backend.from_host(b_ih + b_hh)


def _torch_grads(layer, module, suffix="", torch_suffix="_l0"):
    """PyTorch's parameter gradients under our names and layout."""
    def grad(name):
        return getattr(module, name + torch_suffix).grad.numpy()

    out = {"weight_ih" + suffix: grad("weight_ih").T, "weight_hh" + suffix: grad("weight_hh").T,
           "bias" + suffix: grad("bias_ih")}  # d/db_ih = d/db_hh = d/d(our folded bias)
    if isinstance(layer, GRU):
        out["bias_hn" + suffix] = grad("bias_hh")[2 * H:]
    return out


def _torch_forward(module, host_x, return_sequences):
    torch = pytest.importorskip("torch")
    x = torch.tensor(host_x, requires_grad=True)
    out, state = module(x)
    if not return_sequences:
        h_n = state[0] if isinstance(state, tuple) else state  # (directions, batch, hidden)
        out = torch.cat(list(h_n), dim=-1)
    return x, out


CASES = [(kind, bidi, seq) for kind in KINDS for bidi in (False, True) for seq in (True, False)]
CASE_IDS = [f"{k}-{'bi' if b else 'uni'}-{'seq' if s else 'last'}" for k, b, s in CASES]


@pytest.mark.parametrize(("kind", "bidirectional", "return_sequences"), CASES, ids=CASE_IDS)
def test_forward_and_bptt_match_torch(backend, kind, bidirectional, return_sequences):
    torch = pytest.importorskip("torch")
    module = _torch_module(kind, bidirectional)
    layer = _layer(kind, backend, bidirectional=bidirectional, return_sequences=return_sequences)
    for suffix in layer.suffixes:
        _copy_from_torch(layer, module, suffix, "_l0" + suffix)
    host_x, x = _x(backend)
    y, backprop = layer.begin_update(x)
    tx, tout = _torch_forward(module, host_x, return_sequences)
    out_features = H * (2 if bidirectional else 1)
    assert_on_backend(y, backend, shape=(B, T, out_features) if return_sequences else (B, out_features))
    np.testing.assert_allclose(backend.to_host(y), tout.detach().numpy(), rtol=1e-5, atol=1e-6)

    v = np.random.default_rng(1).normal(size=tuple(y.shape)).astype(np.float32)
    dx = backprop(backend.from_host(v))
    (tout * torch.tensor(v)).sum().backward()
    assert_on_backend(dx, backend, shape=(B, T, F))
    np.testing.assert_allclose(backend.to_host(dx), tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    expected = {}
    for suffix in layer.suffixes:
        expected.update(_torch_grads(layer, module, suffix, "_l0" + suffix))
    assert set(layer.named_gradients()) == set(expected) == set(layer.params)
    for name, grad in layer.named_gradients().items():
        assert_on_backend(grad, backend, shape=tuple(layer.params[name].value.shape))
        np.testing.assert_allclose(backend.to_host(grad), expected[name], rtol=1e-4, atol=1e-6, err_msg=name)


GRADCHECK_CASES = [(kind, bidi, seq, bptt) for kind in KINDS
                   for bidi, seq, bptt in ((False, True, None), (True, False, None))]


@pytest.mark.parametrize(("kind", "bidirectional", "return_sequences", "bptt"), GRADCHECK_CASES,
                         ids=[f"{c[0]}-{'bi-last' if c[1] else 'uni-seq'}" for c in GRADCHECK_CASES])
def test_gradcheck(backend, kind, bidirectional, return_sequences, bptt):
    layer = _layer(kind, backend, bidirectional=bidirectional, return_sequences=return_sequences)
    _, x = _x(backend)
    result = bp.gradcheck(layer, x, max_elements=None if backend.library != "array_api_strict" else 40)
    assert result.ok and set(result.max_abs_error) == {"input", *layer.params}


# -- BPTT against the explicitly unrolled network ---------------------------------------------------------------

class UnrolledRNN:
    """The Elman RNN unrolled in time from Dense and Tanh layers, one copy per step, with tied weights: every
    copy holds the same ``Parameter`` boxes (with the RNN's values), so their gradients add up in them.

    ``bptt_steps=k`` cuts the gradient passed from step t to step t−1 where t is a multiple of k (h_{t−1} is
    treated as a constant there; W_hh still gets the gradient of its use at step t).
    """

    def __init__(self, rnn: RNN, steps: int, bptt_steps=None):
        backend, n_in, n_h = rnn.backend, rnn.input_size, rnn.hidden_size
        self.rnn, self.bptt_steps, self.backend = rnn, bptt_steps, backend
        self.shared = {name: Parameter(rnn.params[name].value) for name in ("weight_ih", "bias", "weight_hh")}
        self.ih = [bp.Dense(n_in, n_h, backend=backend) for _ in range(steps)]
        self.hh = [bp.Dense(n_h, n_h, bias=False, backend=backend) for _ in range(steps)]
        self.act = [bp.Tanh(backend=backend) for _ in range(steps)]
        for ih, hh in zip(self.ih, self.hh):
            ih.params["weight"], ih.params["bias"] = self.shared["weight_ih"], self.shared["bias"]
            hh.params["weight"] = self.shared["weight_hh"]

    @on_device
    def forward(self, x):
        h, hs, self.backprops = None, [], []
        for t, (ih, hh, act) in enumerate(zip(self.ih, self.hh, self.act)):
            a, ih_backprop = ih.begin_update(x[:, t, :])
            hh_backprop = None
            if h is not None:
                recurrent, hh_backprop = hh.begin_update(h)
                a = a + recurrent
            h, act_backprop = act.begin_update(a)
            hs.append(h)
            self.backprops.append((ih_backprop, hh_backprop, act_backprop))
        return self.rnn.xp.stack(hs, axis=1)

    @on_device
    def backward(self, grad_seq):
        """Returns dL/dx, the parameter gradients (added up in the shared boxes), and dL/dh_t for every t."""
        xp, steps = self.rnn.xp, len(self.ih)
        carry, dxs, dhs = None, [None] * steps, [None] * steps
        for t in range(steps - 1, -1, -1):
            ih_backprop, hh_backprop, act_backprop = self.backprops[t]
            dh = grad_seq[:, t, :] if carry is None else grad_seq[:, t, :] + carry
            dhs[t] = dh
            da = act_backprop(dh)
            dxs[t] = ih_backprop(da)
            carry = hh_backprop(da) if t > 0 else None  # W_hh's gradient counts at every step (step 0 reads h = 0)...
            if self.bptt_steps is not None and t % self.bptt_steps == 0:
                carry = None  # ...but at a chunk start h_{t-1} is a constant: no gradient goes further back
        return xp.stack(dxs, axis=1), {name: param.grad for name, param in self.shared.items()}, dhs


@pytest.mark.parametrize("bptt", [None, 2, 3], ids=["full", "k2", "k3"])
def test_bptt_equals_the_unrolled_dense_tanh_network(backend, bptt):
    steps = 5
    rnn = RNN(F, H, bptt_steps=bptt, rng=4, backend=backend)
    _, x = _x(backend, (B, steps, F))
    unrolled = UnrolledRNN(rnn, steps, bptt_steps=bptt)
    y, backprop = rnn.begin_update(x)
    np.testing.assert_allclose(backend.to_host(y), backend.to_host(unrolled.forward(x)), rtol=1e-6, atol=1e-7)
    v = backend.from_host(np.random.default_rng(2).normal(size=(B, steps, H)).astype(np.float32))
    dx = backprop(v)
    dx_ref, grads_ref, dhs = unrolled.backward(v)
    np.testing.assert_allclose(backend.to_host(dx), backend.to_host(dx_ref), rtol=1e-5, atol=1e-6)
    for name, grad in grads_ref.items():
        np.testing.assert_allclose(backend.to_host(rnn.params[name].grad), backend.to_host(grad), rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    norms = [float(np.linalg.norm(backend.to_host(dh))) for dh in dhs]
    assert_on_backend(rnn.grad_norms_through_time, backend, shape=(steps,))
    np.testing.assert_allclose(backend.to_host(rnn.grad_norms_through_time), norms, rtol=1e-5)


def test_full_bptt_is_not_the_truncated_one(backend):
    """The truncated gradient really differs (else the tests above would prove nothing)."""
    _, x = _x(backend, (B, 6, F))
    full, cut = RNN(F, H, rng=4, backend=backend), RNN(F, H, bptt_steps=2, rng=4, backend=backend)
    for layer in (full, cut):
        y, backprop = layer.begin_update(x)
        backprop(ones_like(backend, y))
    assert not np.allclose(backend.to_host(full.params["weight_hh"].grad),
                           backend.to_host(cut.params["weight_hh"].grad))


# -- truncated BPTT against detached chunks in PyTorch -----------------------------------------------------------

def _torch_chunked(module, x, k):
    """Run ``module`` over chunks of k steps, detaching the state between chunks: the explicit truncated BPTT."""
    state, outs = None, []
    for start in range(0, x.shape[1], k):
        if state is not None:
            state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        out, state = module(x[:, start:start + k], state)
        outs.append(out)
    import torch

    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["seq", "last"])
def test_truncated_bptt_matches_detached_chunks(kind, k, return_sequences):
    torch = pytest.importorskip("torch")
    steps = 7
    module = _torch_module(kind, seed=5)
    layer = KINDS[kind](F, H, bptt_steps=k, return_sequences=return_sequences, backend="numpy")
    _copy_from_torch(layer, module)
    host_x = np.random.default_rng(6).normal(size=(B, steps, F)).astype(np.float32)
    tx = torch.tensor(host_x, requires_grad=True)
    tout = _torch_chunked(module, tx, k)
    if not return_sequences:
        tout = tout[:, -1]
    y, backprop = layer.begin_update(host_x)
    np.testing.assert_allclose(y, tout.detach().numpy(), rtol=1e-5, atol=1e-6)  # the forward is unchanged
    v = np.random.default_rng(7).normal(size=y.shape).astype(np.float32)
    dx = backprop(v)
    (tout * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    for name, expected in _torch_grads(layer, module).items():
        np.testing.assert_allclose(layer.params[name].grad, expected, rtol=1e-4, atol=1e-6, err_msg=name)


def test_truncated_bptt_of_a_bidirectional_layer_chunks_each_direction_in_its_reading_order():
    torch = pytest.importorskip("torch")
    steps, k = 5, 2
    forward_module, reverse_module = _torch_module("lstm", seed=8), _torch_module("lstm", seed=9)
    layer = LSTM(F, H, bidirectional=True, bptt_steps=k, backend="numpy")
    _copy_from_torch(layer, forward_module)
    _copy_from_torch(layer, reverse_module, "_reverse")
    host_x = np.random.default_rng(10).normal(size=(B, steps, F)).astype(np.float32)
    tx = torch.tensor(host_x, requires_grad=True)
    # The reverse direction reads x backwards: chunks (t=4,3), (2,1), (0) in its reading order.
    tout = torch.cat([_torch_chunked(forward_module, tx, k),
                      _torch_chunked(reverse_module, tx.flip(1), k).flip(1)], dim=-1)
    y, backprop = layer.begin_update(host_x)
    np.testing.assert_allclose(y, tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    v = np.random.default_rng(11).normal(size=y.shape).astype(np.float32)
    dx = backprop(v)
    (tout * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    expected = {**_torch_grads(layer, forward_module), **_torch_grads(layer, reverse_module, "_reverse")}
    for name, grad in expected.items():
        np.testing.assert_allclose(layer.params[name].grad, grad, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", list(KINDS))
def test_truncation_longer_than_the_sequence_is_full_bptt(kind):
    host_x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    full, long = _layer(kind, "numpy"), _layer(kind, "numpy", bptt_steps=T)
    for layer in (full, long):
        y, backprop = layer.begin_update(host_x)
        backprop(np.ones_like(y))
    for name in full.params:
        np.testing.assert_array_equal(full.params[name].grad, long.params[name].grad)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_first_recurrent_layer_can_skip_its_input_gradient(backend, kind):
    model = bp.Sequential([_layer(kind, backend, bidirectional=True, return_sequences=False),
                           bp.Dense(2 * H, 2, rng=0, backend=backend)])
    _, x = _x(backend, (B, T, F))
    y, backprop = model.begin_update(x, training=True)
    grad = ones_like(backend, y)
    assert_on_backend(backprop(grad), backend, shape=(B, T, F))
    full = {k: backend.to_host(v) for k, v in model.named_gradients().items()}
    model.zero_grad()
    _, backprop = model.begin_update(x, training=True)
    assert backprop(grad, input_grad=False) is None
    for name, value in model.named_gradients().items():
        np.testing.assert_array_equal(backend.to_host(value), full[name])


# -- the vanishing-gradient diagnostic ---------------------------------------------------------------------------

def test_grad_norms_through_time_show_a_vanishing_gradient(backend):
    steps = 12
    rnn = RNN(2, 8, return_sequences=False, rng=0, backend=backend)
    with backend.activate():  # array code of our own runs on the backend's device
        rnn.params["weight_hh"].value = rnn.params["weight_hh"].value * 0.5  # a contracting recurrence
    assert rnn.grad_norms_through_time is None  # nothing before a backward pass
    _, x = _x(backend, (4, steps, 2))
    y, backprop = rnn.begin_update(x)
    assert rnn.grad_norms_through_time is None  # a forward pass alone: still nothing
    backprop(ones_like(backend, y))
    norms = rnn.grad_norms_through_time
    assert_on_backend(norms, backend, shape=(steps,))
    host = backend.to_host(norms)
    assert np.all(np.diff(host) > 0)  # smaller and smaller going back in time
    assert host[0] < 1e-3 * host[-1]
    rnn(x)  # an inference call leaves the diagnostic of the last backward pass as it was
    np.testing.assert_array_equal(backend.to_host(rnn.grad_norms_through_time), host)
    _, backprop = rnn.begin_update(x)
    backprop(backend.from_host(np.full(tuple(y.shape), 2.0, np.float32)))  # the next backward pass replaces it
    np.testing.assert_allclose(backend.to_host(rnn.grad_norms_through_time), 2 * host, rtol=1e-6)
    assert rnn.astype("float32").grad_norms_through_time is None  # a copy has had no backward pass


def test_grad_norms_through_time_of_a_bidirectional_layer_combine_both_directions():
    layer = GRU(F, H, bidirectional=True, rng=1, backend="numpy")
    host_x = np.random.default_rng(0).normal(size=(B, T, F)).astype(np.float32)
    y, backprop = layer.begin_update(host_x)
    backprop(np.ones_like(y))
    forward_part, reverse_part = layer._dh
    expected = np.sqrt((forward_part ** 2).sum(axis=(0, 2)) + (reverse_part ** 2).sum(axis=(0, 2)))
    np.testing.assert_allclose(layer.grad_norms_through_time, expected, rtol=1e-6)


# -- training integration -----------------------------------------------------------------------------------------

def test_gradient_clipping_applies_to_recurrent_parameters(backend):
    model = bp.Sequential([LSTM(F, H, rng=0, backend=backend), bp.Dense(H, 2, rng=1, backend=backend)])
    _, x = _x(backend)
    y, backprop = model.begin_update(x, training=True)
    backprop(backend.from_host(np.full(tuple(y.shape), 10.0, np.float32)))
    before = {name: backend.to_host(g) for name, g in model.named_gradients().items()}
    assert {"0.weight_ih", "0.weight_hh", "0.bias"} <= set(before)
    total = float(backend.to_host(bp.clip_grad_norm(model, 1e-3)))
    assert total > 1e-3
    after = {name: backend.to_host(g) for name, g in model.named_gradients().items()}
    assert np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in after.values())) == pytest.approx(1e-3,
                                                                                                          rel=1e-3)
    for name in before:  # every gradient, the LSTM's included, scaled by the same factor
        np.testing.assert_allclose(after[name], before[name] * (1e-3 / total), rtol=1e-3, atol=1e-12)


def test_trainer_fits_sequence_labels_and_last_state_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6, 2)).astype(np.float32)
    # last-state classification: is the sum of the first feature positive?
    model = bp.Sequential([GRU(2, 8, return_sequences=False, rng=0, backend="numpy"),
                           bp.Dense(8, 2, rng=1, backend="numpy")])
    history = bp.fit(model, x, (x[:, :, 0].sum(axis=1) > 0).astype(np.int64), epochs=15, batch_size=16, lr=0.02,
                     clip_norm=1.0, progress=False, log=None)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]
    assert "0.weight_hh" in history[-1]["grad_norms"]
    # a label at every step: the sign of the running sum
    model = bp.Sequential([LSTM(2, 8, bptt_steps=3, rng=0, backend="numpy"), bp.Dense(8, 2, rng=1, backend="numpy")])
    labels = (np.cumsum(x[:, :, 0], axis=1) > 0).astype(np.int64)
    history = bp.fit(model, x, labels, epochs=15, batch_size=16, lr=0.02, progress=False, log=None)
    assert history[-1]["train_loss"] < 0.6 * history[0]["train_loss"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_step_by_step_generation_matches_the_sequence_forward(backend, kind):
    layer = _layer(kind, backend)
    _, x = _x(backend)
    y = backend.to_host(layer(x))
    state = None
    for t in range(T):
        h, state = layer.step(x[:, t, :], state)
        assert_on_backend(h, backend, shape=(B, H))
        np.testing.assert_allclose(backend.to_host(h), y[:, t, :], rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="bidirectional"):
        _layer(kind, backend, bidirectional=True).step(x[:, 0, :])


# -- parameters, configuration, copies ----------------------------------------------------------------------------

def test_parameter_names_and_shapes():
    assert {k: tuple(v.shape) for k, v in weights(RNN(3, 4, backend="numpy")).items()} == {
        "weight_ih": (3, 4), "weight_hh": (4, 4), "bias": (4,)}
    assert {k: tuple(v.shape) for k, v in weights(LSTM(3, 4, bidirectional=True, backend="numpy")).items()} == {
        "weight_ih": (3, 16), "weight_hh": (4, 16), "bias": (16,),
        "weight_ih_reverse": (3, 16), "weight_hh_reverse": (4, 16), "bias_reverse": (16,)}
    assert {k: tuple(v.shape) for k, v in weights(GRU(3, 4, backend="numpy")).items()} == {
        "weight_ih": (3, 12), "weight_hh": (4, 12), "bias": (12,), "bias_hn": (4,)}
    assert LSTM.gate_order == ("i", "f", "g", "o") and GRU.gate_order == ("r", "z", "n")


def test_initializers():
    layer = LSTM(5, 20, rng=0, backend="numpy")
    bound = 1 / np.sqrt(20)
    for array in weights(layer).values():  # PyTorch's default: U(-1/sqrt(hidden), 1/sqrt(hidden)) everywhere
        assert np.abs(array).max() <= bound and np.abs(array).max() > 0.8 * bound
    glorot = LSTM(5, 20, init="glorot_uniform", rng=0, backend="numpy")
    assert not glorot.params["bias"].value.any()
    assert np.abs(glorot.params["weight_ih"].value).max() <= np.sqrt(6 / 25)  # the fans of one gate's block
    np.testing.assert_array_equal(LSTM(5, 20, rng=0, backend="numpy").params["weight_hh"].value,
                                  layer.params["weight_hh"].value)


@pytest.mark.parametrize("kind", list(KINDS))
def test_config_rebuilds_the_layer(kind):
    layer = KINDS[kind](3, 5, return_sequences=False, bidirectional=True, bptt_steps=4, init="glorot_normal",
                        backend="numpy")
    config = layer.config()
    assert config == {"input_size": 3, "hidden_size": 5, "return_sequences": False, "bidirectional": True,
                      "bptt_steps": 4, "init": "glorot_normal"}
    rebuilt = KINDS[kind](**config, backend="numpy")
    assert repr(rebuilt) == repr(layer) == f"{KINDS[kind].__name__}(3, 5, return_sequences=False, " \
                                           f"bidirectional=True, bptt_steps=4)"
    assert {k: v.shape for k, v in weights(rebuilt).items()} == {k: v.shape for k, v in weights(layer).items()}


def test_to_and_astype_copy_the_layer(backend):
    layer = LSTM(F, H, bidirectional=True, rng=2, backend="numpy")
    host_x, x = _x(backend)
    moved = layer.to(backend)
    y = moved(x)
    assert_on_backend(y, backend, shape=(B, T, 2 * H))
    np.testing.assert_allclose(backend.to_host(y), layer(host_x), rtol=1e-5, atol=1e-6)
    assert moved.grad_norms_through_time is None
    if backend.supports_float64:
        wide = moved.astype("float64")
        with backend.activate():  # array code of our own runs on the backend's device
            x64 = backend.xp.astype(x, backend.xp.float64)
        y64, backprop = wide.begin_update(x64)
        assert_on_backend(y64, backend, dtype_name="float64", shape=(B, T, 2 * H))
        dx = backprop(ones_like(backend, y64))
        assert_on_backend(dx, backend, dtype_name="float64", shape=(B, T, F))


# -- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "got"), [((B, F), r"\(2, 3\)"), ((B, T, F + 1), r"\(2, 4, 4\)"),
                                            ((B, 1, T, F), r"\(2, 1, 4, 3\)"), ((B, 0, F), r"\(2, 0, 3\)")])
def test_bad_input_shapes_give_one_line_errors(backend, shape, got):
    layer = LSTM(F, 4, backend=backend)
    x = backend.from_host(np.zeros(shape, dtype=np.float32))
    with pytest.raises(ShapeError, match=rf"^LSTM\(3, 4\): expected input of shape \(batch, time, 3\).*got {got}$"):
        layer(x)


def test_other_bad_inputs(backend):
    layer = GRU(F, H, return_sequences=False, backend=backend)
    _, x = _x(backend)
    _, backprop = layer.begin_update(x)
    with pytest.raises(ShapeError, match=r"^GRU\(3, 3, return_sequences=False\): expected an output gradient of "
                                         r"shape \(2, 3\), got \(2, 4, 3\)$"):
        backprop(backend.from_host(np.ones((B, T, H), np.float32)))
    if backend.supports_float64:
        with pytest.raises(DTypeError, match=r"^GRU\(.*\): expected float32 input, got float64$"):
            with backend.activate():  # array code of our own runs on the backend's device
                layer(backend.xp.astype(x, backend.xp.float64))
    with pytest.raises(ShapeError, match=r"^GRU\(.*\): expected input of shape \(batch, 3\), got \(2, 4, 3\)$"):
        GRU(F, H, backend=backend).step(x)


@pytest.mark.parametrize(("options", "message"), [
    ({"hidden_size": 0}, "RNN: hidden_size must be a positive integer, got 0"),
    ({"hidden_size": -3}, "RNN: hidden_size must be a positive integer, got -3"),
    ({"hidden_size": 2.5}, "RNN: hidden_size must be a positive integer, got 2.5"),
    ({"hidden_size": True}, "RNN: hidden_size must be a positive integer, got True"),
    ({"input_size": 0}, "RNN: input_size must be a positive integer, got 0"),
    ({"bptt_steps": 0}, r"RNN: bptt_steps must be a positive integer \(or None for full BPTT\), got 0"),
    ({"bptt_steps": -1}, r"RNN: bptt_steps must be a positive integer \(or None for full BPTT\), got -1"),
    ({"bptt_steps": 2.0}, r"RNN: bptt_steps must be a positive integer \(or None for full BPTT\), got 2.0"),
    ({"bidirectional": "yes"}, "RNN: bidirectional must be True or False, got 'yes'"),
    ({"return_sequences": 1}, "RNN: return_sequences must be True or False, got 1"),
    ({"init": "orthogonal"}, "RNN: unknown initializer 'orthogonal'; expected 'uniform' or one of"),
])
def test_bad_hyperparameters_raise_config_error(options, message):
    arguments = {"input_size": 3, "hidden_size": 4, **options}
    with pytest.raises(ConfigError, match=f"^{message}"):
        RNN(arguments.pop("input_size"), arguments.pop("hidden_size"), backend="numpy", **arguments)
    with pytest.raises(ConfigError, match="^LSTM: "):
        LSTM(**{"input_size": 3, "hidden_size": 4, **options}, backend="numpy")
