"""NumPy on the host CPU: always available."""

from __future__ import annotations

import resource
import sys

import array_api_compat.numpy as xp
import numpy as np

from .base import Backend
from .random import DeviceRandom, _entropy


class NumpyRandom(DeviceRandom):
    def __init__(self, backend, seed):
        super().__init__(backend, seed)
        self._rng = np.random.default_rng(_entropy(seed))

    def _uniform01(self, shape, dtype):
        if dtype in (np.float32, np.float64):
            return self._rng.random(shape, dtype=dtype)
        return self._rng.random(shape).astype(dtype)

    def _normal01(self, shape, dtype):
        if dtype in (np.float32, np.float64):
            return self._rng.standard_normal(shape, dtype=dtype)
        return self._rng.standard_normal(shape).astype(dtype)

    def permutation(self, n):
        return self._rng.permutation(n)


class NumpyBackend(Backend):
    library = "numpy"

    def __init__(self):
        super().__init__("numpy", xp, "cpu", device_name="CPU", version=np.__version__)

    def owns(self, x) -> bool:
        return type(x) is np.ndarray

    def to_host(self, x):
        return np.array(x, copy=True)

    def random(self, seed):
        return NumpyRandom(self, seed)

    def scatter_add(self, target, indices, values):
        np.add.at(target, indices, values)
        return target

    def memory_stats(self):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in KiB on Linux and in bytes on macOS.
        return {"host_peak_rss_bytes": peak if sys.platform == "darwin" else peak * 1024}


def load(device: str | None) -> Backend:
    from .errors import BackendUnavailable

    if device not in (None, "cpu"):
        raise BackendUnavailable(f"numpy:{device}", "numpy runs only on the host CPU (device 'cpu')")
    return NumpyBackend()
