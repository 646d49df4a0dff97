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
    y, backprop = layer.begin_update(x)
    dx = backprop(ones_like(backend, y))
    assert_on_backend(dx, backend, shape=shape)
    for param_name, grad in layer.named_gradients().items():
        assert_on_backend(grad, backend, shape=layer.named_parameters()[param_name].value.shape)


def test_dense_one_example_gradient_is_the_outer_product_at_blas_sizes(backend):
    """A 300 x 200 weight takes the backend's outer-product fast path (SciPy BLAS on NumPy)."""
    layer = bp.Dense(300, 200, rng=0, backend=backend)
    rng = np.random.default_rng(3)
    x_host = rng.standard_normal((1, 300)).astype(np.float32)
    g_host = rng.standard_normal((1, 200)).astype(np.float32)
    _, backprop = layer.begin_update(backend.from_host(x_host), training=True)
    dx = backprop(backend.from_host(g_host))
    grad = layer.params["weight"].grad
    assert_on_backend(grad, backend, shape=(300, 200))
    assert_on_backend(dx, backend, shape=(1, 300))
    np.testing.assert_allclose(backend.to_host(grad), x_host.T @ g_host, rtol=1e-6)
    np.testing.assert_allclose(backend.to_host(dx), g_host @ backend.to_host(layer.params["weight"].value).T,
                               rtol=1e-4, atol=1e-5)


def test_gradcheck_catches_a_wrong_backward(backend):
    class BrokenTanh(bp.Tanh):
        def _begin(self, x):
            y = self.xp.tanh(x)

            def backprop(grad_output):
                return grad_output * (1.0 - y)  # forgot to square

            return y, backprop

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
    y, backprop = model.begin_update(x)
    backprop(ones_like(backend, y))
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
        optimizer.zero_grad()
        logits, backprop = model.begin_update(x, training=True)
        loss, grad = loss_fn.value_and_grad(logits, labels)
        losses.append(float(backend.to_host(loss)))
        backprop(grad)
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    for param in weights(model).values():
        assert_on_backend(param, backend)


def test_skipping_the_input_gradient_keeps_parameter_gradients(backend):
    model = bp.mlp([5, 7, 3], seed=1, backend=backend)
    _, x = _input(backend, (4, 5))
    y, backprop = model.begin_update(x)
    grad = ones_like(backend, y)
    assert_on_backend(backprop(grad), backend, shape=(4, 5))
    full = {k: backend.to_host(v) for k, v in model.named_gradients().items()}
    model.zero_grad()
    assert model.named_gradients() == {}
    _, backprop = model.begin_update(x)
    assert backprop(grad, input_grad=False) is None
    assert list(model.named_gradients()) == list(full)
    for name, value in model.named_gradients().items():
        np.testing.assert_array_equal(backend.to_host(value), full[name])


# -- a layer is not its own tape: calls are independent, and gradients add up --------------------------------

def _floats(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _conv(fast):
    def build(b):
        layer = bp.layers.Conv2D(2, 3, 3, padding=1, rng=0, backend=b)
        layer.use_fast_path = fast
        return layer
    return build


# name -> (build(backend), input(seed) on the host, training)
EVERY_KIND = {
    "dense": (lambda b: bp.Dense(5, 3, rng=0, backend=b), lambda s: _floats((4, 5), s), True),
    "mlp": (lambda b: bp.mlp([5, 6, 3], activation_name="gelu", seed=0, backend=b), lambda s: _floats((4, 5), s),
            True),
    "softmax": (lambda b: bp.Softmax(backend=b), lambda s: _floats((4, 5), s), True),
    "leaky_relu": (lambda b: bp.LeakyReLU(0.1, backend=b), lambda s: _floats((4, 5), s), True),
    "conv": (_conv(True), lambda s: _floats((2, 2, 5, 5), s), True),
    "conv_portable": (_conv(False), lambda s: _floats((2, 2, 5, 5), s), True),
    "max_pool": (lambda b: bp.layers.MaxPool2D(2, stride=1, backend=b), lambda s: _floats((2, 2, 4, 4), s), True),
    "avg_pool": (lambda b: bp.layers.AvgPool2D(3, stride=2, padding=1, backend=b), lambda s: _floats((2, 2, 5, 5), s),
                 True),
    "batch_norm": (lambda b: bp.layers.BatchNorm1D(4, backend=b), lambda s: _floats((3, 4), s), True),
    "batch_norm_eval": (lambda b: bp.layers.BatchNorm2D(2, backend=b), lambda s: _floats((2, 2, 3, 3), s), False),
    "layer_norm": (lambda b: bp.layers.LayerNorm(4, backend=b), lambda s: _floats((3, 2, 4), s), True),
    "embedding": (lambda b: bp.layers.Embedding(6, 3, rng=0, backend=b),
                  lambda s: np.random.default_rng(s).integers(0, 6, size=(3, 4)), True),
    "lstm": (lambda b: bp.layers.LSTM(3, 4, rng=0, backend=b), lambda s: _floats((2, 5, 3), s), True),
    "gru_bidirectional": (lambda b: bp.layers.GRU(3, 4, bidirectional=True, return_sequences=False, rng=0, backend=b),
                          lambda s: _floats((2, 5, 3), s), True),
    "rnn_truncated": (lambda b: bp.layers.RNN(3, 4, bptt_steps=2, rng=0, backend=b), lambda s: _floats((2, 5, 3), s),
                      True),
    "fixed_point": (lambda b: bp.layers.FixedPointRecurrent(3, 4, rng=0, backend=b), lambda s: _floats((2, 3), s),
                    True),
    "flatten": (lambda b: bp.layers.Flatten(backend=b), lambda s: _floats((2, 3, 2), s), True),
    "reshape": (lambda b: bp.layers.Reshape((2, 3), backend=b), lambda s: _floats((2, 6), s), True),
    "dropout_eval": (lambda b: bp.Dropout(0.5, backend=b), lambda s: _floats((3, 4), s), False),
}


@pytest.mark.parametrize("name", EVERY_KIND)
def test_two_calls_before_their_backward_passes_are_independent_and_add_their_gradients(backend, name):
    """A layer applied to x1 and x2 before either backward pass (tied weights, a Siamese pair) gives each call
    its own output and input gradient, and the sum of both calls' parameter gradients, as two separate
    layers with the same weights would."""
    build, make_input, training = EVERY_KIND[name]
    x1, x2 = (backend.from_host(make_input(seed)) for seed in (1, 2))
    alone = {}
    reference = build(backend)
    for key, x in (("1", x1), ("2", x2)):
        reference.zero_grad()
        y, backprop = reference.begin_update(x, training=training)
        g = backend.from_host(_floats(tuple(y.shape), 10 + int(key)))
        alone[key] = (backend.to_host(y), backprop(g), g, {k: backend.to_host(v)
                                                           for k, v in reference.named_gradients().items()})
    layer = build(backend)
    y1, backprop1 = layer.begin_update(x1, training=training)
    y2, backprop2 = layer.begin_update(x2, training=training)
    dx2 = backprop2(alone["2"][2])  # the later call's backward first: each closure has its own call's arrays
    dx1 = backprop1(alone["1"][2])
    for key, y, dx in (("1", y1, dx1), ("2", y2, dx2)):
        np.testing.assert_allclose(backend.to_host(y), alone[key][0], rtol=1e-6, atol=1e-6)
        if alone[key][1] is None:  # Embedding: integer inputs have no gradient
            assert dx is None
        else:
            assert_on_backend(dx, backend, shape=tuple(alone[key][1].shape))
            np.testing.assert_allclose(backend.to_host(dx), backend.to_host(alone[key][1]), rtol=1e-5, atol=1e-6)
    grads = layer.named_gradients()
    assert list(grads) == list(alone["1"][3])
    for param_name, grad in grads.items():
        assert_on_backend(grad, backend, shape=layer.named_parameters()[param_name].shape)
        np.testing.assert_allclose(backend.to_host(grad), alone["1"][3][param_name] + alone["2"][3][param_name],
                                   rtol=1e-5, atol=1e-6, err_msg=param_name)
    assert not [k for k, v in vars(layer).items() if backend.owns(v)]  # nothing of the calls on the layer


def test_dropout_calls_keep_their_own_masks(backend):
    layer = bp.Dropout(0.5, seed=3, backend=backend)
    x = backend.from_host(np.ones((50, 8), np.float32))
    (y1, backprop1), (y2, backprop2) = layer.begin_update(x), layer.begin_update(x)
    masks = [backend.to_host(y) for y in (y1, y2)]
    assert not np.array_equal(masks[0], masks[1])
    for backprop, mask in ((backprop2, masks[1]), (backprop1, masks[0])):
        np.testing.assert_array_equal(backend.to_host(backprop(x)), mask)  # dx = dy ⊙ m / (1 − p)
