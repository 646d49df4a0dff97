"""A test backend whose arrays refuse to be changed in place: the guard that keeps backprop right on JAX.

The array API standard does not promise that arrays can be changed, and JAX's cannot: there ``w -= lr * g``
quietly rebinds the name ``w`` (the weights never change) and ``x[i] = v`` fails. Here every such operation
fails at once, on the CPU, with one line naming it: ``x[...] = v`` (``__setitem__``) and every augmented
assignment (``+=``, ``-=``, ``*=``, ``/=``, ``//=``, ``%=``, ``**=``, ``@=``, ``&=``, ``|=``, ``^=``, ``<<=``,
``>>=``). With the whole test suite running on it, the network code is shown to use the arrays that operations,
backend updates (``add_scaled``, ``at_set``, ``scatter_add``) and optimizers return, never to write into one.

It is array_api_strict (on its ``device1``, so an array created without ``device=`` fails too) behind a thin
wrapper, not a patch: its arrays are ``ImmutableArray`` objects that hand every other operation to the
array_api_strict array inside and wrap the result, and its namespace wraps array_api_strict's functions the same
way. array_api_strict itself and the arrays of every other backend are untouched. Its own updates make new
arrays: ``at_set``/``at_add`` update a copy of the inner array (what ``array_api_extra.at`` does for an array it
cannot write into), ``scatter_add`` runs on the host.

Not a registered family: the tests register it (``tests/conftest.py``) as ``immutable``; ``register()`` does the
same for a program of your own.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from .array_types import Array, DType, HostArrayLike
from .base import Backend, ThreadLimit
from .errors import BackendUnavailable
from .numpy_backend import NumpyBackend
from .random import Seed
from .registry import BackendFamily, register_backend
from .strict_backend import StrictRandom
from .wrapped_array import WrappedArray, unwrap_arrays, wrap_arrays


class ImmutableArrayError(TypeError):
    """An in-place operation on an array of the immutable test backend."""


# Augmented assignments; each is refused.
_IN_PLACE = {"__iadd__": "+=", "__isub__": "-=", "__imul__": "*=", "__itruediv__": "/=", "__ifloordiv__": "//=",
             "__imod__": "%=", "__ipow__": "**=", "__imatmul__": "@=", "__iand__": "&=", "__ior__": "|=",
             "__ixor__": "^=", "__ilshift__": "<<=", "__irshift__": ">>="}
# Operators handed to the inner array, results wrapped.
_OPERATORS = [f"__{prefix}{name}__" for name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
                                                  "and", "or", "xor", "lshift", "rshift") for prefix in ("", "r")]
_OPERATORS += ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__neg__", "__pos__", "__abs__",
               "__invert__", "__getitem__", "__bool__", "__int__", "__float__", "__complex__", "__index__",
               "__iter__", "__dlpack__", "__dlpack_device__", "to_device"]


class ImmutableArray(WrappedArray):
    """An array_api_strict array that cannot be changed: every in-place operation raises ``ImmutableArrayError``."""

    __slots__ = ()

    def __array_namespace__(self, /, *, api_version: str | None = None) -> types.ModuleType | None:
        return NAMESPACE

    def __setitem__(self, key: Any, value: Any) -> None:
        raise ImmutableArrayError("x[...] = v (__setitem__) on an array of the immutable test backend: arrays "
                                  "may be immutable (JAX); use a backend update that returns the new array "
                                  "(Backend.at_set, at_add, scatter_add)")

    def __repr__(self) -> str:
        return f"ImmutableArray({self._inner!r})"


def _forwarded(name: str) -> Callable[..., Any]:
    def method(self: ImmutableArray, *args: Any, **kwargs: Any) -> Any:
        return _wrap(getattr(self._inner, name)(*map(_unwrap, args), **kwargs))

    method.__name__ = name
    return method


def _refused(name: str, symbol: str) -> Callable[..., Any]:
    def method(self: ImmutableArray, other: Any) -> Any:
        raise ImmutableArrayError(f"x {symbol} y ({name}) on an array of the immutable test backend: arrays may be "
                                  f"immutable (JAX), where it rebinds the name and the array stays as it was; "
                                  f"use x = x {symbol[:-1]} y, or a backend update that returns the new array "
                                  f"(Backend.add_scaled, scale)")

    method.__name__ = name
    return method


for _name in _OPERATORS:
    setattr(ImmutableArray, _name, _forwarded(_name))
for _name, _symbol in _IN_PLACE.items():
    setattr(ImmutableArray, _name, _refused(_name, _symbol))


def _wrap(value: Any) -> Any:
    return wrap_arrays(value, _STRICT_ARRAY, ImmutableArray)


def _unwrap(value: Any) -> Any:
    return unwrap_arrays(value, ImmutableArray)


def _wrapped_function(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        return _wrap(function(*map(_unwrap, args), **{k: _unwrap(v) for k, v in kwargs.items()}))

    return call


class _Namespace(types.ModuleType):
    """array_api_strict's namespace (or its ``linalg``/``fft``), with array arguments and results wrapped."""

    def __init__(self, name: str, inner: types.ModuleType):
        super().__init__(name, "array_api_strict, with arrays that refuse in-place operations")
        self._strict = inner

    def __getattr__(self, name: str) -> Any:  # only for names not yet looked up: the result is kept as an attribute
        value = getattr(self._strict, name)
        if isinstance(value, types.ModuleType):
            value = _Namespace(f"{self.__name__}.{name}", value)
        elif callable(value) and not isinstance(value, type):
            value = _wrapped_function(value)
        setattr(self, name, value)
        return value


_STRICT_ARRAY: type | None = None
NAMESPACE: _Namespace | None = None


class ImmutableBackend(Backend):
    library = "immutable"

    def __init__(self):
        import array_api_strict  # lazy: optional library (a test dependency)

        self._strict = array_api_strict
        self._cpu = array_api_strict.Device("CPU_DEVICE")
        super().__init__("immutable", NAMESPACE, array_api_strict.Device("device1"),
                         device_name="CPU (array_api_strict 'device1', arrays immutable)",
                         version=array_api_strict.__version__)

    def owns(self, x: Any) -> bool:
        return type(x) is ImmutableArray and x.device == self.device

    def to_host(self, x: Array) -> np.ndarray:
        return np.array(x._inner.to_device(self._cpu), copy=True)

    def from_host(self, host_array: HostArrayLike, dtype: DType | None = None) -> Array:
        host_array = np.asarray(host_array)
        if dtype is None and host_array.dtype == np.float64:
            dtype = self.float_dtype
        on_cpu = self._strict.asarray(host_array, dtype=dtype, copy=True)  # else a view of host memory
        return ImmutableArray(on_cpu.to_device(self.device))

    def random(self, seed: Seed) -> StrictRandom:
        return StrictRandom(self, seed)  # draws on the host, copies with from_host

    def limit_threads(self, threads: int | None) -> ThreadLimit:
        return NumpyBackend().limit_threads(threads)  # it computes with NumPy underneath

    def scatter_add(self, target: Array, indices: Array, values: Array) -> Array:
        result = self.to_host(target)
        np.add.at(result, self.to_host(indices), self.to_host(values))
        return self.from_host(result, dtype=target.dtype)

    def at_set(self, x: Array, index: Any, values: Array | float) -> Array:
        return self._updated_copy(x, index, values, add=False)

    def at_add(self, x: Array, index: Any, values: Array | float) -> Array:
        return self._updated_copy(x, index, values, add=True)

    def _updated_copy(self, x: Array, index: Any, values: Array | float, *, add: bool) -> ImmutableArray:
        """A copy of ``x``'s inner array with the update written into it, wrapped: ``x`` is left alone."""
        inner = self._strict.asarray(x._inner, copy=True)
        key, values = _unwrap(index), _unwrap(values)
        inner[key] = inner[key] + values if add else values
        return ImmutableArray(inner)


def load(device: str | None) -> Backend:
    global _STRICT_ARRAY, NAMESPACE
    if device is not None:
        raise BackendUnavailable(f"immutable:{device}", "the immutable test backend has one device; name it "
                                 "'immutable'")
    try:
        import array_api_strict  # lazy: optional library (a test dependency)
    except ImportError:
        raise BackendUnavailable("immutable", "array_api_strict is not installed (pip install array-api-strict)"
                                 ) from None
    if NAMESPACE is None:
        _STRICT_ARRAY = type(array_api_strict.asarray(0))  # the class array_api_strict keeps private
        NAMESPACE = _Namespace("immutable", array_api_strict)
    return ImmutableBackend()


FAMILY = BackendFamily("immutable", load, description="test backend: array_api_strict arrays that refuse every "
                                                      "in-place operation, as JAX's cannot be changed")


def register() -> None:
    """Make ``immutable`` a backend name (the tests do this; the registry does not list it otherwise)."""
    register_backend(FAMILY, replace=True)
