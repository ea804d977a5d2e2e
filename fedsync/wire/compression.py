"""Lossy wire formats for floating arrays: half the bytes, or a quarter.

``FedArrays(..., wire_dtype=...)`` sends its floating arrays in one of these
formats, in both directions; integer and boolean arrays always travel as they
are, and arrays are merged at full precision after decoding. Error bounds, per
element ``x`` of a tensor ``t``:

================  ======  =====================================================
wire_dtype        bytes   error after a round trip
================  ======  =====================================================
``"float16"``     2       ``|e| <= 2**-11 * |x|`` for ``6.1e-5 <= |x| <= 65504``;
                          ``|e| <= 2**-25`` below; larger values are refused
``"bfloat16"``    2       ``|e| <= 2**-8 * |x|`` (float32's range, normal numbers;
                          float32's largest saturate at bfloat16's 3.39e38)
``"int8"``        1       ``|e| <= max(|t|) / 254`` (linear, one scale per tensor)
================  ======  =====================================================

NaN and infinity are never packed (``pack`` raises): int8 has no way to carry
them, and a payload holding them would be refused by its receiver anyway.

Each payload says how every array was packed (metadata ``fedsync.wire``), and a
receiver decodes every format of ``WIRE_DTYPES``, whatever its own ``wire_dtype``:
the sender chooses (the coordinator, from each device's ``/info`` capabilities;
a device replies in the format it received), and the format is not part of the
specs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._util.checks import is_number
from .._util.json import loads_strict, shown
from ..errors import PayloadRejected

__all__ = ["WIRE_DTYPES", "WIRE_KEY", "pack", "unpack", "check_wire_dtype", "format_of"]

WIRE_DTYPES = ("float16", "bfloat16", "int8")
WIRE_KEY = "fedsync.wire"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_wire_dtype(wire_dtype: str | None) -> str | None:
    """``wire_dtype`` if it is one fedsync knows, else a ValueError listing them."""
    if wire_dtype is not None and wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)} or None, got {wire_dtype!r}")
    return wire_dtype


def pack(arrays: Mapping[str, np.ndarray], wire_dtype: str) -> tuple[dict[str, np.ndarray], str]:
    """Floating arrays converted to ``wire_dtype``; the rest as they are; and the metadata value.

    Raises:
        ValueError: a floating array holds NaN or infinity (int8 would turn them
            into 0, hiding them from the receiver's check), or, for float16, a
            value beyond float16's range.
    """
    packed: dict[str, np.ndarray] = {}
    how: dict[str, dict[str, Any]] = {}
    for name, a in arrays.items():
        compressible = a.dtype.kind == "f" and (wire_dtype == "int8" or a.dtype.itemsize > 2)
        if not compressible:
            packed[name] = a
            continue
        if not np.isfinite(a).all():
            raise ValueError(
                f"array {name!r} contains NaN or infinity, which a payload "
                "never carries; check the training that produced it"
            )
        if wire_dtype == "float16":
            peak = float(np.abs(a).max()) if a.size else 0.0
            if peak > _FLOAT16_MAX:
                raise ValueError(
                    f"array {name!r} holds {peak:g}, beyond float16's {_FLOAT16_MAX:g}; use wire_dtype='bfloat16'"
                )
            packed[name] = a.astype(np.float16)
            how[name] = {"as": "float16"}
        elif wire_dtype == "bfloat16":
            packed[name] = _to_bfloat16_bits(a)
            how[name] = {"as": "bfloat16"}
        else:
            peak = float(np.abs(a).max()) if a.size else 0.0
            scale = peak / 127.0 if peak / 127.0 > 0 else 1.0  # a subnormal peak's scale would underflow to 0
            packed[name] = np.rint(a / scale).astype(np.int8)
            how[name] = {"as": "int8", "scale": scale}
    return packed, json.dumps(how)


def unpack(arrays: Mapping[str, np.ndarray], wire: str, expected: Mapping[str, np.dtype]) -> dict[str, np.ndarray]:
    """The arrays in the ``expected`` dtypes (by name), unpacked as the metadata value ``wire`` says.

    Raises:
        PayloadRejected: ``wire`` is not a JSON object of objects, names an array that is not there or not
            floating, a format not in ``WIRE_DTYPES``, an array not of its format's dtype, or an int8
            scale that is not a number in ``(0, max / 127]``.
    """
    try:
        how = loads_strict(
            wire,
            duplicate=lambda key: PayloadRejected(f"payload metadata {WIRE_KEY!r} names the key {shown(key)} twice"),
            constant=lambda name: PayloadRejected(f"payload metadata {WIRE_KEY!r} holds {name}, not a finite number"),
        )
    except PayloadRejected:
        raise
    except (ValueError, RecursionError):
        how = None
    # A real check, not an assert: `python -O` removes asserts.
    if not isinstance(how, dict) or not all(isinstance(v, dict) for v in how.values()):
        raise PayloadRejected(f"payload metadata {WIRE_KEY!r} is not a JSON object of objects")
    out = dict(arrays)
    for name, spec in how.items():
        if name not in arrays or name not in expected:
            raise PayloadRejected(f"payload packs unknown array {name[:60]!r}")
        kind, a, target = spec.get("as"), arrays[name], np.dtype(expected[name])
        keys = _SPEC_KEYS.get(kind, {"as"}) if isinstance(kind, str) else {"as"}
        if not isinstance(kind, str) or set(spec) != keys:
            raise PayloadRejected(
                f"array {name!r}: wire metadata {shown(spec)} must have exactly the keys {sorted(keys)}, "
                f"'as' naming one of {', '.join(WIRE_DTYPES)}"
            )
        if target.kind != "f":
            raise PayloadRejected(f"array {name!r} is {target.name} here; only floating arrays are packed")
        if kind == "float16" and a.dtype == np.float16:
            out[name] = a.astype(target)
        elif kind == "bfloat16" and a.dtype == np.uint16:
            out[name] = _from_bfloat16_bits(a).astype(target, copy=False)
        elif kind == "int8" and a.dtype == np.int8:
            scale = spec.get("scale")
            # pack writes |int8| <= 127, so an honest scale is at most the dtype's max / 127 and
            # unpacks finite; a -128 under the largest scale overflows, which the NaN/inf scan refuses.
            largest = float(np.finfo(target).max) / 127
            if not is_number(scale) or not 0 < scale <= largest:
                raise PayloadRejected(
                    f"array {name!r}: int8 scale must be a number in (0, {largest:g}], got {shown(scale)}"
                )
            out[name] = _scaled(a, float(scale), target)
        else:
            raise PayloadRejected(f"array {name!r}: {kind!r} cannot be carried as {a.dtype.name}")
    return out


_SPEC_KEYS = {"float16": {"as"}, "bfloat16": {"as"}, "int8": {"as", "scale"}}


def format_of(metadata: Mapping[str, str]) -> str | None:
    """The wire format a payload's arrays came in (one of them if it mixes), ``None`` for arrays as they are.

    For a payload :func:`unpack` already accepted: anything else reads as ``None``.
    """
    try:
        how = json.loads(metadata[WIRE_KEY]) if WIRE_KEY in metadata else {}
        kinds = sorted(spec["as"] for spec in how.values() if spec.get("as") in WIRE_DTYPES)
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None
    return kinds[0] if kinds else None


def _scaled(a: np.ndarray, scale: float, target: np.dtype) -> np.ndarray:
    """``a * scale`` as ``target``, multiplied in float64: 127 * (max / 127) rounds back to max, not to inf."""
    out = np.empty(a.shape, target)
    with np.errstate(over="ignore"):  # only a -128 (never packed) can overflow: the NaN/inf scan refuses it
        np.multiply(a, scale, out=out, dtype=np.float64, casting="unsafe")
    return out


def _to_bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float -> the upper 16 bits of float32, rounded to nearest even (as torch does)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    # Finite values above bfloat16's largest round up to infinity: keep them at the largest.
    overflowed = (out & np.uint16(0x7FFF)) == np.uint16(0x7F80)
    out[overflowed] = (out[overflowed] & np.uint16(0x8000)) | np.uint16(0x7F7F)
    return out


def _from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
