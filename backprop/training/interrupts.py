"""Ctrl-C and SIGTERM: stop training cleanly, never halfway through the trainer's bookkeeping.

``backprop train`` treats SIGTERM (what ``timeout``, systemd, Slurm, Kubernetes and ``docker stop`` send)
like Ctrl-C: ``terminate_as_interrupt`` makes it raise ``Terminated``, a ``KeyboardInterrupt``, so the one
path that handles Ctrl-C (roll back the unfinished epoch, save the checkpoint, say how to resume) handles
it too. A library user's process keeps its own SIGTERM behaviour: only the CLI installs the handler.

A KeyboardInterrupt can arrive between any two Python bytecodes. Inside a
training step that is harmless (the trainer rolls back to the start of the
epoch), but arriving halfway through the end of an epoch (the epoch counted,
the history or a callback not yet updated) it would leave a checkpoint that
no longer resumes exactly: ``ctrl_c_held`` holds both signals over such blocks.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

#: Exit status of a process stopped by SIGINT or SIGTERM (128 + the signal number, as a shell reports it).
INTERRUPTED_STATUS = 128 + signal.SIGINT
TERMINATED_STATUS = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (see ``terminate_as_interrupt``): handled exactly like Ctrl-C."""

    exit_status = TERMINATED_STATUS


def raise_terminated(signum: int | None = None, frame: Any = None) -> NoReturn:
    """The SIGTERM handler that ``terminate_as_interrupt`` installs."""
    raise Terminated("terminated by SIGTERM")


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """130 for Ctrl-C, 143 for SIGTERM."""
    return getattr(interrupt, "exit_status", INTERRUPTED_STATUS)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Terminated``; the previous handler is restored afterwards.

    Only in the main thread (the only one where Python runs signal handlers); elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


#: The handlers ``ctrl_c_held`` holds back: Python's own Ctrl-C handler and ours for SIGTERM.
_HELD_HANDLERS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: raise_terminated}


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """Run the block to its end even if Ctrl-C (or SIGTERM, under ``terminate_as_interrupt``) arrives; raise
    the interrupt after it.

    Only signals whose handler raises the interrupt (Python's own Ctrl-C handler, ``raise_terminated``) and
    only in the main thread: a handler of the user's, or one that only sets a flag (the distributed
    communicator's), is left alone and the block runs unprotected against it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signum: handler for signum, handler in _HELD_HANDLERS.items() if signal.getsignal(signum) is handler}
    if not held:
        yield
        return
    arrived = []

    def hold(signum, frame):
        arrived.append(signum)

    for signum in held:
        signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in held.items():
            signal.signal(signum, handler)
    if arrived:
        held[arrived[0]](arrived[0], None)  # raises, as it would have when the signal arrived
