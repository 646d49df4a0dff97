"""Checkpoints as plain data: ``TrainingState`` round-trips through a file without a trainer, a trainer makes
one and continues from one, and ``backprop.io`` does not know the trainer."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop.io import model_files
from backprop.io.checkpoints import CallbackState, TrainingState, model_from_state, read_checkpoint, write_checkpoint
from backprop.layers import architecture

from conftest import weights


@pytest.fixture(scope="module")
def digits():
    return bp.data.load_digits()


def _state() -> TrainingState:
    """A state written by hand, no trainer involved: arrays of every kind a checkpoint holds."""
    rng = np.random.default_rng(0)
    model = bp.mlp([3, 2], backend="numpy")
    return TrainingState(
        architecture=architecture(model), dtype="float32",
        weights={"param/0.weight": rng.normal(size=(3, 2)).astype(np.float32),
                 "param/0.bias": np.array([0.5, -0.25], np.float32)},
        optimizer_arrays={"0.weight.exp_avg": rng.normal(size=(3, 2)).astype(np.float32),
                          "step_count": np.array(7, np.int64)},
        optimizer_info={"hyperparameters": {"lr": 0.01}, "param_steps": {"0.weight": 7}},
        epoch=3, epochs=5, seed=11, base_lr=0.01,
        history=[{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}, {"epoch": 3, "train_loss": 0.125}],
        callbacks=[CallbackState("GradientMonitor", {"low_epochs": {}, "warned": []}),
                   CallbackState("EarlyStopping", {"best_value": 0.1, "best_epoch": 2, "wait": 1},
                                 {"param/0.weight": np.ones((3, 2), np.float64), "mask": np.array([True, False])})],
        run={"hidden": "5", "lr": 0.01, "resume": False, "data_dir": None})


def _assert_same_arrays(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for name, array in expected.items():
        assert isinstance(found[name], np.ndarray), name
        assert found[name].dtype == array.dtype and found[name].shape == array.shape, name
        np.testing.assert_array_equal(found[name], array, err_msg=name)


def _assert_same_state(found: TrainingState, expected: TrainingState) -> None:
    for name in ("architecture", "dtype", "optimizer_info", "epoch", "epochs", "seed", "base_lr", "history", "run"):
        assert getattr(found, name) == getattr(expected, name), name
    _assert_same_arrays(found.weights, expected.weights)
    _assert_same_arrays(found.optimizer_arrays, expected.optimizer_arrays)
    assert [(c.type, c.info) for c in found.callbacks] == [(c.type, c.info) for c in expected.callbacks]
    for saved, original in zip(found.callbacks, expected.callbacks):
        _assert_same_arrays(saved.arrays, original.arrays)


def test_a_training_state_round_trips_through_a_file_without_a_trainer(tmp_path):
    state = _state()
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(path, state)
    again = read_checkpoint(path)
    _assert_same_state(again, state)
    write_checkpoint(tmp_path / "again.safetensors", again)  # nothing lost or added on the way
    arrays, header = model_files.load_arrays(path, kind="checkpoint")
    arrays_again, header_again = model_files.load_arrays(tmp_path / "again.safetensors", kind="checkpoint")
    assert header_again == header  # (not the bytes: safetensors writes the header's entries in any order)
    _assert_same_arrays(arrays_again, arrays)


def test_the_file_keeps_the_checkpoint_format(tmp_path):
    """The names and header entries older backprop versions wrote and read, unchanged."""
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(path, _state())
    arrays, header = model_files.load_arrays(path, kind="checkpoint")
    assert sorted(arrays) == ["callback/1/mask", "callback/1/param/0.weight", "optimizer/0.weight.exp_avg",
                              "optimizer/step_count", "param/0.bias", "param/0.weight"]
    assert header["kind"] == "checkpoint" and header["run"] == _state().run
    assert header["trainer"] == {"epoch": 3, "epochs": 5, "seed": 11, "base_lr": 0.01,
                                 "optimizer": _state().optimizer_info, "history": _state().history,
                                 "callbacks": [{"type": "GradientMonitor", "info": {"low_epochs": {}, "warned": []}},
                                               {"type": "EarlyStopping", "info": {"best_value": 0.1, "best_epoch": 2,
                                                                                  "wait": 1}}]}


def test_a_checkpoint_from_before_seeds_and_callbacks_were_recorded_still_reads(tmp_path):
    path = tmp_path / "old.safetensors"
    state = _state()
    arrays = {**state.weights, **{f"optimizer/{k}": v for k, v in state.optimizer_arrays.items()}}
    trainer = {"epoch": 3, "epochs": 5, "base_lr": 0.01, "optimizer": state.optimizer_info, "history": state.history}
    model_files.save_arrays(path, arrays, {"kind": "checkpoint", "architecture": state.architecture,
                                           "dtype": "float32", "trainer": trainer})
    old = read_checkpoint(path)
    assert (old.seed, old.callbacks, old.run, old.epoch) == (0, [], {}, 3)
    _assert_same_arrays(old.weights, state.weights)


def test_an_array_that_belongs_to_nothing_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(path, _state())
    arrays, header = model_files.load_arrays(path, kind="checkpoint")
    model_files.save_arrays(path, {**arrays, "callback/5/x": np.zeros(2, np.float32)}, header)
    with pytest.raises(bp.ModelFileError, match=r"array 'callback/5/x' belongs to no callback the checkpoint lists"):
        read_checkpoint(path)
    model_files.save_arrays(path, {**arrays, "stray": np.zeros(2, np.float32)}, header)
    with pytest.raises(bp.ModelFileError, match=r"array 'stray' is not part of a checkpoint"):
        read_checkpoint(path)


def test_the_model_in_a_state_is_built_with_its_weights(backend):
    state = _state()
    model = model_from_state(state, backend)
    assert model.backend is backend
    for name, array in model.named_arrays().items():
        np.testing.assert_array_equal(backend.to_host(array), state.weights[name])


def _trainer(backend, epochs=2):
    return bp.Trainer(bp.mlp([64, 8, 10], backend=backend, seed=3), epochs=epochs, batch_size=32, progress=False,
                      log=None, callbacks=[bp.training.EarlyStopping(3, monitor="train_loss")])


def test_a_trainer_continues_from_its_state_exactly(backend, digits):
    """No file: ``training_state`` after one epoch, ``restore`` in a new trainer, one more epoch, the same weights
    bit for bit as two epochs in one go; the state holds host copies that training does not change."""
    x, y = digits.x_train[:96], digits.y_train[:96]
    reference = _trainer(backend)
    reference.fit(x, y)

    first = _trainer(backend, epochs=1)
    first.fit(x, y)
    state = first.training_state({"note": "kept"})
    assert state.run == {"note": "kept"} and state.epoch == 1 and state.epochs == 1 and state.dtype == "float32"
    for name, array in {**state.weights, **state.optimizer_arrays}.items():
        assert isinstance(array, np.ndarray), name
    assert all(array.dtype == np.float32 for array in state.weights.values())
    assert state.callbacks[0].type == "EarlyStopping" and state.callbacks[0].arrays
    frozen = copy.deepcopy(state.weights)
    first.epochs = 2
    first.fit(x, y)  # goes on training: the state taken before stays as it was
    _assert_same_arrays(state.weights, frozen)

    resumed = _trainer(backend)
    resumed.restore(state)
    assert resumed.epoch == 1 and resumed.history == state.history
    resumed.fit(x, y)
    for name, weight in weights(reference.model).items():
        np.testing.assert_array_equal(backend.to_host(resumed.model.named_parameters()[name].value),
                                      backend.to_host(weight), err_msg=name)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in reference.history]


def test_a_state_that_does_not_fit_the_model_is_refused_before_anything_changes(digits):
    trainer = _trainer("numpy", epochs=1)
    trainer.fit(digits.x_train[:64], digits.y_train[:64])
    state = trainer.training_state()
    other = bp.Trainer(bp.mlp([64, 9, 10], backend="numpy"), epochs=2, progress=False, log=None)
    before = {k: np.array(v) for k, v in other.model.named_arrays().items()}
    with pytest.raises(bp.ModelFileError, match=r"^saved: the checkpoint does not fit the model its run options "
                                                r"describe: the checkpoint array 'param/0.bias' has shape \(8,\), "
                                                r"the model expects \(9,\)$"):
        other.restore(state, source="saved")
    assert other.epoch == 0
    _assert_same_arrays({k: np.array(v) for k, v in other.model.named_arrays().items()}, before)


def test_io_does_not_import_training():
    """The trainer reads and writes checkpoints through ``backprop.io``; ``io`` knows nothing of training."""
    offences = []
    for path in sorted((Path(bp.__file__).parent / "io").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name == "training" or "training" in name.split(".") or name.startswith(("runs", "cli"))
                   for name in names):
                offences.append(f"{path.name}:{node.lineno}")
    assert offences == []


# ------------------------------------------------------------------------------------- model.metadata


def test_load_model_returns_the_model_with_its_metadata(tmp_path, backend):
    path = tmp_path / "model.safetensors"
    bp.save_model(path, bp.mlp([4, 3], backend="numpy"), {"class_names": ["a", "b", "c"], "options": {"lr": 0.1}})
    model = bp.load_model(path, backend=backend)
    assert isinstance(model, bp.Layer) and model.backend is backend
    assert dict(model.metadata) == {"class_names": ["a", "b", "c"], "options": {"lr": 0.1}}
    assert model.metadata["class_names"] == ["a", "b", "c"] and len(model.metadata) == 2
    with pytest.raises(TypeError):
        model.metadata["class_names"] = ["x"]  # type: ignore[index]  # read-only: that is the point
    copied = copy.deepcopy(model)  # a model with metadata copies as any model does
    assert dict(copied.metadata) == dict(model.metadata)
    assert dict(bp.load_model(path, backend=backend).metadata) == dict(model.metadata)  # its own copy each time


def test_a_model_built_in_python_has_empty_metadata_and_saving_it_again_keeps_what_is_passed(tmp_path):
    model = bp.mlp([4, 3], backend="numpy")
    assert dict(model.metadata) == {}
    bp.save_model(tmp_path / "a.safetensors", model, {"note": "first"})
    loaded = bp.load_model(tmp_path / "a.safetensors")
    bp.save_model(tmp_path / "b.safetensors", loaded, loaded.metadata)  # a Mapping is accepted
    assert dict(bp.load_model(tmp_path / "b.safetensors").metadata) == {"note": "first"}


def test_the_old_two_value_unpacking_of_load_model_fails_in_one_line(tmp_path):
    """``model, metadata = load_model(p)`` (the API before issue 14) must not quietly unpack a two-layer model
    into its layers."""
    path = tmp_path / "model.safetensors"
    two_layers = bp.Sequential([bp.Dense(4, 3, backend="numpy"), bp.Tanh(backend="numpy")])
    bp.save_model(path, two_layers, {"note": "x"})
    model = bp.load_model(path)
    assert len(model) == 2
    with pytest.raises(TypeError, match=r"^a Sequential model is not iterable: its layers are model.layers"):
        model, metadata = model
