"""The command-line options the worked examples share, in one parser.

``example_parser`` gives every example the same ``--epochs``, ``--batch-size``, ``--lr``, ``--seed`` and
``--backend`` (with the example's own defaults), and on request ``--hidden``, ``--clip-norm``,
``--bptt-steps``, ``--blas-threads``, ``--quiet`` and ``--no-progress``; an example adds only the options that
are its alone. Errors are one line (``error: ...``, status 2), as everywhere in the CLI, and
``check_at_least`` turns an out-of-range number into a ``ConfigError`` naming the option.
"""

from __future__ import annotations

import argparse

from ..cli import _Parser
from ..errors import ConfigError

#: Passed for an option an example does not take.
ABSENT = object()


def example_parser(name: str, description: str, *, epochs: int, batch_size: int, lr: float,
                   hidden: int | object = ABSENT, clip_norm: float | object = ABSENT, bptt_steps: bool = False,
                   blas_threads: bool = False, quiet: bool = False,
                   no_progress: bool = False, show_defaults: bool = True) -> argparse.ArgumentParser:
    """The parser of ``backprop example NAME``, with the shared options and the example's defaults."""
    parser = _Parser(prog=f"backprop example {name}", description=description,
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter if show_defaults
                     else argparse.HelpFormatter)
    parser.add_argument("--epochs", type=int, default=epochs, help="passes over the training set")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="examples per update")
    parser.add_argument("--lr", type=float, default=lr, help="Adam learning rate")
    if hidden is not ABSENT:
        parser.add_argument("--hidden", type=int, default=hidden, help="hidden units")
    if clip_norm is not ABSENT:
        parser.add_argument("--clip-norm", type=float, default=clip_norm, help="clip gradients to this global norm")
    if bptt_steps:
        parser.add_argument("--bptt-steps", type=int, default=None, help="truncate backpropagation through time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the shuffling")
    parser.add_argument("--backend", default=None, help="array backend, such as numpy or torch:cuda:0 "
                                                        "(default: the current one)")
    if blas_threads:
        parser.add_argument("--blas-threads", type=int, default=1,
                            help="CPU threads of the backend's library while training (Backend.limit_threads; small "
                                 "per-step products run fastest on one; 0: the library's default)")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    if no_progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_at_least(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """A ``ConfigError`` for the first option below its minimum: ``--epochs must be a positive integer, got
    0`` (minimum 1), ``--length must be at least 2, got 1``, ``--blas-threads must be at least 0, ...``."""
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            flag = "--" + name.replace("_", "-")
            rule = "a positive integer" if minimum == 1 else f"at least {minimum}"
            raise ConfigError(f"{flag} must be {rule}, got {value}")


def check_positive_number(args: argparse.Namespace, *names: str) -> None:
    """A ``ConfigError`` for the first of ``names`` that is not a positive number (``--lr``, say)."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {value}")


__all__ = ["ABSENT", "check_at_least", "check_positive_number", "example_parser"]
