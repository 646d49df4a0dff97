"""Learning-rate schedules: pure functions of the epoch, so resuming needs only the epoch number.

``schedule(epoch, base_lr)`` is the learning rate for ``epoch`` (0-based, the
epoch about to run). Set it before each epoch::

    for epoch in range(start, epochs):
        optimizer.lr = schedule(epoch, base_lr)

``WarmUp(epochs, then)`` rises linearly, ``base_lr * (epoch + 1) / epochs``,
over its first ``epochs`` epochs (so the last warm-up epoch runs at
``base_lr``), then follows ``then`` shifted to start at 0:
``then(epoch - epochs, base_lr)``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from .. import validators as check
from ..errors import ConfigError
from .base import check_lr


class Schedule:
    """Base class: ``schedule(epoch, base_lr) -> lr``; ``config()`` gives JSON values that rebuild it."""

    name: str = ""

    def __call__(self, epoch: int, base_lr: float) -> float:
        owner = type(self).__name__
        check.non_negative_int(epoch, "epoch", owner=owner)
        return self._lr(epoch, check_lr(owner, base_lr))

    def _lr(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError

    def config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()

    # unhashable, as equality compares the (mutable) configs; the typing idiom of typeshed for this
    __hash__: ClassVar[None] = None  # type: ignore[assignment]


class Constant(Schedule):
    """``base_lr`` every epoch."""

    name = "constant"

    def _lr(self, epoch, base_lr):
        return base_lr


class StepDecay(Schedule):
    """``base_lr * gamma ** (epoch // step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""

    name = "step"

    def __init__(self, step_size: int, gamma: float = 0.1):
        self.step_size = check.positive_int(step_size, "step_size", owner="StepDecay")
        self.gamma = check.number(gamma, "gamma", low=0, high=1, low_open=True, owner="StepDecay")

    def _lr(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)

    def config(self) -> dict:
        return {"name": self.name, "step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """``base_lr * gamma ** epoch`` (``torch.optim.lr_scheduler.ExponentialLR``)."""

    name = "exponential"

    def __init__(self, gamma: float):
        self.gamma = check.number(gamma, "gamma", low=0, high=1, low_open=True, owner="ExponentialDecay")

    def _lr(self, epoch, base_lr):
        return base_lr * self.gamma ** epoch

    def config(self) -> dict:
        return {"name": self.name, "gamma": self.gamma}


class Cosine(Schedule):
    """``min_lr + (base_lr - min_lr) * (1 + cos(π epoch / total_epochs)) / 2``; ``min_lr`` from ``total_epochs`` on.

    As ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max=total_epochs``, ``eta_min=min_lr``.
    """

    name = "cosine"

    def __init__(self, total_epochs: int, min_lr: float = 0.0):
        self.total_epochs = check.positive_int(total_epochs, "total_epochs", owner="Cosine")
        self.min_lr = check.number(min_lr, "min_lr", low=0, owner="Cosine")

    def _lr(self, epoch, base_lr):
        t = min(epoch, self.total_epochs)
        return self.min_lr + (base_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.total_epochs)) / 2

    def config(self) -> dict:
        return {"name": self.name, "total_epochs": self.total_epochs, "min_lr": self.min_lr}


class WarmUp(Schedule):
    """``base_lr * (epoch + 1) / epochs`` for the first ``epochs`` epochs, then ``then(epoch - epochs, base_lr)``."""

    name = "warmup"

    def __init__(self, epochs: int, then: Schedule | None = None):
        self.epochs = check.positive_int(epochs, "epochs", owner="WarmUp")
        if then is None:
            then = Constant()
        if not isinstance(then, Schedule):
            raise ConfigError(f"WarmUp: then must be a Schedule, got {type(then).__name__}")
        self.then = then

    def _lr(self, epoch, base_lr):
        if epoch < self.epochs:
            return base_lr * (epoch + 1) / self.epochs
        return self.then._lr(epoch - self.epochs, base_lr)

    def config(self) -> dict:
        return {"name": self.name, "epochs": self.epochs, "then": self.then.config()}


SCHEDULES: dict[str, type[Schedule]] = {
    "constant": Constant,
    "step": StepDecay,
    "exponential": ExponentialDecay,
    "cosine": Cosine,
}


def make_schedule(name: str, *, epochs: int, warmup_epochs: int = 0, **options: Any) -> Schedule:
    """The schedule the CLI names, for a run of ``epochs`` epochs, with ``warmup_epochs`` of linear warm-up first.

    The decay covers the ``epochs - warmup_epochs`` epochs after the warm-up. Options:
    ``"constant"``: none; ``"step"``: ``step_size`` (default: a third of the decay epochs, at least 1),
    ``gamma=0.1``; ``"exponential"``: ``gamma=0.95``; ``"cosine"``: ``min_lr=0.0``.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
    epochs = check.positive_int(epochs, "epochs", owner="make_schedule")
    warmup_epochs = check.non_negative_int(warmup_epochs, "warmup_epochs", owner="make_schedule")
    if warmup_epochs >= epochs:
        raise ConfigError(f"make_schedule: warmup_epochs must be less than epochs ({epochs}), got {warmup_epochs}")
    decay_epochs = epochs - warmup_epochs
    defaults = {
        "constant": {},
        "step": {"step_size": max(1, decay_epochs // 3), "gamma": 0.1},
        "exponential": {"gamma": 0.95},
        "cosine": {"total_epochs": decay_epochs, "min_lr": 0.0},
    }[key]
    allowed = [k for k in defaults if k != "total_epochs"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"schedule {key!r}: unknown option(s) {', '.join(unknown)}; "
                          f"expected {', '.join(allowed) if allowed else 'none'}")
    schedule = SCHEDULES[key](**{**defaults, **options})
    return WarmUp(warmup_epochs, schedule) if warmup_epochs else schedule


def schedule_from_config(config: dict) -> Schedule:
    """Rebuild a schedule from its ``config()``."""
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(f"schedule config must be a dict with a 'name', got {config!r}")
    options = {k: v for k, v in config.items() if k != "name"}
    name = config["name"]
    cls: type[Schedule]
    if name == "warmup":
        if "then" in options:
            options["then"] = schedule_from_config(options["then"])
        cls = WarmUp
    elif name in SCHEDULES:
        cls = SCHEDULES[name]
    else:
        raise ConfigError(f"unknown learning-rate schedule {name!r}; expected one of "
                          f"{', '.join([*SCHEDULES, 'warmup'])}")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"schedule {name!r}: bad options {sorted(options)} ({exc})") from None
