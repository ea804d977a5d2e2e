"""Devices the tests of tests/device start by path (``"tests.device.factories:NAME"``)."""

from __future__ import annotations

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
