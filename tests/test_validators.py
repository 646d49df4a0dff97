"""The shared checks of user-given settings (backprop/validators.py)."""

import math

import numpy as np
import pytest

import backprop as bp
from backprop import validators as check
from backprop.errors import ConfigError


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_positive_int_accepts_integers_and_returns_python_int(value):
    result = check.positive_int(value, "epochs")
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize("value", [0, -1, True, False, 1.0, "3", None, np.float32(2)])
def test_positive_int_rejects_with_one_line(value):
    with pytest.raises(ConfigError, match=r"^epochs must be a positive integer, got ") as info:
        check.positive_int(value, "epochs")
    assert "\n" not in str(info.value)


def test_owner_prefixes_the_message():
    with pytest.raises(ConfigError, match=r"^Adam: beta1 must be a finite number in \[0, 1\), got 1$"):
        check.number(1, "beta1", low=0, high=1, high_open=True, owner="Adam")


def test_integer_bounds():
    assert check.non_negative_int(0, "seed") == 0
    with pytest.raises(ConfigError, match=r"seed must be a non-negative integer, got -1"):
        check.non_negative_int(-1, "seed")
    with pytest.raises(ConfigError, match=r"k must be an integer in \[2, 4\], got 5"):
        check.integer(5, "k", low=2, high=4)
    with pytest.raises(ConfigError, match=r"k must be an integer >= 2, got 1"):
        check.integer(1, "k", low=2)


@pytest.mark.parametrize("value", [math.nan, math.inf, True, "0.1", None])
def test_number_rejects_non_finite_bool_and_non_numbers(value):
    with pytest.raises(ConfigError, match=r"^lr must be a finite number"):
        check.number(value, "lr")


def test_number_bounds_open_and_closed():
    assert check.number(0, "momentum", low=0, high=1, high_open=True) == 0.0
    with pytest.raises(ConfigError, match=r"must be a finite number > 0"):
        check.number(0, "eps", low=0, low_open=True)
    assert type(check.number(np.float32(0.5), "p", low=0, high=1)) is float


def test_positive_number_and_flag():
    assert check.positive_number(2, "eps") == 2.0
    with pytest.raises(ConfigError, match=r"eps must be a positive finite number, got 0"):
        check.positive_number(0, "eps")
    assert check.flag(True, "nesterov") is True
    with pytest.raises(ConfigError, match=r"nesterov must be True or False, got 1"):
        check.flag(1, "nesterov")


def test_expected_replaces_the_default_words():
    with pytest.raises(ConfigError, match=r"^RNN: bptt_steps must be a positive integer \(or None\), got 0$"):
        check.positive_int(0, "bptt_steps", owner="RNN", expected="a positive integer (or None)")
    with pytest.raises(ConfigError, match=r"^p must be a probability in \[0, 1\), got 1$"):
        check.number(1, "p", low=0, high=1, high_open=True, expected="a probability in [0, 1)")
    with pytest.raises(ConfigError, match=r"^tol must be a positive number or None, got 0$"):
        check.positive_number(0, "tol", expected="a positive number or None")


def test_positive_ints_gives_a_tuple_of_python_ints():
    result = check.positive_ints([2, np.int64(3)], "shape")
    assert result == (2, 3) and all(type(n) is int for n in result)
    for bad in [(), [2, 0], (2, True), "23", 3, None, (2.0,)]:
        with pytest.raises(ConfigError, match=r"^Reshape: shape must be a non-empty tuple of positive integers, got "):
            check.positive_ints(bad, "shape", owner="Reshape")


def test_layers_reject_true_and_false_as_numbers():
    for build in (lambda: bp.LeakyReLU(True), lambda: bp.Dropout(False), lambda: bp.Dense(True, 2)):
        with pytest.raises(ConfigError, match=r"must be"):
            build()
