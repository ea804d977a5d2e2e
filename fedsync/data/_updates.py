"""A device's reply as its update: the trained weights minus the model it received, optionally top-k.

``FedArrays(updates="delta")`` replies ``y - x`` for every floating array of the model that travels
(the strategy's extra arrays and integer or boolean arrays still travel as values), marked with the
metadata ``fedsync.delta = "1"``, and packed in the round's wire format like weights.
``updates="topk"`` sends only the largest ``top_k`` share of each update's entries
(:mod:`fedsync.wire.sparse`) with **error feedback** (Karimireddy et al. 2019, "Error Feedback Fixes
SignSGD and other Gradient Compression Schemes", Algorithm 2; Lin et al. 2018, Deep Gradient
Compression): the device adds what it did not send last time (its residual, ``residual/<name>`` in its
state) before choosing, and keeps what it does not send now. ``updates="stc"`` sends the same share as
sparse ternary compression (:mod:`fedsync.wire.stc`: each kept entry as its sign and one mean magnitude
per array, Sattler et al. 2019), with the same error feedback.

The coordinator rebuilds ``x + update`` (in float64, rounded once to the array's dtype) before the
strategy sees a reply, so every strategy merges weights as before; an update that would overflow the
model's dtype is that device's failure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from .._util.checks import is_number
from ..errors import PayloadRejected
from ..wire import compression, sparse, stc

__all__ = [
    "UPDATES",
    "added",
    "DELTA_KEY",
    "REQUEST_KEY",
    "RESIDUAL",
    "check_updates",
    "is_delta",
    "rebuilt",
    "reply_arrays",
    "request",
    "requested",
    "residuals",
]

UPDATES = ("delta", "topk", "stc")
SPARSE = ("topk", "stc")
"""The ``updates=`` that send a ``top_k`` share with error feedback (a residual in the device's state)."""
DELTA_KEY = "fedsync.delta"
"""Metadata of a reply whose floating model arrays are updates (value ``"1"``)."""
REQUEST_KEY = "fedsync.updates"
"""Coordinator payload metadata: how it asks devices that did not choose to reply (``{"as": "delta"}`` or
``{"as": "topk", "top_k": 0.01}``, ``"stc"`` likewise; JSON); a device that chose ``updates=`` keeps its choice."""
RESIDUAL = "residual/"
"""Prefix of an error-feedback residual in a device's state."""


def check_updates(updates: Any, top_k: Any) -> tuple[str | None, float | None]:
    """``(updates, top_k)`` checked: ``None``, ``"delta"``, ``"topk"`` or ``"stc"`` (the last two with ``top_k`` in
    ``(0, 1]``, default 0.01).

    Raises:
        ValueError: another value, or a ``top_k`` without ``updates="topk"`` or ``"stc"``.
    """
    if updates is not None and updates not in UPDATES:
        raise ValueError(f"updates must be None (weights), 'delta', 'topk' or 'stc', got {updates!r}")
    if updates not in SPARSE:
        if top_k is not None:
            raise ValueError("top_k= sparsifies updates: give updates='topk' or 'stc' with it")
        return updates, None
    top_k = 0.01 if top_k is None else top_k
    if not is_number(top_k) or not math.isfinite(top_k) or not 0 < top_k <= 1:
        raise ValueError(f"top_k must be a share of each update's entries in (0, 1], e.g. 0.01; got {top_k!r}")
    return updates, float(top_k)


def request(updates: str | None, top_k: float | None) -> dict[str, str]:
    """The metadata a coordinator declared with ``updates=`` adds to its payloads (``{}`` without)."""
    if updates is None:
        return {}
    asked: dict[str, Any] = {"as": updates, **({"top_k": top_k} if top_k is not None else {})}
    return {REQUEST_KEY: json.dumps(asked, separators=(",", ":"))}


def requested(metadata: Mapping[str, str]) -> tuple[str | None, float | None]:
    """What a coordinator's payload asks a device to reply (``(None, None)``: weights), checked.

    Raises:
        PayloadRejected: not a JSON object with ``"as"`` in ``UPDATES`` (and ``top_k`` in ``(0, 1]`` for ``topk`` and
            ``stc``).
    """
    text = metadata.get(REQUEST_KEY)
    if text is None:
        return None, None
    try:
        asked = json.loads(text) if len(text) <= 200 else None
        if not isinstance(asked, dict) or set(asked) - {"as", "top_k"}:
            raise ValueError("not a JSON object of 'as' and 'top_k'")
        return check_updates(asked.get("as"), asked.get("top_k"))
    except (ValueError, RecursionError) as exc:
        raise PayloadRejected(f"payload metadata {REQUEST_KEY!r} is refused: {str(exc)[:120]}") from None


def residuals(layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Zero residuals (``residual/<name>``) for the floating arrays of ``layout``."""
    floats = {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in layout.items()}
    return {RESIDUAL + name: np.zeros(shape, dtype) for name, (shape, dtype) in floats.items() if dtype.kind == "f"}


def reply_arrays(
    trained: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    extras: Mapping[str, np.ndarray],
    state: Mapping[str, np.ndarray],
    top_k: float | None,
    wire_dtype: str | None,
    sparse_as: str = "topk",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays and metadata of a device's reply as updates; for ``top_k``, ``state``'s residuals are updated.

    ``trained``: the model's travelling arrays after ``train``; ``start``: the floating ones received;
    ``extras``: the strategy's arrays (sent as they are). Without ``top_k`` the updates are packed in
    ``wire_dtype`` as weights would be; with it, as ``sparse_as`` says: ``"topk"`` (float16 values when
    ``wire_dtype`` is a 2-byte one) or ``"stc"``.

    Raises:
        ValueError: an update holds NaN or infinity (nothing is sent, the residuals unchanged).
    """
    updates: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore", invalid="ignore"):
        for name, y in trained.items():
            if name in start:
                delta = np.subtract(y, start[name], dtype=np.float64)
                if top_k is not None:
                    delta += state[RESIDUAL + name]
                update = delta.astype(y.dtype)
                if not np.isfinite(update).all():
                    raise ValueError(f"the update of {name!r} is not finite in {y.dtype}; lower the learning rate")
                updates[name] = update
    values = {**trained, **updates}
    metadata = {DELTA_KEY: "1"}
    if top_k is None:
        arrays = {**values, **extras}
        if wire_dtype is not None:
            arrays, metadata[compression.WIRE_KEY] = compression.pack(arrays, wire_dtype)
        return arrays, metadata
    if sparse_as == "stc":
        packed, metadata[compression.WIRE_KEY], left = stc.pack_stc(updates, top_k)
    else:
        kind = "float16" if wire_dtype in ("float16", "bfloat16") else "float32"
        packed, metadata[compression.WIRE_KEY], left = sparse.pack_topk(updates, top_k, values=kind)
    for name, rest in left.items():
        np.copyto(state[RESIDUAL + name], rest)
    return {**values, **packed, **extras}, metadata


def is_delta(metadata: Mapping[str, str]) -> bool:
    """Whether a payload's floating model arrays are updates (``fedsync.delta``), checked.

    Raises:
        PayloadRejected: the key holds anything but ``"1"``.
    """
    value = metadata.get(DELTA_KEY)
    if value is None:
        return False
    if value != "1":
        raise PayloadRejected(f'payload metadata {DELTA_KEY!r} must be "1" when present, got {str(value)[:40]!r}')
    return True


def added(
    update: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], skip: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """``update`` with each floating array in ``base`` (and not in ``skip``) replaced by ``base + update``.

    The others (integer and boolean arrays, a strategy's extras) stay as they are: they travel as values.

    Raises:
        PayloadRejected: a sum leaves its dtype's finite range (:func:`rebuilt`).
    """
    return {
        name: rebuilt(name, a, base[name]) if a.dtype.kind == "f" and name in base and name not in skip else a
        for name, a in update.items()
    }


def rebuilt(name: str, update: np.ndarray, start: np.ndarray) -> np.ndarray:
    """``start + update`` in float64, rounded once to ``start``'s dtype, in ``start``'s shape.

    Raises:
        PayloadRejected: the sum leaves the dtype's finite range (the reply's failure alone).
    """
    total = np.add(np.asarray(start, np.float64).reshape(-1), np.asarray(update, np.float64).reshape(-1))
    limit = float(np.finfo(start.dtype).max)
    if total.size and float(np.abs(total).max()) > limit:
        raise PayloadRejected(f"array {name!r}: the update takes the model beyond {start.dtype}'s range")
    return total.astype(start.dtype).reshape(np.shape(start))
