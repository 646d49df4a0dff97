"""Data-parallel training over MPI (CPU): ``mpirun -n 2`` ends with the single-process weights.

The MPI runs are real: ``mpirun`` comes from the MPICH wheel the ``test`` extra installs, next to the
Python that runs the tests. This file is also the program the ranks run (``python test_distributed.py
MODE OUTPUT``). Every launch is bounded by a timeout that kills its whole process group.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
TIMEOUT = 90  # seconds for one launch; a hang fails the test instead of the CI run

# Global batch, optimizer, epochs, ...: "adam33" has batches of 33 on 2 ranks (16 + 17 rows) and a last batch of
# 1 row (rank 1 gets none); "full" is full-batch without shuffling on an odd number of examples; "adam11x3"
# accumulates 3 micro-batches of 11 (5 + 6 rows on 2 ranks) per update, the last update one micro-batch of 1 row:
# it must give the weights of "adam33" (REFERENCE), the same updates taken as single batches in one process.
SCENARIOS = {
    "momentum32": dict(n=256, optimizer="momentum", lr=0.05, batch_size=32, epochs=2, validation_split=0.1),
    "adam33": dict(n=199, optimizer="adam", lr=0.01, batch_size=33, epochs=2, clip_norm=1.0),
    "full": dict(n=101, optimizer="sgd", lr=0.5, batch_size="full", epochs=3, shuffle=False),
    "adam11x3": dict(n=199, optimizer="adam", lr=0.01, batch_size=11, accumulate_steps=3, epochs=2, clip_norm=1.0),
}
REFERENCE = {"adam11x3": "adam33"}  # scenario -> the single-process run whose weights it must end with
# (scenario, backend, dtype) runs the 2 ranks train. float64 runs check the data-parallel arithmetic itself
# (RTOL64 below); float32 runs, of the scenarios whose rounding no step amplifies (SGD, momentum), check the
# float32 path against float32 rounding (see the test). torch:cpu and array_api_strict show the host path is
# backend-agnostic.
RUNS = [("momentum32", "numpy", "float64"), ("adam33", "numpy", "float64"), ("full", "numpy", "float64"),
        ("adam11x3", "numpy", "float64"),
        ("adam33", "array_api_strict", "float64"), ("adam33", "torch:cpu", "float64"),
        ("momentum32", "numpy", "float32"), ("full", "numpy", "float32")]

# How far 2 ranks may be from one process in float64. The ranks sum the gradient in another order than one
# process does (each rank sums its shard, then the shards are added): equally valid, but rounded differently.
# Adam's step m/sqrt(v) normalizes each element, so an element whose gradient nearly cancels (a pixel that is
# almost always 0) turns that rounding into a visible change: in float32 adam33 the worst element differs by
# 7e-4 relative, about 6e3 times float32's eps (1.2e-7). Rounding scales with eps, so in float64 (eps 2.2e-16)
# the same amplification gives ~1e-12, which is what we measure (worst 2e-12 relative, 7e-15 absolute, on
# numpy, array_api_strict and torch:cpu). RTOL64 = 1e6 eps allows 100 times more amplification than that;
# a real bug moves the weights far more: a shard weighted 1.01 instead of 1 by 1e-2, a missed all-reduce by
# 1e-1, and even a weighting off by 1e-6 by 1e-7 (all measured). The absolute part covers weights near 0:
# rounding is relative to the size of what is summed (weights and steps of ~0.1), not to a result that happens
# to be small.
RTOL64 = 1e6 * float(np.finfo(np.float64).eps)  # 2.2e-10
ATOL64 = 0.1 * RTOL64


def train(scenario, backend_spec, dtype, communicator=None, callbacks=(), model_seed=1):
    """Train a 64-32-10 MLP in ``dtype`` on a subset of the digits; returns (host weights, history)."""
    import backprop as bp
    from backprop.data import load_dataset

    options = dict(SCENARIOS[scenario])
    n, split = options.pop("n"), options.pop("validation_split", 0.0)
    data = load_dataset("digits", seed=0)
    backend = bp.get_backend(backend_spec)
    model = bp.mlp([64, 32, 10], seed=model_seed, backend=backend, dtype=dtype)
    trainer = bp.Trainer(model, seed=3, progress=False, log=None, callbacks=list(callbacks),
                         communicator=communicator, **options)
    history = trainer.fit(data.x_train[:n], data.y_train[:n], validation_split=split)
    weights = {k: backend.to_host(v) for k, v in trainer.copy_weights().items()}
    return weights, [{k: r[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "grad_norms")}
                     for r in history]


# -- what the ranks run ------------------------------------------------------------------------------------------
def _worker_equal(output: Path):
    """Every (scenario, backend) of RUNS on all ranks; rank 0 writes the weights and histories."""
    import backprop as bp
    from backends import BackendUnavailable
    from backprop.distributed import world

    comm = world()
    results, histories = {}, {}
    for scenario, spec, dtype in RUNS:
        try:
            bp.get_backend(spec)
        except BackendUnavailable:
            continue  # torch not installed: the parent skips the comparison too
        run = f"{scenario}-{spec}-{dtype}"
        writers = [bp.HistoryWriter(f"history-{run}.jsonl"), bp.Checkpoint(f"checkpoint-{run}.safetensors")]
        # Each rank builds its model from another seed: the broadcast from rank 0 must make them equal.
        weights, history = train(scenario, spec, dtype, comm, writers, model_seed=1 + comm.rank)
        flat = np.concatenate([w.ravel() for w in weights.values()])
        others = comm.comm.gather(flat, root=0)
        if comm.is_root:
            histories[run] = history
            results.update({f"{run}/{k}": v for k, v in weights.items()})
            results[f"{run}/rank_spread"] = np.array(max(float(np.abs(o - flat).max()) for o in others))
    evaluations = mse_evaluations(comm)
    if comm.is_root:
        np.savez(output / "weights.npz", **results)
        (output / "histories.json").write_text(json.dumps(histories))
        (output / "mse_evaluations.json").write_text(json.dumps(evaluations))


def mse_evaluations(communicator=None):
    """``evaluate`` of an MSE model (loss, MAE, R²) on 7 rows (3 + 4 on 2 ranks) and on 1 row (rank 1 has none):
    by the communicator's ranks, or by one process without one."""
    import backprop as bp
    from backprop.training import evaluate

    backend = bp.get_backend("numpy")
    model = bp.mlp([3, 4, 2], seed=5, backend=backend)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(7, 3)).astype(np.float32)
    y = (x @ rng.normal(size=(3, 2)) + 1.0).astype(np.float32)
    figures = {}
    for n in (7, 1):
        arrays = (model, backend.from_host(x[:n]), backend.from_host(y[:n]), bp.MSE())
        figures[n] = evaluate(*arrays) if communicator is None else communicator.evaluate(*arrays)
    return {str(n): {key: float(value) for key, value in result.items()} for n, result in figures.items()}


def _worker_size1(output: Path):
    """Without mpirun: a communicator of one rank must give exactly the plain trainer's weights and history."""
    from backprop.distributed import world

    comm = world()
    assert comm.size == 1
    report = {}
    for scenario in SCENARIOS:
        plain, plain_history = train(scenario, "numpy", "float32")
        dist, dist_history = train(scenario, "numpy", "float32", comm)
        report[scenario] = {"bitwise": all(np.array_equal(plain[k], dist[k]) for k in plain),
                            "history": plain_history == dist_history}
    # The functional API's switch: fit(..., distributed=True) uses MPI.COMM_WORLD.
    import backprop as bp
    from backprop.data import load_dataset

    data = load_dataset("digits", seed=0)
    models = [bp.mlp([64, 32, 10], seed=1, backend="numpy") for _ in range(2)]
    for model, distributed in zip(models, (False, True)):
        bp.fit(model, data.x_train[:100], data.y_train[:100], epochs=1, batch_size=16, progress=False, log=None,
               distributed=distributed)
    report["fit"] = all(np.array_equal(a.value, b.value) for a, b in zip(models[0].parameters(),
                                                                         models[1].parameters()))
    (output / "size1.json").write_text(json.dumps(report))


def _worker_fail(output: Path):
    """Rank 1 raises at the end of epoch 1 while rank 0 goes on into epoch 2's all-reduce."""
    import backprop as bp
    from backprop.data import load_dataset
    from backprop.distributed import world

    class Boom(bp.Callback):
        def on_epoch_end(self, trainer, record):
            if trainer.communicator.rank == 1:
                raise RuntimeError("boom on purpose")

    data = load_dataset("digits", seed=0)
    model = bp.mlp([64, 32, 10], seed=1, backend="numpy")
    bp.Trainer(model, optimizer="sgd", lr=0.05, batch_size=32, epochs=50, progress=False, callbacks=[Boom()],
               communicator=world()).fit(data.x_train, data.y_train)
    (output / "finished").write_text("the job should have been stopped")


WORKERS = {"equal": _worker_equal, "size1": _worker_size1, "fail": _worker_fail}


def use_float64(backend, setattr=setattr):
    """Make the NumPy backend compute in float64: layers are built in float64 and float host data (the
    float32 data sets) comes onto the device as float64. ``setattr``: pytest's ``monkeypatch.setattr`` to
    undo it after a test."""
    plain = backend.from_host

    def from_host(host_array, dtype=None):
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype.kind == "f":
            dtype = np.float64
        return plain(host_array, dtype=dtype)

    setattr(backend, "float_dtype", np.float64)
    setattr(backend, "from_host", from_host)


def _cli_in_float64(argv: list[str]) -> int:
    """``backprop ARGV`` on a NumPy backend that computes in float64 (see ``RTOL64``)."""
    import backprop as bp
    from backprop.cli import main

    use_float64(bp.get_backend("numpy"))
    return main(argv)


# -- launching ----------------------------------------------------------------------------------------------
def _launcher() -> str:
    """``mpirun`` of the MPI installed beside this Python (the MPICH wheel of the test/mpi extras)."""
    for directory in (Path(sys.executable).parent, Path(sys.executable).resolve().parent):
        for name in ("mpirun", "mpiexec"):
            if (directory / name).exists():
                return str(directory / name)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if found is None:
        pytest.fail("no mpirun beside this Python: install the test extra (pip install '.[test]' brings mpich)")
    return found


def _environment():
    env = dict(os.environ)
    # One thread per rank: two ranks on two cores; BLAS threads would only fight each other.
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "BACKPROP_BACKEND": "numpy", "PYTHONUNBUFFERED": "1"})
    return env


def _run(command, *, cwd, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``command`` in its own process group; on timeout kill the whole group (launcher and ranks)."""
    process = subprocess.Popen(command, cwd=cwd, env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(map(str, command))} did not finish in {timeout} s (a hang)\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _two_ranks(program: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``mpirun`` with rank 0 working in tmp_path/rank0 and rank 1 in tmp_path/rank1 (MPMD syntax), so what
    each rank writes can be told apart."""
    dirs = [tmp_path / "rank0", tmp_path / "rank1"]
    for d in dirs:
        d.mkdir()
    command = [_launcher(), "-n", "1", "-wdir", str(dirs[0]), *program, ":", "-n", "1", "-wdir", str(dirs[1]),
               *program]
    return _run(command, cwd=tmp_path), dirs[0], dirs[1]


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# -- tests --------------------------------------------------------------------------------------------------------
def test_two_ranks_give_the_single_process_weights(tmp_path):
    result, rank0, rank1 = _two_ranks([sys.executable, str(HERE), "equal", str(tmp_path)], tmp_path)
    assert result.returncode == 0, result.stderr
    weights = np.load(tmp_path / "weights.npz")
    histories = json.loads((tmp_path / "histories.json").read_text())
    runs = [(scenario, spec, dtype) for scenario, spec, dtype in RUNS if spec != "torch:cpu" or _torch_available()]
    exact = {}  # (scenario, spec) -> the single process's float64 weights
    for scenario, spec, dtype in sorted(runs, key=lambda run: run[2], reverse=True):  # float64 first
        run = f"{scenario}-{spec}-{dtype}"
        reference, reference_history = train(REFERENCE.get(scenario, scenario), spec, dtype)
        assert float(weights[f"{run}/rank_spread"]) == 0.0  # every rank holds the same weights
        got = {name: weights[f"{run}/{name}"] for name in reference}
        assert all(array.dtype == np.dtype(dtype) for array in got.values()), run
        if dtype == "float64":
            exact[scenario, spec] = reference
            for name, expected in reference.items():
                np.testing.assert_allclose(got[name], expected, rtol=RTOL64, atol=ATOL64, err_msg=f"{run}: {name}")
            for have, want in zip(histories[run], reference_history, strict=True):
                for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                    expected = None if want[key] is None else pytest.approx(want[key], rel=RTOL64, abs=ATOL64)
                    assert have[key] == expected, (run, key)
                assert have["grad_norms"] == pytest.approx(want["grad_norms"], rel=RTOL64, abs=ATOL64), run
        else:
            # float32: the 2-rank and the single-process weights are two float32 roundings of one computation,
            # whose exact result is (to 1e-12) the float64 run. The tolerance is float32 rounding itself,
            # measured on this very run: the 2 ranks must be as close to the exact weights as one process is,
            # within a factor of 4 that another summation order may cost (measured: at most 1.6 per tensor over
            # 36 pairs of seeds of these scenarios, Adam included). A rank weighted 1.0001 is 100 times off.
            for name, expected in reference.items():
                truth = exact[scenario, spec][name]
                single_error = float(np.abs(expected - truth).max())
                ranks_error = float(np.abs(got[name] - truth).max())
                assert ranks_error <= 4 * single_error, (f"{run}: {name}: 2 ranks are {ranks_error:.3g} from the "
                                                         f"exact weights, one process {single_error:.3g}")
    assert len(exact) >= 4
    # An MSE model's evaluation over 2 ranks reports the single process's loss, MAE and R2. float32: each rank
    # sums its shard on the device and the shards are added on the host, another summation order than one
    # process's (a rank's share weighted wrong, or a metric's sums dropped, is off by far more than 1e-5)
    evaluations, single = json.loads((tmp_path / "mse_evaluations.json").read_text()), mse_evaluations()
    assert sorted(evaluations) == sorted(single) == ["1", "7"]
    for n, figures in single.items():
        assert sorted(evaluations[n]) == sorted(figures) == ["loss", "mae", "r2"], n
        assert evaluations[n] == pytest.approx(figures, rel=1e-5, abs=1e-6), n
    # Only rank 0 wrote the history and checkpoint files.
    assert sorted(p.name for p in rank0.iterdir()) == sorted(
        f"{kind}-{scenario}-{spec}-{dtype}.{ext}" for scenario, spec, dtype in runs
        for kind, ext in (("history", "jsonl"), ("checkpoint", "safetensors")))
    assert list(rank1.iterdir()) == []


def test_one_rank_is_exactly_the_plain_trainer(tmp_path):
    result = _run([sys.executable, str(HERE), "size1", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "size1.json").read_text())
    assert report == {**{s: {"bitwise": True, "history": True} for s in SCENARIOS}, "fit": True}


def test_a_failing_rank_stops_the_whole_job(tmp_path):
    result, _, _ = _two_ranks([sys.executable, str(HERE), "fail", str(tmp_path)], tmp_path)
    assert result.returncode != 0
    assert "error: rank 1 of 2: RuntimeError: boom on purpose" in result.stderr
    assert not (tmp_path / "finished").exists()


@pytest.mark.parametrize("signum, status, said", [(signal.SIGINT, 130, "interrupted"),
                                                   (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_ctrl_c_stops_every_rank_at_the_same_step(tmp_path, signum, status, said):
    """Ctrl-C (or SIGTERM, which mpirun forwards to every rank) to mpirun during ``backprop train
    --distributed``: the ranks stop together, rank 0 saves the checkpoint, and the job exits with status 130
    (143)."""
    command = [_launcher(), "-n", "2", sys.executable, "-m", "backprop", "train", "--distributed", "--epochs",
               "100000", "--batch-size", "4", "--hidden", "32", "--no-progress", "--no-plots", "--output", "out"]
    process = subprocess.Popen(command, cwd=tmp_path, env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (tmp_path / "out" / "history.jsonl").exists():  # the first epoch is done
            assert process.poll() is None and time.monotonic() < deadline, "the job did not start"
            time.sleep(0.05)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode == status, stdout + stderr
    assert stdout.count(" during epoch ") == 1  # said once, by rank 0
    assert ("interrupted by SIGTERM during epoch" if signum == signal.SIGTERM else "interrupted during epoch") in stdout
    assert f"{said}: checkpoint saved; continue with: backprop train --resume out" in stderr
    assert (tmp_path / "out" / "checkpoint.safetensors").exists()


def test_cli_distributed_train_matches_single_process(tmp_path, monkeypatch):
    """``backprop train --distributed`` on 2 ranks ends with the weights of ``backprop train``. Both run on a
    NumPy backend that computes in float64, so the comparison is exact up to RTOL64: in float32 the default
    optimizer, Adam, turns the ranks' other (equally valid) summation order into differences of 1e-4 relative
    (see RTOL64). That the float32 path of the ranks is as accurate as one process is tested above."""
    import backprop as bp
    from backprop.cli import main
    from backprop.io.model_files import load_model

    options = ["train", "--epochs", "2", "--hidden", "32", "--batch-size", "33", "--no-progress", "--no-plots",
               "--output", "out"]
    result, rank0, rank1 = _two_ranks([sys.executable, str(HERE), "cli64", *options, "--distributed"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("test accuracy") == 1 and "2 ranks (data-parallel)" in result.stdout
    assert list(rank1.iterdir()) == []  # rank 1 wrote nothing, not even the directory
    written = {p.name for p in (rank0 / "out").iterdir()}
    assert {"model.safetensors", "checkpoint.safetensors", "history.jsonl", "summary.json"} <= written
    assert json.loads((rank0 / "out" / "summary.json").read_text())["ranks"] == 2
    assert len((rank0 / "out" / "history.jsonl").read_text().splitlines()) == 2

    single = tmp_path / "single"
    options[-1] = str(single)
    use_float64(bp.get_backend("numpy"), monkeypatch.setattr)
    assert main(["--backend", "numpy", *options]) == 0
    distributed_model = load_model(rank0 / "out" / "model.safetensors")
    single_model = load_model(single / "model.safetensors")
    for name, array in ((n, p.value) for n, p in single_model.named_parameters().items()):
        got = distributed_model.backend.to_host(distributed_model.named_parameters()[name].value)
        assert got.dtype == np.float64, name
        np.testing.assert_allclose(got, single_model.backend.to_host(array), rtol=RTOL64, atol=ATOL64, err_msg=name)


def test_cli_non_finite_loss_stops_every_rank_at_the_same_step(tmp_path):
    command = [_launcher(), "-n", "2", sys.executable, "-m", "backprop", "train", "--distributed", "--optimizer",
               "sgd", "--lr", "1e6", "--epochs", "3", "--no-progress", "--no-plots", "--output", "out"]
    result = _run(command, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error: the loss became NaN or infinite at epoch 1") == 1  # said once, by rank 0
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_cli_error_on_one_rank_stops_the_job(tmp_path):
    """Rank 1 cannot read its dataset while rank 0 waits for it in the first broadcast."""
    dirs = [tmp_path / "rank0", tmp_path / "rank1"]
    for d in dirs:
        d.mkdir()
    common = [sys.executable, "-m", "backprop", "train", "--distributed", "--epochs", "1", "--hidden", "16",
              "--no-progress", "--no-plots", "--output", "out"]
    command = [_launcher(), "-n", "1", "-wdir", str(dirs[0]), *common, ":",
               "-n", "1", "-wdir", str(dirs[1]), *common, "--dataset", "missing.npz"]
    result = _run(command, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: rank 1 of 2:" in result.stderr and "missing.npz" in result.stderr


def test_allreduce_benchmark_runs_and_reports(tmp_path):
    from benchmarks.allreduce import main

    assert main(["--ranks", "1,2", "--repeats", "3", "--warmup", "1", "--batch-size", "16", "--train-steps", "2",
                 "--epochs", "1", "--timeout", str(TIMEOUT), "--output-dir", str(tmp_path), "--name", "smoke"]) == 0
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert [r["ranks"] for r in result["runs"]] == [1, 2]
    assert result["runs"][0]["elements"] == 669_706 and result["runs"][1]["mpi_allreduce_s"]["median"] > 0
    assert [row["ranks"] for row in result["predictions"]["nvlink"]["rows"]] == [1, 2, 4, 8]
    assert "| 2 |" in (tmp_path / "smoke.md").read_text()


# -- no MPI needed ------------------------------------------------------------------------------------------------
def test_shards_cover_every_global_batch_exactly():
    from backprop.distributed import Communicator

    for size in range(1, 6):
        ranks = []
        for rank in range(size):
            communicator = object.__new__(Communicator)
            communicator.rank, communicator.size = rank, size
            ranks.append(communicator)
        for start, stop in [(0, 0), (0, 1), (5, 6), (0, 7), (10, 43), (3, 200)]:
            parts = [c.shard(start, stop) for c in ranks]
            assert [i for lo, hi in parts for i in range(lo, hi)] == list(range(start, stop))
            counts = [hi - lo for lo, hi in parts]
            assert max(counts) - min(counts) <= 1


def test_trainer_rejects_a_non_communicator():
    import backprop as bp

    model = bp.mlp([4, 3], seed=0, backend="numpy")
    with pytest.raises(bp.ConfigError, match="communicator must be a backprop.distributed.Communicator"):
        bp.Trainer(model, communicator="world")


def test_nccl_module_imports_without_cupy():
    import backends.nccl as nccl

    try:
        import cupy  # noqa: F401
    except ImportError:
        from backends import BackendSetupError

        with pytest.raises(BackendSetupError, match="NCCL for CuPy"):
            nccl.NcclReducer(None, None)


if __name__ == "__main__":
    if sys.argv[1] == "cli64":
        sys.exit(_cli_in_float64(sys.argv[2:]))
    WORKERS[sys.argv[1]](Path(sys.argv[2]))


def test_ranks_share_the_cores_for_blas_threads(monkeypatch):
    import os

    import backprop as bp
    from backprop.distributed import world

    threadpoolctl = pytest.importorskip("threadpoolctl")
    communicator = world()
    backend = bp.get_backend("numpy")
    assert communicator.local_size == communicator.size == 1
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    with threadpoolctl.threadpool_limits(limits=None):  # gives the tests after this one their thread counts back
        assert communicator.share_cores(backend) is None  # limited to this rank's share: all the cores here
    calls = []
    monkeypatch.setattr(type(backend), "limit_threads", lambda self, n: calls.append(n) or False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert communicator.share_cores(backend) is None and calls == []  # the user's setting wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    warning = communicator.share_cores(backend)
    assert calls == [len(os.sched_getaffinity(0))] and "could not limit numpy's threads" in warning
    # what happened (the backend did not apply it; threadpoolctl is installed) and what to do, in one line
    assert "limit_threads was not applied" in warning and "pip install" not in warning and "\n" not in warning
    assert f"set OMP_NUM_THREADS={calls[0]}" in warning and "XLA_FLAGS" in warning


def test_the_gradient_all_reduce_is_the_backends(backend, monkeypatch):
    """The communicator asks the backend for its all-reduce (no branch on the library name): the host one by
    default (MPI on a NumPy copy, back on the backend's device), NCCL for CuPy."""
    import backends.nccl as nccl
    from backends.allreduce import HostReducer
    from backends.cupy_backend import CupyBackend
    from backprop.distributed.communicator import Communicator

    from conftest import assert_on_backend

    class TwoRanks:  # MPI_Allreduce of two ranks holding the same buffer: twice it
        IN_PLACE, SUM = object(), object()

    class Comm:
        def Allreduce(self, where, host, op):
            assert where is TwoRanks.IN_PLACE and op is TwoRanks.SUM
            host *= 2

    communicator = Communicator.__new__(Communicator)
    communicator.MPI, communicator.comm, communicator.size, communicator._reducers = TwoRanks, Comm(), 2, {}
    reducer = communicator._reducer(backend)
    assert isinstance(reducer, HostReducer) and reducer.backend is backend
    with backend.activate():
        flat = backend.from_host(np.array([1.0, 2.0, 1.0], np.float32))
        summed, flag = reducer.allreduce(flat, 1.0)
    assert_on_backend(summed, backend, shape=(3,))
    np.testing.assert_array_equal(backend.to_host(summed), [2.0, 4.0, 2.0])
    assert flag == 2.0
    made = []
    monkeypatch.setattr(nccl, "NcclReducer", lambda comm, owner: made.append((comm, owner)) or "nccl")
    cupy = CupyBackend.__new__(CupyBackend)  # no GPU here: the method alone
    assert cupy.allreducer(communicator) == "nccl" and made == [(communicator, cupy)]


def test_share_cores_asks_every_backend_and_never_reads_its_library_name(monkeypatch):
    """Before: ``share_cores`` skipped CuPy by name (``backend.library == "cupy"``); now every backend is asked
    (``Backend.limit_threads``), and one whose kernels use no CPU threads (CuPy) says the limit holds."""
    import os

    from backends import ThreadLimit, get_backend
    from backends.cupy_backend import CupyBackend
    from backprop.distributed import world

    pytest.importorskip("mpi4py")
    communicator = world()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    class NamedCupy(type(get_backend("numpy"))):  # a library name the old code skipped, on the CPU
        library = "cupy"

        def limit_threads(self, threads):
            calls.append(threads)
            return ThreadLimit(True)

    assert communicator.share_cores(NamedCupy()) is None
    assert calls == [len(os.sched_getaffinity(0)) // communicator.local_size]
    assert CupyBackend.limit_threads(object.__new__(CupyBackend), 2)  # no CPU threads to limit: it holds


def test_a_backend_family_that_does_not_spread_ranks_gives_each_rank_the_named_backend():
    """The registry says which families spread the ranks of a machine over its devices (CuPy does, NumPy does
    not): ``device_backend`` asks it instead of knowing CuPy by name."""
    import types

    import backends
    from backprop.distributed import device_backend

    assert backends.devices_for_ranks("numpy") is None
    rank = types.SimpleNamespace(size=4, local_rank=3, local_size=4)
    assert device_backend("numpy", rank).name == "numpy"
    assert device_backend(backends.get_backend("numpy"), rank).name == "numpy"
