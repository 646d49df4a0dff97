"""The command line's options as a user types them: where they go, what --resume accepts, what is checked
before anything is written, and the one-line errors that replace tracebacks.

Most tests call ``backprop.cli.main`` in-process (fast); the few that need another user's file permissions run
the CLI in a subprocess.
"""

from __future__ import annotations

import json

import pytest

from backprop.cli import main

from conftest import weights

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
    (["--accumulate", "2"], ["--accumulate 2 (the run has 1)"]),
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
    expected = bp.load_model(whole / "model.safetensors")
    resumed = bp.load_model(two_epoch_run / "model.safetensors")
    for name, weight in weights(expected).items():
        np.testing.assert_array_equal(resumed.named_parameters()[name].value, weight)


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


# ------------------------------------------------------------------------------------------- --accumulate


def test_accumulate_trains_like_a_batch_that_many_times_larger_and_resumes(tmp_path, capsys):
    """``--batch-size 8 --accumulate 4`` takes the updates of ``--batch-size 32`` (the digits' 1293 training rows
    end in a short update of 13: micro-batches 8 and 5), is recorded with the run, and resumes bit for bit."""
    import numpy as np

    import backprop as bp

    big, accumulated, resumed = tmp_path / "big", tmp_path / "accumulated", tmp_path / "resumed"
    assert main(["train", *QUICK, "--epochs", "2", "--batch-size", "32", "--output", str(big)]) == 0
    assert main(["train", *QUICK, "--epochs", "2", "--batch-size", "8", "--accumulate", "4",
                 "--output", str(accumulated)]) == 0
    assert "mini-batch of 8 accumulated 4 times per update" in capsys.readouterr().out
    expected = bp.load_model(big / "model.safetensors")
    model = bp.load_model(accumulated / "model.safetensors")
    metadata = model.metadata
    assert metadata["options"]["accumulate"] == 4
    for name, weight in weights(expected).items():
        # float32: the same sums, added up in another order
        np.testing.assert_allclose(model.named_parameters()[name].value, weight, rtol=1e-4, atol=1e-5, err_msg=name)
    history = [json.loads(line) for line in (accumulated / "history.jsonl").read_text().splitlines()]
    assert [r["steps"] for r in history] == [41, 41]  # updates, not micro-batches: ceil(1293 / 32)

    assert main(["train", *QUICK, "--epochs", "1", "--batch-size", "8", "--accumulate", "4",
                 "--output", str(resumed)]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "2", "--no-plots", "--no-progress"]) == 0
    again = bp.load_model(resumed / "model.safetensors")
    for name, weight in weights(model).items():
        np.testing.assert_array_equal(again.named_parameters()[name].value, weight, err_msg=name)


def test_a_checkpoint_from_before_accumulation_resumes_with_one_micro_batch_per_update(two_epoch_run, tmp_path):
    """Checkpoints written before ``--accumulate`` existed record no such option: they resume as they ran."""
    import numpy as np

    import backprop as bp
    from backprop.io.model_files import load_arrays, save_arrays

    checkpoint = two_epoch_run / "checkpoint.safetensors"
    arrays, header = load_arrays(checkpoint, kind="checkpoint")
    del header["run"]["accumulate"]
    save_arrays(checkpoint, arrays, header)
    whole = tmp_path / "whole"
    assert main(["train", *QUICK, "--epochs", "3", "--optimizer", "sgd", "--lr", "0.05", "--output", str(whole)]) == 0
    assert main(["train", "--resume", str(two_epoch_run), "--epochs", "3", "--no-plots", "--no-progress"]) == 0
    expected = bp.load_model(whole / "model.safetensors")
    resumed = bp.load_model(two_epoch_run / "model.safetensors")
    metadata = resumed.metadata
    assert metadata["options"]["accumulate"] == 1
    for name, weight in weights(expected).items():
        np.testing.assert_array_equal(resumed.named_parameters()[name].value, weight, err_msg=name)


# ------------------------------------------------------------------------------------- evaluate's loss


@pytest.mark.parametrize("recorded", ["mse", "binary_cross_entropy", None])
def test_evaluate_uses_the_loss_the_model_was_trained_with(recorded, tmp_path, capsys):
    import numpy as np

    import backprop as bp

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    model = bp.load_model(out / "model.safetensors")
    metadata = dict(model.metadata)  # a copy to change: the model's is read-only
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
    assert f"test loss {expected:.4g} " in printed, printed


def test_evaluate_rejects_an_unknown_recorded_loss(tmp_path, capsys):
    import backprop as bp

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    model = bp.load_model(out / "model.safetensors")
    metadata = model.metadata
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
    (["--clip-norm", "0"], "clip_norm must be a positive finite number, got 0.0"),
    (["--early-stopping", "-1"], "patience must be a positive integer, got -1"),
    (["--validation-split", "1"], "validation_split must be a number strictly between 0 and 1, got 1.0"),
    (["--validation-split", "0.9999"],
     "--validation-split: cannot hold out 0.9999 of 1437 samples: one part would be empty"),
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
    (["--accumulate", "0"], "accumulate_steps (micro-batches per update) must be a positive integer, got 0"),
    (["--accumulate", "2.5"], "argument --accumulate: invalid int value: '2.5'"),
    (["--early-stopping", "3", "--validation-split", "0"],
     "--early-stopping 3 watches the validation loss, and --validation-split 0 holds out no validation data"),
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
        for shown in ("(default: 30)", "(default: 256,128)", "(default: adam)", "(default: 32)", "(default: 1)",
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
    model = bp.load_model(out / "model.safetensors")
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    assert (model.layers[0].in_features, model.layers[0].out_features) == (64, 10)
    assert main(["train", *QUICK, "--hidden", "none", "--dropout", "0.2", "--output", str(tmp_path / "b")]) == 2
    assert "--dropout 0.2 applies after hidden layers, and the model has none" in one_error_line(capsys)


# ------------------------------------------------------------------------ one-line errors, not tracebacks


def test_a_huge_label_is_refused_with_the_class_cap(tmp_path, capsys):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    np.savez(tmp_path / "ids.npz", x_train=x, y_train=np.array([0] * 9 + [2_000_000_000]))
    assert main(["train", "--dataset", str(tmp_path / "ids.npz"), "--output", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "may be at most 99,999 (100,000 classes); found 2,000,000,000 at sample 9" in line
    assert not (tmp_path / "out").exists()


def test_an_npz_without_samples_is_refused(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "empty.npz", x_train=np.zeros((0, 5), np.float32), y_train=np.zeros(0, np.int64))
    assert main(["train", "--dataset", str(tmp_path / "empty.npz"), "--output", str(tmp_path / "out")]) == 2
    assert "empty.npz (x_train): features are empty, shape (0, 5)" in one_error_line(capsys)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_options") / "run"
    assert main(["train", *QUICK, "--output", str(out)]) == 0
    return out


@pytest.fixture
def features_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text(",".join(["0"] * 64) + "\n")
    return path


def test_predict_output_must_be_a_file_in_an_existing_directory(digits_run, features_csv, tmp_path, capsys):
    assert main(["predict", str(digits_run), str(features_csv), "--output", str(tmp_path)]) == 2
    assert f"--output {tmp_path} is a directory; name a file, such as {tmp_path / 'predictions.csv'}" in \
        one_error_line(capsys)
    assert main(["predict", str(digits_run), str(features_csv), "--output", str(tmp_path / "no" / "p.csv")]) == 2
    assert f"the directory {tmp_path / 'no'} does not exist" in one_error_line(capsys)


def test_hidden_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path, capsys, monkeypatch):
    from backends import Backend

    # on this machine's real free memory: a layer of 1e12 units needs about 546 TiB with SGD, anywhere
    assert main(["train", "--hidden", "1000000000000", "--optimizer", "sgd", "--output", str(tmp_path / "a")]) == 2
    line = one_error_line(capsys)
    assert "--hidden 1000000000000: the model's 75,000,000,000,010 parameters need 545.7 TiB (float32 weights " \
           "and gradients, sgd keeps no state), more than the " in line and "GiB of memory available to numpy" in line
    # the case of the issue, against a known amount of free memory: 7.5e9 parameters x 4 bytes x (weights,
    # gradients and Adam's two moments)
    monkeypatch.setattr(Backend, "available_memory", lambda self: 64 * 2**30)
    assert main(["train", "--hidden", "100000000", "--output", str(tmp_path / "b")]) == 2
    needed = (64 * 10**8 + 10**8 + 10**8 * 10 + 10) * 4 * 4
    assert (f"the model's 7,500,000,010 parameters need {needed / 2**30:,.1f} GiB (float32 weights and gradients, "
            f"plus 2 adam state arrays), more than the 64.0 GiB of memory available to numpy (CPU)") in \
        one_error_line(capsys)
    # the check is not stricter than that: exactly enough memory trains
    small = (64 * 8 + 8 + 8 * 10 + 10) * 4 * 4
    monkeypatch.setattr(Backend, "available_memory", lambda self: small)
    assert main(["train", *QUICK, "--output", str(tmp_path / "c")]) == 0
    monkeypatch.setattr(Backend, "available_memory", lambda self: small - 1)
    assert main(["train", *QUICK, "--output", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_an_os_error_during_a_command_is_one_line(digits_run, features_csv, tmp_path, monkeypatch, capsys):
    # A write refused after the up-front checks passed (the disk filled, permissions changed meanwhile): raised
    # here from the atomic writer, as the OS would raise it.
    import backprop.io.atomic as atomic

    def refused(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(atomic, "write_bytes_atomic", refused)
    target = tmp_path / "p.csv"
    assert main(["predict", str(digits_run), str(features_csv), "--output", str(target)]) == 2
    assert one_error_line(capsys) == f"error: {target}: Permission denied"


_MAIN_IN_A_LOOP = """
import contextlib, io, json, sys
from backprop.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = main(argv)
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def run_with_file_permissions(tmp_path, commands):
    """Run CLI commands in one child process in which file permissions apply: as root (as the tests often
    run), without the capabilities that let root ignore them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), dropped
    from the bounding set by ``setpriv``. Returns [(status, stderr)] per command."""
    import os
    import shutil
    import subprocess
    import sys

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot make the OS deny access")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        probe = tmp_path / "probe"
        probe.write_text("")
        probe.chmod(0)
        probe_run = subprocess.run([*prefix, sys.executable, "-c", f"open({str(probe)!r})"], capture_output=True)
        if probe_run.returncode == 0:
            pytest.skip("setpriv could not drop root's file-permission capabilities here")
    result = subprocess.run([*prefix, sys.executable, "-c", _MAIN_IN_A_LOOP, json.dumps(commands)],
                            capture_output=True, text=True, env={**os.environ, "BACKPROP_BACKEND": "numpy"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_permission_denied_is_one_line_naming_the_path(digits_run, features_csv, tmp_path):
    import shutil

    runs = {name: tmp_path / name for name in ("model", "checkpoint", "readonly_run")}
    for path in runs.values():
        shutil.copytree(digits_run, path)
    (runs["model"] / "model.safetensors").chmod(0)
    (runs["checkpoint"] / "checkpoint.safetensors").chmod(0)
    runs["readonly_run"].chmod(0o555)
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    before = {p.name: p.read_bytes() for p in runs["readonly_run"].iterdir()}
    commands = {
        "evaluate": (["evaluate", str(runs["model"])],
                     f"{runs['model'] / 'model.safetensors'}: permission denied (cannot read the model file)"),
        "predict": (["predict", str(runs["model"]), str(features_csv)],
                    f"{runs['model'] / 'model.safetensors'}: permission denied (cannot read the model file)"),
        "resume unreadable": (["train", "--resume", str(runs["checkpoint"])],
                              f"{runs['checkpoint'] / 'checkpoint.safetensors'}: permission denied (cannot read "
                              f"the checkpoint)"),
        "resume read-only": (["train", "--resume", str(runs["readonly_run"]), "--epochs", "2"],
                             f"--resume {runs['readonly_run']}: permission denied (the directory is not writable)"),
        "train output": (["train", *QUICK, "--output", str(readonly / "new")],
                         f"--output {readonly / 'new'}: permission denied (cannot create it in {readonly})"),
        "predict output": (["predict", str(digits_run), str(features_csv), "--output", str(readonly / "p.csv")],
                           f"--output {readonly / 'p.csv'}: permission denied (cannot write in {readonly})"),
    }
    results = run_with_file_permissions(tmp_path, [argv for argv, _ in commands.values()])
    for (name, (_, message)), (status, err) in zip(commands.items(), results):
        assert status == 2 and err == f"error: {message}\n", (name, err)
    assert list(readonly.iterdir()) == []
    assert {p.name: p.read_bytes() for p in runs["readonly_run"].iterdir()} == before
    runs["readonly_run"].chmod(0o755)  # so that pytest can clean up


def test_every_backend_reports_its_free_memory_in_bytes(backend):
    available = backend.available_memory()
    assert isinstance(available, int) and 0 < available < 2**60, available


def test_predict_reports_a_typo_in_the_first_row_instead_of_dropping_it(digits_run, tmp_path, capsys):
    path = tmp_path / "new.csv"
    path.write_text(",".join(["0"] * 5 + ["O"] + ["0"] * 58) + "\n" + ",".join(["0"] * 64) + "\n")  # O for 0
    assert main(["predict", str(digits_run), str(path)]) == 2
    assert one_error_line(capsys) == f"error: {path}: line 1, column 6: 'O' is not a number"


def test_evaluate_and_predict_on_an_unfinished_run_say_how_to_finish_it(digits_run, features_csv, tmp_path, capsys):
    import shutil

    unfinished = tmp_path / "cut"
    unfinished.mkdir()
    shutil.copy(digits_run / "checkpoint.safetensors", unfinished)
    for argv in (["evaluate", str(unfinished)], ["predict", str(unfinished), str(features_csv)]):
        assert main(argv) == 2
        assert one_error_line(capsys) == (f"error: {unfinished} holds an unfinished run (checkpoint.safetensors, no "
                                          f"model.safetensors yet); finish it with: backprop train --resume "
                                          f"{unfinished}")


@pytest.mark.parametrize("argv, flag", [
    (["train", "--output", ""], "--output"),
    (["train", "--resume", " "], "--resume"),
    (["train", "--dataset", "mnist", "--data-dir", ""], "--data-dir"),
    (["predict", "run", "x.csv", "--output", ""], "--output"),
])
def test_an_empty_path_is_an_error_not_the_current_directory(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert one_error_line(capsys) == f"error: {flag} is empty; name a path (. for the current directory)"
    assert list(tmp_path.iterdir()) == []
