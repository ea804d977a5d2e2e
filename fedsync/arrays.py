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
from typing import Any, Callable, Iterable, Iterator, Mapping, MutableMapping, MutableSequence, Union

import numpy as np

from . import codec, compression
from .errors import PayloadRejected
from .hookspecs import hookimpl
from .metrics import parse_counted, weighted_means
from .protocol import FedData
from .strategies import FedAvg, Strategy

__all__ = ["FedArrays", "fingerprint", "TrainResult"]

SAMPLES_KEY = "fedsync.samples"
METRICS_KEY = "fedsync.metrics"
SPECS_KEY = "fedsync.specs"

TrainResult = Union[int, "tuple[int, Mapping[str, float]]"]
"""What ``train(model)`` returns: the number of samples, optionally with metrics."""


def fingerprint(architecture: Any) -> str:
    """``sha256:<16 hex>`` of a JSON-able architecture description."""
    text = json.dumps(architecture, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FedArrays(FedData):
    """A FedData whose state is a list or dict of numpy arrays.

    Args:
        arrays: the model's arrays. They are updated **in place**, so references
            you hold stay valid.
        train: ``train(model) -> samples`` or ``-> (samples, metrics)``, called on
            a device after the coordinator's arrays were loaded; ``model`` is the
            ``arrays`` you passed (adapters pass their framework model). ``None``
            on the coordinator.
        evaluate: ``evaluate(model) -> samples`` or ``-> (samples, metrics)``,
            measuring the coordinator's arrays on this device's data for
            ``Federated.evaluate``; the device's own arrays are restored after.
        strategy: how results merge; sample-weighted :class:`FedAvg` by default.
        wire_dtype: send floating arrays as ``"float16"``, ``"bfloat16"`` (half
            the bytes) or ``"int8"`` (a quarter), both ways; merging stays at full
            precision. Declare the same on coordinator and devices: it is part of
            the specs. Error bounds: :mod:`fedsync.compression`.

    After a merge, ``last_merge`` holds the total samples, the sample-weighted
    mean of each metric, and the per-device values.
    """

    token = "arrays"
    accepts_views = True  # codec.decode reads any buffer

    def __init__(
        self,
        arrays: Union[MutableMapping[str, np.ndarray], MutableSequence[np.ndarray]],
        train: Callable[[Any], TrainResult] | None = None,
        *,
        evaluate: Callable[[Any], TrainResult] | None = None,
        strategy: Strategy | None = None,
        wire_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(arrays, Mapping):
            items = list(arrays.items())
        elif isinstance(arrays, (list, tuple)):
            items = list(enumerate(arrays))
        else:
            raise TypeError(f"FedArrays takes a list or dict of numpy arrays, got {type(arrays).__name__}")
        for name, a in items:
            if not isinstance(a, np.ndarray):
                raise TypeError(f"array {name!r} is a {type(a).__name__}, not a numpy array; wrap it with np.asarray")
        self.model: Any = arrays
        self.train = train
        self.evaluate_fn = evaluate
        self.strategy = strategy or FedAvg()
        self.wire_dtype = compression.check_wire_dtype(wire_dtype)
        self.samples = 0
        self.metrics: dict[str, float] = {}
        self.last_merge: dict[str, Any] | None = None

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
                np.copyto(target, arrays[str(i)])

    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Each array's shape and dtype as exchanged; adapters whose ``get_arrays`` copies override it."""
        return {name: (a.shape, a.dtype) for name, a in self.get_arrays().items()}

    def architecture(self) -> Any:
        """A JSON-able description hashed into the specs; by default the weights' layout."""
        return self.summary(0)["weights"]

    # -- the protocol ----------------------------------------------------------------

    def summary(self, repetition: int) -> dict[str, Any]:
        return {
            "weights": [
                {"name": name, "shape": list(shape), "dtype": np.dtype(dtype).name}
                for name, (shape, dtype) in self.layout().items()
            ]
        }

    def specs(self, repetition: int) -> str:
        architecture = self.architecture()
        if self.wire_dtype is not None:
            architecture = {"architecture": architecture, "wire_dtype": self.wire_dtype}
        return f"{self.token}:{fingerprint(architecture)}"

    def serialize(self, repetition: int) -> codec.Payload:
        metadata = {
            SAMPLES_KEY: str(self.samples),
            METRICS_KEY: json.dumps(self.metrics),
            SPECS_KEY: self.specs(repetition),
        }
        arrays = self.get_arrays()
        if self.wire_dtype is not None:
            arrays, metadata[compression.WIRE_KEY] = compression.pack(arrays, self.wire_dtype)
        # Views of the arrays, not a copy: they go to the socket as they are.
        return codec.encode_payload(arrays, metadata)

    def check(self, encoding: Any, repetition: int) -> None:
        self._decode(encoding, finite=True)

    def receive(self, encoding: Any, repetition: int) -> None:
        arrays, _, _ = self._decode(encoding)
        self.set_arrays(arrays)
        if self.train is not None:
            self.samples, self.metrics = parse_counted(self.train(self.model))

    def evaluate(self, encoding: Any, repetition: int) -> tuple[int, dict[str, float]]:
        if self.evaluate_fn is None:
            raise NotImplementedError(
                f"this device's {type(self).__name__} has no evaluate callback; "
                "pass evaluate=fn, e.g. FedArrays(arrays, train, evaluate=lambda model: (len(x), {'accuracy': ...}))"
            )
        arrays, _, _ = self._decode(encoding)
        own = {name: np.array(a, copy=True) for name, a in self.get_arrays().items()}
        self.set_arrays(arrays)
        try:
            return parse_counted(self.evaluate_fn(self.model), "evaluate(model)")
        finally:
            self.set_arrays(own)

    def merge(self, encodings: Iterable[Any], repetition: int) -> None:
        devices: list[dict[str, Any]] = []

        def results() -> Iterator[tuple[dict[str, np.ndarray], int]]:
            # No reference to a reply may survive into the request for the next one:
            # the coordinator downloads the next reply only once this one is released.
            replies = iter(encodings)
            while (encoding := next(replies, None)) is not None:
                arrays, samples, metrics = self._decode(encoding)
                del encoding
                devices.append({"samples": samples, "metrics": metrics})
                yield arrays, samples
                del arrays

        merged = self.strategy.aggregate(self.get_arrays(), results())
        self.set_arrays(merged)
        self.last_merge = {
            "samples": sum(d["samples"] for d in devices),
            "metrics": weighted_means(devices),
            "devices": devices,
        }
        # The merged arrays stand for every sample behind them: a checkpoint restored
        # with merge([saved]) then weighs correctly.
        self.samples = self.last_merge["samples"]
        self.metrics = self.last_merge["metrics"]

    # -- validation -----------------------------------------------------------------

    def _decode(self, encoding: Any, *, finite: bool = False) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        """Decode a payload and check it fits this model; raises ValueError before any change.

        ``finite`` also scans every value for NaN and infinity. Only ``check`` does:
        fedsync's device and coordinator call it before ``receive``/``merge``, and a
        second scan costs a pass over the whole model.
        """
        if isinstance(encoding, str):
            raise PayloadRejected(f"{type(self).__name__} expects a binary payload, got text")
        arrays, metadata = codec.decode(encoding)
        expected = self.layout()
        if compression.WIRE_KEY in metadata:
            dtypes = {name: np.dtype(dtype) for name, (_, dtype) in expected.items()}
            arrays = compression.unpack(arrays, metadata[compression.WIRE_KEY], self.wire_dtype, dtypes)
        elif self.wire_dtype is not None and any(a.dtype.kind == "f" for a in arrays.values()):
            raise PayloadRejected(f"payload is not packed as wire_dtype {self.wire_dtype!r}, as this FedData expects")
        if arrays.keys() != expected.keys():
            missing = sorted(expected.keys() - arrays.keys())
            extra = sorted(arrays.keys() - expected.keys())
            raise PayloadRejected(f"payload arrays do not match the model: missing {missing}, unexpected {extra}")
        for name, a in arrays.items():
            shape, dtype = expected[name]
            if a.shape != tuple(shape) or a.dtype != dtype:
                raise PayloadRejected(
                    f"array {name!r}: expected {tuple(shape)} {np.dtype(dtype).name}, payload has {a.shape} {a.dtype.name}"
                )
            if finite and a.dtype.kind == "f" and not np.isfinite(a).all():
                raise PayloadRejected(f"array {name!r} contains NaN or infinity")
        try:
            samples = int(metadata.get(SAMPLES_KEY, "0"))
            metrics = json.loads(metadata.get(METRICS_KEY, "{}"))
            if samples < 0 or not isinstance(metrics, dict):
                raise ValueError
            metrics = {str(k): float(v) for k, v in metrics.items()}
        except (ValueError, TypeError):
            raise PayloadRejected(
                f"payload metadata is malformed: samples {metadata.get(SAMPLES_KEY)!r}, "
                f"metrics {metadata.get(METRICS_KEY)!r}; expected a non-negative integer and a JSON object of numbers"
            ) from None
        return arrays, samples, metrics


@hookimpl
def register_adapters(register: Callable[[str, type], None]) -> None:
    """The core's own adapter registers through the same hook as third parties."""
    register(FedArrays.token, FedArrays)
