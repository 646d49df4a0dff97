"""``Parameter``: one trainable array and the gradient accumulated for it — the unit of the parameter store.

Arrays may be immutable (JAX), so a parameter cannot be "updated" by writing into its array: it is a small
mutable box, and every update assigns a new array to it (``param.value = new``). Layers own their boxes
(``layer.params["weight"]``); ``model.parameters()`` / ``model.named_parameters()`` list every box of a
model once (a box held by two layers — tied weights — appears once, under its first name); optimizers,
gradient clipping, the distributed all-reduce and model files all read and write the boxes.

Gradients accumulate: each backward pass *adds* its contribution to ``param.grad`` (``accumulate``), and
``zero_grad()`` (of a model or an optimizer) sets them back to None. So a layer applied twice in one step
(tied weights, a Siamese pair) gets the sum of both uses, and several micro-batches can be summed before
one optimizer step.
"""

from __future__ import annotations

from typing import Any

from backends import Backend, dtype_name
from backends.array_types import Array


class Parameter:
    """A trainable array (``value``) and the gradient of the loss with respect to it (``grad``, None until a
    backward pass reaches it, and again after ``zero_grad``).

    ``grad_space``: an array of the value's shape that a backward pass may write the first gradient into
    (``gradient_space``) instead of making a new one, or None. Optimizers on NumPy and CuPy set it to a view of
    one flat gradient buffer, so that one update pass covers every gradient; the gradient left in it is
    overwritten by the next step's (copy it to keep it)."""

    __slots__ = ("value", "grad", "grad_space")

    def __init__(self, value: Array):
        self.value = value
        self.grad: Array | None = None  # None until a backward pass reaches it
        self.grad_space: Array | None = None

    @property
    def shape(self) -> tuple:
        return tuple(self.value.shape)

    @property
    def dtype(self) -> Any:
        return self.value.dtype

    def __repr__(self) -> str:
        grad = "no grad" if self.grad is None else "grad"
        return f"Parameter({dtype_name(self.dtype)}{list(self.shape)}, {grad})"


def accumulate(backend: Backend, param: Parameter, grad: Array) -> None:
    """``param.grad += grad``: the first gradient is stored as it is, later ones are added (in place where the
    backend allows, ``Backend.add_scaled``; the result is stored either way).

    The array handed over becomes the parameter's: it must be one the caller made for it (a fresh product or
    sum), never an array someone else still holds (an incoming gradient, say), since a later call may add into
    it in place.
    """
    if param.grad is None:
        param.grad = grad
    else:
        param.grad = backend.add_scaled(param.grad, grad)


def gradient_space(param: Parameter) -> Array:
    """Where a backward pass may write ``param``'s gradient: its ``grad_space`` while it has no gradient yet
    (the first contribution of a step), else None (the contribution is added to the gradient it has)."""
    return param.grad_space if param.grad is None else None


def zero_grad(params: Any) -> None:
    """Forget the gradients of ``params`` (an iterable of ``Parameter``)."""
    for param in params:
        param.grad = None


__all__ = ["Parameter", "accumulate", "gradient_space", "zero_grad"]
