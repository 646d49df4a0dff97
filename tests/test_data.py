"""Datasets: the packaged digits, IDX files, MNIST offline and (faked) downloads, user files, scaling.

No test touches the network: MNIST-format files are generated in tmp_path, and
downloads go through a fake ``pooch`` module put in ``sys.modules``.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import backprop as bp
import backprop.data as data
from backprop.data import downloads
from backprop.data.splitting import stratified_holdout
from backprop.errors import ConfigError, DataError
from backprop.training import Trainer

from conftest import assert_on_backend

IDX_FILES = downloads.IDX_FILES


def one_line_error(excinfo, path=None) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    if path is not None:
        assert str(path) in message, f"message does not name {path}: {message!r}"
    return message


# --------------------------------------------------------------------------------------------- packaged digits


def test_digits_shapes_dtypes_and_range():
    ds = data.load_digits()
    assert ds.name == "digits" and ds.num_classes == 10 and ds.image_shape == (8, 8)
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.scaler == {"kind": "fixed", "offset": 0.0, "scale": 16.0}
    assert "1437 train / 360 test" in ds.describe()


def test_digits_split_is_stratified_and_fixed():
    first, second = data.load_digits(), data.load_digits()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    train_counts, test_counts = np.bincount(first.y_train, minlength=10), np.bincount(first.y_test, minlength=10)
    assert train_counts.sum() + test_counts.sum() == 1797
    assert np.all(train_counts > 0) and np.all(test_counts >= 35) and np.all(test_counts <= 37)


def test_digits_file_indices_partition_all_images():
    resource = importlib.resources.files("backprop.data").joinpath("digits.npz")
    with resource.open("rb") as handle, np.load(handle) as archive:
        assert archive["images"].dtype == np.uint8 and archive["images"].shape == (1797, 8, 8)
        assert archive["labels"].dtype == np.uint8 and archive["images"].max() == 16
        both = np.concatenate([archive["train_index"], archive["test_index"]])
    np.testing.assert_array_equal(np.sort(both), np.arange(1797))


# ------------------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("dtype, shape", [
    (np.uint8, (5, 4, 3)), (np.int8, (7,)), (np.int16, (3, 2)), (np.int32, (2, 3, 4)),
    (np.float32, (4, 5)), (np.float64, (2, 1, 3, 2)),
])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, rng, dtype, shape, suffix):
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    values = rng.integers(info.min, info.max, size=shape, endpoint=True) if info else rng.normal(size=shape)
    array = values.astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, array)
    back = data.read_idx(path)
    assert back.dtype == array.dtype and back.dtype.isnative and back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert path.read_bytes().startswith(b"\x1f\x8b") == (suffix == ".gz")


def test_idx_reads_hand_made_big_endian_bytes(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(b"\x00\x00\x0c\x01" + (3).to_bytes(4, "big") + b"".join(
        v.to_bytes(4, "big", signed=True) for v in (1, -2, 70000)))
    np.testing.assert_array_equal(data.read_idx(path), np.array([1, -2, 70000], np.int32))
    # gzip is recognized by content, whatever the file is called
    zipped = tmp_path / "labels-but-gzipped"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    np.testing.assert_array_equal(data.read_idx(zipped), [1, -2, 70000])


def _valid_idx() -> bytes:
    return b"\x00\x00\x08\x02" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))


def _gzipped(data: bytes) -> bytes:
    """gzip with a fixed time stamp: these bytes name the tests, and pytest-xdist's workers must agree on them."""
    return gzip.compress(data, mtime=0)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file"),
    (b"\x00\x00", "truncated IDX header"),
    (b"\x12\x34\x08\x01" + bytes(8), "not an IDX file"),
    (b"\x00\x00\x0a\x01" + (1).to_bytes(4, "big") + b"x", "unknown IDX data type code 0x0a"),
    (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big"), "truncated IDX header"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (_valid_idx()[:-1], r"truncated: header says shape \(2, 3\)"),
    (_valid_idx() + b"\x00", "size mismatch"),
    (_gzipped(_valid_idx())[:-6], "damaged gzip data"),
    (_gzipped(_valid_idx())[:-8] + b"\xff\xff\xff\xff" + _gzipped(_valid_idx())[-4:], "damaged gzip"),
    (b"\x1f\x8b" + b"garbage" * 3, "damaged gzip data"),
])
def test_corrupt_idx_files(tmp_path, content, problem):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.read_idx(path)
    one_line_error(excinfo, path)


def test_missing_idx_file(tmp_path):
    with pytest.raises(DataError, match="no such file") as excinfo:
        data.read_idx(tmp_path / "nope.gz")
    one_line_error(excinfo, tmp_path / "nope.gz")


# ---------------------------------------------------------------------------------------------------- MNIST


def make_mnist_dir(folder: Path, n_train=12, n_test=6, gz=True, seed=0) -> dict[str, Path]:
    """The four MNIST files with random content; the test images are uncompressed when ``gz`` is 'mixed'."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10,
              rng.integers(0, 256, (n_test, 28, 28)), np.arange(n_test) % 10]
    paths = {}
    for index, (name, array) in enumerate(zip(IDX_FILES, arrays)):
        compressed = gz is True or (gz == "mixed" and index < 2)
        paths[name] = folder / (name if compressed else name.removesuffix(".gz"))
        data.write_idx(paths[name], array.astype(np.uint8))
    return paths


@pytest.fixture
def no_downloads(monkeypatch):
    def refuse(name):
        raise AssertionError(f"tried to download {name}")
    monkeypatch.setattr(downloads, "fetch", refuse)


@pytest.mark.parametrize("gz", [True, False, "mixed"])
def test_mnist_from_data_dir_is_offline(tmp_path, no_downloads, gz):
    make_mnist_dir(tmp_path, gz=gz)
    ds = data.load_mnist(data_dir=tmp_path)
    assert ds.x_train.shape == (12, 784) and ds.x_test.shape == (6, 784) and ds.image_shape == (28, 28)
    assert ds.x_train.dtype == np.float32 and 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    raw = data.read_idx(next(tmp_path.glob("train-images*")))
    np.testing.assert_allclose(ds.x_train, raw.reshape(12, -1) / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, np.arange(6) % 10)
    assert ds.scaler == {"kind": "fixed", "offset": 0.0, "scale": 255.0}


def test_fashion_mnist_alias_and_class_names(tmp_path, no_downloads):
    make_mnist_dir(tmp_path)
    ds = data.load_dataset("fashion_mnist", data_dir=tmp_path)
    assert ds.name == "fashion-mnist" and ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"


def test_mnist_missing_files_in_data_dir(tmp_path, no_downloads):
    make_mnist_dir(tmp_path)
    (tmp_path / IDX_FILES[3]).unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz not found") as excinfo:
        data.load_mnist(data_dir=tmp_path)
    one_line_error(excinfo, tmp_path)


@pytest.mark.parametrize("file_index, array, problem", [
    (1, np.zeros(11, np.uint8), "11 labels for the 12 images"),
    (3, np.full(6, 10, np.uint8), "labels must be < 10"),
    (0, np.zeros((12, 28, 27), np.uint8), r"expected uint8 images of shape \(n, 28, 28\)"),
    (2, np.zeros((6, 28, 28), np.float32), "expected uint8 images"),
])
def test_mnist_inconsistent_files(tmp_path, no_downloads, file_index, array, problem):
    paths = make_mnist_dir(tmp_path)
    data.write_idx(paths[IDX_FILES[file_index]], array)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_mnist(data_dir=tmp_path)
    one_line_error(excinfo, paths[IDX_FILES[file_index]])


def test_mnist_download_path_uses_fetch(tmp_path, monkeypatch):
    paths = make_mnist_dir(tmp_path)
    calls = []
    monkeypatch.setattr(downloads, "fetch", lambda name: calls.append(name) or paths)
    ds = data.load_mnist()
    assert calls == ["mnist"] and ds.x_train.shape == (12, 784)


@pytest.fixture
def fake_pooch(monkeypatch, tmp_path):
    """A stand-in ``pooch`` whose ``retrieve`` is set per test; the cache goes to tmp_path/cache."""
    module = types.ModuleType("pooch")
    module.calls = []
    module.os_cache = lambda project: tmp_path / "os-cache" / project
    monkeypatch.setitem(sys.modules, "pooch", module)
    monkeypatch.setenv(downloads.ENV_VAR, str(tmp_path / "cache"))
    return module


def test_download_checks_hashes_and_falls_back_to_other_mirrors(tmp_path, fake_pooch):
    sources = make_mnist_dir(tmp_path / "server")
    first_mirror = downloads.REMOTE_DATASETS["mnist"].mirrors[0]

    def retrieve(url, known_hash=None, fname=None, path=None, **kwargs):
        fake_pooch.calls.append((url, known_hash, fname, Path(path)))
        if url.startswith(first_mirror):
            raise ConnectionError("first mirror\nis down")
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sources[fname].read_bytes())
        return str(target)

    fake_pooch.retrieve = retrieve
    ds = data.load_mnist()
    assert ds.x_train.shape == (12, 784)
    urls = [call[0] for call in fake_pooch.calls]
    assert urls[0] == first_mirror + IDX_FILES[0]  # the first mirror is tried first ...
    assert len({url.rsplit("/", 1)[0] for url in urls}) >= 2  # ... and another one after it fails
    assert len(fake_pooch.calls) == 5  # the mirror that worked is tried first for the later files
    hashes = {fname: known_hash for _, known_hash, fname, _ in fake_pooch.calls}
    assert hashes[IDX_FILES[0]] == "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    assert hashes[IDX_FILES[3]] == "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
    assert {folder for *_, folder in fake_pooch.calls} == {tmp_path / "cache" / "mnist"}


@pytest.mark.parametrize("name", sorted(downloads.REMOTE_DATASETS))
def test_downloads_use_https_mirrors_and_sha256_only(tmp_path, fake_pooch, name):
    remote = downloads.REMOTE_DATASETS[name]
    assert remote.mirrors and all(mirror.startswith("https://") and mirror.endswith("/") for mirror in remote.mirrors)
    sources = make_mnist_dir(tmp_path / "server")

    def retrieve(url, known_hash=None, fname=None, path=None, **kwargs):
        fake_pooch.calls.append((url, known_hash))
        target = Path(path) / fname
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sources[fname].read_bytes())
        return str(target)

    fake_pooch.retrieve = retrieve
    data.load_dataset(name)
    assert [known_hash for _, known_hash in fake_pooch.calls] == [
        f"sha256:{remote.sha256[file_name]}" for file_name in IDX_FILES]
    assert all(len(digest) == 64 and set(digest) <= set("0123456789abcdef") for digest in remote.sha256.values())
    assert len(set(remote.sha256.values())) == 4  # one sum per file


def test_download_all_mirrors_failed(fake_pooch):
    def retrieve(url, **kwargs):
        raise OSError(f"cannot reach {url}")

    fake_pooch.retrieve = retrieve
    with pytest.raises(DataError, match="could not download fashion-mnist file train-images-idx3-ubyte.gz") as info:
        data.load_fashion_mnist()
    message = one_line_error(info)
    for mirror in downloads.REMOTE_DATASETS["fashion-mnist"].mirrors:
        assert mirror + "train-images-idx3-ubyte.gz" in message
    assert "--data-dir" in message


def test_download_without_pooch(monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)  # makes `import pooch` fail
    with pytest.raises(DataError, match="pip install pooch") as excinfo:
        data.load_mnist()
    one_line_error(excinfo)


def test_no_download_reads_the_cache(tmp_path, monkeypatch, no_downloads):
    monkeypatch.setenv(downloads.ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        data.load_mnist(download=False)
    (tmp_path / "mnist").mkdir()
    make_mnist_dir(tmp_path / "mnist")
    assert data.load_mnist(download=False).x_test.shape == (6, 784)


# ------------------------------------------------------------------------------------------------- NPZ files


def test_npz_with_own_test_split_and_images(tmp_path, rng):
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=rng.integers(0, 9, (20, 4, 5)), y_train=np.arange(20) % 3,
             x_test=rng.normal(size=(6, 4, 5)), y_test=np.arange(6) % 3)
    ds = data.load_npz(path)
    assert ds.name == "mine" and ds.image_shape == (4, 5) and ds.num_classes == 3
    assert ds.x_train.shape == (20, 20) and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.x_test.shape == (6, 20)


def test_npz_x_y_is_split_with_a_seed(tmp_path, rng):
    path = tmp_path / "xy.npz"
    np.savez(path, x=rng.normal(size=(100, 3)), y=np.repeat(["cat", "dog"], [60, 40]))
    ds = data.load_npz(path, test_fraction=0.2, seed=3)
    assert len(ds.x_train) == 80 and len(ds.x_test) == 20
    assert ds.class_names == ["cat", "dog"]
    assert np.bincount(ds.y_test).tolist() == [12, 8]  # stratified
    again, other = data.load_npz(path, seed=3), data.load_npz(path, seed=4)
    np.testing.assert_array_equal(ds.x_test, again.x_test)
    assert not np.array_equal(ds.x_test, other.x_test)


@pytest.mark.parametrize("arrays, problem", [
    ({"x": np.ones((4, 2)), "y": np.arange(3)}, "4 samples but 3 labels"),
    ({"x_train": np.ones((4, 2)), "y_train": np.arange(4), "x_test": np.ones((2, 2)), "y_test": np.arange(3)},
     "2 test samples but 3 test labels"),
    ({"x_train": np.ones((4, 2)), "y_train": np.arange(4), "x_test": np.ones((2, 2))}, "has x_test but not y_test"),
    ({"features": np.ones((4, 2))}, "expected arrays x_train and y_train .* found 'features'"),
    ({"x": np.ones(4), "y": np.arange(4)}, r"at least 2 dimensions .* got shape \(4,\)"),
    ({"x": np.ones((4, 2)), "y": np.ones((4, 1))}, "labels must be a 1-D array"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, -1, 0])}, "labels must be >= 0, found -1 at sample 2"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, 0.5, 0])}, "labels must be integers, found 0.5"),
    ({"x": np.array([[1.0, np.nan], [np.inf, 1], [1, 1], [np.nan, 2]]), "y": np.arange(4)},
     "3 non-finite feature values"),
    ({"x_train": np.ones((4, 2)), "y_train": np.arange(4), "x_test": np.ones((2, 3)), "y_test": np.arange(2)},
     "x_train samples have shape"),
])
def test_npz_bad_contents(tmp_path, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_npz(path)
    one_line_error(excinfo, path)


@pytest.mark.parametrize("arrays, problem", [
    ({"x_train": np.zeros((0, 5)), "y_train": np.zeros(0, np.int64)}, r"features are empty, shape \(0, 5\)"),
    ({"x": np.zeros((4, 0, 3)), "y": np.arange(4)}, r"features are empty, shape \(4, 0, 3\)"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, 2_000_000_000, 0])},
     "may be at most 99,999 \\(100,000 classes\\); found 2,000,000,000 at sample 2"),
    ({"x": np.ones((4, 2)), "y": np.array([0, 1, 1e30, 0])}, "may be at most 99,999 .* found 1e\\+30 at sample 2"),
    ({"x": np.ones((100_001, 1), np.float32), "y": np.array([f"id{i}" for i in range(100_001)])},
     "100,001 different class names, more than the 100,000 classes"),
])
def test_npz_sizes_that_would_exhaust_memory_or_crash(tmp_path, arrays, problem):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_npz(path)
    one_line_error(excinfo, path)


def test_the_class_cap_allows_its_largest_label(tmp_path):
    path = tmp_path / "wide.npz"
    np.savez(path, x_train=np.ones((2, 1), np.float32), y_train=np.array([0, data.MAX_CLASSES - 1]),
             x_test=np.ones((1, 1), np.float32), y_test=np.array([0]))
    assert data.load_npz(path).num_classes == data.MAX_CLASSES == 100_000


def test_features_for_prediction_cannot_be_empty(tmp_path):
    np.save(tmp_path / "none.npy", np.zeros((0, 64), np.float32))
    with pytest.raises(DataError, match=r"features are empty, shape \(0, 64\)") as excinfo:
        data.load_features(tmp_path / "none.npy")
    one_line_error(excinfo, tmp_path / "none.npy")


@pytest.mark.parametrize("content, problem", [
    (b"", "unreadable .npz file"),
    (b"PK\x03\x04 not really a zip", "unreadable .npz file"),
    (None, "not an .npz archive"),
])
def test_npz_bad_files(tmp_path, content, problem):
    path = tmp_path / "bad.npz"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.ones(3))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_npz(path)
    one_line_error(excinfo, path)


# ------------------------------------------------------------------------------------------------- CSV files


def test_csv_with_header_and_string_labels(tmp_path):
    rows = [f"{i},{i * 0.5},{['setosa', 'virginica', 'versicolor'][i % 3]}" for i in range(30)]
    path = tmp_path / "iris.csv"
    path.write_text("length,width,species\n" + "\n".join(rows) + "\n")
    ds = data.load_csv(path)
    assert ds.class_names == ["setosa", "versicolor", "virginica"]  # sorted, numbered 0..2
    assert ds.x_train.shape == (24, 2) and ds.x_test.shape == (6, 2)
    everything = np.concatenate([ds.x_train, ds.x_test])
    labels = np.concatenate([ds.y_train, ds.y_test])
    assert np.all(labels[everything[:, 0] == 1] == 2)  # row 1 is virginica
    by_name = data.load_csv(path, label_column="species")
    np.testing.assert_array_equal(by_name.y_train, ds.y_train)


def test_csv_without_header_label_first(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("".join(f"{i % 4},{i},{i * i}\n" for i in range(40)))
    ds = data.load_csv(path, label_column=0, test_fraction=0.25)
    assert ds.num_classes == 4 and ds.class_names == ["0", "1", "2", "3"]
    assert len(ds.x_train) == 30 and len(ds.x_test) == 10
    np.testing.assert_array_equal(ds.x_train[:, 0].astype(int) % 4, ds.y_train)


def test_csv_header_of_numbers_over_integer_labels(tmp_path):
    path = tmp_path / "pixels.csv"
    path.write_text("0,1,label\n" + "".join(f"{i},{i + 1},{i % 2}\n" for i in range(10)))
    ds = data.load_csv(path)
    assert ds.num_classes == 2 and ds.class_names == ["0", "1"] and len(ds.x_train) + len(ds.x_test) == 10


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ("\n\n  \n", "empty file"),
    ("a,b,label\n", "header row but no data rows"),
    ("1,2,0\n3,nan,1\n5,inf,0\n", "2 non-finite feature values .*first at line 2, column 2"),
    ("1,2,0\n3,4\n", "line 2 has 2 fields, expected 3"),
    ("1,2,0\n3,x,1\n", r"line 2, column 2: 'x' is not a number"),
    ("a,b,c\n1,2,0\n3,,1\n", r"line 3, column 2 \(b\): '' is not a number"),
    ("1,2,0.5\n3,4,1\n", "labels must be integers, found 0.5"),
    ("1,2,-1\n3,4,1\n", "labels must be >= 0"),
    ("1,2,0\n3,4,2000000000\n", "may be at most 99,999 .* found 2,000,000,000 at sample 1"),
    ("1\n2\n", "need at least one feature and a label"),
])
def test_csv_bad_files(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_csv(path)
    one_line_error(excinfo, path)


@pytest.mark.parametrize("text, problem", [
    ("1,2,3,x,5,0\n1,2,3,4,5,1\n", r"line 1, column 4: 'x' is not a number"),  # a typo: the row is data
    ("1,,3,4,5,0\n1,2,3,4,5,1\n", r"line 1, column 2: '' is not a number"),
    ("a,b,c,d,e,label\n1,2,3,x,5,0\n", r"line 2, column 4 \(d\): 'x' is not a number"),
])
def test_csv_first_row_of_mostly_numbers_is_data_and_its_typo_is_reported(tmp_path, text, problem):
    path = tmp_path / "typo.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as excinfo:
        data.load_csv(path)
    one_line_error(excinfo, path)


def test_csv_header_of_mostly_names_is_a_header(tmp_path):
    path = tmp_path / "named.csv"
    path.write_text("a,b,3,label\n" + "".join(f"{i},{i + 1},{i + 2},{i % 2}\n" for i in range(10)))
    ds = data.load_csv(path)
    assert len(ds.x_train) + len(ds.x_test) == 10 and ds.class_names == ["0", "1"]


@pytest.mark.parametrize("text, rows, problem", [
    ("1,2,3,4\n5,6,7,8\n", 2, None),
    ("a,b,c,d\n1,2,3,4\n5,6,7,8\n", 2, None),  # a header
    ("a,b,3,4\n1,2,3,4\n", 1, None),  # half names: a header
    ("1,2,x,4\n5,6,7,8\n", None, r"line 1, column 3: 'x' is not a number"),  # mostly numbers: data, with a typo
    ("1,2,3,4\n5,six,7,8\n", None, r"line 2, column 2: 'six' is not a number"),
    ("a,b,c,d\n1,2,3,4\n5,6,7,eight\n", None, r"line 3, column 4 \(d\): 'eight' is not a number"),
])
def test_features_csv_header_detection(tmp_path, text, rows, problem):
    path = tmp_path / "x.csv"
    path.write_text(text)
    if problem is None:
        x = data.load_features(path)
        assert x.shape == (rows, 4) and x.dtype == np.float32
        np.testing.assert_array_equal(x[-1], [5, 6, 7, 8] if rows == 2 else [1, 2, 3, 4])
    else:
        with pytest.raises(DataError, match=problem) as excinfo:
            data.load_features(path)
        one_line_error(excinfo, path)


def test_csv_bad_label_column(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("1,2,0\n3,4,1\n")
    with pytest.raises(ConfigError, match="label column 'y' is not in the header"):
        data.load_csv(path, label_column="y")
    with pytest.raises(ConfigError, match=r"index in \[-3, 3\)"):
        data.load_csv(path, label_column=3)


# -------------------------------------------------------------------------------------------------- scaling


def shifted_npz(tmp_path, rng) -> Path:
    """Train features around 0, test features around 10: a leak of test statistics would show."""
    path = tmp_path / "shift.npz"
    np.savez(path, x_train=rng.normal(0, 2, (200, 3)), y_train=np.arange(200) % 2,
             x_test=rng.normal(10, 2, (50, 3)), y_test=np.arange(50) % 2)
    return path


def test_standardize_is_fitted_on_train_only(tmp_path, rng):
    ds = data.load_dataset(str(shifted_npz(tmp_path, rng)))  # user files standardize by default
    assert ds.scaler["kind"] == "standardize"
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1, atol=1e-4)
    assert np.all(ds.x_test.mean(axis=0) > 3)  # ~10 / 2: scaled with the train statistics


def test_minmax_and_none(tmp_path, rng):
    path = str(shifted_npz(tmp_path, rng))
    ds = data.load_dataset(path, scaling="minmax")
    assert ds.x_train.min() == 0 and ds.x_train.max() == 1 and ds.x_test.max() > 1
    raw = data.load_dataset(path, scaling="none")
    assert raw.scaler == {"kind": "none"}
    np.testing.assert_allclose(data.apply_scaler(raw.x_test, ds.scaler), ds.x_test, rtol=1e-6)


@pytest.mark.parametrize("shape", [(300, 7), (5, 40), (1000, 1)])
def test_standardize_equals_float64_statistics_within_float32_rounding(tmp_path, rng, shape):
    """The scaler is fitted in float64 blocks and applied in place; the result must be what the plain
    float64 formulas (the former implementation) give, up to float32 rounding."""
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(len(x)) % 2, x_test=x[::-1].copy(),
             y_test=np.arange(len(x)) % 2)
    ds = data.load_dataset(tmp_path / "d.npz")
    x64 = x.astype(np.float64)
    offset, scale = x64.mean(axis=0), x64.std(axis=0)
    np.testing.assert_allclose(ds.scaler["offset"], offset, rtol=1e-12)
    np.testing.assert_allclose(ds.scaler["scale"], scale, rtol=1e-12)
    for got, raw in ((ds.x_train, x), (ds.x_test, x[::-1])):
        expected = (raw - offset.astype(np.float32)) / scale.astype(np.float32)
        assert got.dtype == np.float32
        # two float32 spacings of the largest value: an offset or scale one float64 rounding apart can round
        # to the neighbouring float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=2 * np.spacing(np.abs(expected).max()))


def test_apply_scaler_leaves_its_input_alone(rng):
    x = rng.normal(3, 2, (20, 3)).astype(np.float32)
    before = x.copy()
    out = data.apply_scaler(x, data.fit_scaler(x))
    np.testing.assert_array_equal(x, before)
    assert out is not x and out.dtype == np.float32


MEMORY_CHILD = r"""
import json, sys
from backprop.data import load_dataset

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

try:  # start the high-water mark afresh (Linux >= 4.0); the imports' transient peak is not the loader's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
baseline = status("VmRSS")
dataset = load_dataset(sys.argv[1])
print(json.dumps({"peak": status("VmHWM") - baseline, "data": dataset.x_train.nbytes + dataset.x_test.nbytes}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc to read the peak memory")
@pytest.mark.parametrize("keys", ["x/y", "x_train/x_test"])
def test_loading_and_standardizing_an_npz_peaks_under_twice_the_data(tmp_path, rng, keys):
    import subprocess

    x = rng.normal(3.0, 2.0, (40_000, 256)).astype(np.float32)  # 41 MB: well above the interpreter's noise
    y = rng.integers(0, 10, len(x))
    if keys == "x/y":
        np.savez(tmp_path / "big.npz", x=x, y=y)  # the loader holds out the test rows itself
    else:
        np.savez(tmp_path / "big.npz", x_train=x[:32_000], y_train=y[:32_000], x_test=x[32_000:], y_test=y[32_000:])
    del x
    result = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "big.npz")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    assert measured["data"] == 40_000 * 256 * 4
    assert measured["peak"] <= 2 * measured["data"], measured


def test_constant_columns_do_not_divide_by_zero():
    x = np.array([[1.0, 0.1, 5], [2.0, 0.1, 5], [3.0, 0.1, 5]], np.float32)
    for kind in ("standardize", "minmax"):
        scaler = data.fit_scaler(x, kind)
        assert scaler["scale"][1:] == [1.0, 1.0]
        out = data.apply_scaler(x, scaler)
        assert np.all(np.isfinite(out)) and np.all(out[:, 1:] == 0)


def test_scaler_json_round_trip(rng):
    x = rng.normal(3, 5, (50, 4)).astype(np.float32)
    scaler = data.fit_scaler(x, "standardize")
    again = json.loads(json.dumps(scaler))
    assert again == scaler
    np.testing.assert_array_equal(data.apply_scaler(x, again), data.apply_scaler(x, scaler))


def test_image_scaler_describes_raw_pixels():
    ds = data.load_dataset("digits", scaling="standardize")
    resource = importlib.resources.files("backprop.data").joinpath("digits.npz")
    with resource.open("rb") as handle, np.load(handle) as archive:
        raw = archive["images"].reshape(1797, 64)[archive["train_index"]]
    np.testing.assert_allclose(data.apply_scaler(raw, json.loads(json.dumps(ds.scaler))), ds.x_train, atol=1e-5)


def test_bad_scalers():
    with pytest.raises(ConfigError, match="unknown scaling 'zscore'; expected one of none, standardize, minmax"):
        data.fit_scaler(np.ones((2, 2)), "zscore")
    with pytest.raises(DataError, match="fitted on 2 features"):
        data.apply_scaler(np.ones((3, 5)), data.fit_scaler(np.eye(2), "minmax"))
    with pytest.raises(DataError, match="scale never 0"):
        data.apply_scaler(np.ones((3, 2)), {"kind": "standardize", "offset": 0.0, "scale": 0.0})
    with pytest.raises(DataError, match="needs numeric 'offset' and 'scale'"):
        data.apply_scaler(np.ones((3, 2)), {"kind": "standardize"})


# ------------------------------------------------------------------------------------ load_dataset, splitting


def test_load_dataset_rejects_unknown_specs_and_options():
    with pytest.raises(ConfigError, match=r"unknown dataset 'cifar'; expected one of digits, mnist, fashion-mnist, "
                                          r"adding-problem, sonnets, "
                                          r"or a path to a \.npz or \.csv file"):
        data.load_dataset("cifar")
    with pytest.raises(ConfigError, match="unknown scaling"):
        data.load_dataset("digits", scaling="max")


@pytest.mark.parametrize("seed", [-1, "0", 1.5, True])
def test_load_dataset_rejects_bad_seeds(tmp_path, rng, seed):
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(20, 3)), y=np.arange(20) % 2)
    with pytest.raises(ConfigError, match=r"the seed must be a non-negative integer, got"):
        data.load_dataset(tmp_path / "d.npz", seed=seed)


def test_npz_errors_quote_array_names_only_briefly(tmp_path):
    np.savez(tmp_path / "d.npz", **{f"secret_array_number_{i}": np.zeros(1) for i in range(20)})
    with pytest.raises(DataError, match=r"found 'secret_array_number_0, secret_array_number_1, secret_array_n\.\.\.'$"):
        data.load_dataset(tmp_path / "d.npz")


def test_split_validation_is_stratified_and_seeded():
    ds = data.load_digits()
    x_tr, y_tr, x_val, y_val = ds.validation_split(0.1, seed=5)
    assert len(x_val) == 144 and len(x_tr) == 1437 - 144
    expected = np.bincount(ds.y_train) * 0.1
    assert np.all(np.abs(np.bincount(y_val) - expected) < 1)
    again = data.split_validation(ds.x_train, ds.y_train, 0.1, 5)
    np.testing.assert_array_equal(again[2], x_val)
    ids = np.arange(len(ds.y_train))[:, None]  # features that name their sample: the parts are disjoint
    kept, _, held, _ = data.split_validation(ids, ds.y_train, 0.1, 5)
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held]).ravel()), ids.ravel())
    for fraction in (0, 1, -0.1, "0.1", True):
        with pytest.raises(ConfigError, match="strictly between 0 and 1"):
            data.split_validation(ds.x_train, ds.y_train, fraction)


def _tiny_classifier(backend, seed=0):
    model = bp.mlp([4, 3], activation_name="relu", seed=0, backend=backend)
    return Trainer(model, loss="cross_entropy", epochs=1, batch_size=8, seed=seed, progress=False, log=None)


def test_the_trainer_splits_as_split_validation_does(backend):
    """One validation split: ``Trainer.fit(validation_split=)`` (what ``backprop train`` calls) holds out the very
    rows ``split_validation`` does with the trainer's seed, stratified, on the trainer's device."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), [30, 6, 4])  # unbalanced: a plain random draw would skew the small classes
    x = np.concatenate([np.arange(40, dtype=np.float32)[:, None], rng.random((40, 3), dtype=np.float32)], axis=1)
    trainer = _tiny_classifier(backend, seed=4)
    with backend.activate():  # as inside fit
        x_tr, y_tr, x_val, y_val = trainer._split(backend.from_host(x), backend.from_host(y), 0.25)
    expected = data.split_validation(x, y, 0.25, seed=4)
    for got, want in zip((x_tr, y_tr, x_val, y_val), expected):
        assert_on_backend(got, backend, "float32" if got.ndim == 2 else "int64", shape=want.shape)
        np.testing.assert_array_equal(backend.to_host(got), want)
    np.testing.assert_array_equal(np.bincount(backend.to_host(y_val)), [8, 1, 1])  # 25% of each class, rounded


def test_targets_without_one_class_per_sample_are_held_out_as_one_stratum():
    rng = np.random.default_rng(1)
    x = np.arange(20, dtype=np.float32)[:, None]
    for y in (rng.random((20, 1), dtype=np.float32), rng.integers(0, 5, size=(20, 6))):  # regression, per step
        x_tr, y_tr, x_val, y_val = data.split_validation(x, y, 0.25, seed=2)
        assert len(x_val) == len(y_val) == 5 and len(x_tr) == len(y_tr) == 15
        np.testing.assert_array_equal(y[x_val[:, 0].astype(int)], y_val)
        assert set(x_val[:, 0]).isdisjoint(x_tr[:, 0])


def test_the_cli_holds_out_its_validation_data_with_the_stratified_split(tmp_path, monkeypatch):
    import backprop.training.trainer as trainer_module
    from backprop.cli import main

    calls = []

    def recorded(y, fraction, seed, source, name):
        calls.append((len(y), fraction, seed))
        return stratified_holdout(y, fraction, seed, source, name)

    monkeypatch.setattr(trainer_module, "stratified_holdout", recorded)
    assert main(["train", "--backend", "numpy", "--dataset", "digits", "--hidden", "4", "--epochs", "1",
                 "--validation-split", "0.2", "--seed", "3", "--no-plots", "--output", str(tmp_path / "run")]) == 0
    assert calls == [(1437, 0.2, 3)]


def test_validation_helpers_give_one_line_errors():
    with pytest.raises(DataError, match=r"^batch 3: labels must be < 10 \(the number of classes\), found 12"):
        data.validate_labels(np.array([1, 12]), 10, "batch 3")
    with pytest.raises(DataError, match="labels must be integers, got dtype float32"):
        data.validate_labels(np.zeros(2, np.float32), 10, "batch 3")
    with pytest.raises(DataError, match=r"^x: 1 non-finite feature value \(NaN or inf\), first at sample 1, "
                                        r"feature 0$"):
        data.validate_features(np.array([[0.0], [np.nan]]), "x")
    with pytest.raises(DataError, match=r"features must be a 2-D array \(samples, features\), got shape \(3,\)"):
        data.validate_features(np.zeros(3), "x")
