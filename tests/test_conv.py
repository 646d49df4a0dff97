"""Conv2D, MaxPool2D, AvgPool2D, Flatten and Reshape on every backend, with PyTorch as the oracle.

Forward passes are compared with ``torch.nn.functional`` run on the CPU from the same NumPy inputs; backward
passes by ``bp.gradcheck``, and the backends' convolution fast paths against the portable im2col path.
"""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest

import backprop as bp
from backprop.errors import ConfigError, DTypeError, ShapeError
from backprop.layers.conv import Conv2D
from backprop.layers.pooling import AvgPool2D, MaxPool2D
from backprop.layers.shape import Flatten, Reshape
from backprop.layers.windows import output_size

from conftest import assert_on_backend, ones_like, weights

torch = pytest.importorskip("torch")
F = torch.nn.functional

# name -> (keyword arguments, input shape)
CONVS = {
    "plain": (dict(in_channels=2, out_channels=3, kernel_size=3), (2, 2, 6, 5)),
    "stride_padding": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1), (2, 2, 7, 6)),
    "dilation": (dict(in_channels=2, out_channels=2, kernel_size=2, dilation=2, padding=1), (2, 2, 5, 5)),
    "rectangular": (dict(in_channels=1, out_channels=2, kernel_size=(2, 3), stride=(1, 2), padding=(1, 0),
                         dilation=(2, 1)), (2, 1, 6, 7)),
    "no_bias": (dict(in_channels=3, out_channels=2, kernel_size=1, bias=False), (2, 3, 4, 4)),
}
POOLS = {
    "max": (lambda b: MaxPool2D(2, backend=b), (2, 2, 6, 5), lambda t: F.max_pool2d(t, 2)),
    "max_overlapping": (lambda b: MaxPool2D(3, stride=1, backend=b), (2, 2, 5, 5),
                        lambda t: F.max_pool2d(t, 3, stride=1)),
    "max_padded": (lambda b: MaxPool2D((3, 2), stride=(2, 1), padding=1, backend=b), (2, 2, 5, 5),
                   lambda t: F.max_pool2d(t, (3, 2), stride=(2, 1), padding=1)),
    "avg": (lambda b: AvgPool2D(2, backend=b), (2, 2, 5, 6), lambda t: F.avg_pool2d(t, 2)),
    "avg_overlapping_padded": (lambda b: AvgPool2D(3, stride=2, padding=1, backend=b), (2, 2, 5, 5),
                               lambda t: F.avg_pool2d(t, 3, stride=2, padding=1)),
}


def _host(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _conv(backend, name, fast=True):
    kwargs, shape = CONVS[name]
    layer = Conv2D(**kwargs, rng=0, backend=backend)
    if layer.use_bias:  # non-zero biases, so a bias mistake shows
        layer.params["bias"].value = backend.from_host(_host((kwargs["out_channels"],), seed=9))
    layer.use_fast_path = fast
    return layer, shape


def _torch_conv(layer, backend, host_x):
    weight = torch.from_numpy(backend.to_host(layer.params["weight"].value))
    bias = torch.from_numpy(backend.to_host(layer.params["bias"].value)) if layer.use_bias else None
    return F.conv2d(torch.from_numpy(host_x), weight, bias, layer.stride, layer.padding, layer.dilation).numpy()


# ------------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "portable"])
@pytest.mark.parametrize("name", CONVS)
def test_conv_forward_matches_torch(backend, name, fast):
    layer, shape = _conv(backend, name, fast)
    host_x = _host(shape)
    y = layer(backend.from_host(host_x))
    expected = _torch_conv(layer, backend, host_x)
    assert_on_backend(y, backend, shape=expected.shape)
    np.testing.assert_allclose(backend.to_host(y), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", POOLS)
def test_pool_forward_matches_torch(backend, name):
    build, shape, reference = POOLS[name]
    host_x = _host(shape)
    y = build(backend)(backend.from_host(host_x))
    expected = reference(torch.from_numpy(host_x)).numpy()
    assert_on_backend(y, backend, shape=expected.shape)
    np.testing.assert_allclose(backend.to_host(y), expected, rtol=1e-6, atol=1e-6)


def test_flatten_and_reshape_forward(backend):
    host_x = _host((3, 2, 4, 5))
    x = backend.from_host(host_x)
    flat = Flatten(backend=backend)(x)
    assert_on_backend(flat, backend, shape=(3, 40))
    np.testing.assert_array_equal(backend.to_host(flat), torch.flatten(torch.from_numpy(host_x), 1).numpy())
    images = Reshape((2, 4, 5), backend=backend)(flat)
    assert_on_backend(images, backend, shape=(3, 2, 4, 5))
    np.testing.assert_array_equal(backend.to_host(images), host_x)


# Output shapes over a grid of settings: the formula, PyTorch and the layers agree (NumPy: cheap).
GRID = [(size, k, s, p, d) for size, k, s, p, d in itertools.product((4, 7, 8), (1, 2, 3), (1, 2, 3), (0, 1, 2), (1, 2))
        if size + 2 * p >= d * (k - 1) + 1]


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "portable"])
def test_conv_output_shapes_over_a_grid(fast):
    for size, k, s, p, d in GRID:
        layer = Conv2D(1, 2, k, stride=s, padding=p, dilation=d, rng=0, backend="numpy")
        layer.use_fast_path = fast
        host_x = _host((1, 1, size, size + 1))
        y = layer(host_x)
        expected = _torch_conv(layer, layer.backend, host_x)
        formula = (output_size(size, k, s, p, d), output_size(size + 1, k, s, p, d))
        assert y.shape == expected.shape == (1, 2, *formula), (size, k, s, p, d)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_pool_output_shapes_over_a_grid():
    for size, k, s, p in itertools.product((4, 5, 8), (1, 2, 3), (1, 2, 3), (0, 1)):
        if p > k // 2:
            continue
        host_x = _host((1, 2, size, size + 1))
        for layer, reference in ((MaxPool2D(k, stride=s, padding=p, backend="numpy"), F.max_pool2d),
                                 (AvgPool2D(k, stride=s, padding=p, backend="numpy"), F.avg_pool2d)):
            expected = reference(torch.from_numpy(host_x), k, stride=s, padding=p).numpy()
            y = layer(host_x)
            assert y.shape == expected.shape, (type(layer).__name__, size, k, s, p)
            np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------- backward


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "portable"])
@pytest.mark.parametrize("name", ["plain", "stride_padding", "dilation", "rectangular", "no_bias"])
def test_conv_gradcheck(backend, name, fast):
    layer, shape = _conv(backend, name, fast)
    result = bp.gradcheck(layer, backend.from_host(_host(shape)), max_elements=40)
    assert result.ok and set(result.max_abs_error) == {"input", *layer.params}


@pytest.mark.parametrize("name", POOLS)
def test_pool_gradcheck(backend, name):
    build, shape, _ = POOLS[name]
    result = bp.gradcheck(build(backend), backend.from_host(_host(shape)), max_elements=60)
    assert result.ok and result.max_abs_error


@pytest.mark.parametrize("layer", [lambda b: Flatten(backend=b), lambda b: Reshape((10, 2), backend=b)],
                         ids=["flatten", "reshape"])
def test_shape_layers_gradcheck(backend, layer):
    assert bp.gradcheck(layer(backend), backend.from_host(_host((2, 4, 5))), max_elements=20).ok


@pytest.mark.parametrize("name", CONVS)
def test_conv_backward_matches_torch_autograd(backend, name):
    layer, shape = _conv(backend, name)
    host_x = _host(shape)
    y, backprop = layer.begin_update(backend.from_host(host_x))
    host_g = _host(tuple(y.shape), seed=3)
    dx = backprop(backend.from_host(host_g))
    tx = torch.from_numpy(host_x).requires_grad_()
    tw = torch.from_numpy(backend.to_host(layer.params["weight"].value)).requires_grad_()
    tb = torch.from_numpy(backend.to_host(layer.params["bias"].value)).requires_grad_() if layer.use_bias else None
    F.conv2d(tx, tw, tb, layer.stride, layer.padding, layer.dilation).backward(torch.from_numpy(host_g))
    np.testing.assert_allclose(backend.to_host(dx), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(backend.to_host(layer.params["weight"].grad), tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    if tb is not None:
        np.testing.assert_allclose(backend.to_host(layer.params["bias"].grad), tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", POOLS)
def test_pool_backward_matches_torch_autograd(backend, name):
    build, shape, reference = POOLS[name]
    layer = build(backend)
    host_x = _host(shape)
    y, backprop = layer.begin_update(backend.from_host(host_x))
    host_g = _host(tuple(y.shape), seed=3)
    dx = backprop(backend.from_host(host_g))
    tx = torch.from_numpy(host_x).requires_grad_()
    reference(tx).backward(torch.from_numpy(host_g))
    np.testing.assert_allclose(backend.to_host(dx), tx.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CONVS)
def test_fast_path_equals_portable_path(backend, name):
    fast, shape = _conv(backend, name, fast=True)
    portable, _ = _conv(backend, name, fast=False)
    x = backend.from_host(_host(shape))
    (y_fast, fast_backprop), (y_portable, portable_backprop) = fast.begin_update(x), portable.begin_update(x)
    np.testing.assert_allclose(backend.to_host(y_fast), backend.to_host(y_portable), rtol=1e-5, atol=1e-5)
    g = backend.from_host(_host(tuple(y_fast.shape), seed=4))
    np.testing.assert_allclose(backend.to_host(fast_backprop(g)), backend.to_host(portable_backprop(g)),
                               rtol=1e-5, atol=1e-5)
    for key in fast.params:
        np.testing.assert_allclose(backend.to_host(fast.params[key].grad), backend.to_host(portable.params[key].grad),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["plain", "stride_padding", "dilation"])
def test_numpy_weight_gradient_in_cache_sized_blocks(monkeypatch, name):
    """NumPy's products with the im2col columns run in blocks of GEMM_CHUNK columns when there are many (large
    batches and images): blocks of 8 here, so these small layers take that path, and it must agree with the
    portable path."""
    from backends import numpy_backend

    monkeypatch.setattr(numpy_backend, "GEMM_CHUNK", 8)
    test_fast_path_equals_portable_path(bp.get_backend("numpy"), name)


def test_max_pool_ties_go_to_one_pixel_consistently(backend):
    # one 2x2 window holding 5 four times, one with two 7s in its right column, one with two 4s in its top row
    host_x = np.array([[[[5, 5, 1, 7, 4, 4],
                         [5, 5, 2, 7, 0, 1]]]], dtype=np.float32)
    layer = MaxPool2D(2, backend=backend)
    y, backprop = layer.begin_update(backend.from_host(host_x))
    np.testing.assert_array_equal(backend.to_host(y), [[[[5, 7, 4]]]])
    dx = backend.to_host(backprop(backend.from_host(np.array([[[[1, 2, 3]]]], dtype=np.float32))))
    # the leftmost column of the window that holds the maximum, then its topmost pixel
    np.testing.assert_array_equal(dx, [[[[1, 0, 0, 2, 3, 0],
                                         [0, 0, 0, 0, 0, 0]]]])


def _max_pool_backward_reference(x, grad_output, kernel, stride, padding):
    """Max-pool backward by loops over the windows, as MaxPool2D documents it: each window's whole gradient goes
    to exactly one pixel, the topmost maximum of the leftmost column that holds the window's maximum."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    grad = np.zeros_like(padded)
    n, c, oh, ow = grad_output.shape
    for b, ch, i, j in itertools.product(range(n), range(c), range(oh), range(ow)):
        window = padded[b, ch, i * sh:i * sh + kh, j * sw:j * sw + kw]
        column = int(np.flatnonzero((window == window.max()).any(axis=0))[0])
        row = int(np.flatnonzero(window[:, column] == window.max())[0])
        grad[b, ch, i * sh + row, j * sw + column] += grad_output[b, ch, i, j]
    return grad[:, :, ph:padded.shape[2] - ph, pw:padded.shape[3] - pw]


@pytest.mark.parametrize("kernel, stride, padding", [((3, 3), (3, 3), (0, 0)), ((3, 3), (1, 1), (0, 0)),
                                                     ((4, 3), (2, 1), (1, 1)), ((3, 4), (2, 3), (1, 2))],
                         ids=["3x3", "3x3_overlapping", "4x3_padded", "3x4_padded"])
def test_max_pool_ties_in_large_windows_route_each_window_to_one_pixel(backend, kernel, stride, padding):
    """Windows of 3 or more rows and columns, where the tie-breaking passes over middle rows and columns. Few
    distinct values make ties in nearly every window; distinct gradients show where each one went."""
    rng = np.random.default_rng(5)
    host_x = rng.integers(0, 3, size=(2, 2, 9, 10)).astype(np.float32)
    layer = MaxPool2D(kernel, stride=stride, padding=padding, backend=backend)
    y, backprop = layer.begin_update(backend.from_host(host_x))
    expected_y = F.max_pool2d(torch.from_numpy(host_x), kernel, stride=stride, padding=padding).numpy()
    np.testing.assert_array_equal(backend.to_host(y), expected_y)
    host_g = (1 + np.arange(expected_y.size, dtype=np.float32).reshape(expected_y.shape)) / 8  # exact in float32
    dx = backprop(backend.from_host(host_g))
    assert_on_backend(dx, backend, shape=host_x.shape)
    reference = _max_pool_backward_reference(host_x, host_g, kernel, stride, padding)
    np.testing.assert_array_equal(backend.to_host(dx), reference)
    # what PyTorch's rule shares with ours: each window's gradient reaches one pixel, so none is lost or doubled
    torch_x = torch.from_numpy(host_x).requires_grad_()
    F.max_pool2d(torch_x, kernel, stride=stride, padding=padding).backward(torch.from_numpy(host_g))
    assert float(backend.to_host(dx).sum()) == float(torch_x.grad.sum()) == float(host_g.sum())


# --------------------------------------------------------------------------------- dtypes, devices, errors


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "portable"])
def test_outputs_and_gradients_live_on_the_backend(backend, fast):
    conv, _ = _conv(backend, "stride_padding", fast)
    layers = [conv, MaxPool2D(2, backend=backend), AvgPool2D(2, padding=1, backend=backend),
              Flatten(backend=backend)]
    shapes = [(2, 3, 4, 3), (2, 3, 2, 1), (2, 3, 2, 1), (2, 6)]
    x = backend.from_host(_host((2, 2, 7, 6)))
    inputs, backprops = [], []
    for layer, shape in zip(layers, shapes):
        inputs.append(x)
        x, backprop = layer.begin_update(x)
        backprops.append(backprop)
        assert_on_backend(x, backend, shape=shape)
    grad = ones_like(backend, x)
    for backprop, layer_input in zip(reversed(backprops), reversed(inputs)):
        grad = backprop(grad)
        assert_on_backend(grad, backend, shape=layer_input.shape)
    for key, value in conv.named_gradients().items():
        assert_on_backend(value, backend, shape=conv.params[key].value.shape)


@pytest.mark.parametrize("fast", [True, False], ids=["fast_path", "portable"])
def test_float64_layers(backend, fast):
    if not backend.supports_float64:
        pytest.skip(f"{backend.name} has no float64")
    f64 = backend.xp.float64
    conv = Conv2D(1, 2, 3, padding=1, rng=0, backend=backend, dtype="float64")
    conv.use_fast_path = fast
    model = bp.Sequential([conv, MaxPool2D(2, backend=backend, dtype="float64"),
                           Flatten(backend=backend, dtype="float64")])
    y, backprop = model.begin_update(backend.from_host(_host((2, 1, 4, 4)), dtype=f64))
    assert_on_backend(y, backend, dtype_name="float64", shape=(2, 8))
    assert_on_backend(backprop(ones_like(backend, y)), backend, dtype_name="float64", shape=(2, 1, 4, 4))
    assert_on_backend(conv.params["weight"].grad, backend, dtype_name="float64", shape=(2, 1, 3, 3))


def _one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("shape, fragments", [
    ((2, 3, 8, 8), ["Conv2D(2, 4, kernel_size=(3, 3))", "expected input of shape (batch, 2, H, W)", "(2, 3, 8, 8)"]),
    ((2, 8, 8), ["Conv2D(2, 4", "expected input of shape (batch, 2, H, W)", "got (2, 8, 8)"]),
    ((2, 2, 2, 8), ["Conv2D(2, 4", "(2, 2, 2, 8) is too small", "(batch, C, H >= 3, W >= 3)"]),
])
def test_conv_bad_input_shapes(backend, shape, fragments):
    layer = Conv2D(2, 4, 3, rng=0, backend=backend)
    with pytest.raises(ShapeError) as excinfo:
        layer(backend.from_host(np.zeros(shape, np.float32)))
    _one_line_error(excinfo, *fragments)


def test_conv_too_small_counts_padding_and_dilation():
    layer = Conv2D(1, 1, 3, padding=1, dilation=3, backend="numpy")
    with pytest.raises(ShapeError) as excinfo:
        layer(np.zeros((1, 1, 4, 9), np.float32))
    _one_line_error(excinfo, "padded size (6, 11)", "kernel's span (7, 7)", "H >= 5, W >= 5")
    assert layer(np.zeros((1, 1, 5, 5), np.float32)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("build, shape, fragments", [
    (lambda b: MaxPool2D(2, backend=b), (2, 8, 8), ["MaxPool2D(kernel_size=(2, 2))", "(batch, channels, H, W)",
                                                    "got (2, 8, 8)"]),
    (lambda b: AvgPool2D(3, backend=b), (1, 1, 2, 5), ["AvgPool2D(kernel_size=(3, 3))", "too small"]),
    (lambda b: Flatten(backend=b), (5,), ["Flatten()", "(batch, ...)", "got (5,)"]),
    (lambda b: Reshape((2, 3), backend=b), (4, 5), ["Reshape((2, 3))", "(batch, 6)", "got (4, 5)"]),
])
def test_other_layers_bad_input_shapes(backend, build, shape, fragments):
    with pytest.raises(ShapeError) as excinfo:
        build(backend)(backend.from_host(np.zeros(shape, np.float32)))
    _one_line_error(excinfo, *fragments)


def test_conv_wrong_dtype_names_the_layer():
    with pytest.raises(DTypeError, match=re.escape("Conv2D(1, 1, kernel_size=(2, 2)): expected float32")):
        Conv2D(1, 1, 2, backend="numpy")(np.zeros((1, 1, 3, 3), np.float64))


@pytest.mark.parametrize("build, fragment", [
    (lambda: Conv2D(0, 2, 3), "in_channels must be a positive integer, got 0"),
    (lambda: Conv2D(1, 2.5, 3), "out_channels must be a positive integer, got 2.5"),
    (lambda: Conv2D(1, 2, 0), "kernel_size must be an integer >= 1 or a pair (h, w) of them, got 0"),
    (lambda: Conv2D(1, 2, (3, 3, 3)), "kernel_size must be an integer >= 1"),
    (lambda: Conv2D(1, 2, 3, stride=0), "stride must be an integer >= 1"),
    (lambda: Conv2D(1, 2, 3, padding=-1), "padding must be an integer >= 0"),
    (lambda: Conv2D(1, 2, 3, dilation=(1, 0)), "dilation must be an integer >= 1"),
    (lambda: Conv2D(1, 2, 3, bias="yes"), "bias must be True or False"),
    (lambda: Conv2D(1, 2, 3, init="nope"), "unknown initializer 'nope'"),
    (lambda: MaxPool2D(2, padding=2), "MaxPool2D: padding must be at most half the kernel size"),
    (lambda: AvgPool2D((2, 2), stride=(1, True)), "AvgPool2D: stride must be an integer >= 1"),
    (lambda: Reshape((2, 0)), "Reshape: shape must be a non-empty tuple of positive integers"),
])
def test_bad_hyperparameters(build, fragment):
    with pytest.raises(ConfigError) as excinfo:
        build()
    _one_line_error(excinfo, fragment)


# ---------------------------------------------------------------------------------- models, saving, training


def _tiny_cnn(backend, seed=0):
    return bp.Sequential([Conv2D(1, 4, 3, padding=1, rng=seed, backend=backend), bp.ReLU(backend=backend),
                          MaxPool2D(2, backend=backend), Flatten(backend=backend),
                          bp.Dense(4 * 3 * 3, 2, rng=seed + 1, backend=backend)])


def _stripes(n=48, seed=0):
    """6x6 images of a horizontal (class 0) or vertical (class 1) bar, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = 0.1 * rng.normal(size=(n, 1, 6, 6)).astype(np.float32)
    where = rng.integers(0, 6, n)
    for i in range(n):
        if labels[i]:
            images[i, 0, :, where[i]] += 1
        else:
            images[i, 0, where[i], :] += 1
    return images, labels.astype(np.int64)


def test_tiny_cnn_trains_with_fit(backend):
    x, y = _stripes()
    model = _tiny_cnn(backend)
    history = bp.fit(model, x, y, epochs=6, batch_size=8, optimizer="adam", lr=0.05, progress=False, log=None)
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    for param in weights(model).values():
        assert_on_backend(param, backend)


def test_config_rebuilds_and_model_files_round_trip(tmp_path, monkeypatch):
    from backprop.layers import LAYER_TYPES, architecture, build

    for cls in (Conv2D, MaxPool2D, AvgPool2D, Flatten, Reshape):  # what backprop/layers/__init__.py should list
        monkeypatch.setitem(LAYER_TYPES, cls.__name__, cls)
    model = bp.Sequential([Reshape((1, 6, 6), backend="numpy"),
                           Conv2D(1, 3, (3, 2), stride=(1, 2), padding=(1, 0), dilation=(2, 1), bias=False,
                                  init="glorot_normal", rng=0, backend="numpy"),
                           AvgPool2D(2, stride=1, padding=1, backend="numpy"), MaxPool2D(3, stride=2, backend="numpy"),
                           Flatten(backend="numpy"), bp.Dense(6, 2, rng=1, backend="numpy")])
    rebuilt = build(architecture(model), backend="numpy")
    assert repr(rebuilt) == repr(model)
    assert [architecture(layer) for layer in rebuilt.layers] == [architecture(layer) for layer in model.layers]
    path = tmp_path / "cnn.safetensors"
    bp.save_model(path, model)
    loaded = bp.load_model(path, backend="numpy")
    x = _host((3, 36))
    np.testing.assert_array_equal(loaded(x), model(x))


def test_to_moves_a_cnn_between_backends(backend):
    model = _tiny_cnn("numpy", seed=3)
    moved = model.to(backend)
    host_x, _ = _stripes(4)
    y = moved(backend.from_host(host_x))
    assert_on_backend(y, backend, shape=(4, 2))
    np.testing.assert_allclose(backend.to_host(y), model(host_x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ example


def test_cnn_digits_example_runs_one_epoch(capsys):
    from backprop.examples import cnn_digits

    assert cnn_digits.main(["--epochs", "1", "--batch-size", "64", "--no-progress", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "digits: 1437 train / 360 test" in out
    accuracy = float(re.search(r"test: loss [\d.]+  accuracy ([\d.]+)%", out).group(1))
    assert 20 < accuracy <= 100  # one epoch is well above chance (10%)


def test_cnn_digits_example_on_mnist_files_saves_a_model(tmp_path, capsys, monkeypatch):
    from backprop.data import downloads, write_idx
    from backprop.examples import cnn_digits
    from backprop.layers import LAYER_TYPES

    def refuse(name):
        raise AssertionError(f"tried to download {name}")

    monkeypatch.setattr(downloads, "fetch", refuse)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 28, 28)), np.arange(16) % 10, rng.integers(0, 256, (6, 28, 28)),
              np.arange(6) % 10]
    for name, array in zip(downloads.IDX_FILES, arrays):
        write_idx(tmp_path / name, array.astype(np.uint8))
    out_dir = tmp_path / "run"
    argv = ["--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1", "--batch-size", "8", "--no-progress",
            "--backend", "numpy", "--output", str(out_dir)]
    assert cnn_digits.main(argv) == 0
    out = capsys.readouterr().out
    assert "mnist: 16 train / 6 test samples, 784 features (28x28 images)" in out
    assert re.search(r"test: loss [\d.]+  accuracy [\d.]+%", out)
    for cls in (Conv2D, MaxPool2D, Flatten):
        monkeypatch.setitem(LAYER_TYPES, cls.__name__, cls)
    model = bp.load_model(out_dir / "model.safetensors", backend="numpy")
    metadata = model.metadata
    assert metadata["input_shape"] == [1, 28, 28] and metadata["dataset"] == "mnist"
    assert model(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)


def test_cnn_digits_example_rejects_bad_options():
    from backprop.examples import cnn_digits

    with pytest.raises(ConfigError, match="--epochs must be a positive integer, got 0"):
        cnn_digits.main(["--epochs", "0"])


def test_cnn_benchmark_smoke(tmp_path):
    from benchmarks import cnn_vs_torch

    argv = ["--images", "256", "--repeats", "1", "--warmup", "0", "--threads", "1", "--output-dir", str(tmp_path)]
    assert cnn_vs_torch.main(argv) == 0
    result = json.loads((tmp_path / "cnn_cpu.json").read_text())
    assert set(result["epoch_seconds"]) == {"ours (numpy)", "torch (cpu)"} and result["ratio_ours_over_torch"] > 0
    assert abs(result["first_batch_loss"]["ours"] - result["first_batch_loss"]["torch"]) < 1e-4
    assert "Ratio ours/torch" in (tmp_path / "cnn_cpu.md").read_text()


def test_first_convolution_can_skip_its_input_gradient(backend):
    import backprop as bp
    from backprop.layers import Conv2D, Flatten

    model = bp.Sequential([Conv2D(2, 3, 3, rng=0, backend=backend), bp.ReLU(backend=backend), Flatten(backend=backend),
                           bp.Dense(3 * 3 * 3, 2, rng=1, backend=backend)])
    x = backend.from_host(np.random.default_rng(0).normal(size=(2, 2, 5, 5)).astype(np.float32))
    grad = backend.from_host(np.ones((2, 2), np.float32))
    _, backprop = model.begin_update(x)
    full_input_grad = backprop(grad)
    assert full_input_grad.shape == (2, 2, 5, 5)
    full = {k: backend.to_host(v) for k, v in model.named_gradients().items()}
    model.zero_grad()
    _, backprop = model.begin_update(x)
    assert backprop(grad, input_grad=False) is None
    for name, value in model.named_gradients().items():
        np.testing.assert_allclose(backend.to_host(value), full[name], rtol=1e-6)
    layer = Conv2D(2, 3, 3, rng=0, backend=backend)
    layer.use_fast_path = False
    _, backprop = layer.begin_update(x)
    assert backprop(backend.from_host(np.ones((2, 3, 3, 3), np.float32)), input_grad=False) is None


# -- the portable convolution is the backends' default (issue 14) ------------------------------------------------------

def test_the_portable_convolution_is_the_base_class_default(backend):
    """Before: ``Backend.conv2d_forward`` returned None and ``Conv2D`` ran im2col code of its own. Now the
    portable convolution is the default itself, on every backend (called through the base class here, so the
    backends that override it run it too)."""
    from backends import Backend

    layer, shape = _conv(backend, "stride_padding")
    host_x = _host(shape)
    weight, bias = layer.params["weight"].value, layer.params["bias"].value
    with backend.activate():
        y, saved = Backend.conv2d_forward(backend, backend.from_host(host_x), weight, bias, stride=layer.stride,
                                          padding=layer.padding, dilation=layer.dilation)
        host_grad = _host(tuple(y.shape), seed=3)
        grad_input, grad_weight, grad_bias = Backend.conv2d_backward(backend, backend.from_host(host_grad), saved,
                                                                     bias=True)
    torch_x = torch.from_numpy(host_x).requires_grad_()
    torch_w = torch.from_numpy(backend.to_host(weight)).requires_grad_()
    torch_b = torch.from_numpy(backend.to_host(bias)).requires_grad_()
    expected = F.conv2d(torch_x, torch_w, torch_b, layer.stride, layer.padding, layer.dilation)
    expected.backward(torch.from_numpy(host_grad))
    pairs = ((y, expected), (grad_input, torch_x.grad), (grad_weight, torch_w.grad), (grad_bias, torch_b.grad))
    for got, want in pairs:
        assert_on_backend(got, backend, shape=tuple(want.shape))
        np.testing.assert_allclose(backend.to_host(got), want.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_conv2d_runs_the_backends_convolution_and_nothing_of_its_own(backend, monkeypatch):
    """``Conv2D`` calls the backend's pair of methods, whichever backend (before: a backend without a fast path
    returned None from ``conv2d_forward`` and the layer ran its own path, never calling ``conv2d_backward``)."""
    calls = []
    forward, backward = backend.conv2d_forward, backend.conv2d_backward
    monkeypatch.setattr(backend, "conv2d_forward", lambda *a, **k: calls.append("forward") or forward(*a, **k))
    monkeypatch.setattr(backend, "conv2d_backward", lambda *a, **k: calls.append("backward") or backward(*a, **k))
    layer, shape = _conv(backend, "plain")
    y, backprop = layer.begin_update(backend.from_host(_host(shape)))
    grad_input = backprop(ones_like(backend, y))
    assert calls == ["forward", "backward"]
    assert_on_backend(grad_input, backend, shape=shape)
