"""Evaluation on the device: predictions, the loss and the task's metrics in batches, one host transfer at the
end. The metrics themselves are in ``backprop/metrics.py``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import array_api_compat

from backends.array_types import Array

from ..losses import Loss
from ..metrics import Metric, check_outputs, make_metrics
from ..on_device import on_device
from .batches import batch_bounds

Model = Any  # a Layer (a Sequential, say)


@on_device
def predict_logits(model: Model, x: Array, *, batch_size: int = 4096) -> Array:
    """The model's outputs for ``x`` (evaluation mode), computed in batches to bound memory."""
    xp = model.backend.xp
    parts = [model.forward(x[start:stop, ...], training=False) for start, stop in batch_bounds(x.shape[0], batch_size)]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


@on_device
def predict_classes(model: Model, x: Array, *, batch_size: int = 4096) -> Array:
    """The class of highest score for each example of ``x`` (at each position, for sequences). A model of one
    output is a binary classifier on logits (binary cross-entropy): class 1 where the logit is above 0 (a
    probability above 0.5), else 0."""
    xp = model.backend.xp
    scores = predict_logits(model, x, batch_size=batch_size)
    if scores.shape[-1] == 1:
        return xp.astype(scores[..., 0] > 0, xp.int64)
    return xp.argmax(scores, axis=-1)


def metrics_for(loss_fn: Loss, metrics: Sequence[Metric | str] | None = None) -> list[Metric]:
    """The metrics of a run: ``metrics`` (instances or names), or the loss's defaults when None."""
    return loss_fn.default_metrics() if metrics is None else make_metrics(metrics)


@on_device
def evaluate(model: Model, x: Array, y: Array, loss_fn: Loss, *, metrics: Sequence[Metric | str] | None = None,
             batch_size: int = 4096) -> dict[str, float]:
    """The mean loss and the metrics (by default the loss's: accuracy for cross-entropy, MAE and R² for MSE,
    ...) over a dataset, as Python floats: ``{"loss": ..., "accuracy": ...}``."""
    metrics = metrics_for(loss_fn, metrics)
    loss_sum, sums, outputs = evaluation_sums(model, x, y, loss_fn, metrics, batch_size=batch_size)
    return metric_results(loss_sum, sums, x.shape[0], metrics, outputs)


@on_device
def evaluation_sums(model: Model, x: Array, y: Array, loss_fn: Loss, metrics: Sequence[Metric], *,
                    batch_size: int = 4096) -> tuple[float, list[float], int]:
    """The loss summed over the examples of ``(x, y)``, the metrics' sums (``Metric.sums``, in order), read on
    the host once, and the model's outputs per position: what ``evaluate`` reports, and what the ranks of a
    distributed run add up."""
    xp = model.backend.xp
    for metric in metrics:
        metric.prepare(xp, y)
    total, outputs = None, 0
    for start, stop in batch_bounds(x.shape[0], batch_size):
        logits = model.forward(x[start:stop, ...], training=False)
        target, outputs = y[start:stop, ...], logits.shape[-1]
        if start == 0:
            check_outputs(metrics, outputs)
        batch_loss = loss_fn(logits, target) * (stop - start)
        parts = [xp.reshape(xp.astype(batch_loss, logits.dtype), (1,))]
        parts += [metric.sums(xp, logits, target) for metric in metrics]
        batch = xp.concat(parts) if len(parts) > 1 else parts[0]
        total = batch if total is None else total + batch
    host = [float(v) for v in model.backend.to_host(total)]
    return host[0], host[1:], outputs


def metric_results(loss_sum: float, sums: Sequence[float], examples: int, metrics: Sequence[Metric],
                   outputs: int) -> dict[str, float]:
    """``{"loss": mean loss, name: figure, ...}`` from the sums of ``examples`` examples of a model of
    ``outputs`` outputs per position."""
    results = {"loss": loss_sum / examples}
    offset = 0
    for metric in metrics:
        size = metric.size(outputs)
        results[metric.name] = metric.result(list(sums[offset:offset + size]), examples)
        offset += size
    return results


def labels_per_example(y: Array) -> int:
    """Predictions per example: 1 for a class label, T for a label at each of T sequence positions."""
    shape = y.shape[1:] if _is_integral(y) else y.shape[1:-1]
    return math.prod(int(n) for n in shape)


def _is_integral(y: Array) -> bool:
    return array_api_compat.array_namespace(y).isdtype(y.dtype, "integral")


__all__ = ["evaluate", "evaluation_sums", "labels_per_example", "metric_results", "metrics_for",
           "predict_classes", "predict_logits"]
