"""The download as a delta: the coordinator sends the model as its difference from a view the device holds.

A *view* is the model as a device loaded it: the travelling model arrays after decoding (so after any
lossy wire format). ``FedArrays(download="delta")`` on the coordinator marks its payloads
``fedsync.view = "1"``: a device that decodes the ``delta`` format keeps what it loads as its view,
named by :func:`view_id`. The next round, a device the coordinator believes holds view ``b`` (one of the
last :data:`MAX_VIEWS` it made) gets ``fedsync.base = b``: its floating model arrays hold ``x - view_b``,
packed in the round's wire format, as top-k (``download_top_k``), or as sparse ternary
(``download="stc"``, :mod:`fedsync.wire.stc`), and the device loads
``view_b + update`` (float64, rounded once), exactly as the coordinator computes it, which becomes
both sides' new view. What the lossy download did not carry this round is in the next round's
difference: error feedback for free. A device that does not hold ``b`` (it restarted) answers
``409 unknown_base`` and gets the whole model instead, in the same round.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PayloadRejected, UnknownBase
from ..wire import compression, sparse, stc
from . import _updates
from ._sharing import content_digest

__all__ = [
    "VIEW_KEY",
    "BASE_KEY",
    "DOWNLOADS",
    "MAX_VIEWS",
    "VIEW",
    "VIEW_ID",
    "UnknownBase",
    "view_id",
    "base_of",
    "Views",
]

VIEW_KEY = "fedsync.view"
"""Coordinator payload metadata ``"1"``: keep what you load as your view, a base for a later delta."""
BASE_KEY = "fedsync.base"
"""Coordinator payload metadata: the floating model arrays are a difference from the view so named."""
MAX_VIEWS = 3
"""Views the coordinator keeps (model copies); a device holding an older one gets the whole model."""
VIEW = "view/"
"""Prefix of a device's view in its state (with :data:`VIEW_ID`)."""
VIEW_ID = "view.id"
"""The view's id in a device's state: its 71 ASCII bytes (``sha256:`` and 64 hex digits) as uint8."""
_ID = re.compile(r"sha256:[0-9a-f]{64}")


view_id = content_digest
"""A view's id: ``sha256:<64 hex>`` of its arrays (:func:`~fedsync.data._sharing.content_digest`)."""


def is_view(name: str) -> bool:
    """Whether a device-state entry belongs to its view (``view/<name>`` or ``view.id``)."""
    return name.startswith(VIEW) or name == VIEW_ID


def check_download(download: Any, top_k: Any) -> tuple[str | None, float | None]:
    """``(download, download_top_k)`` checked: ``None``, ``"delta"`` (a top-k share optional) or ``"stc"``
    (a share, default 0.01).

    Raises:
        ValueError: another value, naming what is accepted.
    """
    if download not in DOWNLOADS:
        raise ValueError(f"download must be None (the whole model), 'delta' or 'stc', got {download!r}")
    if download == "stc":
        return download, _updates.check_updates("stc", top_k)[1]
    if top_k is None:
        return download, None
    if download != "delta":
        raise ValueError("download_top_k= sparsifies the download's delta: give download='delta' or 'stc' with it")
    return download, _updates.check_updates("topk", top_k)[1]


DOWNLOADS = (None, "delta", "stc")
"""The ``download=`` a coordinator takes: the whole model, or a delta from the device's view (dense or top-k;
sparse ternary)."""

REPLY_KEY = "fedsync.reply_format"
"""Coordinator payload metadata: the wire format to reply in, when the payload's own does not say (a top-k delta)."""


def reply_format(metadata: Mapping[str, str]) -> str | None:
    """The wire format a device replies in: ``fedsync.reply_format`` if given (checked), else the payload's own.

    Raises:
        PayloadRejected: a ``fedsync.reply_format`` that is no wire format.
    """
    asked = metadata.get(REPLY_KEY)
    if asked is None:
        return compression.format_of(metadata)
    if asked not in compression.WIRE_DTYPES:
        raise PayloadRejected(f"payload metadata {REPLY_KEY!r} must be one of {', '.join(compression.WIRE_DTYPES)}")
    return asked


def base_of(metadata: Mapping[str, str]) -> str | None:
    """The base view a payload is a delta from, checked; ``None`` for a whole model.

    Raises:
        PayloadRejected: not ``sha256:`` and 64 lowercase hex digits.
    """
    base = metadata.get(BASE_KEY)
    if base is not None and not (isinstance(base, str) and _ID.fullmatch(base)):
        raise PayloadRejected(f"payload metadata {BASE_KEY!r} must be 'sha256:' and 64 hex digits")
    return base


class Views:
    """The coordinator's last views, by id, oldest first; at most :data:`MAX_VIEWS` (model copies)."""

    def __init__(self) -> None:
        self.kept: OrderedDict[str, dict[str, np.ndarray]] = OrderedDict()

    @staticmethod
    def sparse_as(fed: Any, formats: list[str]) -> str | None:
        """How ``fed``'s delta download reaches a device decoding ``formats``: ``"stc"``, ``"topk"``, ``None`` (dense).

        A device that does not list the coordinator's sparse format gets the dense delta in ``wire_dtype``.
        """
        wanted = "stc" if fed.download == "stc" else "topk" if fed.download_top_k is not None else None
        return wanted if wanted in formats else None

    def payload(self, fed: Any, base: str | None, repetition: int, sparse_as: str | None) -> tuple[Any, str]:
        """The payload for a device holding view ``base`` (``None``: none known), and the view it will hold.

        ``sparse_as``: ``"topk"`` or ``"stc"`` packs the delta's ``fed.download_top_k`` share so; ``None``
        packs it dense in ``fed.wire_dtype``. A base this coordinator no longer keeps gets the whole model.
        The new view is kept.
        """
        model = fed._shared_part(fed.get_arrays())
        held = self.kept.get(base) if base is not None else None
        if held is None:
            payload = fed.serialize_as(repetition, fed.wire_dtype, extra={VIEW_KEY: "1"})
            arrays, _ = fed.decode(payload)
            view = {name: np.array(arrays[name], copy=True) for name in model}
        else:
            delta = {}
            for name, a in model.items():
                delta[name] = np.subtract(a, held[name], dtype=np.float64).astype(a.dtype) if a.dtype.kind == "f" else a
            extra = {VIEW_KEY: "1", BASE_KEY: base}
            if sparse_as is not None:
                if fed.wire_dtype is not None:
                    extra[REPLY_KEY] = fed.wire_dtype  # the devices reply in it, as to a payload packed in it
                floats = {n: d for n, d in delta.items() if d.dtype.kind == "f"}
                pack = stc.pack_stc if sparse_as == "stc" else sparse.pack_topk
                packed, extra[compression.WIRE_KEY], _ = pack(floats, fed.download_top_k)  # the rest: next round's
                delta.update(packed)
                payload = fed.serialize_arrays(repetition, delta, None, extra)
            else:
                payload = fed.serialize_arrays(repetition, delta, fed.wire_dtype, extra)
            arrays, _ = fed.decode(payload, base_view=held)
            view = {name: np.array(arrays[name], copy=True) for name in model}
        new = view_id(view)
        self.kept[new] = view
        self.kept.move_to_end(new)
        while len(self.kept) > MAX_VIEWS:
            self.kept.popitem(last=False)
        return payload, new
