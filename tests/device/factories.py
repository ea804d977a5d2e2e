"""Devices the tests of tests/device start by path (``"tests.device.factories:NAME"``)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from fedsync import FedArrays

MiB = 1 << 20


def zeros_mib(mib: int) -> FedArrays:
    """A model of ``mib`` MiB of float32 zeros, in one array ``w``: payloads that large are accepted."""
    return FedArrays({"w": np.zeros(mib * MiB // 4, np.float32)})


def zeros_mib_spec(mib: int) -> str:
    """The specs of :func:`zeros_mib`'s model, for a hand-made request."""
    return zeros_mib(mib).specs(1)


def counting_state() -> FedArrays:
    """A device whose own state ``seen`` counts its rounds (``train`` adds 1 in place) and never travels."""
    seen = np.zeros(2, np.int64)

    def train(model: dict[str, np.ndarray]) -> int:
        seen[:] += 1  # the dict's own array, updated in place (closure)
        model["w"] += 1.0
        return 1

    return FedArrays({"w": np.zeros(2)}, train, state={"seen": seen})


def counting_device(device_id: int) -> FedArrays:
    """A device counting the rounds it trained in its own state ``seen``, reported as the metric ``seen``."""
    seen = np.zeros(2, np.int64)

    def train(model: dict[str, np.ndarray]) -> tuple[int, dict[str, float]]:
        seen[:] += 1
        return 1, {"seen": float(seen[0])}

    return FedArrays({"w": np.zeros(2)}, train, state={"seen": seen})


def counts_of(history: Any) -> dict[str, list[float]]:
    """Each device's reported ``seen``, in the order of the rounds it answered."""
    counts: dict[str, list[float]] = defaultdict(list)
    for result in history:
        for url, report in result.devices.items():
            counts[url].append(report["metrics"]["seen"])
    return counts


def check_counted(history: Any) -> None:
    """Each device of a simulation of :func:`counting_device` counted 1, 2, 3, ...: its state was never reset."""
    counts = counts_of(history)
    assert counts, "no device answered"
    for url, seen in counts.items():
        assert seen == [float(k) for k in range(1, len(seen) + 1)], url  # never reset to 0 between rounds
    assert max(len(seen) for seen in counts.values()) >= 2  # some device was sampled again: the test can fail


def large_state(device_id: int) -> FedArrays:
    """A tiny model with a 64 KiB own state: over what a worker started with ``max_content_length=4096`` takes back."""
    return FedArrays({"w": np.zeros(2)}, lambda model: 1, state={"big": np.zeros(8192)})
