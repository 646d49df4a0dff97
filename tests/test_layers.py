"""Every layer on every backend: forward against NumPy, backward by gradcheck, dtype/device/namespace."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp

import reference as ref
from conftest import assert_on_backend, ones_like, weights

# name -> (build(backend), input shape, reference(host_input, host_params))
LAYERS = {
    "dense": (lambda b: bp.Dense(5, 3, rng=0, backend=b), (4, 5),
              lambda x, p: ref.dense(x, p["weight"], p["bias"])),
    "dense_no_bias": (lambda b: bp.Dense(5, 3, bias=False, init="he_normal", rng=0, backend=b), (4, 5),
                      lambda x, p: x @ p["weight"]),
    "dense_one_example": (lambda b: bp.Dense(5, 3, rng=0, backend=b), (1, 5),
                          lambda x, p: ref.dense(x, p["weight"], p["bias"])),
    "dense_sequence": (lambda b: bp.Dense(5, 3, rng=0, backend=b), (2, 4, 5),
                       lambda x, p: ref.dense(x, p["weight"], p["bias"])),
    "sigmoid": (lambda b: bp.Sigmoid(backend=b), (4, 6), lambda x, p: ref.sigmoid(x)),
    "tanh": (lambda b: bp.Tanh(backend=b), (4, 6), lambda x, p: ref.tanh(x)),
    "relu": (lambda b: bp.ReLU(backend=b), (4, 6), lambda x, p: ref.relu(x)),
    "leaky_relu": (lambda b: bp.LeakyReLU(0.1, backend=b), (4, 6), lambda x, p: ref.leaky_relu(x, 0.1)),
    "gelu": (lambda b: bp.GELU(backend=b), (4, 6), lambda x, p: ref.gelu(x)),
    "softmax": (lambda b: bp.Softmax(backend=b), (4, 6), lambda x, p: ref.softmax(x)),
    "mlp": (lambda b: bp.mlp([5, 7, 6, 3], activation_name="tanh", seed=3, backend=b), (4, 5), None),
}


def _input(backend, shape, seed=0):
    host = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    # keep inputs away from ReLU's kink, where finite differences are meaningless
    host = np.where(np.abs(host) < 0.05, 0.3, host).astype(np.float32)
    return host, backend.from_host(host)


@pytest.mark.parametrize("name", LAYERS)
def test_forward_matches_numpy(backend, name):
    build, shape, reference = LAYERS[name]
    layer = build(backend)
    host_x, x = _input(backend, shape)
    y = layer(x)
    host_params = {k: backend.to_host(v) for k, v in weights(layer).items()}
    if reference is None:  # the MLP: compose the references
        h = np.tanh(host_x @ host_params["0.weight"] + host_params["0.bias"])
        h = np.tanh(h @ host_params["2.weight"] + host_params["2.bias"])
        expected = h @ host_params["4.weight"] + host_params["4.bias"]
    else:
        expected = reference(host_x, host_params)
    assert_on_backend(y, backend, shape=expected.shape)
    np.testing.assert_allclose(backend.to_host(y), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", LAYERS)
def test_backward_passes_gradcheck(backend, name):
    build, shape, _ = LAYERS[name]
    layer = build(backend)
    _, x = _input(backend, shape)
    result = bp.gradcheck(layer, x)
    assert result.ok and result.max_abs_error


@pytest.mark.parametrize("name", LAYERS)
def test_backward_outputs_live_on_the_backend(backend, name):
    build, shape, _ = LAYERS[name]
    layer = build(backend)
    _, x = _input(backend, shape)
    y = layer(x)
    dx = layer.backward(ones_like(backend, y))
    assert_on_backend(dx, backend, shape=shape)
    for param_name, grad in layer.named_gradients().items():
        assert_on_backend(grad, backend, shape=layer.named_parameters()[param_name].value.shape)


def test_dense_one_example_gradient_is_the_outer_product_at_blas_sizes(backend):
    """A 300 x 200 weight takes the backend's outer-product fast path (SciPy BLAS on NumPy)."""
    layer = bp.Dense(300, 200, rng=0, backend=backend)
    rng = np.random.default_rng(3)
    x_host = rng.standard_normal((1, 300)).astype(np.float32)
    g_host = rng.standard_normal((1, 200)).astype(np.float32)
    layer(backend.from_host(x_host), training=True)
    dx = layer.backward(backend.from_host(g_host))
    grad = layer.params["weight"].grad
    assert_on_backend(grad, backend, shape=(300, 200))
    assert_on_backend(dx, backend, shape=(1, 300))
    np.testing.assert_allclose(backend.to_host(grad), x_host.T @ g_host, rtol=1e-6)
    np.testing.assert_allclose(backend.to_host(dx), g_host @ backend.to_host(layer.params["weight"].value).T,
                               rtol=1e-4, atol=1e-5)


def test_gradcheck_catches_a_wrong_backward(backend):
    class BrokenTanh(bp.Tanh):
        def backward(self, grad_output):
            return grad_output * (1.0 - self._y)  # forgot to square

    _, x = _input(backend, (3, 4))
    with pytest.raises(bp.GradcheckError, match="analytic .* numerical"):
        bp.gradcheck(BrokenTanh(backend=backend), x)


def test_same_seed_gives_same_initial_weights_on_every_backend(backend):
    numpy_model = bp.mlp([8, 16, 4], seed=11, backend="numpy")
    model = bp.mlp([8, 16, 4], seed=11, backend=backend)
    for name, weight in weights(numpy_model).items():
        np.testing.assert_array_equal(backend.to_host(model.named_parameters()[name].value), weight)
    assert not np.array_equal(bp.mlp([8, 16, 4], seed=12, backend="numpy").named_parameters()["0.weight"].value,
                              numpy_model.named_parameters()["0.weight"].value)


@pytest.mark.parametrize("init", ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal"])
def test_initializer_scale(init):
    weight = bp.Dense(400, 300, init=init, rng=0, backend="numpy").params["weight"].value
    fan_in, fan_out = 400, 300
    expected_std = {"glorot": np.sqrt(2 / (fan_in + fan_out)), "he": np.sqrt(2 / fan_in)}[init.split("_")[0]]
    assert abs(weight.std() / expected_std - 1) < 0.03
    assert abs(weight.mean()) < 0.01


def test_parameters_and_gradients_are_named(backend):
    model = bp.mlp([3, 4, 2], backend=backend)
    assert list(model.named_parameters()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert model.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2
    _, x = _input(backend, (5, 3))
    model.backward(ones_like(backend, model(x)))
    assert list(model.named_gradients()) == list(model.named_parameters())
    model.zero_grad()
    assert model.named_gradients() == {}


def test_replace_arrays_stores_new_parameters_and_buffers(backend):
    """The parameter store's one write for whole arrays (loading, restoring weights): keyed as in model files,
    the arrays themselves stored, every other array kept; a wrong shape or dtype changes nothing of that array."""
    model = bp.Sequential([bp.Dense(3, 4, rng=0, backend=backend), bp.layers.BatchNorm1D(4, backend=backend)])
    before = {name: backend.to_host(array) for name, array in weights(model).items()}
    weight = backend.from_host(np.full((3, 4), 2.0, np.float32))
    mean = backend.from_host(np.full((4,), 0.5, np.float32))
    model.replace_arrays({"param/0.weight": weight, "buffer/1.running_mean": mean})
    assert model.named_parameters()["0.weight"].value is weight and model.layers[0].params["weight"].value is weight
    assert model.named_buffers()["1.running_mean"] is mean
    for name in ("0.bias", "1.weight", "1.bias"):
        np.testing.assert_array_equal(backend.to_host(model.named_parameters()[name].value), before[name])
    with pytest.raises(bp.ShapeError, match=r"param '0.bias' is float32 of shape \(4,\); got float32 of shape "
                                            r"\(3,\)"):
        model.replace_arrays({"param/0.bias": backend.from_host(np.zeros(3, np.float32))})
    np.testing.assert_array_equal(backend.to_host(model.named_parameters()["0.bias"].value), before["0.bias"])


def test_float64_models_work(backend):
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} has no float64")
    model = bp.mlp([3, 4, 2], backend=backend, dtype="float64")
    x = backend.from_host(np.ones((2, 3)), dtype=backend.xp.float64)
    assert_on_backend(model(x), backend, dtype_name="float64")


def test_to_moves_a_model_between_backends(backend):
    model = bp.mlp([3, 4, 2], seed=5, backend="numpy")
    moved = model.to(backend)
    host_x, x = _input(backend, (2, 3))
    assert_on_backend(moved(x), backend)
    np.testing.assert_allclose(backend.to_host(moved(x)), model(host_x), rtol=1e-5, atol=1e-6)
    assert model.backend.name == "numpy"  # the original is untouched


def test_sgd_step_reduces_the_loss(backend):
    host_x, x = _input(backend, (32, 6))
    labels = backend.from_host((host_x[:, 0] > 0).astype(np.int64))
    model = bp.mlp([6, 16, 2], seed=0, backend=backend)
    loss_fn, optimizer = bp.CrossEntropy(), bp.SGD(model, lr=0.5)
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x, training=True), labels)
        losses.append(float(backend.to_host(loss)))
        model.backward(loss_fn.backward())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    for param in weights(model).values():
        assert_on_backend(param, backend)


def test_skipping_the_input_gradient_keeps_parameter_gradients(backend):
    model = bp.mlp([5, 7, 3], seed=1, backend=backend)
    _, x = _input(backend, (4, 5))
    grad = ones_like(backend, model(x))
    assert_on_backend(model.backward(grad), backend, shape=(4, 5))
    full = {k: backend.to_host(v) for k, v in model.named_gradients().items()}
    model(x)
    assert model.backward(grad, input_grad=False) is None
    for name, value in model.named_gradients().items():
        np.testing.assert_array_equal(backend.to_host(value), full[name])
