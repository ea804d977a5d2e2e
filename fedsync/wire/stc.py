"""Sparse ternary compression (STC): the top-k entries of an update, each sent as its sign and one shared magnitude.

Sattler, Wiedemann, Müller and Samek 2019, "Robust and Communication-Efficient Federated Learning From
Non-i.i.d. Data" (IEEE TNNLS), Algorithm 1: of each floating array's ``n`` entries, keep the ``k`` of
largest magnitude (:func:`fedsync.wire.sparse.topk_count` of the fraction, ties to the lower flat index,
entries that are exactly 0 never kept, so ``k`` may be smaller), and replace each by ``sign * mu``, ``mu``
the mean magnitude of the kept entries. A kept entry costs one bit beside its position; the caller keeps
the residual (what the receiver will not get) for its next update (error feedback), which is what keeps
accuracy at these ratios (the paper's non-IID experiments; docs/compression.md measures it here).

Each packed array travels as ONE 1-D ``U8`` tensor under its own name, its ``fedsync.wire`` entry
``{"as": "stc", "k": k}``, and these bytes in order (docs/protocol.md, "Compressed payloads"):

1. ``mu``: float32 little-endian, finite, ``>= 0``, within the array dtype's range;
2. the positions: when ``ceil(n / 8) <= 4 * k``, a **bitmap** of ``ceil(n / 8)`` bytes, bit ``i % 8``
   (least significant first) of byte ``i // 8`` set when flat (C order) entry ``i`` was kept, exactly ``k``
   bits set, none at or beyond ``n``; otherwise ``k`` uint32 little-endian flat **indices**, strictly
   increasing, below ``n`` (whichever is smaller: a bitmap above about 3 % of the entries);
3. the signs: ``ceil(k / 8)`` bytes, bit ``j % 8`` of byte ``j // 8`` set when the ``j``-th kept entry (in
   increasing position) is negative, no bit set at or beyond ``k``.

The entry decodes to ``-mu`` or ``+mu`` (rounded to the array's dtype) at each kept position, 0 elsewhere.
A receiver lists ``"stc"`` under ``capabilities.wire_formats`` in ``/info`` when it decodes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._util.checks import is_int
from .._util.json import shown
from ..errors import PayloadRejected
from .sparse import check_blob, check_indices, floating, largest, topk_count

__all__ = ["pack_stc", "positions_are_bitmap", "stc_size", "unpack_stc"]

_MU = np.dtype("<f4")
_INDEX = np.dtype("<u4")
_MU_MAX = float(np.finfo(_MU).max)
_CHUNK = 1 << 18  # entries decoded at once, a multiple of 8: temporaries stay a few MiB, whatever the array


def positions_are_bitmap(n: int, k: int) -> bool:
    """Whether an STC array of ``n`` entries, ``k`` kept, writes its positions as a bitmap (else as indices)."""
    return -(-n // 8) <= 4 * k


def stc_size(n: int, k: int) -> int:
    """The bytes of an STC blob of ``n`` entries, ``k`` kept: ``mu``, the positions, the signs."""
    positions = -(-n // 8) if positions_are_bitmap(n, k) else 4 * k
    return _MU.itemsize + positions + -(-k // 8)


def pack_stc(
    arrays: Mapping[str, np.ndarray], fraction: float
) -> tuple[dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """Each floating array packed as STC; the other arrays as they are; the metadata value; the residuals.

    Args:
        arrays: name to array (any shape); the floating ones are packed, the others travel as they are.
        fraction: in ``(0, 1]``, the share of each floating array's entries that may be kept.

    Returns:
        ``(packed, wire, residuals)``: ``packed`` maps every name to its array or its 1-D ``uint8`` blob;
        ``wire`` is the JSON value for the metadata key ``fedsync.wire``; ``residuals`` maps each floating
        array's name to an array of its shape and dtype, ``x - sent`` (``x`` where nothing was sent).

    Raises:
        ValueError: ``fraction`` out of range; a floating array holds NaN or infinity, has more than
            2**32 entries, or keeps entries whose mean magnitude is beyond float32's range (``mu``'s type).
    """
    topk_count(0, fraction)  # checks fraction even when no array is floating
    packed: dict[str, np.ndarray] = {}
    how: dict[str, dict[str, Any]] = {}
    residuals: dict[str, np.ndarray] = {}
    for name, a, flat in floating(arrays, "stc", packed):
        n = flat.size
        index = largest(flat, topk_count(n, fraction))
        index = index[flat[index] != 0]  # a zero is not worth its bit: it would come back as +mu
        kept = flat[index]
        k = index.size
        exact = float(np.abs(kept, dtype=np.float64).mean()) if k else 0.0
        if not exact <= _MU_MAX:  # float32 would make it inf: refused by every receiver, a residual of -inf
            raise ValueError(
                f"array {name!r} sends a mean magnitude of {exact:g}, beyond float32's range (stc's mu); "
                "send it without stc"
            )
        mu = np.float32(exact)
        sent = np.where(kept < 0, -mu, mu).astype(flat.dtype)
        blob = np.zeros(stc_size(n, k), np.uint8)
        blob[:4].view(_MU)[0] = mu
        end = 4 + (-(-n // 8) if positions_are_bitmap(n, k) else 4 * k)
        if positions_are_bitmap(n, k):
            _write_bitmap(blob[4:end], index, n)
        else:
            blob[4:end].view(_INDEX)[...] = index
        blob[end:] = np.packbits((kept < 0).astype(np.uint8), bitorder="little")
        residual = flat.copy()
        residual[index] = kept - sent
        packed[name] = blob
        how[name] = {"as": "stc", "k": k}
        residuals[name] = residual.reshape(a.shape)
    return packed, json.dumps(how, separators=(",", ":")), residuals


def _write_bitmap(out: np.ndarray, index: np.ndarray, n: int) -> None:
    """Set bit ``i % 8`` of ``out[i // 8]`` for each ``i`` of ``index`` (increasing), ``_CHUNK`` entries at a time."""
    for lo in range(0, n, _CHUNK):  # ceil(n / _CHUNK) turns; _CHUNK is a multiple of 8: whole bytes
        first, last = np.searchsorted(index, [lo, lo + _CHUNK])
        bits = np.zeros(min(_CHUNK, n - lo), np.uint8)
        bits[index[first:last] - lo] = 1
        out[lo // 8 : lo // 8 + -(-bits.size // 8)] = np.packbits(bits, bitorder="little")


def unpack_stc(name: str, blob: np.ndarray, spec: Mapping[str, Any], n: int, target: np.dtype) -> np.ndarray:
    """The dense flat array (``n`` entries of ``target``) an ``stc`` blob stands for, checked before use.

    Beside the result, the decoder's temporaries stay a few MiB whatever ``n`` and ``k`` (``_CHUNK``
    entries at a time), so a blob costs its receiver about the dense array it stands for.

    Raises:
        PayloadRejected: ``k`` not an integer in ``[0, n]``; a blob whose length is not :func:`stc_size`;
            ``mu`` NaN, infinite, negative or beyond ``target``'s range; a bitmap with other than ``k`` bits
            set or a bit at or beyond ``n``; indices not strictly increasing or reaching ``n``; a sign bit
            at or beyond ``k``.
    """
    k = spec.get("k")
    if not is_int(k) or not 0 <= k <= n:
        raise PayloadRejected(f"array {name!r}: stc k must be an integer in [0, {n}], got {shown(k)}")
    blob = check_blob(name, blob, "stc")
    if blob.size != stc_size(n, k):
        raise PayloadRejected(
            f"array {name!r}: an stc blob of {n} entries, k={k}, is {stc_size(n, k)} bytes, got {blob.size}"
        )
    mu = float(blob[:4].view(_MU)[0])
    limit = float(np.finfo(target).max)
    if not 0 <= mu <= limit:  # False for NaN too
        raise PayloadRejected(f"array {name!r}: stc mu must be a number in [0, {limit:g}], got {mu:g}")
    end = 4 + (-(-n // 8) if positions_are_bitmap(n, k) else 4 * k)
    positions, signs = blob[4:end], blob[end:]
    if positions_are_bitmap(n, k):
        if n % 8 and int(positions[-1]) >> (n % 8):
            raise PayloadRejected(f"array {name!r}: stc bitmap sets a bit at or beyond its {n} entries")
        count = sum(int(np.unpackbits(positions[lo : lo + _CHUNK // 8]).sum()) for lo in range(0, end - 4, _CHUNK // 8))
        if count != k:
            raise PayloadRejected(f"array {name!r}: stc bitmap sets {count} bits, and k is {k}")
    else:
        index = positions.view(_INDEX)
        check_indices(name, index, n, "stc")
    if k % 8 and int(signs[-1]) >> (k % 8):  # the length check leaves only the last byte's high bits
        raise PayloadRejected(f"array {name!r}: stc sets a sign bit at or beyond its k={k} entries")
    out = np.zeros(n, target)
    magnitude = np.asarray(mu, np.float32).astype(target)
    values = np.array([magnitude, -magnitude], target)  # by sign bit
    if positions_are_bitmap(n, k):
        j = 0  # kept entries before this chunk
        for lo in range(0, n, _CHUNK):  # ceil(n / _CHUNK) turns
            bits = np.unpackbits(positions[lo // 8 : lo // 8 + _CHUNK // 8], bitorder="little")
            found = np.flatnonzero(bits[: n - lo])
            found += lo
            out[found] = values[_signs(signs, j, found.size)]
            j += found.size
    else:
        for lo in range(0, k, _CHUNK):  # ceil(k / _CHUNK) turns
            at = index[lo : lo + _CHUNK]
            out[at] = values[_signs(signs, lo, at.size)]
    return out


def _signs(signs: np.ndarray, first: int, count: int) -> np.ndarray:
    """Sign bits ``first`` to ``first + count`` (exclusive) of the packed ``signs``, as 0 or 1 (uint8)."""
    bits = np.unpackbits(signs[first // 8 : -(-(first + count) // 8)], bitorder="little")
    return bits[first % 8 : first % 8 + count]
