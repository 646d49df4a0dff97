"""PyTorch tensors through ``array_api_compat.torch``: CPU, CUDA (and ROCm) and Apple MPS.

PyTorch is imported only when this backend is asked for.

On CUDA, PyTorch runs float32 convolutions (and, where a user asked for it, matrix products) in TF32 by
default: 10 bits of mantissa on Ampere and newer GPUs, which the other backends do not do and which fails
the 1e-5 parity tests. Inside this backend's ``activate()`` (every public call of backprop), float32 is
computed in full precision ("ieee"); the previous settings come back on the way out. Set
``backend.allow_tf32 = True`` to leave PyTorch's own settings alone (faster, less exact).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from types import ModuleType
from typing import Any

import numpy as np

from . import torch_cells
from .array_types import Array, Device, DType, HostArrayLike
from .base import Backend, FlatTensors, ThreadLimit, activation_backward, activation_forward, flat_views
from .cupy_backend import nvidia_driver_loads
from .errors import BackendSetupError, BackendUnavailable
from .random import DeviceRandom, Seed, seed_to_int


class TorchRandom(DeviceRandom):
    def __init__(self, backend: TorchBackend, seed: Seed):
        super().__init__(backend, seed)
        import torch  # lazy: optional library

        self._torch = torch
        self._generator = torch.Generator(device=backend.device)
        self._generator.manual_seed(seed_to_int(seed))

    def _uniform01(self, shape, dtype):
        return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)

    def _normal01(self, shape, dtype):
        return self._torch.randn(shape, generator=self._generator, dtype=dtype, device=self.backend.device)

    def permutation(self, n: int) -> Array:
        return self._torch.randperm(n, generator=self._generator, device=self.backend.device)


def tf32_switches(torch: ModuleType) -> list[tuple[object, str, object]]:
    """``(owner, attribute, exact value)`` for each switch that lets PyTorch compute float32 in TF32 on CUDA:
    convolutions, RNNs and matrix products (``fp32_precision`` from PyTorch 2.9; ``allow_tf32`` before)."""
    backends = torch.backends
    owners = [_resolve(backends, path) for path in ("cudnn.conv", "cudnn.rnn", "cuda.matmul")]
    if all(hasattr(owner, "fp32_precision") for owner in owners):
        return [(owner, "fp32_precision", "ieee") for owner in owners]
    return [(backends.cudnn, "allow_tf32", False), (backends.cuda.matmul, "allow_tf32", False)]


@contextlib.contextmanager
def exact_float32(switches: Sequence[tuple[object, str, object]]) -> Iterator[None]:
    """Inside the block, float32 in full precision (each switch at its exact value); on the way out, the
    switches as they were. Nested uses find them exact already and change nothing."""
    changed = []
    for owner, name, exact in switches:
        value = getattr(owner, name)
        if value != exact:
            setattr(owner, name, exact)
            changed.append((owner, name, value))
    try:
        yield
    finally:
        for owner, name, value in reversed(changed):
            setattr(owner, name, value)


def _resolve(root, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part, None)
    return root


class TorchBackend(Backend):
    library = "torch"
    step_compiler = ("torch.compile", "in_place")

    #: On CUDA: let PyTorch use TF32 as it is set up to (True), or compute float32 exactly inside backprop's
    #: calls (False, the default: parity with the other backends).
    allow_tf32: bool = False

    def __init__(self, device: Device):
        # lazy: optional library
        import array_api_compat.torch as xp
        import torch

        self._torch = torch
        if device.type == "cuda":
            device_name = torch.cuda.get_device_name(device)
        elif device.type == "mps":
            device_name = "Apple GPU (MPS)"
        else:
            device_name = "CPU"
        super().__init__(f"torch:{device}", xp, device, device_name=device_name, version=torch.__version__)
        self._tf32_switches = tf32_switches(torch) if device.type == "cuda" else []
        # on a GPU, fewer launches; on the CPU, batches gathered from the cache
        self.permutes_epochs = device.type != "cpu"

    @property
    def supports_float64(self) -> bool:
        return self.device.type != "mps"

    def activate(self) -> AbstractContextManager[Any]:
        # PyTorch ops follow their tensors' device; the current CUDA device matters for what does not name one
        # (a plain "cuda" device, CUDA libraries and kernels called from other libraries). UNTESTED on a GPU.
        if self.device.type == "cuda":
            if self.allow_tf32:
                return self._torch.cuda.device(self.device)
            return self._on_gpu_exactly()
        return super().activate()

    @contextlib.contextmanager
    def _on_gpu_exactly(self) -> Iterator[None]:
        with self._torch.cuda.device(self.device), exact_float32(self._tf32_switches):
            yield

    def owns(self, x: object) -> bool:
        return isinstance(x, self._torch.Tensor) and x.device == self.device

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> Array:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        tensor = self._torch.from_numpy(np.asarray(host_array, order="C"))  # keeps 0-d arrays 0-d
        return tensor.to(device=self.device, dtype=dtype, copy=True)

    def to_host(self, x: Array) -> np.ndarray:
        return x.detach().cpu().numpy().copy() if x.device.type == "cpu" else x.detach().cpu().numpy()

    def random(self, seed: Seed) -> TorchRandom:
        return TorchRandom(self, seed)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        """``torch.set_num_threads`` (PyTorch's CPU kernels, on any device: the host side of a GPU run too)."""
        if threads is None:
            return ThreadLimit(False)
        previous = self._torch.get_num_threads()
        self._torch.set_num_threads(max(1, int(threads)))
        return ThreadLimit(True, lambda: self._torch.set_num_threads(previous))

    # Updates in place: tensors are always writeable.
    def add_scaled(self, target: Array, source: Array, alpha: float = 1.0, *, beta: float = 1.0) -> Array:
        if beta != 1.0:
            target.mul_(beta)
        return target.add_(source, alpha=alpha)

    def scale(self, target: Array, factor: float | Array) -> Array:
        return target.mul_(factor)

    def at_set(self, x: Array, index: Any, values: Array | float) -> Array:
        x[index] = values
        return x

    def at_add(self, x: Array, index: Any, values: Array | float) -> Array:
        x[index] += values
        return x

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        return target.index_add_(0, indices, values)

    # -- fused and multi-tensor capabilities: PyTorch's own kernels (those its autograd and torch.optim run) ------
    def dense_forward(self, x: Array, weight: Array, bias: Array | None = None, activation: str | None = None, *,
                      negative_slope: float = 0.01) -> tuple[Array, tuple[Any, ...]]:
        torch = self._torch
        if bias is not None and x.ndim == 2:
            y = torch.addmm(bias, x, weight)  # the bias added by the GEMM
        else:
            y = x @ weight
            if bias is not None:
                y.add_(bias)
        kept = y
        if activation == "relu":
            y = torch.relu_(y)
        elif activation is not None:
            y = activation_forward(self.xp, y, activation, negative_slope)
            kept = kept if activation == "gelu" else y
        return y, (x, weight, kept, activation, negative_slope, bias is not None)

    def dense_backward(self, grad_output: Array, saved: tuple[Any, ...], *, input_grad: bool = True,
                       weight_grad_out: Array | None = None, bias_grad_out: Array | None = None
                       ) -> tuple[Array | None, Array, Array | None]:
        torch = self._torch
        x, weight, kept, activation, slope, has_bias = saved
        if activation == "relu":
            grad = torch.ops.aten.threshold_backward(grad_output, kept, 0)
        else:
            grad = activation_backward(self.xp, grad_output, kept, activation, slope)
        inputs, flat_grad = x, grad
        if inputs.ndim > 2:
            inputs, flat_grad = inputs.reshape(-1, weight.shape[0]), grad.reshape(-1, weight.shape[1])
        if _fits(weight_grad_out, weight):
            grad_weight = torch.mm(inputs.T, flat_grad, out=weight_grad_out)
        else:
            grad_weight = inputs.T @ flat_grad
        grad_bias = None
        if has_bias:
            grad_bias = (torch.sum(flat_grad, 0, out=bias_grad_out) if _fits(bias_grad_out, flat_grad[0])
                         else flat_grad.sum(0))
        grad_input = grad @ weight.T if input_grad else None
        return grad_input, grad_weight, grad_bias

    def softmax_cross_entropy(self, logits: Array, labels: Array, *, grad_scale: float | Array = 1.0,
                              metrics: Array | None = None, with_grad: bool = True
                              ) -> tuple[Array, Array | None, Array | None]:
        torch, aten = self._torch, self._torch.ops.aten
        z, index = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        if index.dtype != torch.int64:
            index = index.long()
        log_probs = torch.log_softmax(z, 1)
        loss, total_weight = aten.nll_loss_forward(log_probs, index, None, 1, -100)  # 1: the mean
        grad = None
        if with_grad:  # the kernels of PyTorch's own backward pass: no one-hot array
            scale = torch.full((), grad_scale, dtype=loss.dtype, device=loss.device)
            grad = aten.nll_loss_backward(scale, log_probs, index, None, 1, -100, total_weight)
            grad = aten._log_softmax_backward_data(grad, log_probs, 1, log_probs.dtype).reshape(logits.shape)
        if metrics is not None:
            correct = (z.argmax(1) == index).sum()
            metrics = self.add_step_metrics(metrics, loss, correct, logits.shape[0])
        return loss, grad, metrics

    def add_step_metrics(self, metrics: Array, loss: Array, correct: Array, examples: int) -> Array:
        torch = self._torch
        part = torch.stack([loss.to(metrics.dtype) * examples, correct.to(metrics.dtype),
                            (~torch.isfinite(loss)).to(metrics.dtype), torch.zeros_like(metrics[0])])
        return metrics.add_(part)

    def close_step_metrics(self, metrics: Array) -> Array:
        metrics[3].add_(metrics[2] == 0)
        return metrics

    def multi_tensor_sgd(self, params: Sequence[Array], grads: Sequence[Array],
                         momentum_buffers: Sequence[Array] | None = None, *, lr: float | Array, momentum: float = 0.0,
                         nesterov: bool = False, weight_decay: float = 0.0
                         ) -> tuple[Sequence[Array], Sequence[Array] | None]:
        if not isinstance(lr, (int, float)) or self._torch.compiler.is_compiling():  # compiled: Inductor fuses
            return super().multi_tensor_sgd(params, grads, momentum_buffers, lr=lr, momentum=momentum,
                                            nesterov=nesterov, weight_decay=weight_decay)
        params_, grads_, buffers_ = _lists(params, grads, momentum_buffers)
        with self.activate():
            # torch.optim.SGD(fused=True)'s kernel; our momentum buffers start at zero, which is its first step
            self._torch._fused_sgd_(params_, grads_, buffers_ or [], weight_decay=weight_decay, momentum=momentum,
                                    lr=lr, dampening=0.0, nesterov=nesterov, maximize=False, is_first_step=False)
        return params, momentum_buffers

    def multi_tensor_adam(self, params: Sequence[Array], grads: Sequence[Array], exp_avgs: Sequence[Array],
                          exp_avg_sqs: Sequence[Array], *, lr: float | Array, step: int | Array, beta1: float,
                          beta2: float, eps: float, weight_decay: float = 0.0, decoupled_weight_decay: bool = False
                          ) -> tuple[Sequence[Array], Sequence[Array], Sequence[Array]]:
        if not all(isinstance(v, (int, float)) for v in (lr, step)) or self._torch.compiler.is_compiling():
            return super().multi_tensor_adam(params, grads, exp_avgs, exp_avg_sqs, lr=lr, step=step, beta1=beta1,
                                             beta2=beta2, eps=eps, weight_decay=weight_decay,
                                             decoupled_weight_decay=decoupled_weight_decay)
        torch = self._torch
        params_, grads_, avgs, avg_sqs = _lists(params, grads, exp_avgs, exp_avg_sqs)
        with self.activate():
            steps = [torch.full((), float(step), dtype=torch.float32, device=self.device)] * len(params_)
            fused = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
            fused(params_, grads_, avgs, avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                  weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
        return params, exp_avgs, exp_avg_sqs

    def multi_tensor_scale(self, arrays: list[Array], factor: float | Array) -> list[Array]:
        if isinstance(arrays, FlatTensors) and arrays.flat is not None:
            arrays.flat.mul_(factor)
        else:
            self._torch._foreach_mul_(list(arrays), factor)
        return arrays

    def tensor_norms(self, arrays: Sequence[Array], *, add_to: Array | None = None) -> Array:
        norms = self._torch.stack(self._torch._foreach_norm(list(arrays)))
        return norms if add_to is None else add_to.add_(norms)

    def compile_function(self, function: Callable[..., Any], *, static_argnums: Sequence[int] = (),
                         donate_argnums: Sequence[int] = ()) -> Callable[..., Any]:
        """``torch.compile`` (Inductor; TorchDynamo specializes on Python values by itself, and PyTorch's tensors
        are updated in place, so the two jit options do not apply)."""
        return self._torch.compile(function, dynamic=False)

    def flat_buffer(self, shapes: Sequence[tuple[int, ...]], dtype: DType) -> tuple[Array, list[Array]]:
        flat = self._torch.zeros(sum(math.prod(shape) for shape in shapes), dtype=dtype, device=self.device)
        return flat, flat_views(self.xp, flat, shapes)

    def set_scalar(self, scalar: Array | None, value: float) -> Array:
        if scalar is None:
            return super().set_scalar(scalar, value)
        return scalar.fill_(value)

    def conv2d_forward(self, x: Array, weight: Array, bias: Array | None, *, stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int]) -> tuple[Array, tuple[Any, ...]]:
        """PyTorch's own convolution kernels (oneDNN on CPU, cuDNN on CUDA)."""
        y = self._torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation)
        return y, (x, weight, tuple(stride), tuple(padding), tuple(dilation))

    def conv2d_backward(self, grad_output: Array, saved: tuple[Any, ...], *, bias: bool, input_grad: bool = True
                        ) -> tuple[Array | None, Array, Array | None]:
        x, weight, stride, padding, dilation = saved
        bias_sizes = [weight.shape[0]] if bias else None
        grad_input, grad_weight, grad_bias = self._torch.ops.aten.convolution_backward(
            grad_output, x, weight, bias_sizes, list(stride), list(padding), list(dilation), False, [0, 0], 1,
            [input_grad, True, bias])
        return grad_input, grad_weight, grad_bias

    # The LSTM and GRU steps with PyTorch's in-place operations (backends/torch_cells.py).
    cells_write_out = True

    def lstm_cell_forward(self, a: Array, h_prev: Array | None, c_prev: Array | None, weight_hh: Array
                          ) -> tuple[Array, Array, torch_cells.LstmCache]:
        with self.activate():
            return torch_cells.lstm_cell_forward(self._torch, a, h_prev, c_prev, weight_hh)

    def lstm_cell_backward(self, dh: Array, dc: Array | None, cache: torch_cells.LstmCache, weight_hh: Array, *,
                           pass_back: bool, out: Array | None = None, weight_hh_t: Array | None = None
                           ) -> tuple[Array, Array | None, Array | None]:
        with self.activate():
            return torch_cells.lstm_cell_backward(self._torch, dh, dc, cache, weight_hh, pass_back, out, weight_hh_t)

    def gru_cell_forward(self, a: Array, h_prev: Array | None, weight_hh: Array, bias_hn: Array
                         ) -> tuple[Array, torch_cells.GruCache]:
        with self.activate():
            return torch_cells.gru_cell_forward(self._torch, a, h_prev, weight_hh, bias_hn)

    def gru_cell_backward(self, dh: Array, cache: torch_cells.GruCache, weight_hh: Array, *, pass_back: bool,
                          out: tuple[Array | None, Array | None] | None = None, weight_hh_t: Array | None = None
                          ) -> tuple[Array, Array, Array | None]:
        with self.activate():
            return torch_cells.gru_cell_backward(self._torch, dh, cache, weight_hh, pass_back, out, weight_hh_t)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self._torch.mps.synchronize()

    def available_memory(self) -> int | None:
        torch = self._torch
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free) + int(torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))
        return super().available_memory()  # the CPU, and Apple GPUs, which share the host's memory

    def memory_stats(self) -> dict[str, int]:
        torch = self._torch
        if self.device.type == "cuda":
            return {
                "allocated_bytes": torch.cuda.memory_allocated(self.device),
                "peak_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
                "reserved_bytes": torch.cuda.memory_reserved(self.device),
            }
        if self.device.type == "mps":
            return {"allocated_bytes": torch.mps.current_allocated_memory()}
        return {}


def _fits(out: Array | None, like: Array) -> bool:
    """Whether ``out`` can take a result shaped and typed as ``like`` (a contiguous tensor on its device)."""
    return (out is not None and out.shape == like.shape and out.dtype == like.dtype and out.device == like.device
            and out.is_contiguous())


def _lists(*lists: Sequence[Array] | None) -> list[Any]:
    """One-element lists of the flat tensors when every list is ``FlatTensors`` (one pass), else the lists (as
    lists; None stays None)."""
    given = [lst for lst in lists if lst is not None]
    if given and all(isinstance(lst, FlatTensors) and lst.flat is not None for lst in given):
        return [[lst.flat] if isinstance(lst, FlatTensors) else None for lst in lists]
    return [None if lst is None else list(lst) for lst in lists]


def _import_torch(name: str) -> ModuleType:
    try:
        import torch  # lazy: optional library
    except ImportError:
        raise BackendUnavailable(name, "PyTorch is not installed (pip install 'backprop[torch]')") from None
    try:
        import array_api_compat.torch  # noqa: F401  # lazy: imports PyTorch
    except ImportError as exc:  # pragma: no cover - depends on versions
        raise BackendUnavailable(name, f"array_api_compat cannot wrap this PyTorch: {exc}") from None
    return torch


def load(device: str | None) -> Backend:
    """``torch`` alone picks the best device: CUDA, then MPS, then CPU."""
    name = f"torch:{device}" if device else "torch"
    torch = _import_torch(name)
    if device is None:
        for candidate in ("cuda:0", "mps"):
            try:
                return load(candidate)
            except BackendUnavailable:
                pass
        device = "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise BackendUnavailable(name, f"{device!r} is not a PyTorch device; expected cpu, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            reason = ("this PyTorch was built without CUDA" if torch.version.cuda is None and torch.version.hip is None
                      else "no CUDA device is visible (driver missing or too old, or no GPU)")
            raise BackendUnavailable(name, reason)
        index = dev.index or 0
        count = torch.cuda.device_count()
        if index >= count:
            raise BackendUnavailable(name, f"CUDA device {index} does not exist ({count} visible)")
        dev = torch.device("cuda", index)
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise BackendUnavailable(name, "Apple MPS is not available (needs macOS on Apple silicon)")
    elif dev.type != "cpu":
        raise BackendUnavailable(name, f"unsupported PyTorch device type {dev.type!r}")
    _probe(torch, dev, name)
    return TorchBackend(dev)


def _probe(torch: ModuleType, dev: Device, name: str) -> None:
    """Use ``dev`` as training will, not just import: an allocation, a kernel and a reduction, a matrix product
    (cuBLAS on CUDA) and a random draw from a generator on the device (as ``TorchRandom``). ``BackendUnavailable``
    naming the first step that fails, and why."""
    def kernel():
        return float((torch.arange(4, device=dev, dtype=torch.float32) * 2).sum().item()) == 12.0

    def matmul():
        ones = torch.ones((2, 2), device=dev, dtype=torch.float32)
        return float(torch.matmul(ones, ones).sum().item()) == 8.0

    def draw():
        generator = torch.Generator(device=dev)
        generator.manual_seed(0)
        sample = torch.rand((4,), generator=generator, device=dev, dtype=torch.float32)
        return 0.0 <= float(sample.min().item()) and float(sample.max().item()) < 1.0

    matrix_product = "a cuBLAS matrix product" if dev.type == "cuda" else "a matrix product"
    for what, step in (("an allocation and a kernel", kernel), (matrix_product, matmul), ("a random draw", draw)):
        try:
            right = step()
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(name, f"{what} failed: {text}") from None
        if not right:
            raise BackendUnavailable(name, f"{what} gave a wrong result")


def cuda_gpu_count() -> int:
    """The CUDA GPUs PyTorch sees, asked only where an NVIDIA driver is installed (importing PyTorch takes
    seconds, and without the driver it has none); 0 when PyTorch or the driver is missing. No CUDA context is
    opened on any GPU: ``is_available`` initializes the driver only (``cudaGetDeviceCount``, hence ``cuInit``),
    ``device_count`` asks NVML where it can."""
    if not nvidia_driver_loads() or importlib.util.find_spec("torch") is None:
        return 0
    try:
        import torch  # lazy: optional library

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def cuda_rank_devices(device: str | None) -> int | None:
    """The torch family's ``rank_devices``: with ``torch:cuda`` or ``torch:cuda:N`` (N ignored), the ranks of a
    data-parallel job spread over the CUDA GPUs PyTorch sees (``cuda_gpu_count``, which opens no CUDA context),
    and ``BackendSetupError`` when it sees none; ``torch`` alone spreads them when there is a
    CUDA GPU (it would pick ``cuda:0`` in every rank), else every rank takes the device it picks. ``torch:cpu``
    and ``torch:mps``: None, every rank on that device."""
    kind = None if device is None else device.partition(":")[0].strip()
    if kind not in (None, "cuda"):
        return None
    count = cuda_gpu_count()
    if count > 0:
        return count
    if kind is None:
        return None
    if not nvidia_driver_loads():
        why = "no NVIDIA driver is visible (libcuda cannot be loaded)"
    elif importlib.util.find_spec("torch") is None:
        why = "PyTorch is not installed"
    else:
        why = "PyTorch sees no CUDA GPU (a PyTorch built without CUDA, or CUDA_VISIBLE_DEVICES hides them)"
    raise BackendSetupError(f"--backend torch:{device}: {why}")


def listed_devices() -> list[str]:
    """The devices shown in ``backprop backends`` and tested; probing imports nothing extra when torch is absent."""
    devices = ["cpu", "cuda:0", "mps"]
    try:
        if importlib.util.find_spec("torch") is None:
            return devices
        import torch  # lazy: optional library

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices[1:2] = [f"cuda:{i}" for i in range(max(count, 1))]
    except Exception:
        pass
    return devices
