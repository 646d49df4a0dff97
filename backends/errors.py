"""Errors raised by the backend registry."""


class BackendError(Exception):
    """Base class for every backend-selection error."""


class UnknownBackend(BackendError, ValueError):
    """The name does not match any registered backend."""


class BackendUnavailable(BackendError, RuntimeError):
    """The backend is registered but cannot run here; ``reason`` says why."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"backend {name!r} is unavailable: {reason}")


class BackendSetupError(BackendError, ValueError):
    """The backend is here, but this installation or this machine cannot do what was asked of it (NCCL
    missing, no GPU visible for a distributed job); the message says what to install or change."""
