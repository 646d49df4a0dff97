"""CuPy on an NVIDIA CUDA GPU (``cupy:N``, also spelled ``cuda:N``).

CuPy is imported only when asked for. A machine where CuPy imports but no GPU
works (a laptop, a container started without ``--gpus``, a driver too old)
reports the backend as unavailable, with the reason.
"""

from __future__ import annotations

import numpy as np

from . import cupy_cells
from .base import Backend
from .errors import BackendUnavailable
from .random import DeviceRandom, seed_to_int


class CupyRandom(DeviceRandom):
    def __init__(self, backend, seed):
        super().__init__(backend, seed)
        import cupy

        with backend._cupy_device:
            self._rng = cupy.random.RandomState(seed_to_int(seed) % (2**63))

    def _uniform01(self, shape, dtype):
        with self.backend._cupy_device:
            return self._rng.random_sample(shape, dtype=dtype)

    def _normal01(self, shape, dtype):
        with self.backend._cupy_device:
            return self._rng.standard_normal(shape, dtype=dtype)

    def permutation(self, n):
        with self.backend._cupy_device:
            return self._rng.permutation(n)


class CupyBackend(Backend):
    library = "cupy"

    def __init__(self, index: int):
        import array_api_compat.cupy as xp
        import cupy

        self._cupy = cupy
        self._cupy_device = cupy.cuda.Device(index)
        props = cupy.cuda.runtime.getDeviceProperties(index)
        device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        super().__init__(f"cupy:{index}", xp, self._cupy_device, device_name=device_name, version=cupy.__version__)

    def activate(self):
        # UNTESTED on a GPU (none here): cupy.cuda.Device is CuPy's own re-entrant context manager for this.
        return self._cupy_device

    def owns(self, x) -> bool:
        return isinstance(x, self._cupy.ndarray) and x.device.id == self._cupy_device.id

    def asarray(self, obj, dtype=None):
        with self._cupy_device:
            return self._cupy.asarray(obj, dtype=dtype)

    def from_host(self, host_array, dtype=None):
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        with self._cupy_device:
            return self._cupy.asarray(host_array, dtype=dtype)

    def to_host(self, x):
        return self._cupy.asnumpy(x)

    def random(self, seed):
        return CupyRandom(self, seed)

    def scatter_add(self, target, indices, values):
        import cupyx

        with self._cupy_device:
            cupyx.scatter_add(target, indices, values)
        return target

    # Updates in place (CuPy arrays are always writeable), on the array's own GPU.
    def add_scaled(self, target, source, alpha=1.0, *, beta=1.0):
        with self._cupy_device:
            if beta != 1.0:
                target *= beta
            if alpha == 1.0:
                target += source
            else:
                target += alpha * source
        return target

    def scale(self, target, factor):
        with self._cupy_device:
            target *= factor
        return target

    def at_set(self, x, index, values):
        with self._cupy_device:
            x[index] = values
        return x

    def at_add(self, x, index, values):
        with self._cupy_device:
            x[index] += values
        return x

    # The LSTM and GRU steps: a cuBLAS product and one kernel each (backends/cupy_cells.py).
    cells_write_out = True

    def lstm_cell_forward(self, a, h_prev, c_prev, weight_hh):
        with self._cupy_device:
            return cupy_cells.lstm_cell_forward(self._cupy, a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh, dc, cache, weight_hh, *, pass_back, out=None, weight_hh_t=None):
        with self._cupy_device:
            return cupy_cells.lstm_cell_backward(self._cupy, dh, dc, cache, weight_hh, pass_back, out, weight_hh_t)

    def gru_cell_forward(self, a, h_prev, weight_hh, bias_hn):
        with self._cupy_device:
            return cupy_cells.gru_cell_forward(self._cupy, a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh, cache, weight_hh, *, pass_back, out=None, weight_hh_t=None):
        with self._cupy_device:
            return cupy_cells.gru_cell_backward(self._cupy, dh, cache, weight_hh, pass_back, out, weight_hh_t)

    def synchronize(self):
        self._cupy_device.synchronize()

    # memGetInfo and the memory pool's figures are the current device's.
    def available_memory(self):
        with self._cupy_device:
            free, _ = self._cupy.cuda.runtime.memGetInfo()
            pool = self._cupy.get_default_memory_pool()
            return int(free) + int(pool.free_bytes())  # the pool's cached blocks are free for our arrays too

    def memory_stats(self):
        with self._cupy_device:
            pool = self._cupy.get_default_memory_pool()
            free, total = self._cupy.cuda.runtime.memGetInfo()
            return {"pool_used_bytes": pool.used_bytes(), "pool_total_bytes": pool.total_bytes(),
                    "device_free_bytes": free, "device_total_bytes": total}


def _parse_index(device: str | None, name: str) -> int:
    if device is None:
        return 0
    try:
        index = int(device)
    except ValueError:
        raise BackendUnavailable(name, f"expected a GPU number such as cupy:0, got {device!r}") from None
    if index < 0:
        raise BackendUnavailable(name, f"expected a GPU number such as cupy:0, got {device!r}")
    return index


def load(device: str | None) -> Backend:
    name = f"cupy:{device}" if device is not None else "cupy"
    index = _parse_index(device, name)
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        raise BackendUnavailable(
            name, "CuPy is not installed (pip install 'backprop[cuda12]' or 'backprop[cuda13]')")
    try:
        import cupy
    except Exception as exc:  # installed but broken, or the driver library is missing
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(name, f"{_no_driver_hint()}CuPy failed to import: {detail}") from None
    try:
        import array_api_compat.cupy  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        raise BackendUnavailable(name, f"array_api_compat cannot wrap this CuPy: {exc}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailable(name, _cuda_reason(exc)) from None
    if count == 0:
        raise BackendUnavailable(name, "CuPy is installed but no CUDA GPU is visible")
    if index >= count:
        raise BackendUnavailable(name, f"CUDA device {index} does not exist ({count} visible)")
    _probe(cupy, index, name)
    return CupyBackend(index)


def _probe(cupy, index: int, name: str) -> None:
    """Use GPU ``index`` as training will, not just import: an allocation, a kernel and a reduction, a cuBLAS
    matrix product and a cuRAND draw (the libraries load separately, and a broken or missing one fails only
    there). ``BackendUnavailable`` naming the first step that fails, and why."""
    def kernel():
        return float((cupy.arange(4, dtype=cupy.float32) * 2).sum()) == 12.0

    def matmul():
        ones = cupy.ones((2, 2), dtype=cupy.float32)
        return float(cupy.matmul(ones, ones).sum()) == 8.0

    def draw():
        sample = cupy.random.RandomState(0).random_sample((4,), dtype=cupy.float32)  # CupyRandom's generator
        return 0.0 <= float(sample.min()) and float(sample.max()) < 1.0

    for what, step in (("an allocation and a kernel", kernel), ("a cuBLAS matrix product", matmul),
                       ("a cuRAND random draw", draw)):
        try:
            with cupy.cuda.Device(index):
                right = step()
        except Exception as exc:
            raise BackendUnavailable(name, f"{what} failed: {_cuda_reason(exc)}") from None
        if not right:
            raise BackendUnavailable(name, f"{what} gave a wrong result")


def nvidia_driver_loads() -> bool:
    """Whether the NVIDIA driver's library (libcuda) loads in this process: without it no CUDA GPU works, for
    any library. Cheap (no CUDA call)."""
    return _driver_library_loads()


def _driver_library_loads() -> bool:
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def _no_driver_hint() -> str:
    if _driver_library_loads():
        return ""
    return "no NVIDIA driver is visible (libcuda cannot be loaded; in Docker, run with --gpus all); "


def _cuda_reason(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    hint = _no_driver_hint()
    if hint:  # without the driver library CUDA reports errors such as "insufficient driver": say what is wrong
        return f"{hint}CUDA said: {text}"
    if "InsufficientDriver" in text or "driver version is insufficient" in text.lower():
        return f"the NVIDIA driver is too old for this CuPy's CUDA version ({text})"
    if "NoDevice" in text or "no CUDA-capable device" in text:
        return f"no CUDA GPU is visible ({text}); in Docker, pass --gpus all"
    if "libcuda" in text or "cudaErrorInitializationError" in text:
        return f"the NVIDIA driver could not be loaded ({text})"
    return f"CUDA is not usable: {text}"


def cuda_gpu_count() -> int:
    """The GPUs CuPy sees (0 when CuPy is missing or CUDA does not work), without creating a CUDA context on
    any of them."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def listed_devices() -> list[str]:
    try:
        import importlib.util

        if importlib.util.find_spec("cupy") is None:
            return ["0"]
        import cupy

        return [str(i) for i in range(max(cupy.cuda.runtime.getDeviceCount(), 1))]
    except Exception:
        return ["0"]
