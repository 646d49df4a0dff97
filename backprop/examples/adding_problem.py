"""The adding problem: LSTM and GRU learn a long-range dependency; a plain RNN's gradients vanish.

Each input is a sequence of T (value, marker) pairs; two steps are marked, one in each half, and the target
is the sum of the two marked values. Predicting the mean, 1.0, gives a mean squared error of 1/6 ≈ 0.167; to
do better a network must carry the first marked value across up to T steps, and to learn that, the gradient
of the loss must reach back across those steps. Each cell type (a recurrent layer reading the sequence and a
``Dense`` head on its last state, trained with Adam and gradient clipping) is trained in turn, and after each
epoch ‖dL/dh_t‖, the gradient reaching the state at step t, is measured on a fixed batch and stored in the
training history (``record["grad_norms_through_time"]``, beside the per-parameter ``record["grad_norms"]``).

    backprop example adding [--length 50] [--epochs 10] [--cells rnn,lstm,gru] [--plot FILE] ...

At initialization every cell forgets: the gradient at step 1 is many orders of magnitude below the one at
step T. LSTM and GRU learn gates that keep their state (forget gate f ≈ 1, update gate z ≈ 1), and with it
the gradient flows back to the first steps and the task is solved; the plain RNN, whose backward pass
multiplies by W_hhᵀ·diag(tanh') at every step, keeps a vanishing gradient and stays near the baseline.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import cast

from backends import Backend, get_backend

from ..data.sequences import adding_problem
from ..errors import ConfigError
from ..layers import GRU, LSTM, RNN, Dense, Sequential
from ..layers.recurrent import Recurrent
from ..losses import MSE
from ..plots.recurrent import plot_grad_norms_through_time
from ..plots.training import PlotUnavailable
from ..training import Callback, Trainer, fit
from .options import check_at_least, example_parser

CELLS = ("rnn", "lstm", "gru")
BASELINE_PREDICTION = 1.0


def build_parser() -> argparse.ArgumentParser:
    parser = example_parser("adding", __doc__.split("\n\n")[0], epochs=10, batch_size=64, lr=0.01, hidden=32,
                            clip_norm=1.0, bptt_steps=True, blas_threads=True, quiet=True)
    parser.add_argument("--length", type=int, default=50, help="sequence length T")
    parser.add_argument("--train", type=int, default=8000, help="training sequences")
    parser.add_argument("--val", type=int, default=2000, help="validation sequences")
    parser.add_argument("--cells", default=",".join(CELLS), help="cell types to compare, comma-separated")
    parser.add_argument("--probe", type=int, default=256, help="validation sequences used to measure |dL/dh_t|")
    parser.add_argument("--plot", default="adding_gradients.png", help="PNG of |dL/dh_t| against t")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    return parser


def _parse_cells(text: str) -> list[str]:
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in cells if c not in CELLS]
    if not cells or bad:
        raise ConfigError(f"--cells: expected a comma-separated list of {', '.join(CELLS)}, got {text!r}")
    return cells


def _check_args(args: argparse.Namespace) -> None:
    check_at_least(args, {"length": 2, "train": 1, "val": 1, "hidden": 1, "epochs": 1, "batch_size": 1, "probe": 1,
                          "blas_threads": 0})


def make_model(cell: str, *, hidden: int, bptt_steps: int | None = None, seed: int = 0,
               backend: Backend | str | None = None) -> Sequential:
    """A recurrent layer (2 inputs: value and marker) and a Dense head on its last state."""
    cls: type[Recurrent]
    cls = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[cell]
    return Sequential([cls(2, hidden, return_sequences=False, bptt_steps=bptt_steps, rng=seed, backend=backend),
                       Dense(hidden, 1, rng=seed + 1, backend=backend)])


def _format_norm(value: float) -> str:
    return f"{value:.1e}" if math.isfinite(value) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cells = _parse_cells(args.cells)
    _check_args(args)
    backend = get_backend(args.backend)
    xp = backend.xp
    x_host, y_host = adding_problem(args.train + args.val, args.length, seed=args.seed)
    x_train, y_train = backend.from_host(x_host[:args.train]), backend.from_host(y_host[:args.train])
    x_val, y_val = backend.from_host(x_host[args.train:]), backend.from_host(y_host[args.train:])
    probe = min(args.probe, args.val)
    x_probe, y_probe = x_val[:probe, ...], y_val[:probe, ...]
    with backend.activate():  # array code of our own runs on the backend's device
        baseline = float(backend.to_host(xp.mean((y_val - BASELINE_PREDICTION) ** 2)))
    length = args.length
    print(f"adding problem: {args.train} training and {args.val} validation sequences of length {length}, "
          f"hidden {args.hidden}, {args.epochs} epochs, Adam lr {args.lr:g}, clip {args.clip_norm:g}, "
          f"on {backend.name}")
    print(f"baseline: always predicting {BASELINE_PREDICTION} gives validation MSE {baseline:.4f} "
          f"(in theory 1/6 = 0.1667)")

    class GradientThroughTime(Callback):
        """After each epoch, |dL/dh_t| for every t on the probe batch, into the history record."""

        def __init__(self, cell: str):
            self.cell, self.started = cell, time.perf_counter()
            self.initial: list[float] = []

        def measure(self, model: Sequential) -> list[float]:
            prediction, backprop = model.begin_update(x_probe, training=False)
            backprop(MSE().value_and_grad(prediction, y_probe)[1])
            model.zero_grad()  # only the norms through time were wanted: leave no gradients behind
            return [float(v) for v in backend.to_host(cast(Recurrent, model.layers[0]).grad_norms_through_time)]

        def on_train_begin(self, trainer: Trainer) -> None:
            self.initial = self.measure(trainer.model)

        def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
            norms = self.measure(trainer.model)
            record["grad_norms_through_time"] = norms
            record["grad_ratio_first_last"] = norms[0] / norms[-1] if norms[-1] > 0 else float("nan")
            if not args.quiet:
                print(f"  {self.cell:4s} epoch {record['epoch']:>{len(str(args.epochs))}}/{args.epochs}  "
                      f"train MSE {record['train_loss']:.4f}  val MSE {record['val_loss']:.4f}  "
                      f"|dL/dh_1|/|dL/dh_T| {_format_norm(record['grad_ratio_first_last'])}  "
                      f"({time.perf_counter() - self.started:.1f}s)", flush=True)

    results = {}
    with backend.limit_threads(args.blas_threads or None):  # 0: the library's default (no limit)
        for cell in cells:
            model = make_model(cell, hidden=args.hidden, bptt_steps=args.bptt_steps, seed=args.seed,
                               backend=backend)
            monitor = GradientThroughTime(cell)
            history = fit(model, x_train, y_train, validation_data=(x_val, y_val), loss="mse", optimizer="adam",
                          lr=args.lr, epochs=args.epochs, batch_size=args.batch_size, clip_norm=args.clip_norm,
                          seed=args.seed, callbacks=[monitor], progress=False, log=None)
            results[cell] = (history, monitor.initial, time.perf_counter() - monitor.started)

    print()
    print(f"validation MSE after {args.epochs} epochs (baseline {baseline:.4f}) and the gradient reaching step 1 "
          f"relative to step {length}:")
    header = (f"{'cell':5s} {'val MSE':>8s} {'/baseline':>10s} {'|dL/dh_1|/|dL/dh_T| init':>25s} "
              f"{'trained':>9s} {'weight_ih grad norm':>20s} {'time':>7s}")
    print(header)
    for cell, (history, initial, seconds) in results.items():
        last = history[-1]
        init_ratio = initial[0] / initial[-1] if initial[-1] > 0 else float("nan")
        print(f"{cell:5s} {last['val_loss']:8.4f} {last['val_loss'] / baseline:10.3f} {_format_norm(init_ratio):>25s} "
              f"{_format_norm(last['grad_ratio_first_last']):>9s} "
              f"{last['grad_norms'].get('0.weight_ih', float('nan')):20.3g} {seconds:6.1f}s")
    marks = sorted({0, length // 4, length // 2, (3 * length) // 4, length - 1})
    print()
    print("|dL/dh_t| after training, on the probe batch (the loss is computed after step T = "
          f"{length}):")
    print(f"{'cell':5s} " + " ".join(f"{'t=' + str(t + 1):>9s}" for t in marks))
    for cell, (history, _, _) in results.items():
        norms = history[-1]["grad_norms_through_time"]
        print(f"{cell:5s} " + " ".join(f"{_format_norm(norms[t]):>9s}" for t in marks))
    print()
    for cell, (history, _, _) in results.items():
        share = history[-1]["val_loss"] / baseline
        verdict = ("solved (beats the baseline by far)" if share < 0.1 else
                   "partly learned" if share < 0.7 else "no better than the baseline")
        print(f"{cell}: val MSE {history[-1]['val_loss']:.4f} = {share:.2f} x baseline: {verdict}")

    if not args.no_plot:
        try:
            path = plot_grad_norms_through_time(
                {cell: history[-1]["grad_norms_through_time"] for cell, (history, _, _) in results.items()},
                args.plot, initial={cell: initial for cell, (_, initial, _) in results.items()},
                title=f"Adding problem, T = {length}: gradient reaching each step")
            print(f"plot: {path}")
        except PlotUnavailable as exc:
            print(f"plot skipped: {exc}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
