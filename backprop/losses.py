"""Losses: ``forward(prediction, target)`` returns a 0-d array (it stays on the device);
``backward()`` returns dLoss/dPrediction for the last forward call."""

from __future__ import annotations

import functools

import array_api_compat

from backends import backend_of, describe_array, dtype_name
from backends.base import NOTHING_TO_ACTIVATE

from .errors import DeviceMismatchError, DTypeError, ShapeError


def _on_prediction_device(forward):
    @functools.wraps(forward)
    def run(self, prediction, target):
        # None: not an array of a loaded backend (forward's checks say what is wrong)
        self._backend = backend_of(prediction)
        context = NOTHING_TO_ACTIVATE if self._backend is None else self._backend.activate()
        if context is NOTHING_TO_ACTIVATE:
            return forward(self, prediction, target)
        with context:
            return forward(self, prediction, target)

    return run


def _on_forward_device(backward):
    @functools.wraps(backward)
    def run(self):
        context = NOTHING_TO_ACTIVATE if self._backend is None else self._backend.activate()
        if context is NOTHING_TO_ACTIVATE:
            return backward(self)
        with context:
            return backward(self)

    return run


class Loss:
    _cache = None
    _backend = None  # the backend of the last forward's prediction: backward runs on its device too

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A loss runs with its prediction's device current (see backprop/on_device.py), whoever calls it.
        if "forward" in cls.__dict__:
            cls.forward = _on_prediction_device(cls.__dict__["forward"])
        if "backward" in cls.__dict__:
            cls.backward = _on_forward_device(cls.__dict__["backward"])

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def forward(self, prediction, target):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _cached(self):
        if self._cache is None:
            raise RuntimeError(f"{self!r}: backward called before forward")
        return self._cache

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

    def forward(self, prediction, target):
        xp = self._check(prediction, target, same_shape=True)
        if target.dtype != prediction.dtype:
            target = xp.astype(target, prediction.dtype)
        diff = prediction - target
        self._cache = (diff, _size(diff))
        return xp.asarray(xp.sum(diff * diff) / _size(diff))  # NumPy's sum gives a scalar; keep a 0-d array

    def backward(self):
        diff, n = self._cached()
        return diff * (2.0 / n)


class CrossEntropy(Loss):
    """Softmax cross-entropy on raw scores (logits), averaged over the batch.

    Logits have shape (batch, classes), or (batch, ..., classes) for a prediction at every position of a
    sequence (then the mean is over all positions). Targets are integer class labels of shape (batch, ...)
    or probabilities of the logits' shape. Softmax and log are fused through log-sum-exp, so large
    logits neither overflow nor lose the loss:
        log pᵢ = zᵢ − max z − log Σⱼ exp(zⱼ − max z)
        L = −(1/N) Σ t·log p;   dL/dz = (softmax(z) − t)/N
    """

    def forward(self, logits, target):
        xp = self._check(logits, target, same_shape=False)
        if logits.ndim < 2:
            raise ShapeError(f"{self!r}: expected logits of shape (batch, classes), got {tuple(logits.shape)}")
        classes = logits.shape[-1]
        positions = tuple(logits.shape[:-1])
        target_kind = _kind(xp, target.dtype)
        if target_kind == "integral":
            if tuple(target.shape) != positions:
                raise ShapeError(f"{self!r}: expected integer labels of shape {_shape_text(positions)}, got "
                                 f"{tuple(target.shape)}")
            classes_range = xp.arange(classes, dtype=target.dtype, device=_device(logits))
            target = xp.astype(target[..., None] == classes_range, logits.dtype)
        elif target_kind == "real floating":
            if tuple(target.shape) != tuple(logits.shape):
                raise ShapeError(f"{self!r}: expected integer labels of shape {_shape_text(positions)} or "
                                 f"probabilities of shape {tuple(logits.shape)}, got {tuple(target.shape)}")
            target = xp.astype(target, logits.dtype)
        else:
            raise DTypeError(f"{self!r}: expected integer labels or float probabilities, got "
                             f"{dtype_name(target.dtype)}")
        n = _size(logits) // classes
        shifted = logits - xp.max(logits, axis=-1, keepdims=True)
        log_probs = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
        self._cache = (xp, log_probs, target, n)
        return xp.asarray(-xp.sum(target * log_probs) / n)

    def backward(self):
        xp, log_probs, target, n = self._cached()
        return (xp.exp(log_probs) - target) / n


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits z with targets t in [0, 1], averaged over all elements.

        L = mean(max(z, 0) − z·t + log(1 + exp(−|z|)))   (stable for any z)
        dL/dz = (σ(z) − t)/n
    """

    def forward(self, logits, target):
        xp = self._check(logits, target, same_shape=True)
        if target.dtype != logits.dtype:
            target = xp.astype(target, logits.dtype)
        n = _size(logits)
        self._cache = (xp, logits, target, n)
        return xp.asarray(xp.sum(xp.maximum(logits, 0.0) - logits * target + xp.log1p(xp.exp(-xp.abs(logits)))) / n)

    def backward(self):
        xp, logits, target, n = self._cached()
        sigmoid = 0.5 + 0.5 * xp.tanh(0.5 * logits)  # stable for any logit
        return (sigmoid - target) / n


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
    key = (xp, dtype)
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
