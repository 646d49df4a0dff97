"""Public calls run with their backend's device current.

A library with a *current device* (CuPy) creates every array and runs every kernel on that device, whatever
``device=`` says. So each public call of backprop (``fit``, ``evaluate``, saving and loading, building a
layer, a layer's ``forward`` and ``backward``, a loss, an optimizer's ``step``, ``gradcheck``) enters its
backend's ``activate()`` once, and the array code below it needs no device handling. Entering again inside
(a ``Sequential`` calling its layers, ``fit`` calling everything) is cheap, and does nothing at all on
libraries whose arrays carry their device (NumPy, PyTorch on the CPU).
"""

from __future__ import annotations

import functools

from backends import backend_of
from backends.base import NOTHING_TO_ACTIVATE


def on_device(method):
    """Decorate a method of an object with a ``backend`` attribute (or a function whose first argument has one,
    a model): it runs inside ``self.backend.activate()``."""
    if getattr(method, "runs_on_device", False):
        return method

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        context = self.backend.activate()
        if context is NOTHING_TO_ACTIVATE:  # NumPy, CPU libraries: not even a `with` per call
            return method(self, *args, **kwargs)
        with context:
            return method(self, *args, **kwargs)

    run.runs_on_device = True
    return run


def on_model_device(method):
    """Decorate a method whose first argument after ``self`` is a model: it runs inside
    ``model.backend.activate()``."""

    @functools.wraps(method)
    def run(self, model, *args, **kwargs):
        with model.backend.activate():
            return method(self, model, *args, **kwargs)

    return run


def on_device_of(array):
    """``with on_device_of(x):`` runs the block with the device of ``x``'s backend current (for code that gets
    arrays, not a backend: losses). Nothing to enter when no loaded backend owns ``x``."""
    backend = backend_of(array)
    return NOTHING_TO_ACTIVATE if backend is None else backend.activate()
