"""Datasets from CSV files: numeric features and one label column, the header row found by its content."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..validators import is_integer
from .dataset import Dataset, dataset_from_arrays, encode_labels, excerpt, reads_as_number, regression_targets


def is_header(cells: list[str]) -> bool:
    """Whether a first row is a header: when most of its cells are not numbers. A row that is mostly numbers
    is data, even with a typo in it; the typo is then reported, instead of the row being dropped unseen."""
    return 2 * sum(reads_as_number(cell) for cell in cells) <= len(cells)


def read_csv_rows(path: str | os.PathLike, delimiter: str) -> tuple[list[list[str]], list[int]]:
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


def load_csv(path: str | os.PathLike, label_column: int | str = -1, test_fraction: float = 0.2, seed: int = 0,
             delimiter: str = ",", *, task: str = "classification") -> Dataset:
    """A dataset from a CSV file of numeric features and one label column, features unscaled.

    ``task="regression"``: the column holds a numeric target instead (float32 targets ``(samples, 1)``, the
    test part a plain seeded random draw).

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
    rows, lines = read_csv_rows(path, delimiter)
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
        if not is_integer(label_column) or not -width <= label_column < width:
            raise ConfigError(f"label_column must be a column name or an index in [{-width}, {width}) "
                              f"for {path}, got {label_column!r}")
        label_index = label_column % width
        # A header has mostly names that are not numbers among the features, or a name over numeric labels.
        has_header = is_header([cell for i, cell in enumerate(rows[0]) if i != label_index]) or (
            len(rows) > 1 and not reads_as_number(rows[0][label_index])
            and all(reads_as_number(row[label_index]) for row in rows[1:]))
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
        bad_cells = np.argwhere(~np.vectorize(reads_as_number, otypes=[bool])(cells))
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
    if task == "regression":
        targets = regression_targets(label_cells, [f"line {line}" for line in lines],
                                     f"{path} (target column {label_index + 1}"
                                     + (f", {header[label_index]})" if header else ")"))
        return dataset_from_arrays(path.stem, path, x.astype(np.float32), targets, None, None, test_fraction, seed,
                                   target_names=[header[label_index]] if header else None)
    try:  # numbers if every label is one, else class names
        raw_labels = label_cells.astype(np.float64)
    except ValueError:
        raw_labels = label_cells
    labels, class_names = encode_labels(raw_labels, f"{path} (label column {label_index + 1})")
    return dataset_from_arrays(path.stem, path, x.astype(np.float32), labels, None, None, test_fraction, seed,
                               class_names)
