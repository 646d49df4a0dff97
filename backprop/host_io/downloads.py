"""Fetch the MNIST-format datasets once: hash-checked, cached, several mirrors tried in turn.

The official MNIST host has been unreliable for years, so every file is listed
with more than one mirror and the first that delivers bytes with the right MD5
wins. The hashes are those of the original distribution (the ones torchvision
also checks), so a mirror can never hand us different data.

``pooch`` does the downloading and is imported only here, only when a download
is needed: using the packaged digits, or MNIST from ``--data-dir``, never needs
it. Files are cached in ``$BACKPROP_DATA_DIR`` if set, else in the user cache
directory (``pooch.os_cache("backprop")``), one folder per dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    """Where a dataset's files can be downloaded from, and the MD5 each file must have."""

    name: str
    mirrors: tuple[str, ...]  # base URLs ending in "/"; a file's URL is mirror + file name
    md5: dict[str, str]


REMOTE_DATASETS = {
    "mnist": RemoteDataset(
        name="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": RemoteDataset(
        name="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}


def _import_pooch(why: str):
    try:
        import pooch
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
    tried first for the next file. A file whose MD5 does not match is rejected
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
                local = pooch.retrieve(url, known_hash=f"md5:{remote.md5[file_name]}", fname=file_name,
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
