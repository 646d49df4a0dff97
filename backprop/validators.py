"""Checks of user-given settings: each returns the value in its plain Python type, or raises a one-line
``ConfigError`` that names the setting, says what was expected and shows what was given.

``owner`` prefixes the message with who asked (``"Adam: beta1 must be ..."``); leave it out for a top-level
setting (``"epochs must be ..."``). ``True`` and ``False`` are never accepted as numbers, though Python's
``bool`` is a subclass of ``int``: ``epochs=True`` is a mistake, not one epoch.
"""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def _fail(owner: str | None, name: str, expected: str, value: object) -> ConfigError:
    prefix = f"{owner}: " if owner else ""
    return ConfigError(f"{prefix}{name} must be {expected}, got {value!r}")


def is_integer(value: object) -> bool:
    """True for Python and NumPy integers, False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """True for finite real numbers (Python or NumPy), False for ``bool``, NaN, infinities and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def integer(value: object, name: str, *, low: int | None = None, high: int | None = None,
            owner: str | None = None, expected: str | None = None) -> int:
    """``value`` as an ``int`` when it is an integer in [``low``, ``high``] (either bound may be left out).

    ``expected`` (here and below) replaces the words that say what was expected, where a setting has its own
    (``"a positive integer (or None for full BPTT)"``)."""
    if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):  # type: ignore[operator]
        if expected is None:
            expected = _integer_words(low, high)
        raise _fail(owner, name, expected, value)
    return int(value)  # type: ignore[call-overload]


def _integer_words(low: int | None, high: int | None) -> str:
    if low == 1 and high is None:
        return "a positive integer"
    if low == 0 and high is None:
        return "a non-negative integer"
    if low is not None and high is not None:
        return f"an integer in [{low}, {high}]"
    if low is not None:
        return f"an integer >= {low}"
    if high is not None:
        return f"an integer <= {high}"
    return "an integer"


def positive_int(value: object, name: str, *, owner: str | None = None, expected: str | None = None) -> int:
    """``value`` as an ``int`` when it is an integer >= 1."""
    return integer(value, name, low=1, owner=owner, expected=expected)


def non_negative_int(value: object, name: str, *, owner: str | None = None) -> int:
    """``value`` as an ``int`` when it is an integer >= 0."""
    return integer(value, name, low=0, owner=owner)


def number(value: object, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, owner: str | None = None,
           expected: str | None = None) -> float:
    """``value`` as a ``float`` when it is a finite number within the bounds (closed unless ``*_open``)."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low  # type: ignore[operator]
    if ok and high is not None:
        ok = value < high if high_open else value <= high  # type: ignore[operator]
    if not ok:
        if low is not None and high is not None:
            where = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            where = f" {'>' if low_open else '>='} {low:g}"
        elif high is not None:
            where = f" {'<' if high_open else '<='} {high:g}"
        else:
            where = ""
        raise _fail(owner, name, expected or f"a finite number{where}", value)
    return float(value)  # type: ignore[arg-type]


def positive_number(value: object, name: str, *, owner: str | None = None, expected: str | None = None) -> float:
    """``value`` as a ``float`` when it is a finite number > 0."""
    if not is_number(value) or value <= 0:  # type: ignore[operator]
        raise _fail(owner, name, expected or "a positive finite number", value)
    return float(value)  # type: ignore[arg-type]


def positive_ints(value: object, name: str, *, owner: str | None = None, expected: str | None = None
                  ) -> tuple[int, ...]:
    """``value`` as a tuple of ``int`` when it is a non-empty tuple or list of integers >= 1 (a shape)."""
    if (not isinstance(value, (tuple, list)) or not value
            or not all(is_integer(n) and n >= 1 for n in value)):
        raise _fail(owner, name, expected or "a non-empty tuple of positive integers", value)
    return tuple(int(n) for n in value)


def flag(value: object, name: str, *, owner: str | None = None) -> bool:
    """``value`` when it is ``True`` or ``False`` (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise _fail(owner, name, "True or False", value)
    return value

