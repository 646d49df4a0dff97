"""Feature scaling, fitted on training data only.

A scaling is described by a small JSON-able dict (see :func:`fit_scaler`)
that always maps the *raw* features of the source (pixel values 0..255, a CSV's
numbers) to what the network was trained on, so a saved model can apply the
same map to new inputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import ConfigError, DataError
from .dataset import excerpt, validate_features

SCALINGS = ("none", "standardize", "minmax")
#: What ``--target-scaling`` accepts for regression targets (the model learns standardized targets; its
#: predictions are mapped back with :func:`unscale`).
TARGET_SCALINGS = ("none", "standardize")


def fit_scaler(x_train: npt.ArrayLike, kind: str = "standardize") -> dict:
    """Fit a feature scaling on training data only; return it as a JSON-able dict.

    The dict is ``{"kind": kind, "offset": [...], "scale": [...]}`` and means
    ``x -> (x - offset) / scale`` per feature (``{"kind": "none"}`` is the
    identity). ``standardize`` uses the mean and standard deviation,
    ``minmax`` maps the training range onto [0, 1]. A constant feature gets
    scale 1, so it becomes 0 instead of a division by zero.
    """
    if kind not in SCALINGS:
        raise ConfigError(f"unknown scaling {kind!r}; expected one of {', '.join(SCALINGS)}")
    if kind == "none":
        return {"kind": "none"}
    x = np.asarray(x_train)
    validate_features(x, "fit_scaler")
    low, high = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    constant = high == low  # exact test: a float std of a constant column can come out as 1e-17, not 0
    if kind == "standardize":
        offset = _column_sums(x) / len(x)

        def squared_deviation(block):
            block -= offset
            block *= block
            return block

        scale = np.sqrt(_column_sums(x, squared_deviation) / len(x))  # the two-pass formula of np.std
    else:
        offset, scale = low, high - low
    scale = np.where(constant, 1.0, scale)
    return {"kind": kind, "offset": offset.tolist(), "scale": scale.tolist()}


def fit_target_scaler(y_train: npt.ArrayLike, kind: str = "standardize") -> dict:
    """Fit the scaling of regression targets ``(samples, outputs)`` on the training targets only: a scaler dict
    as :func:`fit_scaler`'s (``standardize``: mean and standard deviation per output, in float64; an output
    whose targets are all equal gets scale 1), or ``{"kind": "none"}``. Undone by :func:`unscale`."""
    if kind not in TARGET_SCALINGS:
        raise ConfigError(f"unknown target scaling {kind!r}; expected one of {', '.join(TARGET_SCALINGS)}")
    return fit_scaler(y_train, kind)


def _column_sums(x: np.ndarray, transform=None) -> np.ndarray:
    """Per-column sums of ``transform(rows as float64)`` over all rows, in float64, without a float64 copy of
    ``x``: a few rows (about 1 MiB) at a time. Each block is summed together with the running total as its
    first row, so the additions happen in the order NumPy uses for a float64 copy (usually bit for bit
    the same result as ``x.astype(float64).sum(axis=0)``)."""
    rows = max(1, (1 << 20) // (8 * max(1, x.shape[1])))
    total = np.zeros((1, x.shape[1]))
    for start in range(0, len(x), rows):
        block = x[start:start + rows].astype(np.float64)
        if transform is not None:
            block = transform(block)
        total = np.add.reduce(np.concatenate([total, block]), axis=0, keepdims=True)
    return total[0]


def _affine(scaler: dict, source: str = "scaler") -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) as float64 arrays (0-d or 1-d) from a scaler dict, checked."""
    if not isinstance(scaler, dict) or "kind" not in scaler:
        raise DataError(f"{source}: expected a dict with a 'kind' key, got {type(scaler).__name__}")
    if scaler["kind"] == "none":
        return np.zeros(()), np.ones(())
    try:
        offset = np.asarray(scaler["offset"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: kind {scaler['kind']!r} needs numeric 'offset' and 'scale' ({exc})") from None
    if offset.ndim > 1 or scale.ndim > 1 or not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))) \
            or np.any(scale == 0):
        raise DataError(f"{source}: 'offset' and 'scale' must be finite numbers or lists, scale never 0")
    return offset, scale


def apply_scaler(x: npt.ArrayLike, scaler: dict) -> np.ndarray:
    """Apply a scaler dict from :func:`fit_scaler` (or from a dataset or model file): a new float32 array."""
    return scale_in_place(np.array(x, dtype=np.float32), scaler)


def scale_in_place(x: np.ndarray, scaler: dict) -> np.ndarray:
    """Apply a scaler to a float32 array in place (no copy of the data) and return it: ``(x - offset) / scale``
    in float32."""
    offset, scale = _affine(scaler)
    if scaler["kind"] == "none":
        return x
    if x.dtype != np.float32:
        raise DataError(f"scaler: scale_in_place needs a float32 array, got {x.dtype}")
    for values in (offset, scale):
        if values.ndim == 1 and (x.ndim != 2 or x.shape[1] != values.size):
            raise DataError(f"scaler: fitted on {values.size} features, got an array of shape {x.shape}")
    x -= offset.astype(np.float32)
    x /= scale.astype(np.float32)
    return x


def unscale(values: npt.ArrayLike, scaler: dict, source: str = "target scaler") -> np.ndarray:
    """The inverse of a scaler: ``values * scale + offset`` in float64 (a model's standardized predictions back
    in the target's own units). ``values``: ``(samples, outputs)``, one scale and offset per output (or one in
    all)."""
    offset, scale = _affine(scaler, source)
    values = np.asarray(values, dtype=np.float64)
    if scaler["kind"] == "none":
        return values
    for fitted in (offset, scale):
        if fitted.ndim == 1 and (values.ndim != 2 or values.shape[1] != fitted.size):
            raise DataError(f"{source}: fitted on {fitted.size} output{'s' if fitted.size != 1 else ''}, got "
                            f"predictions of shape {values.shape}")
    return values * scale + offset


def checked_target_scaler(scaler: object, source: str = "target scaler") -> dict | None:
    """A target scaler read from a file (a model's metadata), checked: the dict, or None when the targets were
    not scaled (``None`` or kind ``none``). Anything else is a one-line DataError naming ``source``."""
    if scaler is None:
        return None
    if not isinstance(scaler, dict) or scaler.get("kind") not in TARGET_SCALINGS:
        kind = scaler.get("kind") if isinstance(scaler, dict) else type(scaler).__name__
        raise DataError(f"{source}: expected a target scaling of kind {' or '.join(TARGET_SCALINGS)}, got "
                        f"{excerpt(kind)}")
    if scaler["kind"] == "none":
        return None
    _affine(scaler, source)
    return scaler


def compose_scalers(first: dict, second: dict) -> dict:
    """The single scaler that applies ``first`` and then ``second``.

    Used to describe, from raw source values, the scaling of data that was
    already scaled once (pixels / 255, then standardized).
    """
    o1, s1 = _affine(first)
    o2, s2 = _affine(second)
    if second["kind"] == "none":
        return dict(first)
    if first["kind"] == "none":
        return dict(second)
    offset, scale = np.broadcast_arrays(o1 + s1 * o2, s1 * s2)
    return {"kind": second["kind"], "offset": offset.tolist(), "scale": scale.tolist()}
