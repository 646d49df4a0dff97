"""Per-epoch hooks: early stopping, gradient diagnostics, checkpoints, history files.

A callback subclasses ``Callback`` and overrides the hooks it needs. It may set
``trainer.stop_training = True`` to end training after the current epoch.
Callbacks with state that must survive an interruption implement
``state_dict()``/``load_state_dict()`` (arrays on the device plus JSON info).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .. import validators as check
from ..errors import ConfigError
from ..io.atomic import write_text_atomic
from ..metrics import format_loss

if TYPE_CHECKING:  # for the hints only: the trainer imports this module
    from .trainer import Trainer


class Callback:
    #: True for callbacks that only print or write files: in a distributed run only rank 0 runs them.
    root_only: bool = False

    def on_train_begin(self, trainer: Trainer) -> None:
        """Called once at the start of ``fit`` (also when resuming)."""

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        """Called after each epoch with its history record (already appended to ``trainer.history``)."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Called once when training ends normally (all epochs, or stopped early)."""

    def on_interrupt(self, trainer: Trainer) -> None:
        """Called on Ctrl-C, after the model was rolled back to the last completed epoch."""

    def state_dict(self) -> tuple[dict, dict]:
        return {}, {}

    def load_state_dict(self, arrays: dict, info: dict) -> None:
        """Restore what ``state_dict`` returned."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs; at the end, restore
    the weights of the best epoch (``restore_best``).

    ``monitor``: ``val_loss`` or ``train_loss``, or ``val_<name>`` / ``train_<name>`` of one of the trainer's
    metrics (``val_accuracy``; ``val_mae``, ``val_r2`` for MSE), checked when training begins. A loss improves
    when it falls, a metric as its ``higher_is_better`` says."""

    def __init__(self, patience: int = 5, *, monitor: str = "val_loss", min_delta: float = 0.0,
                 restore_best: bool = True):
        patience = check.positive_int(patience, "patience", owner="EarlyStopping")
        if not isinstance(monitor, str) or not monitor.startswith(("val_", "train_")):
            raise ConfigError(f"EarlyStopping: monitor must be val_loss, train_loss, or val_<metric> or "
                              f"train_<metric> of one of the trainer's metrics, got {monitor!r}")
        min_delta = check.number(min_delta, "min_delta", low=0, owner="EarlyStopping")
        restore_best = check.flag(restore_best, "restore_best", owner="EarlyStopping")
        self.patience, self.monitor, self.min_delta, self.restore_best = patience, monitor, min_delta, restore_best
        self.higher_is_better = False  # a loss; set from the metric when training begins
        self.best_value: float | None = None
        self.best_epoch = 0
        self.wait = 0
        self.best_weights: dict | None = None

    def on_train_begin(self, trainer: Trainer) -> None:
        name = self.monitor.split("_", 1)[1]
        if name == "loss":
            self.higher_is_better = False
            return
        metric = next((m for m in trainer.metrics if m.name == name), None)
        if metric is None:
            choices = ", ".join(f"{part}_{m}" for part in ("val", "train")
                                for m in ["loss", *(m.name for m in trainer.metrics)])
            raise ConfigError(f"EarlyStopping: monitor {self.monitor!r} is not recorded by this run "
                              f"(its loss is {trainer.loss_fn!r}); expected one of {choices}")
        self.higher_is_better = bool(metric.higher_is_better)

    def _improved(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if not self.higher_is_better:
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        value = record.get(self.monitor)
        if value is None:
            raise ConfigError(f"EarlyStopping monitors {self.monitor}, which this run does not record "
                              f"(give validation data or a validation split)")
        if self._improved(value):
            self.best_value, self.best_epoch, self.wait = value, record["epoch"], 0
            if self.restore_best:
                self.best_weights = trainer.copy_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                trainer.stop_training = True
                trainer.log(f"early stopping: {self.monitor} has not improved for {self.patience} epochs "
                            f"(best {format_loss(self.best_value)} at epoch {self.best_epoch})")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None and self.best_epoch != trainer.epoch:
            trainer.set_weights(self.best_weights)
            trainer.log(f"restored the weights of epoch {self.best_epoch} "
                        f"({self.monitor} {format_loss(self.best_value)})")

    def state_dict(self) -> tuple[dict, dict]:
        info = {"best_value": self.best_value, "best_epoch": self.best_epoch, "wait": self.wait}
        return dict(self.best_weights or {}), info

    def load_state_dict(self, arrays: dict, info: dict) -> None:
        self.best_value, self.best_epoch, self.wait = info["best_value"], info["best_epoch"], info["wait"]
        self.best_weights = dict(arrays) or None


class GradientMonitor(Callback):
    """Warn when a parameter's gradient norm vanishes or explodes.

    Vanishing: the norm stays below ``vanish_below`` (absolute), or below
    ``vanish_ratio`` times the largest norm in the model, for ``patience``
    epochs in a row — the layer has effectively stopped learning (typical of
    deep sigmoid/tanh stacks and long recurrences). Exploding: the norm exceeds
    ``explode_above`` (try a lower learning rate or gradient clipping).
    """

    root_only = True

    def __init__(self, *, vanish_below: float = 1e-7, vanish_ratio: float = 1e-4, explode_above: float = 1e3,
                 patience: int = 3):
        self.vanish_below, self.vanish_ratio, self.explode_above = vanish_below, vanish_ratio, explode_above
        self.patience = patience
        self.low_epochs: dict[str, int] = {}
        self.warned: set[tuple[str, str]] = set()

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        norms = {k: v for k, v in record.get("grad_norms", {}).items() if v is not None and math.isfinite(v)}
        if not norms:
            return
        largest = max(norms.values())
        vanished, exploded = [], []
        for name, norm in norms.items():
            if norm < self.vanish_below or norm < self.vanish_ratio * largest:
                self.low_epochs[name] = self.low_epochs.get(name, 0) + 1
            else:
                self.low_epochs[name] = 0
            if self.low_epochs[name] >= self.patience and (name, "vanish") not in self.warned:
                self.warned.add((name, "vanish"))
                vanished.append(f"{name} ({norm:.1e})")
            if norm > self.explode_above and (name, "explode") not in self.warned:
                self.warned.add((name, "explode"))
                exploded.append(f"{name} ({norm:.1e})")
        if vanished:
            self._warn(trainer, f"vanishing gradients: {', '.join(vanished)} below {self.vanish_ratio:g} of the "
                                f"largest gradient norm ({largest:.1e}) for {self.patience}+ epochs; those layers "
                                f"have practically stopped learning (try ReLU, He initialization, or fewer layers)")
        if exploded:
            self._warn(trainer, f"exploding gradients at epoch {record['epoch']}: {', '.join(exploded)} above "
                                f"{self.explode_above:g} (try a lower learning rate or --clip-norm)")

    def _warn(self, trainer: Trainer, message: str) -> None:
        trainer.log(f"warning: {message}")
        warnings.warn(message, RuntimeWarning, stacklevel=2)

    def state_dict(self) -> tuple[dict, dict]:
        return {}, {"low_epochs": self.low_epochs, "warned": sorted(list(w) for w in self.warned)}

    def load_state_dict(self, arrays: dict, info: dict) -> None:
        self.low_epochs = dict(info.get("low_epochs", {}))
        self.warned = {tuple(w) for w in info.get("warned", [])}


class HistoryWriter(Callback):
    """Rewrite ``path`` (JSON lines, one record per epoch) atomically after every epoch.

    Place it after a ``Checkpoint`` that saves every epoch: the history file then never lists an epoch that
    the checkpoint lacks, even if the process is killed between the two writes. At the start of training (a
    resume) it rewrites the file from ``trainer.history``, which a resumed trainer has from its checkpoint."""

    root_only = True

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def _write(self, trainer: Trainer) -> None:
        write_text_atomic(self.path, "".join(json.dumps(record) + "\n" for record in trainer.history))

    def on_train_begin(self, trainer: Trainer) -> None:
        if trainer.history or self.path.exists():
            self._write(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self._write(trainer)

    def on_interrupt(self, trainer: Trainer) -> None:
        self._write(trainer)


class Checkpoint(Callback):
    """Save a resumable checkpoint (weights, optimizer state, epoch, history, callback state) to ``path``
    every ``every`` epochs, at the end, and on Ctrl-C."""

    root_only = True

    def __init__(self, path: str | os.PathLike, *, every: int = 1, run_config: dict | None = None):
        every = check.positive_int(every, "every", owner="Checkpoint")
        self.path, self.every, self.run_config = Path(path), every, run_config or {}

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.epoch % self.every == 0:
            trainer.save_checkpoint(self.path, run_config=self.run_config)

    def on_train_end(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path, run_config=self.run_config)

    def on_interrupt(self, trainer: Trainer) -> None:
        trainer.save_checkpoint(self.path, run_config=self.run_config)
