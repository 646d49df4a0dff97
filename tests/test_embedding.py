"""Embedding on every backend: PyTorch as the oracle, duplicate indices accumulating, gradcheck of the weight,
dtype/device/namespace, model files, bad indices and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

import backprop as bp
from backprop.layers import register_layer
from backprop.layers.embedding import Embedding

from conftest import assert_on_backend, ones_like

INDICES = {
    "flat": np.array([3, 0, 3, 5, 1, 3]),
    "batch_sequence": np.array([[1, 4, 4, 0], [5, 1, 1, 1]]),
    "three_axes": np.array([[[2, 2], [0, 5]], [[2, 3], [3, 2]]]),
}


def _indices(backend, host, dtype=np.int64):
    return backend.from_host(host.astype(dtype))


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", INDICES)
def test_forward_and_weight_gradient_match_torch(backend, torch, name):
    host_idx = INDICES[name]
    layer = Embedding(6, 3, rng=0, backend=backend)
    oracle = torch.nn.Embedding(6, 3)
    with torch.no_grad():
        oracle.weight.copy_(torch.from_numpy(backend.to_host(layer.params["weight"].value)))
    y, backprop = layer.begin_update(_indices(backend, host_idx), training=True)
    y_t = oracle(torch.from_numpy(host_idx))
    assert_on_backend(y, backend, shape=(*host_idx.shape, 3))
    np.testing.assert_array_equal(backend.to_host(y), y_t.detach().numpy())
    host_v = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    assert backprop(backend.from_host(host_v)) is None  # integer indices have no gradient
    (y_t * torch.from_numpy(host_v)).sum().backward()
    assert_on_backend(layer.params["weight"].grad, backend, shape=(6, 3))
    np.testing.assert_allclose(backend.to_host(layer.params["weight"].grad), oracle.weight.grad.numpy(),
                               rtol=1e-6, atol=1e-6)


def test_duplicate_indices_accumulate(backend):
    layer = Embedding(5, 2, rng=0, backend=backend)
    host_idx = np.array([[1, 1, 3], [1, 0, 3]])
    y, backprop = layer.begin_update(_indices(backend, host_idx))
    host_v = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    backprop(backend.from_host(host_v))
    expected = np.zeros((5, 2), dtype=np.float32)
    expected[1] = host_v[0, 0] + host_v[0, 1] + host_v[1, 0]  # index 1 three times
    expected[3] = host_v[0, 2] + host_v[1, 2]
    expected[0] = host_v[1, 1]
    np.testing.assert_array_equal(backend.to_host(layer.params["weight"].grad), expected)
    weight = backend.to_host(layer.params["weight"].value)
    np.testing.assert_array_equal(backend.to_host(y), weight[host_idx])


def test_gradcheck_checks_the_weight(backend):
    layer = Embedding(6, 3, rng=2, backend=backend)
    result = bp.gradcheck(layer, _indices(backend, INDICES["batch_sequence"]))
    assert result.ok and set(result.max_abs_error) == {"weight"}


def test_gradcheck_catches_lost_duplicates(backend):
    class LosesDuplicates(Embedding):
        def begin_update(self, x, *, training=True):
            y, _ = super().begin_update(x, training=training)
            xp, indices = self.xp, self._check_indices(x)

            def backprop(grad_output):
                grad = xp.reshape(grad_output, (-1, self.embedding_dim))
                weight_grad = xp.zeros((self.num_embeddings, self.embedding_dim), dtype=grad.dtype,
                                       device=self.backend.device)
                # the last duplicate wins
                self.params["weight"].grad = self.backend.at_set(weight_grad, (indices, slice(None)), grad)

            return y, backprop

    if backend.library in ("array_api_strict", "simulated_cupy", "immutable"):
        pytest.skip(f"{backend.library} has no integer-array assignment to build the broken layer with")
    with pytest.raises(bp.GradcheckError, match=r"weight\["):
        bp.gradcheck(LosesDuplicates(6, 3, rng=0, backend=backend), _indices(backend, INDICES["flat"]))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.int16])
def test_integer_dtypes(backend, dtype):
    layer = Embedding(6, 2, rng=0, backend=backend)
    host_idx = INDICES["batch_sequence"]
    y, backprop = layer.begin_update(_indices(backend, host_idx, dtype))
    assert_on_backend(y, backend, shape=(2, 4, 2))
    np.testing.assert_array_equal(backend.to_host(y), backend.to_host(layer.params["weight"].value)[host_idx])
    backprop(ones_like(backend, y))
    assert_on_backend(layer.params["weight"].grad, backend, shape=(6, 2))


def test_float64_and_moving(backend):
    layer = Embedding(6, 2, rng=4, backend="numpy")
    host_idx = INDICES["three_axes"]
    moved = layer.to(backend)
    np.testing.assert_array_equal(backend.to_host(moved(_indices(backend, host_idx))), layer(host_idx))
    if backend.supports_float64:
        wide = moved.astype("float64")
        y, backprop = wide.begin_update(_indices(backend, host_idx))
        assert_on_backend(y, backend, dtype_name="float64", shape=(2, 2, 2, 2))
        backprop(y)
        assert_on_backend(wide.params["weight"].grad, backend, dtype_name="float64", shape=(6, 2))


def test_embedding_then_dense_trains_and_saves(backend, tmp_path):
    register_layer(Embedding)
    model = bp.Sequential([Embedding(6, 4, rng=0, backend=backend), bp.Dense(4, 3, rng=1, backend=backend)])
    idx = _indices(backend, INDICES["batch_sequence"])
    labels = backend.from_host(np.array([[0, 1, 1, 2], [2, 0, 0, 0]]))
    loss_fn, optimizer = bp.CrossEntropy(), bp.SGD(model, lr=0.5)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        logits, backprop = model.begin_update(idx, training=True)
        loss, grad = loss_fn.value_and_grad(logits, labels)
        losses.append(float(backend.to_host(loss)))
        assert backprop(grad) is None
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    assert_on_backend(model[0].params["weight"].value, backend, shape=(6, 4))
    path = tmp_path / "embedding.safetensors"
    bp.save_model(path, model)
    loaded = bp.load_model(path, backend=backend)
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(backend.to_host(loaded(idx)), backend.to_host(model(idx)))


def test_initializers():
    weight = Embedding(400, 300, rng=0, backend="numpy").params["weight"].value
    assert abs(weight.std() - 1.0) < 0.02 and abs(weight.mean()) < 0.01  # N(0, 1), as torch.nn.Embedding
    limit = np.sqrt(6 / 700)
    uniform = Embedding(400, 300, init="glorot_uniform", rng=0, backend="numpy").params["weight"].value
    assert uniform.dtype == np.float32 and np.abs(uniform).max() <= limit and uniform.std() > 0.9 * limit / np.sqrt(3)
    np.testing.assert_array_equal(Embedding(5, 2, rng=7, backend="numpy").params["weight"].value,
                                  Embedding(5, 2, rng=7, backend="numpy").params["weight"].value)


def _one_line_error(error_type, pattern, fn, *args, **kwargs):
    with pytest.raises(error_type, match=pattern) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_bad_indices_give_one_line_errors_naming_the_layer(backend):
    layer = Embedding(6, 3, rng=0, backend=backend)
    _one_line_error(bp.DTypeError, r"Embedding\(6, 3\): expected integer indices of shape \(batch, \.\.\.\), got "
                    r"float32", layer, backend.from_host(np.array([[1.0, 2.0]], dtype=np.float32)))
    _one_line_error(bp.DTypeError, r"Embedding\(6, 3\): expected integer indices .* got bool", layer,
                    backend.from_host(np.array([True, False])))
    _one_line_error(bp.ShapeError, r"Embedding\(6, 3\): index 6 is out of range; indices must lie in 0\.\.5 "
                    r"\(found values from 0 to 6\)", layer, _indices(backend, np.array([[0, 6], [2, 3]])))
    _one_line_error(bp.ShapeError, r"Embedding\(6, 3\): index -1 is out of range", layer,
                    _indices(backend, np.array([2, -1])))
    _one_line_error(bp.ShapeError, r"Embedding\(6, 3\): expected indices of shape \(batch, \.\.\.\), got a 0-d",
                    layer, backend.asarray(2))
    if backend.name != "numpy":
        _one_line_error(bp.DeviceMismatchError, r"Embedding\(6, 3\): input is a numpy array", layer,
                        np.array([1, 2]))


def test_unchecked_indices_skip_the_range_check(backend):
    layer = Embedding(6, 3, rng=0, check_indices=False, backend=backend)
    y = layer(_indices(backend, INDICES["flat"]))
    np.testing.assert_array_equal(backend.to_host(y), backend.to_host(layer.params["weight"].value)[INDICES["flat"]])
    assert layer.config()["check_indices"] is False
    empty = Embedding(6, 3, backend=backend)(_indices(backend, np.zeros((0, 4), dtype=np.int64)))
    assert tuple(empty.shape) == (0, 4, 3)


@pytest.mark.parametrize("build, message", [
    (lambda: Embedding(0, 3), r"Embedding: num_embeddings must be a positive integer, got 0"),
    (lambda: Embedding(5, 2.0), r"Embedding: embedding_dim must be a positive integer, got 2\.0"),
    (lambda: Embedding(True, 3), r"num_embeddings must be a positive integer, got True"),
    (lambda: Embedding(5, 3, init="uniformish"), r"Embedding: unknown initializer 'uniformish'; expected 'normal' "
                                                 r"or one of glorot_uniform"),
    (lambda: Embedding(5, 3, check_indices="no"), r"Embedding: check_indices must be True or False, got 'no'"),
    (lambda: Embedding(5, 3, rng=1.5), r"rng must be an int seed"),
])
def test_bad_settings_raise_config_error(build, message):
    _one_line_error(bp.ConfigError, message, build)


def test_config_rebuilds_the_layer():
    layer = Embedding(7, 2, init="he_uniform", check_indices=False)
    rebuilt = Embedding(**layer.config())
    assert rebuilt.config() == layer.config() and repr(rebuilt) == repr(layer) == "Embedding(7, 2)"
