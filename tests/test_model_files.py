"""Model files: safetensors with the architecture in the header, atomic writes, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.io import checkpoints, model_files

from conftest import assert_on_backend, weights


def _model(backend="numpy"):
    return bp.Sequential([bp.Dense(6, 8, rng=0, backend=backend), bp.GELU(backend=backend),
                          bp.Dropout(0.1, backend=backend), bp.Dense(8, 3, rng=1, backend=backend),
                          bp.LeakyReLU(0.2, backend=backend)])


def test_a_model_saved_on_numpy_loads_on_every_backend_with_the_same_predictions(backend, tmp_path):
    model = _model()
    path = tmp_path / "model.safetensors"
    bp.save_model(path, model, {"note": "hello", "classes": ["a", "b", "c"]})
    loaded = bp.load_model(path, backend=backend)
    metadata = loaded.metadata
    assert metadata == {"note": "hello", "classes": ["a", "b", "c"]}
    assert repr(loaded) == repr(model)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    prediction = loaded(backend.from_host(x))
    assert_on_backend(prediction, backend, shape=(5, 3))
    np.testing.assert_allclose(backend.to_host(prediction), model(x), rtol=1e-5, atol=1e-6)


def test_a_model_saved_on_any_backend_loads_on_numpy(backend, tmp_path):
    model = _model(backend)
    path = tmp_path / "model.safetensors"
    bp.save_model(path, model)
    loaded = bp.load_model(path, backend="numpy")
    for name, array in weights(model).items():
        np.testing.assert_array_equal(loaded.named_parameters()[name].value, backend.to_host(array))


def test_file_is_plain_safetensors_with_a_json_header(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    bp.save_model(path, _model())
    with safe_open(str(path), framework="numpy") as handle:
        header = handle.metadata()
        assert set(handle.keys()) == {"param/0.weight", "param/0.bias", "param/3.weight", "param/3.bias"}
    assert header["format"] == "backprop"
    assert json.loads(header["architecture"])["type"] == "Sequential"


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    bp.save_model(path, _model())
    before = path.read_bytes()

    real_write_bytes = Path.write_bytes

    def crash(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", crash)
    with pytest.raises(KeyboardInterrupt):
        bp.save_model(path, bp.mlp([6, 2], backend="numpy"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temporary left behind


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable model file"),
    (b"\x00" * 7, "not a readable model file"),
    (b"this is plain text, not a model", "not a readable model file"),
])
def test_damaged_files_give_a_clear_error(tmp_path, content, message):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(bp.ModelFileError, match=rf"{path}: {message}"):
        bp.load_model(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "model.safetensors"
    bp.save_model(path, _model())
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(bp.ModelFileError, match="not a readable model file"):
        bp.load_model(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(path))
    with pytest.raises(bp.ModelFileError, match="not one written by backprop"):
        bp.load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(bp.ModelFileError, match="no such model file"):
        bp.load_model(tmp_path / "nope.safetensors")


def test_a_run_directory_loads_its_model_file(tmp_path):
    model = bp.mlp([3, 2], seed=0, backend="numpy")
    bp.save_model(tmp_path / "model.safetensors", model, {"task": "classification"})
    loaded = bp.load_model(tmp_path)  # what backprop evaluate, predict and summary take too
    assert loaded.metadata["task"] == "classification"
    assert all(np.array_equal(a, b) for a, b in zip(weights(model).values(), weights(loaded).values()))
    (tmp_path / "empty").mkdir()
    with pytest.raises(bp.ModelFileError, match="a directory without a model.safetensors"):
        bp.load_model(tmp_path / "empty")


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = tmp_path / "model.safetensors"
    model = _model()
    arrays = model_files.model_arrays(model)
    arrays["param/0.weight"] = np.zeros((5, 8), np.float32)
    from backprop.layers import architecture

    model_files.save_arrays(path, arrays, {"kind": "model", "architecture": architecture(model), "dtype": "float32",
                                           "metadata": {}})
    with pytest.raises(bp.ModelFileError,
                       match=r"'param/0.weight' has shape \(5, 8\), the architecture declares \(6, 8\)"):
        bp.load_model(path)


def test_a_model_file_is_refused_where_a_checkpoint_is_needed(tmp_path):
    trainer = bp.Trainer(bp.mlp([4, 3], backend="numpy"), epochs=1, progress=False, log=None)
    trainer.fit(np.ones((8, 4), np.float32), np.zeros(8, np.int64))
    trainer.save_checkpoint(tmp_path / "checkpoint.safetensors")
    model = bp.load_model(tmp_path / "checkpoint.safetensors")  # a checkpoint holds a usable model
    assert repr(model) == repr(trainer.model)
    bp.save_model(tmp_path / "m.safetensors", trainer.model)
    with pytest.raises(bp.ModelFileError, match="expected a checkpoint, found a 'model' file"):
        checkpoints.read_checkpoint(tmp_path / "m.safetensors")


def test_a_save_writes_its_own_temporary_file_only_with_the_usual_mode(tmp_path, monkeypatch):
    """The bytes go through our atomic writer: the file that lands is the temporary file we created (same
    inode), not one a library made and renamed over it, and it has the umask's mode, not a forced 0600."""
    import os
    import tempfile

    created = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        created.append((name, os.fstat(fd).st_ino))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    old_umask = os.umask(0o022)
    try:
        bp.save_model(tmp_path / "model.safetensors", _model())
    finally:
        os.umask(old_umask)
    assert len(created) == 1 and os.path.basename(created[0][0]).startswith(".model.safetensors.")
    final = os.stat(tmp_path / "model.safetensors")
    assert final.st_ino == created[0][1]  # no foreign temporary file was renamed over ours
    assert final.st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# ------------------------------------------------------------------------------------------------ integrity


def _flip_bit(path, where: str, bit: int = 0) -> None:
    """Flip one bit of a saved file: in the first byte of the tensor data, or in the header's 'metadata' entry."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[:8], "little")
    if where == "weights":
        index = 8 + length
    else:  # a digit of a number in the metadata: the JSON stays valid
        index = data.index(b"1234", 8) + 1
    data[index] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("bit", [0, 7])
def test_one_flipped_bit_in_the_weights_is_detected(tmp_path, capsys, bit):
    from backprop.cli import main

    path = tmp_path / "model.safetensors"
    bp.save_model(path, _model(), {"dataset": "digits"})
    _flip_bit(path, "weights", bit)
    with pytest.raises(bp.ModelFileError, match=r"model.safetensors is damaged: its weights do not match the "
                                                r"checksum recorded when it was saved$"):
        bp.load_model(path)
    assert main(["evaluate", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path} is damaged: its weights do not match the checksum")


def test_one_flipped_bit_in_the_header_is_detected(tmp_path):
    path = tmp_path / "model.safetensors"
    bp.save_model(path, _model(), {"scaler": {"kind": "standardize", "offset": [1234.0], "scale": [1.0]}})
    _flip_bit(path, "header")  # 1234 -> 1334: still valid JSON, a different scaling
    with pytest.raises(bp.ModelFileError, match="is damaged: its header does not match the checksum"):
        bp.load_model(path)


def test_a_damaged_checkpoint_is_refused(tmp_path):
    trainer = bp.Trainer(bp.mlp([4, 3], backend="numpy"), epochs=1, progress=False, log=None)
    trainer.fit(np.ones((8, 4), np.float32), np.zeros(8, np.int64))
    path = tmp_path / "checkpoint.safetensors"
    trainer.save_checkpoint(path)
    _flip_bit(path, "weights", 3)
    with pytest.raises(bp.ModelFileError, match="checkpoint.safetensors is damaged: its weights do not match"):
        trainer.load_checkpoint(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(tmp_path, value):
    model = _model()
    model.layers[3].params["bias"].value[1] = value
    path = tmp_path / "model.safetensors"
    bp.save_model(path, model)  # the checksum matches: only the values are wrong
    with pytest.raises(bp.ModelFileError, match=r"holds non-finite values \(NaN or inf\) in array 'param/3.bias'"):
        bp.load_model(path)


def test_the_checksum_covers_names_dtypes_and_shapes():
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    base = model_files.weights_checksum(a)
    assert model_files.weights_checksum({"x": a["x"].copy()}) == base
    assert model_files.weights_checksum({"y": a["x"]}) != base
    assert model_files.weights_checksum({"x": a["x"].reshape(3, 2)}) != base
    assert model_files.weights_checksum({"x": a["x"].view(np.int32)}) != base
    assert model_files.weights_checksum({"x": a["x"].astype(">f4")}) == base  # the values, not the byte order


def test_files_are_written_with_format_version_2_and_checksums(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    bp.save_model(path, _model())
    with safe_open(str(path), framework="numpy") as handle:
        header = handle.metadata()
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    assert header["format_version"] == "2" == str(model_files.FORMAT_VERSION)
    assert header["weights_sha256"] == model_files.weights_checksum(arrays)
    assert header["header_sha256"] == model_files.header_checksum(header)


def _version_1_file(path, model, metadata=None):
    """What backprop wrote before checksums existed (format version 1)."""
    from safetensors.numpy import save

    from backprop.layers import architecture

    header = {"format": "backprop", "format_version": "1", "kind": json.dumps("model"),
              "architecture": json.dumps(architecture(model)), "dtype": json.dumps("float32"),
              "metadata": json.dumps(metadata or {})}
    path.write_bytes(save(model_files.model_arrays(model), metadata=header))


def test_version_1_files_still_load_with_a_warning(tmp_path):
    model = _model()
    path = tmp_path / "old.safetensors"
    _version_1_file(path, model, {"note": "old"})
    with pytest.warns(RuntimeWarning, match="format version 1.*without checksums.*saving it again adds them"):
        loaded = bp.load_model(path)
        metadata = loaded.metadata
    assert metadata == {"note": "old"}
    np.testing.assert_array_equal(weights(loaded)["0.weight"], weights(model)["0.weight"])


def test_version_1_files_with_non_finite_weights_are_refused(tmp_path):
    model = _model()
    model.layers[0].params["weight"].value[0, 0] = np.nan
    _version_1_file(tmp_path / "old.safetensors", model)
    with pytest.warns(RuntimeWarning), pytest.raises(bp.ModelFileError, match="non-finite"):
        bp.load_model(tmp_path / "old.safetensors")


def test_an_unknown_format_version_is_refused(tmp_path):
    from safetensors.numpy import save

    path = tmp_path / "new.safetensors"
    path.write_bytes(save({}, metadata={"format": "backprop", "format_version": "3"}))
    with pytest.raises(bp.ModelFileError, match="model file format version '3'; this backprop reads versions 1 and 2"):
        bp.load_model(path)


def test_a_model_file_that_cannot_be_read_for_permissions(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    bp.save_model(path, _model())

    def denied(*args, **kwargs):  # the tests may run as root, for whom chmod 000 changes nothing
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(model_files, "safe_open", denied)  # the name model_files opens files with
    with pytest.raises(bp.ModelFileError, match=r"model.safetensors: permission denied: cannot read this model file$"):
        bp.load_model(path)
