"""``backprop summary MODEL_OR_SPEC``: a model's layers, output shapes, parameter counts and memory, as a table
in the style of Keras' ``model.summary()``.

Worked out from the architecture description (``architecture(model)``, or a spec laid out for a dataset's
shapes) without building the model: a spec too big for the machine can still be summarized. A model file is
loaded (on NumPy) first, which checks it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from backends import dtype_name, get_backend

from . import specs
from .data import load_dataset
from .errors import BackpropError, ConfigError
from .io.model_files import load_model
from .layers import architecture, declared_arrays
from .layers.shape_inference import input_shape_of, layer_shapes, shape_text
from .models import mlp
from .optim import make_optimizer
from .runs import output_count, resolve_model_path, target_shape
from .validators import is_integer

#: Bytes per value of the dtypes a model may have.
DTYPE_BYTES = {"float16": 2, "float32": 4, "float64": 8}


def summarize(target: str | os.PathLike, *, dataset: str | None = None,
              data_dir: str | os.PathLike | None = None) -> str:
    """The summary table of a model file, a run directory, a spec file or a shipped spec's name."""
    text = str(target)
    path = Path(text)
    if text.endswith((".toml", ".json")) or (not path.exists() and "/" not in text and "\\" not in text):
        return summarize_spec(text, dataset=dataset, data_dir=data_dir)
    if dataset is not None or data_dir is not None:
        raise ConfigError(f"--dataset and --data-dir lay out a spec; {text} is a model, whose shapes are fixed")
    return summarize_model_file(text)


def summarize_spec(name_or_path: str, *, dataset: str | None = None, data_dir: str | os.PathLike | None = None
                   ) -> str:
    """The summary of a spec laid out for ``dataset`` (default: its ``[train]`` dataset; none when the spec
    declares its input shape and names no "outputs")."""
    spec = specs.load_spec(name_or_path)
    name = dataset if dataset is not None else spec.train.get("dataset")
    if name is None and isinstance(spec.input_shape, list):
        resolved = specs.resolve(spec, spec.input_shape)  # "outputs" without a dataset is an error here
        title = f"{spec.source} for inputs of shape {list(spec.input_shape)}"
    else:
        task = str(spec.train.get("task", "classification"))
        loss = str(spec.train.get("loss", "mse" if task == "regression" else "cross_entropy"))
        data = load_dataset(name or "digits", data_dir=data_dir, task=task)
        input_shape = specs.input_shape_for(spec, data.num_features, data.image_shape)
        resolved = specs.resolve(spec, input_shape, outputs=output_count(data, loss), flat_features=data.num_features)
        specs.check_targets(resolved, target_shape(data, loss), f"the {data.name} dataset's targets")
        title = f"{spec.source} for {data.describe()}"
    input_shape = (resolved.flat_features,) if resolved.needs_reshape else resolved.input_shape
    optimizer = spec.train.get("optimizer", "adam")
    return table(title, resolved.architecture(), input_shape, "float32", optimizer)


def summarize_model_file(path_text: str) -> str:
    """The summary of a saved model (a model file, or a run directory's)."""
    path = resolve_model_path(path_text)
    model = load_model(path, backend="numpy")
    metadata = model.metadata
    description = architecture(model)
    declared = metadata.get("input_shape")
    input_shape: tuple[int | None, ...] | None
    if isinstance(declared, list) and declared and all(is_integer(n) and n > 0 for n in declared):
        input_shape = tuple(declared)
    else:
        input_shape = input_shape_of(description)
    options = metadata.get("options")
    options = options if isinstance(options, dict) else {}
    optimizer = options.get("optimizer") if isinstance(options.get("optimizer"), str) else None
    trained_on = f" (trained on {metadata['dataset']})" if isinstance(metadata.get("dataset"), str) else ""
    return table(f"{path}{trained_on}", description, input_shape, dtype_name(model.dtype), optimizer)


def table(title: str, description: dict[str, Any], input_shape: tuple[int | None, ...] | None, dtype: str,
          optimizer: str | None) -> str:
    """The summary text: one row per layer, then totals and the memory training takes (``input_shape``: one
    example's, None when unknown)."""
    size = DTYPE_BYTES.get(dtype, 4)
    arrays = declared_arrays(description) or {}
    layers = description["config"]["layers"] if description.get("type") == "Sequential" else [description]
    shapes = None
    if input_shape is not None:
        shapes = {name: shape for name, _, _, shape in layer_shapes(description, input_shape)}

    def count(prefix: str, kind: str) -> int:
        """Values of the ``kind`` arrays ("param" or "buffer") of the layer whose names start with ``prefix``."""
        return sum(math.prod(shape) for key, shape in arrays.items() if key.startswith(f"{kind}/{prefix}"))

    rows, activations = [], 0
    for index, layer in enumerate(layers):
        prefix = f"{index}." if description.get("type") == "Sequential" else ""
        params, buffers = count(prefix, "param"), count(prefix, "buffer")
        shape = _last_shape(shapes, str(index)) if shapes is not None else None
        if shape is not None and None not in shape:
            activations += math.prod(shape)
        rows.append((f"{index} ({layer.get('type')})",
                     "?" if shape is None else shape_text((None, *shape)),
                     f"{params:,}" + (f" + {buffers:,}" if buffers else ""), _bytes((params + buffers) * size)))
    header = ("Layer (type)", "Output shape", "Params", "Memory")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    rule = "=" * (sum(widths) + 6)
    lines = [f"Model: {title}", rule, _row(header, widths), rule]
    lines += [_row(row, widths) for row in rows]
    lines.append(rule)
    trainable = sum(math.prod(s) for k, s in arrays.items() if k.startswith("param/"))
    frozen = sum(math.prod(s) for k, s in arrays.items() if k.startswith("buffer/"))
    if input_shape is not None:
        lines.append(f"Input shape: {shape_text((None, *input_shape))} ({dtype})")
    lines.append(f"Trainable params: {trainable:,} ({_bytes(trainable * size)})")
    if frozen:
        lines.append(f"Non-trainable buffers (running statistics): {frozen:,} values ({_bytes(frozen * size)})")
    state = _optimizer_state(optimizer)
    if state is not None:
        kept = f", plus {state} {optimizer} state array{'s' if state > 1 else ''}" if state else ""
        lines.append(f"Training memory for the parameters: {_bytes(trainable * size * (2 + state))} (weights and "
                     f"gradients{kept})")
    if shapes is not None and activations:
        lines.append(f"Layer outputs: {activations:,} values per example ({_bytes(activations * size)}), about what "
                     f"the backward pass keeps per example of a batch")
    return "\n".join(lines)


def _last_shape(shapes: dict, index: str):
    """The output shape of top-level layer ``index`` (a nested Sequential's: its last layer's)."""
    if index in shapes:
        return shapes[index]
    nested = [name for name in shapes if name.startswith(index + ".")]
    return shapes[nested[-1]] if nested else None


def _optimizer_state(name) -> int | None:
    """How many state arrays per parameter the optimizer keeps (None: unknown)."""
    if not isinstance(name, str):
        return None
    try:
        return len(make_optimizer(name, mlp([1, 1], backend=get_backend("numpy"))).buffer_names())
    except BackpropError:
        return None


def _row(cells, widths) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()


def _bytes(n: int) -> str:
    """'0 B', '640 B', '48.2 KiB', '1.3 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024:
            return f"{value:,.1f} {unit}"
    return f"{value:,.1f} TiB"


__all__ = ["summarize", "summarize_model_file", "summarize_spec", "table"]
