"""Check a backward pass against central finite differences.

For a layer, the checked scalar is f = Σ forward(x) ⊙ v for a fixed random v,
so the analytic gradients are what the ``backprop(v)`` of ``begin_update`` returns
and accumulates into the parameters' ``grad`` (on a float64 copy of the layer,
whose gradients start at zero). For a loss, f is the loss itself and the
analytic gradient what ``value_and_grad`` returns. Each input and parameter element is nudged by ±ε
and (f(+ε) − f(−ε)) / 2ε is compared with the analytic value. The check runs
in float64 when the backend has it (float32 differences are too noisy to say
much) and falls back to float32 with looser tolerances otherwise.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from backends import Backend, available_backends
from backends.array_types import Array

from .errors import ConfigError
from .layers.base import Layer
from .losses import Loss
from .on_device import on_device_of

F = TypeVar("F", bound=Callable[..., Any])

# (eps, rtol, atol) by the dtype the check runs in.
TOLERANCES = {"float64": (1e-6, 1e-5, 1e-7), "float32": (1e-2, 5e-2, 5e-3)}


class GradcheckError(AssertionError):
    """The analytic gradient disagrees with finite differences."""


@dataclass
class GradcheckResult:
    dtype: str
    max_abs_error: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _on_the_inputs_device(check: F) -> F:
    @functools.wraps(check)
    def run(fn: Any, x: Array, *args: Any, **kwargs: Any) -> Any:
        with on_device_of(x):  # a layer's input is on the layer's device (it says so when not)
            return check(fn, x, *args, **kwargs)

    return run  # type: ignore[return-value]  # the same signature as check's, which wraps copies


@_on_the_inputs_device
def gradcheck(fn: Layer | Loss, x: Array, target: Array | None = None, *, training: bool = False, seed: int = 0,
              max_elements: int | None = 200, raise_on_failure: bool = True) -> GradcheckResult:
    """Compare analytic and numerical gradients of a layer, model or loss.

    ``x`` is the input (the prediction, for a loss); ``target`` is needed for
    losses. At most ``max_elements`` elements of each array are checked
    (spread over the array); None checks them all.
    """
    if isinstance(fn, Loss):
        if target is None:
            raise ConfigError("gradcheck: a loss needs a target")
        backend = _backend_of(x)
    elif isinstance(fn, Layer):
        backend = fn.backend
    else:
        raise ConfigError(f"gradcheck: expected a Layer or Loss, got {type(fn).__name__}")
    xp = backend.xp
    dtype_name = "float64" if backend.supports_float64 else "float32"
    dtype = getattr(xp, dtype_name)
    eps, rtol, atol = TOLERANCES[dtype_name]

    def promote(a):
        return xp.astype(a, dtype) if xp.isdtype(a.dtype, "real floating") else a

    x = promote(x)
    checked: dict[str, Array] = {}  # name -> array whose elements we perturb
    analytic: dict[str, Array] = {}
    current = {"input": x}  # the input the objective sees: x, or a perturbed copy of it
    layer: Layer | None = None

    def use(name: str, array: Array) -> None:
        """Make the objective see ``array`` as the input or as parameter ``name``. Arrays may be immutable
        (JAX), so a perturbed element is a new array put in the old one's place, never a write into it."""
        if name == "input":
            current["input"] = array
        else:
            assert layer is not None  # parameters are perturbed only when fn is a layer
            layer.replace_arrays({f"param/{name}": array})

    if isinstance(fn, Loss):
        target = promote(target)

        def objective():
            return fn.forward(current["input"], target)

        _, analytic["input"] = fn.value_and_grad(x, target)
        checked["input"] = x
    else:
        layer = fn.astype(dtype_name)  # a copy: its gradients start empty, and fn's stay as they are
        y, backprop = layer.begin_update(x, training=training)
        v = backend.random(seed).normal(tuple(y.shape), dtype=dtype)

        def objective():
            return xp.sum(layer.forward(current["input"], training=training) * v)

        grad_x = backprop(v)
        if xp.isdtype(x.dtype, "real floating"):
            analytic["input"], checked["input"] = grad_x, x
        for name, param in layer.named_parameters().items():
            if param.grad is None:
                raise GradcheckError(f"gradcheck: {fn!r} computed no gradient for parameter {name!r}")
            analytic[name], checked[name] = param.grad, param.value

    result = GradcheckResult(dtype_name)
    for name, array in checked.items():
        worst = 0.0
        host_analytic = backend.to_host(analytic[name])
        host_values = backend.to_host(array).copy()  # indexing a tensor gives a view: keep plain numbers
        if tuple(host_analytic.shape) != tuple(array.shape):
            result.failures.append(f"{name}: gradient has shape {tuple(host_analytic.shape)}, "
                                   f"expected {tuple(array.shape)}")
            continue
        for index in _sample_indices(tuple(array.shape), max_elements):
            original = float(host_values[index])
            perturbed = backend.at_set(xp.asarray(array, copy=True, device=backend.device), index, original + eps)
            use(name, perturbed)
            f_plus = float(backend.to_host(objective()))
            use(name, backend.at_set(perturbed, index, original - eps))  # our own copy: may be written into
            f_minus = float(backend.to_host(objective()))
            use(name, array)
            numeric = (f_plus - f_minus) / (2 * eps)
            exact = float(host_analytic[index])
            error = abs(exact - numeric)
            worst = max(worst, error)
            if error > atol + rtol * abs(numeric) and len(result.failures) < 10:
                result.failures.append(f"{name}{list(index)}: analytic {exact:.6g}, numerical {numeric:.6g}")
        result.max_abs_error[name] = worst
    if raise_on_failure and result.failures:
        raise GradcheckError(f"gradcheck of {fn!r} failed ({dtype_name}): " + "; ".join(result.failures))
    return result


def _sample_indices(shape: tuple[int, ...], max_elements: int | None) -> list[tuple[int, ...]]:
    indices = list(itertools.product(*(range(n) for n in shape)))
    if max_elements is None or len(indices) <= max_elements:
        return indices
    step = len(indices) / max_elements
    return [indices[int(i * step)] for i in range(max_elements)]


def _backend_of(x: Array) -> Backend:
    for backend in available_backends():
        if backend.owns(x):
            return backend
    raise ConfigError("gradcheck: the input is not an array of any available backend")
