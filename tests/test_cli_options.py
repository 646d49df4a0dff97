"""The command line's options as a user types them: where they go, what --resume accepts, what is checked
before anything is written, and the one-line errors that replace tracebacks.

Most tests call ``backprop.cli.main`` in-process (fast); the few that need another user's file permissions run
the CLI in a subprocess.
"""

from __future__ import annotations

import json

import pytest

from backprop.cli import main

QUICK = ["--epochs", "1", "--hidden", "8", "--no-plots", "--no-progress"]


def one_error_line(capsys) -> str:
    """The single ``error:`` line the CLI printed (and nothing that looks like a traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------------ global options anywhere


@pytest.mark.parametrize("argv, expected", [
    (["train", "--backend", "array_api_strict"], "array_api_strict"),
    (["--backend", "array_api_strict", "train"], "array_api_strict"),
    (["--backend", "numpy", "train", "--backend", "array_api_strict"], "array_api_strict"),  # after wins
    (["--backend", "array_api_strict", "train", "--backend", "numpy"], "numpy"),
])
def test_backend_is_accepted_before_and_after_the_command(argv, expected, tmp_path):
    out = tmp_path / "run"
    assert main([*argv, *QUICK, "--output", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["backend"] == expected


def test_backend_after_evaluate_and_backends(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--backend", "array_api_strict"]) == 0
    assert "with array_api_strict" in capsys.readouterr().out
    assert main(["backends", "--backend", "array_api_strict"]) == 0
    assert "default (--backend): array_api_strict" in capsys.readouterr().out


def test_main_leaves_the_current_backend_as_it_was(tmp_path):
    from backends import current_backend

    before = current_backend()
    assert main(["backends", "--backend", "array_api_strict"]) == 0
    assert current_backend() is before


# ----------------------------------------------------------------------------------------------- --resume


@pytest.fixture
def two_epoch_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "2", "--optimizer", "sgd", "--lr", "0.05", "--output", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("extra, named", [
    (["--optimizer", "adam"], ["--optimizer adam (the run has sgd)"]),  # adam is the default: typed, so counted
    (["--lr", "0.1", "--hidden", "16"], ["--lr 0.1 (the run has 0.05)", "--hidden 16 (the run has 8)"]),
    (["--drop-last", "--seed", "0"], ["--drop-last (the run has it off)"]),  # --seed 0 is the run's own seed
    (["--dataset", "mnist"], ["--dataset mnist (the run has digits)"]),
])
def test_resume_refuses_options_that_would_change_the_run_and_names_each(two_epoch_run, capsys, extra, named):
    before = {p.name: p.read_bytes() for p in two_epoch_run.iterdir()}
    assert main(["train", "--resume", str(two_epoch_run), *extra]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"error: --resume {two_epoch_run} continues the run with the options it was started")
    for text in named:
        assert text in line
    assert line.count("(the run has") == len(named)
    assert {p.name: p.read_bytes() for p in two_epoch_run.iterdir()} == before  # nothing touched


def test_resume_accepts_the_run_s_own_options_and_more_epochs_bit_for_bit(two_epoch_run, tmp_path, capsys):
    import numpy as np

    import backprop as bp

    whole = tmp_path / "whole"
    assert main(["train", *QUICK, "--epochs", "3", "--optimizer", "sgd", "--lr", "0.05", "--output", str(whole)]) == 0
    # the run's own values, spelled differently, and display options are fine
    assert main(["train", "--resume", str(two_epoch_run), "--epochs", "3", "--optimizer", "SGD", "--lr", "5e-2",
                 "--hidden", " 8", "--no-plots", "--no-progress", "--output", str(two_epoch_run)]) == 0
    assert "resuming" in capsys.readouterr().out
    expected, _ = bp.load_model(whole / "model.safetensors")
    resumed, _ = bp.load_model(two_epoch_run / "model.safetensors")
    for name, weight in expected.named_parameters().items():
        np.testing.assert_array_equal(resumed.named_parameters()[name], weight)


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "1"], "--epochs 1 with --resume {out}: the run has already trained 2 epochs"),
    (["--overwrite"], "--overwrite and --resume {out}: resuming continues the run's files"),
    (["--output", "elsewhere"], "--output elsewhere and --resume {out}: a resumed run continues in its own"),
])
def test_resume_rejects_what_it_cannot_honour(two_epoch_run, capsys, extra, message):
    assert main(["train", "--resume", str(two_epoch_run), *extra]) == 2
    assert message.format(out=two_epoch_run) in one_error_line(capsys)


def test_resume_cannot_stretch_a_cosine_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--epochs", "2", "--schedule", "cosine", "--output", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "4"]) == 2
    assert "the run's cosine schedule is laid out over its 2 epochs" in one_error_line(capsys)


# ------------------------------------------------------------------------------------- evaluate's loss


@pytest.mark.parametrize("recorded", ["mse", "binary_cross_entropy", None])
def test_evaluate_uses_the_loss_the_model_was_trained_with(recorded, tmp_path, capsys):
    import numpy as np

    import backprop as bp

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    model, metadata = bp.load_model(out / "model.safetensors")
    assert metadata["loss"] == "cross_entropy"  # what `backprop train` trains with, recorded
    if recorded is None:
        del metadata["loss"]  # a model saved before losses were recorded: trained with cross-entropy
    else:
        metadata["loss"] = recorded
    bp.save_model(out / "model.safetensors", model, metadata)
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out

    digits = bp.data.load_digits()  # the expected loss, computed here in float64 from the model's scores
    scores = np.asarray(model.forward(digits.x_test), dtype=np.float64)
    onehot = np.eye(10)[digits.y_test]
    if recorded == "mse":
        expected = np.mean((scores - onehot) ** 2)
    elif recorded == "binary_cross_entropy":
        expected = np.mean(np.logaddexp(0, scores) - scores * onehot)
    else:
        shifted = scores - scores.max(axis=1, keepdims=True)
        expected = -np.mean((shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))[onehot == 1])
    assert f"test loss {expected:.4f} " in printed, printed


def test_evaluate_rejects_an_unknown_recorded_loss(tmp_path, capsys):
    import backprop as bp

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    model, metadata = bp.load_model(out / "model.safetensors")
    bp.save_model(out / "model.safetensors", model, {**metadata, "loss": "hinge"})
    assert main(["evaluate", str(out)]) == 2
    assert "the model records an unknown loss 'hinge'" in one_error_line(capsys)


# ---------------------------------------------------------------------- every option checked before writing


def run_main(argv) -> int:
    """``main(argv)``'s exit status, argparse's own usage errors (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("bad, message", [
    (["--optimizer", "magic"], "unknown optimizer 'magic'"),
    (["--lr", "-0.5"], "learning rate must be a positive finite number, got -0.5"),
    (["--lr", "nan"], "learning rate must be a positive finite number, got nan"),
    (["--schedule", "linear"], "unknown learning-rate schedule 'linear'"),
    (["--warmup-epochs", "30"], "warmup_epochs must be less than epochs (30), got 30"),
    (["--batch-size", "many"], "batch size must be a positive integer or 'full', got 'many'"),
    (["--clip-norm", "0"], "clip_norm must be a positive number, got 0.0"),
    (["--early-stopping", "-1"], "patience must be a positive integer, got -1"),
    (["--validation-split", "1"], "validation_split must be a fraction in (0, 1), got 1.0"),
    (["--validation-split", "0.9999"], "validation_split=0.9999 leaves no training data out of 1437 examples"),
    (["--dropout", "1"], "p must be a probability in [0, 1), got 1.0"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0, got -1.0"),
    (["--epochs", "0"], "epochs must be a positive integer, got 0"),
    (["--seed", "-1"], "seed must be a non-negative integer, got -1"),
    (["--data-dir", "somewhere"], "a data directory (somewhere) is read for mnist and fashion-mnist only"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--dataset", "missing.csv"], "missing.csv: no such file"),
    (["--scaling", "max"], "argument --scaling: invalid choice: 'max'"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
])
@pytest.mark.parametrize("output", ["given", "default"])
def test_a_bad_option_stops_before_anything_is_written(bad, message, output, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default output directory would be runs/... in here
    argv = ["train", *bad, "--no-progress"] + (["--output", "out"] if output == "given" else [])
    assert run_main(argv) == 2
    assert message in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # no output directory, no runs/


# ------------------------------------------------------------------------------------------ help, --hidden


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "backends"])
def test_help_shows_meaningful_defaults_only(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for noise in ("default: None", "default: False", "default: ==SUPPRESS=="):
        assert noise not in text
    if command == "train":
        for shown in ("(default: 30)", "(default: 256,128)", "(default: adam)", "(default: 32)",
                      "(default: no clipping)", "(default: the optimizer's own: 0.001 for adam"):
            assert shown in text, shown


@pytest.mark.parametrize("hidden", ["", " ", "256,,128", "64,"])
def test_an_empty_hidden_size_is_an_error_not_a_linear_model(hidden, tmp_path, capsys):
    assert main(["train", "--hidden", hidden, "--output", str(tmp_path / "out")]) == 2
    assert "--hidden expects comma-separated layer sizes" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_hidden_none_is_the_explicit_linear_model(tmp_path, capsys):
    import backprop as bp

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--hidden", "none", "--output", str(out)]) == 0
    model, _ = bp.load_model(out / "model.safetensors")
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    assert (model.layers[0].in_features, model.layers[0].out_features) == (64, 10)
    assert main(["train", *QUICK, "--hidden", "none", "--dropout", "0.2", "--output", str(tmp_path / "b")]) == 2
    assert "--dropout 0.2 applies after hidden layers, and the model has none" in one_error_line(capsys)
