"""The ``Optimizer`` base class: gathers parameters, gradients and state for a functional update.

Following ``torch.optim``, each optimizer is a functional core (``sgd(...)``,
``adam(...)``: the math once, on lists of arrays) and a thin class that is handed
the parameter store (``Parameter`` boxes: a model, ``model.named_parameters()``,
a list of boxes, or parameter groups), finds the parameters that have a
gradient, creates their state buffers on first use, calls the core and stores
what it returns (``param.value = new``). The cores run the backend's
multi-tensor updates (``Backend.multi_tensor_adam``...: every parameter at once,
over one flat buffer where the backend keeps them there) and return the updated
parameters and state instead of changing them: arrays may be immutable (JAX),
and where they are not, the updates write in place for speed and return the same
arrays. All arrays stay on the model's device: a step makes no host round trips
(hyperparameters and step counts are Python numbers, or device scalars inside a
compiled step).

Parameter groups, as ``torch.optim``: ``Adam([{"params": encoder, "lr": 1e-4}, {"params": head}], lr=1e-3)``
gives each group its own hyperparameters (those a group does not set are the optimizer's). ``optimizer.lr``
is the base learning rate: setting it (a schedule does) moves every group's rate in proportion, so a group
created at half the base rate stays at half of it.

State is kept per parameter under its full name (``"0.weight"``; parameters handed over without names are
named by position, ``"0"``, ``"1"``, ...), and ``state_dict()`` returns it as arrays keyed
``"0.weight.exp_avg"`` plus a JSON-able dict, so a checkpoint can resume training exactly.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from backends import Backend, backend_of, current_backend, describe_array, dtype_name
from backends.array_types import Array
from backends.base import FlatTensors, flat_views

from .. import validators as check
from ..errors import ConfigError, DeviceMismatchError
from ..on_device import on_device
from ..parameters import Parameter
from ..parameters import zero_grad as _zero_grad


def check_lr(owner: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float when it is a positive (or, with ``allow_zero``, non-negative) finite number."""
    if allow_zero:
        return check.number(value, "learning rate", low=0, owner=owner, expected="a non-negative finite number")
    return check.positive_number(value, "learning rate", owner=owner)


def namespace(arrays: list) -> Any:
    """The array API namespace of a non-empty list of arrays."""
    return array_api_compat.array_namespace(*arrays)


class Optimizer:
    """Base class: ``Optimizer(params, lr, **hyperparameters)``; call ``step()`` once gradients have been
    accumulated (a backward pass, or several), ``zero_grad()`` before the next ones.

    ``params`` is the parameter store to update: a model (every parameter of it, named as
    ``model.named_parameters()``), a dict name -> ``Parameter`` (``named_parameters()`` or part of it), an
    iterable of ``Parameter`` boxes (named by position), or a list of groups: dicts with ``"params"`` (any of
    the above) and hyperparameters of their own (``"lr"``, ``"weight_decay"``, ...).

    Subclasses set ``name`` and ``hyperparameter_names`` (besides ``lr``), check
    them in ``_validate(dict) -> dict``, name the state buffers each parameter
    needs in ``buffer_names(group)``, and implement ``_update(group, ...)`` with their functional core (reading
    the group's hyperparameters, ``group["lr"]`` ...): it returns the new parameters and state, which ``step``
    stores (``_store``).
    """

    #: The name ``make_optimizer`` knows this optimizer by.
    name: str = ""
    #: Hyperparameters besides ``lr``, in constructor order; each is an attribute of the optimizer (its default
    #: for the groups) and a key of every group.
    hyperparameter_names: tuple[str, ...] = ()

    def __init__(self, params: Any, lr: float, **hyperparameters: Any):
        owner = type(self).__name__
        self._lr = check_lr(owner, lr)
        for key, value in self._validate(hyperparameters).items():
            setattr(self, key, value)
        self.param_groups: list[dict] = []
        self._lr_ratios: list[float] = []  # each group's lr / the base lr, kept when a schedule moves the base
        # The backend the parameters live on: known once the first group is added (``backend`` below).
        self._backend: Backend | None = None
        # Flat buffers per group index: [params, grads, state buffers (None until made)], or None where the group
        # has no flat layout (``_flatten_parameters``).
        self._layouts: dict[int, list[Any] | None] = {}
        for group in self._groups(params):
            self.add_param_group(group)
        if self._backend is None:  # no parameters at all: a step does nothing
            self._backend = getattr(params, "backend", None) or current_backend()
        self.state: dict[str, dict[str, Array]] = {}  # parameter name -> buffer name -> array
        self.param_steps: dict[str, int] = {}  # parameter name -> updates applied to it
        self.step_count = 0  # calls of step()

    @property
    def backend(self) -> Backend:
        """The backend every parameter of this optimizer lives on."""
        if self._backend is None:  # only while the first parameter group is being added
            raise RuntimeError(f"{type(self).__name__}: no backend yet (no parameter group added)")
        return self._backend

    # -- the parameter store ----------------------------------------------------
    @staticmethod
    def _groups(params) -> list[dict]:
        if isinstance(params, (list, tuple)) and params and all(isinstance(g, dict) for g in params):
            return list(params)
        return [{"params": params}]

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters (a dict with ``"params"`` and optional hyperparameters) to update."""
        owner = type(self).__name__
        if not isinstance(group, dict) or "params" not in group:
            raise ConfigError(f"{owner}: a parameter group is a dict with a 'params' entry, got {group!r}")
        known = ("lr", *self.hyperparameter_names)
        unknown = sorted(set(group) - {"params", *known})
        if unknown:
            raise ConfigError(f"{owner}: unknown hyperparameter(s) {', '.join(unknown)} in a parameter group; "
                              f"expected {', '.join(known)}")
        names, boxes = self._named_boxes(group["params"])
        taken = {id(p): n for g in self.param_groups for n, p in zip(g["names"], g["params"])}
        known_names = set(self.names)
        # A model says which backend it lives on; bare parameters are asked (several backends may share a
        # library, so a model's word comes first).
        backend = getattr(group["params"], "backend", None)
        if backend is not None and self._backend is not None and backend is not self._backend:
            raise DeviceMismatchError(f"{owner}: a parameter group lives on backend {backend.name}, the other "
                                      f"parameters on {self._backend.name}; one optimizer updates one backend")
        for name, box in zip(names, boxes):
            if id(box) in taken:
                raise ConfigError(f"{owner}: parameter {name!r} is already in a parameter group (as "
                                  f"{taken[id(box)]!r}); each parameter may be in one group only")
            if name in known_names:
                raise ConfigError(f"{owner}: two parameters are named {name!r}; give each group's parameters "
                                  f"distinct names")
            backend = backend or self._backend or backend_of(box.value)
            if backend is None or not backend.owns(box.value):
                raise DeviceMismatchError(f"{owner}: parameter {name!r} is {describe_array(box.value)}, not an "
                                          f"array of " + (f"backend {backend.name}, where the other parameters live"
                                                           if backend is not None else "a loaded backend"))
        if backend is not None:
            self._backend = backend
        lr = check_lr(owner, group.get("lr", self._lr))
        values = self._validate({k: group.get(k, getattr(self, k)) for k in self.hyperparameter_names})
        self.param_groups.append({"params": boxes, "names": names, "lr": lr, **values})
        self._lr_ratios.append(lr / self._lr)

    def _named_boxes(self, params) -> tuple[list[str], list[Parameter]]:
        owner = type(self).__name__
        if hasattr(params, "named_parameters"):  # a model or layer
            params = params.named_parameters()
        if isinstance(params, dict):
            names, boxes = [str(n) for n in params], list(params.values())
        else:
            try:
                boxes = list(params)
            except TypeError:
                raise ConfigError(f"{owner}: expected a model, a dict of parameters, an iterable of Parameter or a "
                                  f"list of parameter groups, got {type(params).__name__}") from None
            start = sum(len(g["names"]) for g in self.param_groups)
            names = [str(start + i) for i in range(len(boxes))]
        for name, box in zip(names, boxes):
            if not isinstance(box, Parameter):
                raise ConfigError(f"{owner}: {name!r} is a {type(box).__name__}, not a Parameter (optimizers take "
                                  f"model.parameters() or model.named_parameters(), not arrays)")
        return names, boxes

    @property
    def names(self) -> list[str]:
        """Every parameter's name, group after group."""
        return [name for group in self.param_groups for name in group["names"]]

    def parameters(self) -> list[Parameter]:
        """Every parameter box this optimizer updates, group after group."""
        return [box for group in self.param_groups for box in group["params"]]

    # -- hyperparameters ------------------------------------------------------
    @property
    def lr(self) -> float:
        """The base learning rate (every group's, unless a group set its own)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        # Schedules may reach 0 (cosine to min_lr=0); a step with lr 0 leaves the weights as they are.
        self._lr = check_lr(type(self).__name__, value, allow_zero=True)
        for group, ratio in zip(self.param_groups, self._lr_ratios):
            group["lr"] = self._lr if ratio == 1.0 else self._lr * ratio

    def _validate(self, hyperparameters: dict) -> dict:
        """Checked values of all ``hyperparameter_names`` (a ``ConfigError`` for a bad one)."""
        return {}

    def hyperparameters(self) -> dict:
        """Every hyperparameter, ``lr`` first, as JSON values: the defaults of the groups."""
        values = {"lr": self.lr}
        for key in self.hyperparameter_names:
            values[key] = _json(getattr(self, key))
        return values

    def _group_hyperparameters(self, group: dict) -> dict:
        return {key: _json(group[key]) for key in ("lr", *self.hyperparameter_names)}

    def _checked(self, hyperparameters: dict) -> dict:
        """``hyperparameters`` (all of them, ``lr`` included) checked: a ``ConfigError`` for an unknown or bad one."""
        owner = type(self).__name__
        known = ("lr", *self.hyperparameter_names)
        unknown = sorted(set(hyperparameters) - set(known))
        if unknown:
            raise ConfigError(f"{owner}: unknown hyperparameter(s) {', '.join(unknown)}; "
                              f"expected {', '.join(known)}")
        merged = {**self.hyperparameters(), **hyperparameters}
        lr = check_lr(owner, merged.pop("lr"), allow_zero=True)
        return {"lr": lr, **self._validate(merged)}

    def config(self) -> dict:
        """The optimizer's name and hyperparameters (JSON values): ``make_optimizer(**config)`` rebuilds it."""
        return {"name": self.name, **self.hyperparameters()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    # -- state ----------------------------------------------------------------
    def buffer_names(self, group: dict | None = None) -> tuple[str, ...]:
        """Names of the state arrays kept for each parameter of ``group`` (default: the optimizer's own
        hyperparameters), such as ``("exp_avg", "exp_avg_sq")``."""
        return ()

    def _init_buffer(self, buffer: str, param, group: dict):
        """A new state array for ``param`` (of ``group``); zeros unless a subclass says otherwise."""
        return self.backend.xp.zeros(param.shape, dtype=param.dtype, device=self.backend.device)

    def _buffers(self, name: str, param, group: dict) -> dict[str, Array]:
        state = self.state.get(name)
        if state is None:
            state = self.state[name] = {b: self._init_buffer(b, param, group) for b in self.buffer_names(group)}
        return state

    # -- the update -----------------------------------------------------------
    @on_device
    def step(self) -> None:
        """Update every parameter that has a gradient; the others are skipped."""
        traced = self._traced  # inside a compiled step: device scalars, and no host bookkeeping (the step's own)
        if traced is None:
            self.step_count += 1
        for index, group in enumerate(self.param_groups):
            if traced is None or traced.get("flat"):
                self._new_flat_state(index, group)
            names, boxes, params, grads, states, steps = [], [], [], [], [], []
            for name, box in zip(group["names"], group["params"]):
                grad = box.grad
                if grad is None:
                    continue
                param = box.value
                if traced is None:
                    count = self.param_steps[name] = self.param_steps.get(name, 0) + 1
                else:
                    count = traced["step"][index]
                    traced["stepped"].add(name)
                names.append(name)
                boxes.append(box)
                params.append(param)
                grads.append(grad)
                states.append(self._buffers(name, param, group))
                steps.append(count)
            if params:
                if traced is not None:
                    group = {**group, "lr": traced["lr"][index]}
                params, grads, states = self._flat_lists(index, group, names, boxes, params, grads, states)
                new_params, new_states = self._update(group, params, grads, states, steps)
                self._store(names, boxes, new_params, new_states)

    #: Set by a compiled step while it traces ``step()``: ``{"lr": [per group], "step": [per group],
    #: "stepped": set()}``, the learning rates and step numbers as device scalars (inputs of the program), and
    #: the names of the parameters the step updates (their host step counts are kept by the compiled step);
    #: ``"flat": True`` (a captured CUDA Graph) keeps the flat buffers, whose arrays the graph reuses.
    _traced: dict[str, Any] | None = None

    # -- flat buffers (backends whose update is faster over one array: NumPy, CuPy) ----------------------------
    # The parameters of a group (one dtype) become views of one flat array, their gradients views of another
    # (``Parameter.grad_space``, which a dense layer's backward pass writes into) and each state buffer views of
    # a third: an update is then one pass over the flat arrays (``FlatTensors``). Anything that puts other
    # arrays in place (loading weights or a checkpoint, another layer's gradient) is noticed by identity: the
    # update then runs per array, and the values are copied into the flat arrays for the steps after.

    def _flat_lists(self, index, group, names, boxes, params, grads, states):
        """``(params, grads, states)``, as ``FlatTensors`` (and ``states.flat``: buffer name -> ``FlatTensors``)
        where they are the views of this group's flat buffers."""
        traced = self._traced
        if (traced is not None and not traced.get("flat")) or len(boxes) != len(group["params"]):
            return params, grads, states  # a compiled step's arrays, or a group part of which has no gradient
        layouts = self._layouts
        if index not in layouts:
            self._flatten_parameters(index, group)
        layout = layouts[index]
        if layout is None:
            return params, grads, states
        params_flat, grads_flat, buffers_flat = layout
        if buffers_flat is None:
            buffers_flat = self._flatten_state(layout, names, states, self.buffer_names(group))
            states = [self.state[name] for name in names]
        if any(p is not v for p, v in zip(params, params_flat)) or any(
                s[b] is not v for b, views in buffers_flat.items() for s, v in zip(states, views)):
            # values put in place from outside (weights or a checkpoint loaded): back into the flat arrays
            for box, view, param in zip(boxes, params_flat, params):
                if param is not view:
                    self.backend.at_set(view, ..., param)
                    box.value = view
            for b, views in buffers_flat.items():
                for name, state, view in zip(names, states, views):
                    if state[b] is not view:
                        self.backend.at_set(view, ..., state[b])
                        self.state[name] = {**self.state[name], b: view}
            params = params_flat
            states = [self.state[name] for name in names]
        if any(g is not v for g, v in zip(grads, grads_flat)):
            return list(params), grads, states  # gradients made elsewhere: per array this time
        return params_flat, grads_flat, _States(states, buffers_flat)

    def _flatten_parameters(self, index, group) -> None:
        """The group's parameters as views of one flat buffer, and a flat gradient buffer whose views are their
        ``grad_space``; the layout is None where the backend has no flat buffers (or one array gains nothing)."""
        boxes = group["params"]
        dtypes = {box.dtype for box in boxes}
        made = None
        if len(dtypes) == 1 and len(boxes) > 1:
            shapes, dtype = [box.shape for box in boxes], dtypes.pop()
            made = [self.backend.flat_buffer(shapes, dtype) for _ in range(2)]
        if made is None or made[0] is None or made[1] is None:
            self._layouts[index] = None
            return
        (params_flat, param_views), (grads_flat, grad_views) = made[0], made[1]
        for box, view, grad_view in zip(boxes, param_views, grad_views):
            self.backend.at_set(view, ..., box.value)
            box.value = view
            box.grad_space = grad_view  # gradients already made stay where they are: that step runs per array
        self._layouts[index] = [FlatTensors(param_views, params_flat), FlatTensors(grad_views, grads_flat), None]

    def _new_flat_state(self, index, group) -> None:
        """At a group's first step, when every parameter of it has a gradient and a flat layout: its state made
        directly as views of one new flat array per buffer (``_init_buffer`` of the whole flat array), not made
        per parameter and then copied in."""
        layout = self._layouts.get(index)
        boxes, names = group["params"], group["names"]
        if (layout is None or layout[2] is not None or any(name in self.state for name in names)
                or any(box.grad is None for box in boxes)):
            return
        shapes = [box.shape for box in boxes]
        buffers_flat = {}
        for buffer in self.buffer_names(group):
            flat = self._init_buffer(buffer, layout[0].flat, group)
            buffers_flat[buffer] = FlatTensors(flat_views(self.backend.xp, flat, shapes), flat)
        for i, name in enumerate(names):
            self.state[name] = {buffer: views[i] for buffer, views in buffers_flat.items()}
        layout[2] = buffers_flat

    def _flatten_state(self, layout: list[Any], names, states, buffers) -> dict:
        """The state buffers of a group's parameters (all of them present) as views of one flat array each,
        kept in the group's ``layout``."""
        shapes = [tuple(s[buffers[0]].shape) for s in states] if buffers else []
        dtype = layout[0].flat.dtype
        buffers_flat = {}
        for b in buffers:
            made = self.backend.flat_buffer(shapes, dtype)
            assert made is not None, "flat buffers for the state, where the parameters got them"
            flat, views = made
            for name, state, view in zip(names, states, views):
                self.backend.at_set(view, ..., state[b])
                self.state[name] = {**self.state[name], b: view}
            buffers_flat[b] = FlatTensors(views, flat)
        layout[2] = buffers_flat
        return buffers_flat

    @on_device
    def prepare(self) -> None:
        """Move the parameters into this optimizer's flat buffers now, before a backward pass, so that the first
        step's gradients land in the flat gradient buffer (the trainer calls this; otherwise the first step does
        it and runs per array). Every step of a training run then takes the same path, also after a resume."""
        layouts = self._layouts
        for index, group in enumerate(self.param_groups):
            if index not in layouts and group["params"]:
                self._flatten_parameters(index, group)

    def _forget_layouts(self) -> None:
        """Stop using flat buffers (a compiled step keeps its own arrays)."""
        for group in self.param_groups:
            for box in group["params"]:
                box.grad_space = None
        self._layouts = dict.fromkeys(range(len(self.param_groups)))

    def flat_gradients(self) -> tuple[list[Parameter], list[Array]] | None:
        """``(boxes, gradients)`` when this optimizer has one group and every gradient is a view of its flat
        gradient buffer (``FlatTensors``: clipping scales them in one pass); else None."""
        layout = self._layouts.get(0)
        if len(self.param_groups) != 1 or layout is None:
            return None
        boxes, grads = self.param_groups[0]["params"], layout[1]
        if any(box.grad is not view for box, view in zip(boxes, grads)):
            return None
        return boxes, grads

    @staticmethod
    def _buffer_list(states, buffer: str) -> list:
        """The arrays of state buffer ``buffer`` of every parameter of a step, as ``FlatTensors`` where they are
        the views of one flat array (what ``_update`` hands a multi-tensor update)."""
        flat = getattr(states, "flat", None)
        if flat is not None and buffer in flat:
            return flat[buffer]
        return [s[buffer] for s in states]

    @staticmethod
    def _same_step(steps) -> bool:
        first = steps[0]
        return all(s is first or (isinstance(s, int) and s == first) for s in steps)

    def _update(self, group: dict, params: list, grads: list, states: list[dict],
                steps: list[int]) -> tuple[list, list[dict]]:
        """The updated ``(params, states)``, as new lists in the same order (``states[i]``: buffer name -> array),
        with ``group``'s hyperparameters."""
        raise NotImplementedError

    def _store(self, names: list[str], boxes: list[Parameter], params: list, states: list[dict]) -> None:
        """The one place where a step's results enter the parameter store (``box.value``) and the optimizer's
        state. Always assigned, even when the arrays are the ones a step updated in place: with immutable
        arrays (JAX) the returned arrays are the only updated ones."""
        if len(params) != len(boxes) or len(states) != len(boxes):  # a subclass that lost some on the way
            raise RuntimeError(f"{type(self).__name__}._update returned {len(params)} parameters and "
                               f"{len(states)} states for {len(boxes)} parameters")
        for name, box, param, state in zip(names, boxes, params, states):
            box.value = param
            self.state[name] = state

    def zero_grad(self) -> None:
        """Forget the accumulated gradient of every parameter this optimizer updates."""
        _zero_grad(self.parameters())

    # -- checkpoints ------------------------------------------------------------
    @on_device
    def state_dict(self) -> tuple[dict[str, Array], dict]:
        """``(arrays, info)``: copies of the state arrays on the device, keyed ``"0.weight.exp_avg"``,
        and a JSON-able dict with the optimizer's name, hyperparameters (the defaults, and each group's when
        there are several groups or a group has its own) and step counts."""
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
        defaults = self.hyperparameters()
        if len(self.param_groups) > 1 or any(self._group_hyperparameters(g) != defaults for g in self.param_groups):
            info["param_groups"] = [{"names": list(g["names"]), **self._group_hyperparameters(g)}
                                    for g in self.param_groups]
        return arrays, info

    @on_device
    def load_state_dict(self, arrays: dict[str, Array], info: dict) -> None:
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
        step, param_steps = check.non_negative_int(info["step"], "saved step", owner=owner), info["param_steps"]
        if not isinstance(param_steps, dict):
            raise ConfigError(f"{owner}: saved param_steps must be a dict, got {type(param_steps).__name__}")
        params = {name: box.value for group in self.param_groups for name, box in zip(group["names"], group["params"])}
        unknown = sorted(set(param_steps) - set(params))
        if unknown:
            raise ConfigError(f"{owner}: the saved state names parameter(s) the model lacks: {', '.join(unknown)}")
        param_steps = {name: check.positive_int(count, f"saved step count of {name}", owner=owner)
                       for name, count in param_steps.items()}

        if not isinstance(info["hyperparameters"], dict):
            raise ConfigError(f"{owner}: saved hyperparameters must be a dict, "
                              f"got {type(info['hyperparameters']).__name__}")
        # Hyperparameters first (the buffers needed depend on them), all checked before any is set.
        defaults = self._checked(info["hyperparameters"])
        saved_groups = info.get("param_groups")
        if saved_groups is None:  # one group following the defaults (and every checkpoint before groups existed)
            groups = [{**defaults, "lr": defaults["lr"] * ratio} for ratio in self._lr_ratios]
        else:
            if not isinstance(saved_groups, list) or len(saved_groups) != len(self.param_groups):
                count = len(saved_groups) if isinstance(saved_groups, list) else type(saved_groups).__name__
                raise ConfigError(f"{owner}: the saved state has {count} parameter groups, this optimizer "
                                  f"{len(self.param_groups)}")
            groups = []
            for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
                if not isinstance(saved, dict) or saved.get("names") != group["names"]:
                    raise ConfigError(f"{owner}: parameter group {i} of the saved state does not hold the parameters "
                                      f"of this optimizer's group {i} ({', '.join(group['names'])})")
                groups.append(self._checked({k: v for k, v in saved.items() if k != "names"}))
        buffers = {name: self.buffer_names(values) for values, group in zip(groups, self.param_groups)
                   for name in group["names"]}
        expected = {f"{name}.{b}": (name, b) for name in param_steps for b in buffers[name]}
        missing = [k for k in expected if k not in arrays]
        if missing:
            raise ConfigError(f"{owner}: the saved state is missing array(s) {', '.join(missing)}")
        extra = sorted(set(arrays) - set(expected))
        if extra:
            raise ConfigError(f"{owner}: unexpected array(s) in the saved state: {', '.join(extra)}")
        state: dict[str, dict[str, Array]] = {}
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
        # every check passed: store
        self._lr = defaults.pop("lr")
        for key, value in defaults.items():
            setattr(self, key, value)
        for group, values in zip(self.param_groups, groups):
            group.update(values)
        self.state = state
        self.param_steps = dict(param_steps)
        self.step_count = step


class _States(list):
    """The per-parameter state dicts of a step, and ``flat``: buffer name -> ``FlatTensors`` of its views."""

    __slots__ = ("flat",)

    def __init__(self, states, flat):
        super().__init__(states)
        self.flat = flat


def _json(value):
    return list(value) if isinstance(value, tuple) else value
