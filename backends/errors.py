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
