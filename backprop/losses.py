"""Losses, stateless: ``loss, backprop = loss_fn.begin_update(prediction, target)`` gives the loss (a 0-d array
that stays on the device) and ``backprop() -> dLoss/dPrediction``; ``loss_fn.value_and_grad(prediction,
target)`` returns both at once, and ``loss_fn(prediction, target)`` the value alone. Nothing is kept on the
loss object between calls."""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import array_api_compat

from backends import backend_of, describe_array, dtype_name
from backends.array_types import Array
from backends.base import NOTHING_TO_ACTIVATE, Backend

from .errors import DeviceMismatchError, DTypeError, ShapeError
from .metrics import MAE, R2, Accuracy, BinaryAccuracy, Metric
from .on_device import activating, on_device_of


def _on_prediction_device(begin_update):
    @functools.wraps(begin_update)
    def run(self, prediction, target):
        # None: not an array of a loaded backend (begin_update's checks say what is wrong)
        backend = backend_of(prediction)
        context = NOTHING_TO_ACTIVATE if backend is None else backend.activate()
        if backend is None or isinstance(context, nullcontext):  # nothing to enter (a type test: TorchDynamo traces it)
            return begin_update(self, prediction, target)
        with context:
            loss, backprop = begin_update(self, prediction, target)
        return loss, activating(backend, backprop)  # the backward pass runs on the prediction's device too

    return run


class Loss:
    """Base class: a subclass implements ``begin_update(prediction, target) -> (loss, backprop)``, and may name
    the metrics a run with it records (``default_metrics``) and the integer labels it takes (``label_classes``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A loss runs with its prediction's device current (see backprop/on_device.py), whoever calls it.
        if "begin_update" in cls.__dict__:
            # the subclass's own method, wrapped in place: mypy forbids assigning to a method, which is the point
            cls.begin_update = _on_prediction_device(cls.__dict__["begin_update"])  # type: ignore[method-assign]

    def __call__(self, prediction: Array, target: Array) -> Array:
        return self.forward(prediction, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def default_metrics(self) -> list[Metric]:
        """The metrics a run with this loss records besides the loss (``Trainer(metrics=None)``): none for a
        loss of your own unless it says."""
        return []

    def label_classes(self, outputs: int) -> int | None:
        """How many classes integer targets may number (0 .. n-1) for a model of ``outputs`` outputs; None when
        integer targets are values, not classes (the trainer checks labels against it before training)."""
        return None

    def forward(self, prediction: Array, target: Array) -> Array:
        """The loss (a 0-d array); nothing is kept for a backward pass."""
        return self.begin_update(prediction, target)[0]

    def begin_update(self, prediction: Array, target: Array) -> tuple[Array, Callable[[], Array]]:
        """``(loss, backprop)``: the loss and the closure ``backprop() -> dLoss/dPrediction`` of this call."""
        raise NotImplementedError  # pragma: no cover - abstract

    def value_and_grad(self, prediction: Array, target: Array) -> tuple[Array, Array]:
        """``(loss, dLoss/dPrediction)``."""
        loss, backprop = self.begin_update(prediction, target)
        return loss, backprop()

    def _check(self, prediction, target, *, same_shape: bool):
        xp = _namespace(prediction, target)
        if xp is None:
            raise DeviceMismatchError(f"{self!r}: prediction is {describe_array(prediction)} but target is "
                                      f"{describe_array(target)}; put both on one backend")
        if array_api_compat.device(prediction) != array_api_compat.device(target):
            raise DeviceMismatchError(f"{self!r}: prediction is {describe_array(prediction)} but target is "
                                      f"{describe_array(target)}; put both on one device")
        if _kind(xp, prediction.dtype) != "real floating":
            raise DTypeError(f"{self!r}: expected a floating-point prediction, got {dtype_name(prediction.dtype)}")
        if same_shape and tuple(prediction.shape) != tuple(target.shape):
            raise ShapeError(f"{self!r}: expected target of shape {tuple(prediction.shape)} (same as the "
                             f"prediction), got {tuple(target.shape)}")
        return xp


class MSE(Loss):
    """Mean squared error over all elements: L = mean((p − t)²);  dL/dp = 2(p − t)/n."""

    def default_metrics(self) -> list[Metric]:
        return [MAE(), R2()]

    def begin_update(self, prediction: Array, target: Array) -> tuple[Array, Callable[[], Array]]:
        xp = self._check(prediction, target, same_shape=True)
        if target.dtype != prediction.dtype:
            target = xp.astype(target, prediction.dtype)
        diff = prediction - target
        n = _size(diff)

        def backprop():
            return diff * (2.0 / n)

        return xp.asarray(xp.sum(diff * diff) / n), backprop  # NumPy's sum gives a scalar; keep a 0-d array


class CrossEntropy(Loss):
    """Softmax cross-entropy on raw scores (logits), averaged over the batch.

    Logits have shape (batch, classes), or (batch, ..., classes) for a prediction at every position of a
    sequence (then the mean is over all positions). Targets are integer class labels of shape (batch, ...)
    or probabilities of the logits' shape. Softmax and log are fused through log-sum-exp, so large
    logits neither overflow nor lose the loss:
        log pᵢ = zᵢ − max z − log Σⱼ exp(zⱼ − max z)
        L = −(1/N) Σ t·log p;   dL/dz = (softmax(z) − t)/N
    """

    def default_metrics(self) -> list[Metric]:
        return [Accuracy()]

    def label_classes(self, outputs: int) -> int | None:
        return outputs

    def _target_kind(self, xp, logits, target) -> str:
        """'integral' (class labels) or 'real floating' (probabilities), after checking shapes and dtypes."""
        if logits.ndim < 2:
            raise ShapeError(f"{self!r}: expected logits of shape (batch, classes), got {tuple(logits.shape)}")
        positions = tuple(logits.shape[:-1])
        target_kind = _kind(xp, target.dtype)
        if target_kind == "integral":
            if tuple(target.shape) != positions:
                raise ShapeError(f"{self!r}: expected integer labels of shape {_shape_text(positions)}, got "
                                 f"{tuple(target.shape)}")
        elif target_kind == "real floating":
            if tuple(target.shape) != tuple(logits.shape):
                raise ShapeError(f"{self!r}: expected integer labels of shape {_shape_text(positions)} or "
                                 f"probabilities of shape {tuple(logits.shape)}, got {tuple(target.shape)}")
        else:
            raise DTypeError(f"{self!r}: expected integer labels or float probabilities, got "
                             f"{dtype_name(target.dtype)}")
        return target_kind

    def _fused_backend(self, logits: Array) -> Backend:
        """The backend whose fused softmax cross-entropy runs on ``logits`` (an array of a loaded backend)."""
        backend = backend_of(logits)
        if backend is None:
            raise DeviceMismatchError(f"{self!r}: logits are {describe_array(logits)}, not an array of a loaded "
                                      f"backend; make them with one (backends.get_backend(SPEC).from_host(...))")
        return backend

    def forward(self, logits: Array, target: Array) -> Array:
        xp = self._check(logits, target, same_shape=False)
        if self._target_kind(xp, logits, target) == "integral":  # the fused path, without the gradient
            with on_device_of(logits):
                return self._fused_backend(logits).softmax_cross_entropy(logits, target, with_grad=False)[0]
        return self.begin_update(logits, target)[0]

    def begin_update(self, logits: Array, target: Array) -> tuple[Array, Callable[[], Array]]:
        xp = self._check(logits, target, same_shape=False)
        if self._target_kind(xp, logits, target) == "integral":
            # Integer labels: the backend's fused softmax cross-entropy (loss and gradient in one pass, no one-hot)
            loss, grad, _ = self._fused_backend(logits).softmax_cross_entropy(logits, target)
            return loss, lambda: grad
        target = xp.astype(target, logits.dtype)
        n = _size(logits) // logits.shape[-1]
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))

        def backprop():
            return (xp.exp(log_probs) - target) / n

        return xp.asarray(-xp.sum(target * log_probs) / n), backprop

    def fused_step(self, logits: Array, target: Array, *, grad_scale: float = 1.0,
                   metrics: Array | None = None) -> tuple[Array, Array] | None:
        """``(dL/dlogits · grad_scale, metrics)`` through the backend's fused softmax cross-entropy (see
        ``Backend.softmax_cross_entropy``) for integer labels; None for probability targets (the trainer then
        takes ``value_and_grad``)."""
        xp = self._check(logits, target, same_shape=False)
        if self._target_kind(xp, logits, target) != "integral":
            return None
        _, grad, metrics = self._fused_backend(logits).softmax_cross_entropy(logits, target, grad_scale=grad_scale,
                                                                             metrics=metrics)
        return grad, metrics


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits z with targets t in [0, 1], averaged over all elements.

        L = mean(max(z, 0) − z·t + log(1 + exp(−|z|)))   (stable for any z)
        dL/dz = (σ(z) − t)/n

    Targets have the logits' shape, or are integer 0/1 labels (batch, ...) of logits (batch, ..., 1).
    """

    def default_metrics(self) -> list[Metric]:
        return [BinaryAccuracy()]

    def label_classes(self, outputs: int) -> int | None:
        return 2

    def begin_update(self, logits: Array, target: Array) -> tuple[Array, Callable[[], Array]]:
        xp = _namespace(logits, target)
        if (xp is not None and _kind(xp, target.dtype) == "integral" and logits.ndim == target.ndim + 1
                and logits.shape[-1] == 1 and tuple(logits.shape[:-1]) == tuple(target.shape)):
            target = target[..., None]  # 0/1 labels (batch,) of a (batch, 1) output
        xp = self._check(logits, target, same_shape=True)
        if target.dtype != logits.dtype:
            target = xp.astype(target, logits.dtype)
        n = _size(logits)

        def backprop():
            sigmoid = 0.5 + 0.5 * xp.tanh(0.5 * logits)  # stable for any logit
            return (sigmoid - target) / n

        loss = xp.sum(xp.maximum(logits, 0.0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))) / n
        return xp.asarray(loss), backprop


LOSSES = {"mse": MSE, "cross_entropy": CrossEntropy, "binary_cross_entropy": BinaryCrossEntropy}


def _device(x):
    return array_api_compat.device(x)


# Per-call lookups of the namespace and dtype kind cost more than the arithmetic of a small batch: cache them.
_NAMESPACES: dict[tuple[type, type], object] = {}
_KINDS: dict[tuple[object, object], str] = {}


def _namespace(a, b):
    """The array namespace of two arrays, or None when they come from different libraries."""
    key = (type(a), type(b))
    xp = _NAMESPACES.get(key)
    if xp is None:
        try:
            xp = array_api_compat.array_namespace(a, b)
        except TypeError:
            return None
        _NAMESPACES[key] = xp
    return xp


def _kind(xp, dtype) -> str:
    """'integral', 'real floating' or 'other'."""
    key = (xp.__name__, dtype)  # a module's name: TorchDynamo compares strings, not modules
    kind = _KINDS.get(key)
    if kind is None:
        kind = next((k for k in ("integral", "real floating") if xp.isdtype(dtype, k)), "other")
        _KINDS[key] = kind
    return kind


def _shape_text(shape) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else str(tuple(shape))


def _size(x) -> int:
    n = 1
    for d in x.shape:
        n *= d
    return n
