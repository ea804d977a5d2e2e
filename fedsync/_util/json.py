"""Strict JSON from peers and files, and values shown in error messages: once.

Python's ``json`` accepts what other parsers refuse or read differently: a key given twice (which one wins
differs between parsers), ``NaN`` and ``Infinity``. Everything fedsync reads from a peer or a saved run goes
through :func:`loads_strict`, which refuses both with the caller's own messages. :func:`shown` is how a
peer's value appears in an error: clipped, and with no control character that could reach a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["first_duplicate", "loads_strict", "shown"]


def shown(value: Any, limit: int = 60, *, quote: bool = True) -> str:
    """``value`` as one printable line of at most ``limit`` characters (then ``...``).

    With ``quote`` (the default) its ``repr``; without, its ``str`` with control characters escaped.
    """
    if quote:
        text = repr(value)
    else:
        raw = value if isinstance(value, str) else str(value)
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in raw[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def first_duplicate(pairs: list[tuple[str, Any]]) -> str | None:
    """The first key that appears twice among a JSON object's ``pairs``, or None."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def loads_strict(
    text: str | bytes,
    *,
    duplicate: Callable[[str], Exception],
    constant: Callable[[str], Exception],
    pairs: Callable[[list[tuple[str, Any]]], Any] = dict,
) -> Any:
    """``json.loads(text)``, refusing a key given twice and ``NaN``/``Infinity``/``-Infinity``.

    Args:
        duplicate: builds the error raised for a duplicated key (it is passed the key).
        constant: builds the error raised for a non-finite constant (it is passed its name, e.g. ``"NaN"``).
        pairs: builds each object from its pairs once they passed the duplicate check (default ``dict``).

    Raises:
        json.JSONDecodeError (a ValueError): text that is not JSON.
        whatever ``duplicate`` and ``constant`` build.
    """

    def unique(found: list[tuple[str, Any]]) -> Any:
        key = first_duplicate(found)
        if key is not None:
            raise duplicate(key)
        return pairs(found)

    def refuse(name: str) -> Any:
        raise constant(name)

    return json.loads(text, object_pairs_hook=unique, parse_constant=refuse)
