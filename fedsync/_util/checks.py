"""Argument checks, once: the bool-excluding number tests every public constructor needs.

``True`` is an ``int`` to Python; to fedsync a flag is never a count, so every check refuses bools.
The callers keep their own messages: what the value is for, and an example of a right one.
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

__all__ = ["is_int", "is_number", "positive_int", "at_least_one", "positive_seconds"]


def is_int(value: Any) -> TypeGuard[int]:
    """``value`` is a Python ``int`` and not a ``bool`` (a numpy integer is not an ``int``: convert it first)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """``value`` is an ``int`` or a ``float`` and not a ``bool`` (NaN and infinities included: test them apart)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1.

    Raises:
        ValueError: "``name`` must be a positive integer, got ``value``".
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def at_least_one(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (a count of workers or downloads).

    Raises:
        ValueError: "``name`` must be at least 1 (an integer), got ``value``".
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be at least 1 (an integer), got {value!r}")
    return value


def positive_seconds(name: str, value: Any) -> float:
    """``value`` if it is a finite number of seconds above 0.

    Raises:
        ValueError: "``name`` must be a positive number of seconds, got ``value``".
    """
    if not is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value
