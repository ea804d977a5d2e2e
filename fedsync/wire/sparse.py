"""Top-k sparse updates: the ``k`` entries of largest magnitude of each floating array, and what was left out.

For *updates* (a device's weights minus the model it received, which the caller computes): of each
floating array's ``n`` entries, :func:`pack_topk` keeps ``k = max(1, ceil(fraction * n))`` (``0`` for
an empty array), those of largest magnitude, ties going to the lower flat index, so the same update
always gives the same bytes. It returns the **residual** beside the payload, the dense array of what
the receiver will not get, for the caller to add to its next update (error feedback).

Each packed array travels as ONE 1-D ``U8`` tensor under its own name: ``k`` uint32 little-endian flat
(C order) indices, strictly increasing, then ``k`` values, float32 (or float16) little-endian, in the
same order; its ``fedsync.wire`` entry is ``{"as": "topk", "k": k, "values": "float32"}``.
:func:`fedsync.wire.compression.unpack` decodes it, with the formats of ``WIRE_DTYPES``, to the dense
array of the model's shape and dtype, zeros where nothing was sent.

A receiver lists ``"topk"`` (one of :data:`SPARSE_FORMATS`) under ``capabilities.wire_formats`` in ``/info``
when it can decode it. docs/protocol.md, "Compressed payloads", has the layout byte for byte.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any

import numpy as np

from .._util.checks import is_int, is_number
from .._util.json import shown
from ..errors import PayloadRejected

__all__ = [
    "SPARSE_FORMATS",
    "TOPK_VALUES",
    "check_blob",
    "check_indices",
    "floating",
    "largest",
    "pack_topk",
    "sendable",
    "topk_count",
    "unpack_topk",
]

SPARSE_FORMATS = ("topk", "stc")
"""The sparse formats: ``topk`` here, ``stc`` (sparse ternary) in :mod:`fedsync.wire.stc`."""
TOPK_VALUES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_INDEX = np.dtype("<u4")
_MOST_ELEMENTS = 2**32  # a uint32 index reaches n - 1
_CHUNK = 1 << 20  # elements scanned at once: temporaries stay a few MiB, whatever the array


def topk_count(n: int, fraction: float) -> int:
    """How many of ``n`` entries :func:`pack_topk` keeps: ``max(1, ceil(fraction * n))``, ``0`` when ``n == 0``.

    ``fraction * n`` is computed on the decimal ``fraction`` is written as (``repr``), so ``0.1`` of 30 is 3,
    not the 4 that float arithmetic (``3.0000000000000004``) would give.

    Raises:
        ValueError: ``fraction`` is not a number in ``(0, 1]``.
    """
    if not is_number(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (0.01 keeps 1 % of each array), got {fraction!r}")
    return min(n, max(1, math.ceil(Fraction(repr(float(fraction))) * n)))


def pack_topk(
    arrays: Mapping[str, np.ndarray], fraction: float, *, values: str = "float32"
) -> tuple[dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """Each floating array's top-k entries packed; the other arrays as they are; the metadata value; the residuals.

    Args:
        arrays: name to array (any shape); the floating ones are packed, the others travel as they are.
        fraction: in ``(0, 1]``, the share of each floating array's entries to send (1.0 sends all).
        values: ``"float32"`` (4 bytes a value) or ``"float16"`` (2).

    Returns:
        ``(packed, wire, residuals)``: ``packed`` maps every name to its array or its 1-D ``uint8`` blob;
        ``wire`` is the JSON value for the metadata key ``fedsync.wire``; ``residuals`` maps each
        floating array's name to an array of its shape and dtype: ``x - sent``, that is ``x`` where
        nothing was sent and, where a value was, what rounding it to ``values`` lost (0 when exact).

    Raises:
        ValueError: ``fraction`` or ``values`` out of range; a floating array holds NaN or infinity, has
            more than 2**32 entries, or keeps a value beyond ``values``' range (float16: 65504).
    """
    if values not in TOPK_VALUES:
        raise ValueError(f"values must be one of {', '.join(TOPK_VALUES)}, got {values!r}")
    topk_count(0, fraction)  # checks fraction even when no array is floating
    value_dtype = TOPK_VALUES[values]
    packed: dict[str, np.ndarray] = {}
    how: dict[str, dict[str, Any]] = {}
    residuals: dict[str, np.ndarray] = {}
    for name, a, flat in floating(arrays, "topk", packed):
        n = flat.size
        k = topk_count(n, fraction)
        index = largest(flat, k)
        kept = flat[index]
        with np.errstate(over="ignore"):
            sent = kept.astype(value_dtype)
        if not np.isfinite(sent).all():
            peak = float(np.abs(kept).max())
            raise ValueError(
                f"array {name!r} sends {peak:g}, beyond {values}'s range; use values='float32'"
                if values == "float16"
                else f"array {name!r} sends {peak:g}, beyond float32's range; send it without topk"
            )
        blob = np.empty(k * (_INDEX.itemsize + value_dtype.itemsize), np.uint8)
        blob[: 4 * k].view(_INDEX)[...] = index
        blob[4 * k :].view(value_dtype)[...] = sent
        residual = flat.copy()
        residual[index] = kept - sent.astype(flat.dtype)
        packed[name] = blob
        how[name] = {"as": "topk", "k": k, "values": values}
        residuals[name] = residual.reshape(a.shape)
    return packed, json.dumps(how, separators=(",", ":")), residuals


def floating(
    arrays: Mapping[str, np.ndarray], kind: str, packed: dict[str, np.ndarray]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, array, flat)`` for each floating array of ``arrays``, flat checked by :func:`sendable`; the
    others go into ``packed`` as they are (they travel unpacked)."""
    for name, a in arrays.items():
        if a.dtype.kind != "f":
            packed[name] = a
            continue
        yield name, a, sendable(name, a, kind)


def sendable(name: str, a: np.ndarray, kind: str) -> np.ndarray:
    """``a`` flat (C order, a view when it can be), checked for a sparse format ``kind`` to index.

    Raises:
        ValueError: more than 2**32 entries (a uint32 index), or NaN or infinity (a payload never carries them).
    """
    flat = np.ascontiguousarray(a).reshape(-1)
    n = flat.size
    if n > _MOST_ELEMENTS:
        raise ValueError(f"array {name!r} has {n} entries; {kind} indexes at most 2**32 (uint32)")
    if not all(np.isfinite(flat[lo : lo + _CHUNK]).all() for lo in range(0, n, _CHUNK)):
        raise ValueError(
            f"array {name!r} contains NaN or infinity, which a payload never carries; "
            "check the training that produced it"
        )
    return flat


def largest(flat: np.ndarray, k: int) -> np.ndarray:
    """The flat indices (int64, increasing) of the ``k`` entries of largest magnitude, ties to the lower index."""
    n = flat.size
    if k == 0:
        return np.empty(0, np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    magnitude = np.abs(flat)
    threshold = np.partition(magnitude, n - k)[n - k]  # the k-th largest magnitude
    above = np.flatnonzero(magnitude > threshold)
    ties: list[np.ndarray] = []
    wanted = k - above.size  # >= 1: the threshold itself is among the k largest
    for lo in range(0, n, _CHUNK):  # at most ceil(n / _CHUNK) turns; stops once enough ties are found
        found = np.flatnonzero(magnitude[lo : lo + _CHUNK] == threshold)[:wanted] + lo
        ties.append(found)
        wanted -= found.size
        if wanted == 0:
            break
    return np.sort(np.concatenate([above, *ties]))


def check_blob(name: str, blob: np.ndarray, kind: str) -> np.ndarray:
    """``blob`` if it is a 1-D uint8 tensor, as a packed ``kind`` array must be (for :func:`unpack`)."""
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise PayloadRejected(
            f"array {name!r}: {kind} travels as one 1-D U8 tensor, got {blob.dtype.name} of shape {list(blob.shape)}"
        )
    return np.ascontiguousarray(blob)


def check_indices(name: str, index: np.ndarray, n: int, kind: str) -> None:
    """Refuse flat ``index`` (uint32) of a ``kind`` blob unless strictly increasing and below ``n``, a chunk at a time.

    Raises:
        PayloadRejected: naming the first index out of order, or the last one if it reaches ``n``.
    """
    k = index.size
    for lo in range(0, max(k - 1, 0), _CHUNK):  # pairs (i, i + 1), a chunk at a time
        step = index[lo + 1 : lo + 1 + _CHUNK] <= index[lo : lo + _CHUNK][: k - 1 - lo]
        if step.any():
            at = lo + int(np.argmax(step)) + 1
            raise PayloadRejected(
                f"array {name!r}: {kind} indices must be strictly increasing, "
                f"index {at} is {int(index[at])} after {int(index[at - 1])}"
            )
    if k and int(index[-1]) >= n:
        raise PayloadRejected(f"array {name!r}: {kind} index {int(index[-1])} is out of range for {n} entries")


def unpack_topk(name: str, blob: np.ndarray, spec: Mapping[str, Any], n: int, target: np.dtype) -> np.ndarray:
    """The dense flat array (``n`` entries of ``target``) a ``topk`` blob stands for, checked before use.

    Raises:
        PayloadRejected: ``values`` not a known type; ``k`` not an integer in ``[1, n]`` (``0`` for an empty
            array); a blob whose length is not ``k * (4 + value size)``; indices not strictly increasing or
            reaching ``n``; a value NaN, infinite, or beyond ``target``'s range.
    """
    k, values = spec.get("k"), spec.get("values")
    if not isinstance(values, str) or values not in TOPK_VALUES:
        raise PayloadRejected(
            f"array {name!r}: topk values must be one of {', '.join(TOPK_VALUES)}, got {shown(values)}"
        )
    least = min(n, 1)
    if not is_int(k) or not least <= k <= n:
        raise PayloadRejected(f"array {name!r}: topk k must be an integer in [{least}, {n}], got {shown(k)}")
    value_dtype = TOPK_VALUES[values]
    blob = check_blob(name, blob, "topk")
    if blob.size != k * (_INDEX.itemsize + value_dtype.itemsize):
        raise PayloadRejected(
            f"array {name!r}: a topk blob of k={k} {values} values is {k * (4 + value_dtype.itemsize)} bytes, "
            f"got {blob.size}"
        )
    index = blob[: 4 * k].view(_INDEX)
    sent = blob[4 * k :].view(value_dtype)
    check_indices(name, index, n, "topk")
    out = np.zeros(n, target)
    with np.errstate(over="ignore", invalid="ignore"):
        out[index] = sent
    bad = ~np.isfinite(out[index])
    if bad.any():
        at = int(np.argmax(bad))
        raise PayloadRejected(f"array {name!r}: topk value {at} is {float(sent[at])!r}, not a finite {target.name}")
    return out
