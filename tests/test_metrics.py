"""Metrics that fit the task (issue 14): the metrics come from the loss (accuracy for cross-entropy, thresholded
accuracy for binary cross-entropy, MAE and R² for MSE), user metrics go through the same interface, and
``backprop train --task regression`` on a CSV reports MAE and R², not accuracy."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import backends.registry
import backprop as bp
from backends import BackendUnavailable
from backprop.cli import main
from backprop.metrics import MAE, R2, Accuracy, BinaryAccuracy, Metric
from backprop.training import Trainer, evaluate

from conftest import assert_on_backend


def _regression(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0], [0.5]], dtype=np.float32) + 3.0).astype(np.float32)
    return x, y


def _r2(prediction, target):
    residual = ((prediction - target) ** 2).sum(axis=0)
    total = ((target - target.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1 - residual / total))


# -- the metrics on the device, against NumPy -------------------------------------------------------------------
def test_each_metric_sums_on_the_device_and_matches_numpy(backend):
    rng = np.random.default_rng(1)
    prediction = rng.normal(size=(8, 2)).astype(np.float32)
    target = (prediction + 0.3 * rng.normal(size=(8, 2))).astype(np.float32)
    labels = rng.integers(0, 2, 8)
    p, t, lab = backend.from_host(prediction), backend.from_host(target), backend.from_host(labels)
    xp = backend.xp
    cases = [(MAE(), p, t, np.abs(prediction - target).mean()),
             (R2(), p, t, _r2(prediction, target)),
             (Accuracy(), p, lab, np.mean(prediction.argmax(axis=1) == labels)),
             (BinaryAccuracy(), p[:, :1], lab, np.mean((prediction[:, 0] > 0) == (labels == 1)))]
    for metric, pred, targ, expected in cases:
        with backend.activate():  # as inside a step: on the model's device
            sums = metric.sums(xp, pred, targ)
        assert_on_backend(sums, backend, shape=(metric.size(pred.shape[-1]),))
        assert metric.result([float(v) for v in backend.to_host(sums)], 8) == pytest.approx(expected, rel=1e-5)


def test_the_default_metrics_come_from_the_loss():
    assert [m.name for m in bp.CrossEntropy().default_metrics()] == ["accuracy"]
    assert [type(m) for m in bp.BinaryCrossEntropy().default_metrics()] == [BinaryAccuracy]
    assert [m.name for m in bp.MSE().default_metrics()] == ["mae", "r2"]


# -- training records the loss's metrics --------------------------------------------------------------------------
def test_an_mse_run_records_mae_and_r2_and_no_accuracy(backend):
    x, y = _regression()
    model = bp.mlp([3, 1], seed=0, backend=backend)
    lines = []
    history = Trainer(model, loss="mse", lr=0.05, epochs=40, batch_size=16, progress=False,
                      log=lines.append).fit(x, y, validation_split=0.25)
    last = history[-1]
    assert {"train_mae", "train_r2", "val_mae", "val_r2"} <= last.keys()
    assert not any("accuracy" in key for key in last)
    assert "acc" not in lines[-1] and "mae" in lines[-1] and "val_r2" in lines[-1]
    assert last["train_r2"] > 0.99 and last["val_r2"] > 0.99
    # the epoch's figures are those of the data: the validation ones again by evaluate, against NumPy
    x_val = x[-len(x) // 4:]
    figures = evaluate(model, backend.from_host(x_val), backend.from_host(y[-len(x) // 4:]), bp.MSE())
    assert set(figures) == {"loss", "mae", "r2"}
    assert figures["loss"] >= 0 and 0.99 < figures["r2"] <= 1


def test_binary_cross_entropy_takes_0_1_integer_labels_and_reports_thresholded_accuracy(backend):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)  # integer labels (batch,) for a (batch, 1) output
    model = bp.mlp([2, 1], seed=0, backend=backend)
    history = Trainer(model, loss="binary_cross_entropy", lr=0.1, epochs=15, batch_size=16, progress=False,
                      log=None).fit(x, y)
    assert history[-1]["train_accuracy"] > 0.9
    with pytest.raises(bp.DataError, match=r"labels must be class numbers 0\.\.1 for BinaryCrossEntropy"):
        Trainer(model, loss="binary_cross_entropy", epochs=1, progress=False, log=None).fit(x, y + 1)


def test_argmax_accuracy_of_a_one_output_model_is_refused_when_training_starts(backend):
    x, y = _regression(n=16)
    model = bp.mlp([3, 1], seed=0, backend=backend)
    weights = model.named_parameters()
    before = {name: np.array(backend.to_host(box.value)) for name, box in weights.items()}
    trainer = Trainer(model, loss="mse", metrics=["accuracy"], epochs=2, batch_size=8, progress=False, log=None)
    expected = r"accuracy .*needs at least two outputs.*1 output.*'binary_accuracy'"
    with pytest.raises(bp.ConfigError, match=expected):
        trainer.fit(x, y)
    assert trainer.history == []
    assert all(np.array_equal(backend.to_host(box.value), before[name]) for name, box in weights.items())
    with pytest.raises(bp.ConfigError, match=expected):  # the same in evaluate, not a 100% from argmax of one
        evaluate(model, backend.from_host(x), backend.from_host(y), bp.MSE(), metrics=[Accuracy()])


class MeanBias(Metric):
    name = "bias"
    higher_is_better = False

    def sums(self, xp, prediction, target):
        return xp.reshape(xp.sum(prediction - target), (1,))

    def result(self, sums, examples):
        return sums[0] / examples


def test_a_user_metric_is_recorded_and_early_stopping_can_watch_it():
    x, y = _regression(n=32)
    model = bp.mlp([3, 1], seed=0, backend="numpy")
    stopper = bp.EarlyStopping(2, monitor="val_mae")
    history = Trainer(model, loss="mse", epochs=3, batch_size=8, progress=False, log=None,
                      metrics=[MeanBias(), "mae"], callbacks=[stopper]).fit(x, y, validation_split=0.25)
    assert {"train_bias", "val_bias", "train_mae", "val_mae"} <= history[-1].keys() and "train_r2" not in history[-1]
    prediction = np.asarray(model.forward(model.backend.from_host(x[:8]), training=False))
    bias = evaluate(model, model.backend.from_host(x[:8]), model.backend.from_host(y[:8]), bp.MSE(),
                    metrics=[MeanBias()])["bias"]
    assert bias == pytest.approx(float(np.mean(prediction - y[:8])), rel=1e-5)
    with pytest.raises(bp.ConfigError, match="monitor 'val_accuracy' is not recorded by this run"):
        Trainer(model, loss="mse", epochs=1, progress=False, log=None,
                callbacks=[bp.EarlyStopping(2, monitor="val_accuracy")]).fit(x, y, validation_split=0.25)
    with pytest.raises(bp.ConfigError, match="two metrics are named 'mae'"):
        Trainer(model, loss="mse", metrics=["mae", MAE()])


# -- backprop train --task regression ------------------------------------------------------------------------------
@pytest.fixture
def regression_csv(tmp_path):
    x, y = _regression(n=200, seed=3)
    path = tmp_path / "houses.csv"
    path.write_text("a,b,c,price\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f},{t:.6f}\n" for (a, b, c), (t,) in zip(x, y)))
    return path


def test_a_regression_on_a_csv_reports_mae_and_r2_not_accuracy(tmp_path, regression_csv, capsys):
    out = tmp_path / "run"
    status = main(["train", "--backend", "numpy", "--dataset", str(regression_csv), "--task", "regression",
                   "--hidden", "none", "--epochs", "25", "--batch-size", "16", "--lr", "0.05", "--output", str(out),
                   "--no-progress", "--no-plots"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "accuracy" not in printed and " acc " not in printed
    assert "test mae" in printed and "test r2" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_r2"] > 0.99 and summary["test_mae"] < 0.2
    assert not any("accuracy" in key for key in summary)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["val_r2"] > 0.99 and not any("accuracy" in key for key in history[-1])
    status = main(["evaluate", "--backend", "numpy", str(out)])
    printed = capsys.readouterr().out
    assert status == 0 and f"test r2 {summary['test_r2']:.4g}" in printed and "accuracy" not in printed


@pytest.mark.parametrize("content, args, message", [
    ("a,b,y\n1,2,x\n3,4,5\n5,6,7\n7,8,9\n9,1,2\n", [],
     r"line 2: 'x' is not a number; a regression target must be numeric"),
    ("a,b,y\n1,2,3\n3,4,5\n5,6,7\n7,8,9\n9,1,2\n", ["--loss", "cross_entropy"],
     "--task regression fits numeric targets with --loss mse, not cross_entropy"),
    ("a,b,y\n1,2,3.5\n3,4,5\n5,6,7\n7,8,9\n9,1,2\n", ["--task", "classification"],
     r"labels must be integers, found 3.5 at sample 0 \(for a numeric target, use --task regression\)"),
    ("y\n1\n2\n3\n", [], "need at least one feature and a label"),
])
def test_bad_regression_input_is_one_line_error(tmp_path, capsys, content, args, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    given = ["--task", "regression", *args] if "--task" not in args else args
    status = main(["train", "--backend", "numpy", "--dataset", str(path), *given, "--output", str(tmp_path / "r"),
                   "--no-progress", "--no-plots", "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_regression_on_a_built_in_dataset_is_refused(tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--task", "regression", "--output", str(tmp_path / "r")]) == 2
    assert "--task regression reads the target column of a .csv or .npz file" in capsys.readouterr().err


def test_the_learning_curves_of_a_regression_draw_mae_and_r2():
    pytest.importorskip("matplotlib")
    from backprop.plots.training import metric_names

    records = [{"epoch": 1, "train_loss": 1.0, "train_mae": 0.8, "train_r2": 0.1, "val_loss": 1.1, "val_mae": 0.9,
                "val_r2": 0.0}]
    assert metric_names(records) == ["mae", "r2"]


# -- losses --------------------------------------------------------------------------------------------------------
def test_cross_entropy_on_an_array_of_no_loaded_backend_says_so(monkeypatch):

    monkeypatch.setattr(backends.registry, "_instances", {})  # no backend loaded: numpy arrays belong to none
    logits, labels = np.zeros((2, 3), dtype=np.float32), np.array([0, 2])
    with pytest.raises(bp.errors.DeviceMismatchError, match=r"not an array of a loaded backend"):
        bp.CrossEntropy()(logits, labels)
    with pytest.raises(bp.errors.DeviceMismatchError, match=r"not an array of a loaded backend"):
        bp.CrossEntropy().begin_update(logits, labels)


# -- a compiled step records the eager step's metrics -------------------------------------------------------------
def test_a_compiled_mse_step_records_the_eager_mae_and_r2_on_the_same_backend():
    # jax:cpu only: torch.compile's first compile of a new graph costs ~15 s of CPU, over this suite's budget (the
    # torch compiled step is checked against eager in tests/test_compiled.py, with cross-entropy's accuracy)
    try:
        backend = bp.get_backend("jax:cpu")
    except BackendUnavailable as exc:
        pytest.skip(f"jax:cpu: {exc.reason}")
    x, y = _regression(n=96, seed=4)

    def run(compile):
        model = bp.mlp([3, 8, 1], seed=0, backend=backend)
        return Trainer(model, loss="mse", lr=0.05, epochs=3, batch_size=24, seed=1, progress=False, log=None,
                       compile=compile).fit(x, y, validation_split=0.25)

    eager, compiled = run(False), run(True)
    keys = ("train_loss", "train_mae", "train_r2", "val_loss", "val_mae", "val_r2")
    assert compiled[-1]["train_r2"] != eager[0]["train_r2"]  # the runs learn: the figures move between epochs
    for have, want in zip(compiled, eager, strict=True):
        assert set(keys) <= have.keys() and not any("accuracy" in key for key in have)
        # XLA fuses the step's elementwise work and rounds differently from one operation at a time (see
        # tests/test_compiled.py, RTOL): the same figures to float32 rounding, not bit for bit
        assert [have[key] for key in keys] == pytest.approx([want[key] for key in keys], rel=1e-5, abs=1e-6)


# -- backprop train --loss binary_cross_entropy / mse on classes ---------------------------------------------------
@pytest.fixture
def binary_csv(tmp_path):
    x, y = _regression(n=120, seed=5)
    labels = (y[:, 0] > 3.0).astype(int)
    path = tmp_path / "churn.csv"
    path.write_text("a,b,c,churned\n" + "".join(f"{a:.5f},{b:.5f},{c:.5f},{t}\n" for (a, b, c), t in zip(x, labels)))
    return path


def test_binary_cross_entropy_on_a_csv_of_0_1_labels_trains_one_output_and_predicts_classes(tmp_path, binary_csv,
                                                                                              capsys):
    out = tmp_path / "run"
    status = main(["train", "--backend", "numpy", "--dataset", str(binary_csv), "--loss", "binary_cross_entropy",
                   "--hidden", "none", "--epochs", "20", "--lr", "0.05", "--output", str(out), "--no-progress",
                   "--no-plots"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "MLP 3-1 " in printed.out  # one logit: the probability of class 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.9
    model = bp.load_model(out / "model.safetensors")
    assert model.metadata["loss"] == "binary_cross_entropy"
    assert main(["evaluate", "--backend", "numpy", str(out)]) == 0
    assert f"test accuracy {100 * summary['test_accuracy']:.2f}%" in capsys.readouterr().out
    rows = tmp_path / "rows.csv"
    rows.write_text("3,-3,0\n-3,3,0\n")  # far on each side of the boundary 1.5a - 2b + 0.5c = 0
    assert main(["predict", "--backend", "numpy", str(out), str(rows)]) == 0
    assert capsys.readouterr().out.split() == ["index,class,name", "0,1,1", "1,0,0"]


@pytest.mark.parametrize("loss, message", [
    ("binary_cross_entropy", r"--loss binary_cross_entropy fits two classes \(labels 0 and 1\); .* has 3 classes"),
    ("mse", r"--loss mse fits numeric targets; .* has class labels"),
])
def test_a_loss_that_does_not_fit_the_labels_is_one_line_error_before_training(tmp_path, capsys, loss, message):
    path = tmp_path / "three.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i % 5},{i % 3}\n" for i in range(30)))
    status = main(["train", "--backend", "numpy", "--dataset", str(path), "--loss", loss, "--output",
                   str(tmp_path / "r"), "--no-progress", "--no-plots", "--epochs", "1"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""  # refused before the run says what it trains
    assert len(captured.err.strip().splitlines()) == 1 and re.search(message, captured.err), captured.err
    assert not (tmp_path / "r").exists()


def test_predict_classes_of_a_single_logit_thresholds_it_at_zero(backend):
    model = bp.Sequential([bp.Dense(1, 1, backend=backend)])
    with backend.activate():
        model.replace_arrays({"param/0.weight": backend.from_host(np.ones((1, 1), np.float32)),
                              "param/0.bias": backend.from_host(np.zeros(1, np.float32))})
        classes = bp.predict_classes(model, backend.from_host(np.array([[2.0], [-0.5], [0.25]], np.float32)))
    assert_on_backend(classes, backend, "int64", shape=(3,))  # the dtype of argmax, as for more outputs
    assert backend.to_host(classes).tolist() == [1, 0, 1]


def test_predict_on_rows_with_the_target_column_says_how_many_features_the_model_expects(tmp_path, regression_csv,
                                                                                         capsys):
    out = tmp_path / "run"
    assert main(["train", "--backend", "numpy", "--dataset", str(regression_csv), "--task", "regression", "--hidden",
                 "none", "--epochs", "1", "--output", str(out), "--no-progress", "--no-plots"]) == 0
    capsys.readouterr()
    # the training file itself: its rows still hold the target (standardized features are checked before scaling)
    assert main(["predict", "--backend", "numpy", str(out), str(regression_csv)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {regression_csv}: rows have 4 features, the model expects 3"
