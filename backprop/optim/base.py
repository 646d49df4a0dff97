"""The ``Optimizer`` base class: gathers parameters, gradients and state for a functional update.

Following ``torch.optim``, each optimizer is a functional core (``sgd(...)``,
``adam(...)``: the math once, on lists of arrays) and a thin class that finds
the parameters that have a gradient, creates their state buffers on first use,
calls the core and stores what it returns. The cores return the updated
parameters and state instead of changing them: arrays may be immutable (JAX),
and where they are not, the backend's update methods (``add_scaled``) still
write in place for speed and return the same arrays. All arrays stay on the
model's device: a step makes no host round trips (hyperparameters and step
counts are Python numbers).

State is kept per parameter under its full name (``"0.weight"``), and
``state_dict()`` returns it as arrays keyed ``"0.weight.exp_avg"`` plus a
JSON-able dict, so a checkpoint can resume training exactly.
"""

from __future__ import annotations

import math

import array_api_compat

from backends import describe_array, dtype_name

from ..errors import ConfigError, DeviceMismatchError
from ..on_device import on_device


def check_lr(owner: str, value, *, allow_zero: bool = False) -> float:
    """``value`` as a float when it is a positive (or, with ``allow_zero``, non-negative) finite number."""
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or value < 0 or (value == 0 and not allow_zero)):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{owner}: learning rate must be a {kind} finite number, got {value!r}")
    return float(value)


def check_number(owner: str, name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float when it is a finite number within the given bounds, else a one-line ``ConfigError``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            where = ""
        raise ConfigError(f"{owner}: {name} must be a finite number{where}, got {value!r}")
    return float(value)


def namespace(arrays: list):
    """The array API namespace of a non-empty list of arrays."""
    return array_api_compat.array_namespace(*arrays)


class Optimizer:
    """Base class: ``Optimizer(model, lr, **hyperparameters)``; call ``step()`` after ``model.backward(...)``.

    Subclasses set ``name`` and ``hyperparameter_names`` (besides ``lr``), check
    them in ``_validate(dict) -> dict``, name the state buffers each parameter
    needs in ``buffer_names()``, and implement ``_update`` with their functional core: it returns the new
    parameters and state, which ``step`` stores (``_store``).
    """

    #: The name ``make_optimizer`` knows this optimizer by.
    name: str = ""
    #: Hyperparameters besides ``lr``, in constructor order; each is an attribute of the optimizer.
    hyperparameter_names: tuple[str, ...] = ()

    def __init__(self, model, lr: float, **hyperparameters):
        owner = type(self).__name__
        self._lr = check_lr(owner, lr)
        for key, value in self._validate(hyperparameters).items():
            setattr(self, key, value)
        self.slots = model.parameter_slots()
        self.names = list(model.named_parameters())
        if len(self.names) != len(self.slots):  # pragma: no cover - a broken Layer subclass
            raise ConfigError(f"{owner}: the model lists {len(self.names)} named parameters but "
                              f"{len(self.slots)} parameter slots")
        self.backend = model.backend
        self.state: dict[str, dict[str, object]] = {}  # parameter name -> buffer name -> array
        self.param_steps: dict[str, int] = {}  # parameter name -> updates applied to it
        self.step_count = 0  # calls of step()

    # -- hyperparameters ------------------------------------------------------
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        # Schedules may reach 0 (cosine to min_lr=0); a step with lr 0 leaves the weights as they are.
        self._lr = check_lr(type(self).__name__, value, allow_zero=True)

    def _validate(self, hyperparameters: dict) -> dict:
        """Checked values of all ``hyperparameter_names`` (a ``ConfigError`` for a bad one)."""
        return {}

    def hyperparameters(self) -> dict:
        """Every hyperparameter, ``lr`` first, as JSON values."""
        values = {"lr": self.lr}
        for key in self.hyperparameter_names:
            value = getattr(self, key)
            values[key] = list(value) if isinstance(value, tuple) else value
        return values

    def _configure(self, **hyperparameters) -> None:
        """Change some hyperparameters; all are checked before any is set."""
        owner = type(self).__name__
        known = ("lr", *self.hyperparameter_names)
        unknown = sorted(set(hyperparameters) - set(known))
        if unknown:
            raise ConfigError(f"{owner}: unknown hyperparameter(s) {', '.join(unknown)}; "
                              f"expected {', '.join(known)}")
        merged = {**self.hyperparameters(), **hyperparameters}
        lr = check_lr(owner, merged.pop("lr"), allow_zero=True)
        clean = self._validate(merged)
        self._lr = lr
        for key, value in clean.items():
            setattr(self, key, value)

    def config(self) -> dict:
        """The optimizer's name and hyperparameters (JSON values): ``make_optimizer(**config)`` rebuilds it."""
        return {"name": self.name, **self.hyperparameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    # -- state ----------------------------------------------------------------
    def buffer_names(self) -> tuple[str, ...]:
        """Names of the state arrays kept for each parameter (``("exp_avg", "exp_avg_sq")``)."""
        return ()

    def _init_buffer(self, buffer: str, param):
        """A new state array for ``param``; zeros unless a subclass says otherwise."""
        return self.backend.xp.zeros(param.shape, dtype=param.dtype, device=self.backend.device)

    def _buffers(self, name: str, param) -> dict[str, object]:
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = {b: self._init_buffer(b, param) for b in self.buffer_names()}
        return state

    # -- the update -----------------------------------------------------------
    @on_device
    def step(self) -> None:
        """Update every parameter that has a gradient; the others are skipped."""
        self.step_count += 1
        names, slots, params, grads, states, steps = [], [], [], [], [], []
        for name, (layer, key) in zip(self.names, self.slots):
            grad = layer.grads.get(key)
            if grad is None:
                continue
            param = layer.params[key]
            self.param_steps[name] = self.param_steps.get(name, 0) + 1
            names.append(name)
            slots.append((layer, key))
            params.append(param)
            grads.append(grad)
            states.append(self._buffers(name, param))
            steps.append(self.param_steps[name])
        if params:
            new_params, new_states = self._update(params, grads, states, steps)
            self._store(names, slots, new_params, new_states)

    def _update(self, params: list, grads: list, states: list[dict], steps: list[int]) -> tuple[list, list[dict]]:
        """The updated ``(params, states)``, as new lists in the same order (``states[i]``: buffer name -> array)."""
        raise NotImplementedError

    def _store(self, names: list[str], slots: list, params: list, states: list[dict]) -> None:
        """The one place where a step's results enter the parameter store (each layer's ``params``) and the
        optimizer's state. Always assigned, even when the arrays are the ones a step updated in place: with
        immutable arrays (JAX) the returned arrays are the only updated ones."""
        if len(params) != len(slots) or len(states) != len(slots):  # a subclass that lost some on the way
            raise RuntimeError(f"{type(self).__name__}._update returned {len(params)} parameters and "
                               f"{len(states)} states for {len(slots)} parameters")
        for name, (layer, key), param, state in zip(names, slots, params, states):
            layer.params[key] = param
            self.state[name] = state

    def zero_grad(self) -> None:
        """Forget every gradient (a backward pass replaces them anyway)."""
        for layer, key in self.slots:
            layer.grads.pop(key, None)

    # -- checkpoints ------------------------------------------------------------
    @on_device
    def state_dict(self) -> tuple[dict[str, object], dict]:
        """``(arrays, info)``: copies of the state arrays on the device, keyed ``"0.weight.exp_avg"``,
        and a JSON-able dict with the optimizer's name, hyperparameters and step counts."""
        arrays = {}
        for name, buffers in self.state.items():
            for buffer, array in buffers.items():
                xp = array_api_compat.array_namespace(array)
                arrays[f"{name}.{buffer}"] = xp.asarray(array, dtype=array.dtype,
                                                        device=array_api_compat.device(array), copy=True)
        info = {
            "name": self.name,
            "hyperparameters": self.hyperparameters(),
            "step": self.step_count,
            "param_steps": dict(self.param_steps),
        }
        return arrays, info

    @on_device
    def load_state_dict(self, arrays: dict[str, object], info: dict) -> None:
        """Restore what ``state_dict()`` returned (hyperparameters included) so training continues exactly.

        ``arrays`` must be on the model's backend. Nothing changes when a ``ConfigError`` is raised.
        """
        owner = type(self).__name__
        if not isinstance(info, dict) or info.get("name") != self.name:
            got = info.get("name") if isinstance(info, dict) else type(info).__name__
            raise ConfigError(f"{owner}: the saved state is for optimizer {got!r}, not {self.name!r}")
        for field in ("hyperparameters", "step", "param_steps"):
            if field not in info:
                raise ConfigError(f"{owner}: the saved state has no {field!r} entry")
        step, param_steps = info["step"], info["param_steps"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ConfigError(f"{owner}: saved step must be a non-negative integer, got {step!r}")
        if not isinstance(param_steps, dict):
            raise ConfigError(f"{owner}: saved param_steps must be a dict, got {type(param_steps).__name__}")
        params = dict(zip(self.names, (layer.params[key] for layer, key in self.slots)))
        unknown = sorted(set(param_steps) - set(params))
        if unknown:
            raise ConfigError(f"{owner}: the saved state names parameter(s) the model lacks: {', '.join(unknown)}")
        for name, count in param_steps.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ConfigError(f"{owner}: saved step count of {name} must be a positive integer, got {count!r}")

        if not isinstance(info["hyperparameters"], dict):
            raise ConfigError(f"{owner}: saved hyperparameters must be a dict, "
                              f"got {type(info['hyperparameters']).__name__}")
        # Hyperparameters first (the buffers needed depend on them); put them back if the arrays do not fit.
        saved_hyperparameters = self.hyperparameters()
        self._configure(**info["hyperparameters"])
        try:
            buffers = self.buffer_names()
            expected = {f"{name}.{b}": (name, b) for name in param_steps for b in buffers}
            missing = [k for k in expected if k not in arrays]
            if missing:
                raise ConfigError(f"{owner}: the saved state is missing array(s) {', '.join(missing)}")
            extra = sorted(set(arrays) - set(expected))
            if extra:
                raise ConfigError(f"{owner}: unexpected array(s) in the saved state: {', '.join(extra)}")
            state: dict[str, dict[str, object]] = {}
            for key, (name, buffer) in expected.items():
                array, param = arrays[key], params[name]
                if not self.backend.owns(array):
                    raise DeviceMismatchError(f"{owner}: saved array {key} is {describe_array(array)}, but the "
                                              f"model lives on backend {self.backend.name}")
                if tuple(array.shape) != tuple(param.shape):
                    raise ConfigError(f"{owner}: saved array {key} has shape {tuple(array.shape)}, "
                                      f"but the parameter has shape {tuple(param.shape)}")
                if array.dtype != param.dtype:
                    raise ConfigError(f"{owner}: saved array {key} is {dtype_name(array.dtype)}, "
                                      f"but the parameter is {dtype_name(param.dtype)}")
                xp = array_api_compat.array_namespace(param)
                state.setdefault(name, {})[buffer] = xp.asarray(
                    array, dtype=param.dtype, device=array_api_compat.device(param), copy=True)
        except Exception:
            self._configure(**saved_hyperparameters)
            raise
        self.state = state
        self.param_steps = dict(param_steps)
        self.step_count = step
