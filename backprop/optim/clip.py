"""Gradient clipping by the global norm, computed on the device without a host round trip.

Call ``clip_grad_norm(model, max_norm)`` between ``model.backward(...)`` and
``optimizer.step()``. It always multiplies the gradients by
``min(1, max_norm / (norm + 1e-6))`` (as ``torch.nn.utils.clip_grad_norm_``),
so no Python ``if`` looks at a device value; the returned norm is a 0-d array,
and reading it (``float(backend.to_host(norm))``) is the caller's choice.
"""

from __future__ import annotations

from ..on_device import on_device
from .base import check_number


def _gradient_slots(model) -> list:
    """The (layer, name) slots of the parameters that have a gradient."""
    return [(layer, key) for layer, key in model.parameter_slots() if layer.grads.get(key) is not None]


def _gradients(model) -> list:
    return [layer.grads[key] for layer, key in _gradient_slots(model)]


@on_device
def global_grad_norm(model):
    """``sqrt(sum of g² over every gradient)`` as a 0-d array on the model's device (0 when there are none)."""
    grads = _gradients(model)
    xp = model.backend.xp
    if not grads:
        return xp.zeros((), dtype=model.dtype, device=model.backend.device)
    total = None
    for grad in grads:
        part = xp.sum(grad * grad)
        if total is not None and part.dtype != total.dtype:
            part = xp.astype(part, total.dtype)
        total = part if total is None else total + part
    norm = xp.sqrt(total)
    # NumPy reduces to scalars; make it a 0-d array (a no-op elsewhere)
    return xp.asarray(norm, dtype=norm.dtype, device=model.backend.device)


@on_device
def clip_grad_norm(model, max_norm: float):
    """Scale every gradient so the global norm is at most ``max_norm``; returns the norm before.

    The scaled gradients replace the model's (in place where the backend allows: ``Backend.scale``)."""
    max_norm = check_number("clip_grad_norm", "max_norm", max_norm, low=0, low_open=True)
    norm = global_grad_norm(model)
    slots = _gradient_slots(model)
    if not slots:
        return norm
    backend = model.backend
    xp = backend.xp
    one = xp.ones((), dtype=norm.dtype, device=backend.device)
    coef = xp.minimum(max_norm / (norm + 1e-6), one)
    for layer, key in slots:
        grad = layer.grads[key]
        layer.grads[key] = backend.scale(grad, coef if grad.dtype == coef.dtype else xp.astype(coef, grad.dtype))
    return norm
