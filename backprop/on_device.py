"""Public calls run with their backend's device current.

A library with a *current device* (CuPy) creates every array and runs every kernel on that device, whatever
``device=`` says. So each public call of backprop (``fit``, ``evaluate``, saving and loading, building a
layer, a layer's ``forward``, ``begin_update`` and the ``backprop`` closure it returns, a loss, an
optimizer's ``step``, ``gradcheck``) enters its backend's ``activate()`` once, and the array code below it
needs no device handling. Entering again inside
(a ``Sequential`` calling its layers, ``fit`` calling everything) is cheap, and does nothing at all on
libraries whose arrays carry their device (NumPy, PyTorch on the CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar, cast

from backends import Backend, backend_of
from backends.array_types import Array
from backends.base import NOTHING_TO_ACTIVATE

F = TypeVar("F", bound=Callable[..., Any])


def on_device(method: F) -> F:
    """Decorate a method of an object with a ``backend`` attribute (or a function whose first argument has one,
    a model): it runs inside ``self.backend.activate()``."""
    if getattr(method, "runs_on_device", False):
        return method

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        context = self.backend.activate()
        if isinstance(context, nullcontext):  # NumPy, CPU libraries: not even a `with` per call
            return method(self, *args, **kwargs)
        with context:
            return method(self, *args, **kwargs)

    run.runs_on_device = True  # type: ignore[attr-defined]  # a mark on the function object
    return cast(F, run)


def on_model_device(method: F) -> F:
    """Decorate a method whose first argument after ``self`` is a model: it runs inside
    ``model.backend.activate()``."""

    @functools.wraps(method)
    def run(self, model, *args, **kwargs):
        with model.backend.activate():
            return method(self, model, *args, **kwargs)

    return cast(F, run)


def on_device_of(array: Array) -> AbstractContextManager:
    """``with on_device_of(x):`` runs the block with the device of ``x``'s backend current (for code that gets
    arrays, not a backend: losses). Nothing to enter when no loaded backend owns ``x``."""
    backend = backend_of(array)
    return NOTHING_TO_ACTIVATE if backend is None else backend.activate()


def on_device_update(begin_update: F) -> F:
    """Decorate a ``begin_update`` method (``-> (output, backprop)``): it runs inside ``self.backend.activate()``,
    and so does the ``backprop`` closure it returns, whenever it is called. (Nothing is wrapped on libraries
    without a current device: NumPy's closures are returned as they are.)"""
    if getattr(begin_update, "runs_on_device", False):
        return begin_update

    @functools.wraps(begin_update)
    def run(self, *args, **kwargs):
        backend = self.backend
        context = backend.activate()
        if isinstance(context, nullcontext):  # nothing to enter (a type test: TorchDynamo traces it)
            return begin_update(self, *args, **kwargs)
        with context:
            output, backprop = begin_update(self, *args, **kwargs)
        return output, activating(backend, backprop)

    run.runs_on_device = True  # type: ignore[attr-defined]  # a mark on the function object
    return cast(F, run)


def activating(backend: Backend, function: F) -> F:
    """``function`` wrapped to run inside ``backend.activate()``."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with backend.activate():
            return function(*args, **kwargs)

    return cast(F, run)
