"""Bad input gets a one-line error that names the layer and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp


def test_dense_wrong_feature_count(backend):
    layer = bp.Dense(4, 2, backend=backend)
    x = backend.from_host(np.ones((3, 5), np.float32))
    with pytest.raises(bp.ShapeError, match=r"^Dense\(4, 2\): expected input of shape \(batch, 4\), got \(3, 5\)$"):
        layer(x)


def test_dense_wrong_rank(backend):
    layer = bp.Dense(4, 2, backend=backend)
    with pytest.raises(bp.ShapeError, match=r"expected input of shape \(batch, 4\), got \(4,\)"):
        layer(backend.from_host(np.ones(4, np.float32)))


def test_wrong_dtype(backend):
    layer = bp.Dense(4, 2, backend=backend)
    x = backend.from_host(np.ones((3, 4), np.int32))
    with pytest.raises(bp.DTypeError, match=r"Dense\(4, 2\): expected float32 input, got int32"):
        layer(x)


def test_arrays_from_two_backends(backend):
    other = bp.get_backend("array_api_strict" if backend.name == "numpy" else "numpy")
    layer = bp.Tanh(backend=backend)
    x = other.from_host(np.ones((2, 2), np.float32))
    with pytest.raises(bp.DeviceMismatchError, match=rf"Tanh\(\): input is .*but the layer lives on backend "
                                                      rf"{backend.name}"):
        layer(x)


def test_strict_device_mismatch_is_caught():
    layer = bp.Dense(2, 2, backend="array_api_strict:device1")
    x = bp.get_backend("array_api_strict").from_host(np.ones((1, 2), np.float32))
    with pytest.raises(bp.DeviceMismatchError, match="device1"):
        layer(x)


def test_loss_with_mixed_backends(backend):
    other = bp.get_backend("array_api_strict" if backend.name == "numpy" else "numpy")
    pred = backend.from_host(np.ones((2, 3), np.float32))
    labels = other.from_host(np.array([0, 1]))
    with pytest.raises(bp.DeviceMismatchError, match="CrossEntropy"):
        bp.CrossEntropy()(pred, labels)


def test_loss_shape_errors(backend):
    pred = backend.from_host(np.ones((2, 3), np.float32))
    with pytest.raises(bp.ShapeError, match=r"CrossEntropy\(\): expected integer labels of shape \(2,\), got \(3,\)"):
        bp.CrossEntropy()(pred, backend.from_host(np.array([0, 1, 2])))
    with pytest.raises(bp.ShapeError, match=r"MSE\(\): expected target of shape \(2, 3\)"):
        bp.MSE()(pred, backend.from_host(np.ones((3, 2), np.float32)))


@pytest.mark.parametrize("bad, message", [
    (lambda: bp.Dense(0, 3), "in_features must be a positive integer, got 0"),
    (lambda: bp.Dense(3, 2.5), "out_features must be a positive integer, got 2.5"),
    (lambda: bp.Dense(3, 2, init="magic"), "unknown initializer 'magic'"),
    (lambda: bp.LeakyReLU(-1.0), r"negative_slope must be a finite number in \[0, 1\]"),
    (lambda: bp.mlp([3, 0, 2]), "expected at least two positive integer layer sizes"),
    (lambda: bp.mlp([3, 2], activation_name="swish"), "unknown activation 'swish'"),
    (lambda: bp.SGD(bp.mlp([2, 2]), lr=-0.1), "learning rate must be a positive finite number, got -0.1"),
    (lambda: bp.SGD(bp.mlp([2, 2]), lr=float("nan")), "learning rate must be a positive finite number"),
    (lambda: bp.Sequential([]), "expected at least one layer"),
    (lambda: bp.Sequential([bp.Dense(2, 2), "relu"]), "item 1 is a str, not a Layer"),
])
def test_bad_hyperparameters(bad, message):
    with pytest.raises(bp.ConfigError, match=message):
        bad()


def test_layers_on_different_backends_cannot_be_chained():
    with pytest.raises(bp.ConfigError, match="layer 1 .* is on backend array_api_strict"):
        bp.Sequential([bp.Dense(2, 2, backend="numpy"), bp.ReLU(backend="array_api_strict")])


def test_a_layer_without_begin_update_says_so():
    class Unfinished(bp.Layer):
        pass

    with pytest.raises(NotImplementedError, match="^Unfinished does not implement begin_update$"):
        Unfinished(backend="numpy")(np.ones((1, 2), np.float32))


def test_error_messages_are_one_line(backend):
    layer = bp.Dense(4, 2, backend=backend)
    with pytest.raises(bp.BackpropError) as info:
        layer(backend.from_host(np.ones((3, 5), np.float32)))
    assert "\n" not in str(info.value)
