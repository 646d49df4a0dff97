"""IDX files (the MNIST format), and the MNIST and Fashion-MNIST datasets stored in them."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..io.atomic import write_bytes_atomic
from . import downloads
from .dataset import Dataset
from .scaling import apply_scaler

# IDX data type codes (third byte of the magic number) and the big-endian dtypes they stand for.
IDX_DTYPES: dict[int, np.dtype[Any]] = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
                                        0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
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


def read_idx(path: str | os.PathLike) -> np.ndarray:
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


def write_idx(path: str | os.PathLike, array: np.typing.ArrayLike) -> None:
    """Write an array as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically."""
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


def _load_idx_dataset(name: str, class_names: list[str], data_dir: str | os.PathLike | None,
                      download: bool) -> Dataset:
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


def load_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """MNIST handwritten digits (60000 train / 10000 test, 28x28), pixels scaled to [0, 1].

    With ``data_dir``: read the four standard files from there (``.gz`` or
    uncompressed), never touching the network. Otherwise use the download
    cache, downloading what is missing when ``download`` is true.
    """
    return _load_idx_dataset("mnist", [str(d) for d in range(10)], data_dir, download)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST (Zalando's clothing images, same format as MNIST); see :func:`load_mnist`."""
    return _load_idx_dataset("fashion-mnist", FASHION_CLASSES, data_dir, download)
