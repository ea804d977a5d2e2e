"""Strict JSON from peers and files, and values shown in error messages: once.

Python's ``json`` accepts what other parsers refuse or read differently: a key given twice (which one wins
differs between parsers), ``NaN`` and ``Infinity``. Everything fedsync reads from a peer or a saved run goes
through :func:`loads_strict`, which refuses both with the caller's own messages. :func:`shown` is how a
peer's value appears in an error: clipped, and with no control character that could reach a terminal.
:func:`check_density` bounds what parsing a saved file costs, before it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["PARSE_MULTIPLE", "check_density", "first_duplicate", "loads_strict", "shown"]


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


PARSE_MULTIPLE = 20
"""Parsing JSON that passed :func:`check_density` takes at most about this many times its size in memory."""

_BYTES_PER_CONTAINER = 16  # an empty dict is 64 bytes and a list 56, + 8 for the slot holding it
_BYTES_PER_STRING = 14  # a short str is ~50 bytes + 8 for its slot, an object's member ~170 with its key
_SLACK = 64  # small files are never refused


def check_density(raw: str | bytes | bytearray | memoryview, what: str) -> None:
    """Refuse JSON whose parse would take more than about :data:`PARSE_MULTIPLE` times its size.

    Python's parser turns ``{},`` (3 bytes) into a 64-byte dict and ``"ab",`` into a
    50-byte string: a file of such values costs 20-30 times its size once parsed. Files
    fedsync writes hold at most one object or array per 16 bytes and one string per 14
    (indented, with names and numbers between them; a failure's reason is a sentence), so more of either is refused
    before parsing, in one pass of C code (a brace or quote inside a string counts too:
    the estimate only errs towards refusing files fedsync did not write).

    Raises:
        ValueError: naming ``what``, the counts, and why the file is refused.
    """
    data: str | bytes = raw if isinstance(raw, (str, bytes)) else bytes(raw)
    size = len(data)

    def count(char: str) -> int:
        return data.count(char) if isinstance(data, str) else data.count(char.encode())

    containers = count("{") + count("[")
    if containers > size // _BYTES_PER_CONTAINER + _SLACK:
        raise ValueError(
            f"{what} holds {containers} JSON objects or arrays in {size} bytes, more than one per "
            f"{_BYTES_PER_CONTAINER} bytes: not a file fedsync writes, and parsing it would take over "
            f"{PARSE_MULTIPLE} times its size in memory; refusing it"
        )
    strings = count('"') // 2
    if strings > size // _BYTES_PER_STRING + _SLACK:
        raise ValueError(
            f"{what} holds {strings} JSON strings in {size} bytes, more than one per {_BYTES_PER_STRING} bytes: "
            f"not a file fedsync writes, and parsing it would take over {PARSE_MULTIPLE} times its size in memory; "
            "refusing it"
        )
