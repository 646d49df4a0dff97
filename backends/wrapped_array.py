"""``WrappedArray``: the base of the test backends' arrays (``immutable``, ``counting``), an array_api_strict
array held inside, with its metadata read through. Each subclass adds what it checks or counts."""

from __future__ import annotations


class WrappedArray:
    __slots__ = ("_inner",)
    __hash__ = None  # as the array API's arrays: == is elementwise

    def __init__(self, inner):
        self._inner = inner

    shape = property(lambda self: self._inner.shape)
    dtype = property(lambda self: self._inner.dtype)
    device = property(lambda self: self._inner.device)
    ndim = property(lambda self: self._inner.ndim)
    size = property(lambda self: self._inner.size)
    T = property(lambda self: type(self)(self._inner.T))
    mT = property(lambda self: type(self)(self._inner.mT))
