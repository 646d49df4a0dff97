"""Training-step timings of the MLP 784-512-512-10: ``python -m benchmarks.step_timing --backends cupy:0``.

For each backend and optimizer, two kinds of step: ``eager`` (the step function on the backend's fused and
multi-tensor capabilities) and ``compiled`` (``Trainer(compile=True)``: jax.jit, torch.compile, CUDA Graph
capture on CuPy; "n/a" with the reason on a backend without a compiler). Each row: microseconds per step (the
trainer's own loop over a batch sequence, synchronized at the end), GPU kernel launches per step where a
profiler can count them (PyTorch's profiler, CUPTI: every kernel the process launches, CuPy's too; without a
CUDA PyTorch "not measured"), and the array-library calls per step that the counting test backend records
for the same step (``backends/counting_backend.py``: the capability paths, one count per optimizer, what a GPU
would launch). The GPU check (``benchmarks/gpu_check.sh``) runs this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SIZES = [784, 512, 512, 10]
KINDS = ("eager", "compiled")


def eager_step(backend, optimizer: str, batch_size: int, steps: int, repeats: int, sizes=SIZES,
               compile=False) -> dict:
    """Median microseconds per step over ``repeats`` timed passes of ``steps`` steps (after one warm-up); the
    step compiled with ``compile=True``."""
    import numpy as np

    import backprop as bp

    rng = np.random.default_rng(0)
    x = backend.from_host(rng.random((batch_size * steps, sizes[0]), dtype=np.float32))
    y = backend.from_host(rng.integers(0, sizes[-1], batch_size * steps))
    model = bp.mlp(sizes, seed=0, backend=backend)
    trainer = bp.Trainer(model, optimizer=optimizer, lr=1e-3, epochs=10**9, batch_size=batch_size, progress=False,
                         log=None, compile=compile)
    seconds = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        trainer.train_epoch(x, y)
        backend.synchronize()
        if index:  # the first pass warms up (allocations, kernel compilation, capture)
            seconds.append(time.perf_counter() - start)
    on_gpu = backend.library == "cupy" or backend.name.startswith("torch:cuda")
    launches = (count_launches(lambda: (trainer.train_epoch(x, y), backend.synchronize()), steps) if on_gpu
                else "n/a (not a GPU)")
    return {"us_per_step": statistics.median(seconds) / steps * 1e6, "runs_s": seconds,
            "launches_per_step": launches}


def count_launches(run, steps: int):
    """GPU kernel launches per step of ``run`` (``steps`` steps), from PyTorch's profiler; a string saying why
    not when it cannot count them."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return "not measured: PyTorch is not installed"
    if not torch.cuda.is_available():
        return "not measured: no CUDA PyTorch (its profiler counts the launches)"
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    except Exception as exc:  # a profiler that cannot start (CUPTI missing) must not end the timings
        return f"not measured: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    return len(kernels) / steps


class Rows(list):
    """The rows measured so far, also written to ``path`` after each one (a run cut short by a time limit keeps
    what it measured)."""

    def __init__(self, path=None):
        super().__init__()
        self.path = path

    def append(self, row):
        super().append(row)
        if self.path:
            with open(self.path, "w") as f:
                json.dump(list(self), f, indent=1)


def counted_calls(optimizer: str, batch_size: int, sizes=SIZES, steps: int = 3):
    """Array-library calls per step on the counting test backend (the most over ``steps`` steps after the
    first), or a string saying why not."""
    import numpy as np

    import backprop as bp
    from backends import counting_backend
    from backprop.training.step import TrainingStep

    counting_backend.register()
    backend = bp.get_backend("counting")
    counter = backend.counter
    model = bp.mlp(sizes, seed=0, backend=backend)
    trainer = bp.Trainer(model, optimizer=optimizer, lr=1e-3, epochs=10**9, batch_size=batch_size, progress=False,
                         log=None)
    rng = np.random.default_rng(0)
    x = backend.from_host(rng.random((batch_size * (steps + 1), sizes[0]), dtype=np.float32))
    y = backend.from_host(rng.integers(0, sizes[-1], batch_size * (steps + 1)))
    calls, run = [], TrainingStep.run

    def counted(self, *args, **kwargs):
        before = counter.calls
        try:
            return run(self, *args, **kwargs)
        finally:
            calls.append(counter.calls - before)

    TrainingStep.run = counted
    try:
        trainer.train_epoch(x, y)
    finally:
        TrainingStep.run = run
    return max(calls[1:])


def measure(specs, *, optimizers=("sgd", "adam"), batch_size=128, steps=50, repeats=3, sizes=SIZES,
            log=print, json_path=None) -> list[dict]:
    """One row per backend, optimizer and kind of step; a backend that cannot load gives one row saying why."""
    import backprop as bp
    from backends import BackendError

    rows = Rows(json_path)
    counted = {}
    for optimizer in optimizers:
        try:
            counted[optimizer] = counted_calls(optimizer, batch_size, sizes)
        except Exception as exc:
            counted[optimizer] = f"not counted: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    for spec in specs:
        try:
            backend = bp.get_backend(spec)
        except BackendError as exc:
            reason = getattr(exc, "reason", str(exc)).split(". Available backends")[0]
            rows.append({"backend": spec, "kind": "eager", "optimizer": "-", "status": f"unavailable: {reason}"})
            log(f"{spec}: unavailable: {reason}")
            continue
        for kind in KINDS:
            for optimizer in optimizers:
                row = {"backend": backend.name, "kind": kind, "optimizer": optimizer, "batch_size": batch_size}
                try:
                    row.update(status="ok", **eager_step(backend, optimizer, batch_size, steps, repeats, sizes,
                                                         compile=kind == "compiled"),
                               counted_calls_per_step=counted[optimizer])
                except bp.ConfigError as exc:  # no compiler on this backend
                    row = {**row, "optimizer": "-", "status": f"n/a: {exc}"}
                except Exception as exc:
                    row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                rows.append(row)
                log(format_row(row))
                if row["status"].startswith("n/a"):
                    break
    return list(rows)


def format_row(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['backend']} {row['kind']} {row['optimizer']}: {row['status']}"
    launches = row["launches_per_step"]
    launches = f"{launches:.1f} launches/step" if isinstance(launches, float) else f"launches {launches}"
    counted = row.get("counted_calls_per_step")
    counted = f", {counted} calls/step counted" if isinstance(counted, int) else ""
    return (f"{row['backend']} {row['kind']} {row['optimizer']} batch {row['batch_size']}: "
            f"{row['us_per_step']:.1f} us/step, {launches}{counted}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_timing", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="cupy:0,torch:cuda:0")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = parser.parse_args(argv)
    rows = measure([s.strip() for s in args.backends.split(",") if s.strip()], batch_size=args.batch_size,
                   steps=args.steps, repeats=args.repeats, json_path=args.json)
    return 0 if all(r["status"] == "ok" or r["status"].startswith("n/a") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
