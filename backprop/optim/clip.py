"""Gradient clipping by the global norm, computed on the device without a host round trip.

Call ``clip_grad_norm(model, max_norm)`` once the gradients are accumulated and before ``optimizer.step()``
(``model`` may also be an optimizer, or an iterable of ``Parameter`` boxes: the parameters whose gradients
count). It always multiplies the gradients by ``min(1, max_norm / (norm + 1e-6))`` (as
``torch.nn.utils.clip_grad_norm_``), so no Python ``if`` looks at a device value; the returned norm is a 0-d
array, and reading it (``float(backend.to_host(norm))``) is the caller's choice.
"""

from __future__ import annotations

from typing import Any

from backends import Backend, backend_of, current_backend
from backends.array_types import Array

from .. import validators as check
from ..errors import ConfigError
from ..parameters import Parameter


def _store(source: Any) -> tuple[Backend, list[Parameter]]:
    """(backend, parameter boxes) of a model, an optimizer or an iterable of boxes."""
    if hasattr(source, "parameters") and hasattr(source, "backend"):  # a model or an optimizer
        return source.backend, source.parameters()
    params = list(source)
    if not all(isinstance(p, Parameter) for p in params):
        raise ConfigError("clip_grad_norm: expected a model, an optimizer or an iterable of Parameter")
    backend = backend_of(params[0].value) if params else None
    if backend is None:
        backend = current_backend()
    return backend, params


def global_grad_norm(source: Any) -> Array:
    """``sqrt(sum of g² over every gradient)`` as a 0-d array on the backend's device (0 when there are none).
    ``source``: a model, an optimizer or an iterable of ``Parameter``."""
    backend, params = _store(source)
    with backend.activate():
        return _global_norm(backend, [p.grad for p in params if p.grad is not None],
                            params[0].dtype if params else backend.float_dtype)


def _global_norm(backend, grads, dtype):
    xp = backend.xp
    if not grads:
        return xp.zeros((), dtype=dtype, device=backend.device)
    total = None
    for grad in grads:
        part = xp.sum(grad * grad)
        if total is not None and part.dtype != total.dtype:
            part = xp.astype(part, total.dtype)
        total = part if total is None else total + part
    norm = xp.sqrt(total)
    # NumPy reduces to scalars; make it a 0-d array (a no-op elsewhere)
    return xp.asarray(norm, dtype=norm.dtype, device=backend.device)


def clip_grad_norm(source: Any, max_norm: float) -> Array:
    """Scale every gradient so the global norm is at most ``max_norm``; returns the norm before.

    The scaled gradients replace the parameters' (in place where the backend allows: ``Backend.scale``)."""
    max_norm = check.number(max_norm, "max_norm", low=0, low_open=True, owner="clip_grad_norm")
    backend, params = _store(source)
    dtype = params[0].dtype if params else backend.float_dtype
    with backend.activate():
        graded = [(p, p.grad) for p in params if p.grad is not None]
        norm = _global_norm(backend, [grad for _, grad in graded], dtype)
        if not graded:
            return norm
        xp = backend.xp
        one = xp.ones((), dtype=norm.dtype, device=backend.device)
        coef = xp.minimum(max_norm / (norm + 1e-6), one)
        for param, grad in graded:
            param.grad = backend.scale(grad, coef if grad.dtype == coef.dtype else xp.astype(coef, grad.dtype))
        return norm
