"""CuPy on an NVIDIA CUDA GPU (``cupy:N``, also spelled ``cuda:N``).

CuPy is imported only when asked for. A machine where CuPy imports but no GPU
works (a laptop, a container started without ``--gpus``, a driver too old)
reports the backend as unavailable, with the reason.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from . import cupy_cells
from .array_types import Array, DType, HostArrayLike
from .base import Backend, FlatTensors, ThreadLimit, flat_views
from .cuda_kernels import kernel
from .errors import BackendUnavailable
from .random import DeviceRandom, Seed, seed_to_int

if TYPE_CHECKING:
    from .nccl import NcclReducer


def _flat(*lists: Sequence[Array] | None) -> bool:
    """Whether every list is ``FlatTensors`` over a flat array: one kernel covers them all."""
    return all(isinstance(lst, FlatTensors) and lst.flat is not None for lst in lists if lst is not None)


def _dense_backward_launches(grad_output: Array, saved: tuple[Any, ...], *, input_grad: bool = True, **_: Any) -> int:
    _, _, _, activation, _, has_bias = saved
    return int(activation is not None or has_bias) + 1 + int(bool(input_grad))


def _per_tensor(kernels_each: int) -> Callable[..., int]:
    """Launches of a multi-tensor update: one over flat buffers, else ``kernels_each`` per array."""
    def launches(params: Sequence[Array], grads: Sequence[Array], *states: Sequence[Array] | None, **_: Any) -> int:
        return 1 if _flat(params, grads, *states) else kernels_each * len(params)

    return launches


#: The kernels this backend launches for one call of each capability (a function of the call's arguments): the
#: count the counting test backend (``backends/counting_backend.py``) records for it, standing in for a GPU
#: profiler on the CPU. Keep it in step with the implementations below.
KERNEL_LAUNCHES: dict[str, Callable[..., int]] = {
    "add_scaled": lambda target, source, alpha=1.0, *, beta=1.0: 1,  # one axpby kernel
    "scale": lambda target, factor: 1,
    "at_set": lambda x, index, values: 1,
    "at_add": lambda x, index, values: 1,
    "scatter_add": lambda target, indices, values: 1,
    "outer": lambda a, b: 1,
    # a GEMM, then one kernel adding the bias and applying the activation
    "dense_forward": lambda x, weight, bias=None, activation=None, **_: 1 + int(bias is not None
                                                                                or activation is not None),
    # the activation's derivative fused with the bias gradient's column sums, the weight gradient's GEMM, and
    # the input gradient's GEMM
    "dense_backward": _dense_backward_launches,
    # one kernel: one block whose threads take a row each (softmax, loss, gradient, prediction), then reduce
    # the loss and the counts and write the loss and the metrics
    "softmax_cross_entropy": lambda logits, labels, **_: 1,
    "add_step_metrics": lambda metrics, loss, correct, examples: 1,
    "close_step_metrics": lambda metrics: 1,
    # block partial sums of squares, then one reduction per array with the square root (and the sum added)
    "tensor_norms": lambda arrays, add_to=None: 2,
    "clip_coefficient": lambda norms, max_norm: 1,
    "multi_tensor_scale": lambda arrays, factor: 1 if _flat(arrays) else len(arrays),
    "multi_tensor_sgd": _per_tensor(1),
    "multi_tensor_adam": _per_tensor(1),
    "multi_tensor_rmsprop": _per_tensor(1),
    "multi_tensor_adagrad": _per_tensor(1),
    "set_scalar": lambda scalar, value: 1,  # a host-to-device copy of one number (a fill kernel)
}


class CupyRandom(DeviceRandom):
    """Uniform numbers (dropout masks) from a counter-based generator whose counter lives on the device
    (``philox`` in ``backends/cuda_kernels.py``): a captured step's replays draw new numbers. Normal numbers
    and permutations (not drawn inside a step) come from CuPy's own generator. UNTESTED on a GPU."""

    def __init__(self, backend: CupyBackend, seed: Seed):
        super().__init__(backend, seed)
        import cupy  # lazy: optional library

        self._key = seed_to_int(seed) % (2**64)
        with backend._cupy_device:
            self._rng = cupy.random.RandomState(seed_to_int(seed) % (2**63))
            self._counter = cupy.zeros((1,), dtype=cupy.uint64)

    def _uniform01(self, shape, dtype):
        cupy = self.backend._cupy
        with self.backend._cupy_device:
            out = cupy.empty(shape, dtype=dtype)
            n = out.size
            if n:
                module = _kernel("philox")
                name = "philox_uniform_f32" if out.dtype == cupy.float32 else "philox_uniform_f64"
                threads = (n + 3) // 4
                module.get_function(name)(((threads + 255) // 256,), (256,),
                                          (np.uint64(self._key), self._counter, out, np.int64(n)))
                module.get_function("philox_advance")((1,), (1,), (self._counter,))
            return out

    def _normal01(self, shape, dtype):
        with self.backend._cupy_device:
            return self._rng.standard_normal(shape, dtype=dtype)

    def permutation(self, n: int) -> Array:
        with self.backend._cupy_device:
            return self._rng.permutation(n)


class CupyBackend(Backend):
    library = "cupy"
    step_compiler = ("cuda-graph", "graph_capture")
    permutes_epochs = True  # a gather per batch would be two more launches a step

    def allreducer(self, communicator: Any) -> NcclReducer:
        from .nccl import NcclReducer  # lazy: imports CuPy's NCCL bindings, only for a run on several GPUs

        return NcclReducer(communicator, self)

    def __init__(self, index: int):
        # lazy: optional library
        import array_api_compat.cupy as xp
        import cupy

        self._cupy = cupy
        self._cupy_device = cupy.cuda.Device(index)
        props = cupy.cuda.runtime.getDeviceProperties(index)
        device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        super().__init__(f"cupy:{index}", xp, self._cupy_device, device_name=device_name, version=cupy.__version__)

    @property
    def cupy(self) -> ModuleType:
        """The ``cupy`` module this backend runs on, for what only CuPy has (streams, CUDA Graphs, memory pools:
        ``backprop.training.captured``)."""
        return self._cupy

    def activate(self) -> AbstractContextManager[Any]:
        # UNTESTED on a GPU (none here): cupy.cuda.Device is CuPy's own re-entrant context manager for this.
        return self._cupy_device

    def owns(self, x: object) -> bool:
        return isinstance(x, self._cupy.ndarray) and x.device.id == self._cupy_device.id

    def asarray(self, obj: object, dtype: DType | None = None) -> Array:
        with self._cupy_device:
            return self._cupy.asarray(obj, dtype=dtype)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> Array:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        with self._cupy_device:
            return self._cupy.asarray(host_array, dtype=dtype)

    def to_host(self, x: Array) -> np.ndarray:
        return self._cupy.asnumpy(x)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        """Applied as it is: CuPy's kernels run on the GPU, no pool of CPU threads to share out."""
        return ThreadLimit(True)

    def random(self, seed: Seed) -> CupyRandom:
        return CupyRandom(self, seed)

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        import cupyx  # lazy: optional library

        with self._cupy_device:
            cupyx.scatter_add(target, indices, values)
        return target

    # Updates in place (CuPy arrays are always writeable), on the array's own GPU.
    def add_scaled(self, target: Array, source: Array, alpha: float = 1.0, *, beta: float = 1.0) -> Array:
        with self._cupy_device:
            _kernel("axpby")(source, alpha, beta, target)  # one pass, in place (UNTESTED on a GPU)
        return target

    def scale(self, target: Array, factor: float | Array) -> Array:
        with self._cupy_device:
            target *= factor
        return target

    def at_set(self, x: Array, index: Any, values: Array | float) -> Array:
        with self._cupy_device:
            x[index] = values
        return x

    def at_add(self, x: Array, index: Any, values: Array | float) -> Array:
        with self._cupy_device:
            x[index] += values
        return x

    # The LSTM and GRU steps: a cuBLAS product and one kernel each (backends/cupy_cells.py).
    cells_write_out = True

    def lstm_cell_forward(self, a: Array, h_prev: Array | None, c_prev: Array | None, weight_hh: Array
                          ) -> tuple[Array, Array, cupy_cells.LstmCache]:
        with self._cupy_device:
            return cupy_cells.lstm_cell_forward(self._cupy, a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh: Array, dc: Array | None, cache: cupy_cells.LstmCache, weight_hh: Array, *,
                           pass_back: bool, out: Array | None = None, weight_hh_t: Array | None = None
                           ) -> tuple[Array, Array | None, Array | None]:
        with self._cupy_device:
            return cupy_cells.lstm_cell_backward(self._cupy, dh, dc, cache, weight_hh, pass_back, out, weight_hh_t)

    def gru_cell_forward(self, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array
                         ) -> tuple[Array, cupy_cells.GruCache]:
        with self._cupy_device:
            return cupy_cells.gru_cell_forward(self._cupy, a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh: Array, cache: cupy_cells.GruCache, weight_hh: Array, *, pass_back: bool,
                          out: tuple[Array | None, Array | None] | None = None, weight_hh_t: Array | None = None
                          ) -> tuple[Array, Array, Array | None]:
        with self._cupy_device:
            return cupy_cells.gru_cell_backward(self._cupy, dh, cache, weight_hh, pass_back, out, weight_hh_t)

    # -- fused and multi-tensor capabilities: the kernels of backends/cuda_kernels.py ----------------------------
    # UNTESTED on a GPU (none was available): written against CuPy's documented API and compiled with NVRTC in
    # CI; the launches each makes are KERNEL_LAUNCHES above.
    def dense_forward(self, x: Array, weight: Array, bias: Array | None = None, activation: str | None = None, *,
                      negative_slope: float = 0.01) -> tuple[Array, tuple[Any, ...]]:
        with self._cupy_device:
            y = x @ weight  # cuBLAS
            has_bias = bias is not None
            if activation == "gelu":
                out = self._cupy.empty_like(y)
                _kernel("dense_bias_gelu")(bias if has_bias else y, y.shape[-1], int(has_bias), y, out)
                return out, (x, weight, y, activation, negative_slope, has_bias)
            if has_bias or activation is not None:
                _kernel("dense_bias_activation")(bias if has_bias else y, y.shape[-1], int(has_bias),
                                                 _ACTIVATION_NUMBERS[activation], negative_slope, y)
            return y, (x, weight, y, activation, negative_slope, has_bias)

    def dense_backward(self, grad_output: Array, saved: tuple[Any, ...], *, input_grad: bool = True,
                       weight_grad_out: Array | None = None, bias_grad_out: Array | None = None
                       ) -> tuple[Array | None, Array, Array | None]:
        cupy = self._cupy
        x, weight, kept, activation, slope, has_bias = saved
        with self._cupy_device:
            grad_output = cupy.ascontiguousarray(grad_output)
            cols = weight.shape[1]
            rows = grad_output.size // cols
            grad, grad_bias = grad_output, None
            if activation is not None or has_bias:
                if activation is not None:
                    grad = cupy.empty_like(grad_output)
                if has_bias:
                    grad_bias = (bias_grad_out if _fits(bias_grad_out, (cols,), grad.dtype)
                                 else cupy.empty((cols,), dtype=grad.dtype))
                scalar = np.float32 if grad.dtype == cupy.float32 else np.float64
                name = "dense_grad_bias_f32" if grad.dtype == cupy.float32 else "dense_grad_bias_f64"
                _kernel("dense_backward").get_function(name)(
                    ((cols + 31) // 32,), (32, 8),
                    (grad_output, grad_output if activation is None else kept, grad,
                     grad if grad_bias is None else grad_bias, np.int64(rows), np.int64(cols),
                     np.int32(_ACTIVATION_NUMBERS.get(activation, 0)), scalar(slope),
                     np.int32(activation == "gelu"), np.int32(has_bias)))
            inputs, flat_grad = x.reshape(-1, weight.shape[0]), grad.reshape(-1, cols)
            out = weight_grad_out if _fits(weight_grad_out, weight.shape, flat_grad.dtype) else None
            grad_weight = cupy.matmul(inputs.T, flat_grad, out=out)
            grad_input = grad @ weight.T if input_grad else None
        return grad_input, grad_weight, grad_bias

    def softmax_cross_entropy(self, logits: Array, labels: Array, *, grad_scale: float | Array = 1.0,
                              metrics: Array | None = None, with_grad: bool = True
                              ) -> tuple[Array, Array | None, Array | None]:
        cupy = self._cupy
        with self._cupy_device:
            classes = logits.shape[-1]
            z = cupy.ascontiguousarray(logits.reshape(-1, classes))
            index = cupy.ascontiguousarray(labels.reshape(-1))
            if index.dtype not in (cupy.int64, cupy.int32):
                index = index.astype(cupy.int64)
            grad = cupy.empty_like(z) if with_grad else z
            loss = cupy.empty((), dtype=z.dtype)
            name = (f"softmax_xent_{'f32' if z.dtype == cupy.float32 else 'f64'}_"
                    f"{'i64' if index.dtype == cupy.int64 else 'i32'}")
            _kernel("softmax_cross_entropy").get_function(name)(
                (1,), (256,),
                (z, index, grad, loss, loss if metrics is None else metrics, np.int64(z.shape[0]),
                 np.int64(classes), np.float64(grad_scale), np.float64(logits.shape[0]),
                 np.int32(with_grad), np.int32(metrics is not None)))
        return loss, grad.reshape(logits.shape) if with_grad else None, metrics

    def add_step_metrics(self, metrics: Array, loss: Array, correct: Array, examples: int) -> Array:
        with self._cupy_device:
            correct = self._cupy.asarray(correct)
            _kernel("add_step_metrics")(loss.astype(metrics.dtype, copy=False), correct, float(examples), metrics,
                                        size=1)
        return metrics

    def close_step_metrics(self, metrics: Array) -> Array:
        with self._cupy_device:
            _kernel("close_step_metrics")(metrics, size=1)
        return metrics

    def tensor_norms(self, arrays: Sequence[Array], *, add_to: Array | None = None) -> Array:
        cupy = self._cupy
        arrays = [cupy.ascontiguousarray(a) for a in arrays]
        with self._cupy_device:
            pointers, sizes = self._pointer_table(arrays)
            n, chunks = len(arrays), 32
            partial = cupy.empty((n * chunks,), dtype=cupy.float64)
            dtype = arrays[0].dtype
            norms = add_to if add_to is not None else cupy.empty((n,), dtype=dtype)
            suffix = "f32" if dtype == cupy.float32 else "f64"
            module = _kernel("tensor_norms")
            module.get_function(f"norm_partials_{suffix}")((chunks, n), (256,),
                                                           (pointers, sizes, partial, np.int32(chunks)))
            module.get_function(f"norm_finish_{suffix}")((n,), (256,), (partial, np.int32(chunks), norms,
                                                                        np.int32(add_to is not None)))
        return norms

    def prepare_for_capture(self, arrays: Sequence[Array]) -> None:
        """Build now what the multi-tensor kernels over ``arrays`` need (their device table of addresses and
        sizes), so that a CUDA Graph captured afterwards reads it instead of copying it from the host."""
        self._pointer_table([self._cupy.ascontiguousarray(a) for a in arrays])

    def _pointer_table(self, arrays):
        """Device arrays of the arrays' addresses and sizes, kept while the same arrays come back (a step's flat
        gradient views always do): one host-to-device copy when they change, none in a captured step."""
        key = tuple((a.data.ptr, a.size) for a in arrays)
        tables = self.__dict__.setdefault("_pointer_tables", {})
        table = tables.get(key)
        if table is None:
            if len(tables) > 16:
                tables.clear()
            table = tables[key] = (self._cupy.asarray(np.array([p for p, _ in key], dtype=np.uint64)),
                                   self._cupy.asarray(np.array([n for _, n in key], dtype=np.int64)))
        return table

    def clip_coefficient(self, norms: Array, max_norm: float) -> Array:
        with self._cupy_device:
            coefficient = self._cupy.empty((), dtype=norms.dtype)
            _kernel("clip_coefficient")(norms, norms.size, float(max_norm), coefficient, size=1)
        return coefficient

    def multi_tensor_scale(self, arrays: list[Array], factor: float | Array) -> list[Array]:
        with self._cupy_device:
            if isinstance(arrays, FlatTensors) and arrays.flat is not None:
                arrays.flat *= factor
                return arrays
            return [self.scale(a, factor) for a in arrays]

    def multi_tensor_sgd(self, params: Sequence[Array], grads: Sequence[Array],
                         momentum_buffers: Sequence[Array] | None = None, *, lr: float | Array, momentum: float = 0.0,
                         nesterov: bool = False, weight_decay: float = 0.0
                         ) -> tuple[Sequence[Array], Sequence[Array] | None]:
        with self._cupy_device:
            for p, g, buf in _each(params, grads, momentum_buffers):
                if momentum != 0:
                    _kernel("sgd_momentum_update")(g, lr, float(momentum), float(weight_decay), int(nesterov), p, buf)
                else:
                    _kernel("sgd_update")(g, lr, float(weight_decay), p)
        return params, momentum_buffers

    def multi_tensor_adam(self, params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
                          exp_avg_sqs: Sequence[Array], *, lr: float | Array, step: int | float | Array, beta1: float,
                          beta2: float, eps: float, weight_decay: float = 0.0, decoupled_weight_decay: bool = False
                          ) -> tuple[Sequence[Array], Sequence[Array], Sequence[Array]]:
        step = float(step) if isinstance(step, int) else step
        with self._cupy_device:
            for p, g, m, v in _each(params, grads, exp_avgs, exp_avg_sqs):
                _kernel("adam_update")(g, lr, step, float(beta1), float(beta2), float(eps), float(weight_decay),
                                       int(decoupled_weight_decay), p, m, v)
        return params, exp_avgs, exp_avg_sqs

    def multi_tensor_rmsprop(self, params: Sequence[Array], grads: Sequence[Array], square_avgs: Sequence[Array],
                             momentum_buffers: Sequence[Array] | None = None, *, lr: float | Array, alpha: float,
                             eps: float, momentum: float = 0.0, weight_decay: float = 0.0
                             ) -> tuple[Sequence[Array], Sequence[Array], Sequence[Array] | None]:
        with self._cupy_device:
            for p, g, avg, buf in _each(params, grads, square_avgs, momentum_buffers):
                if momentum > 0:
                    _kernel("rmsprop_momentum_update")(g, lr, float(alpha), float(eps), float(momentum),
                                                       float(weight_decay), p, avg, buf)
                else:
                    _kernel("rmsprop_update")(g, lr, float(alpha), float(eps), float(weight_decay), p, avg)
        return params, square_avgs, momentum_buffers

    def multi_tensor_adagrad(self, params: Sequence[Array], grads: Sequence[Array], state_sums: Sequence[Array], *,
                             lr: float | Array, eps: float, weight_decay: float = 0.0
                             ) -> tuple[Sequence[Array], Sequence[Array]]:
        with self._cupy_device:
            for p, g, total in _each(params, grads, state_sums):
                _kernel("adagrad_update")(g, lr, float(eps), float(weight_decay), p, total)
        return params, state_sums

    def flat_buffer(self, shapes: Sequence[tuple[int, ...]], dtype: DType) -> tuple[Array, list[Array]]:
        with self._cupy_device:
            flat = self._cupy.zeros(sum(math.prod(shape) for shape in shapes), dtype=dtype)
            return flat, flat_views(self.xp, flat, shapes)

    def set_scalar(self, scalar: Array | None, value: float) -> Array:
        if scalar is None:
            return super().set_scalar(scalar, value)
        with self._cupy_device:
            scalar.fill(value)
        return scalar

    def synchronize(self) -> None:
        self._cupy_device.synchronize()

    # memGetInfo and the memory pool's figures are the current device's.
    def available_memory(self) -> int | None:
        with self._cupy_device:
            free, _ = self._cupy.cuda.runtime.memGetInfo()
            pool = self._cupy.get_default_memory_pool()
            return int(free) + int(pool.free_bytes())  # the pool's cached blocks are free for our arrays too

    def memory_stats(self) -> dict[str, int]:
        with self._cupy_device:
            pool = self._cupy.get_default_memory_pool()
            free, total = self._cupy.cuda.runtime.memGetInfo()
            return {"pool_used_bytes": pool.used_bytes(), "pool_total_bytes": pool.total_bytes(),
                    "device_free_bytes": free, "device_total_bytes": total}


_ACTIVATION_NUMBERS = {None: 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4}


def _kernel(name: str) -> Any:
    return kernel(name)


def _fits(out: Array | None, shape: Sequence[int], dtype: DType) -> bool:
    return (out is not None and tuple(out.shape) == tuple(shape) and out.dtype == dtype
            and out.flags.c_contiguous)


def _each(*lists: Sequence[Array] | None) -> list[tuple[Any, ...]]:
    """Rows of matching arrays to update: the flat arrays once when every list given is ``FlatTensors`` (one
    kernel for all of them), else each parameter's arrays in turn (None stays None)."""
    given = [lst for lst in lists if lst is not None]
    if given and all(isinstance(lst, FlatTensors) and lst.flat is not None for lst in given):
        return [tuple(lst.flat if isinstance(lst, FlatTensors) else None for lst in lists)]
    count = len(given[0])  # the parameters, always given
    return [tuple(None if lst is None else lst[i] for lst in lists) for i in range(count)]


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
    if importlib.util.find_spec("cupy") is None:
        raise BackendUnavailable(
            name, "CuPy is not installed (pip install 'backprop[cuda12]' or 'backprop[cuda13]')")
    try:
        import cupy  # lazy: optional library
    except Exception as exc:  # installed but broken, or the driver library is missing
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BackendUnavailable(name, f"{_no_driver_hint()}CuPy failed to import: {detail}") from None
    try:
        import array_api_compat.cupy  # noqa: F401  # lazy: imports CuPy
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


def _probe(cupy: ModuleType, index: int, name: str) -> None:
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
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy  # lazy: optional library

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def listed_devices() -> list[str]:
    try:
        if importlib.util.find_spec("cupy") is None:
            return ["0"]
        import cupy  # lazy: optional library

        return [str(i) for i in range(max(cupy.cuda.runtime.getDeviceCount(), 1))]
    except Exception:
        return ["0"]
