"""Nothing lost, nothing stale: SIGTERM, stale temporary files, the history/checkpoint order, the run
directory's lock, and kills at random moments followed by ``--resume``."""

from __future__ import annotations

import json
import signal

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
