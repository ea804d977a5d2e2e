"""The shared checks refuse what every caller refused on its own: bools as counts, duplicate keys, NaN."""

import json
import math

import numpy as np
import pytest

from fedsync._util.checks import at_least_one, is_int, is_number, positive_int, positive_seconds
from fedsync._util.json import first_duplicate, loads_strict, shown


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, 0, -3])
def test_a_count_is_a_true_integer_of_at_least_one(value):
    with pytest.raises(ValueError, match=r"workers must be at least 1 \(an integer\), got"):
        at_least_one("workers", value)
    with pytest.raises(ValueError, match="num_devices must be a positive integer, got"):
        positive_int("num_devices", value)


def test_integers_pass_through_unchanged():
    assert at_least_one("workers", 3) == 3 and positive_int("n", int(np.int64(2))) == 2
    assert is_int(5) and not is_int(np.int64(5)) and not is_int(True)  # as every inline check did
    assert is_number(0.5) and is_number(2) and not is_number(True) and not is_number("1")


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "5"])
def test_seconds_are_finite_and_positive(value):
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        positive_seconds("timeout", value)


def test_strict_json_refuses_a_key_given_twice_at_any_depth_and_non_finite_constants():
    def dup(key):
        return ValueError(f"duplicate {key}")

    def const(name):
        return ValueError(f"constant {name}")

    assert loads_strict('{"a": [1, {"b": 2}]}', duplicate=dup, constant=const) == {"a": [1, {"b": 2}]}
    with pytest.raises(ValueError, match="duplicate b"):
        loads_strict('{"a": {"b": 1, "b": 2}}', duplicate=dup, constant=const)
    for name in ("NaN", "Infinity", "-Infinity"):
        with pytest.raises(ValueError, match=f"constant {name}"):
            loads_strict(f"[{name}]", duplicate=dup, constant=const)
    with pytest.raises(json.JSONDecodeError):
        loads_strict("{", duplicate=dup, constant=const)
    assert first_duplicate([("x", 1), ("y", 2)]) is None


def test_shown_clips_and_never_lets_a_control_character_through():
    assert shown("x" * 100, 10) == repr("x" * 100)[:10] + "..."
    assert shown("ok") == "'ok'"
    assert shown("a\x1b[31mb", quote=False) == "a\\x1b[31mb"
    assert "\x1b" not in shown("\x1b" * 500, 20, quote=False)
