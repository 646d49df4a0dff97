"""`backprop train`, `evaluate` and `predict` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import backprop as bp

from conftest import weights


def cli(*args, cwd=None, timeout=300):
    env = {**os.environ, "BACKPROP_BACKEND": "numpy"}
    return subprocess.run([sys.executable, "-m", "backprop", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "digits"
    result = cli("train", "--epochs", "12", "--output", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_model_history_plots_and_summary(trained):
    out, result = trained
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "checkpoint.safetensors", "history.jsonl", "summary.json",
            "learning_curves.png", "confusion_matrix.png"} <= names
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(1, 13))
    for record in history:
        assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "grad_norms", "time"} <= set(record)
        assert set(record["grad_norms"]) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.97 and summary["backend"] == "numpy"
    assert "test accuracy" in result.stdout and "Traceback" not in result.stderr
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reproduces_the_reported_test_accuracy(trained):
    out, _ = trained
    summary = json.loads((out / "summary.json").read_text())
    for backend in ("numpy", "array_api_strict"):
        result = cli("--backend", backend, "evaluate", str(out))
        assert result.returncode == 0, result.stderr
        assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in result.stdout


def test_predict_on_raw_inputs(trained, tmp_path):
    out, _ = trained
    data = bp.data.load_digits()
    raw = np.rint(data.x_test[:20] * 16)  # the digits as the source file has them: pixel values 0..16
    np.save(tmp_path / "x.npy", raw)
    result = cli("predict", str(out), str(tmp_path / "x.npy"), "--output", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert rows[0] == "index,class,name" and len(rows) == 21
    predicted = np.array([int(r.split(",")[1]) for r in rows[1:]])
    assert (predicted == data.y_test[:20]).mean() >= 0.9


def test_predict_with_the_wrong_feature_count(trained, tmp_path):
    out, _ = trained
    np.save(tmp_path / "x.npy", np.zeros((3, 10)))
    result = cli("predict", str(out), str(tmp_path / "x.npy"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'x.npy'}: rows have 10 features, the model expects 64"


def test_an_existing_model_is_never_overwritten_silently(trained):
    out, _ = trained
    before = (out / "model.safetensors").read_bytes()
    result = cli("train", "--epochs", "1", "--output", str(out))
    assert result.returncode == 2 and "already holds a trained model" in result.stderr
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "-0.5"], "learning rate must be a positive finite number, got -0.5"),
    (["train", "--batch-size", "0"], "batch size must be a positive integer or 'full', got 0"),
    (["train", "--optimizer", "magic"], "unknown optimizer 'magic'"),
    (["train", "--activation", "swish"], "unknown activation 'swish'"),
    (["train", "--hidden", "256,-3"], "--hidden expects positive layer sizes"),
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--dropout", "1.5"], "p must be a probability in [0, 1)"),
    (["train", "--dataset", "imagenet"], "imagenet"),
    (["train", "--backend", "cupy:7"], "unavailable"),
    (["evaluate", "missing.safetensors"], "no such model file"),
    (["train", "--resume", "nowhere"], "no checkpoint.safetensors there"),
])
def test_usage_errors_exit_2_with_one_line(args, message, tmp_path):
    if "--backend" in args:  # a global flag: it goes before the command
        args = ["--backend", args[-1], *args[:-2]]
    result = cli(*args, "--output", str(tmp_path / "out")) if args[0] == "train" and "--resume" not in args \
        else cli(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(tmp_path):
    options = ["--epochs", "6", "--batch-size", "1", "--hidden", "32", "--optimizer", "sgd", "--lr", "0.01",
               "--no-plots", "--no-progress", "--dropout", "0.1"]
    uninterrupted = tmp_path / "whole"
    assert cli("train", *options, "--output", str(uninterrupted)).returncode == 0

    interrupted = tmp_path / "cut"
    env = {**os.environ, "BACKPROP_BACKEND": "numpy"}
    process = subprocess.Popen([sys.executable, "-m", "backprop", "train", *options, "--output", str(interrupted)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not (interrupted / "history.jsonl").exists():  # epoch 1 is done
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run wrote no history in 120 s"
        time.sleep(0.01)
    time.sleep(0.03)  # now inside epoch 2 or at its end: wherever it lands, the resumed run must match
    process.send_signal(signal.SIGINT)  # four more epochs of 1,293 one-example steps cannot end in 0.03 s
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "continue with: backprop train --resume" in stderr and "Traceback" not in stderr
    assert (interrupted / "checkpoint.safetensors").exists() and not (interrupted / "model.safetensors").exists()

    resumed = cli("train", "--resume", str(interrupted), "--no-progress", "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    whole = bp.load_model(uninterrupted / "model.safetensors")
    cut = bp.load_model(interrupted / "model.safetensors")
    for name, weight in weights(whole).items():
        np.testing.assert_array_equal(cut.named_parameters()[name].value, weight)
    history = (interrupted / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in history] == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(tmp_path, monkeypatch, capsys):
    import backprop.runs
    from backprop.cli import main

    def interrupted_while_loading(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(backprop.runs, "train_run", interrupted_while_loading)
    assert main(["train", "--output", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == ("interrupted before the first epoch ended: "
                                               "no checkpoint to resume from")


def test_a_model_trained_on_a_csv_file_evaluates_and_predicts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    labels = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    rows = ["a,b,c,d,label"] + [",".join(f"{v:.4f}" for v in r) + f",{label}" for r, label in zip(x, labels)]
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    trained = cli("train", "--dataset", str(tmp_path / "mine.csv"), "--epochs", "8", "--no-plots", "--no-progress",
                  "--output", str(out))
    assert trained.returncode == 0, trained.stderr
    evaluated = cli("evaluate", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in evaluated.stdout
    (tmp_path / "new.csv").write_text("a,b,c,d\n2,2,0,0\n-2,-2,0,0\n")
    predicted = cli("predict", str(out), str(tmp_path / "new.csv"))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.splitlines()[1:] == ["0,1,yes", "1,0,no"]
