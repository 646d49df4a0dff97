"""The MLP workload: 784-512-512-10, ReLU, softmax cross-entropy, plain SGD, on MNIST-shaped data.

Contenders, timed interleaved in one process: this library on each available backend (eager, and compiled
where the backend has a compiler), the hand-written NumPy (and CuPy) loop, and PyTorch eager on the same
device. Each timing covers ``samples`` examples; when that is less than the full 60,000 (small batches take
long), the per-epoch figure is scaled up and marked as extrapolated.
"""

from __future__ import annotations

import numpy as np

import backprop as bp

from . import handwritten, torch_peer
from .timing import interleaved

SIZES = [784, 512, 512, 10]
COMPILED = ("jax", "torch", "cupy")  # the libraries whose step compiles (Trainer(compile=True))
N_TRAIN = 60_000
LR = 0.01


def synthetic_mnist(n=N_TRAIN, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def flops_per_example(sizes=SIZES) -> float:
    """Multiply-adds x2: forward (1 product per layer), backward (weight and input gradients, none for
    the first layer's input)."""
    products = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2.0 * (sum(products) * 3 - products[0])


def contenders(backends, batch_size, x_host, y_host, samples, include_torch=True):
    """name -> (zero-argument function running one timed pass, device kind)."""
    runs = {}
    x_part, y_part = x_host[:samples], y_host[:samples]
    for backend in backends:
        x, y = backend.from_host(x_part), backend.from_host(y_part)
        # the eager step, and the compiled one where the backend has a compiler (jax.jit, torch.compile, CUDA
        # Graph capture on CuPy)
        for compile in (False, True) if backend.library in COMPILED else (False,):
            model = bp.mlp(SIZES, seed=0, backend=backend)
            trainer = bp.Trainer(model, optimizer="sgd", lr=LR, epochs=10**9, batch_size=batch_size,
                                 progress=False, log=None, compile=compile)

            def ours(trainer=trainer, x=x, y=y, backend=backend):
                trainer.train_epoch(x, y)
                backend.synchronize()

            runs[f"backprop[{backend.name}{' compiled' if compile else ''}]"] = ours
        if backend.name == "numpy":
            params, rng = handwritten.init_params(np, SIZES), np.random.default_rng(0)

            def hand(params=params, rng=rng, batch_size=batch_size):
                handwritten.train_epoch(np, params, x_part, y_part, batch_size, LR, rng)

            runs["handwritten[numpy]"] = hand
        if backend.library == "cupy":
            import cupy

            params_gpu = handwritten.init_params(cupy, SIZES)
            x_gpu, y_gpu = cupy.asarray(x_part), cupy.asarray(y_part)
            rng_gpu = cupy.random.RandomState(0)

            def hand_gpu(params=params_gpu, x=x_gpu, y=y_gpu, rng=rng_gpu, backend=backend, batch_size=batch_size):
                handwritten.train_epoch(cupy, params, x, y, batch_size, LR, rng)
                backend.synchronize()

            runs[f"handwritten[{backend.name}]"] = hand_gpu
    torch = torch_peer.optional_torch(include_torch)
    if torch is None:
        return runs
    for device in torch_peer.torch_devices(torch):
        model = torch_peer.build(SIZES, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        x_t = torch.from_numpy(x_part).to(device)
        y_t = torch.from_numpy(y_part).to(device)
        generator = torch.Generator(device=device).manual_seed(0)

        def torch_run(model=model, optimizer=optimizer, x=x_t, y=y_t, generator=generator, device=device,
                      batch_size=batch_size):
            torch_peer.train_epoch(model, optimizer, x, y, batch_size, generator)
            if device == "cuda":
                torch.cuda.synchronize()

        runs[f"pytorch[{device}]"] = torch_run
    return runs


def _counted_calls(batch_size):
    """The calls of one SGD step of this MLP on the counting test backend (what a GPU would launch), or None
    without array_api_strict."""
    from . import step_timing

    try:
        return step_timing.counted_calls("sgd", batch_size, SIZES)
    except ImportError:
        return None


def run(backends, batch_sizes, *, repeats, max_steps, include_torch=True, log=print):
    x_host, y_host = synthetic_mnist(min(N_TRAIN, max(batch_sizes) * max_steps))  # as many as any timing uses
    results = []
    for batch_size in batch_sizes:
        samples = min(N_TRAIN, batch_size * max_steps)
        runs = contenders(backends, batch_size, x_host, y_host, samples, include_torch)
        log(f"mlp batch {batch_size}: {samples} samples per timing, {len(runs)} contenders, {repeats} rounds")
        timed = interleaved(runs, repeats=repeats)
        scale = N_TRAIN / samples
        calls = _counted_calls(batch_size)
        for name, t in timed.items():
            epoch = t["median"] * scale
            row = {"workload": "mlp 784-512-512-10", "batch_size": batch_size, "contender": name,
                   "seconds_per_epoch": epoch, "extrapolated": samples < N_TRAIN, "samples_timed": samples,
                   "runs": t["runs"], "gflops": flops_per_example() * N_TRAIN / epoch / 1e9,
                   "us_per_step": t["median"] / -(-samples // batch_size) * 1e6}
            if name.startswith("backprop[") and calls is not None:
                row["calls_per_step"] = calls
            results.append(row)
            log(f"  {name:<28} {epoch:8.3f} s/epoch{' (extrapolated)' if samples < N_TRAIN else ''}")
    return results
