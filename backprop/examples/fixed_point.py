"""Recurrent (fixed-point) backpropagation on the 8x8 digits: ``backprop example fixed-point``.

The model is ``[FixedPointRecurrent(64 -> hidden), Dense(hidden -> 10)]``: each image drives a recurrent
network that settles into a fixed point h* = tanh(h* W + x U + b); a Dense layer reads the class scores off
h*. The gradient comes from the Almeida-Pineda adjoint iteration, not from storing the iterates. The
recurrent weight is kept at ||W||₂ <= 0.9 (``--max-norm``), so the map stays a contraction while it trains;
without the limit the weights grow past 1 and some iterations slow down or fail to converge. After each
epoch the example prints how many iterations the forward and the backward fixed points took on average, and
the contraction bound Lip(f)·||W||₂ (below 1: the map is a contraction for every input; above 1 it usually
still converges, because saturated tanh units have small slopes) and the observed contraction factor per
iteration of the last forward pass.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, cast

from backends import Backend, get_backend

from ..data import load_digits
from ..layers import Dense, FixedPointRecurrent, Sequential
from ..losses import CrossEntropy
from ..training import Callback, Trainer, evaluate
from .options import check_at_least, check_positive_number, example_parser


class FixedPointMonitor(Callback):
    """Prints the fixed-point layer's average iteration counts each epoch, then starts counting afresh."""

    def __init__(self, layer: FixedPointRecurrent, log: Callable[[str], Any] = print):
        self.layer, self.log = layer, log
        self.epochs: list[dict] = []

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        stats = self.layer.stats
        summary = {
            "forward": stats["forward_iterations"] / max(1, stats["forward_calls"]),
            "backward": stats["backward_iterations"] / max(1, stats["backward_calls"]),
            "failures": stats["forward_failures"] + stats["backward_failures"],
            "bound": self.layer.contraction_bound(),
            "rate": self.layer.last_forward_rate,
        }
        self.epochs.append(summary)
        rate = "n/a" if summary["rate"] is None else f"{summary['rate']:.3f}"
        self.log(f"    fixed point: {summary['forward']:.1f} forward / {summary['backward']:.1f} backward iterations "
                 f"on average, {summary['failures']} not converged; contraction bound {summary['bound']:.3f}, "
                 f"observed rate {rate}")
        self.layer.reset_stats()


def build_parser() -> argparse.ArgumentParser:
    parser = example_parser(
        "fixed-point", "Train [FixedPointRecurrent(64 -> hidden), Dense(hidden -> 10)] on the packaged 8x8 digits "
                       "with recurrent (Almeida-Pineda) backpropagation.", epochs=15, batch_size=32, lr=0.005,
        hidden=64)
    parser.add_argument("--tolerance", type=float, default=1e-5, help="fixed-point tolerance (max |Δh|)")
    parser.add_argument("--max-iterations", type=int, default=200)
    parser.add_argument("--max-norm", type=float, default=0.9,
                        help="keep ||W||₂ of the recurrent weight at most this (a contraction for tanh when < 1); "
                             "0: no limit (the weights then grow and the iteration may slow down or fail)")
    return parser


def build_model(num_features: int, num_classes: int, *, hidden: int = 64, tolerance: float = 1e-5,
                max_iterations: int = 200, max_norm: float | None = 0.9, seed: int = 0,
                backend: Backend | str | None = None) -> Sequential:
    """``[FixedPointRecurrent(num_features -> hidden), Dense(hidden -> num_classes)]``."""
    recurrent = FixedPointRecurrent(num_features, hidden, tolerance=tolerance, max_iterations=max_iterations,
                                    max_recurrent_norm=max_norm or None, rng=seed, backend=backend)
    return Sequential([recurrent, Dense(hidden, num_classes, rng=seed + 1, backend=backend)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_at_least(args, {"epochs": 1, "batch_size": 1, "hidden": 1, "max_iterations": 1})
    check_positive_number(args, "lr")
    backend = get_backend(args.backend)
    data = load_digits()
    model = build_model(data.x_train.shape[1], data.num_classes, hidden=args.hidden, tolerance=args.tolerance,
                        max_iterations=args.max_iterations, max_norm=args.max_norm, seed=args.seed, backend=backend)
    recurrent = cast(FixedPointRecurrent, model.layers[0])
    print(f"model: {recurrent!r} -> Dense({args.hidden}, {data.num_classes}) on {backend.name}; "
          f"{model.num_parameters()} parameters; contraction bound at start {recurrent.contraction_bound():.3f}")
    monitor = FixedPointMonitor(recurrent)
    trainer = Trainer(model, loss=CrossEntropy(), optimizer="adam", lr=args.lr, epochs=args.epochs,
                      batch_size=args.batch_size, seed=args.seed, callbacks=[monitor], progress=False)
    started = time.perf_counter()
    recurrent.reset_stats()
    trainer.fit(data.x_train, data.y_train)
    seconds = time.perf_counter() - started

    recurrent.reset_stats()
    x_test = backend.from_host(data.x_test, dtype=model.dtype)
    y_test = backend.from_host(data.y_test)
    figures = evaluate(model, x_test, y_test, CrossEntropy())
    test_loss, test_accuracy = figures["loss"], figures["accuracy"]
    forward = sum(e["forward"] for e in monitor.epochs) / len(monitor.epochs)
    backward = sum(e["backward"] for e in monitor.epochs) / len(monitor.epochs)
    failures = sum(e["failures"] for e in monitor.epochs)
    print(f"trained {args.epochs} epochs in {seconds:.1f}s")
    print(f"average iterations per batch: forward {forward:.1f}, backward {backward:.1f} "
          f"({failures} passes did not converge)")
    print(f"test: loss {test_loss:.4f}  accuracy {100 * test_accuracy:.2f}% "
          f"(test forward: {recurrent.last_forward_iterations} iterations, "
          f"{'converged' if recurrent.last_forward_converged else 'NOT converged'})")
    return 0


__all__ = ["FixedPointMonitor", "build_model", "build_parser", "main"]
