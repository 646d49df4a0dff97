"""``array_api_strict``: the reference implementation of the array API standard.

It is slow and has no GPU; its purpose is to prove that the network code uses
nothing outside the standard. Its non-default device ``device1`` makes any
array created without ``device=`` fail loudly, so tests use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .array_types import Array, DType, HostArrayLike
from .base import Backend, ThreadLimit
from .errors import BackendUnavailable
from .numpy_backend import NumpyBackend
from .random import DeviceRandom, Seed, _entropy


class StrictRandom(DeviceRandom):
    """Draws with NumPy on the host and copies to the device (fine for a reference backend)."""

    def __init__(self, backend: Backend, seed: Seed):
        super().__init__(backend, seed)
        self._rng = np.random.default_rng(_entropy(seed))

    def _uniform01(self, shape, dtype):
        return self.backend.from_host(self._rng.random(shape), dtype=dtype)

    def _normal01(self, shape, dtype):
        return self.backend.from_host(self._rng.standard_normal(shape), dtype=dtype)

    def permutation(self, n: int) -> Array:
        return self.backend.from_host(self._rng.permutation(n))


class StrictBackend(Backend):
    library = "array_api_strict"

    def __init__(self, device_label: str):
        import array_api_strict  # lazy: optional library (a test dependency)

        self._module = array_api_strict
        device = array_api_strict.Device(device_label)
        self._cpu = array_api_strict.Device("CPU_DEVICE")
        name = "array_api_strict" if device == self._cpu else f"array_api_strict:{device_label}"
        super().__init__(name, array_api_strict, device,
                         device_name=f"CPU (strict device {device_label!r})",
                         version=array_api_strict.__version__)

    @property
    def supports_float64(self) -> bool:
        return self.name not in ("array_api_strict:no_float64",)

    def owns(self, x: Any) -> bool:
        # exactly array_api_strict's array: test backends built on it (simulated_cupy) subclass it
        return type(x) is self._module._array_object.Array and x.device == self.device

    def to_host(self, x: Array) -> np.ndarray:
        return np.array(x.to_device(self._cpu), copy=True)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> Array:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        on_cpu = self.xp.asarray(host_array, dtype=dtype, copy=True)  # else a view of host memory
        return on_cpu.to_device(self.device)

    def random(self, seed: Seed) -> StrictRandom:
        return StrictRandom(self, seed)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        return NumpyBackend().limit_threads(threads)  # it computes with NumPy underneath

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        """A new array, computed on the host (array_api_strict has no scatter-add); ``target`` is left alone."""
        result = self.to_host(target)
        np.add.at(result, self.to_host(indices), self.to_host(values))
        return self.from_host(result, dtype=target.dtype)


def load(device: str | None) -> Backend:
    try:
        import array_api_strict  # lazy: optional library (a test dependency)
    except ImportError:
        raise BackendUnavailable("array_api_strict",
                                 "array_api_strict is not installed (pip install array-api-strict)") from None
    label = device or "CPU_DEVICE"
    try:
        array_api_strict.Device(label)
    except ValueError:
        raise BackendUnavailable(f"array_api_strict:{label}",
                                 f"array_api_strict has no device {label!r} (try 'device1')") from None
    return StrictBackend(label)
