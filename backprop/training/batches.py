"""Batch sizes: stochastic (1), mini-batch (n) and full-batch (all examples) gradient descent."""

from __future__ import annotations

from ..errors import ConfigError


def parse_batch_size(value) -> int | None:
    """``1`` (stochastic), ``n`` (mini-batch), ``None``/``"full"`` (full batch: one update per epoch)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "full"):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"batch size must be a positive integer or 'full', got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"batch size must be a positive integer or 'full', got {value!r}")
    return value


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
