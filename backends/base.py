"""The ``Backend`` interface: one array library on one device.

``backprop/`` does all array work through ``backend.xp`` (an array API
namespace from ``array_api_compat``) and calls the methods below only for what
the standard lacks: random numbers, scatter-add, host transfer,
synchronization and memory statistics.
"""

from __future__ import annotations

import numpy as np

from .random import DeviceRandom, Seed


class Backend:
    """An array library bound to one device.

    Subclasses set the attributes in ``__init__`` and implement the methods that
    raise ``NotImplementedError`` here.
    """

    #: Registered family name, such as ``"numpy"`` or ``"torch"``.
    library: str = ""

    def __init__(self, name: str, xp, device, *, device_name: str, version: str):
        self.name = name  # full spec, such as "torch:cuda:0"
        self.xp = xp
        self.device = device
        self.device_name = device_name
        self.version = version
        self.float_dtype = xp.float32

    def __repr__(self) -> str:
        return f"<Backend {self.name} ({self.device_name})>"

    # Backends are shared singletons: copying a layer must not copy its backend.
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    # -- capabilities -------------------------------------------------------
    @property
    def supports_float64(self) -> bool:
        return True

    def owns(self, x) -> bool:
        """True when ``x`` is an array of this library on this device (a cheap check)."""
        raise NotImplementedError

    # -- creation and transfer ----------------------------------------------
    def dtype(self, name_or_dtype):
        """Resolve ``"float32"`` (or a dtype of this library) to this library's dtype."""
        if isinstance(name_or_dtype, str):
            try:
                return getattr(self.xp, name_or_dtype)
            except AttributeError:
                raise TypeError(f"unknown dtype {name_or_dtype!r}; expected a name such as 'float32'") from None
        return name_or_dtype

    def asarray(self, obj, dtype=None):
        """An array on this backend's device (``obj``: a Python scalar, list or array of this library)."""
        return self.xp.asarray(obj, dtype=dtype, device=self.device)

    def from_host(self, host_array, dtype=None):
        """Copy a NumPy array (or anything ``numpy.asarray`` accepts) onto the device.

        Always a copy, never a view: later changes to either side do not affect the other.
        float64 host data becomes the backend's default float32 unless ``dtype`` says otherwise.
        """
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        return self.xp.asarray(host_array, dtype=dtype, device=self.device, copy=True)

    def to_host(self, x) -> np.ndarray:
        """Copy an array of this backend to a NumPy array on the host (a copy, never a view)."""
        raise NotImplementedError

    # -- what the standard lacks --------------------------------------------
    def random(self, seed: Seed) -> DeviceRandom:
        """A seeded generator that draws on the device."""
        raise NotImplementedError

    def scatter_add(self, target, indices, values):
        """``target[indices[i]] += values[i]`` along axis 0, in place, duplicates accumulating.

        Returns ``target``. (Plain ``target[indices] += values`` keeps only one
        of several duplicate indices.)
        """
        raise NotImplementedError

    # -- optional fast paths -------------------------------------------------
    def outer(self, a, b):
        """The outer product of two vectors, a new ``(len(a), len(b))`` array with ``[i, j] = a[i] * b[j]``:
        the weight gradient of a one-example batch. Backends override it with BLAS where that is faster."""
        xp = self.xp
        return xp.reshape(a, (-1, 1)) * xp.reshape(b, (1, -1))

    def add_scaled(self, target, source, alpha: float):
        """``target += alpha * source``, in place, for arrays of the same shape; returns ``target``.

        SGD's weight update. This default makes a temporary ``alpha * source``; backends override it with one
        fused pass (BLAS ``axpy``, ``torch.add_``), which halves the memory traffic of a large update.
        """
        target += alpha * source
        return target

    def conv2d_forward(self, x, weight, bias, *, stride, padding, dilation):
        """A faster 2-D convolution (NCHW), or None when this backend has none.

        ``x``: (N, C, H, W); ``weight``: (O, C, kh, kw); ``bias``: (O,) or None; ``stride``, ``padding``
        (zeros) and ``dilation``: (h, w) pairs. Returns ``(y, saved)``: y (N, O, OH, OW) as PyTorch's
        ``conv2d``, and whatever ``conv2d_backward`` needs. The default returns None and ``Conv2D`` then runs
        its portable im2col path (standard array operations only, in ``backprop/layers/im2col.py``), which is
        what every backend without an override uses.
        """
        return None

    def conv2d_backward(self, grad_output, saved, *, bias: bool, input_grad: bool = True):
        """``(grad_input, grad_weight, grad_bias)`` for a convolution done by ``conv2d_forward``
        (``grad_bias`` is None when ``bias`` is False, ``grad_input`` None when ``input_grad`` is False)."""
        raise NotImplementedError(f"{self.name} has no conv2d fast path")

    def limit_threads(self, threads: int) -> bool:
        """Use at most ``threads`` CPU threads for this library's kernels (BLAS, OpenMP); False when the
        limit could not be applied. Several processes sharing a machine (MPI ranks) need this: oversubscribed
        BLAS threads can make each step tens of times slower."""
        return False

    def synchronize(self) -> None:
        """Wait for all queued work on the device (needed before timing GPU work)."""

    def memory_stats(self) -> dict[str, int]:
        """Memory figures the library reports, in bytes; empty when it reports none."""
        return {}

    def available_memory(self) -> int | None:
        """Bytes free for new arrays where this backend keeps them (None when unknown): the host's available
        memory here; GPU backends report their device's."""
        return host_available_memory()


def host_available_memory() -> int | None:
    """Bytes of host memory a process can still get (None when unknown): the kernel's MemAvailable estimate,
    capped by the cgroup's memory limit (a container's) when one is set."""
    import os

    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:  # not Linux: what POSIX says, where it says it
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:  # cgroup v2 (a container's limit)
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            if text != "max":
                available = min(available, max(0, int(text) - int(current.read().strip())))
    except (OSError, ValueError):
        pass
    return available


def dtype_name(dtype) -> str:
    """A dtype of any library as a plain name: 'float32'."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        text = str(dtype)
        return text.rsplit(".", 1)[-1]


def describe_array(x) -> str:
    """Where an array lives, in words, for error messages: 'a numpy array (cpu)'."""
    import array_api_compat

    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:
        return f"a {type(x).__module__}.{type(x).__name__} (not an array)"
    library = xp.__name__.removeprefix("array_api_compat.")
    try:
        device = array_api_compat.device(x)
    except Exception:  # pragma: no cover - exotic arrays
        device = "?"
    return f"a {library} array on device {device}"
