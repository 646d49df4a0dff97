"""Seeds and random numbers, which the array API standard does not provide.

Two kinds of generator live here:

* ``HostRandom`` draws on the host with NumPy. Initial weights come from it and
  are then copied to the device, so one seed gives the same starting weights
  on every backend.
* ``DeviceRandom`` subclasses (one per backend) draw directly on the device:
  shuffles and dropout masks during training, where a host round trip per
  step would cost too much.

A seed is an int or a sequence of ints (for example ``(seed, epoch)``), so
training can derive one fresh, reproducible stream per epoch instead of
saving generator state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Seed = int | Sequence[int]
#: An array shape: a tuple (or list) of sizes.
Shape = Sequence[int]


def seed_to_int(seed: Seed) -> int:
    """Fold an int or sequence of ints into one 63-bit int (for libraries that need one)."""
    words = np.random.SeedSequence(_entropy(seed)).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _entropy(seed: Seed):
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        return int(seed)
    values = [int(s) for s in seed]
    if any(v < 0 for v in values):
        raise ValueError(f"seed must contain non-negative integers, got {tuple(values)}")
    return values


class HostRandom:
    """A seeded NumPy generator on the host; its arrays go to a device with ``backend.from_host``."""

    def __init__(self, seed: Seed = 0):
        self.seed = seed
        self._rng = np.random.default_rng(_entropy(seed))

    def uniform(self, shape: Shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        return self._rng.uniform(low, high, size=tuple(shape))

    def normal(self, shape: Shape, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        return self._rng.normal(mean, std, size=tuple(shape))

    def integers(self, low: int, high: int, shape: Shape = ()) -> np.ndarray:
        return self._rng.integers(low, high, size=tuple(shape))

    def permutation(self, n: int) -> np.ndarray:
        return self._rng.permutation(n)

    def spawn_seed(self) -> int:
        """A fresh seed for a child generator (one per layer, say)."""
        return int(self._rng.integers(0, 2**62))


class DeviceRandom:
    """Random numbers drawn on one backend's device. Subclasses implement ``_uniform01``,
    ``_normal01`` and ``permutation``; everything else is built from those."""

    def __init__(self, backend: Any, seed: Seed):
        self.backend = backend
        self.seed = seed

    def uniform(self, shape: Shape, low: float = 0.0, high: float = 1.0, dtype: Any = None) -> Any:
        with self.backend.activate():
            u = self._uniform01(tuple(shape), dtype or self.backend.float_dtype)
            if low == 0.0 and high == 1.0:
                return u
            return u * (high - low) + low

    def normal(self, shape: Shape, mean: float = 0.0, std: float = 1.0, dtype: Any = None) -> Any:
        with self.backend.activate():
            z = self._normal01(tuple(shape), dtype or self.backend.float_dtype)
            if mean == 0.0 and std == 1.0:
                return z
            return z * std + mean

    def bernoulli(self, shape: Shape, p: float, dtype: Any = None) -> Any:
        """An array of 1s (with probability ``p``) and 0s, of a floating dtype."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"bernoulli probability must be in [0, 1], got {p}")
        dtype = dtype or self.backend.float_dtype
        with self.backend.activate():
            u = self._uniform01(tuple(shape), dtype)
            return self.backend.xp.astype(u < p, dtype)

    def _uniform01(self, shape, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    def _normal01(self, shape, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    def permutation(self, n: int) -> Any:  # pragma: no cover - abstract
        """A random permutation of ``0..n-1`` as an int64 array on the device."""
        raise NotImplementedError
