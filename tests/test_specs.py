"""Any architecture from the command line: model specs (``backprop train --model``), shape inference, the shipped
specs of the examples, ``backprop summary``, and the top-level exports.

Runs are tiny (full-batch, one epoch, a few units) and in-process (``backprop.cli.main``); the real trainings
of the shipped specs are measured by hand (README), not here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
from backprop import specs
from backprop.cli import main
from backprop.errors import ConfigError, ShapeError
from backprop.layers import LAYER_TYPES
from backprop.layers.shape_inference import infer, layer_shapes, shape_text

from conftest import assert_on_backend, weights

QUICK = ["--epochs", "1", "--batch-size", "full", "--no-plots", "--no-progress", "--backend", "numpy"]

TINY_CNN = """
description = "a tiny CNN for the tests"
input_shape = "image"

[train]
dataset = "digits"
validation_split = 0

[[layers]]
type = "Conv2D"
out_channels = 2
kernel_size = 3
padding = 1

[[layers]]
type = "ReLU"

[[layers]]
type = "MaxPool2D"
kernel_size = 2

[[layers]]
type = "Flatten"

[[layers]]
type = "Dense"
out_features = "outputs"
"""


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def write(tmp_path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ shape inference

@pytest.mark.parametrize("cls, options, shape, config_items, output", [
    ("Dense", {"out_features": 10}, (64,), {"in_features": 64}, (10,)),
    ("Dense", {"out_features": 7}, (5, 3), {"in_features": 3}, (5, 7)),  # every position of a sequence
    ("Conv2D", {"out_channels": 4, "kernel_size": 3}, (2, 8, 8), {"in_channels": 2}, (4, 6, 6)),
    ("Conv2D", {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}, (1, 9, 7),
     {"in_channels": 1}, (4, 5, 4)),
    ("MaxPool2D", {"kernel_size": 2}, (3, 9, 8), {}, (3, 4, 4)),
    ("AvgPool2D", {"kernel_size": 3, "stride": 1, "padding": 1}, (3, 5, 5), {}, (3, 5, 5)),
    ("Flatten", {}, (3, 4, 4), {}, (48,)),
    ("Reshape", {"shape": [1, 8, 8]}, (64,), {}, (1, 8, 8)),
    ("ReLU", {}, (7, 3), {}, (7, 3)),
    ("Dropout", {"p": 0.5}, (7,), {}, (7,)),
    ("BatchNorm1D", {}, (12,), {"num_features": 12}, (12,)),
    ("BatchNorm2D", {}, (5, 4, 4), {"num_channels": 5}, (5, 4, 4)),
    ("LayerNorm", {}, (6, 8), {"normalized_shape": [8]}, (6, 8)),
    ("Embedding", {"num_embeddings": 30, "embedding_dim": 4}, (9,), {}, (9, 4)),
    ("LSTM", {"hidden_size": 8}, (20, 3), {"input_size": 3}, (20, 8)),
    ("GRU", {"hidden_size": 8, "bidirectional": True, "return_sequences": False}, (20, 3), {"input_size": 3}, (16,)),
    ("RNN", {"hidden_size": 5}, (None, 3), {"input_size": 3}, (None, 5)),
    ("FixedPointRecurrent", {"hidden_size": 6}, (64,), {"input_size": 64}, (6,)),
])
def test_each_layer_type_fills_in_its_input_sizes_and_gives_the_built_layers_output_shape(
        cls, options, shape, config_items, output):
    config, out = infer(LAYER_TYPES[cls], options, shape)
    assert out == output
    assert config == {**options, **config_items}
    if None not in shape:  # the rule agrees with the layer itself, built and run on one example
        layer = LAYER_TYPES[cls](**config, backend="numpy")
        x = np.zeros((1, *shape), np.int64 if cls == "Embedding" else np.float32)
        assert tuple(layer(x).shape[1:]) == output


def test_every_built_in_layer_type_has_a_shape_rule():
    from backprop.layers.shape_inference import RULES

    missing = [name for name, cls in LAYER_TYPES.items() if name != "Sequential"
               and not any(base in RULES for base in cls.__mro__) and "Pool" not in name]
    assert not missing


@pytest.mark.parametrize("cls, options, shape, message", [
    ("Conv2D", {"out_channels": 2, "kernel_size": 3}, (64,),
     r"expected input of shape \(channels, height, width\) per example, got \(64,\) \(declare input_shape"),
    ("Dense", {"out_features": 2, "in_features": 5}, (64,),
     r"in_features = 5, but its input has shape \(64,\), which gives in_features = 64"),
    ("Conv2D", {"out_channels": 2, "kernel_size": 5}, (1, 3, 3), r"smaller than the kernel 5x5"),
    ("Reshape", {"shape": [3, 3]}, (8,), r"cannot reshape \(8,\) \(8 values per example\) to \(3, 3\)"),
    ("LSTM", {"hidden_size": 4}, (12,), r"expected input of shape \(time, features\)"),
    ("LayerNorm", {"normalized_shape": [5]}, (4, 6), r"normalized_shape = \[5\] is not the trailing shape"),
])
def test_shapes_that_do_not_fit_are_shape_errors_saying_what_was_expected(cls, options, shape, message):
    with pytest.raises(ShapeError, match=message):
        infer(LAYER_TYPES[cls], options, shape)


def test_a_registered_layer_without_a_rule_is_probed_with_zeros(monkeypatch):
    class Twice(bp.Layer):  # (batch, n) -> (batch, 2n)
        def begin_update(self, x, *, training=True):
            return self.xp.concat([x, x], axis=-1), lambda dy: dy[..., : x.shape[-1]] + dy[..., x.shape[-1]:]

    monkeypatch.setitem(LAYER_TYPES, "Twice", Twice)
    assert infer(Twice, {}, (3,)) == ({}, (6,))
    with pytest.raises(ShapeError, match="Twice has no shape rule"):
        infer(Twice, {}, (None, 3))


def test_a_spec_with_a_registered_layer_that_declares_no_arrays_trains(monkeypatch, tmp_path):
    class Twice(bp.Layer):  # (batch, n) -> (batch, 2n), no parameters and no array_shapes
        def begin_update(self, x, *, training=True):
            return self.xp.concat([x, x], axis=-1), lambda dy: dy[..., : x.shape[-1]] + dy[..., x.shape[-1]:]

    monkeypatch.setitem(LAYER_TYPES, "Twice", Twice)
    spec = write(tmp_path, '[train]\ndataset = "digits"\nvalidation_split = 0\n[[layers]]\ntype = "Twice"\n'
                           '[[layers]]\ntype = "Dense"\nout_features = "outputs"\n')
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["parameters"] == 128 * 10 + 10


# -------------------------------------------------------------------------------------------- reading specs

@pytest.mark.parametrize("text, expected", [
    ("[[layers]]\ntype = \"Conv3D\"\n", r"spec.toml: layers\[0\]: unknown layer type 'Conv3D'; did you mean Conv2D\?"),
    ("[[layers]]\ntype = \"Dense\"\nout_features = 3\nunits = 4\n",
     r"spec.toml: layers\[0\] \(Dense\): unknown option 'units' \(Dense takes in_features, out_features, bias, init\)"),
    ("[[layers]]\ntype = \"ReLU\"\n[[layers]]\ntype = \"Dense\"\nname = \"head\"\nout_feature = 3\n",
     r"layers\[1\] \"head\" \(Dense\): unknown option 'out_feature'; did you mean out_features\?"),
    ("[[layers]]\ntype = \"Dense\"\nrng = 3\nout_features = 3\n", r"rng is set by the run, not the spec"),
    ("[[layers]]\nout_features = 3\n", r"layers\[0\]: no layer type"),
    ("layers = []\n", r"spec.toml: expected a non-empty list of layers"),
    ("input_shape = \"images\"\n[[layers]]\ntype = \"ReLU\"\n", r"input_shape must be 'flat', 'image', 'sequence'"),
    ("layer = 3\n", r"unknown entry 'layer'"),
    ("[[layers]\ntype = \"Dense\"\n", r"spec.toml: not valid TOML"),
])
def test_spec_form_errors_name_the_file_the_layer_and_what_was_expected(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected):
        specs.load_spec(write(tmp_path, text))


def test_layer_types_are_found_whatever_their_case_and_json_works_like_toml(tmp_path):
    content = {"input_shape": [1, 4, 4], "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3},
                                                    {"type": "flatten"}, {"type": "dense", "out_features": 5}]}
    spec = specs.load_spec(write(tmp_path, json.dumps(content), "spec.json"))
    resolved = specs.resolve(spec, spec.input_shape, flat_features=16)
    assert [kind for kind, _, _ in resolved.layers] == ["Conv2D", "Flatten", "Dense"]
    assert resolved.output_shape == (5,) and resolved.layers[2][1]["in_features"] == 8
    with pytest.raises(ConfigError, match=r"spec.json: not valid JSON \(line 1"):
        specs.load_spec(write(tmp_path, "{layers: 3}", "spec.json"))


def test_shipped_specs_are_listed_and_each_reads(tmp_path):
    shipped = specs.shipped_specs()
    assert set(shipped) == {"cnn-digits", "char-lm", "lstm-adding", "fixed-point"}
    for name, description in shipped.items():
        assert description and specs.load_spec(name).source == name
    with pytest.raises(ConfigError, match=r"--model cnn: no shipped spec of that name .* shipped specs: char-lm, "
                                          r"cnn-digits, fixed-point, lstm-adding"):
        specs.load_spec("cnn")
    with pytest.raises(ConfigError, match=r"--model .*missing.toml: no such file"):
        specs.load_spec(tmp_path / "missing.toml")


# ---------------------------------------------------------------- the shipped specs are the examples' models

def _example_models(backend):
    """name -> (the example's own model, the dataset its spec is laid out for)."""
    from backprop.examples import adding_problem, char_lm, cnn_digits, fixed_point

    digits = bp.data.load_dataset("digits")
    sonnets = bp.data.load_dataset("sonnets")
    return {
        "cnn-digits": (cnn_digits.build_model((8, 8), 10, seed=0, backend=backend), digits),
        "fixed-point": (fixed_point.build_model(64, 10, seed=0, backend=backend), digits),
        "lstm-adding": (adding_problem.make_model("lstm", hidden=32, seed=0, backend=backend),
                        bp.data.load_dataset("adding-problem")),
        "char-lm": (char_lm.make_model("lstm", sonnets.num_classes, 128, seed=0, backend=backend), sonnets),
    }


def test_each_shipped_spec_builds_its_examples_model_with_the_same_initial_weights():
    from backprop.runs import DEFAULTS, make_model

    for name, (example, dataset) in _example_models("numpy").items():
        model, source = make_model({**DEFAULTS, "model": name}, dataset, example.backend)
        layers = model.layers[1:] if type(model.layers[0]).__name__ == "Reshape" else model.layers
        assert source == name
        assert [bp.architecture(layer) for layer in layers] == [bp.architecture(layer) for layer in example.layers]
        spec_weights, example_weights = weights(bp.Sequential(layers)), weights(example)
        assert spec_weights.keys() == example_weights.keys()
        for key in spec_weights:
            np.testing.assert_array_equal(spec_weights[key], example_weights[key], err_msg=f"{name}: {key}")


@pytest.mark.parametrize("name, example, options", [
    ("cnn-digits", "cnn_digits", ("epochs", "batch_size", "lr")),
    ("fixed-point", "fixed_point", ("epochs", "batch_size", "lr")),
    ("lstm-adding", "adding_problem", ("epochs", "batch_size", "lr", "clip_norm")),
    ("char-lm", "char_lm", ("epochs", "batch_size", "lr", "clip_norm")),
])
def test_each_shipped_spec_trains_with_its_examples_settings(name, example, options):
    import importlib

    defaults = importlib.import_module(f"backprop.examples.{example}").build_parser().parse_args([])
    train = specs.load_spec(name).train
    assert {key: train[key] for key in options} == {key: getattr(defaults, key) for key in options}


def test_the_examples_share_one_parser(capsys):
    from backprop.examples import adding_problem, char_lm, cnn_digits, fixed_point

    parsers = [module.build_parser() for module in (adding_problem, char_lm, cnn_digits, fixed_point)]
    for parser in parsers:
        shared = {action.dest: action.help for action in parser._actions}
        assert {"epochs", "batch_size", "lr", "seed", "backend"} <= shared.keys()
        assert shared["seed"] == "seed of the initial weights and the shuffling"
    with pytest.raises(SystemExit) as exit_info:
        parsers[0].parse_args(["--epochs", "many"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: argument --epochs: invalid int value: 'many' "
                                               "(see backprop example adding --help)")


# ----------------------------------------------------------------------------------- backprop train --model

def test_train_a_spec_then_evaluate_predict_summarize_and_resume_without_the_spec(tmp_path, capsys):
    spec, out = write(tmp_path, TINY_CNN), tmp_path / "run"
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(out)]) == 0
    log = capsys.readouterr().out
    assert f"training {spec}: Reshape-Conv2D-ReLU-MaxPool2D-Flatten-Dense (" in log
    summary = json.loads((out / "summary.json").read_text())
    model = bp.load_model(out / "model.safetensors", backend="numpy")
    metadata = model.metadata
    assert summary["parameters"] == model.num_parameters() == 2 * 9 + 2 + 32 * 10 + 10
    assert metadata["options"]["model"] == str(spec) and metadata["input_shape"] == [64]
    assert [type(layer).__name__ for layer in model.layers] == ["Reshape", "Conv2D", "ReLU", "MaxPool2D", "Flatten",
                                                                "Dense"]

    assert main(["evaluate", str(out), "--backend", "numpy"]) == 0
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in capsys.readouterr().out
    rows = tmp_path / "rows.npy"
    np.save(rows, bp.data.load_digits().x_test[:3] * 16)  # raw pixels; the model file's scaler applies
    assert main(["predict", str(out), str(rows), "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "index,class,name"
    np.save(rows, np.zeros((2, 10), np.float32))
    assert main(["predict", str(out), str(rows), "--backend", "numpy"]) == 2
    assert "rows have 10 features, the model expects 64" in one_error_line(capsys)

    spec.unlink()  # a resumed run is rebuilt from its checkpoint, not from the spec
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["epochs_trained"] == 2


def test_a_spec_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    spec = write(tmp_path, TINY_CNN)
    assert main(["train", "--model", str(spec), *QUICK, "--epochs", "2", "--output", str(tmp_path / "a")]) == 0
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(tmp_path / "b")]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--epochs", "2", "--no-progress", "--no-plots"]) == 0
    a = weights(bp.load_model(tmp_path / "a" / "model.safetensors", backend="numpy"))
    b = weights(bp.load_model(tmp_path / "b" / "model.safetensors", backend="numpy"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_the_spec_sets_defaults_and_the_command_line_overrides_them(tmp_path):
    spec = write(tmp_path, TINY_CNN.replace("validation_split = 0", "validation_split = 0\nlr = 0.05\nepochs = 7"))
    out = tmp_path / "run"
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(out)]) == 0
    options = bp.load_model(out / "model.safetensors", backend="numpy").metadata["options"]
    assert options["lr"] == 0.05 and options["epochs"] == 1 and options["validation_split"] == 0


@pytest.mark.parametrize("edit, argv, expected", [
    (("out_channels = 2", "out_channels = 2\nkernal_size = 3"), [],
     r"layers\[0\] \(Conv2D\): unknown option 'kernal_size'; did you mean kernel_size\?"),
    (("type = \"ReLU\"", "type = \"Relu6\""), [], r"layers\[1\]: unknown layer type 'Relu6'; did you mean ReLU\?"),
    (("input_shape = \"image\"", "input_shape = \"flat\""), [],
     r"layers\[0\] \(Conv2D\): expected input of shape \(channels, height, width\) per example, got \(64,\)"),
    (("out_features = \"outputs\"", "out_features = \"outputs\"\nin_features = 33"), [],
     r"layers\[4\] \(Dense\): in_features = 33, but its input has shape \(32,\)"),
    (("out_features = \"outputs\"", "out_features = 3"), [],
     r"layers\[4\] \(Dense\): the model gives \(3,\) per example, but the digits dataset's targets needs \(10,\)"),
    (("input_shape = \"image\"", "input_shape = [1, 9, 9]"), [],
     r"input_shape \[1, 9, 9\] holds 81 values, but the dataset's examples have 64 features"),
    (("validation_split = 0", "validation_split = 0\nbatch = 3"), [],
     r"\[train\] batch is not a backprop train option"),
    (("kernel_size = 3", "kernel_size = 11"), [], r"layers\[0\] \(Conv2D\): an input of 8x8 pixels is smaller than"),
    ((), ["--hidden", "16"], r"--hidden shapes the default MLP, and --model .* lists its own layers"),
    (("padding = 1", "padding = -1"), [],
     r"layers\[0\] \(Conv2D\): padding must be an integer >= 0 or a pair \(h, w\) of them, got -1$"),
    (("out_features = \"outputs\"", "out_features = \"outputs\"\ninit = \"gaussian\""), [],
     r"layers\[4\] \(Dense\): unknown initializer 'gaussian'"),
])
def test_every_spec_error_is_one_line_naming_the_file_and_layer_and_nothing_is_written(
        tmp_path, capsys, edit, argv, expected):
    text = TINY_CNN.replace(*edit) if edit else TINY_CNN
    spec, out = write(tmp_path, text), tmp_path / "run"
    assert main(["train", "--model", str(spec), *QUICK, *argv, "--output", str(out)]) == 2
    line = one_error_line(capsys)
    assert re.search(expected, line), line
    assert "Traceback" not in line and (str(spec) in line or "--hidden" in line)
    assert not out.exists()


def test_train_model_with_an_unknown_shipped_name_or_a_missing_file(tmp_path, capsys):
    assert main(["train", "--model", "resnet50", *QUICK, "--output", str(tmp_path / "r")]) == 2
    assert "--model resnet50: no shipped spec of that name" in one_error_line(capsys)
    assert main(["train", "--model", str(tmp_path / "none.toml"), *QUICK, "--output", str(tmp_path / "r")]) == 2
    assert "none.toml: no such file" in one_error_line(capsys)


TINY_LSTM = """
input_shape = "sequence"
[train]
dataset = "adding-problem"
loss = "mse"
validation_split = 0

[[layers]]
type = "LSTM"
hidden_size = 3
return_sequences = false

[[layers]]
type = "Dense"
out_features = "outputs"
"""


def test_a_recurrent_regression_spec_trains_on_the_adding_problem_and_evaluates(tmp_path, capsys):
    spec, out = write(tmp_path, TINY_LSTM), tmp_path / "run"
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(out)]) == 0
    capsys.readouterr()
    model = bp.load_model(out / "model.safetensors", backend="numpy")
    metadata = model.metadata
    assert metadata["loss"] == "mse" and metadata["dataset"] == "adding-problem"
    assert [type(layer).__name__ for layer in model.layers] == ["Reshape", "LSTM", "Dense"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["test_loss"] < 2  # an MSE on targets in [0, 2)
    assert main(["evaluate", str(out), "--backend", "numpy"]) == 0
    assert f"test loss {summary['test_loss']:.4g} on adding-problem" in capsys.readouterr().out


def test_a_sequence_labelling_spec_trains_on_the_sonnets(tmp_path, capsys):
    spec = write(tmp_path, TINY_LSTM.replace('"adding-problem"', '"sonnets"').replace('loss = "mse"', "")
                 .replace("return_sequences = false", ""))
    out = tmp_path / "run"
    assert main(["train", "--model", str(spec), *QUICK, "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert f"/{149 * 64}), test loss" in capsys.readouterr().out  # accuracy counts a prediction per character
    assert main(["evaluate", str(out), "--backend", "numpy"]) == 0
    assert f"({round(summary['test_accuracy'] * 149 * 64)}/{149 * 64})" in capsys.readouterr().out
    vocabulary = bp.data.load_dataset("sonnets").num_classes
    assert summary["test_loss"] < 1.05 * math.log(vocabulary)  # about uniform after one step, not worse
    model = bp.load_model(out / "model.safetensors", backend="numpy")
    assert model(np.zeros((2, 64 * vocabulary), np.float32)).shape == (2, 64, vocabulary)


# --------------------------------------------------------------------------------------- the sequence data

def test_the_sequence_datasets_are_the_examples_data():
    from backprop.data.sequences import adding_problem, load_text
    from backprop.examples.char_lm import windows

    adding = bp.data.load_dataset("adding-problem", seed=3)
    x, y = adding_problem(10_000, 50, seed=3)
    np.testing.assert_array_equal(adding.x_train, x[:8000].reshape(8000, 100))
    np.testing.assert_array_equal(adding.y_test, y[8000:])
    assert adding.image_shape == (50, 2) and adding.num_classes == 1

    sonnets = bp.data.load_dataset("sonnets")
    text = load_text("sonnets")
    vocab = sorted(set(text))
    ids = [vocab.index(c) for c in text[: int(0.9 * len(text))]]
    inputs, targets = windows(ids, 64, 32)
    assert sonnets.y_train.tolist() == targets and sonnets.class_names == vocab
    first = sonnets.x_train[0].reshape(64, len(vocab))
    assert first.argmax(axis=1).tolist() == inputs[0] and first.sum() == 64


# ------------------------------------------------------------------------------------------ model files

@pytest.mark.parametrize("name", ["cnn-digits", "fixed-point", "lstm-adding", "char-lm"])
def test_spec_built_models_round_trip_through_model_files(backend, tmp_path, name):
    """Conv, recurrent and fixed-point models keep their architecture and outputs through a model file, on
    every backend (small versions of the shipped specs, so every backend stays quick)."""
    spec = specs.load_spec(name)
    for layer in spec.layers:  # fewer units, same layer types and options
        for key in ("out_channels", "hidden_size"):
            if key in layer["options"]:
                layer["options"][key] = 3
    shape, outputs = {"cnn-digits": ((1, 8, 8), 10), "fixed-point": ((64,), 10), "lstm-adding": ((5, 2), 1),
                      "char-lm": ((4, 6), 6)}[name]
    resolved = specs.resolve(spec, shape, outputs=outputs, flat_features=math.prod(shape))
    model = specs.build(resolved, seed=1, backend=backend)
    bp.save_model(tmp_path / "m.safetensors", model, {"input_shape": [math.prod(shape)]})
    loaded = bp.load_model(tmp_path / "m.safetensors", backend=backend)
    assert bp.architecture(loaded) == bp.architecture(model)
    assert [type(layer).__name__ for layer in loaded.layers] == [item["type"] for item in
                                                                 resolved.architecture()["config"]["layers"]]
    x = backend.from_host(np.random.default_rng(0).uniform(size=(2, math.prod(shape))).astype(np.float32))
    y = loaded(x)
    assert_on_backend(y, backend, shape=(2, *resolved.output_shape))
    np.testing.assert_allclose(backend.to_host(y), backend.to_host(model(x)), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------- backprop summary

def test_summary_of_a_shipped_spec(capsys):
    assert main(["summary", "cnn-digits"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Model: cnn-digits for digits: 1437 train / 360 test samples")
    rows = {line.split()[0] + " " + line.split()[1]: line for line in out.splitlines() if re.match(r"\d+ \(", line)}
    assert "(None, 16, 8, 8)" in rows["1 (Conv2D)"] and "160" in rows["1 (Conv2D)"]
    assert "(None, 32, 4, 4)" in rows["5 (MaxPool2D)"] and "(None, 10)" in rows["9 (Dense)"]
    assert "Input shape: (None, 64) (float32)" in out
    assert "Trainable params: 38,282 (149.5 KiB)" in out
    assert "Training memory for the parameters: 598.2 KiB (weights and gradients, plus 2 adam state arrays)" in out


def test_summary_of_a_model_file_matches_the_model(tmp_path, capsys):
    model = bp.Sequential([bp.Dense(6, 5, rng=0, backend="numpy"), bp.BatchNorm1D(5, backend="numpy"),
                           bp.ReLU(backend="numpy"), bp.Dense(5, 2, rng=1, backend="numpy")])
    bp.save_model(tmp_path / "model.safetensors", model, {"dataset": "mine"})
    assert main(["summary", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Model: {tmp_path / 'model.safetensors'} (trained on mine)")
    assert re.search(r"1 \(BatchNorm1D\)\s+\(None, 5\)\s+10 \+ 10\s+80 B", out)
    assert f"Trainable params: {model.num_parameters()}" in out and "Input shape: (None, 6)" in out
    assert "Non-trainable buffers (running statistics): 10 values (40 B)" in out


def test_summary_errors_are_one_line(tmp_path, capsys):
    assert main(["summary", "nothing-of-that-name"]) == 2
    assert "--model nothing-of-that-name: no shipped spec of that name" in one_error_line(capsys)
    assert main(["summary", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such model file" in one_error_line(capsys)
    spec = write(tmp_path, "input_shape = [4]\n[[layers]]\ntype = \"Dense\"\nout_features = \"outputs\"\n")
    assert main(["summary", str(spec)]) == 2
    assert 'layers[0] (Dense): out_features = "outputs" needs a dataset' in one_error_line(capsys)
    assert main(["summary", str(spec), "--dataset", "digits"]) == 2  # [4] does not hold the 64 pixels
    assert "input_shape [4] holds 4 values, but the dataset's examples have 64 features" in one_error_line(capsys)


def test_layer_shapes_of_a_description_with_an_unknown_time_axis():
    model = bp.Sequential([bp.LSTM(3, 4, backend="numpy"), bp.Dense(4, 2, backend="numpy")])
    rows = layer_shapes(bp.architecture(model), (None, 3))
    assert [(name, kind, shape_text(shape)) for name, kind, _, shape in rows] == [
        ("0", "LSTM", "(None, 4)"), ("1", "Dense", "(None, 2)")]


# ------------------------------------------------------------------------------------------- the public API

def test_every_layer_loss_optimizer_and_metric_is_exported_at_the_top_level():
    from backprop.losses import LOSSES
    from backprop.optim import OPTIMIZERS

    exported = set(bp.__all__)
    assert len(exported) == len(bp.__all__)
    wanted = {*LAYER_TYPES, *(cls.__name__ for cls in LOSSES.values()),
              *(cls.__name__ for cls, _ in OPTIMIZERS.values()), "evaluate", "predict_classes", "predict_logits",
              "Layer", "Loss", "Optimizer"}
    assert wanted <= exported, sorted(wanted - exported)
    for name in bp.__all__:
        assert getattr(bp, name) is not None
    assert bp.Conv2D is LAYER_TYPES["Conv2D"] and bp.LSTM is LAYER_TYPES["LSTM"]


def test_all_is_grouped_and_sorted_within_each_group():
    source = (Path(bp.__file__)).read_text()
    block = source[source.index("__all__ = ["):]
    block = block[: block.index("\n]") + 2]
    groups, current = [], []
    for line in block.splitlines()[1:]:
        if line.strip().startswith("#") or line.strip() == "]":
            if current:
                groups.append(current)
            current = []
        else:
            current += re.findall(r'"([^"]+)"', line)
    assert len(groups) >= 8
    for group in groups:
        assert group == sorted(group), group
    assert [name for group in groups for name in group] == bp.__all__


def test_the_docstring_says_the_weight_layout_once():
    doc = bp.__doc__
    assert "Dense weights are stored (in, out)" in doc and "torch.nn.Linear(64, 10).weight" in doc
    assert bp.Dense(64, 10, backend="numpy").params["weight"].shape == (64, 10)


# ------------------------------------------------ a model that starts with a Reshape trains as fast as without

def test_leading_layers_without_parameters_let_the_first_layer_with_some_skip_its_input_gradient(backend):
    """A spec's model starts with a Reshape of the flat rows: in training (input_grad=False) the Conv2D or Dense
    after it must not compute dL/dinput (for a convolution, the col2im that no one uses: 4x the CPU time of the
    example's own model), and the parameter gradients must not change."""
    calls = []

    class Spy(bp.Dense):
        def begin_update(self, x, *, training=True):
            y, back = super().begin_update(x, training=training)

            def spy(dy, input_grad=True):
                calls.append(input_grad)
                return back(dy, input_grad=input_grad)

            return y, spy

    model = bp.Sequential([bp.Flatten(backend=backend), bp.ReLU(backend=backend), Spy(12, 2, rng=0, backend=backend),
                           bp.Tanh(backend=backend), bp.Dense(2, 3, rng=1, backend=backend)])
    x = backend.from_host(np.random.default_rng(0).normal(size=(4, 3, 4)).astype(np.float32))
    dy = backend.from_host(np.ones((4, 3), np.float32))
    grads = []
    for input_grad in (True, False):
        model.zero_grad()
        _, back = model.begin_update(x, training=True)
        dx = back(dy, input_grad=input_grad)
        if input_grad:
            assert_on_backend(dx, backend, shape=(4, 3, 4))
        else:
            assert dx is None
        grads.append({name: backend.to_host(g) for name, g in model.named_gradients().items()})
    assert calls == [True, False]
    assert grads[0].keys() == grads[1].keys() == {"2.weight", "2.bias", "4.weight", "4.bias"}
    for name in grads[0]:
        np.testing.assert_array_equal(grads[0][name], grads[1][name])
