"""Batch sizes: stochastic (1), mini-batch (n) and full-batch (all examples) gradient descent."""

from __future__ import annotations

from .. import validators as check
from ..errors import ConfigError


def parse_batch_size(value: object) -> int | None:
    """``1`` (stochastic), ``n`` (mini-batch), ``None``/``"full"`` (full batch: one update per epoch)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "full"):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"batch size must be a positive integer or 'full', got {value!r}") from None
    if not check.is_integer(value) or value <= 0:  # type: ignore[operator]  # an integer, checked first
        raise ConfigError(f"batch size must be a positive integer or 'full', got {value!r}")
    return int(value)  # type: ignore[call-overload]  # an integer, checked above


def batch_mode(batch_size: int | None) -> str:
    if batch_size is None:
        return "full batch"
    return "stochastic" if batch_size == 1 else f"mini-batch of {batch_size}"


def batch_bounds(n: int, batch_size: int | None, drop_last: bool = False) -> list[tuple[int, int]]:
    """(start, stop) of every batch in an epoch of ``n`` examples; the short last batch is kept unless
    ``drop_last`` (and always kept when it is the only one)."""
    size = n if batch_size is None else min(batch_size, n)
    bounds = [(start, min(start + size, n)) for start in range(0, n, size)]
    if drop_last and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < size:
        bounds.pop()
    return bounds


def parse_accumulate_steps(value: object) -> int:
    """Micro-batches per optimizer step (gradient accumulation): a positive integer."""
    return check.positive_int(value, "accumulate_steps (micro-batches per update)")


def update_bounds(n: int, batch_size: int | None, accumulate_steps: int = 1,
                  drop_last: bool = False) -> list[list[tuple[int, int]]]:
    """The micro-batches (start, stop) of every optimizer step in an epoch of ``n`` examples.

    With ``accumulate_steps`` = k, each step covers the examples one batch of ``k · batch_size`` would (laid
    out by ``batch_bounds``, so ``drop_last`` drops a short last *step*, as for that batch size), in
    micro-batches of ``batch_size`` (the last one of a step may be shorter). Full batch (``None``): one step over
    all examples, in k micro-batches of nearly equal size (at most n). k = 1 gives ``batch_bounds``' batches.
    """
    if batch_size is None:
        parts = min(accumulate_steps, n)
        return [[(n * i // parts, n * (i + 1) // parts) for i in range(parts)]]
    updates = []
    for start, stop in batch_bounds(n, batch_size * accumulate_steps, drop_last):
        updates.append([(lo, min(lo + batch_size, stop)) for lo in range(start, stop, batch_size)])
    return updates
