"""Weight initializers.

Weights are drawn on the host from a seeded NumPy generator (``HostRandom``)
and then copied to the device, so a seed gives the same starting weights on
every backend. Glorot/Xavier keeps the variance of activations and gradients
roughly constant through tanh/sigmoid layers; He does the same for ReLU, which
zeroes half its inputs.
"""

from __future__ import annotations

import math
from typing import Any

from backends import Backend, HostRandom
from backends.array_types import Array

from . import validators as check
from .errors import ConfigError

_seed_source = HostRandom(0)


def set_seed(seed: int) -> None:
    """Seed the generator that layers use when they are given no ``rng``."""
    global _seed_source
    _seed_source = HostRandom(seed)


def host_random(rng: HostRandom | int | None) -> HostRandom:
    """A ``HostRandom`` from a generator, a seed, or (None) the global seed source."""
    if rng is None:
        return HostRandom(_seed_source.spawn_seed())
    if isinstance(rng, HostRandom):
        return rng
    if check.is_integer(rng):
        return HostRandom(check.non_negative_int(rng, "seed"))
    raise ConfigError(f"rng must be an int seed, a HostRandom or None, got {type(rng).__name__}")


def _fans(shape) -> tuple[int, int]:
    if len(shape) == 2:  # Dense weights: (in_features, out_features)
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])  # convolution kernels: (out_channels, in_channels, kh, kw)
    return shape[1] * receptive, shape[0] * receptive


def glorot_uniform(rng: HostRandom, shape: tuple[int, ...]) -> Any:
    fan_in, fan_out = _fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(shape, -limit, limit)


def glorot_normal(rng: HostRandom, shape: tuple[int, ...]) -> Any:
    fan_in, fan_out = _fans(shape)
    return rng.normal(shape, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def he_uniform(rng: HostRandom, shape: tuple[int, ...]) -> Any:
    fan_in, _ = _fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(shape, -limit, limit)


def he_normal(rng: HostRandom, shape: tuple[int, ...]) -> Any:
    fan_in, _ = _fans(shape)
    return rng.normal(shape, 0.0, math.sqrt(2.0 / fan_in))


def zeros(rng: HostRandom, shape: tuple[int, ...]) -> Any:
    return rng.uniform(shape, 0.0, 0.0)


INITIALIZERS = {
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "zeros": zeros,
}


def initialize(name: str, shape: tuple[int, ...], *, rng: HostRandom, backend: Backend, dtype: Any) -> Array:
    """Draw an initial parameter on the host and place it on ``backend`` with ``dtype``."""
    try:
        initializer = INITIALIZERS[name]
    except KeyError:
        raise ConfigError(f"unknown initializer {name!r}; expected one of {', '.join(INITIALIZERS)}") from None
    return backend.from_host(initializer(rng, tuple(shape)), dtype=dtype)
