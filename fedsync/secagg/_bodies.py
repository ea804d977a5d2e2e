"""The checks of a secure-aggregation phase's JSON body, on the device.

Each refusal is a ``400 secagg_malformed`` :class:`~fedsync.wire.http.ApiError` naming the bad
field, and is raised before anything changes (:mod:`fedsync.secagg.device` runs the phases).

Internal: its names may change without notice.
"""

from __future__ import annotations

from typing import Any

from .._util.checks import is_int
from .._util.json import loads_strict, shown
from ..wire.http import ApiError, ErrorCode
from . import keys


def malformed(message: str) -> ApiError:
    """The refusal of a malformed phase body: ``400 secagg_malformed`` with ``message``."""
    return ApiError(400, ErrorCode.SECAGG_MALFORMED, message)


def parsed(body: bytes) -> Any:
    """``body`` as strict JSON (any value: the phase checks its shape); a key given twice or ``NaN`` is refused."""
    try:
        return loads_strict(
            body,
            duplicate=lambda key: malformed(f"the body has the key {shown(key)} twice; keys must be unique"),
            constant=lambda name: malformed(f"the body holds {name}, not a finite number"),
        )
    except (ValueError, RecursionError):
        raise malformed(f"the body is not JSON: {shown(body[:60])}") from None


def member(body: Any, name: str, kind: type) -> Any:
    """``body[name]``, which must be a ``kind`` (``dict`` or ``list``) in a JSON object."""
    if not isinstance(body, dict) or not isinstance(body.get(name), kind):
        raise malformed(f"the body must be a JSON object with {name!r} a{'n object' if kind is dict else ' list'}")
    return body[name]


def id_list(body: Any, name: str, devices: int, empty: bool = False) -> list[int]:
    """``body[name]`` as sorted distinct device ids 1 to ``devices`` (at least one unless ``empty``)."""
    values = member(body, name, list)
    if len(values) > devices or (not values and not empty):
        raise malformed(f"{name} lists {len(values)} devices; expected 1 to {devices}")
    ids = [bounded_int(v, 1, devices, f"{name} entry") for v in values]
    if len(set(ids)) != len(ids):
        raise malformed(f"{name} lists a device twice")
    return sorted(ids)


def device_id(name: str, devices: int, what: str) -> int:
    """A JSON object key ``name`` as a device id 1 to ``devices``, written in canonical decimal."""
    if not (
        isinstance(name, str)
        and name.isascii()
        and name.isdigit()
        and len(name) <= 5
        and 1 <= int(name) <= devices
        and str(int(name)) == name
    ):
        raise malformed(f"{what} keys must be device ids 1 to {devices} as decimal strings, got {shown(name)}")
    return int(name)


def bounded_int(value: Any, low: int, high: int, what: str) -> int:
    """``value`` if it is an integer (not a bool) from ``low`` to ``high``."""
    if not is_int(value) or not low <= value <= high:
        raise malformed(f"{what} must be an integer from {low} to {high}, got {shown(value)}")
    return value


def unb64(text: Any, size: int, what: str) -> bytes:
    """``text`` decoded from base64 to exactly ``size`` bytes (:func:`fedsync.secagg.keys.unb64`)."""
    try:
        return keys.unb64(text, size, what)
    except ValueError as exc:
        raise malformed(str(exc)) from None
