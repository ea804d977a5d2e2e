"""A device's JSON answers, read as strict JSON: keys unique, every number finite, each refusal naming its key.

Python's ``json`` keeps the last of two equal keys (other parsers keep the first, so a value one side
checked may not be the one the other uses) and reads ``NaN`` and ``Infinity``, which are not JSON.
:class:`~fedsync.transports.remote.Remote` reads every JSON answer (``/info``, an evaluation, secure
aggregation's phases) through :func:`parsed`, and every refusal's body through :func:`refusal`. It is
:func:`fedsync._util.json.loads_strict` plus the key a constant was found under, which the messages a
round records name (``NaN for the key 'repetition'``).

Internal: its names may change without notice.
"""

from __future__ import annotations

import json
from typing import Any

from .._util.json import first_duplicate, shown

__all__ = ["Refused", "parsed", "refusal"]


class Refused(ValueError):
    """Text that Python's ``json`` reads but strict JSON refuses; the message says what and where."""


class Constant:
    """A ``NaN``/``Infinity``/``-Infinity`` met while parsing, held until the object around it names its key."""

    def __init__(self, name: str) -> None:
        self.name = name


def parsed(text: str | bytes) -> Any:
    """``text`` as JSON, with unique keys and no non-finite constant.

    Raises:
        Refused: a key given twice ("the key 'a' twice; keys must be unique"), or a constant
            ("NaN for the key 'loss', not a finite number (JSON has no NaN)").
        ValueError (json.JSONDecodeError), RecursionError: text that is not JSON, or nested too deeply.
    """
    document = json.loads(text, object_pairs_hook=unique, parse_constant=Constant)
    name = constant_in(document)  # one outside any object: `NaN` alone, or in a top-level list
    if name is not None:
        raise Refused(f"{name}, not a finite number (JSON has no {name})")
    return document


def refusal(status: int, text: bytes) -> tuple[str, str, Any]:
    """A device's refusal (``status``, its body's ``text``, already bounded): ``(code, message, JSON object)``.

    A body that is not a strict JSON object with ``"error"`` and ``"message"`` gives
    ``("http_error", "HTTP <status>...: <its text>", None)``: its code is not believed (of an
    ``"error"`` given twice, parsers disagree on which counts). Codes are clipped to 100
    characters, messages to 2000; nothing is raised.
    """
    try:
        detail = parsed(text)
        return str(detail["error"])[:100], str(detail["message"])[:2000], detail
    except Refused as exc:
        return "http_error", f"HTTP {status}, its body refused as not strict JSON ({exc}): {text[:200]!r}", None
    except (ValueError, KeyError, TypeError, RecursionError):
        return "http_error", f"HTTP {status}: {text[:200]!r}", None


def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """One JSON object, refused if a key repeats or a value holds a constant."""
    key = first_duplicate(pairs)
    if key is not None:
        raise Refused(f"the key {shown(key)} twice; keys must be unique")
    for key, value in pairs:
        name = constant_in(value)
        if name is not None:
            raise Refused(f"{name} for the key {shown(key)}, not a finite number (JSON has no {name})")
    return dict(pairs)


def constant_in(value: Any) -> str | None:
    """The name of the first constant that is ``value`` or inside its lists (objects refused theirs as built)."""
    pending = [value]
    while pending:  # a loop, not recursion: lists may nest as deep as the parser allowed
        item = pending.pop()
        if isinstance(item, Constant):
            return item.name
        if isinstance(item, list):
            pending.extend(reversed(item))
    return None
