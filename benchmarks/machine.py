"""What the figures were measured on: CPU, libraries, threads, and the matrix-multiply peak."""

from __future__ import annotations

import contextlib
import os
import platform
import time

import numpy as np


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(backends) -> dict:
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform(),
            "blas": blas_name(), "backends": {b.name: {"device": b.device_name, "version": b.version}
                                               for b in backends}}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def blas_name() -> str:
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        return "unknown"


MATMUL_SIZE = 2048  # the side of the matrices of the peak measurement


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def limited_threads(threads: int):
    """NumPy's BLAS (and any OpenMP pool, through threadpoolctl) and PyTorch use ``threads`` threads inside,
    and what they used before afterwards."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limiter = None
    else:
        limiter = threadpool_limits(limits=threads)
    try:
        import torch
    except ImportError:
        torch = None
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)
        if limiter is not None:
            limiter.restore_original_limits()


def matmul_peak_gflops(backend, size: int = MATMUL_SIZE, repeats: int = 5) -> float:
    """The best float32 matrix-multiply rate this backend reaches on its device (the physical limit)."""
    xp = backend.xp
    a = backend.random(0).normal((size, size))
    b = backend.random(1).normal((size, size))
    a @ b  # warm-up
    backend.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        c = a @ b
        backend.synchronize()
        best = min(best, time.perf_counter() - start)
    del c, xp
    return 2 * size**3 / best / 1e9
