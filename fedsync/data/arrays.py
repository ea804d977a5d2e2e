"""FedArrays: a FedData over named numpy arrays, trained on devices, merged by FedAvg.

This is the common base of framework adapters: a subclass only says how to get
and set its model's arrays (:meth:`FedArrays.get_arrays`,
:meth:`FedArrays.set_arrays`) and what its architecture is
(:meth:`FedArrays.architecture`); payloads, validation, sample counts, metrics
and merging are done here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, MutableSequence
from typing import Any, Union

import numpy as np

from ..errors import PayloadRejected, RemoteError, RoundFailed
from ..plugins.hookspecs import RegisterAdapter, hookimpl
from ..protocol import FedData
from ..strategies import Accumulator, FedAvg, Strategy
from ..wire import codec, compression, sparse
from ..wire.config import Config
from ..wire.metrics import MAX_SAMPLES, parse_counted, weighted_means
from ..wire.replies import ReplyStream
from ..wire.reports import METRICS_KEY, SAMPLES_KEY, metric_weights, read_report, report_metadata
from ..wire.shapes import DeviceReport, MergeReport
from . import _extras, _merging, _sharing, _updates, _views, proximal
from . import _state as device_state
from ._decoding import Decoding
from ._payload import PayloadParts

__all__ = ["FedArrays", "fingerprint", "TrainResult", "SAMPLES_KEY", "METRICS_KEY", "SPECS_KEY"]

SPECS_KEY = "fedsync.specs"

TrainResult = Union[int, "tuple[int, Mapping[str, float]]"]
"""What ``train(model)`` returns: the number of samples, optionally with metrics."""


def fingerprint(architecture: Any) -> str:
    """``sha256:<16 hex>`` of a JSON-able architecture description."""
    text = json.dumps(architecture, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FedArrays(Decoding, PayloadParts, FedData):
    """A FedData whose state is a list or dict of numpy arrays.

    Args:
        arrays: the model's arrays. They are updated **in place**, so references
            you hold stay valid.
        train: ``train(model) -> samples`` or ``-> (samples, metrics)``, called on
            a device after the coordinator's arrays were loaded; ``model`` is the
            ``arrays`` you passed (adapters pass their framework model). A
            ``train(model, config)`` also gets the round's configuration
            (``Federated(config=...)``, a dict; ``{}`` when none was sent).
            ``None`` on the coordinator.
        evaluate: ``evaluate(model) -> samples`` or ``-> (samples, metrics)``,
            measuring the coordinator's arrays on this device's data for
            ``Federated.evaluate``; the device's own arrays are restored after.
            ``evaluate(model, config)`` gets the configuration too.
        strategy: how results merge; sample-weighted :class:`FedAvg` by default.
        wire_dtype: on the coordinator, send floating arrays as ``"float16"``,
            ``"bfloat16"`` (half the bytes), ``"int8"`` (a quarter) or ``"int4"`` (4-bit
            blockwise, 14 %: lossy on weights, pair it with ``updates="delta"``); each device
            replies in the format it received, and merging stays at full precision.
            Not part of the specs: a device that cannot decode the format (its
            ``/info`` does not list it) gets the arrays as they are. Error bounds:
            :mod:`fedsync.wire.compression`.
        state: this device's own arrays, e.g. ``{"c": np.zeros(...)}`` (control variates, error-feedback
            residuals, personal layers): never sent, never written by the coordinator, and kept between
            rounds (:meth:`device_state`; ``serve(state_dir=...)``, simulations). The dict is kept as
            given: ``train`` updates its arrays in place, reaching them by closure or as ``fed.state``.
        shared: which arrays travel: ``None`` (all), ``"trainable"`` (torch ``requires_grad``, Keras
            ``trainable_weights``; parameters that do not train stay and are fingerprinted into the specs,
            buffers stay local) or ``{"include": [...], "exclude": [...]}`` name patterns (the rest stay
            local, each device's own, kept in its state). docs/compression.md.
        updates: on a device, reply the update (``"delta"``: weights minus the model received) or its
            largest ``top_k`` share with error feedback (``"topk"``; ``"stc"``: each as its sign and one
            mean magnitude per array) instead of the weights; on the coordinator, ask it of every device
            that did not choose for itself.
        top_k: with ``updates="topk"`` or ``"stc"``, the share of each update's entries sent, in ``(0, 1]``
            (0.01).
        download: on the coordinator, ``"delta"``: send each device, after the first round, the model as
            its difference from the view the device holds (in ``wire_dtype``); ``download_top_k``: only
            that share of the difference's largest entries; ``"stc"``: that share as sparse ternary.

    Every array adapter (``FedTorch``, ``FedKeras``) takes these same keywords
    and passes them here.

    Raises:
        TypeError: ``arrays`` is not a list or dict of numpy arrays, or ``train``
            or ``evaluate`` is not callable.
        ValueError: an unknown ``wire_dtype``.

    After a merge, ``last_merge`` holds the total samples, the sample-weighted
    mean of each metric, and the per-device values.

    On a device, :meth:`global_weights` gives a copy of the floating arrays received
    this round, for FedProx's :meth:`proximal_term`: made on its first call in a
    round (during ``train``), so a device that never asks pays no model copy; set
    ``keep_global = True`` to make it up front, in ``receive``.

    ``local_dp`` (set it on a device: ``fed.local_dp = LocalDP(...)``) clips and
    noises the update after ``train``, before the reply leaves the device
    (:class:`fedsync.privacy.LocalDP`); integer and boolean arrays then go back as received.
    """

    token = "arrays"
    accepts_views = True  # codec.decode reads any buffer
    accepts_streams = True  # merge folds replies as they download (fedsync.wire.replies)
    keep_global = False  # True: receive copies the global weights up front; else proximal_term's first call does
    local_dp: Any = None  # a fedsync.privacy.LocalDP: clip and noise the update on the device (docs/privacy.md)

    def __init__(
        self,
        arrays: MutableMapping[str, np.ndarray] | MutableSequence[np.ndarray],
        train: Callable[..., TrainResult] | None = None,
        *,
        evaluate: Callable[..., TrainResult] | None = None,
        strategy: Strategy | None = None,
        wire_dtype: str | None = None,
        state: MutableMapping[str, np.ndarray] | None = None,
        shared: _sharing.Shared = None,
        updates: str | None = None,
        top_k: float | None = None,
        download: str | None = None,
        download_top_k: float | None = None,
    ) -> None:
        super().__init__()
        # Here, not in each adapter: every array adapter passes its keywords through.
        if train is not None and not callable(train):
            raise TypeError(
                f"train must be a function train(model) -> samples, or None on the coordinator; got {train!r}"
            )
        if evaluate is not None and not callable(evaluate):
            raise TypeError(
                f"evaluate must be a function evaluate(model) -> samples or (samples, metrics), got {evaluate!r}"
            )
        items: list[tuple[str | int, object]]
        if isinstance(arrays, Mapping):
            items = list(arrays.items())
        elif isinstance(arrays, (list, tuple)):
            items = list(enumerate(arrays))
        else:
            raise TypeError(f"FedArrays takes a list or dict of numpy arrays, got {type(arrays).__name__}")
        for name, a in items:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"array {name!r} is a {type(a).__name__}, not a numpy array; wrap it with np.asarray")
            codec.check_carries(name, a.dtype)  # refused here, not at the first round's send
        self.model: Any = arrays
        self.state: MutableMapping[str, np.ndarray] = {} if state is None else state
        device_state.check_state(self.state, "state=")
        self.train = train
        self.evaluate_fn = evaluate
        self.strategy = strategy or FedAvg()
        self.wire_dtype = compression.check_wire_dtype(wire_dtype)
        self.sending: str | None = self.wire_dtype  # a device replies in the format its round's payload came in
        self.samples = 0
        self.metrics: dict[str, float] = {}
        self.metric_weights: dict[str, int] = {}  # after a merge: each metric's samples (wire/reports.py)
        self.failures_below: dict[str, str] = {}  # set by an aggregator: who failed below it (fedsync.aggregator)
        self.last_merge: MergeReport | None = None
        self.global_arrays: dict[str, np.ndarray] | None = None
        self._received: dict[str, np.ndarray] | None = None  # this round's decoded payload, while train runs
        self._extras: dict[str, np.ndarray] | None = None  # the strategy's travelling arrays, made on first use
        self.shared = _sharing.check_shared(shared)
        self.updates, self.top_k = _updates.check_updates(updates, top_k)
        self._update: tuple[dict[str, np.ndarray], dict[str, str]] | None = None  # a device's reply, as updates
        self._residuals: dict[str, np.ndarray] | None = None  # top-k's error feedback, made on first use
        self._asked: tuple[str | None, float | None] = (None, None)  # what the last payload asked a device to reply
        self.download, self.download_top_k = _views.check_download(download, download_top_k)
        self.views = _views.Views()  # the coordinator's last views (download="delta")
        self.view: tuple[str, dict[str, np.ndarray]] | None = None  # a device's view: its id and arrays
        self._selection: _sharing.Selection | None = None  # which arrays travel, made on first use
        self._frozen: str | None = None  # the frozen arrays' fingerprint, computed once
        self.extras_written = False  # set by a strategy's device helper (scaffold.finish) during train
        self._last_check: tuple[Any, dict[str, str], dict[str, np.ndarray]] | None = None  # check's, for receive

    # -- the framework-specific part: adapters override these three ----------------

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The current arrays by name (views are fine: they are only read)."""
        if isinstance(self.model, Mapping):
            return dict(self.model)
        return {str(i): a for i, a in enumerate(self.model)}

    def set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Load arrays already checked to match names, shapes and dtypes."""
        if isinstance(self.model, Mapping):
            for name, a in arrays.items():
                np.copyto(self.model[name], a)
        else:
            for i, target in enumerate(self.model):
                if str(i) in arrays or not self.selection.part_of(arrays):  # all, or those that travel (shared=)
                    np.copyto(target, arrays[str(i)])

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each array's shape and dtype as exchanged; adapters whose ``get_arrays`` copies override it."""
        return {name: (a.shape, a.dtype) for name, a in self.get_arrays().items()}

    def max_payload(self, repetition: int) -> int:
        """The largest payload of this model in bytes: 8-byte prefix, largest header ``check`` takes, arrays."""
        layout = self._payload_layout()  # in their own dtypes: packing as wire_dtype only makes them smaller
        data = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize for shape, dtype in layout.values())
        return 15 + self._header_limit(layout) + data

    def architecture(self) -> Any:
        """A JSON-able description hashed into the specs; by default the model's arrays' layout."""
        return [
            {"name": name, "shape": list(shape), "dtype": np.dtype(dtype).name}
            for name, (shape, dtype) in self.layout().items()
        ]

    # -- the protocol ----------------------------------------------------------------

    def summary(self, repetition: int) -> dict[str, Any]:
        """``{"weights": [{"name", "shape", "dtype"}, ...]}``, each array as exchanged, in order.

        With frozen arrays (``shared="trainable"``), also ``"frozen": {"arrays": n, "sha256": ...}``.
        """
        summary: dict[str, Any] = {
            "weights": [
                {"name": name, "shape": list(shape), "dtype": np.dtype(dtype).name}
                for name, (shape, dtype) in self._payload_layout().items()
            ]
        }
        if self.selection.frozen:
            summary["frozen"] = {"arrays": len(self.selection.frozen), "sha256": self.frozen_fingerprint()}
        return summary

    def specs(self, repetition: int) -> str:
        """``<token>:sha256:<16 hex>`` of :meth:`architecture` (docs/protocol.md, "The specs of an array model").

        The wire format is not part of it: it is negotiated from each device's ``/info`` capabilities.
        """
        return f"{self.token}:{fingerprint(self._specs_source(self.architecture()))}"

    def capabilities(self) -> dict[str, Any]:
        """What ``/info`` says this FedData can do: the wire formats it decodes, and whether it evaluates."""
        formats = [*compression.WIRE_DTYPES, *sparse.SPARSE_FORMATS, "delta"]
        return {"wire_formats": formats, "evaluate": self.evaluate_fn is not None}

    def serialize(self, repetition: int) -> codec.Payload:
        """The arrays with samples, metrics and specs as metadata, packed in the format this side sends.

        The coordinator sends its ``wire_dtype``; a device replies in the format its round's payload came
        in (the coordinator chose it from the device's ``/info``). Views of the live arrays, not a copy.

        Raises:
            CodecError: an array of a dtype the codec cannot carry (e.g. complex).
        """
        return self.serialize_as(repetition, self.sending)

    def serialize_as(
        self, repetition: int, wire_dtype: str | None, *, extra: Mapping[str, str] | None = None
    ) -> codec.Payload:
        """:meth:`serialize` in the wire format ``wire_dtype`` (``None``: the arrays as they are, no copy).

        Raises:
            CodecError: an array of a dtype the codec cannot carry.
            ValueError: an unknown ``wire_dtype``, or values it cannot carry (:func:`~fedsync.wire.compression.pack`).
        """
        wire = compression.check_wire_dtype(wire_dtype)
        if self._update is not None and wire == self.sending:  # a device's reply as updates (updates=)
            arrays, added = self._update
            return self.serialize_arrays(repetition, arrays, None, {**added, **(extra or {})}, extras=False)
        return self.serialize_arrays(repetition, self._shared_part(self.get_arrays()), wire, extra)

    def serialize_arrays(
        self,
        repetition: int,
        arrays: Mapping[str, np.ndarray],
        wire: str | None,
        extra: Mapping[str, str] | None = None,
        *,
        extras: bool = True,
    ) -> codec.Payload:
        """A payload of ``arrays`` (then the strategy's, if ``extras``), packed as ``wire``, with ``extra`` metadata.

        A coordinator's payload, whole or a delta from a view, carries its ``updates=`` ask (``fedsync.updates``);
        with ``download=`` and no ``updates=``, it asks ``"delta"``: a device replying weights would reply the
        lossy view it trained from, and what the download left out would be lost.
        """
        updates = self.updates or ("delta" if self.download else None)
        replying = _updates.DELTA_KEY in (extra or {})  # an aggregator's merge as its update: a reply asks nothing
        asked = _updates.request(updates, self.top_k) if self.train is None and not replying else {}
        metadata = {**report_metadata(self.report()), SPECS_KEY: self.specs(repetition), **asked, **(extra or {})}
        arrays = {**arrays, **self.extra_arrays} if extras else dict(arrays)
        if wire is not None:
            arrays, metadata[compression.WIRE_KEY] = compression.pack(arrays, wire)
        # Views of the arrays, not a copy: they go to the socket as they are.
        return codec.encode_payload(arrays, metadata)

    def report(self) -> DeviceReport:
        """What this FedData's payload says of the samples behind it (docs/protocol.md, "Payload metadata").

        ``samples`` and ``metrics``; after a merge in which some metric was reported by only some
        devices, each metric's ``weights``; on an aggregator, the ``below`` failures it set.
        """
        report: DeviceReport = {"samples": self.samples, "metrics": self.metrics}
        weights = {n: min(w, MAX_SAMPLES) for n, w in self.metric_weights.items() if n in self.metrics}
        if self.samples > 0 and any(w != self.samples for w in weights.values()):
            report["weights"] = weights
        if self.failures_below:
            report["below"] = self.failures_below
        return report

    def check(self, encoding: Any, repetition: int) -> None:
        """Check a payload before anything changes: well-formed, this model's layout, all finite.

        The only step that scans for NaN and infinity (``receive`` trusts it).

        Raises:
            CodecError: not a valid payload.
            PayloadRejected: text, other names, shapes or dtypes, not packed as
                ``wire_dtype``, or NaN or infinity in an array.
        """
        raw, metadata, expected = self._opened(encoding)
        arrays, _ = self._checked(raw, metadata, finite=True, expected=expected)
        # receive of this same payload (the next step on a device that trains) takes these: a compressed or delta
        # payload is unpacked once, not twice. Only there: a coordinator checks replies it never receives.
        self._last_check = (encoding, metadata, arrays) if self.train is not None else None

    def receive(self, encoding: Any, repetition: int, config: Config | None = None) -> None:
        """Load the coordinator's arrays **in place**, then run ``train`` (on a device).

        Raises:
            CodecError: not a valid payload.
            PayloadRejected: the payload does not fit this model; nothing changed.
            ValueError: ``train`` returned no valid ``samples`` or ``(samples, metrics)``.
        """
        if self.local_dp is not None and self.extra_arrays:
            raise ValueError(
                f"local DP clips and noises the model's update, but {type(self.strategy).__name__} also sends "
                f"{sorted(self.extra_arrays)[:2]}, which it would leave unprotected; use FedAvg or a server "
                "optimizer with LocalDP"
            )
        checked, self._last_check = self._last_check, None
        if checked is not None and checked[0] is encoding:  # check has just read it, against this same view
            metadata, payload = checked[1], checked[2]
        else:
            raw, metadata, expected = self._opened(encoding)
            payload, _ = self._checked(raw, metadata, finite=False, expected=expected)
        del checked
        sending = _views.reply_format(metadata)  # checked before anything changes
        self._asked = _updates.requested(metadata)
        self._update = None
        self._load_payload(payload)
        arrays = _extras.model_part(payload, self.extra_arrays)
        del payload
        if metadata.get(_views.VIEW_KEY) == "1":  # the coordinator may send the next model as a delta from it
            view = {name: np.array(a, copy=True) for name, a in arrays.items()}
            self.view = (_views.view_id(view), view)
        self.extras_written = False
        self.sending = sending  # the reply goes back in the format the payload came in
        self.global_arrays = None  # before copying: never two snapshots at once
        # Views of the payload, valid while train runs; copied only if proximal_term (or
        # local DP) asks, and dropped after: the device reuses the payload's buffer next round.
        self._received = arrays
        try:
            updates, top_k = (self.updates, self.top_k) if self.updates else self._asked  # the device's choice first
            if self.keep_global or updates:
                self.global_weights()
            if self.train is not None:
                self.samples, self.metrics = parse_counted(_merging.call(self.train, self.model, config))
                self.metric_weights = {}  # this device's own metrics: each weighs its samples
                if self.extra_arrays and not self.extras_written:
                    raise ValueError(
                        f"{type(self.strategy).__name__} sends {sorted(self.extra_arrays)[:2]} beside the model, "
                        f"which train writes: call {self.strategy.device_hint}"
                    )
            if self.local_dp is not None:  # before the reply can leave: serialize sends these arrays
                trained = self._shared_part(self.get_arrays())
                self.set_arrays({**arrays, **self.local_dp.apply(trained, self.global_weights())})
            if updates and self.train is not None:
                start, trained = self.global_weights() or {}, self._shared_part(self.get_arrays())
                self._update = _updates.reply_arrays(
                    trained, start, self.extra_arrays, self.residuals, top_k, self.sending, updates
                )
        finally:
            self._received = None

    def global_weights(self) -> dict[str, np.ndarray] | None:
        """The floating arrays received this round, as owned copies; ``None`` before any round.

        The copy is made on the first call of a round (inside ``train``), then kept.
        """
        if self.global_arrays is None and self._received is not None:
            self.global_arrays = proximal.snapshot(self._received)
        return self.global_arrays

    def proximal_term(self, mu: float) -> Any:
        """FedProx's ``mu/2 * ||w - w_global||^2`` (Li et al. 2020) over the floating arrays.

        ``w_global``: the arrays received this round. FedArrays returns a float
        (for logging; its gradient is ``mu * (w - fed.global_arrays[name])``); the
        torch and Keras adapters return a differentiable tensor to add to the loss.

        Raises:
            ValueError: ``mu`` is not a finite number >= 0.
            RuntimeError: called before any round's weights were received.
        """
        return proximal.numpy_term(self.get_arrays(), self.global_weights(), mu)

    def evaluate(self, encoding: Any, repetition: int, config: Config | None = None) -> tuple[int, dict[str, float]]:
        """Measure the payload's arrays with ``evaluate``; this FedData's own arrays are restored after.

        Returns ``(samples, metrics)``. The arrays are restored even if the callback raises.

        Raises:
            NotImplementedError: no ``evaluate`` callback was given.
            CodecError: not a valid payload.
            PayloadRejected: the payload does not fit this model; nothing changed.
            ValueError: the callback returned no valid ``samples`` or ``(samples, metrics)``.
        """
        if self.evaluate_fn is None:
            raise NotImplementedError(
                f"this device's {type(self).__name__} has no evaluate callback; "
                "pass evaluate=fn, e.g. FedArrays(arrays, train, evaluate=lambda model: (len(x), {'accuracy': ...}))"
            )
        self._last_check = None  # check's decode of this payload: no receive will take it
        payload, _ = self.decode(encoding)
        arrays = _extras.model_part(payload, self.extra_arrays)
        own = {name: np.array(a, copy=True) for name, a in self.get_arrays().items() if name in arrays}
        self.set_arrays(arrays)
        try:
            return parse_counted(_merging.call(self.evaluate_fn, self.model, config), "evaluate(model)")
        finally:
            self.set_arrays(own)

    def merge(self, encodings: Iterable[Any], repetition: int) -> None:
        """Fold the replies into new arrays and commit them only if the result is sound.

        Raises:
            RoundFailed: no reply reported any samples, or the merged arrays hold
                NaN or infinity; this FedData is then unchanged.
            PayloadRejected: a payload given as bytes (not a stream) is malformed.
        """
        accumulator = self.strategy.accumulator(self._payload_arrays())
        kept: list[DeviceReport] = []
        if accumulator is None:
            try:
                merged = self._aggregate_whole(encodings, kept)
            except RoundFailed:
                _merging.empty(kept)  # the strategy found nothing to weigh: say why, without blaming train
                raise
        else:
            accumulator, kept = self._fold(encodings, accumulator)
            _merging.empty(kept)
            merged = accumulator.result(sum(d["samples"] for d in kept))
            del accumulator
        for name, a in merged.items():
            if not _merging.finite(np.asarray(a)):
                raise RoundFailed(
                    f"merged array {name!r} holds NaN or infinity, so the model was left unchanged; "
                    f"check the strategy ({type(self.strategy).__name__}) and the devices' values"
                )
        self._load_payload(merged)
        del merged
        report: MergeReport = {
            "samples": sum(d["samples"] for d in kept),
            "metrics": weighted_means(kept),
            "devices": kept,
            "weights": metric_weights(kept),
        }
        self.last_merge = report
        # The merged arrays stand for every sample behind them: a checkpoint restored
        # with merge([saved]) then weighs correctly.
        # Capped: the payload carries it, and peers accept at most MAX_SAMPLES.
        self.samples = min(report["samples"], MAX_SAMPLES)
        self.metrics = report["metrics"]
        self.metric_weights = report.get("weights", {})

    def _fold(self, encodings: Iterable[Any], accumulator: Accumulator) -> tuple[Accumulator, list[DeviceReport]]:
        """Fold every reply into ``accumulator`` as it streams in; drop the bad ones.

        A stream found bad after part of it was folded spoils the sum: it is
        started over from the replies kept so far, read again from their
        devices (:meth:`ReplyStream.reopen`).
        """
        kept: list[tuple[Any, DeviceReport]] = []
        for encoding in encodings:
            try:
                kept.append((encoding, self._fold_one(encoding, accumulator)))
            except _merging.Rejected as exc:
                if not isinstance(encoding, ReplyStream):
                    raise PayloadRejected(exc.reason) from None
                encoding.reject(exc.reason)
                if exc.spoiled:
                    del accumulator
                    accumulator, kept = self._fold_again(kept)
            del encoding
        return accumulator, [report for _, report in kept]

    def _fold_again(self, kept: list[tuple[Any, DeviceReport]]) -> tuple[Accumulator, list[tuple[Any, DeviceReport]]]:
        """A fresh sum of the ``kept`` replies; any that fails now is dropped too (bounded: ``kept`` shrinks)."""
        while True:
            accumulator = self.strategy.accumulator(self._payload_arrays())
            assert accumulator is not None
            for index, (encoding, _) in enumerate(kept):
                try:
                    source = encoding.reopen() if isinstance(encoding, ReplyStream) else encoding
                    kept[index] = (encoding, self._fold_one(source, accumulator))
                except (_merging.Rejected, RemoteError) as exc:
                    encoding.reject(f"when read again: {_merging.why(exc)}")
                    kept = kept[:index] + kept[index + 1 :]
                    del accumulator  # before the next one: never two sums at once
                    break
            else:
                return accumulator, kept

    def _fold_one(self, encoding: Any, accumulator: Accumulator) -> DeviceReport:
        """Check one reply and fold it in; :class:`_merging.Rejected` says if the sum was touched."""
        if not isinstance(encoding, ReplyStream):
            try:
                arrays, report = self.decode(encoding, finite=None, merging=True)
            except ValueError as exc:
                raise _merging.Rejected(str(exc), spoiled=False) from None
            return _merging.add_whole(accumulator, arrays, report)
        folded = False
        try:
            expected = self._payload_layout()
            header = codec.read_header(encoding.readinto, encoding.length, limit=self._header_limit(expected))
            if compression.WIRE_KEY in header.metadata:  # packed arrays unpack whole
                arrays, report = self._checked(
                    header.arrays(encoding.read_all()), header.metadata, finite=None, merging=True
                )
                return _merging.add_whole(accumulator, arrays, report)
            self._check_layout({t.name: (t.shape, t.dtype) for t in header.tensors}, expected)
            report = read_report(header.metadata)
            base = self._payload_arrays() if _updates.is_delta(header.metadata) else {}
            samples = report["samples"]
            if samples == 0:  # weighs nothing: its values are neither read nor folded
                return report
            # From here the sum counts this reply's samples: a failure, even before its first
            # piece is added, spoils it (the kept replies are summed again without this one).
            folded = True
            accumulator.start(samples)
            buffer = np.empty(_merging.PIECE, np.uint8).data
            for name, first, values in codec.read_pieces(encoding.readinto, header, buffer):
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    raise PayloadRejected(f"array {name!r} contains NaN or infinity")
                if name in base and values.dtype.kind == "f" and name not in self.extra_arrays:  # an update
                    values = _updates.rebuilt(name, values, base[name].reshape(-1)[first : first + values.size])
                accumulator.add(name, first, values, samples)
            return report
        except (ValueError, RemoteError) as exc:
            raise _merging.Rejected(_merging.why(exc), spoiled=folded) from None
        finally:
            encoding.close()

    def _aggregate_whole(self, encodings: Iterable[Any], kept: list[DeviceReport]) -> dict[str, np.ndarray]:
        """For strategies that need whole replies: read each, check it, hand it over; ``kept`` gets their reports."""

        def results() -> Iterator[tuple[dict[str, np.ndarray], int]]:
            # No reference to a reply may survive into the request for the next one:
            # the coordinator downloads the next reply only once this one is released.
            replies = iter(encodings)
            while (encoding := next(replies, None)) is not None:
                try:
                    body = encoding.read_all() if isinstance(encoding, ReplyStream) else encoding
                    arrays, report = self.decode(body, finite=None, merging=True)
                except (ValueError, RemoteError) as exc:
                    if not isinstance(encoding, ReplyStream):
                        raise
                    encoding.reject(_merging.why(exc))
                    continue
                finally:
                    if isinstance(encoding, ReplyStream):
                        encoding.close()
                del encoding, body
                kept.append(report)
                if report["samples"] > 0:  # a reply of 0 samples weighs nothing: strategies never see it
                    yield arrays, report["samples"]
                del arrays

        return self.strategy.aggregate(self._payload_arrays(), results())


@hookimpl
def register_adapters(register: RegisterAdapter) -> None:
    """The core's own adapter registers through the same hook as third parties."""
    register(FedArrays.token, FedArrays)
