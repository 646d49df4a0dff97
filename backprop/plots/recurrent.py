"""A plot of vanishing gradients: ‖dL/dh_t‖ against the time step t, one line per recurrent cell type.

Drawn like the other plots (:mod:`backprop.plots.training`): a ``matplotlib.figure.Figure`` on the Agg
canvas, written atomically as a PNG; :class:`~backprop.plots.training.PlotUnavailable` without matplotlib.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .training import _new_figure, _note, _save

__all__ = ["plot_grad_norms_through_time"]

_COLORS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green"}


def _curve(label: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"gradient norms of {label!r} must be a sequence of numbers") from None
    if array.size == 0:
        raise DataError(f"gradient norms of {label!r} are empty")
    return array


def plot_grad_norms_through_time(trained: Mapping[str, Sequence[float]], path: str | os.PathLike, *,
                                 initial: Mapping[str, Sequence[float]] | None = None,
                                 title: str | None = None) -> Path:
    """Draw ‖dL/dh_t‖ against t (log scale) for each cell type; write a PNG and return its path.

    ``trained`` maps a label (``"rnn"``, ``"lstm"``, ``"gru"``, or anything) to the norms at steps
    1..T after training; ``initial`` optionally gives the same at initialization (drawn dashed). Zero,
    negative and non-finite values cannot sit on a log axis and are left out.
    """
    curves = {str(label): _curve(str(label), values) for label, values in trained.items()}
    starts = {str(label): _curve(str(label), values) for label, values in (initial or {}).items()}
    fig = _new_figure((8.5, 5.0))
    ax = fig.add_subplot()
    palette = iter(["tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:olive"])
    colors = {label: _COLORS.get(label.lower()) or next(palette, "black") for label in {*curves, *starts}}
    drawn = 0
    for label, values, style, suffix in ([(k, v, "-", "trained") for k, v in curves.items()]
                                         + [(k, v, "--", "at initialization") for k, v in starts.items()]):
        steps = np.arange(1, values.size + 1)
        keep = np.isfinite(values) & (values > 0)
        if not keep.any():
            continue
        ax.plot(steps[keep], values[keep], linestyle=style, linewidth=1.8 if style == "-" else 1.2,
                color=colors[label], label=f"{label} ({suffix})")
        drawn += 1
    ax.set_xlabel("time step t (the loss is computed after the last step)")
    ax.set_ylabel("‖dL/dh_t‖ (log scale)")
    ax.grid(True, which="major", alpha=0.3)
    if drawn:
        ax.set_yscale("log")
        ax.legend(loc="best", fontsize=9)
        low, high = ax.get_ylim()
        if high / low > 10:
            ax.text(0.02, 0.03, f"backward runs right to left; the axis spans {math.log10(high / low):.0f} "
                                f"orders of magnitude", transform=ax.transAxes, fontsize=8, color="0.35")
    else:
        _note(ax, "no finite, positive gradient norms")
    ax.set_title(title or "Gradient reaching each time step")
    return _save(fig, path)
