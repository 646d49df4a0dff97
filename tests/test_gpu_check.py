"""The GPU check (``benchmarks/gpu_check.sh``) runs end to end without a GPU, and its stage runner keeps its time
limits and goes on past failures: checked here so the check does not rot before the next GPU machine.

Nothing here needs a GPU; where one is present the check's own detection is replaced by "none" (the GPU path
itself is what the check runs on the GPU machine).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from benchmarks import gpu_check, step_timing
from benchmarks.gpu_check import Context, Result, Stage

NO_GPU = "no NVIDIA driver: libcuda cannot be loaded, nvidia-smi not found"


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu_check, "detect_gpu", lambda: (False, NO_GPU))


def _options(tmp_path, *more):
    return ["--state-dir", str(tmp_path / "state"), "--results", str(tmp_path / "results"), "--runs-file",
            str(tmp_path / "GPU_RUNS.md"), *more]


def test_without_a_gpu_every_gpu_stage_says_unavailable_and_why(tmp_path, no_gpu):
    lines = []
    status = gpu_check.main([str(tmp_path / "no-wheelhouse"), *_options(tmp_path)], log=lines.append)
    assert status == 1  # the install stage failed: the wheelhouse does not exist
    stages = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[1].split()[0] for line in stages] == [
        "versions", "install", "backends", "tests", "tests", "train", "steps", "benchmarks"]
    assert "ok: " in stages[0] and "Python " in stages[0]
    assert f"failed: wheelhouse {tmp_path / 'no-wheelhouse'} is not a directory" in stages[1]
    for line in stages[2:]:
        assert line.endswith(f"unavailable: {NO_GPU}"), line
    assert "tests cupy:0" in stages[3] and "tests torch:cuda:0" in stages[4]
    assert not (tmp_path / "GPU_RUNS.md").exists() and not (tmp_path / "results").exists()
    summary = json.loads((tmp_path / "state" / "summary.json").read_text())
    assert summary["gpu"] is False and summary["no_gpu_reason"] == NO_GPU
    assert [s["status"] for s in summary["stages"]] == ["ok", "failed"] + ["unavailable"] * 6
    assert lines[-1].startswith("done in ")


def test_a_run_that_only_lacks_a_gpu_succeeds(tmp_path, no_gpu):
    """No wheelhouse (the installed backprop is used) and no GPU: nothing failed, so exit status 0."""
    assert gpu_check.main(["--stages", "install,backends", *_options(tmp_path)], log=lambda line: None) == 0
    stages = json.loads((tmp_path / "state" / "summary.json").read_text())["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("install", "skipped"), ("backends", "unavailable")]
    assert stages[0]["summary"] == "no wheelhouse given; using the installed backprop"


def _context(tmp_path, budget=60.0, gpu=True) -> Context:
    return Context(python=sys.executable, wheelhouse=None, state=tmp_path, results=tmp_path / "results",
                   runs_file=tmp_path / "GPU_RUNS.md", deadline=time.monotonic() + budget, gpu=gpu,
                   no_gpu_reason="" if gpu else NO_GPU, stamp="2026-01-01-000000")


def test_a_stage_past_its_limit_is_killed_and_the_next_one_runs(tmp_path):
    def slow(ctx, limit):
        got = ctx.run("slow", ["sh", "-c", "echo started; sleep 60"], limit)
        return Result("slow", "timed out" if got["timed_out"] else "ok", summary=" ".join(got["tail"]))

    def broken(ctx, limit):
        raise RuntimeError("a bug in a stage")

    def quick(ctx, limit):
        got = ctx.run("quick", [sys.executable, "-c", "print('done')"], limit)
        return Result("quick", "ok" if got["rc"] == 0 else "failed", summary=got["tail"][-1])

    results = gpu_check.run_stages(_context(tmp_path), [Stage("slow", 0.5, False, slow),
                                                        Stage("broken", 10, False, broken),
                                                        Stage("quick", 10, False, quick)], log=lambda line: None)
    assert [(r.stage, r.status, r.summary) for r in results] == [
        ("slow", "timed out", "started"), ("broken", "failed", "RuntimeError: a bug in a stage"),
        ("quick", "ok", "done")]
    assert (tmp_path / "logs" / "slow.log").read_text().splitlines()[1] == "started"


def test_stages_left_when_the_budget_is_spent_are_skipped(tmp_path):
    ran = []
    stage = Stage("any", 10, False, lambda ctx, limit: ran.append(limit) or Result("any", "ok"))
    results = gpu_check.run_stages(_context(tmp_path, budget=2.0), [stage], log=lambda line: None)
    assert ran == [] and results[0].status == "skipped" and "budget" in results[0].summary


def test_a_gpu_run_appends_its_figures_to_gpu_runs(tmp_path):
    ctx = _context(tmp_path)
    ctx.steps = [{"backend": "cupy:0", "kind": "eager", "optimizer": "sgd", "batch_size": 128, "status": "ok",
                  "us_per_step": 812.5, "launches_per_step": 63.0},
                 {"backend": "numpy", "kind": "compiled", "optimizer": "-",
                  "status": "n/a: compile: backend numpy has no step compiler"}]
    results = [Result("versions", "ok", 1.0, "GPU NVIDIA H200", {"nvidia-smi": "NVIDIA H200, 570.1, 143771 MiB",
                                                                 "cupy": "14.2.0", "torch": "2.13.0"}),
               Result("tests cupy:0", "failed", 80.0, "2 failed, 900 passed",
                      {"failures": ["FAILED tests/test_conv.py::test_x[cupy:0] - AssertionError"]})]
    (tmp_path / "GPU_RUNS.md").write_text("# GPU runs\n\nan earlier run\n")
    gpu_check.write_report(ctx, results, 123.0, log=lambda line: None)
    text = (tmp_path / "GPU_RUNS.md").read_text()
    assert text.startswith("# GPU runs\n\nan earlier run\n\n## 2026-01-01-000000: NVIDIA H200, 570.1, 143771 MiB")
    assert "| tests cupy:0 | failed | 80.0 | 2 failed, 900 passed |" in text
    assert "- `FAILED tests/test_conv.py::test_x[cupy:0] - AssertionError`" in text
    assert "| cupy:0 | eager | sgd | 812.5 | 63.0 |" in text and "| numpy | compiled | - | n/a: compile:" in text
    record = json.loads((tmp_path / "results" / "gpu-check-2026-01-01-000000.json").read_text())
    assert record["gpu"] is True and record["stages"][1]["status"] == "failed"


def test_step_timings_on_a_cpu_backend(tmp_path):
    """The step stage's measurement, tiny, on NumPy (a GPU backend absent here says why in its row)."""
    path = tmp_path / "steps.json"
    rows = step_timing.measure(["numpy", "no_such_backend"], optimizers=("sgd",), batch_size=4, steps=2,
                               repeats=1, sizes=[3, 4, 2], log=lambda line: None, json_path=path)
    assert [(r["backend"], r["kind"], r["status"][:4]) for r in rows] == [
        ("numpy", "eager", "ok"), ("numpy", "compiled", "n/a:"), ("no_such_backend", "eager", "unav")]
    assert rows[0]["us_per_step"] > 0 and rows[0]["launches_per_step"] == "n/a (not a GPU)"
    # the counting backend's calls for this 3-4-2 MLP's SGD step: forward 2 + 2, cross-entropy 1, backward 3 + 2,
    # the update 1, the step's metrics 1, and on this step (one that samples the gradient norms) the norms 2
    assert rows[0]["counted_calls_per_step"] == 14
    assert rows[1]["status"] == "n/a: compile: backend numpy has no step compiler (NumPy and the reference " \
                                "backends run eagerly); compiled steps run on jax (jit), torch (torch.compile), " \
                                "cupy (cuda-graph)"
    assert rows[2]["status"].startswith("unavailable: unknown backend 'no_such_backend'")
    assert json.loads(path.read_text()) == rows


def test_the_wrappers_run_from_any_directory(tmp_path):
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script in ("gpu_check.sh", "build_wheelhouse.sh"):
        got = subprocess.run([str(root / "benchmarks" / script), "--help"], cwd=tmp_path, capture_output=True,
                             text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
        assert got.returncode == 0 and got.stdout.startswith(f"usage: benchmarks/{script}"), got.stderr


def test_the_wheelhouse_holds_what_the_check_installs():
    from benchmarks import wheelhouse

    wanted = wheelhouse.requirements()
    assert {"numpy>=2", "tqdm>=4.60", "pytest>=8", "array-api-strict>=2.3", "setuptools>=68"} <= set(wanted)
    assert wheelhouse.is_pure("tqdm-4.70.1-py3-none-any.whl")
    assert not wheelhouse.is_pure("numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl")
