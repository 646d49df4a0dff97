"""Checkpoints: everything a training run needs to resume, as a plain data object (``TrainingState``) and the
one safetensors file it is written to (a model file's format and checks, see :mod:`.model_files`).

This module knows nothing of the trainer: ``Trainer.training_state()`` makes a ``TrainingState`` and
``Trainer.restore(state)`` takes one; ``write_checkpoint`` and ``read_checkpoint`` move it to and from a
file. The file holds the arrays under ``param/``, ``buffer/`` (the model), ``optimizer/`` and
``callback/<i>/`` (callback ``i``'s), and the rest in the header: ``architecture`` and ``dtype`` (as in a model
file, so ``load_model`` reads the model in a checkpoint), ``trainer`` (counters, seed, learning rate, the
optimizer's and callbacks' JSON state, history) and ``run`` (the options the run was started with).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends import Backend

from .. import validators as check
from ..errors import ConfigError, ModelFileError, short_repr
from ..layers import Layer
from .model_files import (
    assign_model_arrays,
    build_checked,
    described_model,
    load_arrays,
    save_arrays,
)

#: The prefixes of a checkpoint's arrays: the model's, the optimizer's, the callbacks'.
MODEL_PREFIXES = ("param/", "buffer/")
OPTIMIZER_PREFIX = "optimizer/"
CALLBACK_PREFIX = "callback/"


@dataclass
class CallbackState:
    """What one callback needs to resume (``Callback.state_dict()``, on the host): its class name, its
    JSON-able ``info`` and its arrays (early stopping's copy of the best weights, say)."""

    type: str
    info: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# eq=False: arrays have no single truth value, so a generated ``==`` would raise; compare fields instead.
@dataclass(eq=False)
class TrainingState:
    """Everything a training run needs to resume, in host (NumPy) arrays and JSON-able values.

    The randomness of a run (shuffling, dropout masks) is drawn from generators seeded with
    ``(seed, epoch)``, so ``seed`` and ``epoch`` are its whole random state.
    """

    architecture: dict[str, Any]  # ``backprop.layers.architecture(model)``
    dtype: str  # the model's float dtype: "float32", ...
    weights: dict[str, np.ndarray]  # the model's arrays, keyed ``param/<name>`` and ``buffer/<name>``
    optimizer_arrays: dict[str, np.ndarray]  # ``Optimizer.state_dict()``'s arrays
    optimizer_info: dict[str, Any]  # and its JSON-able part
    epoch: int  # completed epochs
    epochs: int  # epochs the run trains in all
    seed: int
    base_lr: float  # the learning rate the schedule starts from
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    callbacks: list[CallbackState] = field(default_factory=list)  # in the trainer's order
    run: dict[str, Any] = field(default_factory=dict)  # the options the run was started with (the CLI's)


def write_checkpoint(path: str | os.PathLike, state: TrainingState) -> None:
    """Write ``state`` to ``path`` atomically: a failed or interrupted write keeps the previous file."""
    arrays: dict[str, np.ndarray] = dict(state.weights)
    arrays.update({OPTIMIZER_PREFIX + key: value for key, value in state.optimizer_arrays.items()})
    for index, callback in enumerate(state.callbacks):
        arrays.update({f"{CALLBACK_PREFIX}{index}/{key}": value for key, value in callback.arrays.items()})
    trainer = {"epoch": state.epoch, "epochs": state.epochs, "seed": state.seed, "base_lr": state.base_lr,
               "optimizer": state.optimizer_info,
               "callbacks": [{"type": c.type, "info": c.info} for c in state.callbacks], "history": state.history}
    header = {"kind": "checkpoint", "architecture": state.architecture, "dtype": state.dtype, "trainer": trainer,
              "run": state.run}
    save_arrays(path, arrays, header)


def read_checkpoint(path: str | os.PathLike) -> TrainingState:
    """The ``TrainingState`` in a checkpoint file, checked: a damaged, foreign or malformed file is a one-line
    ``ModelFileError`` naming it."""
    arrays, header = load_arrays(path, kind="checkpoint")
    if header.get("kind") != "checkpoint":
        raise ModelFileError(f"{path}: expected a checkpoint, found a {short_repr(header.get('kind'))} file "
                             f"(resume needs the checkpoint.safetensors a training run writes)")
    info = header.get("trainer")
    _check_trainer_info(path, info)
    assert isinstance(info, dict)  # for the type checker: _check_trainer_info said so
    run = header.get("run", {})
    if not isinstance(run, dict):
        raise ModelFileError(f"{path}: header entry 'run' must be a dict of options, got {type(run).__name__}")
    for key, value in run.items():
        if value is not None and not isinstance(value, (str, bool, numbers.Real)):
            raise ModelFileError(f"{path}: run option {short_repr(key)} must be a string, a number or null, "
                                 f"got {type(value).__name__}")
    architecture, dtype = described_model(path, header)
    callbacks = [CallbackState(entry["type"], entry["info"]) for entry in info.get("callbacks", [])]
    weights, optimizer_arrays = {}, {}
    for key, array in arrays.items():
        if key.startswith(MODEL_PREFIXES):
            weights[key] = array
        elif key.startswith(OPTIMIZER_PREFIX):
            optimizer_arrays[key[len(OPTIMIZER_PREFIX):]] = array
        elif key.startswith(CALLBACK_PREFIX) and key.count("/") >= 2:
            index, name = key[len(CALLBACK_PREFIX):].split("/", 1)
            if not index.isdigit() or int(index) >= len(callbacks):
                raise ModelFileError(f"{path}: array {short_repr(key)} belongs to no callback the checkpoint lists")
            callbacks[int(index)].arrays[name] = array
        else:
            raise ModelFileError(f"{path}: array {short_repr(key)} is not part of a checkpoint (expected names "
                                 f"starting with {', '.join(MODEL_PREFIXES + (OPTIMIZER_PREFIX, CALLBACK_PREFIX))})")
    return TrainingState(architecture=architecture, dtype=dtype, weights=weights, optimizer_arrays=optimizer_arrays,
                         optimizer_info=info["optimizer"], epoch=info["epoch"], epochs=info["epochs"],
                         seed=info.get("seed", 0), base_lr=info["base_lr"], history=list(info["history"]),
                         callbacks=callbacks, run=run)


def check_fits(state: TrainingState, shapes: Mapping[str, tuple[int, ...]], source: object = "checkpoint") -> None:
    """A ``ModelFileError`` (naming ``source``) unless ``state`` holds exactly the arrays of a model whose arrays
    have ``shapes`` (keyed ``param/<name>``, ``buffer/<name>``), and its callbacks' copies of weights have their
    shapes too. Checked before anything is restored."""
    for key in sorted(set(shapes) | set(state.weights)):
        expected = tuple(shapes[key]) if key in shapes else None
        found = tuple(state.weights[key].shape) if key in state.weights else None
        if expected != found:
            what = (f"has no array {key!r}" if found is None else f"holds an array {key!r} the model lacks"
                    if expected is None else f"array {key!r} has shape {found}, the model expects {expected}")
            raise ModelFileError(f"{source}: the checkpoint does not fit the model its run options describe: the "
                                 f"checkpoint {what}")
    for index, callback in enumerate(state.callbacks):  # saved copies of the weights (early stopping's best, say)
        for name, array in callback.arrays.items():
            if name in shapes and tuple(array.shape) != tuple(shapes[name]):
                raise ModelFileError(f"{source}: array '{CALLBACK_PREFIX}{index}/{name}' has shape "
                                     f"{tuple(array.shape)}, the model's {name!r} {tuple(shapes[name])}")


def model_from_state(state: TrainingState, backend: Backend, source: object = "checkpoint") -> Layer:
    """The model ``state`` describes, on ``backend`` (activated here), with the state's weights."""
    header = {"architecture": state.architecture, "dtype": state.dtype}
    with backend.activate():
        model = build_checked(source, header, state.weights, backend)
        assign_model_arrays(model, state.weights, source)
    return model


def _check_trainer_info(path: object, info: object) -> None:
    """The types of the ``trainer`` header entry (what ``write_checkpoint`` wrote)."""
    if not isinstance(info, dict):
        raise ModelFileError(f"{path}: header entry 'trainer' must be a dict, got {type(info).__name__}")

    def bad(key: str, expected: str) -> ModelFileError:
        shown = short_repr(info[key]) if key in info else "nothing"
        return ModelFileError(f"{path}: trainer entry {key!r} must be {expected}, got {shown}")

    def count(value: object, low: int) -> bool:
        # isinstance: for the type checker
        return check.is_integer(value) and isinstance(value, int) and value >= low

    if not count(info.get("epoch"), 0):
        raise bad("epoch", "an integer >= 0")
    if not count(info.get("epochs"), 1):
        raise bad("epochs", "an integer >= 1")
    if not count(info.get("seed", 0), 0):
        raise bad("seed", "an integer >= 0")
    try:
        check.number(info.get("base_lr"), "base_lr", low=0)
    except ConfigError:
        raise bad("base_lr", "a finite number >= 0") from None
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


__all__ = ["CallbackState", "TrainingState", "check_fits", "model_from_state", "read_checkpoint", "write_checkpoint"]
