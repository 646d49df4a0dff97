"""The benchmark suite runs and reports (tiny sizes: this checks the harness, not speed)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_benchmark_suite_writes_json_and_markdown(tmp_path, monkeypatch):
    """Run from another directory than the repository root: the memory workload's child process must still
    find the benchmarks package."""
    from benchmarks.__main__ import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert main(["--workloads", "mlp,fit,memory", "--backends", "numpy", "--batch-sizes", "16", "--repeats", "1",
                 "--max-steps", "3", "--fit-epochs", "1", "--matmul-size", "64", "--threads", "1",
                 "--memory-samples", "256", "--output", "out", "--name", "smoke"]) == 0
    run = json.loads((tmp_path / "out" / "smoke.json").read_text())
    contenders = {r["contender"] for r in run["results"] if r["workload"].startswith("mlp")}
    assert contenders == {"backprop[numpy]", "handwritten[numpy]", "pytorch[cpu]"}
    assert {r["contender"] for r in run["results"] if r["workload"].startswith("fit")} == {
        "backprop[numpy]", "pytorch[cpu]"}
    assert run["matmul_peak_gflops"]["numpy"] > 0 and run["matmul_size"] == 64
    (memory,) = run["memory"]
    assert memory["samples"] == 256 and memory["peak_bytes"] > 0 and len(memory["after_epoch_bytes"]) == 3
    assert memory["growth_after_first_epoch_bytes"] is not None
    table = (tmp_path / "out" / "smoke.md").read_text()
    assert "| 16 | backprop[numpy] |" in table and "x |" in table  # ratios are filled in
    assert "(float32, 64x64)" in table


def test_benchmark_suite_gives_back_the_thread_settings(tmp_path):
    """``--threads N`` holds for the run only: the tests that follow keep PyTorch's and the BLAS's threads."""
    import torch
    from threadpoolctl import threadpool_info

    from benchmarks.__main__ import main

    def settings():
        return torch.get_num_threads(), [pool["num_threads"] for pool in threadpool_info()]

    before = settings()
    other = 2 if before[0] == 1 else 1  # a count that differs from the current one
    assert main(["--workloads", "memory", "--backends", "numpy", "--matmul-size", "16", "--threads", str(other),
                 "--memory-samples", "64", "--output", str(tmp_path), "--name", "threads"]) == 0
    assert json.loads((tmp_path / "threads.json").read_text())["machine"]["torch_threads"] == other
    assert settings() == before


def test_lstm_benchmark_runs_on_its_own(tmp_path):
    """``python -m benchmarks.lstm``: ours on NumPy and PyTorch's nn.LSTM in one run, ratio in the table (one
    batch of sequences here)."""
    from benchmarks.lstm import BATCH, main

    assert main(["--backends", "numpy", "--sequences", str(BATCH), "--repeats", "1", "--threads", "1",
                 "--output", str(tmp_path), "--name", "lstm"]) == 0
    run = json.loads((tmp_path / "lstm.json").read_text())
    assert {r["contender"] for r in run["results"]} == {"backprop[numpy]", "pytorch[cpu]"}
    assert all(r["samples_timed"] == BATCH and r["gflops"] > 0 for r in run["results"])
    assert "| 64 | backprop[numpy] |" in (tmp_path / "lstm.md").read_text()
