"""Peak memory of a training run against its analytic minimum, and whether it grows epoch to epoch.

Runs in a fresh subprocess per measurement so the peak belongs to that run alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the directory that holds the benchmarks package

CHILD = r"""
import json, resource, sys
import numpy as np
import backprop as bp
from benchmarks.mlp import SIZES, synthetic_mnist

spec, batch_size, epochs, samples = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

backend = bp.get_backend(spec)
baseline = rss()
x_host, y_host = synthetic_mnist(samples)
x, y = backend.from_host(x_host), backend.from_host(y_host)
del x_host, y_host
model = bp.mlp(SIZES, seed=0, backend=backend)
trainer = bp.Trainer(model, optimizer="sgd", lr=0.01, epochs=10**9, batch_size=batch_size, progress=False, log=None)
after_epoch = []
for _ in range(epochs):
    trainer.train_epoch(x, y)
    backend.synchronize()
    after_epoch.append(rss() - baseline)
def high_water_mark():  # VmHWM belongs to this process image (ru_maxrss can carry the parent's peak)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

peak = high_water_mark() - baseline
print(json.dumps({"peak_bytes": peak, "after_epoch_bytes": after_epoch, "device": backend.memory_stats()}))
"""


def analytic_minimum(samples, batch_size, sizes) -> dict:
    data = samples * sizes[0] * 4 + samples * 8  # float32 features, int64 labels, held once
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:])) * 4
    grads = params
    activations = batch_size * (sum(sizes) + sum(sizes[1:])) * 4  # inputs of each layer and pre-activations
    return {"data": data, "parameters": params, "gradients": grads, "optimizer_state": 0,
            "activations": activations, "total": data + params + grads + activations}


def measure(spec="numpy", batch_size=128, epochs=3, samples=60_000) -> dict:
    from .mlp import SIZES

    # The child imports this package: give it the directory that holds it, from whatever directory we run in.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", CHILD, spec, str(batch_size), str(epochs), str(samples)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the memory measurement failed (status {out.returncode}):\n{out.stderr}")
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    minimum = analytic_minimum(samples, batch_size, SIZES)
    growth = measured["after_epoch_bytes"][-1] - measured["after_epoch_bytes"][0]
    return {"backend": spec, "batch_size": batch_size, "samples": samples, "epochs": epochs, **measured,
            "analytic_minimum": minimum, "peak_over_minimum": measured["peak_bytes"] / minimum["total"],
            "growth_after_first_epoch_bytes": growth}
