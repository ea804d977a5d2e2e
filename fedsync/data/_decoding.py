"""How a FedArrays reads a payload: decoded, unpacked from its wire format, checked against the model.

A mixin of :class:`~fedsync.data.arrays.FedArrays` (with :class:`~fedsync.data._payload.PayloadParts`):
every payload, the coordinator's on a device and a device's reply on the coordinator, goes through
:meth:`Decoding.decode` before anything of it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import PayloadRejected
from ..wire import codec, compression
from ..wire.reports import read_report
from ..wire.shapes import DeviceReport
from . import _updates, _views
from ._layout import Layout, check_layout, header_limit
from ._payload import PayloadParts

__all__ = ["Decoding"]


class Decoding(PayloadParts):
    """``decode`` and the checks under it."""

    def decode(
        self,
        encoding: Any,
        *,
        finite: bool | None = False,
        merging: bool = False,
        base_view: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], DeviceReport]:
        """A payload's arrays (unpacked from ``wire_dtype``) and its report, checked against this model.

        Returns ``(arrays, report)``: arrays by name, views of ``encoding`` (no copy) of this model's shapes
        and dtypes, and the :class:`~fedsync.wire.shapes.DeviceReport` its metadata carries. Nothing changes:
        secure aggregation's device reads the received model with it.

        Raises:
            CodecError: not a valid payload.
            PayloadRejected: text, other names, shapes or dtypes, a bad report, or (``finite``) NaN or infinity.

        ``finite`` also scans every value for NaN and infinity. Only ``check`` does:
        fedsync's device and coordinator call it before ``receive``/``merge``, and a
        second scan costs a pass over the whole model. ``None`` (merges): only
        if the payload has samples, since one without weighs nothing. ``merging``: a device's reply,
        whose updates (``fedsync.delta``) are rebuilt into weights; elsewhere a payload of updates is refused.
        A model sent as a delta from a view (``fedsync.base``) is rebuilt from ``base_view`` (the
        coordinator's) or this device's own view (:class:`~fedsync.data._views.UnknownBase` if it holds another).
        """
        arrays, metadata, expected = self._opened(encoding)
        return self._checked(arrays, metadata, finite=finite, expected=expected, merging=merging, base_view=base_view)

    def _opened(self, encoding: Any) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, Any]]:
        """A binary payload's raw arrays and metadata (a header within this model's bound), and the layout."""
        if isinstance(encoding, str):
            raise PayloadRejected(f"{type(self).__name__} expects a binary payload, got text")
        expected = self._payload_layout()
        arrays, metadata = codec.decode(encoding, limit=self._header_limit(expected))
        return arrays, metadata, expected

    def _checked(
        self,
        arrays: dict[str, np.ndarray],
        metadata: Mapping[str, str],
        *,
        finite: bool | None,
        expected: Mapping[str, tuple[tuple[int, ...], np.dtype]] | None = None,
        merging: bool = False,
        base_view: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], DeviceReport]:
        """Decoded arrays unpacked from their wire format and checked against this model, with their report."""
        expected = self._payload_layout() if expected is None else expected
        report = read_report(metadata)
        if compression.WIRE_KEY in metadata:
            dtypes = {name: np.dtype(dtype) for name, (_, dtype) in expected.items()}
            shapes = {name: tuple(shape) for name, (shape, _) in expected.items()}
            arrays = compression.unpack(arrays, metadata[compression.WIRE_KEY], dtypes, shapes=shapes)
            sparse = compression.sparse_arrays(metadata)
            if sparse and _views.BASE_KEY not in metadata and _updates.DELTA_KEY not in metadata:
                raise PayloadRejected(
                    f"array {sparse[0]!r} is packed sparse (topk, stc), which carries an update or a download's "
                    f"difference only: this payload is neither ({_updates.DELTA_KEY}, {_views.BASE_KEY})"
                )
        self._check_layout({name: (a.shape, a.dtype) for name, a in arrays.items()}, expected)
        if finite or (finite is None and report["samples"] > 0):
            for name, a in arrays.items():
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise PayloadRejected(f"array {name!r} contains NaN or infinity")
        if not merging:  # a coordinator's payload: refused here, before anything changes
            _views.reply_format(metadata)
            _updates.requested(metadata)
        origin = _views.base_of(metadata)
        if origin is not None:
            if merging:
                raise PayloadRejected(
                    f"a reply cannot be a delta from a view ({_views.BASE_KEY}); send weights or updates"
                )
            if base_view is None:
                held = getattr(self, "view", None)
                if held is None or held[0] != origin:
                    raise _views.UnknownBase(
                        f"the model is a delta from view {origin[:23]}..., and this device holds "
                        f"{'no view' if held is None else held[0][:23] + '...'}: send the whole model"
                    )
                base_view = held[1]
            arrays = _updates.added(arrays, base_view)  # the view's arrays: the model's that travel
        if _updates.is_delta(metadata):
            if not merging:
                raise PayloadRejected(f"a payload of updates ({_updates.DELTA_KEY}) is a device's reply, not a model")
            arrays = _updates.added(arrays, self._payload_arrays(), skip=self.extra_arrays)
        return arrays, report

    def _header_limit(self, expected: Layout) -> int:
        """The largest payload header a payload of this model can have (:func:`~fedsync.data._layout.header_limit`)."""
        return header_limit(expected)

    def _check_layout(self, found: Layout, expected: Layout) -> None:
        """A payload's names, shapes and dtypes against this model's (:func:`~fedsync.data._layout.check_layout`)."""
        check_layout(found, expected)
