"""Datasets from NumPy ``.npz`` files."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import Dataset, dataset_from_arrays, encode_labels, excerpt, features_2d, regression_targets


def load_npz(path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0, *,
             task: str = "classification") -> Dataset:
    """A dataset from a NumPy ``.npz`` file, features unscaled.

    ``task="regression"``: ``y`` holds numeric targets, (samples,) or (samples, outputs), kept as float32
    ``(samples, outputs)``.

    The file holds ``x_train, y_train`` and optionally ``x_test, y_test``; or
    ``x, y``, from which a stratified ``test_fraction`` is held out with
    ``seed``. Features of rank >= 3 are images and are flattened. Labels may be
    non-negative integers or strings (class names, numbered in sorted order).
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if isinstance(archive, np.lib.npyio.NpzFile):
            with archive:
                arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: unreadable .npz file ({excerpt(exc, 60) if str(exc) else type(exc).__name__})") \
            from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive (a single .npy array?)")
    if {"x_train", "y_train"} <= arrays.keys():
        keys = ["x_train", "y_train"] + (["x_test", "y_test"] if "x_test" in arrays or "y_test" in arrays else [])
    elif {"x", "y"} <= arrays.keys():
        keys = ["x", "y"]
    else:
        raise DataError(f"{path}: expected arrays x_train and y_train (optionally x_test and y_test), or x and y; "
                        f"found {excerpt(', '.join(sorted(arrays)), 60) if arrays else 'none'}")
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise DataError(f"{path}: has {'x_test' if 'x_test' in arrays else 'y_test'} but not {missing[0]}")
    features = [features_2d(arrays[key], f"{path} ({key})") for key in keys[0::2]]
    if len(features) == 2 and (features[0][1] != features[1][1] or features[0][0].shape[1] != features[1][0].shape[1]):
        raise DataError(f"{path}: x_train samples have shape {arrays['x_train'].shape[1:]}, "
                        f"x_test samples {arrays['x_test'].shape[1:]}")
    raw_labels = [arrays[key] for key in keys[1::2]]
    if task == "regression":
        targets = [regression_targets(labels, None, f"{path} ({key})") for labels, key in zip(raw_labels, keys[1::2])]
        if len(targets) == 2 and targets[0].shape[1] != targets[1].shape[1]:
            raise DataError(f"{path}: y_train has {targets[0].shape[1]} targets per sample, y_test "
                            f"{targets[1].shape[1]}")
        return dataset_from_arrays(path.stem, path, features[0][0], targets[0],
                                   features[1][0] if len(features) == 2 else None,
                                   targets[1] if len(targets) == 2 else None, test_fraction, seed,
                                   image_shape=features[0][1])
    if any(labels.ndim != 1 for labels in raw_labels):
        bad = next(key for key in keys[1::2] if arrays[key].ndim != 1)
        raise DataError(f"{path} ({bad}): labels must be a 1-D array (samples,), got shape {arrays[bad].shape}")
    # Encode train and test labels together so a class name gets the same number in both.
    labels, class_names = encode_labels(np.concatenate(raw_labels), f"{path} ({'/'.join(keys[1::2])})")
    y = labels[: len(raw_labels[0])]
    y_test = labels[len(raw_labels[0]):] if len(raw_labels) == 2 else None
    x_test = features[1][0] if len(features) == 2 else None
    return dataset_from_arrays(path.stem, path, features[0][0], y, x_test, y_test, test_fraction, seed, class_names,
                        image_shape=features[0][1])
