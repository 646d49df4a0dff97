"""Compiled training steps: the step function of ``step.py`` as one program (``Trainer(compile=True)``,
``backprop train --compile``).

* **JAX**: ``jax.jit`` of the whole step (forward, loss, backward, clipping, the optimizer's update and the
  metrics), its inputs and outputs the parameters, the model's buffers, the optimizer's state, the learning
  rates and step counts (device scalars: a schedule changes a value, not the program), the random keys of
  dropout layers and the metrics; the parameter and state buffers are donated (updated in place where XLA
  can). One program per batch shape (the short last batch of an epoch is a second one, ``drop_last`` avoids
  it) and per kind of step (the few steps that sample gradient norms are another).
* **PyTorch**: ``torch.compile`` of the same step (TorchDynamo traces it, Inductor generates the kernels: C++
  on the CPU, which needs a C++ compiler; Triton on CUDA, untested here).
* **CuPy**: CUDA Graph capture of the whole step (``backprop/training/captured.py``; no GPU here to test it).

The compiled step gives the same weights as the eager one (to the float rounding of fused operations: tested
on the CPU for JAX and PyTorch). The host keeps the optimizer's step counts as the eager step does, so
checkpoints are the same.
"""

from __future__ import annotations

import types
import warnings
from typing import Any, Protocol

from backends import DeviceRandom
from backends.array_types import Array

from ..errors import ConfigError
from ..on_device import on_device
from .captured import CapturedStep
from .step import MicroBatch, TrainingStep


class CompiledStep(Protocol):
    """What a compiled step offers the trainer: ``TrainingStep``'s ``new_metrics`` and ``run``, and the
    ``TrainingStep`` it compiles (whose metrics layout the trainer reads)."""

    step: TrainingStep

    def new_metrics(self) -> Array: ...

    def run(self, batch: list, metrics: Array, norms: dict | None = None) -> tuple[Array, dict | None]: ...


#: Where compiled steps run, for the messages (each backend says what it has: ``Backend.step_compiler``).
_WHERE = "jax (jit), torch (torch.compile), cupy (cuda-graph)"


def compiled_step(step: TrainingStep, compile: bool | str) -> CompiledStep:
    """``step`` compiled for its backend (``compile``: True, or the name of the backend's step compiler), or a
    ``ConfigError`` saying why it cannot be."""
    backend = step.backend
    compiler = backend.step_compiler  # (name, kind) or None
    wanted = None if compiler is None else compiler[0]
    if compile is not True and compile != wanted:
        if wanted is None:
            raise ConfigError(f"compile: backend {backend.name} has no step compiler; compiled steps run on {_WHERE}")
        raise ConfigError(f"compile: expected True or {wanted!r} on backend {backend.name}, got {compile!r}")
    if compiler is None:
        raise ConfigError(f"compile: backend {backend.name} has no step compiler (NumPy and the reference "
                          f"backends run eagerly); compiled steps run on {_WHERE}")
    if step.allreduce is not None:
        raise ConfigError("compile: a compiled step cannot call the distributed all-reduce yet (it runs on the "
                          "host between the backward passes and the update); leave out compile or --distributed")
    kind = compiler[1]
    if kind == "pure":
        return JaxCompiledStep(step)
    if kind == "in_place":
        return TorchCompiledStep(step)
    if kind == "graph_capture":
        return CapturedStep(step)
    raise ConfigError(f"compile: backend {backend.name} names an unknown kind of step compiler {kind!r}")


class _StoreSwap:
    """Puts given arrays into the parameter store, the model's buffers, the optimizer's state and the layers'
    random streams for the length of a trace, and takes everything back after it (a trace leaves no traced
    value behind in the model)."""

    def __init__(self, step: TrainingStep):
        self.step = step
        self.buffer_slots = step.model._buffer_slots()  # name -> (layer, key)

    @property
    def streams(self) -> list:
        return _random_streams(self.step.model)  # found anew: the trainer reseeds the layers every epoch

    def save(self):
        step, optimizer = self.step, self.step.optimizer
        return ([(box.value, box.grad, box.grad_space) for box in step.params],
                {name: layer.buffers[key] for name, (layer, key) in self.buffer_slots.items()},
                dict(optimizer.state), optimizer.step_count, dict(optimizer.param_steps),
                [stream._key for stream in self.streams])

    def restore(self, saved) -> None:
        boxes, buffers, state, step_count, param_steps, keys = saved
        for box, (value, grad, space) in zip(self.step.params, boxes):
            box.value, box.grad, box.grad_space = value, grad, space
        self.put_buffers(buffers)
        optimizer = self.step.optimizer
        optimizer.state, optimizer.step_count, optimizer.param_steps = state, step_count, param_steps
        self.put_keys(keys)

    def put(self, params, buffers, state, keys) -> None:
        for box, value in zip(self.step.params, params):
            box.value, box.grad, box.grad_space = value, None, None
        self.put_buffers(buffers)
        self.step.optimizer.state = {name: dict(buffers_) for name, buffers_ in state.items()}
        self.put_keys(keys)

    def put_buffers(self, buffers) -> None:
        for name, (layer, key) in self.buffer_slots.items():
            layer.buffers[key] = buffers[name]

    def put_keys(self, keys) -> None:
        for stream, key in zip(self.streams, keys):
            stream._key = key

    def take(self):
        step = self.step
        return ([box.value for box in step.params],
                {name: layer.buffers[key] for name, (layer, key) in self.buffer_slots.items()},
                {name: dict(buffers) for name, buffers in step.optimizer.state.items()},
                [stream._key for stream in self.streams])


def _random_streams(model) -> list:
    """The device random streams the model's layers keep (a dropout layer's masks), which a compiled step
    must carry as state: JAX's keys are values, split at every draw."""
    streams = []
    for _, layer in model._named_layers():
        for value in vars(layer).values():
            if isinstance(value, DeviceRandom) and hasattr(value, "_key"):
                streams.append(value)
    return streams


class JaxCompiledStep:
    """``jax.jit`` of the training step (see the module docstring); ``run`` as ``TrainingStep.run``."""

    def __init__(self, step: TrainingStep):
        self.step = step
        self.backend = step.backend
        self.optimizer = step.optimizer
        self.swap = _StoreSwap(step)
        self._program = self.backend.compile_function(self._trace, static_argnums=(0, 1), donate_argnums=(2, 4))
        # learnt from a first trace (empty until then): the parameters the step updates, the norms' names
        self._layout: dict[str, Any] = {}
        self._seen: dict[str, Any] = {}  # what the latest trace saw (the same keys)
        self._steps_done: list[Array] = []  # per group: a device scalar, the steps its parameters have taken
        self._host_steps: list[int] = []  # per group: the host's count that _steps_done was made from
        self._lr: list[tuple[float, Array]] | None = None  # per group: (the host value, its device scalar)

    def new_metrics(self) -> Array:
        return self.step.new_metrics()

    # -- the program -----------------------------------------------------------------------------------------
    def _trace(self, weights, sample_norms, params, buffers, state, steps_done, lrs, keys, metrics, norms, batch):
        """The step as a pure function of its arrays; ``weights`` (the micro-batches' shares) and
        ``sample_norms`` are static. Runs the eager step's Python on traced arrays, the store swapped."""
        swap, optimizer = self.swap, self.optimizer
        saved = swap.save()
        try:
            swap.put(params, buffers, state, keys)
            steps = [done + 1 for done in steps_done]
            optimizer._traced = {"lr": list(lrs), "step": steps, "stepped": set()}
            micro_batches = [MicroBatch(x, y, w) for (x, y), w in zip(batch, weights)]
            sums = None
            if sample_norms:
                sums = {self._layout["norm_names"]: norms} if norms is not None else {}
            run = self.step.run.__wrapped__  # type: ignore[attr-defined]  # the step unwrapped from on_device
            metrics, sums = run(self.step, micro_batches, metrics, sums)
            stepped = optimizer._traced["stepped"]
            names = next(iter(sums)) if sums else None
            new_params, new_buffers, new_state, new_keys = swap.take()
            self._seen = {"stepped": stepped, "norm_names": names,
                          "state_names": {name: tuple(buffers_) for name, buffers_ in new_state.items()}}
            return (new_params, new_buffers, new_state, steps, new_keys, metrics,
                    None if not sums else sums[names])
        finally:
            optimizer._traced = None
            swap.restore(saved)

    # -- running it --------------------------------------------------------------------------------------------
    @on_device
    def run(self, batch: list, metrics: Array, norms: dict | None = None) -> tuple[Array, dict | None]:
        if not self._layout:
            self._learn_layout(batch, metrics, norms is not None)
        optimizer, swap = self.optimizer, self.swap
        params, buffers, state, keys = swap.take()
        weights = tuple(float(w) for _, _, w in batch)
        arrays = tuple((x, y) for x, y, _ in batch)
        names = self._layout["norm_names"]
        vector = None
        if norms is not None and names is not None:
            vector = norms.get(names)
            if vector is None:
                vector = self.backend.xp.zeros((len(names),), dtype=self.step.model.dtype, device=self.backend.device)
        new_params, new_buffers, new_state, steps, new_keys, metrics, vector = self._program(
            weights, norms is not None, params, buffers, state, tuple(self._step_numbers()), tuple(self._lrs()), keys,
            metrics, vector, arrays)
        swap.put(new_params, new_buffers, new_state, new_keys)
        self._steps_done = list(steps)
        optimizer.step_count += 1  # the host's step counts, as the eager step keeps them
        for name in self._layout["stepped"]:
            optimizer.param_steps[name] = optimizer.param_steps.get(name, 0) + 1
        if norms is not None and names is not None:
            norms[names] = vector
        return metrics, norms

    def _step_numbers(self) -> list:
        """Each group's step count on the device; put there anew from the host's count when the two parted (the
        optimizer's state was loaded: a checkpoint, a rollback)."""
        optimizer, backend = self.optimizer, self.backend
        for index, group in enumerate(optimizer.param_groups):
            counted = [optimizer.param_steps.get(name, 0) for name in group["names"] if name in self._layout["stepped"]]
            host = counted[0] if counted else 0
            if host != self._host_steps[index]:
                self._steps_done[index] = backend.set_scalar(None, float(host))
                self._host_steps[index] = host
            self._host_steps[index] += 1  # after this step
        return self._steps_done

    def _lrs(self) -> list:
        """Each group's learning rate as a device scalar, made anew only when the host value changed."""
        backend, groups = self.backend, self.optimizer.param_groups
        if self._lr is None or any(host != group["lr"] for (host, _), group in zip(self._lr, groups)):
            with backend.activate():
                self._lr = [(group["lr"], backend.xp.asarray(group["lr"], dtype=backend.xp.float64))
                            for group in groups]
        return [scalar for _, scalar in self._lr]

    def _learn_layout(self, batch, metrics, sample_norms) -> None:
        """One abstract trace (``jax.eval_shape``: Python only, nothing compiled) tells which parameters the step
        updates and the names of its gradient norms; the optimizer's state for those is then made (zeros, as
        its first eager step would) and each group's step count put on the device."""
        backend, optimizer = self.backend, self.optimizer
        params, buffers, state, keys = self.swap.take()
        self._steps_done = [backend.xp.zeros((), dtype=backend.xp.float64, device=backend.device)
                            for _ in optimizer.param_groups]
        weights = tuple(float(w) for _, _, w in batch)
        arrays = tuple((x, y) for x, y, _ in batch)
        with backend.activate():
            backend.trace_shapes(lambda *a: self._trace(weights, True, *a), params, buffers, state,
                                 tuple(self._steps_done), tuple(self._lrs()), keys, metrics, None, arrays)
        seen = self._seen
        names = {}
        for group in optimizer.param_groups:
            for name, box in zip(group["names"], group["params"]):
                names[name] = (box, group)
        counts = {}
        for index, group in enumerate(optimizer.param_groups):
            stepped = [name for name in group["names"] if name in seen["stepped"]]
            done = {optimizer.param_steps.get(name, 0) for name in stepped}
            if len(done) > 1:
                raise ConfigError("compile: the parameters of one group have taken different numbers of steps "
                                  "(some had no gradient at some steps); a compiled step needs one count per group")
            counts[index] = done.pop() if done else 0
        for name in seen["stepped"]:
            box, group = names[name]
            optimizer._buffers(name, box.value, group)  # the state the first eager step would make
        with backend.activate():
            self._steps_done = [backend.xp.asarray(float(counts[i]), dtype=backend.xp.float64)
                                for i in range(len(optimizer.param_groups))]
        self._host_steps = [counts[i] for i in range(len(optimizer.param_groups))]
        self._layout = {"stepped": frozenset(seen["stepped"]), "norm_names": seen["norm_names"]}
        if sample_norms and seen["norm_names"] is None:
            self._layout["norm_names"] = None


class TorchCompiledStep:
    """``torch.compile`` of the training step: TorchDynamo traces ``TrainingStep.run`` (the model's forward and
    backward closures, the loss, the optimizer's update) into one graph that Inductor compiles; the parameters,
    gradients and state are PyTorch tensors updated in place, so the step needs no pure form. The learning
    rates and step numbers are tensors the graph reads (a Python number would be baked into the graph, and a
    new step number would compile it anew). The first step runs eagerly: it makes the optimizer's state and
    moves it into flat buffers, which the compiled steps then update in place (compiled, that step would be a
    program of its own, used once)."""

    def __init__(self, step: TrainingStep):
        self.step = step
        self.backend = step.backend
        self.optimizer = step.optimizer
        # No flat gradient and state buffers: Inductor fuses the per-array updates itself, and with them (the
        # gradients written as views, scaled through their base by clipping) the compiled step's weights
        # differed from the eager step's (seen with PyTorch 2.13 on the CPU; the cause was not pinned down).
        step.optimizer._forget_layouts()
        # A code object of its own: TorchDynamo keeps its compiled graphs (at most 8, then it runs eagerly) per
        # code object, and every step compiled in this process (one per trainer) would share _body's.
        body = TorchCompiledStep._body
        own = types.FunctionType(body.__code__.replace(), body.__globals__, body.__name__, body.__defaults__,
                                 body.__closure__)
        self._compiled = self.backend.compile_function(types.MethodType(own, self))
        # per group: (the host learning rate, its tensor, the step number's tensor)
        self._scalars: list[tuple[float | None, Array, Array]] | None = None
        self._stepped: set[str] | None = None  # the names of the parameters the first step updated
        self._norm_names: tuple[str, ...] = ()  # the names of the gradient norms the first step sampled

    def _body(self, batch, metrics, norm_sums):
        """The compiled function: the step, the norm sums handed in as one tensor (or None) rather than the
        trainer's dict, which changes from step to step and would compile the step anew each time."""
        sums = None if norm_sums is None else {self._norm_names: norm_sums}
        run = self.step.run.__wrapped__  # type: ignore[attr-defined]  # the step unwrapped from on_device
        metrics, sums = run(self.step, batch, metrics, sums)
        return metrics, None if sums is None else sums[self._norm_names]

    def new_metrics(self) -> Array:
        return self.step.new_metrics()

    @on_device
    def run(self, batch: list, metrics: Array, norms: dict | None = None) -> tuple[Array, dict | None]:
        optimizer = self.optimizer
        if self._stepped is None:
            before = dict(optimizer.param_steps)
            result = self.step.run(batch, metrics, norms)
            self._stepped = {name for name, count in optimizer.param_steps.items() if count != before.get(name)}
            self._norm_names = tuple(self.step._gradients()[0])
            return result
        lrs, steps = self._device_scalars()
        sums = None
        if norms is not None:
            sums = norms.get(self._norm_names)
            if sums is None:
                with self.backend.activate():
                    sums = self.backend.xp.zeros((len(self._norm_names),), dtype=metrics.dtype,
                                                 device=self.backend.device)
        optimizer._traced = {"lr": lrs, "step": steps, "stepped": set()}
        try:
            with warnings.catch_warnings():
                # array_api_compat caches its type checks with functools.lru_cache; Dynamo traces through the
                # cache (right here: the checks depend on types alone) and says so at every compile
                warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`", UserWarning)
                metrics, sums = self._compiled(list(batch), metrics, sums)
        finally:
            optimizer._traced = None
        optimizer.step_count += 1  # the host's step counts, as the eager step keeps them
        for name in self._stepped:
            optimizer.param_steps[name] += 1
        if norms is not None:
            norms[self._norm_names] = sums
        return metrics, norms

    def _device_scalars(self):
        """Each group's learning rate and this step's number as 0-d tensors, written in place (the compiled
        graph reads the same tensors every step)."""
        backend, optimizer = self.backend, self.optimizer
        assert self._stepped is not None  # the first (eager) step has run
        if self._scalars is None:
            self._scalars = [(None, backend.set_scalar(None, 0.0), backend.set_scalar(None, 0.0))
                             for _ in optimizer.param_groups]
        lrs, steps = [], []
        for index, (group, (host_lr, lr, step)) in enumerate(zip(optimizer.param_groups, self._scalars)):
            if host_lr != group["lr"]:
                lr = backend.set_scalar(lr, group["lr"])
                self._scalars[index] = (group["lr"], lr, step)
            counts = {optimizer.param_steps[name] for name in group["names"] if name in self._stepped}
            if len(counts) > 1:
                raise ConfigError("compile: the parameters of one group have taken different numbers of steps; a "
                                  "compiled step needs one count per group")
            steps.append(backend.set_scalar(step, float(counts.pop() + 1) if counts else 1.0))
            lrs.append(lr)
        return lrs, steps


__all__ = ["CompiledStep", "compiled_step"]
