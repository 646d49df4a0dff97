"""Write a run's figures as JSON (everything) and Markdown (the table with ratios)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def paired_ratio(mine: dict, other: dict | None) -> float | None:
    """Ours / theirs: the median over rounds of the ratio within a round. Contenders of one round run back
    to back, so a load change on a shared machine moves both sides of each ratio; a ratio of the two
    medians would mix rounds. (Ratio of the per-epoch figures when the rounds do not pair up.)"""
    if other is None:
        return None
    a, b = mine.get("runs") or [], other.get("runs") or []
    if a and len(a) == len(b):
        return statistics.median(x / y for x, y in zip(a, b))
    return mine["seconds_per_epoch"] / other["seconds_per_epoch"]


def ratios(results: list[dict]) -> list[dict]:
    """For each of our rows: ours / hand-written and ours / PyTorch on the same device and batch size."""
    rows = []
    by_key = {(r["workload"], r["batch_size"], r["contender"]): r for r in results}
    for r in results:
        name = r["contender"]
        if not name.startswith("backprop["):
            continue
        spec = name[len("backprop["):-1]
        device = "cuda" if spec.startswith(("cupy", "torch:cuda")) else "cpu"
        hand = by_key.get((r["workload"], r["batch_size"], f"handwritten[{spec}]")) or \
            by_key.get((r["workload"], r["batch_size"], "handwritten[numpy]" if device == "cpu" else ""))
        peer = by_key.get((r["workload"], r["batch_size"], f"pytorch[{device}]"))
        rows.append({**r, "vs_handwritten": paired_ratio(r, hand), "vs_pytorch": paired_ratio(r, peer)})
    return rows


def markdown(run: dict) -> str:
    machine = run["machine"]
    lines = [f"# Benchmark run {run['started']}", "",
             f"CPU: {machine['cpu']} ({machine['cores']} cores), BLAS {machine['blas']}, NumPy {machine['numpy']}"
             + (f", PyTorch {machine['torch']} ({machine['torch_threads']} threads)" if "torch" in machine else "")
             + (f", GPU: {machine['gpu']}" if "gpu" in machine else ""), ""]
    peaks = run.get("matmul_peak_gflops", {})
    if peaks:
        size = run.get("matmul_size", 2048)
        lines += [f"Matrix-multiply peak (float32, {size}x{size}): " +
                  ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()), ""]
    lines += ["Ratios: the median over the timed rounds of ours / theirs within one round (contenders run "
              "interleaved, A B C A B C ...).", ""]
    workloads = sorted({r["workload"] for r in run["results"]})
    ours = ratios(run["results"])
    for workload in workloads:
        lines += [f"## {workload}", "",
                  "| batch | contender | s/epoch | µs/step | calls/step | ours / hand-written | ours / PyTorch | "
                  "GFLOP/s | % of peak |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        ours_by = {(r["batch_size"], r["contender"]): r for r in ours if r["workload"] == workload}
        for r in [r for r in run["results"] if r["workload"] == workload]:
            mine = ours_by.get((r["batch_size"], r["contender"]), {})
            spec = r["contender"].split("[")[1].rstrip("]")
            peak = peaks.get(spec) or peaks.get("numpy" if "cuda" not in spec and "cupy" not in spec else spec)
            gflops = r.get("gflops")
            step = r.get("us_per_step")
            step = f"{step:.0f}" if step else "-"
            calls = r.get("calls_per_step", "-")
            lines.append(
                f"| {r['batch_size']} | {r['contender']} | {r['seconds_per_epoch']:.3f}"
                f"{'*' if r.get('extrapolated') else ''} | {step} | {calls} | {_ratio(mine.get('vs_handwritten'))} | "
                f"{_ratio(mine.get('vs_pytorch'))} | {gflops:.1f} | "
                f"{100 * gflops / peak:.0f}% |" if gflops and peak else
                f"| {r['batch_size']} | {r['contender']} | {r['seconds_per_epoch']:.3f} | {step} | {calls} | "
                f"{_ratio(mine.get('vs_handwritten'))} | {_ratio(mine.get('vs_pytorch'))} | | |")
        lines.append("")
    if any(r.get("extrapolated") for r in run["results"]):
        lines += ["\\* timed on part of the epoch and scaled to 60,000 examples.", ""]
    if any("calls_per_step" in r for r in run["results"]):
        lines += ["calls/step: the array-library calls of one training step on the counting test backend "
                  "(`backends/counting_backend.py`: the kernels a GPU would launch for it, the same for every "
                  "backend of this library; the most over a few steps, which include the gradient-norm samples).",
                  ""]
    for m in run.get("memory", []):
        minimum = m["analytic_minimum"]
        lines += [f"Memory ({m['backend']}, batch {m['batch_size']}, {m['samples']} examples): peak "
                  f"{m['peak_bytes'] / 2**20:.0f} MiB above the interpreter's baseline vs an analytic minimum of "
                  f"{minimum['total'] / 2**20:.0f} MiB (data {minimum['data'] / 2**20:.0f} MiB); "
                  f"x{m['peak_over_minimum']:.2f}; growth from epoch 1 to {m['epochs']}: "
                  f"{m['growth_after_first_epoch_bytes'] / 2**20:+.1f} MiB. The peak comes from the moment the data "
                  f"is copied to the device while the host copy still exists (two copies of the data); after "
                  f"that the run holds {m['after_epoch_bytes'][-1] / 2**20:.0f} MiB.", ""]
    return "\n".join(lines)


def _ratio(value) -> str:
    return f"{value:.2f}x" if value else "-"


def save(result: dict, text: str, directory, name: str) -> tuple[Path, Path]:
    """Write ``name.json`` (every figure) and ``name.md`` (the table) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / f"{name}.json", directory / f"{name}.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(text)
    return json_path, md_path


def publish(result: dict, text: str, directory, name: str, command: str) -> int:
    """Record the command line, write ``name.json``/``name.md``, print the table; the exit status of a script."""
    result["command"] = command
    json_path, md_path = save(result, text, directory, name)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


def write(run: dict, directory: Path, name: str | None = None) -> tuple[Path, Path]:
    return save(run, markdown(run), directory, name or time.strftime("run-%Y%m%d-%H%M%S"))
