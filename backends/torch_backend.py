"""PyTorch tensors through ``array_api_compat.torch``: CPU, CUDA (and ROCm) and Apple MPS.

PyTorch is imported only when this backend is asked for.
"""

from __future__ import annotations

import numpy as np

from .base import Backend
from .errors import BackendUnavailable
from .random import DeviceRandom, seed_to_int


class TorchRandom(DeviceRandom):
    def __init__(self, backend, seed):
        super().__init__(backend, seed)
        import torch

        self._torch = torch
        self._generator = torch.Generator(device=backend.device)
        self._generator.manual_seed(seed_to_int(seed))

    def _uniform01(self, shape, dtype):
        return self._torch.rand(shape, generator=self._generator, dtype=dtype, device=self.backend.device)

    def _normal01(self, shape, dtype):
        return self._torch.randn(shape, generator=self._generator, dtype=dtype, device=self.backend.device)

    def permutation(self, n):
        return self._torch.randperm(n, generator=self._generator, device=self.backend.device)


class TorchBackend(Backend):
    library = "torch"

    def __init__(self, device):
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

    @property
    def supports_float64(self) -> bool:
        return self.device.type != "mps"

    def activate(self):
        # PyTorch ops follow their tensors' device; the current CUDA device matters for what does not name one
        # (a plain "cuda" device, CUDA libraries and kernels called from other libraries). UNTESTED on a GPU.
        if self.device.type == "cuda":
            return self._torch.cuda.device(self.device)
        return super().activate()

    def owns(self, x) -> bool:
        return isinstance(x, self._torch.Tensor) and x.device == self.device

    def from_host(self, host_array, dtype=None):
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        tensor = self._torch.from_numpy(np.asarray(host_array, order="C"))  # keeps 0-d arrays 0-d
        return tensor.to(device=self.device, dtype=dtype, copy=True)

    def to_host(self, x):
        return x.detach().cpu().numpy().copy() if x.device.type == "cpu" else x.detach().cpu().numpy()

    def random(self, seed):
        return TorchRandom(self, seed)

    def limit_threads(self, threads):
        self._torch.set_num_threads(max(1, int(threads)))
        return True

    # Updates in place: tensors are always writeable.
    def add_scaled(self, target, source, alpha=1.0, *, beta=1.0):
        if beta != 1.0:
            target.mul_(beta)
        return target.add_(source, alpha=alpha)

    def scale(self, target, factor):
        return target.mul_(factor)

    def at_set(self, x, index, values):
        x[index] = values
        return x

    def at_add(self, x, index, values):
        x[index] += values
        return x

    def scatter_add(self, target, indices, values):
        return target.index_add_(0, indices, values)

    def conv2d_forward(self, x, weight, bias, *, stride, padding, dilation):
        """PyTorch's own convolution kernels (oneDNN on CPU, cuDNN on CUDA)."""
        y = self._torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation)
        return y, (x, weight, tuple(stride), tuple(padding), tuple(dilation))

    def conv2d_backward(self, grad_output, saved, *, bias, input_grad=True):
        x, weight, stride, padding, dilation = saved
        bias_sizes = [weight.shape[0]] if bias else None
        grad_input, grad_weight, grad_bias = self._torch.ops.aten.convolution_backward(
            grad_output, x, weight, bias_sizes, list(stride), list(padding), list(dilation), False, [0, 0], 1,
            [input_grad, True, bias])
        return grad_input, grad_weight, grad_bias

    def synchronize(self):
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            self._torch.mps.synchronize()

    def available_memory(self):
        torch = self._torch
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free) + int(torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))
        return super().available_memory()  # the CPU, and Apple GPUs, which share the host's memory

    def memory_stats(self):
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


def _import_torch(name):
    try:
        import torch
    except ImportError:
        raise BackendUnavailable(name, "PyTorch is not installed (pip install 'backprop[torch]')") from None
    try:
        import array_api_compat.torch  # noqa: F401
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
    try:  # a real allocation and kernel, not just an import
        probe = torch.arange(4, device=dev, dtype=torch.float32)
        float((probe * 2).sum().item())
    except Exception as exc:
        raise BackendUnavailable(name, f"a test computation failed: {exc}".splitlines()[0]) from None
    return TorchBackend(dev)


def listed_devices() -> list[str]:
    """The devices shown in ``backprop backends`` and tested; probing imports nothing extra when torch is absent."""
    devices = ["cpu", "cuda:0", "mps"]
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return devices
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices[1:2] = [f"cuda:{i}" for i in range(max(count, 1))]
    except Exception:
        pass
    return devices
