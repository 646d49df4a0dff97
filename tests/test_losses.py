"""Losses on every backend: values against NumPy, gradients by gradcheck, stability."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp

import reference as ref
from conftest import assert_on_backend


def _data(backend, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=6)
    targets = rng.uniform(size=(6, 4)).astype(np.float32)
    binary = (rng.uniform(size=(6, 4)) > 0.5).astype(np.float32)
    return logits, labels, targets, binary


CASES = {
    "mse": (bp.MSE, lambda lg, lb, t, bi: (lg, t), ref.mse),
    "cross_entropy_labels": (bp.CrossEntropy, lambda lg, lb, t, bi: (lg, lb), ref.cross_entropy),
    "binary_cross_entropy": (bp.BinaryCrossEntropy, lambda lg, lb, t, bi: (lg, bi), ref.binary_cross_entropy),
}


@pytest.mark.parametrize("name", CASES)
def test_loss_value_matches_numpy(backend, name):
    cls, pick, reference = CASES[name]
    host_pred, host_target = pick(*_data(backend))
    pred, target = backend.from_host(host_pred), backend.from_host(host_target)
    value = cls()(pred, target)
    assert_on_backend(value, backend, shape=())
    np.testing.assert_allclose(float(backend.to_host(value)), reference(host_pred, host_target), rtol=1e-5)


@pytest.mark.parametrize("name", CASES)
def test_loss_gradient_passes_gradcheck(backend, name):
    cls, pick, _ = CASES[name]
    host_pred, host_target = pick(*_data(backend))
    pred, target = backend.from_host(host_pred), backend.from_host(host_target)
    loss = cls()
    value, grad = loss.value_and_grad(pred, target)
    assert_on_backend(value, backend, shape=())
    assert_on_backend(grad, backend, shape=pred.shape)
    np.testing.assert_array_equal(backend.to_host(value), backend.to_host(loss(pred, target)))
    assert bp.gradcheck(loss, pred, target).ok


def test_cross_entropy_with_probabilities_equals_labels(backend):
    logits, labels, _, _ = _data(backend)
    one_hot = np.eye(4, dtype=np.float32)[labels]
    with_labels = bp.CrossEntropy()(backend.from_host(logits), backend.from_host(labels))
    with_probs = bp.CrossEntropy()(backend.from_host(logits), backend.from_host(one_hot))
    np.testing.assert_allclose(backend.to_host(with_labels), backend.to_host(with_probs), rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits(backend):
    logits = backend.from_host(np.array([[1000.0, 0.0, -1000.0], [0.0, 5000.0, 0.0]], np.float32))
    labels = backend.from_host(np.array([0, 0]))
    value, grad = bp.CrossEntropy().value_and_grad(logits, labels)
    assert np.isfinite(float(backend.to_host(value))) and abs(float(backend.to_host(value)) - 2500.0) < 1e-3
    assert np.all(np.isfinite(backend.to_host(grad)))


def test_binary_cross_entropy_is_stable_for_huge_logits(backend):
    logits = backend.from_host(np.array([[1000.0, -1000.0]], np.float32))
    targets = backend.from_host(np.array([[0.0, 1.0]], np.float32))
    value, grad = bp.BinaryCrossEntropy().value_and_grad(logits, targets)
    assert abs(float(backend.to_host(value)) - 1000.0) < 1e-3
    assert np.all(np.isfinite(backend.to_host(grad)))


def test_sigmoid_is_stable_for_huge_inputs(backend):
    x = backend.from_host(np.array([[-1000.0, 0.0, 1000.0]], np.float32))
    np.testing.assert_allclose(backend.to_host(bp.Sigmoid(backend=backend)(x)), [[0.0, 0.5, 1.0]])


def test_cross_entropy_over_sequence_positions(backend):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(3, 5))
    loss = bp.CrossEntropy()
    value = loss(backend.from_host(logits), backend.from_host(labels))
    expected = ref.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1))
    np.testing.assert_allclose(float(backend.to_host(value)), expected, rtol=1e-5)
    assert bp.gradcheck(loss, backend.from_host(logits), backend.from_host(labels)).ok
    with pytest.raises(bp.ShapeError, match=r"expected integer labels of shape \(3, 5\), got \(3,\)"):
        loss(backend.from_host(logits), backend.from_host(labels[:, 0]))
