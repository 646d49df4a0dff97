"""Datasets by name: the specs ``--dataset`` accepts, ``load_dataset``, the packaged digits, the files a
model records, and the feature rows ``backprop predict`` reads."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .. import validators as check
from ..errors import ConfigError, DataError
from . import sequences
from .csv_files import is_header, load_csv, read_csv_rows
from .dataset import Dataset, features_2d, reads_as_number
from .idx_files import load_fashion_mnist, load_mnist
from .npz_files import load_npz
from .scaling import (
    SCALINGS,
    TARGET_SCALINGS,
    apply_scaler,
    compose_scalers,
    fit_scaler,
    fit_target_scaler,
    scale_in_place,
)


def load_digits() -> Dataset:
    """The 8x8 handwritten digits shipped with the package: 1437 train / 360 test, pixels scaled to [0, 1].

    The train/test split is stored in the file, so it is the same on every
    machine and NumPy version.
    """
    resource = importlib.resources.files("backprop.data").joinpath("digits.npz")
    try:
        with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
            train, test = archive["train_index"].astype(np.intp), archive["test_index"].astype(np.intp)
    except FileNotFoundError:
        raise DataError("backprop/data/digits.npz is missing: backprop was installed without its package data; "
                        "reinstall it") from None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"backprop/data/digits.npz is damaged ({' '.join(str(exc).split())}); reinstall backprop") \
            from None
    pixel_scaler = {"kind": "fixed", "offset": 0.0, "scale": 16.0}
    x = apply_scaler(images.reshape(len(images), -1), pixel_scaler)
    y = labels.astype(np.int64)
    return Dataset("digits", x[train], y[train], x[test], y[test], num_classes=10, image_shape=(8, 8),
                   class_names=[str(d) for d in range(10)], scaler=pixel_scaler)


# ----------------------------------------------------------------------------------------------- by name

BUILTIN_DATASETS = ("digits", "mnist", "fashion-mnist", "adding-problem", "sonnets")


def dataset_file(spec: str | os.PathLike) -> Path | None:
    """The file a dataset spec names (a ``.npz`` or ``.csv`` path), or None for a built-in name."""
    text = str(spec)
    if text.lower().replace("_", "-") in BUILTIN_DATASETS or not text.lower().endswith((".npz", ".csv")):
        return None
    return Path(text)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return digest.hexdigest()


def check_recorded_dataset(spec: str | os.PathLike, recorded_sha256: str | None, source: str | os.PathLike, *,
                           kind: str = "model", purpose: str = "evaluate on it") -> None:
    """Refuse to read a dataset file that a model or checkpoint file names, unless it is the very file the model
    was trained on (``recorded_sha256``, written at training time, matches); built-in names are always fine.

    Without this a model file would be a way to make ``backprop evaluate`` (or ``train --resume``) open any file
    on the machine, and a run resumed from another directory could silently train on another file of the same
    name. A file the user names (``--dataset``) needs no check.
    """
    path = dataset_file(spec)
    if path is None:
        return
    advice = f"pass --dataset {path} to {purpose} anyway"
    if not isinstance(recorded_sha256, str):
        raise ConfigError(f"{source}: the {kind} names the dataset file {path} but records no SHA-256 of it, so "
                          f"it cannot be checked to be the file the model was trained on; {advice}")
    if not path.is_file():
        raise ConfigError(f"{source}: the model was trained on {path}, which is not there now; pass --dataset FILE")
    if file_sha256(path) != recorded_sha256:
        raise ConfigError(f"{source}: {path} is not the file the model was trained on (its SHA-256 differs from "
                          f"the one recorded at training); {advice}")


def check_dataset_options(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                          scaling: str | None = None, task: str = "classification",
                          target_scaling: str | None = None) -> str:
    """What kind of dataset ``spec`` names (``digits``, ``mnist``, ``fashion-mnist``, ``npz`` or ``csv``), with
    ``data_dir``, ``scaling``, ``task`` and ``target_scaling`` checked against it: a ConfigError before anything
    is read or downloaded."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; expected {' or '.join(TASKS)}")
    if target_scaling is not None and target_scaling not in TARGET_SCALINGS:
        raise ConfigError(f"unknown target scaling {target_scaling!r}; expected one of {', '.join(TARGET_SCALINGS)}")
    if target_scaling not in (None, "none") and task != "regression":
        raise ConfigError(f"--target-scaling {target_scaling} scales the numeric targets of --task regression; a "
                          f"{task} has class labels (leave it out)")
    if scaling is not None and scaling not in SCALINGS:
        raise ConfigError(f"unknown scaling {scaling!r}; expected one of {', '.join(SCALINGS)}")
    text = str(spec)
    name = text.lower().replace("_", "-")
    if name in BUILTIN_DATASETS:
        kind = name
    elif name.endswith((".npz", ".csv")):
        kind = name[-3:]
    else:
        raise ConfigError(f"unknown dataset {text!r}; expected one of {', '.join(BUILTIN_DATASETS)}, "
                          f"or a path to a .npz or .csv file")
    if task == "regression" and kind not in ("npz", "csv"):
        raise ConfigError(f"--task regression reads the target column of a .csv or .npz file; {text} is a built-in "
                          f"dataset of its own kind (leave out --task)")
    if data_dir is not None and kind not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"a data directory ({data_dir}) is read for mnist and fashion-mnist only, not for {text}")
    return kind


#: What ``--task`` accepts: a class per example, or numeric targets.
TASKS = ("classification", "regression")


def load_dataset(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None, scaling: str | None = None,
                 seed: int = 0, download: bool = True, *, label_column: int | str = -1, test_fraction: float = 0.2,
                 task: str = "classification", target_scaling: str | None = None) -> Dataset:
    """Load a dataset by name (``digits``, ``mnist``, ``fashion-mnist``) or from a ``.npz`` / ``.csv`` path.

    ``scaling`` (``none``, ``standardize``, ``minmax``) is fitted on the
    training part only and applied to both parts, so no test statistics leak
    into training. The default is ``none`` for the image sets (already in
    [0, 1]) and ``standardize`` for user files. The returned ``scaler`` maps
    raw source values to the network's inputs, including the fixed pixel
    scaling of the image sets. ``data_dir`` and ``download`` apply to MNIST and
    Fashion-MNIST; ``seed``, ``label_column`` and ``test_fraction`` to user
    files that have no test part of their own. ``task="regression"`` reads a user file's label column (or
    ``y``) as numeric targets, float32 ``(samples, outputs)``, scaled by ``target_scaling`` (``standardize``,
    the default for a regression: mean 0 and standard deviation 1 per output, fitted on the training part like
    the features; ``none``: as read). The fitted map is ``target_scaler`` (None when the targets are as read);
    ``scaling.unscale`` maps a model's predictions back to the target's units.
    """
    kind = check_dataset_options(spec, data_dir, scaling, task, target_scaling)
    seed = check.non_negative_int(seed, "the seed")
    text = str(spec)
    if kind == "digits":
        dataset = load_digits()
    elif kind == "mnist":
        dataset = load_mnist(data_dir, download)
    elif kind == "fashion-mnist":
        dataset = load_fashion_mnist(data_dir, download)
    elif kind in ("adding-problem", "sonnets"):
        dataset = (sequences.load_adding_problem if kind == "adding-problem" else sequences.load_sonnets)(seed)
    elif kind == "npz":
        dataset = load_npz(text, test_fraction=test_fraction, seed=seed, task=task)
    else:
        dataset = load_csv(text, label_column=label_column, test_fraction=test_fraction, seed=seed, task=task)
    if scaling is None:
        scaling = "none" if kind in BUILTIN_DATASETS else "standardize"
    fitted = fit_scaler(dataset.x_train, scaling)
    if fitted["kind"] != "none":  # in place: the loaders' arrays are our own, and a copy would double the memory
        dataset.x_train = scale_in_place(dataset.x_train, fitted)
        dataset.x_test = scale_in_place(dataset.x_test, fitted)
        dataset.scaler = compose_scalers(dataset.scaler or {"kind": "none"}, fitted)
    if task == "regression":
        target_scaler = fit_target_scaler(dataset.y_train, target_scaling or "standardize")
        if target_scaler["kind"] != "none":
            dataset.y_train = scale_in_place(dataset.y_train, target_scaler)
            dataset.y_test = scale_in_place(dataset.y_test, target_scaler)
            dataset.target_scaler = target_scaler
    return dataset


# ----------------------------------------------------------------------------------------------------------
# Inputs for prediction
# ----------------------------------------------------------------------------------------------------------

def load_features(path: str | os.PathLike, delimiter: str = ",") -> np.ndarray:
    """Feature rows (no labels) for ``backprop predict``: a ``.npy`` array, a ``.npz`` with an array ``x``
    (or a single array), or a ``.csv`` of numbers with an optional header row (a first row of mostly
    non-numbers; a first row of mostly numbers is data, and a cell in it that is not a number an error naming
    it). Returns float32 (n, features); images of rank 3 or more are flattened."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if "x" in names:
                    x = archive["x"]
                elif len(names) == 1:
                    x = archive[names[0]]
                else:
                    raise DataError(f"{path}: expected an array named 'x' (or a single array), found "
                                    f"{', '.join(names) or 'none'}")
        elif suffix == ".csv":
            rows, lines = read_csv_rows(path, delimiter)
            header = rows[0] if is_header(rows[0]) else None
            if header is not None:
                rows, lines = rows[1:], lines[1:]
            if not rows:
                raise DataError(f"{path}: no data rows")
            width = len(rows[0])
            for row, line in zip(rows, lines):
                if len(row) != width:
                    raise DataError(f"{path}: line {line} has {len(row)} values, expected {width}")
                bad = next((i for i, cell in enumerate(row) if not reads_as_number(cell)), None)
                if bad is not None:
                    name = f" ({header[bad]})" if header is not None and bad < len(header) else ""
                    raise DataError(f"{path}: line {line}, column {bad + 1}{name}: {row[bad]!r} is not a number")
            x = np.array([[float(cell) for cell in row] for row in rows], dtype=np.float32)
        else:
            raise DataError(f"{path}: expected a .npy, .npz or .csv file of feature rows")
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    if x.ndim == 1:
        x = x[None, :]
    flat, _ = features_2d(np.asarray(x), str(path))
    return flat
