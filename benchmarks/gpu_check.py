"""The project's GPU check: ``benchmarks/gpu_check.sh [WHEELHOUSE]`` (or ``python -m benchmarks.gpu_check``).

For a machine with one NVIDIA GPU and no network. In order, each stage under its own time limit, the run
going on past a failed stage, all of it under 8 minutes (``--budget``, 470 s):

1. ``versions``: the driver, the GPU, CuPy and PyTorch with their CUDA versions;
2. ``install``: the project from this checkout, its pure-Python dependencies from the wheelhouse (``pip install
   --no-index --find-links WHEELHOUSE``; build one here with ``benchmarks/build_wheelhouse.sh``). CuPy, PyTorch,
   NumPy and SciPy are expected on the machine already;
3. ``backends``: ``backprop backends --require`` for ``cupy:0`` and ``torch:cuda:0``;
4. ``tests``: the test suite on ``cupy:0``, then on ``torch:cuda:0`` (``--specs`` names others);
5. ``train``: ``backprop train`` on each;
6. ``steps``: microseconds and kernel launches per training step (``benchmarks/step_timing.py``): the eager
   step (the fused capabilities) and the compiled one (CUDA Graph capture on CuPy, torch.compile on PyTorch);
7. ``benchmarks``: the MLP benchmarks at batch 128 and 1024 (``python -m benchmarks``).

Then it appends a dated section with every figure to ``tests/GPU_RUNS.md`` and writes
``benchmarks/results/gpu-check-<date>.json`` and ``.md`` (the benchmark stage writes its own table there too).
Without a GPU it runs to the end as well: every stage that needs the GPU reports ``unavailable: <why>`` in one
line, and nothing is written to ``tests/GPU_RUNS.md``. Logs of each stage: ``.gpu-check/logs/``.

Only the standard library is used here: the check runs before the project is installed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 470  # under 8 minutes, with room for the report and the interpreter's start
SPECS = ("cupy:0", "torch:cuda:0")
# What the install stage asks pip for besides the project: the test runner and the array API reference
# library (the tests' other extras, such as mpi4py or matplotlib, are skipped by the tests when absent).
TEST_REQUIREMENTS = ("pytest>=8", "array-api-strict>=2.3")


@dataclass
class Result:
    stage: str
    status: str  # ok, failed, timed out, unavailable, skipped
    seconds: float = 0.0
    summary: str = ""
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        text = self.status if not self.summary else f"{self.status}: {self.summary}"
        return f"{self.stage:<12} {self.seconds:6.1f} s  {text}"


@dataclass
class Context:
    python: str
    wheelhouse: Path | None
    state: Path  # .gpu-check/: logs, runs, the venv
    results: Path
    runs_file: Path
    deadline: float
    gpu: bool
    no_gpu_reason: str
    stamp: str
    specs: tuple[str, ...] = SPECS
    usable: dict = field(default_factory=dict)  # spec -> "" when it works, else why not
    steps: list = field(default_factory=list)
    benchmark_md: str = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], limit: float, env: dict | None = None) -> dict:
        """Run ``command`` in its own process group, output to ``logs/<name>.log``; killed (the whole group) after
        ``limit`` seconds. ``{"rc", "seconds", "timed_out", "tail"}``."""
        log = self.state / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        with open(log, "w") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            try:
                process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True,
                                           env={**os.environ, **(env or {})})
            except OSError as exc:
                out.write(f"cannot start: {exc}\n")
                return {"rc": 127, "seconds": 0.0, "timed_out": False, "tail": [f"cannot start: {exc}"]}
            try:
                rc = process.wait(timeout=max(limit, 0.1))
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                rc, timed_out = process.wait(), True
        lines = log.read_text(errors="replace").splitlines()[1:]
        return {"rc": rc, "seconds": time.monotonic() - start, "timed_out": timed_out, "tail": lines[-40:]}


@dataclass(frozen=True)
class Stage:
    name: str
    limit_s: float
    needs_gpu: bool
    body: Callable[[Context, float], Result]


# -- detection ----------------------------------------------------------------------------------------------------

def detect_gpu() -> tuple[bool, str]:
    """(an NVIDIA GPU is usable here, why not): the driver library loads and nvidia-smi lists a GPU."""
    loads = False
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            loads = True
            break
        except OSError:
            continue
    smi = shutil.which("nvidia-smi")
    if not loads:
        return False, "no NVIDIA driver: libcuda cannot be loaded" + ("" if smi else ", nvidia-smi not found")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"nvidia-smi -L failed: {exc}"
        if "GPU" not in listed:
            return False, "nvidia-smi lists no GPU"
    return True, ""


# -- the stages ---------------------------------------------------------------------------------------------------

VERSIONS_SCRIPT = r"""
import importlib, json, sys
from importlib import metadata
found = {"python": sys.version.split()[0]}
def version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None
found["cupy"] = version("cupy-cuda12x", "cupy-cuda13x", "cupy")
found["torch"] = version("torch")
found["numpy"] = version("numpy")
if sys.argv[1] == "gpu":
    try:
        import cupy
        found["cupy_cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        found["cupy_cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception as exc:
        found["cupy_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        import torch
        found["torch_cuda"] = torch.version.cuda
        found["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            found["torch_gpu"] = torch.cuda.get_device_name(0)
    except Exception as exc:
        found["torch_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
print("VERSIONS " + json.dumps(found))
"""


def stage_versions(ctx: Context, limit: float) -> Result:
    details = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        got = ctx.run("versions-nvidia-smi", [smi, "--query-gpu=name,driver_version,memory.total",
                                              "--format=csv,noheader"], min(limit, 20))
        details["nvidia-smi"] = "; ".join(got["tail"]) if got["rc"] == 0 else f"failed (exit {got['rc']})"
        banner = ctx.run("versions-nvidia-smi-cuda", [smi], min(limit, 20))
        cuda = re.search(r"CUDA Version:\s*([\d.]+)", "\n".join(banner["tail"]))
        details["driver_cuda"] = cuda.group(1) if cuda else "unknown"
    else:
        details["nvidia-smi"] = "not found"
    got = ctx.run("versions-python", [ctx.python, "-c", VERSIONS_SCRIPT, "gpu" if ctx.gpu else "cpu"],
                  max(limit - 5, 5))
    for line in got["tail"]:
        if line.startswith("VERSIONS "):
            details.update(json.loads(line[len("VERSIONS "):]))
    parts = [f"GPU {details['nvidia-smi']}" if smi else "nvidia-smi not found",
             f"driver's CUDA {details.get('driver_cuda', '-')}",
             f"CuPy {details.get('cupy') or 'not installed'}"
             + (f" (CUDA {_cuda(details['cupy_cuda_runtime'])})" if "cupy_cuda_runtime" in details else ""),
             f"PyTorch {details.get('torch') or 'not installed'}"
             + (f" (CUDA {details['torch_cuda']})" if details.get("torch_cuda") else ""),
             f"Python {details.get('python', '?')}"]
    status = "ok" if got["rc"] == 0 else "failed"
    return Result("versions", status, summary="; ".join(parts), details=details)


def _cuda(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def stage_install(ctx: Context, limit: float) -> Result:
    if ctx.wheelhouse is None:
        got = ctx.run("install-import", [ctx.python, "-c", "import backprop, pytest"], limit)
        if got["rc"]:
            return Result("install", "failed", summary="no wheelhouse given (an argument or $BACKPROP_WHEELHOUSE),"
                          " and backprop or pytest is not importable: " + (got["tail"][-1] if got["tail"] else ""))
        return Result("install", "skipped", summary="no wheelhouse given; using the installed backprop")
    if not ctx.wheelhouse.is_dir():
        return Result("install", "failed", summary=f"wheelhouse {ctx.wheelhouse} is not a directory")
    python = ctx.python
    if sys.prefix == sys.base_prefix and ctx.python == sys.executable:  # not in a venv: make one that sees the
        venv = ctx.state / "venv"                                      # machine's CuPy and PyTorch
        made = ctx.run("install-venv", [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       min(limit, 60))
        if made["rc"]:
            return Result("install", "failed", summary="python -m venv failed: " + " ".join(made["tail"][-1:]))
        python = str(venv / "bin" / "python")
    got = ctx.run("install", [python, "-m", "pip", "install", "--no-index", "--find-links", str(ctx.wheelhouse),
                              "-e", ".", *TEST_REQUIREMENTS], limit - 1, env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    if got["timed_out"]:
        return Result("install", "timed out", summary=f"pip ran past {limit:.0f} s")
    if got["rc"]:
        errors = [line for line in got["tail"] if "ERROR" in line or "error" in line] or got["tail"][-1:]
        return Result("install", "failed", summary=" ".join(errors[-2:]))
    ctx.python = python
    return Result("install", "ok", summary=f"into {python}")


def stage_backends(ctx: Context, limit: float) -> Result:
    table = ctx.run("backends", [ctx.python, "-m", "backprop", "backends"], limit / 3)
    lines = []
    for spec in ctx.specs:
        got = ctx.run(f"backends-{spec}", [ctx.python, "-m", "backprop", "backends", "--require", spec], limit / 3)
        text = got["tail"][-1] if got["tail"] else f"exit {got['rc']}"
        ctx.usable[spec] = "" if got["rc"] == 0 else text.removeprefix("error: ")
        lines.append(text if got["rc"] == 0 else f"{spec}: {text.removeprefix('error: ')}")
    status = "ok" if all(not why for why in ctx.usable.values()) else "failed"
    return Result("backends", status, summary="; ".join(lines), details={"table": table["tail"]})


def _unusable(ctx: Context, spec: str) -> str | None:
    why = ctx.usable.get(spec)
    if why is None:
        return f"{spec}: not probed (the backends stage did not run)"
    return f"{spec}: {why}" if why else None


def stage_tests(spec: str) -> Callable[[Context, float], Result]:
    name = f"tests {spec}"

    def body(ctx: Context, limit: float) -> Result:
        why = _unusable(ctx, spec)
        if why:
            return Result(name, "unavailable", summary=why)
        got = ctx.run(name, [ctx.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "--backend", spec,
                             "tests"], limit)
        counts = next((line for line in reversed(got["tail"]) if re.search(r"\d+ (passed|failed|error)", line)), "")
        failures = [line for line in got["tail"] if line.startswith(("FAILED", "ERROR"))]
        if got["timed_out"]:
            return Result(name, "timed out", summary=f"after {limit:.0f} s; {counts.strip('= ')}",
                          details={"failures": failures})
        status = "ok" if got["rc"] == 0 else "failed"
        return Result(name, status, summary=counts.strip("= ") or f"exit {got['rc']}",
                      details={"failures": failures})

    return body


def stage_train(ctx: Context, limit: float) -> Result:
    specs = [spec for spec in ctx.specs if not _unusable(ctx, spec)]
    if not specs:
        return Result("train", "unavailable", summary="; ".join(_unusable(ctx, s) for s in ctx.specs))
    lines, failed = [], False
    for spec in specs:
        output = ctx.state / "runs" / spec.replace(":", "-")
        got = ctx.run(f"train-{spec}", [ctx.python, "-m", "backprop", "--backend", spec, "train", "--epochs", "3",
                                        "--output", str(output), "--overwrite", "--no-progress", "--no-plots"],
                      limit / len(specs))
        final = next((line for line in reversed(got["tail"]) if "accuracy" in line), "")
        final = final.split("; saved")[0] or (got["tail"][-1] if got["tail"] else "")
        failed |= got["rc"] != 0
        lines.append(f"{spec}: {'timed out' if got['timed_out'] else 'ok' if got['rc'] == 0 else 'failed'}"
                     f" ({got['seconds']:.1f} s) {final.strip()}")
    lines += [f"{s}: unavailable" for s in ctx.specs if s not in specs]
    return Result("train", "failed" if failed or len(specs) < len(ctx.specs) else "ok", summary="; ".join(lines))


def stage_steps(ctx: Context, limit: float) -> Result:
    specs = [spec for spec in ctx.specs if not _unusable(ctx, spec)]
    if not specs:
        return Result("steps", "unavailable", summary="; ".join(_unusable(ctx, s) for s in ctx.specs))
    output = ctx.state / "steps.json"
    got = ctx.run("steps", [ctx.python, "-m", "benchmarks.step_timing", "--backends", ",".join(specs),
                            "--batch-size", "128", "--steps", "50", "--repeats", "3", "--json", str(output)], limit)
    if output.exists():
        ctx.steps = json.loads(output.read_text())
    ok = [r for r in ctx.steps if r["status"] == "ok"]
    summary = "; ".join(f"{r['backend']} {r['optimizer']} {r['us_per_step']:.0f} us" for r in ok)
    status = "timed out" if got["timed_out"] else "ok" if got["rc"] == 0 and len(specs) == len(ctx.specs) else "failed"
    return Result("steps", status, summary=summary or (got["tail"][-1] if got["tail"] else ""))


def stage_benchmarks(ctx: Context, limit: float) -> Result:
    specs = [spec for spec in ctx.specs if not _unusable(ctx, spec)]
    if not specs:
        return Result("benchmarks", "unavailable", summary="; ".join(_unusable(ctx, s) for s in ctx.specs))
    name = f"gpu-mlp-{ctx.stamp}"
    got = ctx.run("benchmarks", [ctx.python, "-m", "benchmarks", "--workloads", "mlp", "--batch-sizes", "128,1024",
                                 "--backends", ",".join(specs), "--repeats", "3", "--max-steps", "100",
                                 "--output", str(ctx.results), "--name", name], limit)
    table = ctx.results / f"{name}.md"
    if table.exists():
        ctx.benchmark_md = table.read_text()
    if got["timed_out"]:
        return Result("benchmarks", "timed out", summary=f"after {limit:.0f} s")
    return Result("benchmarks", "ok" if got["rc"] == 0 else "failed",
                  summary=f"{table.relative_to(ROOT) if table.is_relative_to(ROOT) else table}" if table.exists()
                  else (got["tail"][-1] if got["tail"] else f"exit {got['rc']}"))


def stages(specs=SPECS) -> list[Stage]:
    """The check's stages in order: name, time limit (seconds), whether it needs the GPU, what it does."""
    return [Stage("versions", 30, False, stage_versions),
            Stage("install", 90, False, stage_install),
            Stage("backends", 45, True, stage_backends),
            *[Stage(f"tests {spec}", 200 / len(specs), True, stage_tests(spec)) for spec in specs],
            Stage("train", 45, True, stage_train),
            Stage("steps", 40, True, stage_steps),
            Stage("benchmarks", 90, True, stage_benchmarks)]


STAGE_NAMES = ("versions", "install", "backends", "tests", "train", "steps", "benchmarks")


def run_stages(ctx: Context, stages: list[Stage], log=print) -> list[Result]:
    """Every stage in order, each under min(its limit, what is left of the budget); one line each as it ends."""
    results = []
    for index, stage in enumerate(stages, 1):
        start = time.monotonic()
        left = ctx.remaining()
        if stage.needs_gpu and not ctx.gpu:
            result = Result(stage.name, "unavailable", summary=ctx.no_gpu_reason)
        elif left < 5:
            result = Result(stage.name, "skipped", summary=f"out of the {BUDGET_S} s budget")
        else:
            try:
                result = stage.body(ctx, min(stage.limit_s, left))
            except Exception as exc:  # a bug in one stage must not end the check
                result = Result(stage.name, "failed", summary=f"{type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - start
        results.append(result)
        log(f"[{index}/{len(stages)}] {result.line()}")
    return results


# -- the report ---------------------------------------------------------------------------------------------------

def markdown(ctx: Context, results: list[Result], total: float) -> str:
    versions = next((r.details for r in results if r.stage == "versions"), {})
    gpu = versions.get("nvidia-smi", "no GPU")
    lines = [f"## {ctx.stamp}: {gpu}", "",
             f"`benchmarks/gpu_check.sh`, {total:.0f} s in all. CuPy {versions.get('cupy') or '-'}, PyTorch "
             f"{versions.get('torch') or '-'} (CUDA {versions.get('torch_cuda') or '-'}), driver's CUDA "
             f"{versions.get('driver_cuda', '-')}, Python {versions.get('python', '-')}.", "",
             "| stage | result | seconds | details |", "| --- | --- | ---: | --- |"]
    for r in results:
        lines.append(f"| {r.stage} | {r.status} | {r.seconds:.1f} | {r.summary.replace('|', '/')} |")
    failures = [f for r in results for f in r.details.get("failures", [])]
    if failures:
        lines += ["", "Failed tests:", ""] + [f"- `{f}`" for f in failures[:40]]
    if ctx.steps:
        lines += ["", "Training step, MLP 784-512-512-10, batch 128:", "",
                  "| backend | step | optimizer | µs per step | kernel launches per step |",
                  "| --- | --- | --- | ---: | ---: |"]
        for row in ctx.steps:
            if row["status"] == "ok":
                launches = row["launches_per_step"]
                launches = f"{launches:.1f}" if isinstance(launches, (int, float)) else launches
                lines.append(f"| {row['backend']} | {row['kind']} | {row['optimizer']} | {row['us_per_step']:.1f} "
                             f"| {launches} |")
            else:
                lines.append(f"| {row['backend']} | {row['kind']} | {row['optimizer']} | {row['status']} | |")
    if ctx.benchmark_md:
        body = ctx.benchmark_md.split("\n", 1)[1] if ctx.benchmark_md.startswith("# ") else ctx.benchmark_md
        lines += ["", "MLP benchmarks:", "", body.strip().replace("\n## ", "\n#### ")]
    return "\n".join(lines) + "\n"


RUNS_HEADER = """# GPU runs

What `benchmarks/gpu_check.sh` found on each GPU machine it ran on, newest last (it appends a section per run
with a GPU; runs without one write nothing here).
"""


def write_report(ctx: Context, results: list[Result], total: float, log=print) -> None:
    text = markdown(ctx, results, total)
    record = {"stamp": ctx.stamp, "gpu": ctx.gpu, "no_gpu_reason": ctx.no_gpu_reason, "seconds": total,
              "stages": [asdict(r) for r in results], "steps": ctx.steps}
    if not ctx.gpu:
        ctx.state.mkdir(parents=True, exist_ok=True)
        (ctx.state / "summary.json").write_text(json.dumps(record, indent=1))
        log(f"{ctx.runs_file}: not written ({ctx.no_gpu_reason}); summary in {ctx.state / 'summary.json'}")
        return
    ctx.results.mkdir(parents=True, exist_ok=True)
    (ctx.results / f"gpu-check-{ctx.stamp}.json").write_text(json.dumps(record, indent=1))
    (ctx.results / f"gpu-check-{ctx.stamp}.md").write_text(text)
    previous = ctx.runs_file.read_text() if ctx.runs_file.exists() else RUNS_HEADER
    ctx.runs_file.parent.mkdir(parents=True, exist_ok=True)
    ctx.runs_file.write_text(previous.rstrip("\n") + "\n\n" + text)
    log(f"appended to {ctx.runs_file}; wrote {ctx.results / f'gpu-check-{ctx.stamp}'}.json and .md")


def main(argv=None, log=print) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument("wheelhouse", nargs="?", default=os.environ.get("BACKPROP_WHEELHOUSE") or None,
                        help="directory of the pure-Python dependencies' wheels (default: $BACKPROP_WHEELHOUSE; "
                             "none: use the backprop installed already)")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter to install into and test with (default: this one; outside a venv, "
                             "the install stage makes .gpu-check/venv, which sees this Python's packages)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES), help="which stages, in order (default: all)")
    parser.add_argument("--specs", default=",".join(SPECS), help="the GPU backends to check")
    parser.add_argument("--force-gpu-stages", action="store_true",
                        help="run the GPU stages where no GPU is found (to try the check: --specs numpy,torch:cpu)")
    parser.add_argument("--state-dir", default=str(ROOT / ".gpu-check"), help="logs, runs and the venv")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--runs-file", default=str(ROOT / "tests" / "GPU_RUNS.md"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(STAGE_NAMES))
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGE_NAMES)}")
    specs = tuple(s.strip() for s in args.specs.split(",") if s.strip())
    start = time.monotonic()
    gpu, why = detect_gpu()
    if args.force_gpu_stages:
        gpu, why = True, ""
    ctx = Context(python=args.python, wheelhouse=Path(args.wheelhouse).resolve() if args.wheelhouse else None,
                  state=Path(args.state_dir), results=Path(args.results), runs_file=Path(args.runs_file),
                  deadline=start + args.budget, gpu=gpu, no_gpu_reason=why, stamp=time.strftime("%Y-%m-%d-%H%M%S"),
                  specs=specs)
    log(f"GPU check, {args.budget:.0f} s budget: " + ("an NVIDIA GPU is visible" if gpu else f"no GPU ({why})"))
    results = run_stages(ctx, [s for s in stages(specs) if s.name.split()[0] in chosen], log)
    total = time.monotonic() - start
    write_report(ctx, results, total, log)
    log(f"done in {total:.0f} s: " + ", ".join(f"{r.stage} {r.status}" for r in results))
    broken = [r for r in results if r.status in ("failed", "timed out") or gpu and r.status == "unavailable"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
