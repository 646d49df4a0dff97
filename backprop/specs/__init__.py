"""Model specs: an architecture written as a TOML (or JSON) file, for ``backprop train --model SPEC``.

A spec lists the layers in order, each a table with its ``type`` (a layer class: ``Dense``, ``Conv2D``,
``LSTM``, ...) and its constructor options, minus the sizes the input decides (``Dense``'s ``in_features``,
``Conv2D``'s ``in_channels``, a recurrent layer's ``input_size``, ...), which are inferred layer by layer
(``backprop/layers/shape_inference.py``). The value ``"outputs"`` stands for the number of outputs the
dataset needs (its classes, or its regression targets)::

    description = "A small CNN on the 8x8 digits"
    input_shape = "image"      # "flat" (the default), "image", "sequence", or a list such as [1, 8, 8]

    [train]                    # defaults for backprop train's options; the command line overrides them
    dataset = "digits"
    epochs = 30

    [[layers]]
    type = "Conv2D"
    out_channels = 16
    kernel_size = 3
    padding = 1

    [[layers]]
    type = "ReLU"
    ...

    [[layers]]
    type = "Dense"
    out_features = "outputs"

A layer table may also have a ``name``, used in messages only. Every mistake is one line naming the file,
the layer (``layers[3] (Conv2D)``) and what was expected, and shapes are checked from the first layer to the
last before anything is built or trained. The datasets hand the network flat rows of features; when the
spec's ``input_shape`` is not flat the built model starts with a ``Reshape`` to it, so the model (and its
model file) takes flat rows like every other: ``predict`` and ``evaluate`` need nothing else.

The specs shipped with backprop live in this package (``backprop train --model cnn-digits``); ``SHIPPED``
lists them.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from backends import Backend

from ..errors import ConfigError, ShapeError
from ..layers import LAYER_TYPES, Layer, Sequential
from ..layers import build as build_layer
from ..layers.shape_inference import infer, shape_text
from ..validators import is_integer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: What a spec's ``input_shape`` may say besides an explicit list of sizes.
INPUT_SHAPES = ("flat", "image", "sequence")
#: The top-level entries of a spec file.
SPEC_KEYS = ("description", "input_shape", "train", "layers")
#: Constructor arguments a spec does not set: the run decides them (seeds come from --seed).
RUN_ARGUMENTS = ("backend", "dtype", "rng", "seed")
#: The placeholder for the dataset's number of outputs.
OUTPUTS = "outputs"


@dataclass
class ModelSpec:
    """A spec read from a file (checked for form: types, options; shapes need the input, see ``resolve``)."""

    source: str  # the path, or the shipped name, as messages name it
    layers: list[dict]  # {"type": class name, "name": optional, "options": {...}}
    input_shape: object = "flat"
    train: dict = field(default_factory=dict)
    description: str = ""

    def where(self, index: int) -> str:
        """``cnn.toml: layers[3] "conv2" (Conv2D)``: where a message points."""
        layer = self.layers[index]
        name = f' "{layer["name"]}"' if layer.get("name") else ""
        return f"{self.source}: layers[{index}]{name} ({layer['type']})"


def shipped_names() -> list[str]:
    """The names of the specs shipped with backprop, sorted (without reading them)."""
    return sorted(entry.name[: -len(".toml")] for entry in resources.files(__name__).iterdir()
                  if entry.name.endswith(".toml"))


def shipped_specs() -> dict[str, str]:
    """The specs shipped with backprop: name -> description."""
    found = {}
    for entry in sorted(resources.files(__name__).iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            name = entry.name[: -len(".toml")]
            try:
                found[name] = str(tomllib.loads(entry.read_text(encoding="utf-8")).get("description", ""))
            except tomllib.TOMLDecodeError:  # pragma: no cover - the shipped files are tested
                found[name] = "(damaged)"
    return found


def spec_path(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """``(source, text)`` of the spec that ``name_or_path`` names: a shipped name, or a .toml/.json file."""
    text = str(name_or_path)
    if not text.strip():
        raise ConfigError("--model is empty; name a spec file (.toml or .json) or a shipped spec")
    shipped = resources.files(__name__).joinpath(f"{text}.toml")
    if "/" not in text and "\\" not in text and not text.endswith((".toml", ".json")):
        if shipped.is_file():
            return text, shipped.read_text(encoding="utf-8")
        names = ", ".join(shipped_names())
        raise ConfigError(f"--model {text}: no shipped spec of that name and not a .toml or .json file; shipped "
                          f"specs: {names}")
    path = Path(text)
    if not text.endswith((".toml", ".json")):
        raise ConfigError(f"--model {text}: expected a .toml or .json spec file")
    try:
        return text, path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--model {text}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--model {text}: a directory, not a spec file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{text}: not a text file (expected TOML or JSON)") from None
    except OSError as exc:
        raise ConfigError(f"--model {text}: cannot read it ({exc.strerror or exc})") from None


def load_spec(name_or_path: str | os.PathLike) -> ModelSpec:
    """Read and check a spec (a shipped name, or a path): its form, layer types and option names."""
    source, text = spec_path(name_or_path)
    if source.endswith(".json"):
        try:
            content = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
                from None
    else:
        try:
            content = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    return parse_spec(content, source)


def parse_spec(content: object, source: str = "spec") -> ModelSpec:
    """A ``ModelSpec`` from the dict a TOML or JSON file holds, checked."""
    if not isinstance(content, dict):
        raise ConfigError(f"{source}: expected a table of {', '.join(SPEC_KEYS)}, got {type(content).__name__}")
    unknown = [key for key in content if key not in SPEC_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown entry {unknown[0]!r}; a spec has {', '.join(SPEC_KEYS)}")
    description = content.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description must be a string, got {description!r}")
    train = content.get("train", {})
    if not isinstance(train, dict):
        raise ConfigError(f"{source}: [train] must be a table of backprop train options, got {train!r}")
    train = {str(key).replace("-", "_"): value for key, value in train.items()}
    input_shape = content.get("input_shape", "flat")
    if not (input_shape in INPUT_SHAPES or (
            isinstance(input_shape, list) and input_shape
            and all(is_integer(n) and n > 0 for n in input_shape))):
        raise ConfigError(f"{source}: input_shape must be {', '.join(map(repr, INPUT_SHAPES))} or a list of positive "
                          f"sizes such as [1, 8, 8], got {input_shape!r}")
    layers = content.get("layers")
    if not isinstance(layers, list) or not layers:
        raise ConfigError(f"{source}: expected a non-empty list of layers ([[layers]] tables with a type)")
    spec = ModelSpec(source, [], input_shape, train, description)
    for index, entry in enumerate(layers):
        spec.layers.append(_parse_layer(entry, f"{source}: layers[{index}]"))
    return spec


def _parse_layer(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table with a type and options, got {entry!r}")
    kind = entry.get("type")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}: no layer type (type = \"Dense\", say)")
    cls = _layer_class(kind, where)
    name = entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where} ({cls.__name__}): name must be a string, got {name!r}")
    where = f'{where} "{name}" ({cls.__name__})' if name else f"{where} ({cls.__name__})"
    options = {key: value for key, value in entry.items() if key not in ("type", "name")}
    if cls is LAYER_TYPES["Sequential"]:
        raise ConfigError(f"{where}: a spec is already a sequence of layers; list the layers themselves")
    accepted = _constructor_options(cls)
    for key in options:
        if key in RUN_ARGUMENTS:
            raise ConfigError(f"{where}: {key} is set by the run, not the spec (seeds come from --seed)")
        if accepted is not None and key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{where}: unknown option {key!r}{hint} ({cls.__name__} takes "
                              f"{', '.join(accepted) or 'no options'})")
    return {"type": cls.__name__, "name": name, "options": options}


def _layer_class(kind: str, where: str) -> type[Layer]:
    if kind in LAYER_TYPES:
        return LAYER_TYPES[kind]
    by_lower = {name.lower(): cls for name, cls in LAYER_TYPES.items()}
    if kind.lower() in by_lower:
        return by_lower[kind.lower()]
    close = difflib.get_close_matches(kind.lower(), list(by_lower), n=1)
    hint = f"did you mean {by_lower[close[0]].__name__}? " if close else ""
    raise ConfigError(f"{where}: unknown layer type {kind!r}; {hint}layer types: {', '.join(sorted(LAYER_TYPES))}")


def _constructor_options(cls: type) -> list[str] | None:
    """The options a layer class's constructor takes (None: it takes any, ``**kwargs`` of its own)."""
    names = []
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__:
            continue
        parameters = inspect.signature(klass.__dict__["__init__"]).parameters.values()
        names += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                  and p.name not in RUN_ARGUMENTS and p.name not in names]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return names


# ------------------------------------------------------------------------------------------- shapes and build

@dataclass
class Resolved:
    """A spec made concrete for one input: every layer's complete constructor options and output shape."""

    spec: ModelSpec
    input_shape: tuple  # one example, as the first spec layer sees it
    flat_features: int | None  # the width of the flat rows the model takes (None: it takes input_shape)
    layers: list[tuple[str, dict, tuple]]  # (type, config, output shape)

    @property
    def output_shape(self) -> tuple:
        return self.layers[-1][2]

    def architecture(self) -> dict:
        """The ``architecture(...)`` description of the model (a ``Sequential``), as model files store it."""
        items = [{"type": kind, "config": config} for kind, config, _ in self.layers]
        if self.needs_reshape:
            items.insert(0, {"type": "Reshape", "config": {"shape": list(self.input_shape)}})
        return {"type": "Sequential", "config": {"layers": items}}

    @property
    def needs_reshape(self) -> bool:
        return self.flat_features is not None and tuple(self.input_shape) != (self.flat_features,)


def input_shape_for(spec: ModelSpec, num_features: int, example_shape: Sequence[int] | None = None
                    ) -> tuple[int, ...]:
    """One example's shape as the spec's first layer sees it, for a dataset of flat rows of ``num_features``
    whose examples had ``example_shape`` (an image's (H, W) or (C, H, W), a sequence's (T, F)) before
    they were flattened."""
    declared = spec.input_shape
    if isinstance(declared, list):
        shape = tuple(declared)
    elif declared == "flat":
        shape = (num_features,)
    elif not example_shape:
        raise ConfigError(f"{spec.source}: input_shape = {declared!r}, but the dataset's examples are flat rows "
                          f"of {num_features} features; declare the shape, such as input_shape = [1, 8, 8]")
    elif declared == "image":
        shape = (1, *example_shape) if len(example_shape) == 2 else tuple(example_shape)
        if len(shape) != 3:
            raise ConfigError(f"{spec.source}: input_shape = \"image\", but the dataset's examples have shape "
                              f"{tuple(example_shape)}, not an image's (height, width) or (channels, height, width)")
    else:
        shape = tuple(example_shape)
    if math.prod(shape) != num_features:
        raise ShapeError(f"{spec.source}: input_shape {list(shape)} holds {math.prod(shape)} values, but the "
                         f"dataset's examples have {num_features} features")
    return shape


def resolve(spec: ModelSpec, input_shape: Sequence[int], *, outputs: int | None = None, flat_features: int | None = None
            ) -> Resolved:
    """Every layer's options completed and its output shape worked out, first to last; the first layer that
    does not fit is a one-line error naming it. ``outputs`` replaces the ``"outputs"`` placeholder."""
    shape, layers = tuple(input_shape), []
    for index, layer in enumerate(spec.layers):
        options = {}
        for key, value in layer["options"].items():
            if value == OUTPUTS:
                if outputs is None:
                    raise ConfigError(f"{spec.where(index)}: {key} = \"outputs\" needs a dataset to count its "
                                      f"outputs; give --dataset")
                value = outputs
            options[key] = value
        try:
            config, shape = infer(LAYER_TYPES[layer["type"]], options, shape)
        except (ConfigError, ShapeError) as exc:
            raise type(exc)(f"{spec.where(index)}: {_without_owner(str(exc), layer['type'])}") from None
        except (TypeError, ValueError) as exc:  # a user layer's own probe
            raise ConfigError(f"{spec.where(index)}: {exc}") from None
        layers.append((layer["type"], config, shape))
    return Resolved(spec, tuple(input_shape), flat_features, layers)


def check_targets(resolved: Resolved, target_shape: tuple[int, ...], what: str) -> None:
    """The last layer must give one example's target shape (``target_shape``: class scores for each label, or
    the regression targets); otherwise a one-line error before training."""
    output = resolved.output_shape
    if tuple(output) != tuple(target_shape) and None not in output:
        last = len(resolved.spec.layers) - 1
        raise ShapeError(f"{resolved.spec.where(last)}: the model gives {_shape(output)} per example, but "
                         f"{what} needs {_shape(target_shape)}")


def _shape(shape: Sequence[int | None]) -> str:
    return shape_text(tuple(shape))


def _without_owner(message: str, kind: str) -> str:
    """A layer's own message without its leading ``"Conv2D: "``: the spec's message names the layer already."""
    prefix = f"{kind}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def build(resolved: Resolved, *, seed: int = 0, backend: Backend | str | None = None, dtype: Any = None
          ) -> Sequential:
    """The model, built layer by layer through ``backprop.layers.build``. The k-th layer that draws initial
    weights gets the seed ``seed + k`` (as the worked examples seed theirs), so a spec and its example start
    from the same weights."""
    layers: list[Layer] = []
    draws = 0
    if resolved.needs_reshape:
        layers.append(build_layer({"type": "Reshape", "config": {"shape": list(resolved.input_shape)}},
                                  backend=backend, dtype=dtype))
    for index, (kind, config, _) in enumerate(resolved.layers):
        cls = LAYER_TYPES[kind]
        options = dict(config)
        if "rng" in inspect.signature(cls).parameters:
            options["rng"] = seed + draws
            draws += 1
        try:
            layers.append(build_layer({"type": kind, "config": options}, backend=backend, dtype=dtype))
        except ConfigError as exc:
            raise ConfigError(f"{resolved.spec.where(index)}: {_without_owner(str(exc), kind)}") from None
        except TypeError as exc:
            raise ConfigError(f"{resolved.spec.where(index)}: {exc}") from None
    return Sequential(layers, backend=backend)


__all__ = ["INPUT_SHAPES", "OUTPUTS", "ModelSpec", "Resolved", "build", "check_targets", "input_shape_for",
           "load_spec", "parse_spec", "resolve", "shipped_names", "shipped_specs", "spec_path"]
