"""Ready-made architectures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from backends import Backend, get_backend

from .errors import ConfigError
from .init import host_random
from .layers import ACTIVATIONS, Dense, Layer, Sequential, activation
from .validators import is_integer


def mlp(sizes: Iterable[int], *, activation_name: str = "relu", seed: int | None = 0,
        backend: Backend | str | None = None, dtype: Any = None) -> Sequential:
    """A multilayer perceptron: ``mlp([64, 256, 128, 10])`` is input 64, two hidden layers, 10 outputs.

    Hidden layers use He initialization for the ReLU family and Glorot otherwise.
    The output layer gives raw scores (use ``CrossEntropy`` on them).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or not all(is_integer(n) and n > 0 for n in sizes):
        raise ConfigError(f"mlp: expected at least two positive integer layer sizes, got {sizes}")
    sizes = [int(n) for n in sizes]  # NumPy integers too, as plain ints (the model file's JSON takes those)
    if activation_name.lower().replace("-", "_") not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation_name!r}; expected one of {', '.join(ACTIVATIONS)}")
    backend = get_backend(backend)
    rng = host_random(seed)
    family = activation_name.lower().replace("-", "_")
    init = "he_uniform" if family in ("relu", "leaky_relu", "gelu") else "glorot_uniform"
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        last = i == len(sizes) - 2
        layers.append(Dense(n_in, n_out, init="glorot_uniform" if last else init, rng=rng.spawn_seed(),
                            backend=backend, dtype=dtype))
        if not last:
            layers.append(activation(activation_name, backend=backend, dtype=dtype))
    return Sequential(layers)
