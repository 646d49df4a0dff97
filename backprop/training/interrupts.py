"""Ctrl-C held back while the trainer's bookkeeping must not be cut in half.

A KeyboardInterrupt can arrive between any two Python bytecodes. Inside a
training step that is harmless (the trainer rolls back to the start of the
epoch), but arriving halfway through the end of an epoch (the epoch counted,
the history or a callback not yet updated) it would leave a checkpoint that
no longer resumes exactly.
"""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def ctrl_c_held():
    """Run the block to its end even if Ctrl-C arrives; raise the KeyboardInterrupt after it.

    Only where Python's own Ctrl-C handler is in place (the main thread, no handler of the
    user's): elsewhere the block runs unprotected and nothing is changed."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    arrived = []
    signal.signal(signal.SIGINT, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if arrived:
        raise KeyboardInterrupt
