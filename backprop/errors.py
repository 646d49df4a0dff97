"""Errors with one-line messages that say what was expected."""


class BackpropError(Exception):
    """Base class for errors caused by the caller's input (shapes, dtypes, devices, settings, files)."""


class ShapeError(BackpropError, ValueError):
    """An array has the wrong shape or rank."""


class DTypeError(BackpropError, TypeError):
    """An array has the wrong dtype."""


class DeviceMismatchError(BackpropError, ValueError):
    """Arrays from different backends or devices were mixed in one call."""


class ConfigError(BackpropError, ValueError):
    """A hyperparameter or option is invalid."""


class DataError(BackpropError, ValueError):
    """A data file or array is missing, truncated, corrupt or inconsistent."""


class ModelFileError(BackpropError, ValueError):
    """A model or checkpoint file is damaged, foreign or incompatible."""


class TrainingError(BackpropError, RuntimeError):
    """Training cannot go on (the loss became NaN or infinite, say)."""


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a crafted file or description must not flood the terminal."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
