"""The :class:`Dataset`: a train/test split of host NumPy arrays, and the checks every loader's arrays pass.

Every loader returns a :class:`Dataset` whose arrays are ready for a network:
features ``float32`` of shape ``(samples, features)`` (images flattened), labels
``int64`` of shape ``(samples,)`` in ``0 .. num_classes - 1``. Arrays reach a
device later, through ``backend.from_host``.

Bad files and bad data raise :class:`~backprop.errors.DataError` with one line
that names the file and what is wrong; bad options raise
:class:`~backprop.errors.ConfigError`. Low-level NumPy, gzip or zip errors are
never allowed to escape, because a traceback from inside ``np.frombuffer`` does
not tell a user which of their files is broken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import array_api_extra as xpx
import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .splitting import split_validation, stratified_holdout


@dataclass(repr=False)
class Dataset:
    """A classification dataset with a fixed train/test split, as host NumPy arrays.

    ``scaler`` describes the feature scaling already applied to ``x_train`` and
    ``x_test``, from raw source values (see :func:`apply_scaler`); ``target_scaler`` the scaling applied to
    regression targets (``y_train`` and ``y_test``; undone by ``unscale``), None when they are as read.
    ``image_shape`` is the shape of one example before it was flattened into a row: an image's (H, W) or
    (C, H, W), or a sequence's (steps, features).
    Labels are class numbers ``(samples,)``, or one per step ``(samples, steps)``; float32 targets
    ``(samples, num_classes)`` are regression targets (see ``_validate_targets``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, ...] | None = None
    class_names: list[str] = field(default_factory=list)
    scaler: dict | None = None
    target_scaler: dict | None = None
    #: the names of a regression's targets (a CSV header's target column); None: not named
    target_names: list[str] | None = None

    def __post_init__(self) -> None:
        # Every loader goes through here, so a Dataset that exists is one the training loop can trust.
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            validate_features(x, f"{self.name} ({part})")
            _validate_targets(y, self.num_classes, f"{self.name} ({part})")
            if x.dtype != np.float32 or y.dtype not in (np.int64, np.float32):
                raise DataError(f"{self.name} ({part}): expected float32 features and int64 labels (or float32 "
                                f"regression targets), got {x.dtype} and {y.dtype}")
            if len(x) != len(y):
                raise DataError(f"{self.name} ({part}): {len(x)} samples but {len(y)} labels")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise DataError(f"{self.name}: train samples have {self.x_train.shape[1]} features, "
                            f"test samples {self.x_test.shape[1]}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.num_features:
            raise DataError(f"{self.name}: image shape {self.image_shape} does not hold {self.num_features} features")
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise DataError(f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    def validation_split(self, fraction: float = 0.1, seed: int = 0
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Hold out a stratified part of the training set: ``(x_train, y_train, x_val, y_val)``.

        The test set is left alone; see :func:`split_validation`.
        """
        return split_validation(self.x_train, self.y_train, fraction, seed)

    def describe(self) -> str:
        """One line for logs: sizes, features, classes."""
        images = ""
        if self.image_shape and self.y_train.ndim == 1 and self.y_train.dtype == np.int64:
            images = f" ({'x'.join(map(str, self.image_shape))} images)"
        elif self.image_shape:
            images = f" (sequences of {self.image_shape[0]} steps x {math.prod(self.image_shape[1:])} features)"
        return (f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test samples, "
                f"{self.num_features} features{images}, " + (
                    f"{self.num_classes} classes" if self.y_train.dtype != np.float32 else
                    f"{self.num_classes} regression target{'s' if self.num_classes > 1 else ''}"))

    def __repr__(self) -> str:  # the dataclass default would print every array in full
        return f"Dataset({self.describe()})"


# ------------------------------------------------------------------------------------------------ validation


def excerpt(content: object, limit: int = 24) -> str:
    """File content quoted in an error message: at most ``limit`` characters, quoted, control characters
    escaped. Errors quote no more of a file than this, so a path named by someone else (a model file's
    dataset) cannot be used to print a file, and a file cannot flood or rewrite the terminal."""
    text = " ".join(str(content).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def validate_features(x: npt.ArrayLike, source: str) -> None:
    """Features must be a numeric 2-D array ``(samples, features)`` with at least one sample, all finite."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{source}: features must be a 2-D array (samples, features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{source}: features are empty, shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: features must be numbers, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not (np.isfinite(x.min()) and np.isfinite(x.max())):  # NaN propagates; no copy
        bad = ~np.isfinite(x)
        count = int(np.count_nonzero(bad))
        if count:
            row, col = np.argwhere(bad)[0]
            raise DataError(f"{source}: {count} non-finite feature value{'s' if count > 1 else ''} (NaN or inf), "
                            f"first at sample {row}, feature {col}")


def validate_labels(y: npt.ArrayLike, num_classes: int | None, source: str) -> None:
    """Labels must be a 1-D integer array with values in ``0 .. num_classes - 1`` (any value >= 0 if None)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be a 1-D array (samples,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.size == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise DataError(f"{source}: labels must be >= 0, found {low} at sample {int(np.argmin(y))}")
    if num_classes is not None and high >= num_classes:
        raise DataError(f"{source}: labels must be < {num_classes} (the number of classes), "
                        f"found {high} at sample {int(np.argmax(y))}")


def _validate_targets(y, num_classes: int, source: str) -> None:
    """What a Dataset may hold as targets: class labels ``(samples,)``, a class at every position of a sequence
    ``(samples, steps)`` (a language model's next characters), or float32 regression targets
    ``(samples, num_classes)`` (``num_classes`` then counts the outputs)."""
    y = np.asarray(y)
    if y.dtype == np.float32:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise DataError(f"{source}: regression targets must have shape (samples, {num_classes}), got {y.shape}")
        if y.size and not np.isfinite(y).all():
            raise DataError(f"{source}: non-finite regression targets (NaN or inf)")
    elif y.ndim == 2 and y.dtype.kind in "iu":
        validate_labels(y.reshape(-1), num_classes, f"{source} (labels at each step)")
    else:
        validate_labels(y, num_classes, source)


#: The most classes a dataset file may have. The output layer has a row of weights per class, so a label
#: column that holds something else (IDs, prices, a timestamp) would size a huge layer from its largest value:
#: a label of 2,000,000,000 asks for 2e9 outputs. Real classification sets stay far below this (ImageNet-21k
#: has about 21,800 classes), and 100,000 classes x 1,024 inputs is still a 400 MB float32 layer.
MAX_CLASSES = 100_000


def _number_text(value) -> str:
    """A label value for a message: 2,000,000,000 (also from a float that holds it), or 1e+30."""
    value = float(value)
    return f"{int(value):,}" if value.is_integer() and abs(value) < 1e18 else f"{value:g}"


def encode_labels(values: np.ndarray, source: str) -> tuple[np.ndarray, list[str] | None]:
    """Labels as int64, plus class names when they were strings (sorted unique values -> 0..C-1)."""
    if values.ndim != 1:
        raise DataError(f"{source}: labels must be a 1-D array (samples,), got shape {values.shape}")
    if values.dtype.kind in "US":
        names = np.char.strip(values.astype(str))
        if np.any(names == ""):
            raise DataError(f"{source}: empty label at sample {int(np.argmax(names == ''))}")
        classes, codes = np.unique(names, return_inverse=True)
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{source}: {len(classes):,} different class names, more than the {MAX_CLASSES:,} "
                            f"classes a dataset may have; is this column really the class of each sample?")
        return codes.astype(np.int64), [str(c) for c in classes]
    if values.dtype.kind == "b":
        return values.astype(np.int64), None
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if np.any(bad):
            index = int(np.argmax(bad))
            raise DataError(f"{source}: labels must be integers, found {values[index]} at sample {index} (for a "
                            f"numeric target, use --task regression)")
    elif values.dtype.kind not in "iu":
        raise DataError(f"{source}: labels must be integers or class names, got dtype {values.dtype}")
    if values.size and values.max() >= MAX_CLASSES:  # before the int64 cast, which would wrap a float of 1e30
        index = int(np.argmax(values))
        raise DataError(f"{source}: labels are class numbers 0, 1, 2, ... and may be at most {MAX_CLASSES - 1:,} "
                        f"({MAX_CLASSES:,} classes); found {_number_text(values[index])} at sample {index}: is this "
                        f"column really the class of each sample?")
    labels = values.astype(np.int64)
    validate_labels(labels, None, source)
    return labels, None


def regression_targets(values: np.ndarray, places: list[str] | None, source: str) -> np.ndarray:
    """Regression targets as float32 ``(samples, outputs)``: a column of numbers (text cells or a numeric
    array; 1-D becomes one output). A cell that is not a number, or a value that is NaN or infinite, is a
    one-line DataError naming it (``places[i]``: where sample i came from, such as a file's line)."""
    values = np.asarray(values)
    if values.dtype.kind in "US":
        numbers = np.vectorize(reads_as_number, otypes=[bool])(values) if values.size else np.ones(0, bool)
        if not numbers.all():
            index = int(np.argmin(numbers))
            where = places[index] if places else f"sample {index}"
            raise DataError(f"{source}: {where}: {excerpt(values.reshape(-1)[index])} is not a number; a "
                            f"regression target must be numeric (class names are for --task classification)")
        values = values.astype(np.float64)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{source}: regression targets must be numbers, got dtype {values.dtype}")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise DataError(f"{source}: regression targets must be (samples,) or (samples, outputs), got shape "
                        f"{values.shape}")
    targets = values.astype(np.float32)
    bad = ~np.isfinite(targets)
    if bad.any():
        index = int(np.argmax(bad.any(axis=1)))
        where = places[index] if places else f"sample {index}"
        raise DataError(f"{source}: {where}: the target {values[index].tolist()} is NaN, infinite or too large for "
                        f"float32")
    return targets


def reads_as_number(text: str) -> bool:
    """Whether ``float(text)`` reads a number from it."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def one_hot(labels: object, num_classes: int) -> np.ndarray:
    """Class labels ``(n,)`` as float32 one-hot rows ``(n, num_classes)``: the targets of a loss that compares
    the scores with a vector (MSE, binary cross-entropy)."""
    labels = np.asarray(labels)
    validate_labels(labels, num_classes, "one_hot")
    encoded: Any = xpx.one_hot(cast(Any, labels), num_classes, dtype=np.float32, xp=np)  # NumPy's own types
    return np.asarray(encoded)


def features_2d(x: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Flatten samples to rows; arrays of rank >= 3 are images whose shape is remembered."""
    if x.ndim < 2:
        raise DataError(f"{source}: features must have at least 2 dimensions (samples, features...), "
                        f"got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: features must be numbers, got dtype {x.dtype}")
    if x.size == 0:  # before the reshape, which cannot infer a row length from no data
        raise DataError(f"{source}: features are empty, shape {x.shape}; expected at least one sample of at least "
                        f"one feature")
    image_shape = tuple(int(s) for s in x.shape[1:]) if x.ndim >= 3 else None
    flat = x.reshape(len(x), -1).astype(np.float32, copy=False)  # float32 data stay where they are
    validate_features(flat, source)
    return flat, image_shape


def dataset_from_arrays(name: str, path: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None,
                        y_test: np.ndarray | None, test_fraction: float, seed: int,
                        class_names: list[str] | None = None, image_shape: tuple[int, ...] | None = None,
                        target_names: list[str] | None = None) -> Dataset:
    """A Dataset from raw feature and label arrays (labels already encoded); splits off a test part if needed.
    ``target_names``: the names of regression targets, when the file gives them."""
    if x_test is None or y_test is None:  # the callers give both or neither
        if len(x) != len(y):
            raise DataError(f"{path}: {len(x)} samples but {len(y)} labels")
        kept, held = stratified_holdout(y, test_fraction, seed, f"{path} (test split)")
        x_test, y_test, y = x[held], y[held], y[kept]
        x = keep_rows(x, kept)
    for part, xs, ys in (("train", x, y), ("test", x_test, y_test)):
        if len(xs) != len(ys):
            raise DataError(f"{path}: {len(xs)} {part} samples but {len(ys)} {part} labels")
    if y.dtype == np.float32:  # regression targets (samples, outputs): num_classes counts the outputs
        num_classes = int(y.shape[1])
    else:
        num_classes = len(class_names) if class_names else int(max(y.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(name, x, y, x_test, y_test, num_classes=num_classes, image_shape=image_shape,
                   class_names=class_names or [], scaler={"kind": "none"}, target_names=target_names)


def keep_rows(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``x[kept]`` for sorted unique ``kept``, made in place (``x`` is ours and is overwritten): the kept rows
    move to the front a block at a time and a view of them is returned. A row only ever moves towards the
    front, past rows already read, so this is safe, and it saves a copy of the data (``x[kept]`` next to
    ``x`` would double the memory of a large file)."""
    block = max(1, (1 << 22) // max(1, x[:1].nbytes))  # rows per step: about 4 MiB
    for start in range(0, len(kept), block):
        rows = kept[start:start + block]
        x[start:start + len(rows)] = x[rows]
    return x[:len(kept)]
