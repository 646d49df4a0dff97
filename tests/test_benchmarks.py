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


def test_ratios_pair_the_rounds():
    """A load spike in one round moves both contenders of that round; the ratio pairs rounds, not medians."""
    from benchmarks.report import ratios

    rows = [{"workload": "w", "batch_size": 1, "contender": "backprop[numpy]", "seconds_per_epoch": 3.0,
             "runs": [2.0, 10.0, 3.0]},
            {"workload": "w", "batch_size": 1, "contender": "pytorch[cpu]", "seconds_per_epoch": 3.0,
             "runs": [1.0, 8.0, 3.0]},
            {"workload": "w", "batch_size": 1, "contender": "handwritten[numpy]", "seconds_per_epoch": 1.5}]
    (mine,) = ratios(rows)
    assert mine["vs_pytorch"] == pytest.approx(1.25)  # per round 2, 1.25, 1; the medians' ratio would be 1
    assert mine["vs_handwritten"] == pytest.approx(2.0)  # no rounds to pair: the per-epoch figures
