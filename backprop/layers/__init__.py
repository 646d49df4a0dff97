"""Layers: each one's forward pass and backward pass (the chain rule) side by side."""

from typing import Any

from backends import Backend

from ..errors import ConfigError, short_repr
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


#: How deep ``Sequential`` models may nest in a description; deeper ones (only a crafted file has them) are
#: refused before the recursive build could overflow the stack.
MAX_NESTING = 64


def _layer_type(description) -> tuple[type[Layer], dict]:
    """The class and config of one entry of a description, checked (a ``ConfigError`` otherwise)."""
    kind = description.get("type") if isinstance(description, dict) else None
    cls = LAYER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(LAYER_TYPES))
        raise ConfigError(f"unknown layer description {short_repr(description)}; layer types: {known}")
    config = description.get("config", {})
    if not isinstance(config, dict):
        raise ConfigError(f"{kind}: config must be a dict of constructor arguments, got {type(config).__name__}")
    if cls is Sequential and not isinstance(config.get("layers", []), list):
        raise ConfigError(f"Sequential: config 'layers' must be a list, got {type(config['layers']).__name__}")
    return cls, config


def _walk(description):
    """(class, config, parameter-name prefix) of every entry, Sequentials included, without recursion; a
    description nested deeper than ``MAX_NESTING`` is a ``ConfigError``."""
    stack = [(description, "", 1)]
    while stack:
        item, prefix, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ConfigError(f"the architecture nests Sequential layers more than {MAX_NESTING} deep")
        cls, config = _layer_type(item)
        yield cls, config, prefix
        if cls is Sequential:
            stack.extend((child, f"{prefix}{i}.", depth + 1) for i, child in enumerate(config.get("layers", [])))


def declared_arrays(description: dict) -> dict[str, tuple] | None:
    """The shapes of the parameters and buffers ``build(description)`` would create, keyed as in model files
    (``param/0.weight``, ``buffer/1.running_mean``), worked out without building (allocating) anything.

    None when a layer type cannot tell (a registered layer without ``array_shapes``). Declared sizes that are
    not even numbers come back as they are: they cannot match an array's shape.
    """
    shapes = {}
    for cls, config, prefix in _walk(description):
        if cls is Sequential:
            continue
        try:
            own = cls.array_shapes(config)
            if own is None:
                return None
            for key, shape in own.items():
                kind, name = key.split("/", 1)
                shapes[f"{kind}/{prefix}{name}"] = tuple(shape)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{cls.__name__}: invalid config {short_repr(config)} ({exc})") from None
    return shapes


def build(description: dict, *, backend: Backend | str | None = None, dtype: Any = None) -> Layer:
    """Rebuild a layer or model from ``architecture(...)`` (weights come separately)."""
    for _ in _walk(description):  # the whole description is checked (depth included) before anything is built
        pass
    return _build(description, backend, dtype)


def _build(description: dict, backend, dtype) -> Layer:
    cls, config = _layer_type(description)
    if cls is Sequential:
        return Sequential([_build(item, backend, dtype) for item in config.get("layers", [])], backend=backend)
    return cls(**config, backend=backend, dtype=dtype)


__all__ = ["ACTIVATIONS", "LAYER_TYPES", "MAX_NESTING", "Activation", "Layer", "activation", "architecture",
           "build", "declared_arrays", "register_layer", *LAYER_TYPES]
