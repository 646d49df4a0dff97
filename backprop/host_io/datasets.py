"""Datasets on the host: loading, checking, splitting and scaling, all in NumPy.

Every loader returns a :class:`Dataset` whose arrays are ready for a network:
features ``float32`` of shape ``(samples, features)`` (images flattened), labels
``int64`` of shape ``(samples,)`` in ``0 .. num_classes - 1``. Arrays reach a
device later, through ``backend.from_host``.

Bad files and bad data raise :class:`~backprop.errors.DataError` with one line
that names the file and what is wrong; bad options raise
:class:`~backprop.errors.ConfigError`. Low-level NumPy, gzip or zip errors are
never allowed to escape, because a traceback from inside ``np.frombuffer`` does
not tell a user which of their files is broken.

Feature scaling is described by a small JSON-able dict (see :func:`fit_scaler`)
that always maps the *raw* features of the source (pixel values 0..255, a CSV's
numbers) to what the network was trained on, so a saved model can apply the
same map to new inputs.
"""

from __future__ import annotations

import csv
import gzip
import importlib.resources
import math
import numbers
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import downloads

# ----------------------------------------------------------------------------------------------- the Dataset


@dataclass(repr=False)
class Dataset:
    """A classification dataset with a fixed train/test split, as host NumPy arrays.

    ``scaler`` describes the feature scaling already applied to ``x_train`` and
    ``x_test``, from raw source values (see :func:`apply_scaler`). ``image_shape`` is the shape of one example
    before it was flattened into a row: an image's (H, W) or (C, H, W), or a sequence's (steps, features).
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

    def __post_init__(self):
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

    def validation_split(self, fraction: float = 0.1, seed: int = 0):
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


def excerpt(content, limit: int = 24) -> str:
    """File content quoted in an error message: at most ``limit`` characters, quoted, control characters
    escaped. Errors quote no more of a file than this, so a path named by someone else (a model file's
    dataset) cannot be used to print a file, and a file cannot flood or rewrite the terminal."""
    text = " ".join(str(content).split())
    return repr(text if len(text) <= limit else text[:limit] + "...")


def validate_features(x, source: str) -> None:
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


def validate_labels(y, num_classes: int | None, source: str) -> None:
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


def _encode_labels(values: np.ndarray, source: str) -> tuple[np.ndarray, list[str] | None]:
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
            raise DataError(f"{source}: labels must be integers, found {values[index]} at sample {index}")
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


def one_hot(labels, num_classes: int) -> np.ndarray:
    """Class labels ``(n,)`` as float32 one-hot rows ``(n, num_classes)``: the targets of a loss that compares
    the scores with a vector (MSE, binary cross-entropy)."""
    labels = np.asarray(labels)
    validate_labels(labels, num_classes, "one_hot")
    return np.eye(num_classes, dtype=np.float32)[labels]


# -------------------------------------------------------------------------------------------------- scaling

SCALINGS = ("none", "standardize", "minmax")


def fit_scaler(x_train, kind: str = "standardize") -> dict:
    """Fit a feature scaling on training data only; return it as a JSON-able dict.

    The dict is ``{"kind": kind, "offset": [...], "scale": [...]}`` and means
    ``x -> (x - offset) / scale`` per feature (``{"kind": "none"}`` is the
    identity). ``standardize`` uses the mean and standard deviation,
    ``minmax`` maps the training range onto [0, 1]. A constant feature gets
    scale 1, so it becomes 0 instead of a division by zero.
    """
    if kind not in SCALINGS:
        raise ConfigError(f"unknown scaling {kind!r}; expected one of {', '.join(SCALINGS)}")
    if kind == "none":
        return {"kind": "none"}
    x = np.asarray(x_train)
    validate_features(x, "fit_scaler")
    low, high = x.min(axis=0).astype(np.float64), x.max(axis=0).astype(np.float64)
    constant = high == low  # exact test: a float std of a constant column can come out as 1e-17, not 0
    if kind == "standardize":
        offset = _column_sums(x) / len(x)

        def squared_deviation(block):
            block -= offset
            block *= block
            return block

        scale = np.sqrt(_column_sums(x, squared_deviation) / len(x))  # the two-pass formula of np.std
    else:
        offset, scale = low, high - low
    scale = np.where(constant, 1.0, scale)
    return {"kind": kind, "offset": offset.tolist(), "scale": scale.tolist()}


def _column_sums(x: np.ndarray, transform=None) -> np.ndarray:
    """Per-column sums of ``transform(rows as float64)`` over all rows, in float64, without a float64 copy of
    ``x``: a few rows (about 1 MiB) at a time. Each block is summed together with the running total as its
    first row, so the additions happen in the order NumPy uses for a float64 copy (usually bit for bit
    the same result as ``x.astype(float64).sum(axis=0)``)."""
    rows = max(1, (1 << 20) // (8 * max(1, x.shape[1])))
    total = np.zeros((1, x.shape[1]))
    for start in range(0, len(x), rows):
        block = x[start:start + rows].astype(np.float64)
        if transform is not None:
            block = transform(block)
        total = np.add.reduce(np.concatenate([total, block]), axis=0, keepdims=True)
    return total[0]


def _affine(scaler: dict, source: str = "scaler") -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) as float64 arrays (0-d or 1-d) from a scaler dict, checked."""
    if not isinstance(scaler, dict) or "kind" not in scaler:
        raise DataError(f"{source}: expected a dict with a 'kind' key, got {type(scaler).__name__}")
    if scaler["kind"] == "none":
        return np.zeros(()), np.ones(())
    try:
        offset = np.asarray(scaler["offset"], dtype=np.float64)
        scale = np.asarray(scaler["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: kind {scaler['kind']!r} needs numeric 'offset' and 'scale' ({exc})") from None
    if offset.ndim > 1 or scale.ndim > 1 or not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))) \
            or np.any(scale == 0):
        raise DataError(f"{source}: 'offset' and 'scale' must be finite numbers or lists, scale never 0")
    return offset, scale


def apply_scaler(x, scaler: dict) -> np.ndarray:
    """Apply a scaler dict from :func:`fit_scaler` (or from a dataset or model file): a new float32 array."""
    return scale_in_place(np.array(x, dtype=np.float32), scaler)


def scale_in_place(x: np.ndarray, scaler: dict) -> np.ndarray:
    """Apply a scaler to a float32 array in place (no copy of the data) and return it: ``(x - offset) / scale``
    in float32."""
    offset, scale = _affine(scaler)
    if scaler["kind"] == "none":
        return x
    if x.dtype != np.float32:
        raise DataError(f"scaler: scale_in_place needs a float32 array, got {x.dtype}")
    for values in (offset, scale):
        if values.ndim == 1 and (x.ndim != 2 or x.shape[1] != values.size):
            raise DataError(f"scaler: fitted on {values.size} features, got an array of shape {x.shape}")
    x -= offset.astype(np.float32)
    x /= scale.astype(np.float32)
    return x


def compose_scalers(first: dict, second: dict) -> dict:
    """The single scaler that applies ``first`` and then ``second``.

    Used to describe, from raw source values, the scaling of data that was
    already scaled once (pixels / 255, then standardized).
    """
    o1, s1 = _affine(first)
    o2, s2 = _affine(second)
    if second["kind"] == "none":
        return dict(first)
    if first["kind"] == "none":
        return dict(second)
    offset, scale = np.broadcast_arrays(o1 + s1 * o2, s1 * s2)
    return {"kind": second["kind"], "offset": offset.tolist(), "scale": scale.tolist()}


# ------------------------------------------------------------------------------------------------ splitting


def _stratified_holdout(y: np.ndarray, fraction: float, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (kept, held-out) index arrays; each class gives about ``fraction`` of its samples.

    The held-out total is ``round(fraction * n)``, shared among classes by
    largest remainder so small classes are not rounded away unfairly.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise ConfigError(f"the held-out fraction must be a number strictly between 0 and 1, got {fraction!r}")
    n = len(y)
    target = round(fraction * n)
    if target < 1 or target >= n:
        raise DataError(f"{source}: cannot hold out {fraction:g} of {n} samples: one part would be empty")
    classes, y_codes = np.unique(y, return_inverse=True)
    counts = np.bincount(y_codes, minlength=len(classes))
    quota = counts * (target / n)
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(-(quota - take), kind="stable")[: target - int(take.sum())]] += 1
    # A random order within each class: shuffle, then stable-sort by class.
    order = np.random.default_rng(seed).permutation(n)
    order = order[np.argsort(y_codes[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.arange(n) - starts[y_codes[order]]
    held = np.sort(order[rank_in_class < take[y_codes[order]]])
    kept = np.setdiff1d(np.arange(n), held, assume_unique=True)
    return kept, held


def split_validation(x, y, fraction: float = 0.1, seed: int = 0):
    """Hold out a stratified random part of a training set: ``(x_train, y_train, x_val, y_val)``.

    Stratified: every class contributes about ``fraction`` of its samples, so
    the validation accuracy is not skewed by an unlucky class mix. The same
    ``seed`` gives the same split on every NumPy version that keeps
    ``default_rng`` streams (they are documented stable), and samples keep their
    original order within each part.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"split_validation: {len(x)} samples but {len(y)} labels")
    kept, held = _stratified_holdout(y, fraction, seed, "split_validation")
    return x[kept], y[kept], x[held], y[held]


# ------------------------------------------------------------------------------------------------------- IDX

# IDX data type codes (third byte of the magic number) and the big-endian dtypes they stand for.
IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped if they are gzip (recognized by content, whatever the name says)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: damaged gzip data ({' '.join(str(exc).split())})") from None
    return data


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a native-byte-order array.

    Layout: two zero bytes, a data type code, the number of dimensions, one
    big-endian uint32 size per dimension, then the values, big-endian. Any
    deviation (bad magic, unknown type code, too few or too many data bytes,
    damaged gzip, empty file) is a :class:`DataError` naming the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data:
        raise DataError(f"{path}: empty file, expected IDX data")
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of at least 4 bytes)")
    if data[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (magic number starts with 0x{data[:2].hex()}, expected 0x0000)")
    dtype = IDX_DTYPES.get(data[2])
    if dtype is None:
        raise DataError(f"{path}: unknown IDX data type code 0x{data[2]:02x} "
                        f"(expected one of {', '.join(f'0x{code:02x}' for code in IDX_DTYPES)})")
    ndim = data[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes for {ndim} dimensions)")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "size mismatch"
        raise DataError(f"{path}: {problem}: header says shape {shape} of {dtype.name} ({expected} bytes of data), "
                        f"file has {actual}")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable copy in the machine's byte order


def write_idx(path, array) -> None:
    """Write an array as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically."""
    from .atomic import write_bytes_atomic

    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(f"{path}: IDX cannot store dtype {array.dtype}; "
                        f"use uint8, int8, int16, int32, float32 or float64")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"{path}: IDX needs 1 to 255 dimensions, got {array.ndim}")
    body = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body += np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    if str(path).endswith(".gz"):
        body = gzip.compress(body, mtime=0)
    write_bytes_atomic(path, body)


# ------------------------------------------------------------------------------------------ built-in datasets

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


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


def _find_idx_files(folder: Path, name: str, hint: str) -> dict[str, Path]:
    """The four IDX files in ``folder``, each under its ``.gz`` name or its uncompressed name."""
    found, missing = {}, []
    for file_name in downloads.IDX_FILES:
        for candidate in (folder / file_name, folder / file_name.removesuffix(".gz")):
            if candidate.is_file():
                found[file_name] = candidate
                break
        else:
            missing.append(file_name)
    if missing:
        raise DataError(f"{folder}: {name} file{'s' if len(missing) > 1 else ''} {', '.join(missing)} not found "
                        f"(.gz or uncompressed); {hint}")
    return found


def _load_idx_dataset(name: str, class_names: list[str], data_dir, download: bool) -> Dataset:
    if data_dir is not None:
        paths = _find_idx_files(Path(data_dir), name, "put the four standard files there")
    elif download:
        paths = downloads.fetch(name)
    else:
        folder = downloads.cache_dir(name)
        paths = _find_idx_files(folder, name, "allow downloading or pass --data-dir DIR")
    train_x, train_y, test_x, test_y = (paths[file_name] for file_name in downloads.IDX_FILES)
    parts = []
    for images_path, labels_path in ((train_x, train_y), (test_x, test_y)):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{images_path}: expected uint8 images of shape (n, 28, 28), "
                            f"got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{labels_path}: expected uint8 labels of shape (n,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{labels_path}: {len(labels)} labels for the {len(images)} images "
                            f"in {images_path.name}")
        if len(labels) and labels.max() >= len(class_names):
            raise DataError(f"{labels_path}: labels must be < {len(class_names)}, found {int(labels.max())} "
                            f"at sample {int(np.argmax(labels))}")
        parts += [images.reshape(len(images), -1), labels.astype(np.int64)]
    pixel_scaler = {"kind": "fixed", "offset": 0.0, "scale": 255.0}
    x_train, y_train, x_test, y_test = parts
    return Dataset(name, apply_scaler(x_train, pixel_scaler), y_train, apply_scaler(x_test, pixel_scaler), y_test,
                   num_classes=len(class_names), image_shape=(28, 28), class_names=list(class_names),
                   scaler=pixel_scaler)


def load_mnist(data_dir=None, download: bool = True) -> Dataset:
    """MNIST handwritten digits (60000 train / 10000 test, 28x28), pixels scaled to [0, 1].

    With ``data_dir``: read the four standard files from there (``.gz`` or
    uncompressed), never touching the network. Otherwise use the download
    cache, downloading what is missing when ``download`` is true.
    """
    return _load_idx_dataset("mnist", [str(d) for d in range(10)], data_dir, download)


def load_fashion_mnist(data_dir=None, download: bool = True) -> Dataset:
    """Fashion-MNIST (Zalando's clothing images, same format as MNIST); see :func:`load_mnist`."""
    return _load_idx_dataset("fashion-mnist", FASHION_CLASSES, data_dir, download)


# ------------------------------------------------------------------------------------------------ user files


def _features_2d(x: np.ndarray, source: str) -> tuple[np.ndarray, tuple[int, ...] | None]:
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


def _from_arrays(name: str, path: Path, x, y, x_test, y_test, test_fraction: float, seed: int,
                 class_names: list[str] | None = None, image_shape: tuple[int, ...] | None = None) -> Dataset:
    """A Dataset from raw feature and label arrays (labels already encoded); splits off a test part if needed."""
    if x_test is None:
        if len(x) != len(y):
            raise DataError(f"{path}: {len(x)} samples but {len(y)} labels")
        kept, held = _stratified_holdout(y, test_fraction, seed, f"{path} (test split)")
        x_test, y_test, y = x[held], y[held], y[kept]
        x = _keep_rows(x, kept)
    for part, xs, ys in (("train", x, y), ("test", x_test, y_test)):
        if len(xs) != len(ys):
            raise DataError(f"{path}: {len(xs)} {part} samples but {len(ys)} {part} labels")
    num_classes = len(class_names) if class_names else int(max(y.max(initial=0), y_test.max(initial=0))) + 1
    return Dataset(name, x, y, x_test, y_test, num_classes=num_classes, image_shape=image_shape,
                   class_names=class_names or [], scaler={"kind": "none"})


def _keep_rows(x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``x[kept]`` for sorted unique ``kept``, made in place (``x`` is ours and is overwritten): the kept rows
    move to the front a block at a time and a view of them is returned. A row only ever moves towards the
    front, past rows already read, so this is safe, and it saves a copy of the data (``x[kept]`` next to
    ``x`` would double the memory of a large file)."""
    block = max(1, (1 << 22) // max(1, x[:1].nbytes))  # rows per step: about 4 MiB
    for start in range(0, len(kept), block):
        rows = kept[start:start + block]
        x[start:start + len(rows)] = x[rows]
    return x[:len(kept)]


def load_npz(path, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """A dataset from a NumPy ``.npz`` file, features unscaled.

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
    features = [_features_2d(arrays[key], f"{path} ({key})") for key in keys[0::2]]
    if len(features) == 2 and (features[0][1] != features[1][1] or features[0][0].shape[1] != features[1][0].shape[1]):
        raise DataError(f"{path}: x_train samples have shape {arrays['x_train'].shape[1:]}, "
                        f"x_test samples {arrays['x_test'].shape[1:]}")
    raw_labels = [arrays[key] for key in keys[1::2]]
    if any(labels.ndim != 1 for labels in raw_labels):
        bad = next(key for key in keys[1::2] if arrays[key].ndim != 1)
        raise DataError(f"{path} ({bad}): labels must be a 1-D array (samples,), got shape {arrays[bad].shape}")
    # Encode train and test labels together so a class name gets the same number in both.
    labels, class_names = _encode_labels(np.concatenate(raw_labels), f"{path} ({'/'.join(keys[1::2])})")
    y = labels[: len(raw_labels[0])]
    y_test = labels[len(raw_labels[0]):] if len(raw_labels) == 2 else None
    x_test = features[1][0] if len(features) == 2 else None
    return _from_arrays(path.stem, path, features[0][0], y, x_test, y_test, test_fraction, seed, class_names,
                        image_shape=features[0][1])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_header(cells: list[str]) -> bool:
    """Whether a first row is a header: when most of its cells are not numbers. A row that is mostly numbers
    is data, even with a typo in it; the typo is then reported, instead of the row being dropped unseen."""
    return 2 * sum(_is_number(cell) for cell in cells) <= len(cells)


def _read_csv_rows(path: Path, delimiter: str) -> tuple[list[list[str]], list[int]]:
    """Non-blank rows as lists of stripped cells, with their line numbers (1-based)."""
    rows, lines = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            for row in reader:
                cells = [cell.strip() for cell in row]
                if any(cells):
                    rows.append(cells)
                    lines.append(reader.line_num)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except (OSError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable CSV file ({' '.join(str(exc).split())})") from None
    if not rows:
        raise DataError(f"{path}: empty file, expected rows of features and a label")
    return rows, lines


def load_csv(path, label_column: int | str = -1, test_fraction: float = 0.2, seed: int = 0,
             delimiter: str = ",") -> Dataset:
    """A dataset from a CSV file of numeric features and one label column, features unscaled.

    ``label_column`` is a column index (negative counts from the end) or a
    header name. A header row is detected automatically: the first row is a
    header when most of its feature cells are not numbers, or when its label
    cell is not a number but every other row's label is. A first row that is
    mostly numbers is data: a cell in it that is not a number is reported
    (line, column, text), never dropped with the row. Labels may be
    integers or strings (class names, numbered 0..C-1 in sorted order). A
    stratified ``test_fraction`` of the rows is held out as the test set.
    """
    path = Path(path)
    rows, lines = _read_csv_rows(path, delimiter)
    width = len(rows[0])
    if width < 2:
        raise DataError(f"{path}: line {lines[0]} has {width} column; need at least one feature and a label")
    ragged = next((i for i, row in enumerate(rows) if len(row) != width), None)
    if ragged is not None:
        raise DataError(f"{path}: line {lines[ragged]} has {len(rows[ragged])} fields, expected {width}")
    if isinstance(label_column, str):
        if label_column not in rows[0]:
            raise ConfigError(f"label column {label_column!r} is not in the header of {path} "
                              f"(columns: {', '.join(rows[0])})")
        label_index, has_header = rows[0].index(label_column), True
    else:
        if isinstance(label_column, bool) or not isinstance(label_column, int) or not -width <= label_column < width:
            raise ConfigError(f"label_column must be a column name or an index in [{-width}, {width}) "
                              f"for {path}, got {label_column!r}")
        label_index = label_column % width
        # A header has mostly names that are not numbers among the features, or a name over numeric labels.
        has_header = _is_header([cell for i, cell in enumerate(rows[0]) if i != label_index]) or (
            len(rows) > 1 and not _is_number(rows[0][label_index])
            and all(_is_number(row[label_index]) for row in rows[1:]))
    header = rows[0] if has_header else None
    if has_header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataError(f"{path}: has a header row but no data rows")
    table = np.array(rows, dtype=str)
    cells = np.delete(table, label_index, axis=1)
    try:
        x = cells.astype(np.float64)
    except ValueError as exc:
        bad_cells = np.argwhere(~np.vectorize(_is_number, otypes=[bool])(cells))
        if not len(bad_cells):  # a spelling Python's float() takes but NumPy's does not, such as "1_000"
            raise DataError(f"{path}: features are not all plain numbers ({excerpt(exc, 60)})") from None
        bad = bad_cells[0]
        column = bad[1] + (bad[1] >= label_index)
        name = f" ({header[column]})" if header else ""
        raise DataError(f"{path}: line {lines[bad[0]]}, column {column + 1}{name}: "
                        f"{excerpt(cells[tuple(bad)])} is not a number") from None
    non_finite = ~np.isfinite(x)
    if np.any(non_finite):
        row, col = np.argwhere(non_finite)[0]
        count = int(np.count_nonzero(non_finite))
        raise DataError(f"{path}: {count} non-finite feature value{'s' if count > 1 else ''} (NaN or inf), "
                        f"first at line {lines[row]}, column {col + (col >= label_index) + 1}")
    label_cells = table[:, label_index]
    try:  # numbers if every label is one, else class names
        raw_labels = label_cells.astype(np.float64)
    except ValueError:
        raw_labels = label_cells
    labels, class_names = _encode_labels(raw_labels, f"{path} (label column {label_index + 1})")
    return _from_arrays(path.stem, path, x.astype(np.float32), labels, None, None, test_fraction, seed, class_names)


# ----------------------------------------------------------------------------------------------- by name

BUILTIN_DATASETS = ("digits", "mnist", "fashion-mnist", "adding-problem", "sonnets")


def dataset_file(spec) -> Path | None:
    """The file a dataset spec names (a ``.npz`` or ``.csv`` path), or None for a built-in name."""
    text = str(spec)
    if text.lower().replace("_", "-") in BUILTIN_DATASETS or not text.lower().endswith((".npz", ".csv")):
        return None
    return Path(text)


def file_sha256(path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    import hashlib

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


def check_recorded_dataset(spec, recorded_sha256, source, *, kind: str = "model", purpose: str = "evaluate on it"
                           ) -> None:
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


def check_dataset_options(spec, data_dir=None, scaling: str | None = None) -> str:
    """What kind of dataset ``spec`` names (``digits``, ``mnist``, ``fashion-mnist``, ``npz`` or ``csv``), with
    ``data_dir`` and ``scaling`` checked against it: a ConfigError before anything is read or downloaded."""
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
    if data_dir is not None and kind not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"a data directory ({data_dir}) is read for mnist and fashion-mnist only, not for {text}")
    return kind


def load_dataset(spec, data_dir=None, scaling: str | None = None, seed: int = 0, download: bool = True, *,
                 label_column: int | str = -1, test_fraction: float = 0.2) -> Dataset:
    """Load a dataset by name (``digits``, ``mnist``, ``fashion-mnist``) or from a ``.npz`` / ``.csv`` path.

    ``scaling`` (``none``, ``standardize``, ``minmax``) is fitted on the
    training part only and applied to both parts, so no test statistics leak
    into training. The default is ``none`` for the image sets (already in
    [0, 1]) and ``standardize`` for user files. The returned ``scaler`` maps
    raw source values to the network's inputs, including the fixed pixel
    scaling of the image sets. ``data_dir`` and ``download`` apply to MNIST and
    Fashion-MNIST; ``seed``, ``label_column`` and ``test_fraction`` to user
    files that have no test part of their own.
    """
    kind = check_dataset_options(spec, data_dir, scaling)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the seed must be an integer >= 0, got {seed!r}")
    text = str(spec)
    if kind == "digits":
        dataset = load_digits()
    elif kind == "mnist":
        dataset = load_mnist(data_dir, download)
    elif kind == "fashion-mnist":
        dataset = load_fashion_mnist(data_dir, download)
    elif kind in ("adding-problem", "sonnets"):
        from . import sequences  # here, not at the top: sequences builds its Datasets with this module

        dataset = (sequences.load_adding_problem if kind == "adding-problem" else sequences.load_sonnets)(seed)
    elif kind == "npz":
        dataset = load_npz(text, test_fraction=test_fraction, seed=seed)
    else:
        dataset = load_csv(text, label_column=label_column, test_fraction=test_fraction, seed=seed)
    if scaling is None:
        scaling = "none" if kind in BUILTIN_DATASETS else "standardize"
    fitted = fit_scaler(dataset.x_train, scaling)
    if fitted["kind"] != "none":  # in place: the loaders' arrays are our own, and a copy would double the memory
        dataset.x_train = scale_in_place(dataset.x_train, fitted)
        dataset.x_test = scale_in_place(dataset.x_test, fitted)
        dataset.scaler = compose_scalers(dataset.scaler or {"kind": "none"}, fitted)
    return dataset


# ----------------------------------------------------------------------------------------------------------
# Inputs for prediction
# ----------------------------------------------------------------------------------------------------------

def load_features(path, delimiter: str = ",") -> np.ndarray:
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
            rows, lines = _read_csv_rows(path, delimiter)
            header = rows[0] if _is_header(rows[0]) else None
            if header is not None:
                rows, lines = rows[1:], lines[1:]
            if not rows:
                raise DataError(f"{path}: no data rows")
            width = len(rows[0])
            for row, line in zip(rows, lines):
                if len(row) != width:
                    raise DataError(f"{path}: line {line} has {len(row)} values, expected {width}")
                bad = next((i for i, cell in enumerate(row) if not _is_number(cell)), None)
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
    flat, _ = _features_2d(np.asarray(x), str(path))
    return flat
