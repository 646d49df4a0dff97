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
