"""Shape inference: what each layer makes of an input shape, worked out without building anything.

``infer(cls, options, input_shape) -> (config, output_shape)`` takes a layer type, the constructor options a
user wrote (a model spec leaves out the sizes the input decides: ``Dense``'s ``in_features``, ``Conv2D``'s
``in_channels``, a recurrent layer's ``input_size``, ...) and the shape of one example reaching the layer
(no batch axis). It returns the options with those sizes filled in, and the shape of one example leaving the
layer. A size given that does not fit the input, or an input of the wrong rank, is a ``ShapeError`` saying
what the layer expected; a missing or malformed option a ``ConfigError``. Nothing is allocated, so a spec or
a model file can be checked (and summarized) before its weights exist.

Shapes are tuples of ints, or None for an axis whose length is not known (the time axis of a recurrent
model read from a model file, say). A layer type of your own (``register_layer``) can take part by defining
a classmethod ``infer_shapes(options, input_shape) -> (config, output_shape)``; without one its output shape
is found by building it on NumPy and running one example of zeros through it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from backends import get_backend

from .. import validators as check
from ..errors import ConfigError, ShapeError
from . import LAYER_TYPES
from .activations import Activation
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .fixed_point import FixedPointRecurrent
from .normalization import BatchNorm1D, BatchNorm2D, LayerNorm
from .pooling import _Pool2D
from .recurrent import Recurrent
from .shape import Flatten, Reshape
from .windows import as_pair, output_size

Shape = tuple  # of int (or None: a length not known)


def shape_text(shape: Sequence[int | None]) -> str:
    """``(1, 8, 8)``, ``(None, 62)``, ``(64,)``: a shape as Python writes a tuple, None for unknown lengths."""
    return "(" + ", ".join("None" if n is None else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _size(options: dict, name: str, *, required: bool = True):
    value = options.get(name)
    if value is None and not required:
        return None
    if name not in options:
        raise ConfigError(f"{name} must be a positive integer, got nothing")
    return check.positive_int(value, name)


def _fill(options: dict, name: str, value, input_shape) -> dict:
    """``options`` with ``name`` set to ``value`` (what the input decides); a different value given is an
    error naming both."""
    given = options.get(name)
    if given is not None and value is not None and given != value:
        raise ShapeError(f"{name} = {given!r}, but its input has shape {shape_text(input_shape)}, which gives "
                         f"{name} = {value!r}")
    if given is None and value is None:
        raise ShapeError(f"{name} cannot be inferred from an input of shape {shape_text(input_shape)}; give it")
    return {**options, name: given if given is not None else value}


def _rank(input_shape, ranks: tuple[int, ...], expected: str) -> None:
    if len(input_shape) not in ranks:
        raise ShapeError(f"expected input of shape {expected} per example, got {shape_text(input_shape)}"
                         + (" (declare input_shape = \"image\" in the spec, or put a Reshape layer before it)"
                            if 3 in ranks and len(input_shape) == 1 else ""))


def _dense(options, input_shape):
    _rank(input_shape, (1, 2, 3, 4, 5, 6), "(..., features)")
    options = _fill(options, "in_features", input_shape[-1], input_shape)
    return options, (*input_shape[:-1], _size(options, "out_features"))


def _spatial(kernel, stride, padding, dilation, input_shape, owner: str) -> tuple:
    out: list[int | None] = []
    for axis in (0, 1):
        size = input_shape[1 + axis]
        if size is None:
            out.append(None)
            continue
        n = output_size(size, kernel[axis], stride[axis], padding[axis], dilation[axis])
        if n < 1:
            raise ShapeError(f"an input of {input_shape[1]}x{input_shape[2]} pixels is smaller than the "
                             f"{'dilated ' if dilation != (1, 1) else ''}kernel {kernel[0]}x{kernel[1]} "
                             f"(padding {padding[0]}x{padding[1]}); {owner} would have no output")
        out.append(n)
    return tuple(out)


def _conv2d(options, input_shape):
    _rank(input_shape, (3,), "(channels, height, width)")
    options = _fill(options, "in_channels", input_shape[0], input_shape)
    out_channels = _size(options, "out_channels")
    kernel = as_pair(options.get("kernel_size"), "kernel_size", "Conv2D", minimum=1)
    stride = as_pair(options.get("stride", 1), "stride", "Conv2D", minimum=1)
    padding = as_pair(options.get("padding", 0), "padding", "Conv2D", minimum=0)
    dilation = as_pair(options.get("dilation", 1), "dilation", "Conv2D", minimum=1)
    return options, (out_channels, *_spatial(kernel, stride, padding, dilation, input_shape, "Conv2D"))


def _pool2d(cls):
    def infer_pool(options, input_shape):
        name = cls.__name__
        _rank(input_shape, (3,), "(channels, height, width)")
        kernel = as_pair(options.get("kernel_size"), "kernel_size", name, minimum=1)
        stride = kernel if options.get("stride") is None else as_pair(options["stride"], "stride", name, minimum=1)
        padding = as_pair(options.get("padding", 0), "padding", name, minimum=0)
        return options, (input_shape[0], *_spatial(kernel, stride, padding, (1, 1), input_shape, name))

    return infer_pool


def _same(options, input_shape):
    return options, tuple(input_shape)


def _flatten(options, input_shape):
    _rank(input_shape, tuple(range(1, 8)), "(...)")
    return options, (None if None in input_shape else math.prod(input_shape),)


def _reshape(options, input_shape):
    shape = check.positive_ints(options.get("shape"), "shape", expected="a non-empty list of positive integers")
    if None not in input_shape and math.prod(input_shape) != math.prod(shape):
        raise ShapeError(f"cannot reshape {shape_text(input_shape)} ({math.prod(input_shape)} values per example) "
                         f"to {shape_text(tuple(shape))} ({math.prod(shape)} values)")
    return options, tuple(shape)


def _batchnorm(name: str, ranks, expected: str):
    def infer_batchnorm(options, input_shape):
        _rank(input_shape, ranks, expected)
        return _fill(options, name, input_shape[0], input_shape), tuple(input_shape)

    return infer_batchnorm


def _layernorm(options, input_shape):
    given = options.get("normalized_shape")
    if given is None:
        options = {**options, "normalized_shape": [input_shape[-1]]}
    else:
        normalized = list(check.positive_ints([given] if check.is_integer(given) else given, "normalized_shape",
                                              expected="a positive integer or a list of them"))
        if len(normalized) >= len(input_shape) + 1 or list(input_shape[len(input_shape) - len(normalized):]) != \
                normalized:
            raise ShapeError(f"normalized_shape = {given!r} is not the trailing shape of its input "
                             f"{shape_text(input_shape)}")
    return options, tuple(input_shape)


def _embedding(options, input_shape):
    _rank(input_shape, tuple(range(0, 7)), "(...) of token indices")
    _size(options, "num_embeddings")
    return options, (*input_shape, _size(options, "embedding_dim"))


def _recurrent(options, input_shape):
    _rank(input_shape, (2,), "(time, features)")
    options = _fill(options, "input_size", input_shape[-1], input_shape)
    hidden = _size(options, "hidden_size") * (2 if options.get("bidirectional", False) is True else 1)
    return options, ((input_shape[0], hidden) if options.get("return_sequences", True) is not False else (hidden,))


def _fixed_point(options, input_shape):
    _rank(input_shape, (1,), "(features,)")
    options = _fill(options, "input_size", input_shape[0], input_shape)
    return options, (_size(options, "hidden_size"),)


#: The rule of each built-in layer type (a subclass uses its nearest base class's rule).
RULES = {
    Dense: _dense, Conv2D: _conv2d, Flatten: _flatten, Reshape: _reshape, Activation: _same, Dropout: _same,
    BatchNorm1D: _batchnorm("num_features", (1, 2), "(features,) or (channels, length)"),
    BatchNorm2D: _batchnorm("num_channels", (3,), "(channels, height, width)"),
    LayerNorm: _layernorm, Embedding: _embedding, Recurrent: _recurrent, FixedPointRecurrent: _fixed_point,
}


def infer(cls, options: dict, input_shape: Sequence[int | None]) -> tuple[dict, Shape]:
    """``(config, output_shape)`` of layer type ``cls`` given ``options`` and one example's ``input_shape``."""
    input_shape = tuple(input_shape)
    own = getattr(cls, "infer_shapes", None)
    if own is not None:
        config, output = own(dict(options), input_shape)
        return config, tuple(output)
    if issubclass(cls, _Pool2D):  # one rule for both, named after the layer type in its messages
        return _pool2d(cls)(dict(options), input_shape)
    for base in cls.__mro__:
        rule = RULES.get(base)
        if rule is not None:
            return rule(dict(options), input_shape)
    return options, _probe(cls, options, input_shape)


def _probe(cls, options: dict, input_shape) -> Shape:
    """The output shape of a layer type with no rule: built on NumPy, run on one example of zeros."""
    if None in input_shape:
        raise ShapeError(f"{cls.__name__} has no shape rule (define infer_shapes) and its input "
                         f"{shape_text(input_shape)} has an axis of unknown length")
    backend = get_backend("numpy")
    layer = cls(**options, backend=backend)
    with backend.activate():
        x = backend.xp.zeros((1, *input_shape), dtype=layer.dtype)
        return tuple(int(n) for n in layer.forward(x).shape[1:])


def input_shape_of(description: dict) -> Shape | None:
    """The shape of one example a built model takes, as far as its first layers tell (None where they do
    not, such as the time axis of a recurrent layer or the image size of a convolution); None when the
    first layer says nothing (a user's layer)."""
    config = description.get("config", {})
    kind = description.get("type")
    if kind == "Sequential":
        layers = config.get("layers") or []
        for layer in layers:  # parameter-free layers that keep the shape (activations, dropout) say nothing
            if layer.get("type") not in ("Sigmoid", "Tanh", "ReLU", "LeakyReLU", "GELU", "Softmax", "Dropout"):
                return input_shape_of(layer)
        return None
    if kind == "Dense":
        return (config.get("in_features"),)
    if kind == "Reshape":  # flat rows, reshaped by the model itself
        shape = config.get("shape") or []
        return (math.prod(shape),) if shape else None
    if kind == "Conv2D":
        return (config.get("in_channels"), None, None)
    if kind in ("RNN", "LSTM", "GRU"):
        return (None, config.get("input_size"))
    if kind == "FixedPointRecurrent":
        return (config.get("input_size"),)
    if kind == "Embedding":
        return (None,)
    return None


def layer_shapes(description: dict, input_shape: Sequence[int | None]) -> list[tuple[str, str, dict, Shape]]:
    """``(name, type, config, output_shape)`` of every layer of a built model's ``architecture`` (the layers
    of a ``Sequential`` in order, named by their index; nested ones ``"2.0"``), given its input shape."""
    rows: list = []
    shape = tuple(input_shape)

    def walk(item, name):
        nonlocal shape

        kind, config = item.get("type"), item.get("config", {})
        if kind == "Sequential":
            for i, child in enumerate(config.get("layers", [])):
                walk(child, f"{name}.{i}" if name else str(i))
            return
        cls = LAYER_TYPES.get(kind)
        if cls is None:
            raise ConfigError(f"unknown layer type {kind!r}")
        try:
            _, shape = infer(cls, config, shape)
        except (ConfigError, ShapeError) as exc:
            raise type(exc)(f"layer {name or 0} ({kind}): {exc}") from None
        rows.append((name or "0", kind, config, shape))

    walk(description, "")
    return rows


__all__ = ["RULES", "infer", "input_shape_of", "layer_shapes", "shape_text"]
