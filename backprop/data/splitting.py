"""Holding out part of a labelled set, stratified: the test part of a user file, and the validation part of a
training set (the one validation split, used by ``backprop train`` and ``Trainer`` alike)."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from ..errors import ConfigError, DataError
from ..validators import is_number


def holdout_size(n: int | None, fraction: object, source: str, name: str = "the held-out fraction") -> int | None:
    """How many of ``n`` samples a hold-out of ``fraction`` takes: ``round(fraction * n)``. A ConfigError when
    ``fraction`` (called ``name`` in the message) is not a number in (0, 1), a DataError when either part would
    be empty; ``n=None`` checks the fraction alone (before the data is known)."""
    value = float(cast(float, fraction)) if is_number(fraction) else math.nan  # a real number
    if not 0 < value < 1:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1, got {fraction!r}")
    if n is None:
        return None
    target = round(value * n)
    if target < 1 or target >= n:
        raise DataError(f"{source}: cannot hold out {value:g} of {n} samples: one part would be empty")
    return target


def stratified_holdout(y: np.ndarray, fraction: float, seed: int, source: str,
                       name: str = "the held-out fraction") -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) index arrays; each class gives about ``fraction`` of its samples.

    The held-out total is ``round(fraction * n)``, shared among classes by
    largest remainder so small classes are not rounded away unfairly. Targets
    that are not one class per sample (regression targets, a class per step of
    a sequence) have no classes to share by: they are held out as one stratum,
    a plain seeded random draw.
    """
    y = np.asarray(y)
    n = len(y)
    target = cast(int, holdout_size(n, fraction, source, name))  # an int: n is given
    if y.ndim != 1 or y.dtype.kind not in "biu":
        y = np.zeros(n, dtype=np.int64)
    classes, y_codes = np.unique(y, return_inverse=True)
    counts = np.bincount(y_codes, minlength=len(classes))
    quota = counts * (target / n)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: target - int(take.sum())]] += 1
    # A random order within each class: shuffle, then stable-sort by class.
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(y_codes[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.arange(n) - starts[y_codes[order]]
    held = np.sort(order[rank_in_class < take[y_codes[order]]])
    kept = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return kept, held


def split_validation(x: Any, y: Any, fraction: float = 0.1, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a stratified random part of a training set: ``(x_train, y_train, x_val, y_val)``.

    Stratified: every class contributes about ``fraction`` of its samples, so
    the validation accuracy is not skewed by an unlucky class mix. The same
    ``seed`` gives the same split on every NumPy version that keeps
    ``default_rng`` streams (they are documented stable), and samples keep their
    original order within each part.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"split_validation: {len(x)} samples but {len(y)} labels")
    kept, held = stratified_holdout(y, fraction, seed, "split_validation", "the validation fraction")
    return x[kept], y[kept], x[held], y[held]
