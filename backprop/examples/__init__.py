"""Worked examples, run as ``backprop example NAME [options]``.

Each example is a module with ``main(argv) -> int`` (its own argparse options, ``--help`` included).
"""

from __future__ import annotations

import importlib

from ..errors import ConfigError

#: name -> (module, one-line description)
EXAMPLES = {
    "cnn-digits": ("backprop.examples.cnn_digits", "a small CNN on the 8x8 digits (or MNIST with --dataset mnist)"),
    "char-lm": ("backprop.examples.char_lm", "a character-level LSTM/GRU language model that then writes text"),
    "adding": ("backprop.examples.adding_problem",
               "the adding problem: LSTM/GRU learn a long dependency, a plain RNN's gradients vanish"),
    "fixed-point": ("backprop.examples.fixed_point",
                    "recurrent (fixed-point, Almeida-Pineda) backpropagation on the digits"),
}


def run_example(name: str, argv: list[str]) -> int:
    try:
        module_name, _ = EXAMPLES[name]
    except KeyError:
        raise ConfigError(f"unknown example {name!r}; expected one of {', '.join(EXAMPLES)}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(f"example {name!r} is not available in this version") from None
        raise
    return module.main(argv)
