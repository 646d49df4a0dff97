"""``simulated_cupy:N``: CuPy's device model, simulated on the CPU with array_api_strict, for tests.

CuPy works on a *current device*, and array_api_compat does not change that:
``zeros``, ``ones``, ``full``, ``empty``, ``arange``, ``eye``, ``linspace`` and
the ``*_like`` functions ignore ``device=`` (array-api-compat issue #337), and
every kernel runs on the current device: an array of another device is an error
there ("Array device must be same as the current device"). So on ``cupy:1``
everything must run inside ``with cupy.cuda.Device(1)``, which is what
``Backend.activate()`` does, and no GPU is available to check that here.

This backend behaves the same way on array_api_strict's devices (simulated GPU
0 is ``CPU_DEVICE``, 1 is ``device1``, 2 is ``device2``), and simulated GPU 0
is current unless a backend is activated:

* the creation functions above ignore ``device=`` and use the current device;
  ``asarray`` honours ``device=`` (as ``array_api_compat.cupy`` does) and
  otherwise puts the array on the current device, moving an array of another
  device there, as ``cupy.asarray`` does;
* every other function and operator raises ``ValueError`` when an array it is
  given is not on the current device (stricter than CuPy on a machine where
  peer access lets some of these run, slowly, and leave their result on the
  current device); a view (``x[1:, ::2]``) is not checked, as on CuPy, but
  ``reshape`` and every other function are, even where CuPy would make a view;
* reading values to the host (``float(x)``, ``backend.to_host``) works from
  any device, as ``cupy.asnumpy`` does.

The arrays are a subclass of ``array_api_strict.Array`` whose
``__array_namespace__`` is this module's namespace, so
``array_api_compat.array_namespace(x)`` (what optimizers and losses use) and
``backend.xp`` are the same simulated namespace, and mixing these arrays with
plain array_api_strict arrays is refused like mixing two libraries.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import array_api_strict
import numpy as np
from array_api_strict._array_object import Array

from .array_types import DType, HostArrayLike
from .base import Backend, ThreadLimit
from .errors import BackendUnavailable
from .numpy_backend import NumpyBackend
from .random import Seed
from .strict_backend import StrictRandom

#: Simulated GPU number -> the array_api_strict device that plays it.
DEVICES = (array_api_strict.Device("CPU_DEVICE"), array_api_strict.Device("device1"),
           array_api_strict.Device("device2"))

_current: contextvars.ContextVar[int] = contextvars.ContextVar("simulated_cupy_current_device", default=0)


def current_device() -> int:
    """The simulated GPU that is current (0 unless a backend is activated), as ``cupy.cuda.runtime.getDevice``."""
    return _current.get()


@contextlib.contextmanager
def use_device(index: int) -> Iterator[None]:
    """``with use_device(1):`` makes simulated GPU 1 current, as ``with cupy.cuda.Device(1):``."""
    token = _current.set(index)
    try:
        yield
    finally:
        _current.reset(token)


def _index(device: Any) -> int:
    return DEVICES.index(device)


class SimulatedCupyArray(Array):
    """An array_api_strict array that belongs to the simulated namespace."""

    __slots__ = ()

    def __array_namespace__(self, /, *, api_version: str | None = None) -> types.ModuleType:
        return namespace

    def __getitem__(self, key: Any, /) -> SimulatedCupyArray:
        # A view (integers, slices) runs no kernel, on CuPy either; indexing with an array does.
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, Array) for k in keys):
            _require_current((self, *keys))
        return Array.__getitem__(self, key)

    def __iter__(self) -> Iterator[SimulatedCupyArray]:
        if self.ndim != 1:
            raise TypeError("only 1-D arrays can be iterated over")
        _require_current((self,))
        return iter([self[i] for i in range(self.shape[0])])


def _require_current(values: Any) -> None:
    """Raise as CuPy does when a kernel gets an array of a device that is not current (or a foreign array)."""
    current = _current.get()
    for value in values:
        if isinstance(value, (list, tuple)):
            _require_current(value)
        elif isinstance(value, Array):
            if not isinstance(value, SimulatedCupyArray):
                raise TypeError("simulated_cupy: got a plain array_api_strict array; arrays of two libraries "
                                "cannot be mixed")
            if value._device != DEVICES[current]:
                raise ValueError(f"Array device must be same as the current device: array device = "
                                 f"{_index(value._device)} while current = {current} (simulated_cupy: run this "
                                 f"inside the backend's activate())")


def _adopt(result: Any) -> Any:
    """Results of array_api_strict functions as simulated arrays (tuples and named tuples too)."""
    if isinstance(result, Array) and not isinstance(result, SimulatedCupyArray):
        return SimulatedCupyArray._new(result._array, device=result._device)
    if isinstance(result, tuple):
        items = [_adopt(item) for item in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if isinstance(result, list):
        return [_adopt(item) for item in result]
    return result


# -- the namespace -------------------------------------------------------------
# Functions that allocate on the current device whatever device= says (array_api_compat.cupy's behaviour).
_ON_CURRENT_DEVICE = {"arange", "empty", "eye", "full", "linspace", "ones", "zeros"}
_LIKE = {"empty_like", "full_like", "ones_like", "zeros_like"}
# Functions that look at dtypes or shapes only: no kernel, no device.
_NO_KERNEL = {"broadcast_shapes", "can_cast", "finfo", "iinfo", "isdtype", "result_type"}
# Array methods left as they are: host reads (which CuPy does from any device) and metadata run no kernel;
# __getitem__ and __iter__ check for themselves (above).
_ARRAY_METHODS_UNCHECKED = {"__new__", "__reduce__", "__repr__", "__buffer__", "__array__", "__bool__",
                            "__complex__", "__float__", "__int__", "__index__", "__dlpack__", "__iter__",
                            "__array_namespace__", "__getitem__"}


def _on_current_device(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs["device"] = DEVICES[_current.get()]  # whatever the caller asked for
        return _adopt(function(*args, **kwargs))

    return create


def _like(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def create(x: Any, /, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(x, SimulatedCupyArray):
            raise TypeError(f"simulated_cupy.{function.__name__}: expected a simulated_cupy array, "
                            f"got {type(x).__name__}")
        kwargs["device"] = DEVICES[_current.get()]
        return _adopt(function(x, *args, **kwargs))

    return create


def asarray(obj: object, /, *, dtype: DType | None = None, device: Any = None, copy: bool | None = None
            ) -> SimulatedCupyArray:
    """``device=`` honoured (``array_api_compat.cupy.asarray`` enters that device); otherwise the current device,
    to which an array of another device is moved (copied), as ``cupy.asarray`` does."""
    target = DEVICES[_current.get()] if device is None else device
    if isinstance(obj, Array):
        if not isinstance(obj, SimulatedCupyArray):
            raise TypeError("simulated_cupy.asarray: got a plain array_api_strict array; arrays of two "
                            "libraries cannot be mixed")
        if obj.device == target and not copy and dtype in (None, obj.dtype):
            return obj  # as cupy.asarray: the array itself
        if obj.device != target:
            if copy is False:
                raise ValueError("Unable to avoid copy while moving an array to another device")
            obj, copy = obj.to_device(target), None
    return _adopt(array_api_strict.asarray(obj, dtype=dtype, device=target, copy=copy))


def _checked(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        _require_current(args)
        _require_current(kwargs.values())
        return _adopt(function(*args, **kwargs))

    return run


def _wrap_function(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if name in _ON_CURRENT_DEVICE:
        return _on_current_device(function)
    if name in _LIKE:
        return _like(function)
    if name in _NO_KERNEL:
        return function
    return _checked(function)


class _Info:
    """``__array_namespace_info__()``: array_api_strict's, with the current device as the default device."""

    def __init__(self):
        self._info = array_api_strict.__array_namespace_info__()

    def __getattr__(self, name):
        return getattr(self._info, name)

    def default_device(self):
        return DEVICES[_current.get()]

    def devices(self):
        return DEVICES


def _build_namespace() -> types.ModuleType:
    module = types.ModuleType("simulated_cupy", "array_api_strict under CuPy's current-device model")
    for name in array_api_strict.__all__:
        value = getattr(array_api_strict, name)
        if name == "asarray":
            value = asarray
        elif name == "__array_namespace_info__":
            value = _Info
        elif callable(value) and isinstance(value, types.FunctionType):
            value = _wrap_function(name, value)
        setattr(module, name, value)
    for name in ("linalg", "fft"):
        extension = getattr(array_api_strict, name, None)
        if extension is not None:
            wrapped = types.ModuleType(f"simulated_cupy.{name}")
            for attr in getattr(extension, "__all__", dir(extension)):
                value = getattr(extension, attr)
                if isinstance(value, types.FunctionType):
                    setattr(wrapped, attr, _checked(value))
            setattr(module, name, wrapped)
    return module


def _checked_method(name: str) -> Callable[..., Any]:
    method = getattr(Array, name)

    @functools.wraps(method)
    def run(self: SimulatedCupyArray, *args: Any) -> Any:
        _require_current((self, *args))
        return _adopt(method(self, *args))

    return run


for _name in [n for n, v in vars(Array).items() if n.startswith("__") and callable(v)]:
    if _name not in _ARRAY_METHODS_UNCHECKED and _name not in ("__init__", "__init_subclass__", "__subclasshook__",
                                                               "__class_getitem__"):
        setattr(SimulatedCupyArray, _name, _checked_method(_name))

namespace = _build_namespace()


# -- the backend ---------------------------------------------------------------
class SimulatedCupyBackend(Backend):
    """Simulated GPU ``index``: its arrays live on ``DEVICES[index]``; ``activate()`` makes it current."""

    library = "simulated_cupy"

    def __init__(self, index: int):
        self.index = index
        self._cpu = array_api_strict.Device("CPU_DEVICE")
        super().__init__(f"simulated_cupy:{index}", namespace, DEVICES[index],
                         device_name=f"CPU (simulated GPU {index}: array_api_strict {DEVICES[index]._device!r}; "
                                     f"GPU 0 is current unless activated)",
                         version=array_api_strict.__version__)

    def activate(self) -> AbstractContextManager[None]:
        return use_device(self.index)

    def owns(self, x: object) -> bool:
        return isinstance(x, SimulatedCupyArray) and x.device == self.device

    # Like CupyBackend: each of these enters the device itself.
    def asarray(self, obj: object, dtype: DType | None = None) -> SimulatedCupyArray:
        with self.activate():
            return self.xp.asarray(obj, dtype=dtype)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> SimulatedCupyArray:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        with self.activate():
            return self.xp.asarray(host_array, dtype=dtype, copy=True)  # a copy, never a view of host memory

    def to_host(self, x: SimulatedCupyArray) -> np.ndarray:
        return np.array(Array.to_device(x, self._cpu), copy=True)  # cupy.asnumpy works from any device

    def random(self, seed: Seed) -> StrictRandom:
        return StrictRandom(self, seed)

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        return NumpyBackend().limit_threads(threads)  # it computes with NumPy underneath

    def scatter_add(self, target: SimulatedCupyArray, indices: SimulatedCupyArray,
                    values: SimulatedCupyArray) -> SimulatedCupyArray:
        result = self.to_host(target).copy()
        np.add.at(result, self.to_host(indices), self.to_host(values))
        with self.activate():
            target[...] = self.from_host(result, dtype=target.dtype)
        return target


def load(device: str | None) -> Backend:
    name = f"simulated_cupy:{device}" if device is not None else "simulated_cupy"
    label = device if device is not None else "0"
    if label not in [str(i) for i in range(len(DEVICES))]:
        raise BackendUnavailable(name, f"expected a simulated GPU number 0-{len(DEVICES) - 1}, got {label!r}")
    return SimulatedCupyBackend(int(label))
