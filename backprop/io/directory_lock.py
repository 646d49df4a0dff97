"""An exclusive lock on a directory, so two processes never write the same run at once.

The lock is ``flock`` on the file ``.backprop.lock`` inside the directory: the
kernel releases it when the process ends, however it ends (kill -9
included), so a lock is never left stale. The file itself stays (removing a
lock file while another process may be opening it would let two processes
each lock a different file); it holds the process id of the holder, for the
error message. Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError

if sys.platform == "win32":  # pragma: no cover - no flock on Windows: no lock is taken
    fcntl = None
else:
    import fcntl

LOCK_FILE = ".backprop.lock"


class DirectoryInUse(ConfigError):
    """Another process holds the directory's lock."""


@contextlib.contextmanager
def lock_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (which must exist) for the block; yields the lock file's path.

    Raises ``DirectoryInUse`` at once, without waiting, when another process holds it."""
    path = Path(directory) / LOCK_FILE
    if fcntl is None:  # pragma: no cover
        yield path
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot create the lock file {LOCK_FILE} there ({exc.strerror})") from None
    try:
        _lock_or_refuse(fd, directory)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # releases the lock


def refuse_if_locked(directory: str | os.PathLike) -> None:
    """``DirectoryInUse`` when a live process holds ``directory``'s lock; changes nothing in the directory."""
    path = Path(directory) / LOCK_FILE
    if fcntl is None:  # pragma: no cover
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or none we may read): no run of ours can be holding it
        return
    try:
        _lock_or_refuse(fd, directory)
    finally:
        os.close(fd)


def _lock_or_refuse(fd: int, directory: str | os.PathLike) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        raise DirectoryInUse(f"{directory} is in use by another backprop run"
                             + (f" (process {holder})" if holder else "")
                             + "; wait for it to end, or choose another directory") from None


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return ""
