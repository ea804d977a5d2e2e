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
from .sparse import check_blob, largest, topk_count

__all__ = ["pack_stc", "positions_are_bitmap", "stc_size", "unpack_stc"]

_MU = np.dtype("<f4")
_INDEX = np.dtype("<u4")
_MOST_ELEMENTS = 2**32  # a uint32 index reaches n - 1


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
        ValueError: ``fraction`` out of range; a floating array holds NaN or infinity, or has more than
            2**32 entries.
    """
    topk_count(0, fraction)  # checks fraction even when no array is floating
    packed: dict[str, np.ndarray] = {}
    how: dict[str, dict[str, Any]] = {}
    residuals: dict[str, np.ndarray] = {}
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            packed[name] = a
            continue
        flat = np.ascontiguousarray(a).reshape(-1)
        n = flat.size
        if n > _MOST_ELEMENTS:
            raise ValueError(f"array {name!r} has {n} entries; stc indexes at most 2**32 (uint32)")
        if not np.isfinite(flat).all():
            raise ValueError(
                f"array {name!r} contains NaN or infinity, which a payload never carries; "
                "check the training that produced it"
            )
        index = largest(flat, topk_count(n, fraction))
        index = index[flat[index] != 0]  # a zero is not worth its bit: it would come back as +mu
        kept = flat[index]
        k = index.size
        mu = np.float32(np.abs(kept, dtype=np.float64).mean()) if k else np.float32(0)
        sent = np.where(kept < 0, -mu, mu).astype(flat.dtype)
        blob = np.zeros(stc_size(n, k), np.uint8)
        blob[:4].view(_MU)[0] = mu
        end = 4 + (-(-n // 8) if positions_are_bitmap(n, k) else 4 * k)
        if positions_are_bitmap(n, k):
            bits = np.zeros(n, np.uint8)
            bits[index] = 1
            blob[4:end] = np.packbits(bits, bitorder="little")
        else:
            blob[4:end].view(_INDEX)[...] = index
        blob[end:] = np.packbits((kept < 0).astype(np.uint8), bitorder="little")
        residual = flat.copy()
        residual[index] = kept - sent
        packed[name] = blob
        how[name] = {"as": "stc", "k": k}
        residuals[name] = residual.reshape(a.shape)
    return packed, json.dumps(how, separators=(",", ":")), residuals


def unpack_stc(name: str, blob: np.ndarray, spec: Mapping[str, Any], n: int, target: np.dtype) -> np.ndarray:
    """The dense flat array (``n`` entries of ``target``) an ``stc`` blob stands for, checked before use.

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
    if positions_are_bitmap(n, k):
        bits = np.unpackbits(blob[4:end], bitorder="little")
        if bits[n:].any():
            raise PayloadRejected(f"array {name!r}: stc bitmap sets a bit at or beyond its {n} entries")
        index = np.flatnonzero(bits)
        if index.size != k:
            raise PayloadRejected(f"array {name!r}: stc bitmap sets {index.size} bits, and k is {k}")
    else:
        index = blob[4:end].view(_INDEX)
        step = index[1:] <= index[:-1]
        if step.any():
            at = int(np.argmax(step)) + 1
            raise PayloadRejected(
                f"array {name!r}: stc indices must be strictly increasing, "
                f"index {at} is {int(index[at])} after {int(index[at - 1])}"
            )
        if k and int(index[-1]) >= n:
            raise PayloadRejected(f"array {name!r}: stc index {int(index[-1])} is out of range for {n} entries")
    signs = np.unpackbits(blob[end:], bitorder="little")
    if signs[k:].any():
        raise PayloadRejected(f"array {name!r}: stc sets a sign bit at or beyond its k={k} entries")
    out = np.zeros(n, target)
    magnitude = np.asarray(mu, np.float32).astype(target)
    out[index] = np.where(signs[:k].astype(bool), -magnitude, magnitude)
    return out
