"""Model and checkpoint files in the safetensors format.

safetensors stores named arrays plus a JSON header of strings; loading it
never executes code (unlike pickle). We put the architecture and any metadata
(training settings, class names, feature scaling, history) in the header, so a
file alone rebuilds the model on any backend. Every write goes through
``write_bytes_atomic``: an interrupted save leaves the previous file intact. (safetensors' own
``save_file`` is not used: it makes a temporary file of its own, renames it over ours, which leaves it
behind after a kill, and forces mode 0600.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends import get_backend

from ..errors import ModelFileError
from .atomic import write_bytes_atomic

FORMAT = "backprop"
FORMAT_VERSION = 1


def save_arrays(path, arrays: dict[str, np.ndarray], header: dict) -> None:
    """Write host arrays and a JSON-able header to a safetensors file, atomically."""
    from safetensors.numpy import save

    tensors = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                **{key: json.dumps(value) for key, value in header.items()}}
    write_bytes_atomic(path, save(tensors, metadata=metadata))


def load_arrays(path, *, kind: str = "model") -> tuple[dict[str, np.ndarray], dict]:
    """Read a file written by ``save_arrays``; a damaged or foreign file raises ``ModelFileError``."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {kind} file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ModelFileError(f"{path}: a safetensors file, but not one written by backprop "
                                     f"(no backprop header)")
            arrays = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{path}: not a readable {kind} file (damaged or not safetensors: {detail})") from None
    version = metadata.get("format_version", "?")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(f"{path}: {kind} file format version {version}; this backprop reads "
                             f"version {FORMAT_VERSION}")
    try:
        header = {key: json.loads(value) for key, value in metadata.items()
                  if key not in ("format", "format_version")}
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: damaged header ({exc})") from None
    return arrays, header


def model_arrays(model, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's parameters and buffers as host arrays, keyed ``param/<name>`` and ``buffer/<name>``."""
    backend = model.backend
    arrays = {f"{prefix}param/{n}": backend.to_host(a) for n, a in model.named_parameters().items()}
    arrays.update({f"{prefix}buffer/{n}": backend.to_host(a) for n, a in model.named_buffers().items()})
    return arrays


def assign_model_arrays(model, arrays: dict[str, np.ndarray], source, prefix: str = "") -> None:
    """Copy saved arrays into the model's parameters and buffers, checking names and shapes."""
    backend = model.backend
    for kind, current in (("param", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, array in current.items():
            key = f"{prefix}{kind}/{name}"
            if key not in arrays:
                raise ModelFileError(f"{source}: missing array {key!r} for this architecture")
            saved = arrays[key]
            if tuple(saved.shape) != tuple(array.shape):
                raise ModelFileError(f"{source}: array {key!r} has shape {tuple(saved.shape)}, the architecture "
                                     f"expects {tuple(array.shape)}")
            array[...] = backend.from_host(saved, dtype=array.dtype)


def save_model(path, model, metadata: dict | None = None) -> None:
    """Save a model (architecture, weights and metadata) to one ``.safetensors`` file."""
    from ..layers import architecture

    header = {"kind": "model", "architecture": architecture(model), "dtype": _dtype_name(model),
              "metadata": metadata or {}}
    save_arrays(path, model_arrays(model), header)


def load_model(path, backend=None):
    """Load a model saved by ``save_model`` onto ``backend`` (default: the current one).

    Returns ``(model, metadata)``.
    """
    from ..errors import ConfigError
    from ..layers import build

    arrays, header = load_arrays(path)
    if header.get("kind") not in ("model", "checkpoint"):
        raise ModelFileError(f"{path}: expected a model file, found a {header.get('kind')!r} file")
    backend = get_backend(backend)
    try:
        model = build(header["architecture"], backend=backend, dtype=header.get("dtype", "float32"))
    except (KeyError, ConfigError, TypeError) as exc:
        raise ModelFileError(f"{path}: the architecture in the header cannot be rebuilt ({exc})") from None
    assign_model_arrays(model, arrays, path)
    return model, header.get("metadata", {})


def _dtype_name(model) -> str:
    from backends import dtype_name

    return dtype_name(model.dtype)


def save_checkpoint(path, trainer, *, run_config: dict) -> None:
    """Save everything needed to resume ``trainer`` (see ``Trainer.state_dict``) to one file, atomically."""
    from ..layers import architecture

    arrays, info = trainer.state_dict()
    backend = trainer.backend
    host = {name: backend.to_host(array) for name, array in arrays.items()}
    header = {"kind": "checkpoint", "architecture": architecture(trainer.model),
              "dtype": _dtype_name(trainer.model), "trainer": info, "run": run_config}
    save_arrays(path, host, header)


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and header of a checkpoint file (to rebuild the run before loading it)."""
    arrays, header = load_arrays(path, kind="checkpoint")
    if header.get("kind") != "checkpoint":
        raise ModelFileError(f"{path}: expected a checkpoint, found a {header.get('kind')!r} file "
                             f"(resume needs the checkpoint.safetensors a training run writes)")
    return arrays, header


def load_checkpoint(path, trainer) -> dict:
    """Restore a checkpoint into ``trainer`` (built with the same architecture); returns the run config."""
    from ..errors import ConfigError

    arrays, header = read_checkpoint(path)
    backend = trainer.backend
    device_arrays = {}
    for name, array in arrays.items():
        device_arrays[name] = backend.from_host(array, dtype=None if array.dtype.kind in "iub" else
                                                backend.dtype(str(array.dtype)))
    try:
        trainer.load_state_dict(device_arrays, header["trainer"])
    except (KeyError, ConfigError) as exc:
        raise ModelFileError(f"{path}: checkpoint does not match this model and optimizer ({exc})") from None
    return header.get("run", {})
