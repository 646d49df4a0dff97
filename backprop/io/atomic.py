"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each write goes to a temporary file ``.<name>.<8 random characters>.tmp`` beside
the target and is renamed over it once complete. A process killed mid-write
(kill -9, a power cut) leaves that temporary file behind and the previous
target intact; ``remove_stale_temp_files`` removes such leftovers.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    Write the file at the yielded path (any library that takes a file name
    works). If the block raises, the temporary file is removed and ``path``
    keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename publishes them
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def temp_file_pattern(name: str) -> re.Pattern[str]:
    """What ``atomic_path`` names its temporary files for a target called ``name`` (``mkstemp``'s names)."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temp_files(directory: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files that ``atomic_path`` writes of the files ``names`` in ``directory`` left
    behind; returns what was removed.

    Call it only when no process can be writing those files (``backprop train`` holds the directory's
    lock): a live writer's temporary file is indistinguishable from a dead one's. Only regular files named
    exactly as ``atomic_path`` names them for one of ``names`` are touched, nothing else."""
    directory = Path(directory)
    patterns = [temp_file_pattern(name) for name in names]
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not any(pattern.fullmatch(entry.name) for pattern in patterns):
            continue
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                os.unlink(entry.path)
                removed.append(directory / entry.name)
    return sorted(removed)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform (Windows)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
