"""The training step, apart from the epoch loop: one optimizer update as a function.

    params, optimizer_state, metrics = step(params, optimizer_state, batch, metrics)

``batch`` is the update's micro-batches (``MicroBatch(x, y, weight)``: one, or k with gradient accumulation;
``weight`` is the micro-batch's share of the update's examples), ``metrics`` a small array on the device
(``backends.base.METRICS``: loss sum, correct predictions, non-finite losses, good steps, then the sums of
the run's other metrics, ``backprop/metrics.py``) that the step adds to and the loop reads only at its log
points. Accuracy is the ``correct`` count, which the fused cross-entropy counts itself; a metric of any
other kind adds its sums after the four. The step zeroes the gradients, runs forward and backward over
each micro-batch (the gradients accumulate, each micro-batch weighted by its share), calls the all-reduce hook
(``--distributed``: every rank then holds the gradient of the whole update), clips, and has the optimizer
update every parameter. Nothing in it reads a device value on the host.

Every array operation of a step goes through a backend capability where one exists (``Backend.dense_forward``
/ ``dense_backward`` through ``Dense`` and ``Sequential``, ``softmax_cross_entropy`` through
``CrossEntropy``, the optimizers' ``multi_tensor_*`` updates, ``tensor_norms`` and ``clip_coefficient``):
on a GPU each is one kernel, or a GEMM and one kernel.

The trainer calls ``run`` (the same step on the parameter store itself: no arrays are moved in or out) and,
with ``compile=...``, a compiled form of the same function (``backprop/training/compiled.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from backends.array_types import Array
from backends.base import METRICS

from ..errors import ConfigError
from ..losses import Loss
from ..metrics import Accuracy, Metric, check_outputs
from ..on_device import on_device
from ..parameters import zero_grad
from .metrics import metrics_for


class MicroBatch(NamedTuple):
    """Rows of one forward and backward pass: inputs ``x``, targets ``y``, and ``weight``, their share of the
    update's examples (the loss of the update is the mean over all of them)."""

    x: Any
    y: Any
    weight: float


class TrainingStep:
    """One optimizer step of ``model`` on a batch: ``step(params, optimizer_state, batch, metrics)``.

    ``clip_norm``: clip the gradients to this global norm before the update; ``allreduce``: a function of
    the model that sums the gradients over the processes of a distributed run (``Communicator
    .allreduce_gradients``), called between the backward passes and the update. ``metrics``: the metrics
    the step counts (``Metric`` instances or names; None: the loss's ``default_metrics``); ``outputs``: the
    model's outputs per position, needed by metrics with sums per output (R²).
    """

    def __init__(self, model: Any, loss_fn: Loss, optimizer: Any, *, clip_norm: float | None = None,
                 allreduce: Callable[[Any], None] | None = None, metrics: Sequence[Metric | str] | None = None,
                 outputs: int | None = None):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.metrics = metrics_for(loss_fn, metrics)
        # Accuracy is the core vector's "correct" count (the fused cross-entropy counts it); the others add sums
        self.accuracy = next((m for m in self.metrics if type(m) is Accuracy), None)
        self.extra_metrics = [m for m in self.metrics if m is not self.accuracy]
        if outputs is None and any(m.size(1) != m.size(0) for m in self.extra_metrics):
            raise ConfigError(f"TrainingStep: the metrics {', '.join(m.name for m in self.extra_metrics)} keep "
                              f"sums per output; give outputs= (the model's outputs per position)")
        self.outputs = outputs or 0
        self.backend = model.backend
        self.clip_norm = clip_norm
        self.allreduce = allreduce
        self.named_params = model.named_parameters()
        self.params = list(self.named_params.values())
        self._names = {id(box): name for name, box in self.named_params.items()}
        self.skip_input_grad = model.can_skip_input_grad  # the first layer needs no dL/dinput: nothing uses it
        optimizer.prepare()  # flat buffers (NumPy, CuPy) before the first backward pass: its gradients land there

    # -- the function ----------------------------------------------------------------------------------------
    @on_device
    def __call__(self, params: list, optimizer_state: dict, batch: Sequence[MicroBatch], metrics: Array,
                 norms: dict | None = None) -> tuple[list, dict, Array, dict | None]:
        """``(params, optimizer_state, metrics, norms)`` after one update on ``batch`` (see ``run``), from
        ``params`` (the model's parameter values, in ``model.parameters()`` order) and ``optimizer_state``
        (``optimizer.state``: name -> buffer -> array). The arrays given may be updated in place (NumPy,
        PyTorch, CuPy) and must not be used afterwards: use the returned ones."""
        for box, value in zip(self.params, params):
            box.value = value
        self.optimizer.state = dict(optimizer_state)
        metrics, norms = self.run(batch, metrics, norms)
        return [box.value for box in self.params], dict(self.optimizer.state), metrics, norms

    @on_device
    def new_metrics(self) -> Array:
        """Zeroed metrics for an epoch (``METRICS``, then the other metrics' sums), on the device, in the model's
        dtype."""
        xp = self.backend.xp
        return xp.zeros((self.metrics_size,), dtype=self.model.dtype, device=self.backend.device)

    @property
    def metrics_size(self) -> int:
        """The length of the metrics vector: ``METRICS`` and the sums of the metrics other than accuracy."""
        return len(METRICS) + sum(m.size(self.outputs) for m in self.extra_metrics)

    # -- the step on the parameter store -----------------------------------------------------------------------
    @on_device
    def run(self, batch: Sequence[MicroBatch], metrics: Array, norms: dict | None = None
            ) -> tuple[Array, dict | None]:
        """One update of the model's parameters (in their ``Parameter`` boxes) and the optimizer's state on
        ``batch``; returns ``(metrics, norms)``. ``norms``: None, or a dict (names of parameters -> summed
        gradient norms, one 1-d array per set of names) to which this step's gradient norms are added (the
        trainer's diagnostics, on a few steps of each epoch)."""
        backend, model = self.backend, self.model
        zero_grad(self.params)
        for x, y, weight in batch:
            logits, backprop = model.begin_update(x, training=True)
            grad_logits, metrics = self._loss_gradient(logits, y, weight, metrics)
            if self.skip_input_grad:
                backprop(grad_logits, input_grad=False)
            else:
                backprop(grad_logits)
        if self.allreduce is not None:  # every rank now holds the gradient of the whole update
            self.allreduce(model)
        if norms is not None or self.clip_norm is not None:
            names, grads = self._gradients()
            key = tuple(names)
            if not grads:
                pass
            elif self.clip_norm is None:  # the diagnostics alone: the norms added to the sums in one call
                assert norms is not None  # asked for: no clipping means the norms are why we are here
                norms[key] = backend.tensor_norms(grads, add_to=norms.get(key))
            else:
                step_norms = backend.tensor_norms(grads)
                if norms is not None:
                    norms[key] = step_norms if key not in norms else norms[key] + step_norms
                coefficient = backend.clip_coefficient(step_norms, self.clip_norm)
                self._store_gradients(names, backend.multi_tensor_scale(grads, coefficient))
        self.optimizer.step()
        if not self.extra_metrics:
            return backend.close_step_metrics(metrics), norms
        view = metrics[:len(METRICS)]
        return self._with_core(metrics, view, backend.close_step_metrics(view)), norms

    def _loss_gradient(self, logits, y, weight, metrics):
        """dL/dlogits times ``weight``, and the metrics with this batch's added: the loss's fused path where it
        has one (cross-entropy on integer labels), else its value and gradient and the portable metrics; then
        the other metrics' sums."""
        check_outputs(self.metrics, logits.shape[-1])  # a shape: known when traced, no device read
        if not self.extra_metrics:
            return self._core_loss_gradient(logits, y, weight, metrics)
        xp = self.backend.xp
        view = metrics[:len(METRICS)]
        grad, core = self._core_loss_gradient(logits, y, weight, view)
        parts = [metric.sums(xp, logits, y) for metric in self.extra_metrics]
        return grad, self._with_core(metrics, view, core, parts[0] if len(parts) == 1 else xp.concat(parts))

    def _core_loss_gradient(self, logits, y, weight, metrics):
        fused = getattr(self.loss_fn, "fused_step", None)
        if fused is not None:
            result = fused(logits, y, grad_scale=weight, metrics=metrics)
            if result is not None:
                return result
        loss, grad = self.loss_fn.value_and_grad(logits, y)
        if weight != 1.0:
            grad = grad * weight
        xp = self.backend.xp
        correct = xp.zeros_like(loss) if self.accuracy is None else self.accuracy.count(xp, logits, y)
        return grad, self.backend.add_step_metrics(metrics, loss, correct, logits.shape[0])

    def _with_core(self, metrics, view, core, sums=None):
        """``metrics`` with its first ``len(METRICS)`` values from ``core`` and ``sums`` added to the rest.
        ``core`` is ``view`` (``metrics[:len(METRICS)]``) itself where the backend wrote into it (NumPy,
        PyTorch, CuPy): the sums are then added in place too (a captured CUDA graph adds to one array every
        step); else a new array (JAX, immutable arrays)."""
        n = len(METRICS)
        if core is view:
            return metrics if sums is None else self.backend.at_add(metrics, slice(n, None), sums)
        rest = metrics[n:] if sums is None else metrics[n:] + sums
        return self.backend.xp.concat([core, rest])

    def _gradients(self) -> tuple[list[str], list]:
        """The names and gradients of the parameters that have one: the optimizer's flat gradient views
        (``FlatTensors``: one kernel covers them) when they are all of them, else a list."""
        flat = self.optimizer.flat_gradients()
        if flat is not None:
            boxes, grads = flat
            names = [self._names[id(box)] for box in boxes if id(box) in self._names]
            if len(names) == len(boxes) == sum(1 for p in self.params if p.grad is not None):
                return names, grads
        named = [(name, p.grad) for name, p in self.named_params.items() if p.grad is not None]
        return [name for name, _ in named], [grad for _, grad in named]

    def _store_gradients(self, names, grads) -> None:
        for name, grad in zip(names, grads):
            self.named_params[name].grad = grad


__all__ = ["MicroBatch", "TrainingStep"]
