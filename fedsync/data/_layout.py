"""Layout checks of named arrays: names, shapes and dtypes against what a model expects.

Shared by :class:`~fedsync.data.arrays.FedArrays` (payloads) and :mod:`fedsync.data._state`
(a device's own state): both refuse a mismatch, naming the array, before anything changes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from ..errors import PayloadRejected

__all__ = ["Layout", "METADATA_ROOM", "check_layout", "header_limit", "layout_of"]

Layout = Mapping[str, tuple[tuple[int, ...], np.dtype]]
"""Array name -> (shape, dtype)."""

METADATA_ROOM = 1 << 20
"""Bytes of payload header allowed for metadata on top of the tensors' entries.

Enough for the largest metrics :func:`fedsync.wire.metrics.checked_metrics` accepts
(``MAX_METRICS`` names of ``MAX_METRIC_NAME`` characters, escaped twice).
"""


def layout_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of ``arrays``."""
    return {name: (tuple(a.shape), a.dtype) for name, a in arrays.items()}


def header_limit(expected: Layout) -> int:
    """The largest payload header, in bytes, a payload of layout ``expected`` can have.

    Twice what the tensors' entries take (names, dtypes, shapes, offsets; and
    again for the wire format's per-array metadata) plus room for metadata:
    a peer cannot make this side parse a header much larger than the model's own.
    """
    tensors = 0
    for name, (shape, _) in expected.items():
        quoted = len(json.dumps(name))  # escaped as the header escapes it, or more
        tensors += quoted + 112 + 21 * len(shape) + 2 * quoted + 64  # and its wire format's entry
    return 2 * tensors + METADATA_ROOM


def check_layout(found: Layout, expected: Layout, what: str = "payload", of: str = "the model") -> None:
    """Names, shapes and dtypes of ``found`` against ``expected``.

    Raises:
        PayloadRejected: (a ``ValueError``) other names, or an array of another shape or dtype,
            naming it; ``what`` and ``of`` word the message ("payload arrays do not match the model").
    """
    if found.keys() != expected.keys():
        missing = sorted(expected.keys() - found.keys())
        extra = sorted(found.keys() - expected.keys())
        raise PayloadRejected(f"{what} arrays do not match {of}: missing {missing}, unexpected {extra}")
    for name, (shape, dtype) in found.items():
        want_shape, want_dtype = expected[name]
        if tuple(shape) != tuple(want_shape) or np.dtype(dtype) != want_dtype:
            raise PayloadRejected(
                f"array {name!r}: expected {tuple(want_shape)} {np.dtype(want_dtype).name}, "
                f"{what} has {tuple(shape)} {np.dtype(dtype).name}"
            )
