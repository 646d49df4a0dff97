"""Crafted model and checkpoint files: each one ends in a one-line `error:` (status 2), never a traceback, an
exhausted memory or a stack overflow; the files are built here, byte by byte where needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backprop as bp
from backprop.cli import main
from backprop.io import model_files
from backprop.layers import LAYER_TYPES, MAX_NESTING, architecture, declared_arrays


def write_file(path, arrays: dict, header: dict, *, version: str = "2", raw: dict | None = None) -> None:
    """A backprop safetensors file with any header (``raw``: entries stored as they are, not as JSON), with
    checksums that match, so that only the check under test can refuse it."""
    from safetensors.numpy import save

    metadata = {"format": "backprop", "format_version": version,
                **{key: json.dumps(value) for key, value in header.items()}, **(raw or {})}
    if version == "2":
        metadata[model_files.WEIGHTS_CHECKSUM] = model_files.weights_checksum(arrays)
        metadata[model_files.HEADER_CHECKSUM] = model_files.header_checksum(metadata)
    path.write_bytes(save(arrays, metadata=metadata))


def small_model():
    return bp.mlp([4, 5, 3], seed=0, backend="numpy")


def model_header(model, **overrides):
    return {"kind": "model", "architecture": architecture(model), "dtype": "float32",
            "metadata": {"dataset": "digits", "class_names": ["a", "b", "c"]}, **overrides}


def run_cli(capsys, *args) -> str:
    """Run ``backprop ARGS`` in-process; it must exit with status 2 and one `error:` line; returns that line."""
    code = main(["--backend", "numpy", *map(str, args)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def features(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 4), np.float32))
    return path


def forbid_allocation(monkeypatch):
    """From now on, building a layer's weights is an error: the checks must refuse the file before that."""
    import backprop.layers.dense as dense

    def refuse(*args, **kwargs):
        raise AssertionError("a weight was allocated before the file was checked")
    monkeypatch.setattr(dense, "initialize", refuse)


# ------------------------------------------------------------------------------------------ architecture


def test_a_huge_declared_layer_is_refused_before_anything_is_allocated(tmp_path, capsys, monkeypatch):
    model = small_model()
    header = model_header(model)
    header["architecture"]["config"]["layers"][0]["config"].update(in_features=200_000, out_features=200_000)
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), header)
    forbid_allocation(monkeypatch)
    line = run_cli(capsys, "evaluate", tmp_path / "m.safetensors")
    assert "'param/0.weight' has shape (4, 5), the architecture declares (200000, 200000)" in line


def test_declared_layers_without_their_arrays_are_refused_before_building(tmp_path, capsys, monkeypatch):
    model = small_model()
    header = model_header(model)
    header["architecture"]["config"]["layers"].append(
        {"type": "Dense", "config": {"in_features": 3, "out_features": 100_000}})
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), header)
    forbid_allocation(monkeypatch)
    line = run_cli(capsys, "evaluate", tmp_path / "m.safetensors")
    assert "declares array 'param/3.weight' of shape (3, 100000), which the file does not hold" in line


def nested_architecture(depth: int) -> str:
    """A Sequential nested ``depth`` deep around one ReLU, as JSON text (json.dumps would itself recurse)."""
    return '{"type": "Sequential", "config": {"layers": [' * depth + '{"type": "ReLU"}' + "]}}" * depth


@pytest.mark.parametrize("depth", [3_000, 100_000])
def test_deeply_nested_architectures_are_refused(tmp_path, capsys, depth):
    write_file(tmp_path / "m.safetensors", {}, {"kind": "model", "dtype": "float32", "metadata": {}},
               raw={"architecture": nested_architecture(depth)})
    line = run_cli(capsys, "evaluate", tmp_path / "m.safetensors", "--dataset", "digits")
    assert "header entry 'architecture' is nested too deeply" in line


def test_nesting_is_capped_below_the_recursion_limit(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    write_file(path, {}, {"kind": "model", "dtype": "float32", "metadata": {}},
               raw={"architecture": nested_architecture(MAX_NESTING + 1)})
    line = run_cli(capsys, "evaluate", path, "--dataset", "digits")
    assert f"nests Sequential layers more than {MAX_NESTING} deep" in line
    write_file(path, {}, {"kind": "model", "dtype": "float32", "metadata": {}},
               raw={"architecture": nested_architecture(MAX_NESTING - 1)})
    model = bp.load_model(path, backend="numpy")  # as deep as allowed: loads
    assert model.num_parameters() == 0


@pytest.mark.parametrize("architecture_value, problem", [
    ("a string", "header entry 'architecture' must be a dict"),
    ({"type": "Dense", "config": ["not", "a", "dict"]}, "Dense: config must be a dict"),
    ({"type": "Sequential", "config": {"layers": 5}}, "Sequential: config 'layers' must be a list"),
    ({"type": "NoSuchLayer"}, "unknown layer description"),
    ({"type": "Dense", "config": {"in_features": 4, "out_features": 5, "no_such_option": 1}},
     "cannot be rebuilt"),
])
def test_malformed_architectures(tmp_path, capsys, architecture_value, problem):
    arrays = model_files.model_arrays(bp.Dense(4, 5, rng=0, backend="numpy"))
    write_file(tmp_path / "m.safetensors", arrays, {"kind": "model", "architecture": architecture_value,
                                                    "dtype": "float32", "metadata": {}})
    assert problem in run_cli(capsys, "evaluate", tmp_path / "m.safetensors", "--dataset", "digits")


def test_a_bad_model_dtype_is_refused(tmp_path, capsys):
    model = small_model()
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), model_header(model, dtype="int8"))
    assert "header entry 'dtype' must be one of float16, float32, float64" in run_cli(
        capsys, "evaluate", tmp_path / "m.safetensors")


# -------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("metadata", ["a string", ["a", "list"], 5])
def test_metadata_that_is_not_a_dict(tmp_path, capsys, metadata):
    model = small_model()
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), model_header(model, metadata=metadata))
    line = run_cli(capsys, "evaluate", tmp_path / "m.safetensors")
    assert "header entry 'metadata' must be a dict" in line


def test_class_names_shorter_than_the_outputs(tmp_path, capsys, features):
    model = small_model()
    header = model_header(model, metadata={"class_names": ["only one"]})
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), header)
    line = run_cli(capsys, "predict", tmp_path / "m.safetensors", features)
    assert "metadata 'class_names' gives 1 classes, the model has 3 outputs" in line


@pytest.mark.parametrize("metadata, problem", [
    ({"class_names": "abc"}, "'class_names' must be a list of strings"),
    ({"class_names": [1, 2, 3]}, "'class_names' must be a list of strings"),
    ({"num_classes": "3"}, "'num_classes' must be a positive integer"),
    ({"scaler": [1, 2]}, "'scaler' must be a dict"),
    ({"options": "x"}, "'options' must be a dict"),
    ({"options": None}, "'options' must be a dict"),
    ({"dataset": 7}, "'dataset' must be a string"),
])
def test_metadata_entries_of_the_wrong_type(tmp_path, capsys, features, metadata, problem):
    model = small_model()
    write_file(tmp_path / "m.safetensors", model_files.model_arrays(model), model_header(model, metadata=metadata))
    assert problem in run_cli(capsys, "predict", tmp_path / "m.safetensors", features)


# ---------------------------------------------------------------------------------------------- tensors


def edit_layout(path, change) -> None:
    """Rewrite the safetensors layout (the JSON after the 8-byte length) of a file; the data stay as they are."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    layout = json.loads(data[8:8 + length])
    change(layout)
    text = json.dumps(layout, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the layout to 8 bytes
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])


@pytest.mark.parametrize("dtype, storage", [("BF16", np.float16), ("F8_E4M3", np.uint8), ("F8_E5M2", np.int8)])
def test_tensor_dtypes_backprop_does_not_write_are_refused(tmp_path, capsys, dtype, storage):
    path = tmp_path / "m.safetensors"
    write_file(path, {"param/0.weight": np.zeros((4, 3), storage)}, {"kind": "model", "architecture": {
        "type": "Dense", "config": {"in_features": 4, "out_features": 3, "bias": False}}, "dtype": "float32",
        "metadata": {}})
    edit_layout(path, lambda layout: layout["param/0.weight"].__setitem__("dtype", dtype))  # same item size
    line = run_cli(capsys, "evaluate", path, "--dataset", "digits")
    assert f"tensor 'param/0.weight' has dtype {dtype!r}, which backprop does not read" in line


def test_a_declared_tensor_larger_than_the_file(tmp_path, capsys):
    model = small_model()
    path = tmp_path / "m.safetensors"
    write_file(path, model_files.model_arrays(model), model_header(model))

    def grow(layout):
        layout["param/0.weight"]["shape"] = [200_000, 200_000]
        layout["param/0.weight"]["data_offsets"][1] = layout["param/0.weight"]["data_offsets"][0] + 200_000**2 * 4
    edit_layout(path, grow)
    assert "not a readable model file" in run_cli(capsys, "evaluate", path)


def test_a_header_length_beyond_the_file(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    assert "not a readable model file" in run_cli(capsys, "evaluate", path)


# ------------------------------------------------------------------------------------------- checkpoints


def make_checkpoint(directory, *, hidden="5", epochs=2):
    """A real checkpoint of a small digits run (what ``backprop train --output directory`` leaves)."""
    from backprop.runs import CHECKPOINT_FILE, DEFAULTS, build_model

    options = {**DEFAULTS, "hidden": hidden, "epochs": epochs, "validation_split": 0.0}
    dataset = bp.data.load_digits()
    model = build_model(options, dataset.num_features, dataset.num_classes, "numpy")
    trainer = bp.Trainer(model, epochs=1, progress=False, log=None)
    trainer.fit(dataset.x_train[:64], dataset.y_train[:64])
    directory.mkdir(exist_ok=True)
    trainer.save_checkpoint(directory / CHECKPOINT_FILE, run_config=options)
    return directory / CHECKPOINT_FILE


def rewrite_checkpoint(path, change) -> None:
    arrays, header = model_files.load_arrays(path, kind="checkpoint")
    change(header)
    write_file(path, arrays, header)


def resume(capsys, directory) -> str:
    return run_cli(capsys, "train", "--resume", directory, "--no-progress", "--no-plots")


@pytest.mark.parametrize("field, value, problem", [
    ("epoch", "3", "trainer entry 'epoch' must be an integer >= 0, got '3'"),
    ("epoch", -1, "trainer entry 'epoch' must be an integer >= 0"),
    ("epochs", 2.5, "trainer entry 'epochs' must be an integer >= 1"),
    ("base_lr", "fast", "trainer entry 'base_lr' must be a finite number"),
    ("history", "none", "trainer entry 'history' must be a list of dicts"),
    ("optimizer", [], "trainer entry 'optimizer' must be a dict"),
    ("callbacks", [1], "trainer entry 'callbacks' must be a list"),
])
def test_checkpoint_trainer_entries_of_the_wrong_type(tmp_path, capsys, field, value, problem):
    path = make_checkpoint(tmp_path / "run")
    rewrite_checkpoint(path, lambda header: header["trainer"].__setitem__(field, value))
    assert problem in resume(capsys, tmp_path / "run")


def test_checkpoint_trainer_entry_that_is_not_a_dict(tmp_path, capsys):
    path = make_checkpoint(tmp_path / "run")
    rewrite_checkpoint(path, lambda header: header.__setitem__("trainer", "x"))
    assert "header entry 'trainer' must be a dict" in resume(capsys, tmp_path / "run")


@pytest.mark.parametrize("change, problem", [
    (lambda header: header.__setitem__("run", ["hidden", "5"]), "header entry 'run' must be a dict of options"),
    (lambda header: header["run"].__setitem__("hidden", {"a": 1}),
     "run option 'hidden' must be a string, a number or null"),
])
def test_checkpoint_run_options_of_the_wrong_type(tmp_path, capsys, change, problem):
    rewrite_checkpoint(make_checkpoint(tmp_path / "run"), change)
    assert problem in resume(capsys, tmp_path / "run")


def test_a_checkpoint_whose_run_options_do_not_fit_its_weights(tmp_path, capsys):
    path = make_checkpoint(tmp_path / "run", hidden="5")
    rewrite_checkpoint(path, lambda header: header["run"].__setitem__("hidden", "7"))
    line = resume(capsys, tmp_path / "run")
    assert "the checkpoint does not fit the model its run options describe" in line
    assert "'param/0.bias' has shape (5,), the model expects (7,)" in line


def test_a_checkpoint_whose_early_stopping_copy_does_not_fit(tmp_path):
    dataset = bp.data.load_digits()
    trainer = bp.Trainer(bp.mlp([64, 5, 10], backend="numpy"), epochs=1, progress=False, log=None,
                         callbacks=[bp.training.EarlyStopping(3)])
    trainer.fit(dataset.x_train[:64], dataset.y_train[:64], validation_split=0.25)
    path = tmp_path / "checkpoint.safetensors"
    trainer.save_checkpoint(path)
    arrays, header = model_files.load_arrays(path, kind="checkpoint")
    arrays["callback/0/param/0.weight"] = np.zeros((3, 3), np.float32)
    write_file(path, arrays, header)
    with pytest.raises(bp.ModelFileError, match=r"'callback/0/param/0.weight' has shape \(3, 3\), the model's "
                                                r"'param/0.weight' \(64, 5\)"):
        trainer.load_checkpoint(path)


# ------------------------------------------------------------------------------------- declared shapes


def _examples():
    """One or two instances of every built-in layer type, with the options that change its arrays."""
    kw = {"backend": "numpy"}
    return [bp.Dense(3, 4, **kw), bp.Dense(3, 4, bias=False, **kw), bp.layers.Conv2D(2, 3, 3, **kw),
            bp.layers.Conv2D(2, 3, (1, 2), bias=False, **kw), bp.layers.Embedding(7, 3, **kw),
            bp.layers.BatchNorm1D(5, **kw), bp.layers.BatchNorm2D(4, affine=False, **kw),
            bp.layers.LayerNorm(6, **kw), bp.layers.LayerNorm([2, 3], elementwise_affine=False, **kw),
            bp.layers.FixedPointRecurrent(3, 4, **kw), bp.layers.RNN(3, 4, **kw),
            bp.layers.LSTM(3, 4, bidirectional=True, **kw), bp.layers.GRU(2, 3, **kw),
            bp.layers.GRU(2, 3, bidirectional=True, init="glorot_uniform", **kw),
            bp.Dropout(0.2, **kw), bp.layers.MaxPool2D(2, **kw), bp.layers.AvgPool2D(2, **kw),
            bp.layers.Flatten(**kw), bp.layers.Reshape((2, 3), **kw),
            *(cls(**kw) for cls in (bp.ReLU, bp.Sigmoid, bp.Tanh, bp.GELU, bp.layers.Softmax)),
            bp.LeakyReLU(0.1, **kw)]


def test_every_built_in_layer_type_declares_its_arrays():
    covered = {type(layer).__name__ for layer in _examples()} | {"Sequential"}
    assert covered == set(LAYER_TYPES)


@pytest.mark.parametrize("layer", _examples(), ids=lambda layer: repr(layer))
def test_declared_arrays_are_those_a_build_creates(layer):
    model = bp.Sequential([layer, bp.Sequential([bp.ReLU(backend="numpy")])])
    actual = {key: tuple(array.shape) for key, array in model_files.model_arrays(model).items()}
    assert declared_arrays(architecture(model)) == actual


# ------------------------------------------------------------------------- a dataset path in a model file


def model_naming(tmp_path, dataset, **metadata):
    model = bp.mlp([4, 3], seed=0, backend="numpy")
    path = tmp_path / "m.safetensors"
    bp.save_model(path, model, {"dataset": "x", "options": {"dataset": str(dataset)}, **metadata})
    return path


def secret_csv(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("1,2,3,4,0\n1,2,SECRET-TOKEN-0123456789abcdef,4,1\n")
    return path


def test_evaluate_does_not_read_a_file_a_model_names_without_its_hash(tmp_path, capsys):
    secret = secret_csv(tmp_path)
    line = run_cli(capsys, "evaluate", model_naming(tmp_path, secret))
    assert f"the model names the dataset file {secret} but records no SHA-256 of it" in line
    assert "pass --dataset" in line and "SECRET" not in line


def test_evaluate_does_not_read_a_file_whose_hash_differs(tmp_path, capsys):
    secret = secret_csv(tmp_path)
    line = run_cli(capsys, "evaluate", model_naming(tmp_path, secret, dataset_sha256="0" * 64))
    assert f"{secret} is not the file the model was trained on" in line and "SECRET" not in line


def test_a_file_the_user_names_is_read_and_errors_quote_only_a_short_excerpt(tmp_path, capsys):
    secret = secret_csv(tmp_path)
    line = run_cli(capsys, "evaluate", model_naming(tmp_path, "elsewhere.csv"), "--dataset", secret)
    assert f"{secret}: line 2, column 3: 'SECRET-TOKEN-0123456789a...' is not a number" in line


def test_a_model_trained_on_a_file_evaluates_on_that_file_only(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    assert main(["--backend", "numpy", "train", "--dataset", "mine.npz", "--epochs", "1", "--hidden", "4",
                 "--output", "run", "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    metadata = bp.load_model(tmp_path / "run" / "model.safetensors").metadata
    assert metadata["dataset_sha256"] == __import__("hashlib").sha256((tmp_path / "mine.npz").read_bytes()).hexdigest()
    assert main(["--backend", "numpy", "evaluate", "run"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    np.savez(tmp_path / "mine.npz", x=x[::-1], y=(x[::-1, 0] > 0).astype(np.int64))  # the same name, other data
    assert "mine.npz is not the file the model was trained on" in run_cli(capsys, "evaluate", "run")
    assert main(["--backend", "numpy", "evaluate", "run", "--dataset", "mine.npz"]) == 0  # the user says so


def test_a_model_trained_on_a_built_in_dataset_needs_no_hash(tmp_path, capsys):
    model = bp.mlp([64, 10], seed=0, backend="numpy")
    bp.save_model(tmp_path / "m.safetensors", model, {"dataset": "digits", "options": {"dataset": "digits"}})
    assert main(["--backend", "numpy", "evaluate", str(tmp_path / "m.safetensors")]) == 0
    assert "on digits" in capsys.readouterr().out


def test_resume_reads_the_dataset_file_a_checkpoint_names_only_if_it_is_the_one_trained_on(tmp_path, capsys,
                                                                                           monkeypatch):
    """The same rule as evaluate's for train --resume: the checkpoint records the file's SHA-256; a file whose
    content differs (another file of the same name, say from another directory), or a checkpoint without the
    hash (a crafted one), is refused; the unchanged file resumes."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    train = ["--backend", "numpy", "train", "--no-progress", "--no-plots"]
    assert main([*train, "--dataset", "mine.npz", "--epochs", "1", "--hidden", "4", "--output", "run"]) == 0
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    original = checkpoint.read_bytes()
    arrays, header = model_files.load_arrays(checkpoint, kind="checkpoint")
    assert header["run"]["dataset_sha256"] == __import__("hashlib").sha256(
        (tmp_path / "mine.npz").read_bytes()).hexdigest()

    np.savez(tmp_path / "mine.npz", x=x[::-1], y=(x[::-1, 0] > 0).astype(np.int64))  # the same name, other data
    assert "mine.npz is not the file the model was trained on" in run_cli(capsys, *train[2:], "--resume", "run",
                                                                          "--epochs", "2")
    line = run_cli(capsys, *train[2:], "--resume", "run", "--epochs", "2", "--dataset", "mine.npz")
    assert "not the file the run was trained on" in line and "start a new run" in line

    secret = secret_csv(tmp_path)
    run = {k: v for k, v in header["run"].items() if k != "dataset_sha256"}
    write_file(checkpoint, arrays, {k: v for k, v in header.items() if k != "run"} | {"run": run | {
        "dataset": str(secret)}})
    line = run_cli(capsys, *train[2:], "--resume", "run", "--epochs", "2")
    assert f"the checkpoint names the dataset file {secret} but records no SHA-256 of it" in line
    assert "SECRET" not in line

    checkpoint.write_bytes(original)
    np.savez(tmp_path / "mine.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))  # the file it was trained on again
    assert main([*train, "--resume", "run", "--epochs", "2"]) == 0
    assert main([*train, "--resume", "run", "--epochs", "3", "--dataset", "mine.npz"]) == 0
