"""Optimizers, learning-rate schedules and gradient clipping.

Each optimizer is a functional core that returns the updated parameters and
state for lists of arrays (``sgd``, ``adam``, ``adamw``, ``rmsprop``,
``adagrad``; arrays may be immutable) and a class that is handed the parameter
store (``Parameter`` boxes, in groups if you like), gathers parameters,
gradients and state from it and stores what the core returns (``SGD``,
``Adam``, ...), as in ``torch.optim``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .adagrad import AdaGrad, Adagrad, adagrad
from .adam import Adam, AdamW, adam, adamw
from .base import Optimizer
from .clip import clip_grad_norm, global_grad_norm
from .rmsprop import RMSprop, rmsprop
from .schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    ExponentialDecay,
    Schedule,
    StepDecay,
    WarmUp,
    make_schedule,
    schedule_from_config,
)
from .sgd import SGD, sgd

#: Optimizer names ``make_optimizer`` accepts -> (class, default hyperparameters that differ from the class's).
OPTIMIZERS: dict[str, tuple[type[Optimizer], dict]] = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
    "rmsprop": (RMSprop, {}),
    "adagrad": (AdaGrad, {}),
}


def make_optimizer(name: str, params: Any, **hyperparameters: Any) -> Optimizer:
    """``make_optimizer("adam", model, lr=3e-4)`` (``params``: anything an ``Optimizer`` takes); also rebuilds one
    from ``make_optimizer(params=..., **optimizer.config())``.

    ``"momentum"`` is SGD with momentum 0.9 and ``"nesterov"`` adds Nesterov momentum;
    the other names are the optimizers of the same name.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
    cls, defaults = OPTIMIZERS[key]
    known = ("lr", *cls.hyperparameter_names)
    unknown = sorted(set(hyperparameters) - set(known))
    if unknown:
        raise ConfigError(f"optimizer {key!r}: unknown hyperparameter(s) {', '.join(unknown)}; "
                          f"expected {', '.join(known)}")
    return cls(params, **{**defaults, **hyperparameters})


__all__ = [
    "OPTIMIZERS", "SCHEDULES", "SGD", "AdaGrad", "Adagrad", "Adam", "AdamW", "Constant", "Cosine",
    "ExponentialDecay", "Optimizer", "RMSprop", "Schedule", "StepDecay", "WarmUp", "adagrad", "adam", "adamw",
    "clip_grad_norm", "global_grad_norm", "make_optimizer", "make_schedule", "rmsprop", "schedule_from_config",
    "sgd",
]
