"""BatchNorm1D, BatchNorm2D and LayerNorm on every backend: PyTorch as the oracle (forward, gradients, running
statistics), gradcheck, dtype/device/namespace, moving and converting, model files, bad input, a training run."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.layers import register_layer
from backprop.layers.normalization import BatchNorm1D, BatchNorm2D, LayerNorm

from conftest import UPDATES_IN_PLACE, assert_on_backend, ones_like, weights

# name -> (layer class, constructor keywords, input shape)
BATCH_NORMS = {
    "1d": (BatchNorm1D, {}, (6, 4)),
    "1d_length": (BatchNorm1D, {"momentum": 0.3}, (3, 4, 5)),
    "1d_no_affine": (BatchNorm1D, {"affine": False, "eps": 1e-3}, (5, 4)),
    "2d": (BatchNorm2D, {}, (3, 2, 4, 3)),
    "2d_momentum": (BatchNorm2D, {"momentum": 0.5, "eps": 1e-4}, (2, 2, 3, 3)),
}

# name -> (constructor args, constructor keywords, input shape)
LAYER_NORMS = {
    "last_axis": ((5,), {}, (4, 5)),
    "sequence": ((5,), {}, (2, 3, 5)),
    "two_axes": (((3, 4),), {"eps": 1e-3}, (2, 3, 4)),
    "no_affine": ((4,), {"elementwise_affine": False}, (3, 4)),
}


def _host(shape, seed=0, shift=0.0):
    return (np.random.default_rng(seed).normal(size=shape) * 2.0 + shift).astype(np.float32)


def _randomize_params(layer, backend, seed=1):
    """Give γ and β values other than ones and zeros, so the tests see them."""
    rng = np.random.default_rng(seed)
    new = {}
    for name, array in weights(layer).items():
        values = rng.uniform(0.5, 1.5, size=array.shape) if name == "weight" else rng.normal(size=array.shape)
        new[f"param/{name}"] = backend.from_host(values.astype(np.float32))
    layer.replace_arrays(new)


def _host_params(layer, backend):
    return {name: backend.to_host(array) for name, array in weights(layer).items()}


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _torch_batch_norm(torch, layer, host_params):
    cls = torch.nn.BatchNorm1d if isinstance(layer, BatchNorm1D) else torch.nn.BatchNorm2d
    module = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
    with torch.no_grad():
        for name, values in host_params.items():
            getattr(module, name).copy_(torch.from_numpy(values))
    return module


# -- against PyTorch ---------------------------------------------------------
@pytest.mark.parametrize("name", BATCH_NORMS)
def test_batch_norm_matches_torch_in_training_and_evaluation(backend, torch, name):
    cls, kwargs, shape = BATCH_NORMS[name]
    layer = cls(shape[1], backend=backend, **kwargs)
    _randomize_params(layer, backend)
    oracle = _torch_batch_norm(torch, layer, _host_params(layer, backend))
    oracle.train()
    for step in range(3):  # the running statistics after a few steps
        host_x = _host(shape, seed=step, shift=step - 1.0)
        host_v = _host(shape, seed=10 + step)
        layer.zero_grad()  # gradients add up until cleared, as the oracle's do
        y, backprop = layer.begin_update(backend.from_host(host_x), training=True)
        dx = backprop(backend.from_host(host_v))
        x_t = torch.from_numpy(host_x).requires_grad_(True)
        y_t = oracle(x_t)
        (y_t * torch.from_numpy(host_v)).sum().backward()
        np.testing.assert_allclose(backend.to_host(y), y_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(backend.to_host(dx), x_t.grad.numpy(), rtol=1e-4, atol=1e-4)
        for param_name, grad in layer.named_gradients().items():
            expected = getattr(oracle, param_name).grad.numpy()
            np.testing.assert_allclose(backend.to_host(grad), expected, rtol=1e-4, atol=1e-4)
            getattr(oracle, param_name).grad = None
    for buffer_name in ("running_mean", "running_var"):
        np.testing.assert_allclose(backend.to_host(layer.buffers[buffer_name]),
                                   getattr(oracle, buffer_name).numpy(), rtol=1e-5, atol=1e-6)
    oracle.eval()
    host_x = _host(shape, seed=99)
    y = layer(backend.from_host(host_x), training=False)
    np.testing.assert_allclose(backend.to_host(y), oracle(torch.from_numpy(host_x)).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LAYER_NORMS)
def test_layer_norm_matches_torch(backend, torch, name):
    args, kwargs, shape = LAYER_NORMS[name]
    layer = LayerNorm(*args, backend=backend, **kwargs)
    _randomize_params(layer, backend)
    oracle = torch.nn.LayerNorm(*args, **kwargs)
    with torch.no_grad():
        for param_name, values in _host_params(layer, backend).items():
            getattr(oracle, param_name).copy_(torch.from_numpy(values))
    host_x, host_v = _host(shape, shift=3.0), _host(shape, seed=5)
    for training in (True, False):  # no batch statistics: the same either way
        layer.zero_grad()
        y, backprop = layer.begin_update(backend.from_host(host_x), training=training)
        dx = backprop(backend.from_host(host_v))
        x_t = torch.from_numpy(host_x).requires_grad_(True)
        y_t = oracle(x_t)
        (y_t * torch.from_numpy(host_v)).sum().backward()
        np.testing.assert_allclose(backend.to_host(y), y_t.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(backend.to_host(dx), x_t.grad.numpy(), rtol=1e-4, atol=1e-4)
        for param_name, grad in layer.named_gradients().items():
            np.testing.assert_allclose(backend.to_host(grad), getattr(oracle, param_name).grad.numpy(),
                                       rtol=1e-4, atol=1e-4)
            getattr(oracle, param_name).grad = None


# -- gradcheck ------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False], ids=["training", "evaluation"])
@pytest.mark.parametrize("name", ["1d", "1d_length", "1d_no_affine", "2d"])
def test_batch_norm_passes_gradcheck(backend, name, training):
    cls, kwargs, shape = BATCH_NORMS[name]
    layer = cls(shape[1], backend=backend, **kwargs)
    _randomize_params(layer, backend)
    layer(backend.from_host(_host(shape, seed=3)), training=True)  # running statistics other than 0 and 1
    result = bp.gradcheck(layer, backend.from_host(_host(shape)), training=training)
    expected = {"input"} | set(layer.params)
    assert result.ok and set(result.max_abs_error) == expected


@pytest.mark.parametrize("name", LAYER_NORMS)
def test_layer_norm_passes_gradcheck(backend, name):
    args, kwargs, shape = LAYER_NORMS[name]
    layer = LayerNorm(*args, backend=backend, **kwargs)
    _randomize_params(layer, backend)
    result = bp.gradcheck(layer, backend.from_host(_host(shape)))
    assert result.ok and set(result.max_abs_error) == {"input"} | set(layer.params)


# -- arrays stay on the backend -------------------------------------------------
@pytest.mark.parametrize("name", ["1d", "2d"])
def test_batch_norm_outputs_grads_and_buffers_live_on_the_backend(backend, name):
    cls, kwargs, shape = BATCH_NORMS[name]
    layer = cls(shape[1], backend=backend, **kwargs)
    for training in (True, False):
        y, backprop = layer.begin_update(backend.from_host(_host(shape)), training=training)
        assert_on_backend(y, backend, shape=shape)
        assert_on_backend(backprop(ones_like(backend, y)), backend, shape=shape)
        for array in (*layer.named_gradients().values(), *weights(layer).values(), *layer.buffers.values()):
            assert_on_backend(array, backend, shape=(shape[1],))
    assert list(layer.named_buffers()) == ["running_mean", "running_var"]
    assert list(layer.named_gradients()) == list(layer.named_parameters()) == ["weight", "bias"]


def test_layer_norm_outputs_and_grads_live_on_the_backend(backend):
    layer = LayerNorm((3, 4), backend=backend)
    y, backprop = layer.begin_update(backend.from_host(_host((2, 3, 4))))
    assert_on_backend(y, backend, shape=(2, 3, 4))
    assert_on_backend(backprop(y), backend, shape=(2, 3, 4))
    for grad in layer.named_gradients().values():
        assert_on_backend(grad, backend, shape=(3, 4))
    assert layer.buffers == {}


def test_float64_layers(backend):
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} has no float64")
    x = backend.from_host(_host((4, 3)), dtype=backend.xp.float64)
    for layer in (BatchNorm1D(3, backend=backend, dtype="float64"), LayerNorm(3, backend=backend, dtype="float64")):
        y, backprop = layer.begin_update(x, training=True)
        assert_on_backend(y, backend, dtype_name="float64")
        assert_on_backend(backprop(y), backend, dtype_name="float64")
        for array in (*layer.named_gradients().values(), *layer.buffers.values()):
            assert_on_backend(array, backend, dtype_name="float64")


# -- running statistics -----------------------------------------------------------
def test_running_statistics_update_only_in_training(backend):
    layer = BatchNorm1D(4, backend=backend)
    mean, var = layer.buffers["running_mean"], layer.buffers["running_var"]
    host_x = _host((8, 4), shift=2.0)
    layer(backend.from_host(host_x), training=False)
    for name, expected in (("running_mean", np.zeros(4)), ("running_var", np.ones(4))):
        np.testing.assert_array_equal(backend.to_host(layer.buffers[name]), expected)
    layer(backend.from_host(host_x), training=True)
    if backend.library in UPDATES_IN_PLACE:  # the fast path writes into the buffers
        assert layer.buffers["running_mean"] is mean and layer.buffers["running_var"] is var
    new_mean, new_var = layer.buffers["running_mean"], layer.buffers["running_var"]  # in the layer: stored
    assert_on_backend(new_mean, backend, shape=(4,))
    assert_on_backend(new_var, backend, shape=(4,))
    np.testing.assert_allclose(backend.to_host(new_mean), 0.1 * host_x.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_host(new_var), 0.9 + 0.1 * host_x.var(axis=0, ddof=1), rtol=1e-5)


def test_to_and_astype_keep_running_statistics(backend):
    layer = BatchNorm2D(2, momentum=0.5, backend="numpy")
    _randomize_params(layer, layer.backend)
    host_x = _host((3, 2, 3, 3), shift=1.0)
    layer(host_x, training=True)
    moved = layer.to(backend)
    for name, array in layer.buffers.items():
        assert_on_backend(moved.buffers[name], backend)
        np.testing.assert_array_equal(backend.to_host(moved.buffers[name]), array)
    np.testing.assert_allclose(backend.to_host(moved(backend.from_host(host_x))), layer(host_x), rtol=1e-5, atol=1e-6)
    back = moved.to("numpy")
    for name, array in layer.buffers.items():
        np.testing.assert_array_equal(back.buffers[name], array)
    if backend.supports_float64:
        wide = moved.astype("float64")
        for name, array in layer.buffers.items():
            assert_on_backend(wide.buffers[name], backend, dtype_name="float64")
            np.testing.assert_array_equal(backend.to_host(wide.buffers[name]), array.astype(np.float64))
        wide(backend.from_host(host_x, dtype=backend.xp.float64), training=True)  # the copy's own buffers
        np.testing.assert_array_equal(backend.to_host(moved.buffers["running_mean"]), layer.buffers["running_mean"])


def test_model_files_keep_weights_and_running_statistics(backend, tmp_path):
    for cls in (BatchNorm1D, BatchNorm2D, LayerNorm):
        register_layer(cls)
    model = bp.Sequential([bp.Dense(5, 4, rng=0, backend=backend), BatchNorm1D(4, momentum=0.2, backend=backend),
                           bp.ReLU(backend=backend), bp.Dense(4, 3, rng=1, backend=backend),
                           LayerNorm(3, eps=1e-3, backend=backend)])
    _randomize_params(model[1], backend)
    _randomize_params(model[4], backend, seed=2)
    for seed in range(3):
        model(backend.from_host(_host((6, 5), seed=seed, shift=1.0)), training=True)
    images = bp.Sequential([BatchNorm2D(2, eps=1e-4, affine=False, backend=backend)])
    images(backend.from_host(_host((2, 2, 3, 3), shift=-1.0)), training=True)
    for name, net, host_x in (("mlp", model, _host((4, 5), seed=7)), ("images", images, _host((2, 2, 3, 3)))):
        path = tmp_path / f"{name}.safetensors"
        bp.save_model(path, net)
        loaded = bp.load_model(path, backend=backend)
        assert repr(loaded) == repr(net)
        assert list(loaded.named_buffers()) == list(net.named_buffers())
        for key, array in (*weights(net).items(), *net.named_buffers().items()):
            np.testing.assert_array_equal(backend.to_host({**weights(loaded), **loaded.named_buffers()}[key]),
                                          backend.to_host(array))
        x = backend.from_host(host_x)
        np.testing.assert_array_equal(backend.to_host(loaded(x)), backend.to_host(net(x)))
    assert "0.running_mean" in images.named_buffers() and images[0].params == {}


# -- bad input and bad settings ------------------------------------------------------
def _one_line_error(error_type, pattern, fn, *args, **kwargs):
    with pytest.raises(error_type, match=pattern) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_inputs_give_one_line_errors_naming_the_layer(backend):
    bn1 = BatchNorm1D(4, backend=backend)
    x = backend.from_host(_host((3, 5)))
    _one_line_error(bp.ShapeError, r"BatchNorm1D\(4\): expected input of shape \(batch, 4\) or \(batch, 4, length\), "
                    r"got \(3, 5\)", bn1, x)
    _one_line_error(bp.ShapeError, r"BatchNorm1D\(4\): .* got \(3, 4, 2, 2\)", bn1,
                    backend.from_host(_host((3, 4, 2, 2))))
    _one_line_error(bp.ShapeError, r"BatchNorm1D\(4\): training needs more than 1 value per channel .* \(1, 4\)",
                    bn1, backend.from_host(_host((1, 4))), training=True)
    assert tuple(bn1(backend.from_host(_host((1, 4)))).shape) == (1, 4)  # evaluation is fine
    assert tuple(bn1(backend.from_host(_host((1, 4, 2))), training=True).shape) == (1, 4, 2)  # two per channel
    bn2 = BatchNorm2D(3, backend=backend)
    _one_line_error(bp.ShapeError, r"BatchNorm2D\(3\): expected input of shape \(batch, 3, height, width\), "
                    r"got \(2, 4, 3, 3\)", bn2, backend.from_host(_host((2, 4, 3, 3))))
    _one_line_error(bp.ShapeError, r"BatchNorm2D\(3\): .* got \(2, 3, 3\)", bn2, backend.from_host(_host((2, 3, 3))))
    ln = LayerNorm((3, 4), backend=backend)
    _one_line_error(bp.ShapeError, r"LayerNorm\(\(3, 4\)\): expected input of shape \(batch, \.\.\., 3, 4\), "
                    r"got \(2, 4, 3\)", ln, backend.from_host(_host((2, 4, 3))))
    _one_line_error(bp.ShapeError, r"LayerNorm\(\(3, 4\)\): .* got \(3, 4\)", ln, backend.from_host(_host((3, 4))))
    _one_line_error(bp.DTypeError, r"BatchNorm1D\(4\): expected float32 input, got int64", bn1,
                    backend.from_host(np.ones((3, 4), dtype=np.int64)))
    if backend.name != "numpy":
        _one_line_error(bp.DeviceMismatchError, r"LayerNorm\(4\): input is a numpy array",
                        LayerNorm(4, backend=backend), _host((2, 4)))


@pytest.mark.parametrize("build, message", [
    (lambda: BatchNorm1D(0), r"BatchNorm1D: num_features must be a positive integer, got 0"),
    (lambda: BatchNorm1D(2.5), r"num_features must be a positive integer, got 2\.5"),
    (lambda: BatchNorm1D(True), r"num_features must be a positive integer, got True"),
    (lambda: BatchNorm2D(-3), r"BatchNorm2D: num_channels must be a positive integer, got -3"),
    (lambda: BatchNorm1D(4, momentum=1.5), r"BatchNorm1D: momentum must be a finite number in \[0, 1\], got 1\.5"),
    (lambda: BatchNorm2D(4, momentum=float("nan")), r"momentum must be a finite number in \[0, 1\], got nan"),
    (lambda: BatchNorm1D(4, momentum=None), r"momentum must be a finite number in \[0, 1\], got None"),
    (lambda: BatchNorm1D(4, eps=0), r"BatchNorm1D: eps must be a positive finite number, got 0"),
    (lambda: BatchNorm2D(4, eps=float("inf")), r"eps must be a positive finite number, got inf"),
    (lambda: BatchNorm1D(4, affine="yes"), r"affine must be True or False, got 'yes'"),
    (lambda: LayerNorm(0), r"LayerNorm: normalized_shape must be a positive integer or a non-empty tuple"),
    (lambda: LayerNorm(()), r"normalized_shape .* got \(\)"),
    (lambda: LayerNorm((3, 0)), r"normalized_shape .* got \(3, 0\)"),
    (lambda: LayerNorm("4"), r"normalized_shape .* got '4'"),
    (lambda: LayerNorm(4, eps=-1e-5), r"LayerNorm: eps must be a positive finite number"),
    (lambda: LayerNorm(4, elementwise_affine=1), r"LayerNorm: elementwise_affine must be True or False, got 1"),
])
def test_bad_settings_raise_config_error(build, message):
    _one_line_error(bp.ConfigError, message, build)


def test_config_rebuilds_the_layer():
    for layer in (BatchNorm1D(3, momentum=0.2, eps=1e-3, affine=False), BatchNorm2D(5),
                  LayerNorm([2, 3], eps=1e-6, elementwise_affine=False)):
        rebuilt = type(layer)(**layer.config())
        assert rebuilt.config() == layer.config() and repr(rebuilt) == repr(layer)
    assert repr(BatchNorm1D(3, momentum=0.2, affine=False)) == "BatchNorm1D(3, momentum=0.2, affine=False)"
    assert repr(LayerNorm([2, 3])) == "LayerNorm((2, 3))"


# -- training --------------------------------------------------------------------------
def test_mlp_with_batch_norm_learns_the_digits():
    data = bp.data.load_digits()
    model = bp.Sequential([bp.Dense(64, 64, init="he_normal", rng=0, backend="numpy"), BatchNorm1D(64, backend="numpy"),
                           bp.ReLU(backend="numpy"), bp.Dense(64, 10, rng=1, backend="numpy")])
    bp.fit(model, data.x_train, data.y_train, epochs=3, lr=0.01, progress=False, log=None)
    accuracy = bp.evaluate(model, data.x_test.astype(np.float32), data.y_test, bp.CrossEntropy())["accuracy"]
    assert accuracy > 0.9
    assert np.all(model[1].buffers["running_var"] != 1.0)  # the running statistics were learned
