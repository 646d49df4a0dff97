"""Layers: each one's forward pass and backward pass (the chain rule) side by side."""

from ..errors import ConfigError
from .activations import ACTIVATIONS, GELU, Activation, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh, activation
from .base import Layer
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .fixed_point import FixedPointRecurrent
from .normalization import BatchNorm1D, BatchNorm2D, LayerNorm
from .pooling import AvgPool2D, MaxPool2D
from .recurrent import GRU, LSTM, RNN
from .sequential import Sequential, architecture
from .shape import Flatten, Reshape

#: Layer classes by name, for rebuilding a saved model from its architecture.
LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Dense, Dropout, Sequential, Sigmoid, Tanh, ReLU, LeakyReLU, GELU, Softmax,
                                  BatchNorm1D, BatchNorm2D, LayerNorm, Embedding,
                                  FixedPointRecurrent, RNN, LSTM, GRU, Conv2D, MaxPool2D, AvgPool2D, Flatten,
                                  Reshape)
}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a user-defined layer loadable from model files (usable as a class decorator)."""
    LAYER_TYPES[cls.__name__] = cls
    return cls


def build(description: dict, *, backend=None, dtype=None) -> Layer:
    """Rebuild a layer or model from ``architecture(...)`` (weights come separately)."""
    try:
        kind, config = description["type"], dict(description.get("config", {}))
        cls = LAYER_TYPES[kind]
    except (KeyError, TypeError):
        known = ", ".join(sorted(LAYER_TYPES))
        raise ConfigError(f"unknown layer description {description!r}; layer types: {known}") from None
    if cls is Sequential:
        layers = [build(item, backend=backend, dtype=dtype) for item in config.get("layers", [])]
        return Sequential(layers, backend=backend)
    return cls(**config, backend=backend, dtype=dtype)


__all__ = ["ACTIVATIONS", "LAYER_TYPES", "Activation", "Layer", "activation", "architecture", "build",
           "register_layer", *LAYER_TYPES]
