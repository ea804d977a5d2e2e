"""Devices whose replies carry what a broken or hostile peer sends (``devices("tests.support.devices.merge:NAME", ...)``).

Each trains like ``tests.support.devices.basic.constant`` (every weight set to ``value``) but
writes its reply's metadata itself, so the coordinator sees numbers an honest
fedsync device would never send.
"""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays
from fedsync.wire import codec
from fedsync.data.arrays import METRICS_KEY, SAMPLES_KEY, SPECS_KEY


def weights() -> dict[str, np.ndarray]:
    """The layout of ``tests.support.devices.basic.constant``."""
    return {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


class _Forged(FedArrays):
    """A FedArrays whose reply has the given metadata entries (strings), over its own."""

    def __init__(self, arrays: dict[str, np.ndarray], value: float, metadata: dict[str, str]) -> None:
        def train(model: dict[str, np.ndarray]) -> int:
            for a in model.values():
                a[...] = value
            return 1

        super().__init__(arrays, train)
        self.forged = metadata

    def serialize(self, repetition: int) -> codec.Payload:
        metadata = {SAMPLES_KEY: "1", METRICS_KEY: "{}", SPECS_KEY: self.specs(repetition), **self.forged}
        return codec.encode_payload(self.get_arrays(), metadata)


def forged(value: float, samples: str, metrics: str = "{}") -> FedArrays:
    """Replies ``value`` everywhere with ``fedsync.samples`` = ``samples`` and ``fedsync.metrics`` = ``metrics``."""
    return _Forged(weights(), value, {SAMPLES_KEY: samples, METRICS_KEY: metrics})


def padded(value: float, samples: int, megabytes: float) -> FedArrays:
    """An otherwise honest reply whose header carries ``megabytes`` MiB of metadata."""
    junk = "x" * int(megabytes * 2**20)
    return _Forged(weights(), value, {SAMPLES_KEY: str(samples), "junk": junk})


def integers(dtype: str, value: int, samples: int) -> FedArrays:
    """A model with one ``dtype`` array; training sets it to ``value``."""
    array = np.zeros(4, np.dtype(dtype))
    number = int(value)

    def train(model: dict[str, np.ndarray]) -> int:
        model["n"][...] = number
        return samples

    return FedArrays({"n": array}, train)
