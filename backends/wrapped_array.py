"""``WrappedArray``: the base of the test backends' arrays (``immutable``, ``counting``), an array_api_strict
array held inside, with its metadata read through. Each subclass adds what it checks or counts."""

from __future__ import annotations

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
