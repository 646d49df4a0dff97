"""Cross-backend parity: the same seed and data give the same losses on every backend."""

from __future__ import annotations

import numpy as np

import backprop as bp

from conftest import weights


def _train(backend, steps=5):
    rng = np.random.default_rng(0)
    host_x = rng.normal(size=(64, 10)).astype(np.float32)
    host_y = (host_x[:, :3].sum(axis=1) > 0).astype(np.int64) + (host_x[:, 3] > 1).astype(np.int64)
    x, y = backend.from_host(host_x), backend.from_host(host_y)
    model = bp.mlp([10, 32, 16, 3], activation_name="gelu", seed=42, backend=backend)
    loss_fn, optimizer = bp.CrossEntropy(), bp.SGD(model, lr=0.2)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        logits, backprop = model.begin_update(x, training=True)
        loss, grad = loss_fn.value_and_grad(logits, y)
        backprop(grad)
        optimizer.step()
        losses.append(float(backend.to_host(loss)))
    return np.array(losses), {k: backend.to_host(v) for k, v in weights(model).items()}


def test_losses_and_weights_match_numpy(backend):
    expected_losses, expected_weights = _train(bp.get_backend("numpy"))
    losses, weights = _train(backend)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for name, weight in expected_weights.items():
        np.testing.assert_allclose(weights[name], weight, rtol=1e-4, atol=1e-5)
    assert losses[-1] < losses[0]
