"""The benchmark suite runs and reports (tiny sizes: this checks the harness, not speed)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_benchmark_suite_writes_json_and_markdown(tmp_path):
    from benchmarks.__main__ import main

    assert main(["--workloads", "mlp,fit,memory", "--backends", "numpy", "--batch-sizes", "16", "--repeats", "1",
                 "--max-steps", "3", "--memory-samples", "2000", "--output", str(tmp_path), "--name", "smoke"]) == 0
    run = json.loads((tmp_path / "smoke.json").read_text())
    contenders = {r["contender"] for r in run["results"] if r["workload"].startswith("mlp")}
    assert contenders == {"backprop[numpy]", "handwritten[numpy]", "pytorch[cpu]"}
    assert run["matmul_peak_gflops"]["numpy"] > 0
    assert run["memory"][0]["growth_after_first_epoch_bytes"] is not None
    table = (tmp_path / "smoke.md").read_text()
    assert "| 16 | backprop[numpy] |" in table and "x |" in table  # ratios are filled in
