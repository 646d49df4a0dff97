"""Nothing lost, nothing stale: SIGTERM, stale temporary files, the history/checkpoint order, the run
directory's lock, and kills at random moments followed by ``--resume``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import backprop as bp
from backprop.cli import main
from backprop.data import load_digits
from backprop.host_io.model_files import read_checkpoint
from backprop.training import Callback, Checkpoint, Trainer
from backprop.training.interrupts import Terminated, ctrl_c_held, terminate_as_interrupt

#: A run of the CLI small enough to take well under a second (numpy, 16 hidden units, 8 examples a batch).
SMALL_RUN = ["--backend", "numpy", "train", "--epochs", "4", "--hidden", "16", "--batch-size", "8", "--dropout", "0.1",
             "--no-plots", "--no-progress"]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _history_epochs(directory) -> list[int]:
    return [json.loads(line)["epoch"] for line in (directory / "history.jsonl").read_text().splitlines()]


def _checkpoint_epoch(directory) -> int:
    return read_checkpoint(directory / "checkpoint.safetensors")[1]["trainer"]["epoch"]


@pytest.fixture
def sigterm_must_not_kill_pytest():
    """Where SIGTERM is not handled, a test that sends it fails instead of killing the test process."""
    def unhandled(signum, frame):
        pytest.fail("SIGTERM reached a handler of the test's: the code under test did not handle it")

    previous = signal.signal(signal.SIGTERM, unhandled)
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


# -- 1. SIGTERM is handled like Ctrl-C ------------------------------------------------------------------------
class _SignalAt(Callback):
    """Sends this process a real signal at the end of epoch ``epoch``, before the callbacks after it run."""

    def __init__(self, epoch, signum=signal.SIGTERM):
        self.epoch, self.signum = epoch, signum

    def on_epoch_end(self, trainer, record):
        if trainer.epoch == self.epoch:
            signal.raise_signal(self.signum)


def _trainer(tmp_path, *callbacks):
    model = bp.Sequential([bp.Dense(64, 16, rng=1, backend="numpy"), bp.ReLU(backend="numpy"),
                           bp.Dense(16, 10, rng=2, backend="numpy")])
    return Trainer(model, optimizer="adam", epochs=4, batch_size=50, seed=3, callbacks=list(callbacks),
                   progress=False, log=None)


def test_sigterm_under_terminate_as_interrupt_is_a_held_keyboard_interrupt(digits, tmp_path,
                                                                           sigterm_must_not_kill_pytest):
    x, y = digits.x_train[:300], digits.y_train[:300]
    checkpoint = tmp_path / "checkpoint.safetensors"
    trainer = _trainer(tmp_path, _SignalAt(epoch=2), Checkpoint(checkpoint))
    with terminate_as_interrupt():
        with pytest.raises(Terminated) as raised:
            trainer.fit(x, y)
    assert isinstance(raised.value, KeyboardInterrupt) and raised.value.exit_status == 143
    # held through the end of epoch 2: counted, checkpointed after the signal arrived, nothing rolled back
    assert trainer.epoch == 2 and read_checkpoint(checkpoint)[1]["trainer"]["epoch"] == 2
    assert signal.getsignal(signal.SIGTERM) is sigterm_must_not_kill_pytest  # restored


def test_a_library_users_sigterm_handler_is_left_alone(digits, tmp_path, sigterm_must_not_kill_pytest):
    seen = []

    class Look(Callback):
        def on_epoch_end(self, trainer, record):  # runs inside ctrl_c_held
            seen.append(signal.getsignal(signal.SIGTERM))

    bp.fit(bp.mlp([64, 8, 10], seed=0, backend="numpy"), digits.x_train[:100], digits.y_train[:100], epochs=2,
           callbacks=[Look()], progress=False, log=None)
    assert seen == [sigterm_must_not_kill_pytest] * 2
    with ctrl_c_held():
        assert signal.getsignal(signal.SIGTERM) is sigterm_must_not_kill_pytest


def test_cli_sigterm_saves_the_checkpoint_and_exits_143(tmp_path, monkeypatch, capsys, sigterm_must_not_kill_pytest):
    from backprop.training.callbacks import GradientMonitor

    on_epoch_end = GradientMonitor.on_epoch_end

    def sigterm_after_epoch_2(self, trainer, record):  # the first callback of a run: the others still follow
        on_epoch_end(self, trainer, record)
        if trainer.epoch == 2:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(GradientMonitor, "on_epoch_end", sigterm_after_epoch_2)
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--output", str(out)]) == 143
    captured = capsys.readouterr()
    assert captured.err.strip() == f"terminated (SIGTERM): checkpoint saved; continue with: backprop train " \
                                   f"--resume {out}"
    assert "interrupted by SIGTERM after epoch 2" in captured.out
    assert _checkpoint_epoch(out) == 2 and _history_epochs(out) == [1, 2]
    assert not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is sigterm_must_not_kill_pytest  # the CLI restored it


# -- 2. temporary files a killed run left behind are removed --------------------------------------------------
STALE = [".checkpoint.safetensors.k3x_9a0q.tmp", ".history.jsonl.0abc_def.tmp", ".learning_curves.png.zz00zz00.tmp",
         ".model.safetensors.a1b2c3d4.tmp", ".summary.json.qwertyui.tmp"]
NOT_OURS = [".notes.txt.abcdefgh.tmp",  # not a file a run writes
            ".history.jsonl.ABCDEFGH.tmp",  # not a name mkstemp makes
            ".history.jsonl.abcdefgh.tmp.bak", "history.jsonl.abcdefgh.tmp", "my.tmp"]


def _plant(directory, names):
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"half a file")


def test_stale_temp_files_are_removed_on_start_and_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    _plant(out, STALE + NOT_OURS)
    (out / ".confusion_matrix.png.abcdefgh.tmp").mkdir()  # not a regular file: not ours either
    assert main([*SMALL_RUN, "--output", str(out)]) == 0
    assert f"removed {len(STALE)} temporary files left in {out} by an earlier run that was killed" \
        in capsys.readouterr().out
    left = {p.name for p in out.iterdir()}
    assert not left & set(STALE)
    assert set(NOT_OURS) | {".confusion_matrix.png.abcdefgh.tmp"} <= left

    _plant(out, STALE[:2])
    assert main(["--backend", "numpy", "train", "--resume", str(out), "--no-plots", "--no-progress"]) == 0
    assert "removed 2 temporary files" in capsys.readouterr().out
    assert not {p.name for p in out.iterdir()} & set(STALE)


# -- 4. one run per directory, and never over another run's files ---------------------------------------------
@pytest.mark.parametrize("files, message", [
    (["checkpoint.safetensors", "history.jsonl"], "holds an interrupted run (checkpoint.safetensors, no model "
                                                  "yet); continue it with --resume {out}, or pass --overwrite"),
    (["history.jsonl"], "already holds a run's files (history.jsonl); choose another directory or pass --overwrite"),
    (["summary.json"], "already holds a run's files (summary.json)"),
    (["confusion_matrix.png"], "already holds a run's files (confusion_matrix.png)"),
    (["model.safetensors"], "already holds a trained model"),
])
def test_output_refuses_a_directory_holding_any_runs_files(tmp_path, capsys, files, message):
    out = tmp_path / "run"
    _plant(out, files)
    assert main([*SMALL_RUN, "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: --output {out} {message.format(out=out)}") and "\n" not in error
    assert sorted(p.name for p in out.iterdir()) == sorted(files)
    assert all((out / name).read_bytes() == b"half a file" for name in files)


def test_train_run_checks_the_directory_again_under_its_lock(tmp_path):
    """The CLI checks before loading the data; the run itself checks again once it holds the lock (a run
    that finished in between must not be overwritten)."""
    from backprop.errors import ConfigError
    from backprop.runs import train_run

    out = tmp_path / "run"
    _plant(out, ["checkpoint.safetensors"])
    with pytest.raises(ConfigError, match="holds an interrupted run"):
        train_run({"epochs": 1, "hidden": "8"}, output=out, backend="numpy", progress=False, plots=False, log=None)
    assert (out / "checkpoint.safetensors").read_bytes() == b"half a file"


def test_overwrite_replaces_the_earlier_run_and_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    _plant(out, ["checkpoint.safetensors", "history.jsonl", "learning_curves.png", "notes.txt"])
    assert main([*SMALL_RUN, "--output", str(out), "--overwrite"]) == 0
    assert (f"--overwrite: replacing the run in {out} (removed checkpoint.safetensors, history.jsonl, "
            f"learning_curves.png)") in capsys.readouterr().out
    assert not (out / "learning_curves.png").exists()  # nothing of the old run mixes with the new one
    assert (out / "notes.txt").read_bytes() == b"half a file"  # not a run's file: kept
    assert _history_epochs(out) == [1, 2, 3, 4] and _checkpoint_epoch(out) == 4


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--dataset", str(tmp_path / "missing.npz"), "--output", str(out)]) == 2
    assert not out.exists()


def test_a_directory_in_use_by_another_run_is_refused_at_once(tmp_path, capsys):
    """A real second process trains in the directory; a run, or a resume, of the same directory stops with
    one line naming it, and the running job's files stay consistent."""
    out = tmp_path / "run"
    other = _start_cli([*SMALL_RUN[2:], "--epochs", "100000", "--output", str(out)])
    try:
        _wait_for(lambda: (out / "checkpoint.safetensors").exists(), other)
        assert main([*SMALL_RUN, "--output", str(out), "--overwrite"]) == 2
        assert main(["--backend", "numpy", "train", "--resume", str(out), "--epochs", "1", "--no-progress",
                     "--no-plots"]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert errors == [f"error: {out} is in use by another backprop run (process {other.pid}); wait for it to "
                          f"end, or choose another directory"] * 2
        other.send_signal(signal.SIGTERM)
        assert other.wait(timeout=120) == 143
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert not (out / "model.safetensors").exists()
    assert _history_epochs(out) == list(range(1, _checkpoint_epoch(out) + 1))


def _start_cli(args, **popen):
    env = {**os.environ, "BACKPROP_BACKEND": "numpy", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "backprop", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(condition, process, poll=0.005):
    """Poll until ``condition()``; fails if ``process`` ended first (no fixed sleeps, no clock assertions)."""
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process ended first (status {process.returncode}): {process.communicate()}")
        time.sleep(poll)


# -- 3. the history never claims an epoch the checkpoint lacks ------------------------------------------------
class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler sees it."""


def test_a_kill_while_the_checkpoint_is_written_leaves_the_history_behind_it(tmp_path, monkeypatch):
    import backprop.host_io.model_files as model_files

    save_checkpoint, saves = model_files.save_checkpoint, []

    def killed_at_the_third_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 3:  # the end of epoch 3
            raise _Killed
        save_checkpoint(*args, **kwargs)

    monkeypatch.setattr(model_files, "save_checkpoint", killed_at_the_third_save)
    out = tmp_path / "run"
    with pytest.raises(_Killed):
        main([*SMALL_RUN, "--output", str(out)])
    assert _checkpoint_epoch(out) == 2 and _history_epochs(out) == [1, 2]


def test_resume_rewrites_the_history_from_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert main([*SMALL_RUN, "--output", str(out)]) == 0
    saved = (out / "history.jsonl").read_text()
    (out / "history.jsonl").write_text(saved.replace('"epoch": 2', '"epoch": 7') + '{"epoch": 5}\n')
    assert main(["--backend", "numpy", "train", "--resume", str(out), "--no-plots", "--no-progress"]) == 0
    assert (out / "history.jsonl").read_text() == saved
    records = [json.loads(line) for line in saved.splitlines()]
    assert records == read_checkpoint(out / "checkpoint.safetensors")[1]["trainer"]["history"]
