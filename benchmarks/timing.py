"""Interleaved timing: A B C A B C ..., warm-up first, median of the timed rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], None]], *, repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run each contender ``warmup + repeats`` times in turn; each call must finish its work (synchronize)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_index in range(warmup + repeats):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return {name: {"median": statistics.median(values), "min": min(values), "runs": values}
            for name, values in times.items()}
