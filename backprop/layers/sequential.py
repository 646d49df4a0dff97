"""``Sequential``: layers applied one after another; the backward pass runs their closures in reverse."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from backends import Backend
from backends.array_types import Array
from backends.random import Seed

from ..errors import ConfigError
from .activations import GELU, LeakyReLU, ReLU, Sigmoid, Tanh
from .base import Backprop, Layer
from .dense import Dense


def _fusable_activation(layers: list[Layer], i: int) -> tuple[Dense, str, float] | None:
    """``(dense, name, negative_slope)`` when ``layers[i]`` is a ``Dense`` layer (``dense``) whose next layer is an
    activation the backends fuse with it (``backends.base.FUSED_ACTIVATIONS``), else None."""
    dense = layers[i]
    if i + 1 >= len(layers) or type(dense) is not Dense:
        return None
    after = layers[i + 1]
    if type(after) is LeakyReLU:
        return dense, "leaky_relu", after.negative_slope
    names: dict[type[Layer], str] = {ReLU: "relu", Tanh: "tanh", Sigmoid: "sigmoid", GELU: "gelu"}
    name = names.get(type(after))
    return None if name is None else (dense, name, 0.01)


def architecture(layer: Layer) -> dict:
    """A JSON description of a layer or model: its type and constructor arguments."""
    return {"type": type(layer).__name__, "config": layer.config()}


def _leading_parameter_free(layers) -> int:
    """How many layers without parameters (or buffers) come before the first one with some; 0 when none has."""
    for i, layer in enumerate(layers):
        if layer.params or layer.buffers or layer.named_children():
            return i
    return 0


class Sequential(Layer):
    """``Sequential([Dense(64, 32), ReLU(), Dense(32, 10)])``.

    Parameters are named ``"<index>.<name>"`` (``"0.weight"``, ``"2.bias"``). The same layer object may appear
    at several places (its weights are then shared, and its parameters listed once, under the first index).
    """

    def __init__(self, layers: Iterable[Layer], *, backend: Backend | str | None = None):
        layers = list(layers)
        if not layers:
            raise ConfigError("Sequential: expected at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential: item {i} is a {type(layer).__name__}, not a Layer")
        backend = backend if backend is not None else layers[0].backend
        super().__init__(backend=backend, dtype=None)
        for i, layer in enumerate(layers):
            if layer.backend is not self.backend:
                raise ConfigError(f"Sequential: layer {i} ({layer!r}) is on backend {layer.backend.name}, "
                                  f"but the model is on {self.backend.name}; create all layers on one backend")
        self.dtype = layers[0].dtype
        self.layers = layers

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> Layer:
        return self.layers[index]

    def __iter__(self) -> NoReturn:
        # Without this, Python would iterate through __getitem__, and the old ``model, metadata = load_model(p)``
        # would quietly unpack a two-layer model into its layers.
        raise TypeError("a Sequential model is not iterable: its layers are model.layers (load_model returns the "
                        "model alone, with what was saved beside it in model.metadata)")

    def forward(self, x: Array, *, training: bool = False) -> Array:
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    #: The first layer decides whether ``backprop(dy, input_grad=False)`` really skips dL/dinput; the
    #: keyword is always accepted.
    can_skip_input_grad = True

    def begin_update(self, x: Array, *, training: bool = True) -> tuple[Array, Backprop]:
        """Each layer's ``begin_update`` in order; the returned ``backprop`` calls their closures in reverse.
        ``backprop(dy, input_grad=False)`` (what training uses) lets the first layer skip dL/dinput, which
        nothing needs; then None is returned (the layers after it still get theirs)."""
        backprops = []
        layers, i = self.layers, 0
        while i < len(layers):
            fused = _fusable_activation(layers, i)
            if fused is not None:  # a Dense layer and its activation: one fused pass each way
                dense, activation, negative_slope = fused
                x, layer_backprop = dense.begin_fused_update(x, activation, negative_slope)
                i += 2
            else:
                x, layer_backprop = layers[i].begin_update(x, training=training)
                i += 1
            backprops.append(layer_backprop)
        # The parameter-free layers a model may start with (a Reshape of flat rows, say) need no gradient when
        # the model's input gradient is not wanted: then their backward passes are skipped, and the first layer
        # with parameters may skip its dL/dinput, as if it came first.
        start = _leading_parameter_free(self.layers)
        first, rest, leading = backprops[start], backprops[:start:-1], backprops[start - 1::-1] if start else []
        first_can_skip = self.layers[start].can_skip_input_grad

        def backprop(grad_output, input_grad: bool = True):
            for layer_backprop in rest:
                grad_output = layer_backprop(grad_output)
            if not input_grad and first_can_skip:
                return first(grad_output, input_grad=False)
            grad_output = first(grad_output)
            if not input_grad:
                return None if leading else grad_output
            for layer_backprop in leading:
                grad_output = layer_backprop(grad_output)
            return grad_output

        return x, backprop

    def reseed(self, seed: Seed) -> None:
        base = tuple(seed) if isinstance(seed, (tuple, list)) else (seed,)
        for i, layer in enumerate(self.layers):
            layer.reseed((*base, i))

    def config(self) -> dict:
        return {"layers": [architecture(layer) for layer in self.layers]}

    def named_children(self) -> dict[str, Layer]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def _map_arrays(self, convert, *, backend=None, dtype=None, memo=None):
        memo = {} if memo is None else memo
        clone = super()._map_arrays(convert, backend=backend, dtype=dtype, memo=memo)
        clone.layers = [layer._map_arrays(convert, backend=backend, dtype=dtype, memo=memo) for layer in self.layers]
        return clone
