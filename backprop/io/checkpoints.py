"""Checkpoints: everything a training run needs to resume, in one safetensors file written like a model file
(see :mod:`.model_files` for the format and its checks), with the trainer's state in the header."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import ConfigError, ModelFileError
from .model_files import _dtype_name, _short, load_arrays, save_arrays


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
    """The arrays and header of a checkpoint file (to rebuild the run before loading it), checked."""
    arrays, header = load_arrays(path, kind="checkpoint")
    if header.get("kind") != "checkpoint":
        raise ModelFileError(f"{path}: expected a checkpoint, found a {_short(header.get('kind'))} file "
                             f"(resume needs the checkpoint.safetensors a training run writes)")
    _check_trainer_info(path, header.get("trainer"))
    run = header.get("run", {})
    if not isinstance(run, dict):
        raise ModelFileError(f"{path}: header entry 'run' must be a dict of options, got {type(run).__name__}")
    for key, value in run.items():
        if value is not None and not isinstance(value, (str, bool, numbers.Real)):
            raise ModelFileError(f"{path}: run option {_short(key)} must be a string, a number or null, "
                                 f"got {type(value).__name__}")
    return arrays, header


def _check_trainer_info(path, info) -> None:
    """The types of the ``trainer`` header entry (what ``Trainer.state_dict`` wrote)."""
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: header entry 'trainer' must be a dict, got {type(info).__name__}")

    def bad(key, expected):
        shown = _short(info[key]) if key in info else "nothing"
        return ModelFileError(f"{path}: trainer entry {key!r} must be {expected}, got {shown}")

    def count(value, low):
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    if not count(info.get("epoch"), 0):
        raise bad("epoch", "an integer >= 0")
    if not count(info.get("epochs"), 1):
        raise bad("epochs", "an integer >= 1")
    if not count(info.get("seed", 0), 0):
        raise bad("seed", "an integer >= 0")
    lr = info.get("base_lr")
    if not isinstance(lr, numbers.Real) or isinstance(lr, bool) or not math.isfinite(lr) or lr < 0:
        raise bad("base_lr", "a finite number >= 0")
    if not isinstance(info.get("optimizer"), dict):
        raise bad("optimizer", "a dict")
    history = info.get("history")
    if not isinstance(history, list) or not all(isinstance(record, dict) for record in history):
        raise bad("history", "a list of dicts")
    callbacks = info.get("callbacks", [])
    if not isinstance(callbacks, list) or not all(
            isinstance(c, dict) and isinstance(c.get("type"), str) and isinstance(c.get("info"), dict)
            for c in callbacks):
        raise bad("callbacks", "a list of {'type': name, 'info': dict}")


def load_checkpoint(path, trainer) -> dict:
    """Restore a checkpoint into ``trainer`` (built with the same architecture); returns the run config.

    The trainer's model (built from the checkpoint's run options) must have exactly the parameters and
    buffers the checkpoint holds, with the same shapes; this is checked before anything is restored.
    """
    arrays, header = read_checkpoint(path)
    current = trainer.model.named_arrays()
    saved = {key for key in arrays if key.startswith(("param/", "buffer/"))}
    for key in sorted(set(current) | saved):
        expected = tuple(current[key].shape) if key in current else None
        found = tuple(arrays[key].shape) if key in arrays else None
        if expected != found:
            what = (f"has no array {key!r}" if found is None else f"holds an array {key!r} the model lacks"
                    if expected is None else f"array {key!r} has shape {found}, the model expects {expected}")
            raise ModelFileError(f"{path}: the checkpoint does not fit the model its run options describe: the "
                                 f"checkpoint {what}")
    for key, array in arrays.items():  # saved copies of the weights (early stopping's best, say)
        if key.startswith("callback/"):
            weight = key.split("/", 2)[-1]
            if weight in current and tuple(array.shape) != tuple(current[weight].shape):
                raise ModelFileError(f"{path}: array {key!r} has shape {tuple(array.shape)}, the model's "
                                     f"{weight!r} {tuple(current[weight].shape)}")
    backend = trainer.backend
    device_arrays = {}
    for name, array in arrays.items():
        device_arrays[name] = backend.from_host(array, dtype=None if array.dtype.kind in "iub" else
                                                backend.dtype(str(array.dtype)))
    try:
        trainer.load_state_dict(device_arrays, header["trainer"])
    except (KeyError, ConfigError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: checkpoint does not match this model and optimizer "
                             f"({_short(str(exc), 300)})") from None
    return header.get("run", {})
