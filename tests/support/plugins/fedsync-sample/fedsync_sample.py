"""A third-party fedsync adapter: the largest value seen on any device.

Devices observe a local maximum (a feature's range, say); the coordinator
learns the global maximum without seeing any device's data.
"""

from __future__ import annotations

import json
import math

import fedsync


class FedMax(fedsync.FedData):
    """The maximum of a number across devices; travels as JSON text."""

    requires = ()

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = float(value)

    def specs(self, repetition: int) -> str:
        return "sample:max-v1"

    def check(self, encoding, repetition: int) -> None:
        self._parse(encoding)

    def serialize(self, repetition: int) -> str:
        return json.dumps({"max": self.value})

    def receive(self, encoding, repetition: int) -> None:
        self.value = max(self.value, self._parse(encoding))

    def merge(self, encodings, repetition: int) -> None:
        values = [self._parse(e) for e in encodings]  # all first: a failed round changes nothing
        self.value = max(values)

    @staticmethod
    def _parse(encoding) -> float:
        try:
            value = float(json.loads(encoding)["max"])
        except (TypeError, KeyError, ValueError):
            raise ValueError(f'expected JSON like {{"max": 1.5}}, got {str(encoding)[:50]!r}') from None
        if not math.isfinite(value):
            raise ValueError(f"max must be finite, got {value}")
        return value


@fedsync.hookimpl
def register_adapters(register):
    register("sample", FedMax)
