"""Plots written after training: learning curves and confusion matrices as PNG files, written atomically."""

from __future__ import annotations

import builtins
import math
import sys

import numpy as np
import pytest

from backprop.errors import BackpropError, ConfigError, DataError, DTypeError, ShapeError
from backprop.plots.training import PlotUnavailable, confusion_matrix, plot_confusion_matrix, plot_learning_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int, *, validation: bool = True, grad_norms: bool = True) -> list[dict]:
    records = []
    for epoch in range(1, epochs + 1):
        record = {
            "epoch": epoch,
            "train_loss": 2.3 * math.exp(-epoch / 3) + 0.05,
            "train_accuracy": 1 - 0.9 * math.exp(-epoch / 2.5),
            "lr": 0.1 * 0.5 ** (epoch // 4),
            "time": 1.25,
        }
        if validation:
            record["val_loss"] = record["train_loss"] + 0.1
            record["val_accuracy"] = record["train_accuracy"] - 0.05
        if grad_norms:
            # three Dense layers whose gradients shrink towards the input: vanishing gradients
            record["grad_norms"] = {f"{2 * i}.{kind}": 10.0 ** (i - 3) * (0.5 if kind == "bias" else 1.0)
                                    for i in range(3) for kind in ("weight", "bias")}
        records.append(record)
    return records


def assert_png(path, *, min_width=300, min_height=300):
    """``path`` holds a complete PNG that matplotlib reads back as a sensible RGB(A) image."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[-12:-8] == b"\x00\x00\x00\x00" and data[-8:-4] == b"IEND", "PNG ends without its IEND chunk"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert min_width <= width <= 4000 and min_height <= height <= 4000, image.shape
    assert float(image[..., :3].std()) > 0.01, "the image is blank"
    return image


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------------------------------
# learning curves


def test_learning_curves_ten_epochs_with_validation_and_grad_norms(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curves.png"
    written = plot_learning_curves(_history(10), path, title="MLP on synthetic data")
    assert written == path
    image = assert_png(path, min_width=1000, min_height=700)
    assert image.shape[1] > image.shape[0], "learning curves are drawn landscape"
    assert _leftovers(tmp_path) == []


def test_learning_curves_single_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    plot_learning_curves(_history(1), tmp_path / "one.png")
    assert_png(tmp_path / "one.png")


def test_learning_curves_skip_nan_inf_none_and_missing_validation(tmp_path):
    pytest.importorskip("matplotlib")
    history = _history(6, validation=False)
    history[1]["train_loss"] = float("nan")
    history[2]["train_loss"] = float("inf")
    history[3]["train_accuracy"] = None
    history[1]["grad_norms"]["0.weight"] = float("nan")
    history[2]["grad_norms"]["2.weight"] = 0.0  # cannot sit on a log axis: skipped, not fatal
    history[4]["grad_norms"]["4.bias"] = float("inf")
    history[5]["val_loss"] = None
    history[5]["val_accuracy"] = None
    del history[4]["lr"]
    plot_learning_curves(history, tmp_path / "nan.png")
    assert_png(tmp_path / "nan.png")


def test_learning_curves_without_grad_norms_or_any_finite_value(tmp_path):
    pytest.importorskip("matplotlib")
    bare = [{"epoch": 1, "train_loss": float("nan"), "train_accuracy": None},
            {"epoch": 2, "train_loss": float("nan"), "train_accuracy": None, "grad_norms": {}}]
    plot_learning_curves(iter(bare), tmp_path / "bare.png")  # any iterable of dicts
    assert_png(tmp_path / "bare.png")


def test_learning_curves_empty_history_draws_a_placeholder(tmp_path):
    pytest.importorskip("matplotlib")
    plot_learning_curves([], tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:8] == PNG_SIGNATURE


def test_learning_curves_reject_records_that_are_not_dicts(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(DataError, match="entry 1"):
        plot_learning_curves([{"epoch": 1}, "epoch 2"], tmp_path / "x.png")
    with pytest.raises(DataError, match="list of per-epoch dicts"):
        plot_learning_curves({"epoch": 1, "train_loss": 1.0}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------
# confusion matrix


def test_confusion_matrix_counts_match_a_hand_example():
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 2, 2, 0, 2])
    expected = np.array([[1, 1, 0],
                         [0, 2, 1],
                         [1, 0, 3]])
    result = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.int64 and result.shape == (3, 3)
    assert int(result.sum()) == y_true.size
    # a class that never occurs still gets its row and column; sequences and other integer dtypes work
    wide = confusion_matrix(list(y_true), y_pred.astype(np.uint8), 5)
    np.testing.assert_array_equal(wide[:3, :3], expected)
    assert int(wide[3:].sum()) == 0 and int(wide[:, 3:].sum()) == 0


def test_confusion_matrix_of_nothing_is_all_zeros():
    result = confusion_matrix(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 4)
    np.testing.assert_array_equal(result, np.zeros((4, 4), dtype=np.int64))


def test_confusion_matrix_rejects_bad_input():
    labels = np.array([0, 1, 2])
    with pytest.raises(ShapeError, match="same shape"):
        confusion_matrix(labels, labels[:2], 3)
    with pytest.raises(DTypeError, match="argmax"):
        confusion_matrix(labels, np.eye(3)[labels].astype(np.float32)[:, 0], 3)
    with pytest.raises(DataError, match=r"outside \[0, 3\)"):
        confusion_matrix(labels, np.array([0, 1, 3]), 3)
    with pytest.raises(DataError, match="outside"):
        confusion_matrix(np.array([-1, 0, 1]), labels, 3)
    for bad in (0, -2, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="num_classes"):
            confusion_matrix(labels, labels, bad)


def test_plot_confusion_matrix_named_classes_and_raw_counts(tmp_path):
    pytest.importorskip("matplotlib")
    matrix = np.array([[50, 2, 0], [3, 40, 7], [0, 0, 0]])  # the last class never occurs: no division by zero
    written = plot_confusion_matrix(matrix, tmp_path / "cm.png", class_names=["cat", "dog", "horse"], title="pets")
    assert written == tmp_path / "cm.png"
    assert_png(written)
    plot_confusion_matrix(np.zeros((2, 2), dtype=np.int64), tmp_path / "none.png", normalize=False)  # no samples
    assert_png(tmp_path / "none.png")


@pytest.mark.parametrize("classes", [20, 25])
def test_plot_confusion_matrix_many_classes(tmp_path, classes, rng):
    pytest.importorskip("matplotlib")
    y_true = rng.integers(0, classes, 20_000)
    y_pred = np.where(rng.random(y_true.size) < 0.8, y_true, rng.integers(0, classes, y_true.size))
    matrix = confusion_matrix(y_true, y_pred, classes)
    path = tmp_path / f"cm{classes}.png"
    plot_confusion_matrix(matrix, path)  # annotated up to 20 classes, colour only beyond
    assert_png(path, min_width=800, min_height=800)


def test_plot_confusion_matrix_rejects_bad_input(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ShapeError, match="square"):
        plot_confusion_matrix(np.zeros((2, 3), dtype=np.int64), tmp_path / "x.png")
    with pytest.raises(ShapeError, match="class_names"):
        plot_confusion_matrix(np.eye(3, dtype=np.int64), tmp_path / "x.png", class_names=["a", "b"])
    with pytest.raises(DTypeError, match="integer counts"):
        plot_confusion_matrix(np.full((2, 2), 0.5), tmp_path / "x.png")
    with pytest.raises(DataError, match="negative"):
        plot_confusion_matrix(np.array([[1, -1], [0, 2]]), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------
# atomic writes


def test_an_existing_plot_is_replaced_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "confusion.png"
    path.parent.mkdir()
    path.write_bytes(b"old plot")
    plot_confusion_matrix(np.array([[3, 1], [0, 4]]), path)
    assert_png(path)
    assert _leftovers(path.parent) == []


@pytest.mark.parametrize("which", ["curves", "confusion"])
def test_a_failure_while_saving_leaves_the_old_file_intact(tmp_path, monkeypatch, which):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def failing_savefig(self, fname, *args, **kwargs):
        with open(fname, "wb") as handle:  # half a PNG, then the disk fills up
            handle.write(PNG_SIGNATURE + b"\x00\x00\x00\x0dIHDR")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", failing_savefig)
    path = tmp_path / "plot.png"
    path.write_bytes(b"the previous plot")
    with pytest.raises(OSError, match="No space left"):
        if which == "curves":
            plot_learning_curves(_history(2), path)
        else:
            plot_confusion_matrix(np.eye(3, dtype=np.int64), path)
    assert path.read_bytes() == b"the previous plot"
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# matplotlib is optional


def _assert_unavailable(excinfo):
    assert isinstance(excinfo.value, BackpropError)
    message = str(excinfo.value)
    assert 'pip install "backprop[plot]"' in message
    assert "\n" not in message


def test_plot_unavailable_when_matplotlib_is_not_installed(tmp_path, monkeypatch):
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import matplotlib...` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PlotUnavailable) as excinfo:
        plot_learning_curves(_history(2), tmp_path / "curves.png")
    _assert_unavailable(excinfo)
    with pytest.raises(PlotUnavailable) as excinfo:
        plot_confusion_matrix(np.eye(2, dtype=np.int64), tmp_path / "cm.png")
    _assert_unavailable(excinfo)
    assert list(tmp_path.iterdir()) == []
    # counting needs only NumPy
    np.testing.assert_array_equal(confusion_matrix([0, 1], [1, 1], 2), [[0, 1], [0, 1]])


def test_plot_unavailable_when_importing_matplotlib_fails(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def blocked_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked_import)
    with pytest.raises(PlotUnavailable) as excinfo:
        plot_learning_curves(_history(2), tmp_path / "curves.png")
    _assert_unavailable(excinfo)
    assert isinstance(excinfo.value.__cause__, ImportError)


def test_a_broken_matplotlib_is_reported_as_unavailable(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def broken_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise AttributeError("module 'numpy' has no attribute 'float'\nsecond line")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken_import)
    with pytest.raises(PlotUnavailable, match="AttributeError") as excinfo:
        plot_confusion_matrix(np.eye(2, dtype=np.int64), tmp_path / "cm.png")
    _assert_unavailable(excinfo)
