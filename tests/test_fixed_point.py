"""FixedPointRecurrent (Almeida-Pineda recurrent backpropagation) on every backend.

The oracle for the gradients is backpropagation through time over the explicitly unrolled iterations,
written in plain NumPy below (and itself checked against PyTorch autograd).
"""

from __future__ import annotations

import inspect
import re
import tracemalloc
import warnings

import numpy as np
import pytest

import backprop as bp
from backends import dtype_name
from backprop.errors import ConfigError, DeviceMismatchError, DTypeError, ShapeError
from backprop.layers.fixed_point import FixedPointRecurrent

from conftest import UPDATES_IN_PLACE, assert_on_backend, ones_like, weights

ACTIVATIONS = {
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "sigmoid": (lambda a: 1.0 / (1.0 + np.exp(-a)), lambda a: np.exp(-a) / (1.0 + np.exp(-a)) ** 2),
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(a.dtype)),
}


def host_params(layer):
    return {k: layer.backend.to_host(v).astype(np.float64) for k, v in weights(layer).items()}


def unrolled_bptt(params, x, grad_h, *, steps, activation="tanh", damping=1.0):
    """h_k = (1 − α) h_{k−1} + α f(h_{k−1} W + x U + b) from h_0 = 0 for ``steps`` steps, then BPTT:
    returns (h_steps, {name: dL/dname}, dL/dx) for L = Σ grad_h ⊙ h_steps, keeping every iterate."""
    f, df = ACTIVATIONS[activation]
    w, u, b = params["weight_hh"], params["weight_ih"], params["bias"]
    hs, pre = [np.zeros((x.shape[0], w.shape[0]))], []
    for _ in range(steps):
        pre.append(hs[-1] @ w + x @ u + b)
        hs.append((1 - damping) * hs[-1] + damping * f(pre[-1]))
    grads = {name: np.zeros_like(p) for name, p in params.items()}
    grad_x, g = np.zeros_like(x), grad_h
    for k in range(steps, 0, -1):
        da = damping * g * df(pre[k - 1])
        grads["weight_hh"] += hs[k - 1].T @ da
        grads["weight_ih"] += x.T @ da
        grads["bias"] += da.sum(axis=0)
        grad_x += da @ u.T
        g = (1 - damping) * g + da @ w.T
    return hs[-1], grads, grad_x


def _data(backend, shape, dtype="float32", seed=0):
    host = np.random.default_rng(seed).normal(size=shape)
    return host, backend.from_host(host, dtype=getattr(backend.xp, dtype))


def _oscillating(layer, gain=3.0):
    """W = −gain·I: near h = 0 the map h ↦ tanh(−gain·h + c) has slope ≈ −gain, so the fixed point repels and
    the undamped iteration ends in a period-2 oscillation that never converges."""
    n = layer.hidden_size
    layer.params["weight_hh"].value = layer.backend.from_host(-gain * np.eye(n), dtype=layer.dtype)
    return layer


def _float64(backend):
    return "float64" if backend.supports_float64 else "float32"


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_forward_reaches_the_fixed_point(backend, activation):
    layer = FixedPointRecurrent(5, 6, activation=activation, rng=0, backend=backend)
    host_x, x = _data(backend, (4, 5))
    h = layer(x)
    assert_on_backend(h, backend, shape=(4, 6))
    assert layer.last_forward_converged is True
    assert 1 <= layer.last_forward_iterations <= 200 and layer.last_forward_iterations % layer.check_every == 0
    assert layer.last_forward_change < layer.tolerance
    p, host_h = host_params(layer), backend.to_host(h).astype(np.float64)
    f = ACTIVATIONS[activation][0]
    residual = np.abs(f(host_h @ p["weight_hh"] + host_x @ p["weight_ih"] + p["bias"]) - host_h).max()
    assert residual < 2 * layer.tolerance  # float32 rounding on top of the tolerance
    reference, _, _ = unrolled_bptt(p, host_x.astype(np.float32).astype(np.float64), np.zeros((4, 6)), steps=100,
                                    activation=activation)
    np.testing.assert_allclose(host_h, reference, atol=5e-5)


@pytest.mark.parametrize("case", [{"activation": "tanh"}, {"activation": "sigmoid", "recurrent_norm": 3.0},
                                  {"activation": "tanh", "damping": 0.6}])
def test_gradients_match_bptt_through_the_unrolled_iterations(backend, case):
    dtype = _float64(backend)
    options = {"recurrent_norm": 0.9, **case}
    # ||W|| = 0.9 makes the implicit gradient differ a lot from a truncated one: v = Σ (Jᵀ)ᵏ g needs many terms.
    layer = FixedPointRecurrent(4, 5, tolerance=1e-12 if dtype == "float64" else 1e-6, rng=1, backend=backend,
                                dtype=dtype, **options)
    host_x, x = _data(backend, (3, 4), dtype)
    host_g, g = _data(backend, (3, 5), dtype, seed=1)
    h, backprop = layer.begin_update(x)
    dx = backprop(g)
    assert layer.last_forward_converged and layer.last_backward_converged
    assert layer.last_backward_iterations > 10  # the adjoint really iterated
    h_ref, grads_ref, dx_ref = unrolled_bptt(host_params(layer), backend.to_host(x).astype(np.float64), host_g,
                                             steps=600, activation=case["activation"],
                                             damping=options.get("damping", 1.0))
    rtol, atol = (1e-8, 1e-10) if dtype == "float64" else (2e-4, 2e-5)
    np.testing.assert_allclose(backend.to_host(h), h_ref, rtol=rtol, atol=atol)
    for name, expected in grads_ref.items():
        np.testing.assert_allclose(backend.to_host(layer.params[name].grad), expected, rtol=rtol, atol=atol,
                                   err_msg=name)
    np.testing.assert_allclose(backend.to_host(dx), dx_ref, rtol=rtol, atol=atol)
    # a truncated (one-step) gradient is far off: the comparison above has teeth
    _, one_step, _ = unrolled_bptt(host_params(layer), host_x, host_g, steps=1, activation=case["activation"])
    assert not np.allclose(one_step["weight_ih"], grads_ref["weight_ih"], rtol=1e-2)


def test_float32_gradients_at_the_default_tolerance(backend):
    layer = FixedPointRecurrent(6, 8, recurrent_norm=0.9, rng=2, backend=backend)  # tolerance 1e-5
    host_x, x = _data(backend, (5, 6))
    host_g, g = _data(backend, (5, 8), seed=3)
    _, backprop = layer.begin_update(x)
    dx = backprop(g)
    _, grads_ref, dx_ref = unrolled_bptt(host_params(layer), backend.to_host(x).astype(np.float64), host_g,
                                         steps=400)
    # errors of order tolerance / (1 − contraction) relative to the gradients' scale
    for name, expected in {**grads_ref, "input": dx_ref}.items():
        actual = backend.to_host(dx if name == "input" else layer.params[name].grad)
        assert np.abs(actual - expected).max() < 2e-3 * np.abs(expected).max(), name


def test_bptt_oracle_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    layer = FixedPointRecurrent(3, 4, recurrent_norm=0.8, rng=5, backend="numpy", dtype="float64")
    p = host_params(layer)
    rng = np.random.default_rng(7)
    x, g = rng.normal(size=(2, 3)), rng.normal(size=(2, 4))
    for damping in (1.0, 0.5):
        _, grads, grad_x = unrolled_bptt(p, x, g, steps=30, activation="sigmoid", damping=damping)
        t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
        tx = torch.tensor(x, requires_grad=True)
        h = torch.zeros(2, 4, dtype=torch.float64)
        for _ in range(30):
            h = (1 - damping) * h + damping * torch.sigmoid(h @ t["weight_hh"] + tx @ t["weight_ih"]
                                                            + t["bias"])
        (h * torch.tensor(g)).sum().backward()
        for name in p:
            np.testing.assert_allclose(grads[name], t[name].grad.numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(grad_x, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_gradcheck(backend):
    layer = FixedPointRecurrent(3, 4, tolerance=1e-12, recurrent_norm=0.7, rng=3, backend=backend)
    _, x = _data(backend, (2, 3))
    result = bp.gradcheck(layer, x)  # float64 where the backend has it (gradcheck's tight tolerances)
    assert result.ok and set(result.max_abs_error) == {"input", "weight_ih", "weight_hh", "bias"}
    if backend.supports_float64:
        assert result.dtype == "float64" and max(result.max_abs_error.values()) < 1e-7


def _kept_for_backward(backprop, layer, backend) -> list:
    """(shape, dtype) of the arrays the backward closure of one call keeps, the layer's weights left out."""
    weights_of_layer = {id(param.value) for param in layer.parameters()}
    cells = [cell.cell_contents for cell in inspect.unwrap(backprop).__closure__]
    return sorted((tuple(a.shape), dtype_name(a.dtype)) for a in cells
                  if backend.owns(a) and id(a) not in weights_of_layer)


def test_memory_does_not_grow_with_iterations(backend):
    """A call keeps x, h* and f'(a*) for its backward pass whether it ran 20 or 2000 iterations (a non-contracting
    W runs all), and the layer itself keeps no array of it."""
    kept, peaks = {}, {}
    for limit in (20, 2000):
        layer = _oscillating(FixedPointRecurrent(5, 6, max_iterations=limit, check_every=10, rng=0, backend=backend))
        _, x = _data(backend, (4, 5), seed=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            layer(x)  # warm up
            tracemalloc.start()
            layer(x)
            peaks[limit] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            _, backprop = layer.begin_update(x)
        assert layer.last_forward_iterations == limit and not layer.last_forward_converged
        kept[limit] = _kept_for_backward(backprop, layer, backend)
        assert not [v for v in vars(layer).values() if backend.owns(v)]  # nothing array-valued hangs off the layer
    assert kept[20] == kept[2000]
    assert [shape for shape, _ in kept[20]] == [(4, 5), (4, 6), (4, 6)]  # x, h*, f'(a*)
    if backend.name == "numpy":  # NumPy reports its allocations to tracemalloc
        assert peaks[2000] < peaks[20] + 4096, peaks


@pytest.mark.parametrize("limit, oscillating", [(2, False), (40, True)], ids=["max_iterations=2", "W=-3I"])
def test_non_convergence_is_reported_once_and_does_not_crash(backend, limit, oscillating):
    layer = FixedPointRecurrent(3, 4, max_iterations=limit, rng=0, backend=backend)
    if oscillating:
        _oscillating(layer)
    _, x = _data(backend, (2, 3), seed=5)
    with pytest.warns(RuntimeWarning, match=rf"FixedPointRecurrent\(3, 4.*forward fixed-point iteration did not "
                                            rf"converge: after {limit} iterations the max change is") as record:
        h = layer(x)
    assert record[0].filename == __file__  # the warning points at the caller, not into the library
    assert layer.last_forward_converged is False and layer.last_forward_iterations == limit
    assert layer.last_forward_change >= layer.tolerance
    assert_on_backend(h, backend, shape=(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer: the second failure is silent
        _, backprop = layer.begin_update(x)
    assert layer.stats["forward_failures"] == 2 and layer.stats["forward_calls"] == 2
    if limit == 2:  # the adjoint gets two iterations too
        with pytest.warns(RuntimeWarning, match="backward fixed-point iteration did not converge: after 2 "):
            dx = backprop(ones_like(backend, h))
        assert layer.last_backward_converged is False
    else:  # on the saturated 2-cycle the adjoint map contracts: a gradient comes back, just not a meaningful one
        dx = backprop(ones_like(backend, h))
    assert_on_backend(dx, backend, shape=(2, 3))
    assert np.isfinite(backend.to_host(dx)).all()


def test_damping_makes_an_oscillating_iteration_converge(backend):
    layer = _oscillating(FixedPointRecurrent(3, 4, damping=0.3, rng=0, backend=backend))
    host_x, x = _data(backend, (2, 3), seed=5)
    h, backprop = layer.begin_update(x)
    assert layer.last_forward_converged and layer.last_forward_rate < 0.5
    p, host_h = host_params(layer), backend.to_host(h).astype(np.float64)
    residual = np.tanh(host_h @ p["weight_hh"] + host_x @ p["weight_ih"] + p["bias"]) - host_h
    assert np.abs(residual).max() < 1e-4  # |Δh| = α·|residual| < tolerance
    backprop(ones_like(backend, h))
    assert layer.last_backward_converged


def test_max_recurrent_norm_projects_w_in_training(backend):
    layer = FixedPointRecurrent(3, 6, max_recurrent_norm=0.8, rng=0, backend=backend)
    _, x = _data(backend, (2, 3))
    small = backend.to_host(layer.params["weight_hh"].value)  # ||W|| = 0.5: left alone
    layer(x, training=True)
    np.testing.assert_array_equal(backend.to_host(layer.params["weight_hh"].value), small)
    big = np.random.default_rng(0).normal(size=(6, 6)) * 2.0
    layer.params["weight_hh"].value = backend.from_host(big, dtype=layer.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ||W|| = 2·(random 6x6): this W need not contract
        layer(x)  # evaluation: no projection
    np.testing.assert_array_equal(backend.to_host(layer.params["weight_hh"].value), big.astype(np.float32))
    weight = layer.params["weight_hh"].value
    layer(x, training=True)
    if backend.library in UPDATES_IN_PLACE:
        assert layer.params["weight_hh"].value is weight  # rescaled in place: the fast path
    assert_on_backend(layer.params["weight_hh"].value, backend, shape=(6, 6))
    projected = backend.to_host(layer.params["weight_hh"].value).astype(np.float64)
    assert abs(np.linalg.norm(projected, 2) - 0.8) < 1e-3
    np.testing.assert_allclose(projected / np.linalg.norm(projected, 2), big / np.linalg.norm(big, 2), rtol=1e-4,
                               atol=1e-6)  # the direction is kept
    assert layer.last_forward_converged and layer.contraction_bound() < 0.801


def test_outputs_gradients_and_float64_live_on_the_backend(backend):
    for dtype in ("float32", "float64") if backend.supports_float64 else ("float32",):
        layer = FixedPointRecurrent(5, 3, rng=0, backend=backend, dtype=dtype)
        for name, param in weights(layer).items():
            assert_on_backend(param, backend, dtype, shape={"weight_ih": (5, 3), "weight_hh": (3, 3),
                                                            "bias": (3,)}[name])
        _, x = _data(backend, (2, 5), dtype)
        h, backprop = layer.begin_update(x)
        assert_on_backend(h, backend, dtype, shape=(2, 3))
        dx = backprop(ones_like(backend, h))
        assert_on_backend(dx, backend, dtype, shape=(2, 5))
        for name, grad in layer.named_gradients().items():
            assert_on_backend(grad, backend, dtype, shape=layer.params[name].value.shape)
        assert [d for _, d in _kept_for_backward(backprop, layer, backend)] == [dtype] * 3


def test_initial_weights_are_the_same_on_every_backend_and_contracting(backend):
    layer = FixedPointRecurrent(8, 16, rng=11, backend=backend)
    reference = FixedPointRecurrent(8, 16, rng=11, backend="numpy")
    for name, weight in weights(reference).items():
        np.testing.assert_array_equal(backend.to_host(layer.params[name].value), weight)
    w = backend.to_host(layer.params["weight_hh"].value).astype(np.float64)
    assert abs(np.linalg.norm(w, 2) - 0.5) < 1e-4
    assert abs(layer.spectral_norm() - 0.5) < 1e-3
    assert abs(layer.contraction_bound() - 0.5) < 1e-3
    sigmoid = FixedPointRecurrent(8, 16, activation="sigmoid", recurrent_norm=2.0, rng=11, backend=backend)
    assert abs(sigmoid.contraction_bound() - 0.5) < 1e-3  # Lip(σ) = 1/4


def test_bad_inputs_give_one_line_errors(backend):
    layer = FixedPointRecurrent(3, 4, rng=0, backend=backend)
    for shape in [(3,), (2, 5), (2, 2, 3)]:
        _, x = _data(backend, shape)
        expected = re.escape(f"expected input of shape (batch, 3), got {tuple(shape)}")
        with pytest.raises(ShapeError, match=rf"^FixedPointRecurrent\(3, 4.*{expected}$") as info:
            layer(x)
        assert "\n" not in str(info.value)
    if backend.supports_float64:
        _, x64 = _data(backend, (2, 3), "float64")
        with pytest.raises(DTypeError, match="FixedPointRecurrent.*expected float32 input, got float64"):
            layer(x64)
    if backend.name != "numpy":
        with pytest.raises(DeviceMismatchError, match="FixedPointRecurrent"):
            layer(np.ones((2, 3), dtype=np.float32))
    _, x = _data(backend, (2, 3))
    _, backprop = layer.begin_update(x)
    with pytest.raises(ShapeError, match=r"FixedPointRecurrent.*expected grad_output of shape \(2, 4\), got \(2, 5\)"):
        backprop(backend.from_host(np.ones((2, 5), np.float32)))


@pytest.mark.parametrize("kwargs, message", [
    ({"tolerance": 0}, "tolerance must be a positive finite number, got 0"),
    ({"tolerance": -1e-3}, "tolerance must be a positive finite number"),
    ({"tolerance": float("nan")}, "tolerance must be a positive finite number"),
    ({"max_iterations": 0}, "max_iterations must be a positive integer, got 0"),
    ({"max_iterations": 2.5}, "max_iterations must be a positive integer"),
    ({"backward_tolerance": 0.0}, "backward_tolerance must be a positive finite number or None"),
    ({"check_every": 0}, "check_every must be a positive integer"),
    ({"damping": 0}, r"damping must be a finite number in \(0, 1\], got 0"),
    ({"damping": 1.5}, r"damping must be a finite number in \(0, 1\]"),
    ({"recurrent_norm": -1}, "recurrent_norm must be a finite number >= 0"),
    ({"max_recurrent_norm": 0}, "max_recurrent_norm must be a positive finite number or None, got 0"),
    ({"activation": "softmax"}, "activation must be one of tanh, sigmoid, relu, got 'softmax'"),
    ({"init": "nope"}, "unknown init 'nope'"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
    ({"input_size": True}, "input_size must be a positive integer, got True"),
])
def test_bad_hyperparameters_give_one_line_errors(kwargs, message):
    arguments = {"input_size": 3, "hidden_size": 4, **kwargs}
    with pytest.raises(ConfigError, match=f"^FixedPointRecurrent: {message}") as info:
        FixedPointRecurrent(arguments.pop("input_size"), arguments.pop("hidden_size"), backend="numpy", **arguments)
    assert "\n" not in str(info.value)


def test_config_rebuilds_the_layer_and_copies_are_independent(tmp_path):
    layer = FixedPointRecurrent(3, 4, activation="sigmoid", tolerance=1e-6, max_iterations=50, damping=0.8,
                                check_every=2, recurrent_norm=0.3, max_recurrent_norm=2.0, init="he_normal", rng=0,
                                backend="numpy")
    config = layer.config()
    assert FixedPointRecurrent(**config, backend="numpy").config() == config
    assert "activation='sigmoid'" in repr(layer)
    x = np.ones((2, 3), dtype=np.float32)
    copy = layer.astype("float64")
    copy(x.astype(np.float64))
    assert copy.stats["forward_calls"] == 1 and layer.stats["forward_calls"] == 0
    # saved models rebuild once the class is registered (backprop.layers.LAYER_TYPES)
    from backprop.layers import LAYER_TYPES, register_layer

    registered = "FixedPointRecurrent" in LAYER_TYPES
    register_layer(FixedPointRecurrent)
    try:
        model = bp.Sequential([layer, bp.Dense(4, 2, rng=1, backend="numpy")])
        bp.save_model(tmp_path / "model.safetensors", model)
        loaded = bp.load_model(tmp_path / "model.safetensors", backend="numpy")
        assert loaded[0].config() == config
        np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    finally:
        if not registered:
            LAYER_TYPES.pop("FixedPointRecurrent", None)


def test_trains_in_a_sequential_model_with_fit(backend):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = bp.Sequential([FixedPointRecurrent(4, 6, rng=0, backend=backend), bp.Dense(6, 2, rng=1, backend=backend)])
    history = bp.fit(model, x, y, epochs=3, batch_size=8, lr=0.05, progress=False, log=None)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert model[0].stats["backward_calls"] == 9 and model[0].stats["forward_failures"] == 0


def test_example_runs(capsys):
    from backprop.examples.fixed_point import main

    assert main(["--epochs", "1", "--hidden", "8", "--backend", "numpy", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "FixedPointRecurrent(64, 8" in out
    assert "average iterations per batch: forward" in out and "(0 passes did not converge)" in out
    accuracy = float(out.split("accuracy ")[-1].split("%")[0])
    assert 0 <= accuracy <= 100
