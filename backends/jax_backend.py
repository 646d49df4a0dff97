"""JAX arrays on CPU or an NVIDIA GPU (``jax:cpu``, ``jax:cuda:N``; ``jax`` alone: a GPU if one works, else the
CPU).

``jax.numpy`` implements the array API standard itself: ``array_api_compat`` hands it back unwrapped, and it
is this backend's namespace. JAX is imported only when this backend is asked for.

JAX arrays are immutable: the operations here return new arrays (``scatter_add`` included) and never change
their arguments.

64-bit types. JAX has float64 and int64 only in its "x64" mode, a switch (``jax_enable_x64``) that is off by
default and that changes what the user's own JAX code computes (``jnp.zeros(3)`` becomes float64). So this
backend never turns it on globally: ``backend.scope()`` turns it on for the current thread, inside a ``with``
block, together with the backend's device as JAX's default device, and puts both back as they were on exit.
backprop's own work runs in that scope; float64 arrays must not be used outside it (JAX would silently
compute some operations on them in float32), so ``supports_float64`` is true only inside the scope, or where
the user has turned x64 on for themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

import numpy as np

from .base import Backend, host_available_memory
from .errors import BackendUnavailable
from .random import DeviceRandom, Seed, _entropy

INSTALL_HINT = "pip install 'backprop[jax]'"
CUDA_INSTALL_HINT = "pip install 'backprop[jax-cuda12]' or 'backprop[jax-cuda13]'"


class JaxRandom(DeviceRandom):
    """Random numbers from ``jax.random``: a threefry key made from the seed, split once per draw.

    The key is built from two 32-bit words that NumPy's ``SeedSequence`` derives from the seed (an int or a
    tuple of ints), so one seed gives the same stream every time, in or out of x64 mode. The numbers are not
    NumPy's (each backend's stream is its own; initial weights come from the host, so they are equal anyway).
    """

    def __init__(self, backend, seed: Seed):
        super().__init__(backend, seed)
        import jax

        self._random = jax.random
        words = np.random.SeedSequence(_entropy(seed)).generate_state(2, dtype=np.uint32)
        with backend.scope():
            self._key = jax.random.wrap_key_data(jax.device_put(words, backend.device), impl="threefry2x32")

    def _next_key(self):
        self._key, key = self._random.split(self._key)
        return key

    def _uniform01(self, shape, dtype):
        with self.backend.scope():
            return self._random.uniform(self._next_key(), shape, dtype=dtype)

    def _normal01(self, shape, dtype):
        with self.backend.scope():
            return self._random.normal(self._next_key(), shape, dtype=dtype)

    def permutation(self, n):
        with self.backend.scope():
            return self._random.permutation(self._next_key(), self.backend.xp.arange(n, dtype=self.backend.xp.int64))


class JaxBackend(Backend):
    library = "jax"

    def __init__(self, device):
        import jax
        import jax.numpy as xp

        self._jax = jax
        device_name = "CPU" if device.platform == "cpu" else f"{device.device_kind} (CUDA)"
        super().__init__(f"jax:{_spec_device(device)}", xp, device, device_name=device_name,
                         version=jax.__version__)

    @contextlib.contextmanager
    def scope(self) -> Iterator[JaxBackend]:
        """``with backend.scope():`` JAX's x64 mode on, and this backend's device JAX's default, for this thread
        until the block ends; both are then as they were (the user's own JAX code never sees them change)."""
        with self._jax.enable_x64(True), self._jax.default_device(self.device):
            yield self

    @property
    def supports_float64(self) -> bool:
        return bool(self._jax.config.jax_enable_x64)  # this thread's value: true inside ``scope()``

    def owns(self, x) -> bool:
        if not isinstance(x, self._jax.Array):
            return False
        try:
            return x.device == self.device
        except Exception:  # an abstract value being traced (inside jax.jit) has no device
            return False

    def dtype(self, name_or_dtype):
        dtype = super().dtype(name_or_dtype)
        self._check_dtype(dtype)
        return dtype

    def _check_dtype(self, dtype) -> None:
        """float64 outside x64 mode would silently become float32 (in some operations only): say so instead.
        (64-bit integers are let through: JAX computes with them as int32 outside x64 mode, which loses nothing
        for indices and labels.)"""
        if dtype is not None and np.dtype(dtype) == np.float64 and not self.supports_float64:
            raise TypeError(f"{self.name}: {np.dtype(dtype).name} needs JAX's 64-bit mode; use it inside "
                            f"'with backend.scope():' (backprop's own calls are) or turn on jax_enable_x64")

    def asarray(self, obj, dtype=None):
        with self.scope():
            return self._jax.device_put(self.xp.asarray(obj, dtype=dtype), self.device)

    def from_host(self, host_array, dtype=None):
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        # On the CPU, JAX may wrap a NumPy buffer without copying it: hand it a copy that nobody else holds.
        host_copy = np.array(host_array, dtype=None if dtype is None else np.dtype(dtype), order="C", copy=True)
        with self.scope():
            return self._jax.device_put(host_copy, self.device)

    def to_host(self, x):
        # np.asarray of a CPU array can be a read-only view of JAX's buffer; np.array copies.
        with self.scope():  # a 64-bit array must not pass through 32-bit conversion
            return np.array(x, copy=True)

    def random(self, seed):
        return JaxRandom(self, seed)

    def scatter_add(self, target, indices, values):
        """A new array: ``target`` with ``values[i]`` added at row ``indices[i]``, duplicates accumulating
        (JAX arrays cannot be changed in place; ``target`` is left as it was)."""
        with self.scope():
            return target.at[indices].add(values)

    def synchronize(self):
        # JAX has no device-wide barrier: a computation queued after all others on the device finishes last.
        with self.scope():
            self.xp.zeros((), device=self.device).block_until_ready()
        self._jax.effects_barrier()

    def memory_stats(self):
        stats = self.device.memory_stats() or {}  # None on the CPU
        wanted = {"bytes_in_use": "allocated_bytes", "peak_bytes_in_use": "peak_allocated_bytes",
                  "bytes_limit": "limit_bytes", "bytes_reserved": "reserved_bytes"}
        return {ours: int(stats[theirs]) for theirs, ours in wanted.items() if theirs in stats}

    def available_memory(self):
        if self.device.platform == "cpu":
            return host_available_memory()
        # JAX's allocator takes a share of the GPU up front (75% unless XLA_PYTHON_CLIENT_MEM_FRACTION or
        # XLA_PYTHON_CLIENT_PREALLOCATE say otherwise): what our arrays can still get is what is left of it.
        stats = self.device.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return max(0, int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)))


def _spec_device(device) -> str:
    return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"


def _import_jax(name: str):
    if importlib.util.find_spec("jax") is None:
        raise BackendUnavailable(name, f"JAX is not installed ({INSTALL_HINT})")
    try:
        import jax
        import jax.numpy  # noqa: F401
    except Exception as exc:  # installed but broken (a jaxlib that does not match jax, say)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(name, f"JAX failed to import: {detail}") from None
    return jax


def _cuda_plugin_installed() -> bool:
    return any(importlib.util.find_spec(plugin) is not None
               for plugin in ("jax_cuda12_plugin", "jax_cuda13_plugin"))


def _cuda_devices(jax, name: str) -> list:
    try:
        return jax.devices("cuda")
    except RuntimeError as exc:
        if not _cuda_plugin_installed():
            raise BackendUnavailable(name, f"this JAX has no CUDA support ({CUDA_INSTALL_HINT})") from None
        detail = _cuda_init_error(jax) or str(exc).splitlines()[0]
        raise BackendUnavailable(name, f"JAX's CUDA plugin is installed but no CUDA GPU works: {detail}") from None


def _cuda_init_error(jax) -> str:
    """Why JAX's CUDA backend failed to start, as JAX recorded it (a private table; empty if it moves)."""
    try:
        from jax._src import xla_bridge

        return str(getattr(xla_bridge, "_backend_errors", {}).get("cuda", "")).splitlines()[0]
    except Exception:
        return ""


def load(device: str | None) -> Backend:
    """``jax`` alone picks the best device: the first CUDA GPU, else the CPU."""
    name = f"jax:{device}" if device else "jax"
    jax = _import_jax(name)
    if device is None:
        try:
            return load("cuda:0")
        except BackendUnavailable:
            return load("cpu")
    kind, _, index_text = device.partition(":")
    if kind == "cpu" and not index_text:
        chosen = jax.devices("cpu")[0]
    elif kind in ("cuda", "gpu"):
        try:
            index = int(index_text or 0)
            if index < 0:
                raise ValueError
        except ValueError:
            raise BackendUnavailable(name, f"expected a GPU number such as jax:cuda:0, got {device!r}") from None
        gpus = _cuda_devices(jax, name)
        if index >= len(gpus):
            raise BackendUnavailable(name, f"CUDA device {index} does not exist ({len(gpus)} visible)")
        chosen = gpus[index]
    else:
        raise BackendUnavailable(name, f"{device!r} is not a JAX device; expected cpu or cuda:N")
    try:  # a real allocation and computation, not just an import
        with jax.default_device(chosen):
            probe = jax.device_put(np.arange(4, dtype=np.float32), chosen)
            float((probe * 2).sum())
    except Exception as exc:
        raise BackendUnavailable(name, f"a test computation failed: {exc}".splitlines()[0]) from None
    return _instance(chosen)


_backends: dict = {}


def _instance(device) -> JaxBackend:
    if device not in _backends:
        _backends[device] = JaxBackend(device)
    return _backends[device]


def listed_devices() -> list[str]:
    """The devices shown in ``backprop backends`` and tested: the CPU, and each CUDA GPU (``cuda:0`` when none
    is visible, so that it is listed with the reason). Asking JAX how many GPUs it sees starts its CUDA
    backend, so that is done only when JAX's CUDA plugin is installed."""
    devices = ["cpu", "cuda:0"]
    try:
        if importlib.util.find_spec("jax") is None or not _cuda_plugin_installed():
            return devices
        import jax

        count = len(jax.devices("cuda"))
        devices[1:] = [f"cuda:{i}" for i in range(max(count, 1))]
    except Exception:
        pass
    return devices
