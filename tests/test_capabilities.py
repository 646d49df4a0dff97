"""The fused and multi-tensor capabilities of every backend (``backends/base.py``: portable defaults; NumPy,
PyTorch and CuPy override them) against NumPy references written here in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backends.base import FUSED_ACTIVATIONS, METRICS, Backend, FlatTensors

from conftest import assert_on_backend

SHAPES = [(4, 5), (5,), (5, 3), (3,)]  # one small MLP's parameters


def _activation(z, name, slope=0.1):
    if name is None:
        return z
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z > 0, z, slope * z)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))


def _derivative(z, name, slope=0.1, h=1e-6):
    return (_activation(z + h, name, slope) - _activation(z - h, name, slope)) / (2 * h)


def test_dense_forward_and_backward_fuse_bias_and_activation(backend):
    host = np.random.default_rng(0)
    x, w = host.normal(size=(2, 3, 4)), host.normal(size=(4, 5))
    b, dy = host.normal(size=5), host.normal(size=(2, 3, 5))
    for activation in FUSED_ACTIVATIONS:
        for bias in (b, None):
            z = x @ w + (0 if bias is None else bias)
            y, saved = backend.dense_forward(backend.from_host(x), backend.from_host(w),
                                             None if bias is None else backend.from_host(bias), activation,
                                             negative_slope=0.1)
            assert_on_backend(y, backend, shape=(2, 3, 5))
            np.testing.assert_allclose(backend.to_host(y), _activation(z, activation), rtol=1e-5, atol=1e-5,
                                       err_msg=str(activation))
            dz = dy * _derivative(z, activation)
            dx, dw, db = backend.dense_backward(backend.from_host(dy), saved)
            for got, want, shape in ((dx, dz @ w.T, x.shape), (dw, x.reshape(-1, 4).T @ dz.reshape(-1, 5), w.shape)):
                assert_on_backend(got, backend, shape=shape)
                np.testing.assert_allclose(backend.to_host(got), want, rtol=1e-4, atol=1e-4, err_msg=str(activation))
            if bias is None:
                assert db is None
            else:
                np.testing.assert_allclose(backend.to_host(db), dz.sum(axis=(0, 1)), rtol=1e-4, atol=1e-4)
    # the first layer skips dL/dx; a gradient buffer of the backend's own is written into where it has them
    _, saved = backend.dense_forward(backend.from_host(x[0]), backend.from_host(w), backend.from_host(b), "relu")
    made = backend.flat_buffer([(4, 5), (5,)], backend.float_dtype)
    outs = made[1] if made is not None else [None, None]
    dx, dw, db = backend.dense_backward(backend.from_host(dy[0]), saved, input_grad=False, weight_grad_out=outs[0],
                                        bias_grad_out=outs[1])
    assert dx is None
    dz = dy[0] * (x[0] @ w + b > 0)
    np.testing.assert_allclose(backend.to_host(dw), x[0].T @ dz, rtol=1e-4, atol=1e-4)
    if made is not None:
        assert dw is outs[0] and db is outs[1]  # written where the flat gradient buffer has its views
        np.testing.assert_allclose(backend.to_host(made[0])[:20], (x[0].T @ dz).ravel(), rtol=1e-4, atol=1e-4)


def _cross_entropy(z, labels):
    shifted = z - z.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(log_probs, labels[..., None], axis=-1)
    n = labels.size
    grad = np.exp(log_probs)
    np.put_along_axis(grad, labels[..., None], np.take_along_axis(grad, labels[..., None], axis=-1) - 1, axis=-1)
    return -picked.sum() / n, grad / n, int((z.argmax(axis=-1) == labels).sum())


@pytest.mark.parametrize("label_dtype", ["int64", "int32"])
def test_softmax_cross_entropy_with_integer_labels_and_the_step_metrics(backend, label_dtype):
    host = np.random.default_rng(1)
    logits, labels = host.normal(size=(2, 3, 4)) * 3, host.integers(0, 4, (2, 3)).astype(label_dtype)
    logits[0, 0] = [1e4, -1e4, 0, 5]  # large logits stay finite
    loss_ref, grad_ref, correct_ref = _cross_entropy(logits, labels)
    with backend.activate():
        metrics = backend.xp.asarray([1.0, 2.0, 0.0, 3.0], dtype=backend.float_dtype, device=backend.device)
    loss, grad, metrics = backend.softmax_cross_entropy(backend.from_host(logits), backend.from_host(labels),
                                                        grad_scale=0.5, metrics=metrics)
    assert_on_backend(loss, backend, shape=())
    assert_on_backend(grad, backend, shape=logits.shape)
    assert_on_backend(metrics, backend, shape=(len(METRICS),))
    np.testing.assert_allclose(float(backend.to_host(loss)), loss_ref, rtol=1e-5)
    np.testing.assert_allclose(backend.to_host(grad), 0.5 * grad_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(backend.to_host(metrics), [1 + 2 * loss_ref, 2 + correct_ref, 0, 3], rtol=1e-5)
    loss, grad, none = backend.softmax_cross_entropy(backend.from_host(logits), backend.from_host(labels),
                                                     with_grad=False)
    assert grad is None and none is None
    np.testing.assert_allclose(float(backend.to_host(loss)), loss_ref, rtol=1e-5)
    metrics = backend.close_step_metrics(metrics)  # no loss so far was not finite: one more good step
    np.testing.assert_allclose(backend.to_host(metrics)[3], 4)
    with backend.activate():
        nan = backend.xp.asarray(float("nan"), dtype=backend.float_dtype, device=backend.device)
        correct = backend.xp.asarray(2, device=backend.device)
    metrics = backend.close_step_metrics(backend.add_step_metrics(metrics, nan, correct, 5))
    figures = backend.to_host(metrics)
    assert np.isnan(figures[0]) and figures[1] == 2 + correct_ref + 2
    assert figures[2] == 1 and figures[3] == 4  # a NaN loss: counted, and the good steps stop


def _arrays(backend, host_arrays, flat: bool):
    """The arrays on the backend, as ``FlatTensors`` over one flat buffer when ``flat`` (and the backend makes
    them), else a list."""
    if flat:
        made = backend.flat_buffer([a.shape for a in host_arrays], backend.float_dtype)
        if made is None:
            return None
        views = [backend.at_set(view, ..., backend.from_host(a)) for view, a in zip(made[1], host_arrays)]
        return FlatTensors(views, made[0])
    return [backend.from_host(a) for a in host_arrays]


OPTIMIZERS = {
    "sgd": ("multi_tensor_sgd", 0, {"momentum": 0.0}),
    "nesterov-wd": ("multi_tensor_sgd", 1, {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    "adam": ("multi_tensor_adam", 2, {"step": 3, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1}),
    "adamw": ("multi_tensor_adam", 2, {"step": 3, "beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
                                       "decoupled_weight_decay": True}),
    "rmsprop": ("multi_tensor_rmsprop", 1, {"alpha": 0.9, "eps": 1e-8, "momentum": 0.0}),
    "rmsprop-momentum": ("multi_tensor_rmsprop", 2, {"alpha": 0.9, "eps": 1e-8, "momentum": 0.5}),
    "adagrad": ("multi_tensor_adagrad", 1, {"eps": 1e-10, "weight_decay": 0.01}),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_multi_tensor_updates_equal_the_portable_update_over_flat_buffers_and_device_scalars(backend, name):
    method, buffers, options = OPTIMIZERS[name]
    host = np.random.default_rng(2)
    params = [host.normal(size=s).astype(np.float32) for s in SHAPES]
    grads = [host.normal(size=s).astype(np.float32) for s in SHAPES]
    states = [[np.abs(host.normal(size=s)).astype(np.float32) for s in SHAPES] for _ in range(buffers)]
    if name == "rmsprop":
        states.append(None)  # no momentum buffers
    numpy_backend = _numpy()
    expected = getattr(Backend, method)(numpy_backend, [p.copy() for p in params], [g.copy() for g in grads],
                                        *[None if s is None else [a.copy() for a in s] for s in states], lr=0.05,
                                        **options)
    for flat in (False, True):
        for device_lr in (False, True):
            lists = [_arrays(backend, a, flat) if a is not None else None for a in (params, grads, *states)]
            if any(lst is None for lst, a in zip(lists, (params, grads, *states)) if a is not None):
                continue  # no flat buffers on this backend
            lr = backend.set_scalar(None, 0.05) if device_lr else 0.05
            step = options.get("step")
            extra = {"step": backend.set_scalar(None, float(step))} if device_lr and step else {}
            results = getattr(backend, method)(*lists, lr=lr, **{**options, **extra})
            for got, want in zip(results, expected):
                if want is None:
                    assert got is None
                    continue
                for g, w in zip(got, want):
                    assert_on_backend(g, backend, shape=w.shape)
                    np.testing.assert_allclose(backend.to_host(g), w, rtol=2e-6, atol=1e-7,
                                               err_msg=f"{name} flat={flat} device_lr={device_lr}")
            if flat:  # updated in place: the views are the results, the flat array holds them
                assert results[0] is lists[0]
                np.testing.assert_allclose(backend.to_host(lists[0].flat)[:20], expected[0][0].ravel(), rtol=2e-6)


def test_norms_clipping_and_scaling_of_many_arrays_at_once(backend):
    host = np.random.default_rng(3)
    arrays = [host.normal(size=s).astype(np.float32) for s in SHAPES]
    norms_ref = np.array([np.sqrt((a.astype(np.float64) ** 2).sum()) for a in arrays])
    for flat in (False, True):
        lists = _arrays(backend, arrays, flat)
        if lists is None:
            continue
        norms = backend.tensor_norms(lists)
        assert_on_backend(norms, backend, shape=(len(arrays),))
        np.testing.assert_allclose(backend.to_host(norms), norms_ref, rtol=1e-5)
        sums = backend.tensor_norms(lists, add_to=backend.from_host(np.ones(len(arrays), dtype=np.float32)))
        np.testing.assert_allclose(backend.to_host(sums), norms_ref + 1, rtol=1e-5)
        coefficient = backend.clip_coefficient(norms, 1.5)
        assert_on_backend(coefficient, backend, shape=())
        total = np.sqrt((norms_ref ** 2).sum())
        np.testing.assert_allclose(float(backend.to_host(coefficient)), min(1.0, 1.5 / (total + 1e-6)), rtol=1e-5)
        scaled = backend.multi_tensor_scale(lists, coefficient)
        for got, want in zip(scaled, arrays):
            np.testing.assert_allclose(backend.to_host(got), want * 1.5 / total, rtol=1e-5)
        with backend.activate():
            small = norms * 0.01
        assert float(backend.to_host(backend.clip_coefficient(small, 1.5))) == 1.0  # small norms: left alone


def _numpy():
    from backends import get_backend

    return get_backend("numpy")
