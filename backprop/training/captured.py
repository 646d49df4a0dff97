"""CUDA Graph capture of the whole training step on CuPy (``Trainer(compile=True)`` on a ``cupy`` backend).

NOT YET RUN ON A GPU: no GPU was available where this was written. It follows CuPy's documented graph API
(``Stream.begin_capture``/``end_capture``, ``Graph.launch``), the kernels it replays are compiled with NVRTC in
CI (``tests/test_cuda_kernels.py``), and the GPU check (``benchmarks/gpu_check.sh``: the suite on ``cupy:0``,
``tests/test_compiled.py``'s captured-step test) is where it meets a GPU first.

A replay runs every kernel of a step with one launch from the host. What that needs, in this order:

1. **static batch buffers**: the graph reads its batch from arrays of its own; each step copies its rows into
   them (two device-to-device copies, outside the graph);
2. **a stream of its own**, non-blocking, ordered after the work queued before it and before the work queued
   after it by events (no host synchronization), and **relaxed capture** with CuPy's memory pool: what the
   step allocates while it is captured (activations, gradients of inputs) becomes the graph's own memory;
3. **device scalars**: each group's learning rate (written when a schedule changes it, outside the graph) and
   step number (incremented inside the graph), read by the optimizer's kernel;
4. **dropout masks from a counter-based generator** (``CupyRandom``: Philox, its counter on the device and
   advanced by a kernel), so each replay draws new masks; the layers' generators are made anew every epoch
   (the trainer reseeds them), so a graph is captured again when they change;
5. **one graph per batch shape** (the short last batch of an epoch gets its own; ``drop_last`` avoids it) and
   per kind of step (the steps that sample gradient norms);
6. **one eager step first**: it makes the optimizer's state and moves it into flat buffers, compiles the
   kernels and warms cuBLAS up; the pointer tables of the multi-tensor kernels are built before capture.

The host keeps the optimizer's step counts as the eager step does.
"""

from __future__ import annotations

from typing import Any

from backends import DeviceRandom
from backends.array_types import Array

from ..errors import ConfigError
from ..on_device import on_device
from .step import MicroBatch, TrainingStep


class CapturedStep:
    """A ``TrainingStep`` replayed from CUDA Graphs (see the module docstring); ``run`` as ``TrainingStep.run``."""

    def __init__(self, step: TrainingStep):
        backend = step.backend
        cupy = getattr(backend, "cupy", None)  # CupyBackend's module; other backends have none
        if cupy is None or not hasattr(cupy.cuda, "Graph") or not hasattr(cupy.cuda.Stream, "begin_capture"):
            raise ConfigError(f"compile: CUDA Graph capture needs CuPy >= 13 with cupy.cuda.Graph (backend "
                              f"{backend.name})")
        self.step, self.backend, self.optimizer = step, backend, step.optimizer
        self._cupy = cupy
        with backend.activate():
            self._stream = cupy.cuda.Stream(non_blocking=True)
            self._pool = cupy.cuda.MemoryPool()  # what captured steps allocate: memory no other array may get
        self._graphs: dict = {}  # key -> (graph, static batch)
        # the metrics array the graphs add to (the trainer's, made by new_metrics)
        self._metrics: Array | None = None
        self._norms: dict = {}  # names -> the norm sums the sampling graphs add to
        # per group, once the warm-up step has run: (host lr, lr device scalar, step device scalar)
        self._scalars: list[tuple[float | None, Array, Array]] | None = None
        self._host_steps: list[int] = []  # per group: the step count its device scalar holds
        self._stepped: set[str] | None = None  # the parameters the warm-up step updated

    @on_device
    def new_metrics(self) -> Array:
        """Zeroed metrics for an epoch (the same array every epoch: the graphs add to it), and the norm sums
        zeroed with them."""
        if self._metrics is None:
            self._metrics = self.step.new_metrics()
        else:
            self._metrics.fill(0)
        for vector in self._norms.values():
            vector.fill(0)
        return self._metrics

    @on_device
    def run(self, batch: list, metrics: Array, norms: dict | None = None) -> tuple[Array, dict | None]:
        cupy, optimizer = self._cupy, self.optimizer
        if metrics is not self._metrics:  # the graphs add to one array: ours
            if self._metrics is None:
                self._metrics = self.step.new_metrics()
            self._metrics[...] = metrics
            metrics = self._metrics
        if self._stepped is None:  # the warm-up step: eager
            before = dict(optimizer.param_steps)
            metrics, norms = self.step.run(batch, metrics, norms)
            self._stepped = {name for name, count in optimizer.param_steps.items() if count != before.get(name)}
            if norms is not None:
                for names, vector in norms.items():  # the sums the sampling graphs will add to
                    self._norms[names] = vector.copy()
                    norms[names] = self._norms[names]
            return metrics, norms
        stepped = self._stepped
        streams = tuple(id(stream) for stream in _random_streams(self.step.model))
        key = (tuple((x.shape, x.dtype.str, y.shape, y.dtype.str, float(w)) for x, y, w in batch), norms is not None,
               streams)
        caller = cupy.cuda.get_current_stream()
        self._stream.wait_event(caller.record())  # after the work queued before (the epoch's permuted data)
        lrs, steps = self._device_scalars(stepped)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) > 8:
                self._graphs.clear()  # an epoch's generators are new: the graphs of the old ones go
            entry = self._graphs[key] = self._capture(batch, metrics, norms, lrs, steps)
        graph, static = entry
        with self._stream:
            for (x_static, y_static), (x, y, _) in zip(static, batch):
                x_static[...] = x
                y_static[...] = y
            graph.launch(self._stream)
        caller.wait_event(self._stream.record())  # the work queued after (log points) waits for the step
        optimizer.step_count += 1  # the host's step counts, as the eager step keeps them
        for name in stepped:
            optimizer.param_steps[name] += 1
        if norms is not None:
            norms.update(self._norms)
        return metrics, norms

    def _capture(self, batch: list, metrics: Array, norms: dict | None, lrs: list[Array],
                 steps: list[Array]) -> tuple[Any, list]:
        """A CUDA Graph of one step adding to ``metrics`` (and the norm sums), and its static batch buffers."""
        cupy, optimizer, step = self._cupy, self.optimizer, self.step
        with self._stream:  # what outlives the capture comes from CuPy's usual pool, before it
            static = [(cupy.empty_like(x), cupy.empty_like(y)) for x, y, _ in batch]
            names, grads = step._gradients()
            if grads:
                self.backend.prepare_for_capture(grads)  # built now, not inside the capture
            sums = None
            if norms is not None and grads:
                key = tuple(names)
                if key not in self._norms:
                    self._norms[key] = cupy.zeros((len(names),), dtype=metrics.dtype)
                sums = {key: self._norms[key]}  # added to in place by every replay
            micro_batches = [MicroBatch(x, y, w) for (x, y), (_, _, w) in zip(static, batch)]
            with cupy.cuda.using_allocator(self._pool.malloc):  # the graph's own memory: a private pool
                self._stream.begin_capture()
                try:
                    for scalar in steps:
                        scalar += 1  # this step's number, counted on the device
                    optimizer._traced = {"lr": lrs, "step": steps, "stepped": set(), "flat": True}
                    step.run.__wrapped__(  # type: ignore[attr-defined]  # the step unwrapped from on_device
                        step, micro_batches, metrics, sums)
                finally:
                    optimizer._traced = None
                    graph = self._stream.end_capture()
        return graph, static

    def _device_scalars(self, stepped: set[str]) -> tuple[list[Array], list[Array]]:
        """Per group, this step's learning rate and step number as device scalars (``stepped``: the parameters
        the warm-up step updated)."""
        backend, optimizer = self.backend, self.optimizer
        if self._scalars is None:  # the step numbers the warm-up left, then counted on the device
            self._scalars, self._host_steps = [], []
            for group in optimizer.param_groups:
                counts = {optimizer.param_steps[name] for name in group["names"] if name in stepped}
                if len(counts) > 1:
                    raise ConfigError("compile: the parameters of one group have taken different numbers of steps; "
                                      "a captured step needs one count per group")
                count = counts.pop() if counts else 0
                self._scalars.append((None, backend.set_scalar(None, 0.0), backend.set_scalar(None, float(count))))
                self._host_steps.append(count)
        lrs, steps = [], []
        for index, (group, (host_lr, lr, number)) in enumerate(zip(optimizer.param_groups, self._scalars)):
            if host_lr != group["lr"]:
                lr = backend.set_scalar(lr, group["lr"])
                self._scalars[index] = (group["lr"], lr, number)
            # the device counts the steps; the host's count differs from it only when the optimizer's state
            # was loaded (a checkpoint, a rollback): then the host's is written into the same scalar
            counted = [optimizer.param_steps[name] for name in group["names"] if name in stepped]
            host = counted[0] if counted else 0
            if host != self._host_steps[index]:
                backend.set_scalar(number, float(host))
            self._host_steps[index] = host + 1  # after this step
            lrs.append(lr)
            steps.append(number)
        return lrs, steps


def _random_streams(model) -> list:
    return [value for _, layer in model._named_layers() for value in vars(layer).values()
            if isinstance(value, DeviceRandom)]


__all__ = ["CapturedStep"]
