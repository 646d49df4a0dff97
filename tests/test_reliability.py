"""Nothing lost, nothing stale: SIGTERM, stale temporary files, the history/checkpoint order, the run
directory's lock, and kills at random moments followed by ``--resume``."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePath

import numpy as np
import pytest

import backprop as bp
from backprop.cli import main
from backprop.data import load_digits
from backprop.io.checkpoints import read_checkpoint
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
    return read_checkpoint(directory / "checkpoint.safetensors").epoch


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
    assert trainer.epoch == 2 and read_checkpoint(checkpoint).epoch == 2
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
        assert main([*SMALL_RUN, "--output", str(out)]) == 2  # not "holds an interrupted run": it is running
        assert main([*SMALL_RUN, "--output", str(out), "--overwrite"]) == 2
        assert main(["--backend", "numpy", "train", "--resume", str(out), "--epochs", "1", "--no-progress",
                     "--no-plots"]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert errors == [f"error: {out} is in use by another backprop run (process {other.pid}); wait for it to "
                          f"end, or choose another directory"] * 3
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
    import backprop.training.trainer as trainer_module

    write_checkpoint, saves = trainer_module.write_checkpoint, []

    def killed_at_the_third_save(*args, **kwargs):
        saves.append(1)
        if len(saves) == 3:  # the end of epoch 3
            raise _Killed
        write_checkpoint(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "write_checkpoint", killed_at_the_third_save)
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
    assert records == read_checkpoint(out / "checkpoint.safetensors").history


# -- 5. kills at random moments, then --resume, end exactly like a run that was never killed -------------------
HERE = Path(__file__).resolve()
#: The run the kill tests repeat: small, with dropout (so the random streams must resume exactly too).
KILLED_RUN = ["--epochs", "4", "--hidden", "16", "--batch-size", "32", "--dropout", "0.1", "--no-progress"]
TIMING_FIELDS = ("time", "samples_per_second")


def _drive(run_dir: Path, args: list[str], kill=None, *, counts: Path | None = None):
    """``backprop`` ARGS in a child that sends itself ``kill = (signal, kind, n)`` at its n-th event of that
    kind: "file" (any file operation inside ``run_dir``: opening, renaming, removing, listing...) or "step"
    (a training step). Seeded moments, reproducible, and no clock involved. ``counts``: where the child
    writes how many events of each kind it saw (if it lives to the end)."""
    signum, kind, index = kill if kill else (0, "-", 0)
    command = [sys.executable, str(HERE), "drive", str(run_dir), kind, str(index), str(int(signum)),
               str(counts or ""), *args]
    env = {**os.environ, "BACKPROP_BACKEND": "numpy", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def _run_as_driven(argv: list[str]) -> int:  # the child's side of ``_drive``
    run_dir, kind, index, signum, counts_file, *args = argv
    index, signum = int(index), int(signum)
    seen = {"file": 0, "step": 0}

    def event(what):
        seen[what] += 1
        if what == kind and seen[what] == index:
            os.kill(os.getpid(), signum)  # SIGKILL ends the process here and now; SIGTERM is handled

    def on_audit(name, args):
        if args and isinstance(args[0], (str, PurePath)) and str(args[0]).startswith(run_dir):
            event("file")

    from backprop.training.step import TrainingStep

    run_step = TrainingStep.run

    def counted_step(*a, **k):  # called once per training step
        event("step")
        return run_step(*a, **k)

    TrainingStep.run = counted_step
    sys.addaudithook(on_audit)
    status = main(args)
    if counts_file:
        Path(counts_file).write_text(json.dumps(seen))
    return status


def _without_timing(history):
    return [{k: v for k, v in record.items() if k not in TIMING_FIELDS} for record in history]


def _assert_consistent(run_dir: Path, reference_history):
    """What a kill may leave: a readable checkpoint (or none yet), a history never ahead of it."""
    if not (run_dir / "checkpoint.safetensors").exists():
        assert not (run_dir / "history.jsonl").exists(), "a history without a checkpoint"
        return
    state = read_checkpoint(run_dir / "checkpoint.safetensors")  # never half-written
    epoch, saved = state.epoch, state.history
    assert _without_timing(saved) == reference_history[:epoch]
    if (run_dir / "history.jsonl").exists():
        history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        assert len(history) <= epoch, f"the history has {len(history)} epochs, the checkpoint {epoch}"
        assert _without_timing(history) == reference_history[:len(history)]


def _assert_same_as_reference(run_dir: Path, reference: Path):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [".backprop.lock", "model.safetensors", "checkpoint.safetensors", "history.jsonl", "summary.json"])
    model = bp.load_model(run_dir / "model.safetensors", backend="numpy")
    expected = bp.load_model(reference / "model.safetensors", backend="numpy")
    for name, weight in ((n, p.value) for n, p in expected.named_parameters().items()):
        np.testing.assert_array_equal(model.named_parameters()[name].value, weight, err_msg=name)  # bit for bit
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert _without_timing(history) == _without_timing(
        json.loads(line) for line in (reference / "history.jsonl").read_text().splitlines())


def test_kills_at_random_moments_then_resume_end_exactly_like_an_uninterrupted_run(tmp_path):
    """kill -9 and SIGTERM at seeded-random file operations and training steps, each followed by --resume
    (or a fresh start when no checkpoint was saved yet): never a temporary file left, a damaged checkpoint,
    a history ahead of the checkpoint, or weights different from the uninterrupted run's."""
    reference, counts = tmp_path / "reference", tmp_path / "counts.json"
    result = _drive(reference, ["train", *KILLED_RUN, "--no-plots", "--output", str(reference)], counts=counts)
    assert result.returncode == 0, result.stderr
    events = json.loads(counts.read_text())
    reference_history = _without_timing(
        json.loads(line) for line in (reference / "history.jsonl").read_text().splitlines())
    rng = random.Random(20240611)
    kills, chains, attempts = {signal.SIGKILL: 0, signal.SIGTERM: 0}, 0, 0
    while sum(kills.values()) < 6:
        run_dir = tmp_path / f"killed{chains}"
        chains += 1
        while True:  # kill, resume, kill, ... until an attempt is not killed (its moment never came)
            attempts += 1
            assert attempts < 40, "the kills never took"
            kind = rng.choice(["file", "step"])
            kill = (rng.choice([signal.SIGKILL, signal.SIGTERM]), kind, rng.randint(1, events[kind]))
            if sum(kills.values()) >= 6:
                kill = None
            if (run_dir / "checkpoint.safetensors").exists():
                args = ["train", "--resume", str(run_dir), "--no-progress", "--no-plots"]
            else:
                args = ["train", *KILLED_RUN, "--no-plots", "--output", str(run_dir)]
            result = _drive(run_dir, args, kill)
            if result.returncode == 0:
                break
            assert kill is not None, result.stderr
            kills[kill[0]] += 1
            if kill[0] == signal.SIGKILL:
                assert result.returncode == -signal.SIGKILL, result.stderr
            else:
                assert result.returncode == 143 and "terminated (SIGTERM)" in result.stderr, result.stderr
                assert "Traceback" not in result.stderr, result.stderr
            _assert_consistent(run_dir, reference_history)
        _assert_same_as_reference(run_dir, reference)
    assert kills[signal.SIGKILL] and kills[signal.SIGTERM]


def stress(kills: int = 40, seed: int = 1, workdir: str | None = None) -> dict:
    """The long version of the test above, run by hand (``python tests/test_reliability.py stress 40``):
    real ``backprop train`` processes with plots, killed (kill -9 or SIGTERM, half each) after a random
    delay of up to the length of a whole run, each followed by --resume until a run ends; every run that
    ends is compared bit for bit with an uninterrupted one. Returns (and prints) the figures."""
    import re
    import shutil
    import tempfile

    from backprop.runs import RUN_FILES

    ours = re.compile(r"\.(" + "|".join(map(re.escape, RUN_FILES)) + r")\.[a-z0-9_]{8}\.tmp")
    foreign = re.compile(r"\.tmp[A-Za-z0-9]{6}")  # safetensors' own temporary file (save_file)
    root = Path(workdir or tempfile.mkdtemp(prefix="backprop-stress-"))
    rng = random.Random(seed)
    env = {**os.environ, "BACKPROP_BACKEND": "numpy", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def launch(args):
        return subprocess.Popen([sys.executable, "-m", "backprop", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    reference = root / "reference"
    started = time.monotonic()
    process = launch(["train", *KILLED_RUN, "--output", str(reference)])
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    whole_run = time.monotonic() - started
    reference_history = _without_timing(
        json.loads(line) for line in (reference / "history.jsonl").read_text().splitlines())
    figures = {"kills": 0, "SIGKILL": 0, "SIGTERM": 0, "SIGTERM exit 143": 0, "SIGTERM before the handler": 0,
               "runs finished": 0, "runs started": 0, "temp files right after a kill (ours)": 0,
               "temp files right after a kill (safetensors' own)": 0, "temp files left at the end": 0,
               "history ahead of checkpoint": 0, "damaged checkpoints": 0, "weights different": 0,
               "problems": [], "seconds for a whole run": round(whole_run, 2)}
    chain = 0
    while figures["kills"] < kills:
        run_dir = root / f"run{chain}"
        chain += 1
        while True:
            if (run_dir / "checkpoint.safetensors").exists():
                args = ["train", "--resume", str(run_dir), "--no-progress"]
            else:
                args = ["train", *KILLED_RUN, "--output", str(run_dir)]
            figures["runs started"] += 1
            process = launch(args)
            signum = rng.choice([signal.SIGKILL, signal.SIGTERM])
            try:
                process.wait(timeout=rng.uniform(0, 1.2 * whole_run))
            except subprocess.TimeoutExpired:
                process.send_signal(signum)
            stdout, stderr = process.communicate()
            if process.returncode == 0:
                figures["runs finished"] += 1
                break
            if process.returncode not in (-signal.SIGKILL, -signal.SIGTERM, 143):
                figures["problems"].append(f"{run_dir.name}: status {process.returncode}: {stderr[-500:]}")
                break
            figures["kills"] += 1
            figures[signum.name] += 1
            if signum == signal.SIGTERM:
                figures["SIGTERM exit 143" if process.returncode == 143 else "SIGTERM before the handler"] += 1
                if "Traceback" in stderr:
                    figures["problems"].append(f"{run_dir.name}: traceback after SIGTERM: {stderr[-500:]}")
            names = [p.name for p in run_dir.iterdir()] if run_dir.exists() else []
            figures["temp files right after a kill (ours)"] += sum(bool(ours.fullmatch(n)) for n in names)
            figures["temp files right after a kill (safetensors' own)"] += sum(bool(foreign.fullmatch(n))
                                                                              for n in names)
            try:
                _assert_consistent(run_dir, reference_history)
            except AssertionError as exc:
                figures["history ahead of checkpoint"] += "history" in str(exc)
                figures["problems"].append(f"{run_dir.name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint
                figures["damaged checkpoints"] += 1
                figures["problems"].append(f"{run_dir.name}: {exc}")
        names = [p.name for p in run_dir.iterdir()]
        figures["temp files left at the end"] += sum(bool(ours.fullmatch(n) or foreign.fullmatch(n)) for n in names)
        try:
            model = bp.load_model(run_dir / "model.safetensors", backend="numpy")
            expected = bp.load_model(reference / "model.safetensors", backend="numpy")
            if any(not np.array_equal(model.named_parameters()[k].value, p.value)
                   for k, p in expected.named_parameters().items()):
                figures["weights different"] += 1
        except Exception as exc:  # noqa: BLE001
            figures["problems"].append(f"{run_dir.name}: {exc}")
    figures["chains (killed, resumed, ..., finished)"] = chain
    print(json.dumps(figures, indent=2))
    if not figures["problems"] and workdir is None:
        shutil.rmtree(root)
    return figures


if __name__ == "__main__":
    if sys.argv[1] == "drive":
        sys.exit(_run_as_driven(sys.argv[2:]))
    if sys.argv[1] == "stress":
        result = stress(*map(int, sys.argv[2:4]), *sys.argv[4:5])  # KILLS [SEED [WORKDIR]]
        sys.exit(1 if result["problems"] or result["weights different"] or result["temp files left at the end"]
                 else 0)
