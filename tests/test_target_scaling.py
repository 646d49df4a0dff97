"""Regression on targets in real-world units (issue 14): ``backprop train --task regression`` standardizes the
targets (``--target-scaling standardize``, the default; fitted on the training set like the features), saves the
scaler in the model file, and reports MAE and predictions in the target's own units, as scikit-learn's
``TransformedTargetRegressor`` with a ``StandardScaler`` would. Targets around 1e6 used not to train at all."""

from __future__ import annotations

import json

import numpy as np
import pytest

import backprop as bp
from backprop.cli import main
from backprop.data import load_dataset
from backprop.data.scaling import fit_target_scaler, unscale
from backprop.io.model_files import load_arrays, save_arrays, save_model
from backprop.metrics import MAE

from conftest import assert_on_backend, weights

RUN = ["--backend", "numpy", "--task", "regression", "--hidden", "none", "--batch-size", "16", "--lr", "0.05",
       "--no-progress", "--no-plots"]


def _prices(n=200, seed=3, offset=1e6, spread=5e3, noise=100.0):
    """House prices: about ``offset`` ± a few ``spread``, linear in three features, plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = offset + spread * (x @ np.array([1.5, -2.0, 0.5])) + rng.normal(scale=noise, size=n)
    return x, y


@pytest.fixture
def prices_csv(tmp_path):
    x, y = _prices()
    path = tmp_path / "prices.csv"
    path.write_text("a,b,c,price\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f},{t:.2f}\n" for (a, b, c), t in zip(x, y)))
    return path


def _predict(run, rows, tmp_path, capsys, column="price") -> np.ndarray:
    """``backprop predict``'s values for the feature rows ``rows``, read back from its CSV, whose value column is
    named ``column`` (the training file's target column)."""
    path = tmp_path / "rows.csv"
    path.write_text("".join(",".join(f"{v:.6f}" for v in row) + "\n" for row in rows))
    out = tmp_path / "predicted.csv"
    assert main(["predict", "--backend", "numpy", str(run), str(path), "--output", str(out)]) == 0
    capsys.readouterr()
    lines = out.read_text().splitlines()
    assert lines[0] == f"index,{column}"
    return np.array([float(line.split(",")[1]) for line in lines[1:]])


def _raw_test_split(path):
    """The run's test rows as the file holds them: the split depends on the seed, not on the scaling."""
    return load_dataset(path, scaling="none", task="regression", target_scaling="none")


# -- the CLI: targets around 1e6 -------------------------------------------------------------------------------------
def test_targets_around_a_million_train_and_report_mae_in_their_units(tmp_path, prices_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "20", "--output", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "targets standardized with the training set's mean 9.99" in printed
    assert "(standardized targets)" in printed.splitlines()[-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_r2"] > 0.95 and summary["test_loss"] < 0.05  # the loss of standardized targets
    # a well-fitted loss is printed with 4 significant digits (it was 0.0000 and 0.0001 with 4 decimals)
    assert f"test loss {summary['test_loss']:.4g} (standardized targets)" in printed.splitlines()[-1]
    last_epoch = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    epoch_line = next(line for line in printed.splitlines() if line.startswith("epoch 20/20"))
    assert f"  loss {last_epoch['train_loss']:.4g}  " in epoch_line
    assert f"  val_loss {last_epoch['val_loss']:.4g}  " in epoch_line

    raw = _raw_test_split(prices_csv)
    predicted = _predict(run, raw.x_test, tmp_path, capsys)
    truth = raw.y_test[:, 0].astype(np.float64)
    assert 9e5 < predicted.min() and predicted.max() < 1.1e6  # the target's units, not standardized ones
    mae = np.abs(predicted - truth).mean()
    r2 = 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert mae < 500  # noise of 100, targets spread over about 13,000
    # the reported figures are those of predict's values against the file's targets: MAE in the target's units
    assert summary["test_mae"] == pytest.approx(mae, rel=1e-3)
    assert summary["test_r2"] == pytest.approx(r2, abs=1e-3)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert 1 < history[-1]["val_mae"] < 1000

    model = bp.load_model(run)
    scaler = model.metadata["target_scaler"]
    train = load_dataset(prices_csv, task="regression", target_scaling="none").y_train
    assert scaler["kind"] == "standardize"
    assert scaler["offset"] == pytest.approx([train.astype(np.float64).mean()], rel=1e-12)  # the training set's
    assert scaler["scale"] == pytest.approx([train.astype(np.float64).std()], rel=1e-9)
    assert main(["evaluate", "--backend", "numpy", str(run)]) == 0
    assert f"test mae {summary['test_mae']:.4g}, test r2 {summary['test_r2']:.4g}" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:exploding gradients")  # raw prices: huge gradients
def test_without_target_scaling_the_run_learns_the_targets_as_they_are(tmp_path, prices_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "2", "--target-scaling", "none",
                 "--output", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "standardized" not in printed
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] > 1e11  # the MSE of raw prices: far from trained
    model = bp.load_model(run)
    assert model.metadata["target_scaler"] is None and model.metadata["options"]["target_scaling"] == "none"
    raw = _raw_test_split(prices_csv)
    x = raw.x_test[:5]
    predicted = _predict(run, x, tmp_path, capsys)
    features = bp.data.apply_scaler(x, model.metadata["scaler"])
    outputs = np.asarray(bp.predict_logits(model, model.backend.from_host(features)))[:, 0]
    np.testing.assert_allclose(predicted, outputs, rtol=1e-6)  # the model's own outputs, nothing undone


@pytest.mark.filterwarnings("ignore:exploding gradients")  # raw prices: huge gradients
def test_a_model_file_from_before_target_scaling_predicts_and_evaluates_as_before(tmp_path, prices_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "1", "--target-scaling", "none",
                 "--output", str(run)]) == 0
    model = bp.load_model(run)
    old = dict(model.metadata)
    del old["target_scaler"], old["target_names"]
    old["options"] = {k: v for k, v in old["options"].items() if k != "target_scaling"}
    save_model(run / "model.safetensors", model, old)
    x = _raw_test_split(prices_csv).x_test[:3]
    features = bp.data.apply_scaler(x, old["scaler"])
    outputs = np.asarray(bp.predict_logits(model, model.backend.from_host(features)))[:, 0]
    capsys.readouterr()
    np.testing.assert_allclose(_predict(run, x, tmp_path, capsys, column="value"), outputs, rtol=1e-6)
    assert main(["evaluate", "--backend", "numpy", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "test mae" in printed and "standardized" not in printed


def test_predict_names_its_value_column_after_the_target_column_of_a_file_with_a_header(tmp_path, prices_csv,
                                                                                       capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "1", "--output", str(run)]) == 0
    assert bp.load_model(run).metadata["target_names"] == ["price"]  # recorded at training, read by predict
    _predict(run, _prices(n=2)[0], tmp_path, capsys, column="price")
    # a file without a header names no target: the column stays "value"
    headless = tmp_path / "headless.csv"
    headless.write_text("".join(prices_csv.read_text().splitlines(keepends=True)[1:]))
    assert main(["train", *RUN, "--dataset", str(headless), "--epochs", "1", "--output", str(run), "--overwrite"]) == 0
    model = bp.load_model(run)
    assert model.metadata["target_names"] is None
    _predict(run, _prices(n=2)[0], tmp_path, capsys, column="value")
    save_model(run / "model.safetensors", model, {**model.metadata, "target_names": ['say "hi", then']})
    rows = tmp_path / "rows.csv"
    rows.write_text("0.1,0.2,0.3\n")
    assert main(["predict", str(run), str(rows)]) == 0  # a name with a comma or quotes is one CSV field
    assert capsys.readouterr().out.splitlines()[0] == 'index,"say ""hi"", then"'
    save_model(run / "model.safetensors", model, {**model.metadata, "target_names": "price"})
    assert main(["predict", str(run), str(rows)]) == 2
    assert "metadata entry 'target_names' must be a list of strings" in capsys.readouterr().err


def test_a_regression_run_resumed_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, prices_csv):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "3", "--output", str(whole)]) == 0
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "2", "--output", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress", "--no-plots"]) == 0
    expected, resumed = bp.load_model(whole), bp.load_model(part)
    assert resumed.metadata["target_scaler"] == expected.metadata["target_scaler"] is not None
    for name, weight in weights(expected).items():
        np.testing.assert_array_equal(resumed.named_parameters()[name].value, weight, err_msg=name)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (whole, part)]
    assert summaries[0]["test_mae"] == summaries[1]["test_mae"]


@pytest.mark.filterwarnings("ignore:exploding gradients")  # raw prices: huge gradients
def test_a_checkpoint_from_before_target_scaling_resumes_on_the_targets_as_they_are(tmp_path, prices_csv):
    """Checkpoints written before ``--target-scaling`` existed record no such option: they resume as they ran,
    on unscaled targets (the default for a new run would be standardized ones)."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    given = [*RUN, "--dataset", str(prices_csv), "--lr", "0.001"]  # a small step on raw prices stays finite
    assert main(["train", *given, "--epochs", "3", "--target-scaling", "none", "--output", str(whole)]) == 0
    assert main(["train", *given, "--epochs", "2", "--target-scaling", "none", "--output", str(part)]) == 0
    checkpoint = part / "checkpoint.safetensors"
    arrays, header = load_arrays(checkpoint, kind="checkpoint")
    del header["run"]["target_scaling"]
    save_arrays(checkpoint, arrays, header)
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress", "--no-plots"]) == 0
    expected, resumed = bp.load_model(whole), bp.load_model(part)
    assert resumed.metadata["target_scaler"] is None and resumed.metadata["options"]["target_scaling"] == "none"
    for name, weight in weights(expected).items():
        np.testing.assert_array_equal(resumed.named_parameters()[name].value, weight, err_msg=name)


@pytest.mark.parametrize("args, message", [
    (["--target-scaling", "standardize"], "--target-scaling standardize scales the numeric targets of --task "
                                          "regression; a classification has class labels"),
    (["--task", "regression", "--model", "{spec}"], "unknown target scaling 'minmax'; expected one of none, "
                                                    "standardize"),
])
def test_target_scaling_that_does_not_fit_is_a_one_line_error(tmp_path, prices_csv, capsys, args, message):
    out, spec = tmp_path / "r", tmp_path / "linear.toml"
    spec.write_text('[train]\ntarget_scaling = "minmax"\n\n[[layers]]\ntype = "Dense"\nout_features = 1\n')
    args = [arg.format(spec=spec) for arg in args]
    assert main(["train", "--dataset", str(prices_csv), *args, "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_a_damaged_target_scaler_in_a_model_file_is_a_one_line_error(tmp_path, prices_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(prices_csv), "--epochs", "1", "--output", str(run)]) == 0
    model = bp.load_model(run)
    save_model(run / "model.safetensors", model, {**model.metadata, "target_scaler": {"kind": "standardize",
                                                                                      "offset": [1.0], "scale": [0]}})
    capsys.readouterr()
    rows = tmp_path / "rows.csv"
    rows.write_text("1,2,3\n")
    assert main(["predict", "--backend", "numpy", str(run), str(rows)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run / 'model.safetensors'}: metadata entry 'target_scaler': ") and \
        "scale never 0" in err and len(err.strip().splitlines()) == 1


# -- the pieces --------------------------------------------------------------------------------------------------------
def test_load_dataset_standardizes_regression_targets_on_the_training_part_only(prices_csv):
    raw = load_dataset(prices_csv, task="regression", target_scaling="none")
    scaled = load_dataset(prices_csv, task="regression")
    assert raw.target_scaler is None and scaled.target_scaler["kind"] == "standardize"
    assert scaled.y_train.dtype == np.float32 and scaled.y_test.dtype == np.float32
    assert abs(float(scaled.y_train.mean())) < 1e-4 and float(scaled.y_train.std()) == pytest.approx(1, rel=1e-4)
    np.testing.assert_allclose(unscale(scaled.y_test, scaled.target_scaler), raw.y_test, rtol=1e-6)
    assert scaled.target_scaler == fit_target_scaler(raw.y_train)  # the training part's moments
    assert float(np.abs(scaled.y_test.mean())) > 1e-3  # the test part was not fitted
    with pytest.raises(bp.ConfigError, match="unknown target scaling 'minmax'; expected one of none, standardize"):
        load_dataset(prices_csv, task="regression", target_scaling="minmax")


def test_mae_with_a_scale_reports_the_target_s_units_from_unchanged_sums(backend):
    rng = np.random.default_rng(7)
    prediction = rng.normal(size=(6, 2)).astype(np.float32)
    target = rng.normal(size=(6, 2)).astype(np.float32)
    p, t, xp = backend.from_host(prediction), backend.from_host(target), backend.xp
    errors = np.abs(prediction - target).astype(np.float64)
    cases = [(MAE(scale=1000.0), errors.mean() * 1000), (MAE(scale=[250.0]), errors.mean() * 250),
             (MAE(scale=[10.0, 1000.0]), (errors[:, 0] * 10 + errors[:, 1] * 1000).mean() / 2)]
    for metric, expected in cases:
        with backend.activate():
            sums = metric.sums(xp, p, t)
        assert_on_backend(sums, backend, shape=(metric.size(2),))
        assert metric.result([float(v) for v in backend.to_host(sums)], 6) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(bp.ConfigError, match="MAE: 3 scales"), backend.activate():
        MAE(scale=[1.0, 2.0, 3.0]).sums(xp, p, t)
    for bad in (0, -1.0, [], [1.0, float("nan")], "2", True):
        with pytest.raises(bp.ConfigError, match="MAE: scale must be a positive number"):
            MAE(scale=bad)


# -- R² of targets with a large offset: sums around a shift ---------------------------------------------------------
def _numpy_r2(predicted, truth):
    predicted, truth = np.asarray(predicted, np.float64).reshape(-1), np.asarray(truth, np.float64).reshape(-1)
    return 1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()


def test_r2_of_targets_a_million_away_from_zero_is_right_when_trained_on_them_directly(backend):
    # float32 Σt² − (Σt)²/n of 96 targets around 1e6 that vary by about 25 loses every digit of SS_tot (R² came
    # out in the thousands); the sums around the shift keep them
    x, y = _prices(n=96, seed=5, spread=10.0, noise=5.0)
    y = y.astype(np.float32)[:, None]
    model = bp.Sequential([bp.Dense(3, 1, backend=backend)])
    with backend.activate():  # the true map: what is left is the noise, R² about 0.96
        model.replace_arrays({"param/0.weight": backend.from_host(np.array([[15.0], [-20.0], [5.0]], np.float32)),
                              "param/0.bias": backend.from_host(np.array([1e6], np.float32))})
        predicted = backend.to_host(bp.predict_logits(model, backend.from_host(x)))
    expected = _numpy_r2(predicted, y)
    assert 0.9 < expected < 0.99
    # steps too small to move the predictions by more than 1e-3 of their spread
    history = bp.Trainer(model, loss="mse", optimizer="sgd", lr=1e-4, epochs=1, batch_size=32, progress=False,
                         log=None).fit(x, y)
    assert history[-1]["train_r2"] == pytest.approx(expected, abs=1e-3)
    with backend.activate():
        figures = bp.evaluate(model, backend.from_host(x), backend.from_host(y), bp.MSE())
    assert figures["r2"] == pytest.approx(expected, abs=1e-3)
    shift = bp.Trainer(model, loss="mse", epochs=1, progress=False, log=None).metrics[1]
    assert shift.shift is None  # set by fit or evaluate, from the data


def test_r2_of_targets_a_million_away_from_zero_is_right_from_the_cli(tmp_path, capsys):
    x, y = _prices(n=200, seed=6, spread=10.0, noise=5.0)
    path = tmp_path / "offset.csv"
    path.write_text("a,b,c,t\n" + "".join(f"{a:.6f},{b:.6f},{c:.6f},{t:.3f}\n" for (a, b, c), t in zip(x, y)))
    run = tmp_path / "run"
    assert main(["train", *RUN, "--dataset", str(path), "--epochs", "20", "--output", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    raw = _raw_test_split(path)
    predicted = _predict(run, raw.x_test, tmp_path, capsys, column="t")
    expected = _numpy_r2(predicted, raw.y_test)
    assert 0.9 < expected < 0.99
    assert summary["test_r2"] == pytest.approx(expected, abs=1e-3)
    assert summary["test_mae"] == pytest.approx(np.abs(predicted - raw.y_test[:, 0]).mean(), rel=1e-3)
