"""Lossy wire formats for floating arrays: half the bytes, a quarter, or about a seventh.

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
``"int4"``        0.5625  ``|e| <= scale_b / 2``, ``scale_b >= max(|block b|) / 7``
                          (blocks of 64 flat entries, one float32 scale each;
                          plus the rounding to the array's own dtype)
================  ======  =====================================================

An int4 array travels as one 1-D ``U8`` tensor: its blocks' float32 scales, then
its 4-bit codes two to a byte (docs/protocol.md, "Compressed payloads"), so its
receiver must know its shape (``unpack(..., shapes=...)``). Top-k sparse updates,
:mod:`fedsync.wire.sparse`, and sparse ternary ones, :mod:`fedsync.wire.stc`, decode
through :func:`unpack` too.

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
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._util.checks import is_int, is_number
from .._util.json import loads_strict, shown
from ..errors import PayloadRejected
from .sparse import SPARSE_FORMATS, check_blob, unpack_topk
from .stc import unpack_stc

__all__ = [
    "WIRE_DTYPES",
    "WIRE_KEY",
    "INT4_BLOCK",
    "INT4_BLOCKS",
    "pack",
    "unpack",
    "check_wire_dtype",
    "format_of",
    "sparse_arrays",
]

WIRE_DTYPES = ("float16", "bfloat16", "int8", "int4")
WIRE_KEY = "fedsync.wire"
INT4_BLOCK = 64  # entries a scale, by default
INT4_BLOCKS = (8, 4096)  # the block sizes a sender may choose and a receiver accepts, both included
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_CHUNK_BLOCKS = 1 << 18  # entries (about) packed or unpacked at once: temporaries stay about 10 MiB


def check_wire_dtype(wire_dtype: str | None) -> str | None:
    """``wire_dtype`` if it is one fedsync knows, else a ValueError listing them."""
    if wire_dtype is not None and wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {', '.join(WIRE_DTYPES)} or None, got {wire_dtype!r}")
    return wire_dtype


def pack(
    arrays: Mapping[str, np.ndarray], wire_dtype: str, *, block: int = INT4_BLOCK
) -> tuple[dict[str, np.ndarray], str]:
    """Floating arrays converted to ``wire_dtype``; the rest as they are; and the metadata value.

    ``block``: for ``"int4"``, the entries that share a scale, in ``INT4_BLOCKS`` (8 to 4096).
    An int4 array becomes a 1-D ``uint8`` blob (its shape is the receiver's to know).

    Raises:
        ValueError: a floating array holds NaN or infinity (int8 would turn them
            into 0, hiding them from the receiver's check); for float16, a
            value beyond float16's range; for int4, a block size out of range or a
            value beyond ``7 * float32's largest``.
    """
    if wire_dtype == "int4" and (not is_int(block) or not INT4_BLOCKS[0] <= block <= INT4_BLOCKS[1]):
        raise ValueError(
            f"block must be an integer in [{INT4_BLOCKS[0]}, {INT4_BLOCKS[1]}] (64 is usual), got {block!r}"
        )
    packed: dict[str, np.ndarray] = {}
    how: dict[str, dict[str, Any]] = {}
    for name, a in arrays.items():
        compressible = a.dtype.kind == "f" and (wire_dtype in ("int8", "int4") or a.dtype.itemsize > 2)
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
        elif wire_dtype == "int4":
            packed[name] = _to_int4(name, a, block)
            how[name] = {"as": "int4", "block": block}
        else:
            peak = float(np.abs(a).max()) if a.size else 0.0
            scale = peak / 127.0 if peak / 127.0 > 0 else 1.0  # a subnormal peak's scale would underflow to 0
            packed[name] = np.rint(a / scale).astype(np.int8)
            how[name] = {"as": "int8", "scale": scale}
    return packed, json.dumps(how, separators=(",", ":"))


def unpack(
    arrays: Mapping[str, np.ndarray],
    wire: str,
    expected: Mapping[str, np.dtype],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, np.ndarray]:
    """The arrays in the ``expected`` dtypes (by name), unpacked as the metadata value ``wire`` says.

    ``shapes`` (by name) is needed for the formats whose blob does not keep the array's shape
    (``int4``, ``topk``): each such array is decoded to exactly that shape, and nothing is allocated
    before the blob's length is checked against it.

    Raises:
        PayloadRejected: ``wire`` is not a JSON object of objects, names an array that is not there or not
            floating, a format not in ``WIRE_DTYPES`` or ``SPARSE_FORMATS``, an entry with other keys than
            its format's, an array not of its format's dtype, an int8 scale that is not a number in
            ``(0, max / 127]``, or a blob that does not check out (see docs/protocol.md, "Compressed
            payloads"); or an int4 or topk array whose shape ``shapes`` does not give.
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
                f"'as' naming one of {', '.join(WIRE_DTYPES + SPARSE_FORMATS)}"
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
        elif kind in _SHAPED:
            shape = _shape_of(name, kind, shapes)
            flat = _SHAPED[kind](name, a, spec, math.prod(shape), target)
            out[name] = flat.reshape(shape)
        else:
            raise PayloadRejected(f"array {name!r}: {kind!r} cannot be carried as {a.dtype.name}")
    return out


_SPEC_KEYS = {
    "float16": {"as"},
    "bfloat16": {"as"},
    "int8": {"as", "scale"},
    "int4": {"as", "block"},
    "topk": {"as", "k", "values"},
    "stc": {"as", "k"},
}


def _shape_of(name: str, kind: str, shapes: Mapping[str, tuple[int, ...]] | None) -> tuple[int, ...]:
    """The shape the caller expects for ``name``, which an int4 or topk blob needs to be read."""
    shape = None if shapes is None else shapes.get(name)
    if shape is None:
        raise PayloadRejected(
            f"array {name!r} is packed as {kind}, which needs the array's shape, and this receiver "
            "gave none: it cannot decode this format (pass shapes= to fedsync.wire.compression.unpack, "
            "or send it another wire format)"
        )
    shape = tuple(shape)
    if not all(is_int(d) and d >= 0 for d in shape):
        raise ValueError(f"the shape of array {name!r} must be a tuple of integers >= 0, got {shape!r}")
    return shape


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


def sparse_arrays(metadata: Mapping[str, str]) -> list[str]:
    """The arrays a payload packs in a sparse format (``SPARSE_FORMATS``: ``topk``, ``stc``), sorted.

    For a payload :func:`unpack` already accepted: anything else reads as none.
    """
    try:
        how = json.loads(metadata[WIRE_KEY]) if WIRE_KEY in metadata else {}
        return sorted(name for name, spec in how.items() if spec.get("as") in SPARSE_FORMATS)
    except (ValueError, TypeError, AttributeError, RecursionError):
        return []


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


def _float32_above(exact: np.ndarray) -> np.ndarray:
    """The float32 nearest each float64 of ``exact`` (>= 0) but not below it; infinity beyond float32's range.

    Rounding up keeps ``|x| / scale <= 7`` even where float32 is coarse (subnormal scales), so every
    code fits in [-7, 7] and the error stays within ``scale / 2``; only a zero peak gives a zero scale.
    """
    with np.errstate(over="ignore"):
        near = exact.astype(np.float32)
        return np.where(near.astype(np.float64) < exact, np.nextafter(near, np.float32(np.inf)), near)


def _int4_largest_scale(target: np.dtype) -> float:
    """The largest scale a sender writes for an array of ``target`` dtype (its largest value / 7, rounded up)."""
    largest = _float32_above(np.array([float(np.finfo(target).max) / 7]))[0]
    return float(largest) if np.isfinite(largest) else _FLOAT32_MAX


def _int4_step(block: int) -> int:
    """Entries handled at once: whole blocks, an even number of entries (whole bytes of codes)."""
    return block * max(2, (_CHUNK_BLOCKS // block) & ~1)


def _to_int4(name: str, a: np.ndarray, block: int) -> np.ndarray:
    """The int4 blob of ``a`` (finite): float32 LE scales of every block, then its codes, low nibble first."""
    flat = np.ascontiguousarray(a).reshape(-1)
    n = flat.size
    blocks = -(-n // block)
    blob = np.empty(4 * blocks + (n + 1) // 2, np.uint8)
    scales, codes = blob[: 4 * blocks].view("<f4"), blob[4 * blocks :]
    step = _int4_step(block)
    for lo in range(0, n, step):  # ceil(n / step) turns
        x = flat[lo : lo + step].astype(np.float64)
        peaks = np.maximum.reduceat(np.abs(x), np.arange(0, x.size, block))
        scale = _float32_above(peaks / 7)
        if not np.isfinite(scale).all():
            raise ValueError(
                f"array {name!r} holds {float(peaks.max()):g}, beyond int4's 7 * float32's largest; "
                "send it with wire_dtype=None"
            )
        first = lo // block
        scales[first : first + scale.size] = scale
        each = np.repeat(scale.astype(np.float64), block)[: x.size]
        q = np.zeros(x.size)
        np.divide(x, each, out=q, where=each > 0)  # a block of zeros has scale 0 and codes 0
        nibbles = (np.clip(np.rint(q), -7, 7).astype(np.int8) & 0x0F).astype(np.uint8)
        if nibbles.size % 2:
            nibbles = np.append(nibbles, np.uint8(0))  # the last byte's high nibble is 0
        codes[lo // 2 : lo // 2 + nibbles.size // 2] = nibbles[0::2] | (nibbles[1::2] << 4)
    return blob


def _from_int4(name: str, blob: np.ndarray, spec: Mapping[str, Any], n: int, target: np.dtype) -> np.ndarray:
    """The flat array (``n`` entries of ``target``) an int4 blob stands for, checked before use."""
    block = spec.get("block")
    least, most = INT4_BLOCKS
    if not is_int(block) or not least <= block <= most:
        raise PayloadRejected(f"array {name!r}: int4 block must be an integer in [{least}, {most}], got {shown(block)}")
    blob = check_blob(name, blob, "int4")
    blocks = -(-n // block)
    size = 4 * blocks + (n + 1) // 2
    if blob.size != size:
        raise PayloadRejected(
            f"array {name!r}: an int4 blob of {n} entries in blocks of {block} is {size} bytes "
            f"({blocks} scales, then {(n + 1) // 2} bytes of codes), got {blob.size}"
        )
    scales, codes = blob[: 4 * blocks].view("<f4"), blob[4 * blocks :]
    largest = _int4_largest_scale(target)
    for lo in range(0, blocks, _CHUNK_BLOCKS):  # ceil(blocks / _CHUNK_BLOCKS) turns
        part = scales[lo : lo + _CHUNK_BLOCKS]
        bad = np.signbit(part) | ~(part <= largest)
        if bad.any():
            at = int(np.argmax(bad))
            value = float(part[at])
            why = (
                "not finite" if not math.isfinite(value) else "negative" if value < 0 or part[at] == 0 else "too large"
            )
            raise PayloadRejected(
                f"array {name!r}: int4 scale of block {lo + at} is {value!r}, {why}: "
                f"a scale is a float32 in [0, {largest:g}] for {target.name}"
            )
    if n % 2 and codes[-1] >> 4:
        raise PayloadRejected(f"array {name!r}: the unused high nibble of its last int4 byte must be 0")
    out = np.empty(n, target)
    most_value = float(np.finfo(target).max)
    step = _int4_step(block)
    for lo in range(0, n, step):  # ceil(n / step) turns
        m = min(step, n - lo)
        part = codes[lo // 2 : lo // 2 + (m + 1) // 2]
        q = np.empty(2 * part.size, np.int8)
        q[0::2], q[1::2] = part & 0x0F, part >> 4
        q = q[:m]
        eights = q == 8
        if eights.any():
            raise PayloadRejected(
                f"array {name!r}: int4 code -8 (nibble 0x8) at entry {lo + int(np.argmax(eights))}, "
                "which a sender never writes (codes are -7 to 7)"
            )
        values = ((q ^ 8) - 8).astype(np.float64)  # 4-bit two's complement
        values *= np.repeat(scales[lo // block : lo // block + -(-m // block)].astype(np.float64), block)[:m]
        # 7 * (max / 7 rounded up) may pass the dtype's max by a hair: it is the max.
        out[lo : lo + m] = np.clip(values, -most_value, most_value)
    return out


_SHAPED = {"int4": _from_int4, "topk": unpack_topk, "stc": unpack_stc}
"""The formats whose 1-D U8 blob needs the array's shape to be read, and their checked decoders."""
