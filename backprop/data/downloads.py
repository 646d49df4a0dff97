"""Fetch the MNIST-format datasets once: hash-checked, cached, several mirrors tried in turn.

The official MNIST host has been unreliable for years, so every file is listed
with more than one mirror and the first that delivers bytes with the right
SHA-256 wins. The hashes are those of the original distribution, so a mirror
can never hand us different data. Mirrors are https only: the hash guards the
content, https also keeps what we ask for and from whom private.

``pooch`` does the downloading and is imported only here, only when a download
is needed: using the packaged digits, or MNIST from ``--data-dir``, never needs
it. Files are cached in ``$BACKPROP_DATA_DIR`` if set, else in the user cache
directory (``pooch.os_cache("backprop")``), one folder per dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

ENV_VAR = "BACKPROP_DATA_DIR"

# The four files of an MNIST-format dataset, in the order train images, train labels, test images, test labels.
IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclass(frozen=True)
class RemoteDataset:
    """Where a dataset's files can be downloaded from, and the SHA-256 each file must have."""

    name: str
    mirrors: tuple[str, ...]  # https base URLs ending in "/"; a file's URL is mirror + file name
    sha256: dict[str, str]


# The SHA-256 sums are those TensorFlow Datasets pins for these files (tensorflow-datasets 4.9.10 on PyPI,
# tensorflow_datasets/url_checksums/mnist.txt and fashion_mnist.txt; sizes there: MNIST 9912422, 28881,
# 1648877 and 4542 bytes, Fashion-MNIST 26421880, 29515, 4422102 and 5148, in the order below); other
# public projects that pin these files by SHA-256 list the same sums.
REMOTE_DATASETS = {
    "mnist": RemoteDataset(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",  # torchvision's first mirror
            "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow Datasets' source
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": RemoteDataset(
        name="fashion-mnist",
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",  # the authors'
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras' source (Keras pins no hash)
        ),
        sha256={
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
}


def _import_pooch(why: str) -> Any:
    try:
        import pooch  # lazy: optional library (only downloads need it)
    except ImportError:
        raise DataError(f"{why} needs the 'pooch' package: pip install pooch "
                        f"(or pass --data-dir DIR with the files already downloaded)") from None
    return pooch


def cache_dir(name: str) -> Path:
    """The folder where dataset ``name`` is cached: ``$BACKPROP_DATA_DIR/name``, else the user cache."""
    root = os.environ.get(ENV_VAR, "").strip()
    if root:
        return Path(root).expanduser() / name
    pooch = _import_pooch(f"finding the download cache for {name} (or set ${ENV_VAR})")
    return Path(pooch.os_cache("backprop")) / name


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text[:200]}"


def fetch(name: str) -> dict[str, Path]:
    """Download (or find already cached) the four files of dataset ``name``; return {file name: local path}.

    Each file is tried on every mirror in turn; the mirror that worked last is
    tried first for the next file. A file whose SHA-256 does not match is rejected
    by pooch (and deleted), which counts as that mirror failing.
    """
    remote = REMOTE_DATASETS.get(name)
    if remote is None:
        raise DataError(f"no download source for dataset {name!r}; known: {', '.join(REMOTE_DATASETS)}")
    pooch = _import_pooch(f"downloading {name}")
    folder = cache_dir(name)
    mirrors = list(remote.mirrors)
    paths = {}
    for file_name in IDX_FILES:
        failures = []
        for mirror in list(mirrors):
            url = mirror + file_name
            try:
                local = pooch.retrieve(url, known_hash=f"sha256:{remote.sha256[file_name]}", fname=file_name,
                                       path=folder, progressbar=False)
            except Exception as exc:  # network, HTTP status, hash mismatch, disk: all mean "try the next mirror"
                failures.append(f"{url} ({_one_line(exc)})")
                continue
            paths[file_name] = Path(local)
            mirrors.remove(mirror)
            mirrors.insert(0, mirror)
            break
        else:
            raise DataError(f"could not download {name} file {file_name}: every mirror failed: "
                            f"{'; '.join(failures)}. Download the four files ({', '.join(IDX_FILES)}) "
                            f"yourself and pass --data-dir DIR (data_dir=DIR in Python)")
    return paths
