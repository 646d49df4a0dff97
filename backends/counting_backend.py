"""A test backend that counts array-library calls and catches host synchronizations: the CPU's stand-in for a
GPU profiler.

On a GPU each array operation is a kernel launch, and at the sizes of a training step the launches, not the
arithmetic, set the time; a read of a device value into Python (``float(x)``, ``bool(x)``, ``x.item()``,
``backend.to_host``) stalls the host until the device has caught up, and a captured program (a CUDA Graph)
cannot contain one. Neither shows on a CPU. This backend counts both, on the CPU:

* every function of its namespace and every operator on its arrays is one **call** (a kernel), except what
  runs no kernel on a GPU: views (basic indexing with integers and slices, ``reshape``, ``matrix_transpose``,
  ``permute_dims``, ``expand_dims``, ``squeeze``, ``.T``/``.mT``), metadata (``shape``, ``dtype``,
  ``isdtype``, ``result_type``, ``finfo``...) and ``asarray`` of one of its own arrays that changes nothing;
* a call of a backend **capability** (``dense_forward``, ``softmax_cross_entropy``, ``multi_tensor_adam``,
  ``add_scaled``...) counts as the kernels the CuPy backend launches for it (``cupy_backend.KERNEL_LAUNCHES``,
  the CuPy implementation's own statement of them), and the operations it runs inside (the portable default
  here) are not counted again;
* every read of a value into Python (``float``, ``int``, ``bool``, ``operator.index``, ``item``, ``tolist``,
  ``__array__``, ``__dlpack__``, iteration, ``to_host``) is a **sync**, and every ``from_host`` a **transfer**,
  each recorded with a label that the test sets (``counter.label``: "step 3").

The arrays are array_api_strict's (on its default device) behind a thin wrapper, as in
``backends/immutable_backend.py``; they may be changed in place (counted). Not a registered family: the tests
register it (``tests/conftest.py``) as ``counting``; ``register()`` does the same for a program of your own.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .array_types import Array, Device, DType, HostArrayLike
from .base import Backend, flat_views
from .cupy_backend import KERNEL_LAUNCHES
from .errors import BackendUnavailable
from .random import Seed
from .registry import BackendFamily, register_backend
from .strict_backend import StrictRandom
from .wrapped_array import WrappedArray, unwrap_arrays, wrap_arrays


class CallCounter:
    """What the backend saw: ``calls`` (kernels), ``syncs`` and ``transfers`` (lists of ``(label, what)``).
    ``label`` is attached to each sync and transfer; ``paused()`` stops counting inside a capability."""

    def __init__(self):
        self.calls = 0
        self.syncs: list[tuple[object, str]] = []
        self.transfers: list[tuple[object, str]] = []
        self.label: object = None
        self._paused = 0

    def reset(self) -> None:
        self.calls = 0
        self.syncs.clear()
        self.transfers.clear()

    def add(self, n: int = 1) -> None:
        if not self._paused:
            self.calls += n

    def sync(self, what: str) -> None:
        if not self._paused:
            self.syncs.append((self.label, what))

    def transfer(self, what: str) -> None:
        if not self._paused:
            self.transfers.append((self.label, what))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1


COUNTER = CallCounter()

# Operators: one kernel each.
_OPERATORS = [f"__{prefix}{name}__" for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
                                                  "and", "or", "xor", "lshift", "rshift") for prefix in ("", "r", "i")]
_OPERATORS += ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__neg__", "__pos__", "__abs__",
               "__invert__"]
# Reads of values into Python: host synchronizations.
_SYNCS = ["__bool__", "__int__", "__float__", "__complex__", "__index__", "__dlpack__"]
# Namespace functions that run no kernel: views and metadata.
_NO_KERNEL = {"reshape", "matrix_transpose", "permute_dims", "expand_dims", "squeeze", "isdtype", "result_type",
              "finfo", "iinfo", "can_cast", "broadcast_shapes", "broadcast_to"}


def _basic_index(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, (int, slice)) for k in keys)


class CountingArray(WrappedArray):
    """An array_api_strict array whose every operation is counted (see the module docstring)."""

    __slots__ = ()

    def __array_namespace__(self, /, *, api_version: str | None = None) -> types.ModuleType | None:
        return NAMESPACE

    def __getitem__(self, key: Any) -> CountingArray:
        if not _basic_index(key):
            COUNTER.add()
        return _wrap(self._inner[_unwrap(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        COUNTER.add()
        self._inner[_unwrap(key)] = _unwrap(value)

    def __iter__(self) -> Iterator[CountingArray]:
        COUNTER.sync("iteration")
        return iter([_wrap(self._inner[i]) for i in range(self.shape[0])])

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        COUNTER.sync("__array__")
        return np.asarray(self._inner.to_device(_CPU), dtype=dtype)

    def item(self) -> Any:
        COUNTER.sync("item")
        return np.asarray(self._inner).item()

    def tolist(self) -> Any:
        COUNTER.sync("tolist")
        return np.asarray(self._inner).tolist()

    def to_device(self, device: Device, /, *, stream: Any = None) -> CountingArray:
        return _wrap(self._inner.to_device(device))

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._inner.__dlpack_device__()

    def __repr__(self) -> str:
        return f"CountingArray({self._inner!r})"


def _counted(name: str) -> Callable[..., Any]:
    def method(self: CountingArray, *args: Any, **kwargs: Any) -> Any:
        COUNTER.add()
        result = getattr(self._inner, name)(*map(_unwrap, args), **kwargs)
        if name.startswith("__i"):  # in place: the wrapper keeps its (changed) inner array
            return self
        return _wrap(result)

    method.__name__ = name
    return method


def _synced(name: str) -> Callable[..., Any]:
    def method(self: CountingArray, *args: Any, **kwargs: Any) -> Any:
        COUNTER.sync(name)
        return getattr(self._inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in _OPERATORS:
    setattr(CountingArray, _name, _counted(_name))
for _name in _SYNCS:
    setattr(CountingArray, _name, _synced(_name))


def _wrap(value: Any) -> Any:
    return wrap_arrays(value, _STRICT_ARRAY, CountingArray)


def _unwrap(value: Any) -> Any:
    return unwrap_arrays(value, CountingArray)


def _counted_function(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    free = name in _NO_KERNEL

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if name == "asarray" and args and type(args[0]) is CountingArray:
            wanted = kwargs.get("dtype")
            free_copy = kwargs.get("copy") is not True and (wanted is None or wanted == args[0].dtype)
            if not free_copy:
                COUNTER.add()
        elif not free:
            COUNTER.add()
        return _wrap(function(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    return call


class _Namespace(types.ModuleType):
    """array_api_strict's namespace (or its ``linalg``/``fft``), its calls counted."""

    def __init__(self, name: str, inner: types.ModuleType):
        super().__init__(name, "array_api_strict, every call counted")
        self._strict = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._strict, name)
        if isinstance(value, types.ModuleType):
            value = _Namespace(f"{self.__name__}.{name}", value)
        elif callable(value) and not isinstance(value, type):
            value = _counted_function(name, value)
        setattr(self, name, value)
        return value


_STRICT_ARRAY: type | None = None
_CPU: Device = None
NAMESPACE: _Namespace | None = None


class CountingRandom(StrictRandom):
    """Draws on the host (array_api_strict has no generator) and counts each draw as one kernel, not as a
    transfer: on a GPU the generator runs there."""

    def _uniform01(self, shape, dtype):
        with COUNTER.paused():
            result = super()._uniform01(shape, dtype)
        COUNTER.add()
        return result

    def _normal01(self, shape, dtype):
        with COUNTER.paused():
            result = super()._normal01(shape, dtype)
        COUNTER.add()
        return result

    def permutation(self, n: int) -> Array:
        with COUNTER.paused():
            result = super().permutation(n)
        COUNTER.add()
        return result


def _capability(name: str, launches: Callable[..., int]) -> Callable[..., Any]:
    def method(self: CountingBackend, *args: Any, **kwargs: Any) -> Any:
        with COUNTER.paused():
            result = getattr(Backend, name)(self, *args, **kwargs)
        COUNTER.add(launches(*args, **kwargs))
        return result

    method.__name__ = name
    return method


class CountingBackend(Backend):
    library = "counting"
    permutes_epochs = True  # as on a GPU (CuPy): the count stands in for one

    def __init__(self):
        import array_api_strict  # lazy: optional library (a test dependency)

        self._strict = array_api_strict
        self.counter = COUNTER
        super().__init__("counting", NAMESPACE, _CPU, device_name="CPU (array_api_strict, every call counted)",
                         version=array_api_strict.__version__)

    def owns(self, x: object) -> bool:
        return type(x) is CountingArray

    def to_host(self, x: CountingArray) -> np.ndarray:
        COUNTER.sync("to_host")
        return np.array(x._inner, copy=True)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> CountingArray:
        COUNTER.transfer("from_host")
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        return CountingArray(self._strict.asarray(host_array, dtype=dtype, copy=True))

    def random(self, seed: Seed) -> CountingRandom:
        return CountingRandom(self, seed)

    def flat_buffer(self, shapes: Sequence[tuple[int, ...]], dtype: DType) -> tuple[Array, list[Array]]:
        """Views of one flat array, as NumPy and CuPy make them (array_api_strict's slices and reshapes are
        NumPy views): the multi-tensor updates see ``FlatTensors`` and count as the one kernel they are."""
        with COUNTER.paused():
            flat = self.xp.zeros((sum(math.prod(shape) for shape in shapes),), dtype=dtype)
            return flat, flat_views(self.xp, flat, shapes)

    def scatter_add(self, target: CountingArray, indices: CountingArray, values: CountingArray) -> CountingArray:
        with COUNTER.paused():
            host = self.to_host(target)
            np.add.at(host, self.to_host(indices), self.to_host(values))
            result = self.from_host(host, dtype=target.dtype)
        COUNTER.add()
        return result


def _install_capabilities() -> None:
    for name, launches in KERNEL_LAUNCHES.items():
        if name != "scatter_add":  # above: array_api_strict has none, it runs on the host
            setattr(CountingBackend, name, _capability(name, launches))


def load(device: str | None) -> Backend:
    global _STRICT_ARRAY, _CPU, NAMESPACE
    if device is not None:
        raise BackendUnavailable(f"counting:{device}", "the counting test backend has one device; name it "
                                 "'counting'")
    try:
        import array_api_strict  # lazy: optional library (a test dependency)
    except ImportError:
        raise BackendUnavailable("counting", "array_api_strict is not installed (pip install array-api-strict)"
                                 ) from None
    if NAMESPACE is None:
        _STRICT_ARRAY = type(array_api_strict.asarray(0))
        _CPU = array_api_strict.Device("CPU_DEVICE")
        NAMESPACE = _Namespace("counting", array_api_strict)
        _install_capabilities()
    return CountingBackend()


FAMILY = BackendFamily("counting", load, description="test backend: array_api_strict arrays whose every call is "
                                                     "counted (GPU kernel launches) and every host read recorded")


def register() -> None:
    """Make ``counting`` a backend name (the tests do this; the registry does not list it otherwise)."""
    register_backend(FAMILY, replace=True)
