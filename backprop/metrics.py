"""Metrics: figures of how well a model does its task, computed on the device and read at log points.

A metric adds sums over a batch to a small vector on the device (``sums``), and turns the sums of a whole
epoch, read on the host once, into its figure (``result``). Nothing in ``sums`` reads a device value, so a
training step stays free of host synchronizations (see ``backprop/training/step.py``).

Every sum is *per example*: a row whose prediction has P positions (a sequence, say) adds its figure divided
by P, so ``result`` gets the sums and the number of examples, whatever the shapes. Which metrics a run
records comes from its loss (``Loss.default_metrics``): accuracy for cross-entropy, thresholded accuracy for
binary cross-entropy, MAE and R² for mean squared error. Your own metric subclasses ``Metric`` and is given
to ``Trainer(metrics=[...])``::

    class MeanBias(Metric):
        name = "bias"
        higher_is_better = False
        def sums(self, xp, prediction, target):
            return xp.reshape(xp.sum(prediction - target) / per_row(prediction), (1,))
        def result(self, sums, examples):
            return sums[0] / examples

A metric must be a function of sums over examples (a mean, a rate, R² from its moments); a maximum or a
median is not, and has no place here (compute it from ``predict_logits`` after training).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from backends.array_types import Array

from .errors import ConfigError
from .validators import is_number

Namespace = Any  # its array API namespace


class Metric:
    """Base class. ``name``: the history's key (``train_<name>``, ``val_<name>``, ``test_<name>``);
    ``percent``: shown as a percentage; ``higher_is_better``: what ``EarlyStopping`` counts as improving."""

    name: str = ""
    percent: bool = False
    higher_is_better: bool = True

    def size(self, outputs: int) -> int:
        """How many sums the metric keeps, for a prediction of ``outputs`` values per position."""
        return 1

    def check_outputs(self, outputs: int) -> None:
        """Raise ``ConfigError`` when the metric means nothing for a model of ``outputs`` outputs per position
        (called with the first batch's predictions, by the training step and ``evaluate``). The default
        accepts any."""

    def sums(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        """This batch's sums: a 1-d array of ``size`` values on the prediction's device, per example."""
        raise NotImplementedError

    def prepare(self, xp: Namespace, targets: Array) -> None:
        """Called with the targets of a dataset (on the device) before its sums are taken: by ``Trainer.fit``
        with the training targets before the first step, and by ``evaluate``. No device value may be read here
        either. The default does nothing."""

    def result(self, sums: Sequence[float], examples: int) -> float:
        """The figure from the sums of ``examples`` examples (host floats)."""
        raise NotImplementedError

    def format(self, value: float) -> str:
        """The figure as logs print it."""
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4g}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """The fraction of predictions whose highest score is at the label (argmax), for class scores: integer
    labels ``(batch, ...)`` or probability targets of the scores' shape (compared with their argmax)."""

    name = "accuracy"
    percent = True

    def check_outputs(self, outputs: int) -> None:
        if outputs < 2:  # the argmax of one score is always 0: a 100% that says nothing
            raise ConfigError(f"accuracy (the argmax of class scores) needs at least two outputs, the model has "
                              f"{outputs} output{'' if outputs == 1 else 's'}; for one logit (binary "
                              f"cross-entropy) use 'binary_accuracy'")

    def count(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        """How many positions are right (a 0-d array on the device; the fused cross-entropy step counts the
        same figure into its own metrics)."""
        if not xp.isdtype(target.dtype, "integral"):  # probability targets: compare with their argmax
            target = xp.argmax(target, axis=-1)
        return xp.sum(xp.astype(xp.argmax(prediction, axis=-1) == target, prediction.dtype))

    def sums(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        return xp.reshape(_per_example(self.count(xp, prediction, target), per_row(prediction, classes=True)), (1,))

    def result(self, sums: Sequence[float], examples: int) -> float:
        return sums[0] / examples


class BinaryAccuracy(Metric):
    """The fraction of outputs on the right side of ``threshold`` (a probability: 0.5 is a logit of 0), for
    binary cross-entropy on logits; targets 0/1 (integers, or floats where a target above 0.5 counts as 1)."""

    name = "accuracy"
    percent = True

    def __init__(self, threshold: float = 0.5):
        if not is_number(threshold) or not 0 < threshold < 1:
            raise ConfigError(f"BinaryAccuracy: threshold must be a probability in (0, 1), got {threshold!r}")
        self.threshold = float(threshold)
        self._logit = math.log(self.threshold / (1 - self.threshold))

    def sums(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        if xp.isdtype(target.dtype, "integral"):
            truth = target > 0  # 0/1 labels (an integer array is not compared with a float)
            if target.ndim == prediction.ndim - 1:
                truth = truth[..., None]  # (batch,) labels of a (batch, 1) output
        else:
            truth = target > 0.5
        right = (prediction > self._logit) == truth
        return xp.reshape(_per_example(xp.sum(xp.astype(right, prediction.dtype)), per_row(prediction)), (1,))

    def result(self, sums: Sequence[float], examples: int) -> float:
        return sums[0] / examples

    def __repr__(self) -> str:
        return f"BinaryAccuracy(threshold={self.threshold:g})"


class MAE(Metric):
    """Mean absolute error over all outputs, in the targets' units.

    ``scale``: the targets the model learns are the real ones divided by ``scale`` (and shifted), as
    ``backprop train --task regression`` standardizes them: the figure is reported times ``scale``, in the
    real targets' units. A number, or one per output (the mean over the outputs of each one's MAE times its
    scale; the sums are then kept per output). The sums on the device are the same either way: the scale is
    applied to the host figure in ``result``."""

    name = "mae"
    higher_is_better = False

    def __init__(self, scale: float | Sequence[float] | None = None):
        values: list[Any] | None = None if scale is None else [scale] if is_number(scale) else \
            list(scale) if isinstance(scale, Sequence) and not isinstance(scale, str) else []
        if values is not None and not (values and all(is_number(v) and v > 0 for v in values)):
            raise ConfigError(f"MAE: scale must be a positive number or a list of them (one per output), got "
                              f"{scale!r}")
        self.scale = None if values is None else [float(v) for v in values]

    def size(self, outputs: int) -> int:
        return outputs if self.scale is not None and len(self.scale) > 1 else 1

    def sums(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        diff = xp.abs(prediction - _as(xp, target, prediction))
        if self.scale is None or len(self.scale) == 1:
            return xp.reshape(_per_example(xp.sum(diff), per_row(prediction)), (1,))
        outputs = prediction.shape[-1]
        if outputs != len(self.scale):  # a shape, known when the step is traced: no device read
            raise ConfigError(f"MAE: {len(self.scale)} scales (one per output) for a prediction of {outputs} "
                              f"outputs")
        return _per_example(xp.sum(xp.reshape(diff, (-1, outputs)), axis=0), per_row(prediction, classes=True))

    def result(self, sums: Sequence[float], examples: int) -> float:
        if self.scale is None:
            return sums[0] / examples
        if len(self.scale) == 1:
            return self.scale[0] * sums[0] / examples
        return sum(s * v for s, v in zip(self.scale, sums)) / (len(sums) * examples)

    def __repr__(self) -> str:
        return "MAE()" if self.scale is None else f"MAE(scale={self.scale if len(self.scale) > 1 else self.scale[0]})"


class R2(Metric):
    """The coefficient of determination, 1 − SS_res / SS_tot, of each output, averaged over the outputs
    (scikit-learn's ``r2_score`` with ``multioutput="uniform_average"``): 1 is a perfect fit, 0 no better than
    predicting the mean of the targets. An output whose targets are all equal counts 1 if it is predicted
    exactly, else 0.

    The sums are the squared errors and the first two moments of the targets, per output, taken around a
    fixed shift c per output: Σ(t − c) and Σ(t − c)², so SS_tot = Σ(t − c)² − (Σ(t − c))²/n. Without the shift
    it would lose its digits in float32 when the targets' mean is large beside their spread (prices around 1e6
    that vary by 1e3). c is the mean of the first rows of the targets ``prepare`` is given (the training set's,
    by ``Trainer.fit``), computed and kept on the device, never read; it is set once per device, so every sum
    of a run is taken around the same c (sums about different c do not add up). Without ``prepare`` (a
    ``TrainingStep`` driven by hand) c is 0."""

    name = "r2"
    #: the rows of the targets whose mean is the shift
    SHIFT_ROWS = 256

    def __init__(self) -> None:
        self.shift: Array | None = None
        self._shift_of: tuple | None = None  # (namespace, device) of the shift

    def prepare(self, xp: Namespace, targets: Array) -> None:
        key = (xp, str(getattr(targets, "device", None)))
        if self.shift is not None and self._shift_of == key:  # once: a captured CUDA graph reads this array
            return
        rows = targets[:min(self.SHIFT_ROWS, targets.shape[0]), ...]
        if rows.ndim == 1:
            rows = rows[:, None]
        if not xp.isdtype(rows.dtype, "real floating"):
            rows = xp.astype(rows, xp.float32)
        self.shift = xp.mean(xp.reshape(rows, (-1, rows.shape[-1])), axis=0)
        self._shift_of = key

    def size(self, outputs: int) -> int:
        return 3 * outputs

    def sums(self, xp: Namespace, prediction: Array, target: Array) -> Array:
        outputs = prediction.shape[-1]
        p = xp.reshape(prediction, (-1, outputs))
        t = xp.reshape(_as(xp, target, prediction), (-1, outputs))
        diff = p - t
        if self.shift is not None and self.shift.shape == (outputs,):
            t = t - (self.shift if self.shift.dtype == t.dtype else xp.astype(self.shift, t.dtype))
        sums = xp.concat([xp.sum(diff * diff, axis=0), xp.sum(t, axis=0), xp.sum(t * t, axis=0)])
        return _per_example(sums, per_row(prediction, classes=True))

    def result(self, sums: Sequence[float], examples: int) -> float:
        outputs = len(sums) // 3
        scores = []
        for j in range(outputs):
            residual, total, squares = sums[j], sums[outputs + j], sums[2 * outputs + j]  # total: Σ(t − c)
            spread = squares - total * total / examples
            if spread <= 0:
                scores.append(1.0 if residual == 0 else 0.0)
            else:
                scores.append(1.0 - residual / spread)
        return sum(scores) / len(scores) if scores else math.nan


#: The built-in metrics by the names ``Trainer(metrics=[...])`` takes.
METRICS = {"accuracy": Accuracy, "binary_accuracy": BinaryAccuracy, "mae": MAE, "r2": R2}


def make_metrics(metrics: Iterable[Metric | str]) -> list[Metric]:
    """``Metric`` instances from instances and names (``METRICS``), their names checked to be distinct."""
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    made = []
    for metric in metrics:
        if isinstance(metric, str):
            key = metric.lower().replace("-", "_")
            if key not in METRICS:
                raise ConfigError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}, or a Metric")
            metric = METRICS[key]()
        elif not isinstance(metric, Metric):
            raise ConfigError(f"metrics must be Metric instances or names ({', '.join(METRICS)}), got "
                              f"{type(metric).__name__}")
        made.append(metric)
    names = [m.name for m in made]
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or name == "loss":
            raise ConfigError(f"a metric's name must be a word other than 'loss' (it names history keys such as "
                              f"train_<name>), got {name!r}")
        if names.count(name) > 1:
            raise ConfigError(f"two metrics are named {name!r}; give each its own name")
    return made


def format_loss(value: float | None) -> str:
    """A loss as logs print it: 4 significant digits, so a well-fitted one reads ``3.2e-05``, not ``0.0000``
    (None, a figure not recorded: ``-``)."""
    return "-" if value is None else f"{value:.4g}"


def check_outputs(metrics: Iterable[Metric], outputs: int) -> None:
    """``Metric.check_outputs`` of each metric, for a model of ``outputs`` outputs per position."""
    for metric in metrics:
        metric.check_outputs(outputs)


def per_row(prediction: Array, *, classes: bool = False) -> int:
    """Values per example of ``prediction`` (batch, ...): what a sum over the batch is divided by to make it a
    sum of per-example figures. ``classes``: the last axis holds the scores of one prediction (class scores,
    or the outputs of one position for R²), and is not counted."""
    shape = prediction.shape[1:-1] if classes else prediction.shape[1:]
    return math.prod(int(n) for n in shape)


def _per_example(total: Array, values: int) -> Array:
    """A batch's sum of values as a sum of per-example figures (no operation when each example has one)."""
    return total if values == 1 else total / values


def _as(xp: Namespace, target: Array, prediction: Array) -> Array:
    """``target`` in the prediction's dtype and shape (integer labels (batch,) of a (batch, 1) output)."""
    if target.dtype != prediction.dtype:
        target = xp.astype(target, prediction.dtype)
    if target.ndim == prediction.ndim - 1:
        target = target[..., None]
    return target


__all__ = ["MAE", "METRICS", "R2", "Accuracy", "BinaryAccuracy", "Metric", "check_outputs", "format_loss",
           "make_metrics", "per_row"]
