"""Plots written after training: learning curves and a confusion matrix, as PNG files.

matplotlib is an optional extra (``pip install "backprop[plot]"``); it is imported
inside the plotting functions, and :class:`PlotUnavailable` is raised when it is
missing. Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg
canvas directly, so plotting works headless and never touches pyplot's global
state (no ``matplotlib.use``, no open-figure registry). Files are written
through :func:`~backprop.io.atomic.atomic_path`: a reader never sees a
half-written PNG, and a failed plot leaves the previous file in place.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import validators as check
from ..errors import BackpropError, DataError, DTypeError, ShapeError
from ..io.atomic import atomic_path

__all__ = ["PlotUnavailable", "confusion_matrix", "metric_names", "plot_confusion_matrix", "plot_learning_curves"]

DPI = 120
_INSTALL_HINT = 'pip install "backprop[plot]"'
_TRAIN_COLOR = "tab:blue"
_VAL_COLOR = "tab:orange"
_MARKER_LIMIT = 30  # draw point markers when a line has at most this many points
_ANNOTATE_LIMIT = 20  # annotate confusion-matrix cells up to this many classes


class PlotUnavailable(BackpropError, RuntimeError):
    """Plots cannot be drawn here because matplotlib is missing (or fails to import)."""


def _matplotlib():
    """Import what the plots need; raise :class:`PlotUnavailable` with a one-line message when it cannot."""
    try:
        # lazy: optional library (matplotlib), imported only when a plot is drawn
        import matplotlib  # noqa: F401  (imported first so a blocked or missing top-level package fails here)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable(f"plots need matplotlib, which is not installed: {_INSTALL_HINT}") from exc
    except Exception as exc:  # a broken installation must not end a training run
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise PlotUnavailable(
            f"matplotlib failed to import ({type(exc).__name__}: {reason}); reinstall it: {_INSTALL_HINT}"
        ) from exc
    return Figure, FigureCanvasAgg


def _new_figure(figsize: tuple[float, float]):
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas: Agg, whatever pyplot's backend is
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, then free the figure's artists."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    finally:
        fig.clear()
    return path


# --------------------------------------------------------------------------------------------------
# learning curves


def _as_float(value: Any) -> float | None:
    """``None`` for a missing value, else the value as a float (NaN when it is not a number)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _series(records: Sequence[Mapping], key: str) -> tuple[np.ndarray, int]:
    """The values under ``key`` (NaN where missing or unusable) and how many were given but not finite."""
    values = [_as_float(record.get(key)) for record in records]
    array = np.array([math.nan if v is None else v for v in values], dtype=np.float64)
    bad = sum(1 for v in values if v is not None and not math.isfinite(v))
    return array, bad


def _plot_line(ax, x: np.ndarray, y: np.ndarray, *, label: str, skipped: int = 0, positive: bool = False, **style):
    """Plot the finite points of ``y`` (positive ones only with ``positive``); return how many were drawn.

    ``skipped`` (values given but not finite) is added to the label so a gap in a line is explained.
    """
    keep = np.isfinite(y)
    if positive:
        keep &= y > 0  # a log axis cannot show zero
    count = int(keep.sum())
    if skipped:
        label = f"{label} ({skipped} non-finite skipped)"
    if count == 0:
        return 0
    style.setdefault("linewidth", 1.6)
    if count <= _MARKER_LIMIT:
        style.setdefault("marker", "o")
        style.setdefault("markersize", 4 if count > 1 else 6)
    ax.plot(x[keep], y[keep], label=label, **style)
    return count


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _split_param(name: str) -> tuple[str, str]:
    """``"3.weight"`` -> ``("3", "weight")``; a name without a dot is its own layer."""
    layer, dot, kind = name.rpartition(".")
    return (layer, kind) if dot else (name, "")


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.45", fontsize=10)


def _epochs(records: Sequence[Mapping]) -> np.ndarray:
    epochs = []
    for index, record in enumerate(records):
        value = _as_float(record.get("epoch"))
        epochs.append(value if value is not None and math.isfinite(value) else float(index + 1))
    return np.array(epochs, dtype=np.float64)


def _format_percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _last_finite(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else None


def _summary(series: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """``final: train loss 0.1, acc 97.5%  |  val ...`` from each figure's (train, val) series."""
    parts = []
    for index, part in enumerate(("train", "val")):
        bits = []
        for name, pair in series.items():
            value = _last_finite(pair[index])
            if value is not None:
                bits.append(f"acc {_format_percent(value)}" if name == "accuracy" else f"{name} {value:.4g}")
        if bits:
            parts.append(f"{part} " + ", ".join(bits))
    return "final: " + "  |  ".join(parts) if parts else ""


def metric_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The metrics a history records besides the loss (``train_<name>`` / ``val_<name>`` keys), in the order of
    their first appearance: what a run's loss chose (accuracy; MAE and R² for MSE; ...)."""
    names: list[str] = []
    for record in records:
        for key in record:
            for prefix in ("train_", "val_"):
                name = key[len(prefix):] if isinstance(key, str) and key.startswith(prefix) else None
                if name and name != "loss" and name not in names:
                    names.append(name)
    return names


_METRIC_TITLES = {"mae": "Mean absolute error", "r2": "R² (coefficient of determination)"}


def _train_and_validation(ax, x: np.ndarray, records: Sequence[Mapping], name: str
                          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Draw ``train_<name>`` and ``val_<name>`` against the epoch: the two series and how many points were drawn."""
    train, train_bad = _series(records, f"train_{name}")
    val, val_bad = _series(records, f"val_{name}")
    drawn = _plot_line(ax, x, train, label="train", skipped=train_bad, color=_TRAIN_COLOR)
    drawn += _plot_line(ax, x, val, label="validation", skipped=val_bad, color=_VAL_COLOR)
    return train, val, drawn


def _draw_metric(ax, x, records, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A metric other than accuracy against the epoch, train and validation, on its own scale."""
    train, val, drawn = _train_and_validation(ax, x, records, name)
    ax.set_title(_METRIC_TITLES.get(name, name))
    ax.set_xlabel("epoch")
    ax.set_ylabel(name)
    if drawn:
        if name == "r2":  # early epochs can be far below 0: keep the part that tells fits apart in view
            low, high = ax.get_ylim()
            ax.set_ylim(max(low, -1.0), min(high, 1.02))
        ax.legend(loc="best", fontsize=9)
    else:
        _note(ax, f"no {name} recorded")
    return train, val


def _draw_loss(ax, x, records) -> tuple[np.ndarray, np.ndarray]:
    train, val, drawn = _train_and_validation(ax, x, records, "loss")
    if np.isfinite(val).sum() >= 2:
        best = int(np.nanargmin(np.where(np.isfinite(val), val, np.nan)))
        ax.plot([x[best]], [val[best]], linestyle="none", marker="*", markersize=13, color=_VAL_COLOR,
                markeredgecolor="black", markeredgewidth=0.6, zorder=3, label=f"lowest val loss (epoch {x[best]:g})")
    ax.set_title("Loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    finite = np.concatenate([train[np.isfinite(train)], val[np.isfinite(val)]])
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")  # losses that fall (or blow up) over decades
        ax.set_ylabel("loss (log scale)")
    if drawn:
        ax.legend(loc="best", fontsize=9)
    else:
        _note(ax, "no finite loss values")
    return train, val


def _draw_accuracy(ax, x, records) -> tuple[np.ndarray, np.ndarray]:
    from matplotlib.ticker import PercentFormatter  # lazy: optional library (matplotlib)

    train, val, drawn = _train_and_validation(ax, x, records, "accuracy")
    ax.set_title("Accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    if drawn:
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
        ax.legend(loc="best", fontsize=9)
    else:
        _note(ax, "no accuracy recorded")
    return train, val


def _draw_grad_norms(ax, x, records, colormap) -> None:
    names: set[str] = set()
    for record in records:
        norms = record.get("grad_norms")
        if isinstance(norms, Mapping):
            names.update(str(name) for name in norms)
    ax.set_title("Gradient norm per layer (log scale)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("gradient L2 norm")
    if not names:
        _note(ax, "no gradient norms recorded")
        return

    layers: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(names, key=_natural_key):
        layer, kind = _split_param(name)
        layers.setdefault(layer, []).append((name, kind))
    kinds = sorted({kind for params in layers.values() for _, kind in params},
                   key=lambda k: (k != "weight", k != "bias", k))
    styles = ["-", "--", ":", "-."]
    linestyle = {kind: styles[i % len(styles)] for i, kind in enumerate(kinds)}

    from matplotlib.lines import Line2D  # lazy: optional library (matplotlib)

    handles, drawn = [], 0
    for index, (layer, params) in enumerate(layers.items()):
        # input layers dark, output layers light: a colour gradient along the depth of the network
        color = colormap(0.85 * index / max(len(layers) - 1, 1))
        skipped_total = 0
        for name, kind in params:
            values = []
            for record in records:
                norms = record.get("grad_norms")
                value = _as_float(norms.get(name)) if isinstance(norms, Mapping) else None
                values.append(math.nan if value is None else value)
                if value is not None and not (math.isfinite(value) and value > 0):
                    skipped_total += 1
            y = np.array(values, dtype=np.float64)
            drawn += _plot_line(ax, x, y, label=name, positive=True, color=color,  # legend: per layer, below
                                linestyle=linestyle[kind], linewidth=1.4, markersize=3)
        label = f"layer {layer}" if layer.isdigit() else layer
        if skipped_total:
            label += f" ({skipped_total} zero/NaN/inf skipped)"
        handles.append(Line2D([], [], color=color, linewidth=2.5, label=label))
    if len(kinds) > 1:
        handles += [Line2D([], [], color="0.3", linestyle=linestyle[kind], label=kind or "(other)") for kind in kinds]
    if drawn:
        ax.set_yscale("log")
    else:
        _note(ax, "no finite, positive gradient norms")
    columns = 1 if len(handles) <= 12 else 2 if len(handles) <= 26 else 3
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
              fontsize=8 if len(handles) <= 12 else 7, ncols=columns, title="input \u2192 output", title_fontsize=8)


def _draw_lr(ax, x, records) -> None:
    lr, bad = _series(records, "lr")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    drawn = _plot_line(ax, x, lr, label="learning rate", skipped=bad, color="0.25", linewidth=1.2, markersize=3)
    if not drawn:
        _note(ax, "no learning rate recorded")
        return
    finite = lr[np.isfinite(lr)]
    if finite.min() > 0 and finite.max() / finite.min() > 10:
        ax.set_yscale("log")
    elif finite.min() == finite.max() and finite.min() > 0:
        ax.set_ylim(0, 2 * finite.max())  # a constant rate: a flat line in the middle, not a zoomed-in offset axis
    if bad:
        ax.legend(loc="best", fontsize=8)


def plot_learning_curves(history: Iterable[Mapping[str, Any]], path: str | os.PathLike, *,
                         title: str | None = None) -> Path:
    """Draw the loss, the run's metrics, per-layer gradient norms and the learning rate against the epoch;
    write a PNG.

    ``history`` holds one record per epoch, as the training loop writes them to
    ``history.jsonl``: ``epoch`` (1-based), ``train_loss``, optionally ``val_loss``,
    and ``train_<metric>`` / ``val_<metric>`` for each metric the run recorded
    (``accuracy`` in [0, 1], drawn as a percentage; ``mae`` and ``r2`` for a regression;
    floats or ``None``), ``lr``, ``grad_norms`` (parameter name such as ``"0.weight"`` ->
    norm) and ``time``. A history without metrics gets an accuracy panel saying none was recorded.
    Missing keys, ``None``, NaN and infinite values are
    skipped (and counted in the legend) rather than failing the plot. Returns
    the path written. Raises :class:`PlotUnavailable` without matplotlib.
    """
    if isinstance(history, Mapping):
        raise DataError("history must be a list of per-epoch dicts, got a single dict")
    records = list(history)
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"history entry {index} is a {type(record).__name__}, expected a dict of epoch values")

    heading = title or "Training history"
    if not records:  # training stopped before the first epoch ended: say so rather than draw empty axes
        fig = _new_figure((8.0, 3.0))
        fig.suptitle(heading, fontsize=12)
        fig.text(0.5, 0.45, "no epochs recorded", ha="center", va="center", color="0.45", fontsize=12)
        return _save(fig, path)

    names = metric_names(records) or ["accuracy"]
    fig = _new_figure((6.0 * max(2, len(names) + 1), 9.0))
    # lazy: optional library (matplotlib, checked by _new_figure)
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    grid = fig.add_gridspec(3, len(names) + 1, height_ratios=[3.0, 3.0, 1.3])
    ax_loss = fig.add_subplot(grid[0, 0])
    ax_metrics = [fig.add_subplot(grid[0, i + 1], sharex=ax_loss) for i in range(len(names))]
    ax_grad = fig.add_subplot(grid[1, :], sharex=ax_loss)
    ax_lr = fig.add_subplot(grid[2, :], sharex=ax_loss)

    x = _epochs(records)
    series = {"loss": _draw_loss(ax_loss, x, records)}
    for ax, name in zip(ax_metrics, names):
        series[name] = (_draw_accuracy(ax, x, records) if name == "accuracy" else _draw_metric(ax, x, records, name))
    _draw_grad_norms(ax_grad, x, records, colormaps["viridis"])
    _draw_lr(ax_lr, x, records)
    for ax in (ax_loss, *ax_metrics, ax_grad, ax_lr):
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if float(np.ptp(x)) < 2:  # one or two epochs: whole-epoch ticks with room on both sides
        ax_loss.set_xlim(float(x.min()) - 1, float(x.max()) + 1)

    heading += f"  ({len(records)} epoch{'s' if len(records) != 1 else ''})"
    summary = _summary(series)
    if summary:
        heading += "\n" + summary
    fig.suptitle(heading, fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# confusion matrix


def confusion_matrix(y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Count (true class, predicted class) pairs: a ``(num_classes, num_classes)`` int64 array.

    ``y_true`` and ``y_pred`` are host arrays (or sequences) of class indices of
    the same shape; rows of the result are true classes, columns predicted ones.
    Pass predicted indices, not scores: ``scores.argmax(axis=1)``.
    """
    num_classes = check.positive_int(num_classes, "num_classes")
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ShapeError(f"y_true and y_pred must have the same shape, got {y_true.shape} and {y_pred.shape}")
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.dtype.kind not in "iub" and labels.size:
            raise DTypeError(f"{name} must hold integer class indices, got dtype {labels.dtype}"
                             + (" (pass scores.argmax(axis=1))" if labels.dtype.kind == "f" else ""))
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{name} holds class indices outside [0, {num_classes}): "
                            f"min {labels.min()}, max {labels.max()}")
    flat = y_true.reshape(-1).astype(np.int64) * num_classes + y_pred.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.astype(np.int64, copy=False).reshape(num_classes, num_classes)


def _compact(count: int) -> str:
    if count < 10_000:
        return str(count)
    if count < 1_000_000:
        return f"{count / 1000:.0f}k" if count >= 100_000 else f"{count / 1000:.1f}k"
    return f"{count / 1_000_000:.1f}M"


def plot_confusion_matrix(matrix: np.ndarray, path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                          title: str | None = None, normalize: bool = True) -> Path:
    """Draw a confusion matrix (rows true classes, columns predicted) as a PNG; return the path written.

    Cells are annotated with their counts up to 20 classes; with ``normalize``
    the colour is the cell's share of its true class (row), else the raw count.
    The title gives the overall accuracy. Raises :class:`PlotUnavailable`
    without matplotlib.
    """
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ShapeError(f"a confusion matrix must be a non-empty square (C, C) array, got shape {counts.shape}")
    if counts.dtype.kind not in "iu":
        if counts.dtype.kind != "f" or not np.all(np.isfinite(counts)) or np.any(counts != np.round(counts)):
            raise DTypeError(f"a confusion matrix must hold integer counts, got dtype {counts.dtype}")
    if np.any(counts < 0):
        raise DataError("a confusion matrix must hold counts >= 0, found negative entries")
    counts = counts.astype(np.int64)
    size = counts.shape[0]
    if class_names is None:
        names = [str(i) for i in range(size)]
    else:
        names = [str(name) for name in class_names]
        if len(names) != size:
            raise ShapeError(f"class_names has {len(names)} names for a {size}x{size} confusion matrix")

    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals > 0)
    total = int(counts.sum())
    colours = shares if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(counts.max()), 1.0)

    side = min(max(4.0 + 0.35 * size, 6.0), 13.0)
    fig = _new_figure((side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(colours, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("share of the true class (row)" if normalize else "count")
    if normalize:
        from matplotlib.ticker import PercentFormatter  # lazy: optional library (matplotlib)

        colorbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))

    step = max(1, math.ceil(size / 40))  # beyond 40 classes label every step-th class
    ticks = np.arange(0, size, step)
    ax.set_xticks(ticks, [names[i] for i in ticks])
    ax.set_yticks(ticks, [names[i] for i in ticks])
    longest = max(len(name) for name in names)
    if longest > 3 or (size > 12 and longest > 2):
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")

    if size <= _ANNOTATE_LIMIT:
        fontsize = 10 if size <= 10 else 8
        with_share = normalize and size <= 10  # room for the row share under the count
        for row in range(size):
            for col in range(size):
                count = int(counts[row, col])
                dark = colours[row, col] / vmax > 0.55
                colour = "white" if dark else ("0.6" if count == 0 else "black")
                text = _compact(count) if size > 10 else str(count)
                if with_share and count:
                    text += f"\n{_format_percent(shares[row, col])}"
                ax.text(col, row, text, ha="center", va="center", fontsize=fontsize if not with_share else 9,
                        color=colour, linespacing=1.3)

    heading = title or "Confusion matrix"
    if total:
        accuracy = float(np.trace(counts)) / total
        heading += f"\naccuracy {_format_percent(accuracy)} ({int(np.trace(counts)):,}/{total:,})"
    else:
        heading += "\nno samples"
    ax.set_title(heading)
    return _save(fig, path)
