"""Evaluation on the device: predictions, loss and accuracy in batches, one host transfer at the end."""

from __future__ import annotations

from ..on_device import on_device
from .batches import batch_bounds


@on_device
def predict_logits(model, x, *, batch_size: int = 4096):
    """The model's outputs for ``x`` (evaluation mode), computed in batches to bound memory."""
    xp = model.backend.xp
    parts = [model.forward(x[start:stop, ...], training=False) for start, stop in batch_bounds(x.shape[0], batch_size)]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)


@on_device
def predict_classes(model, x, *, batch_size: int = 4096):
    return model.backend.xp.argmax(predict_logits(model, x, batch_size=batch_size), axis=-1)


@on_device
def evaluate(model, x, y, loss_fn, *, batch_size: int = 4096) -> tuple[float, float]:
    """Mean loss and accuracy (fraction correct) over a dataset, as Python floats."""
    xp = model.backend.xp
    n = x.shape[0]
    loss_sum = correct = None
    positions = n * labels_per_example(y)
    for start, stop in batch_bounds(n, batch_size):
        logits = model.forward(x[start:stop, ...], training=False)
        batch_loss = loss_fn(logits, y[start:stop, ...]) * (stop - start)
        batch_correct = count_correct(xp, logits, y[start:stop, ...])
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
    host = model.backend.to_host(xp.stack([loss_sum, xp.astype(correct, loss_sum.dtype)]))
    return float(host[0]) / n, float(host[1]) / positions


def count_correct(xp, logits, labels):
    """How many predictions' highest score is at the label (a 0-d array on the device)."""
    if not xp.isdtype(labels.dtype, "integral"):  # probability targets: compare with their argmax
        labels = xp.argmax(labels, axis=-1)
    return xp.sum(xp.astype(xp.argmax(logits, axis=-1) == labels, logits.dtype))


def labels_per_example(y) -> int:
    """Predictions per example: 1 for a class label, T for a label at each of T sequence positions."""
    shape = y.shape[1:] if _is_integral(y) else y.shape[1:-1]
    count = 1
    for n in shape:
        count *= n
    return count


def _is_integral(y) -> bool:
    import array_api_compat

    return array_api_compat.array_namespace(y).isdtype(y.dtype, "integral")
