"""``WrappedArray``: the base of the test backends' arrays (``immutable``, ``counting``), an array_api_strict
array held inside, with its metadata read through. Each subclass adds what it checks or counts."""

from __future__ import annotations

from typing import Any

from .array_types import Array


class WrappedArray:
    __slots__ = ("_inner",)
    # as the array API's arrays: == is elementwise (object's __hash__ is a method to mypy; None is how Python
    # makes a class unhashable)
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, inner: Array):
        self._inner = inner

    shape = property(lambda self: self._inner.shape)
    dtype = property(lambda self: self._inner.dtype)
    device = property(lambda self: self._inner.device)
    ndim = property(lambda self: self._inner.ndim)
    size = property(lambda self: self._inner.size)
    T = property(lambda self: type(self)(self._inner.T))
    mT = property(lambda self: type(self)(self._inner.mT))


def wrap_arrays(value: Any, inner_type: type | None, wrapper: type[WrappedArray]) -> Any:
    """``value`` with every ``inner_type`` array in it (an array, or a tuple or list of them) in a ``wrapper``."""
    if type(value) is inner_type:
        return wrapper(value)
    if isinstance(value, tuple):
        items = [wrap_arrays(v, inner_type, wrapper) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)  # named tuples stay named
    if isinstance(value, list):
        return [wrap_arrays(v, inner_type, wrapper) for v in value]
    return value


def unwrap_arrays(value: Any, wrapper: type[WrappedArray]) -> Any:
    """The inner arrays of the ``wrapper`` arrays in ``value`` (an argument: an array, or a tuple or list)."""
    if type(value) is wrapper:
        return value._inner
    if isinstance(value, (tuple, list)):
        return type(value)(unwrap_arrays(v, wrapper) for v in value)
    return value
