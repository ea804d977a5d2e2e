"""Device functions for the Ray tests: module-level, so Ray actors import them by path (``tests.support.devices.ray_devices:shard``)."""

from __future__ import annotations

from fedsync import FedArrays
from tests.support.devices.basic import linreg

SHARDS = [(1, 40, 0.0), (2, 60, 1.0), (3, 50, -1.0), (4, 30, 0.5)]
"""(seed, samples, shift) of each device's linear-regression data: a non-IID split."""


def shard(device_id: int) -> FedArrays:
    """Device ``device_id``'s FedArrays over its shard of ``SHARDS``."""
    return linreg(*SHARDS[device_id])


def shard_but_3_is_missing(device_id: int) -> FedArrays:
    """As :func:`shard`, but device 3's data is gone: its ``device_fn`` raises."""
    if device_id == 3:
        raise OSError("partition 3 is missing")
    return shard(device_id)


def sleepy(device_id: int) -> FedArrays:
    """A device whose data takes 30 s to load: its first request outlives any short timeout."""
    import time

    time.sleep(30)
    return shard(device_id)


def big(device_id: int) -> FedArrays:
    """A 4 MB model (past Ray's inline limit: it crosses through the object store) that adds ``device_id + 1``."""
    import numpy as np

    def train(model):
        model["w"] += device_id + 1
        return 1

    return FedArrays({"w": np.zeros(500_000)}, train)


def exits_on_a_fresh_model(device_id: int) -> FedArrays:
    """As :func:`shard`, but device 0's ``train`` kills its process (its Ray actor) while the model is all zeros."""
    import os

    data = shard(device_id)
    if device_id != 0:
        return data
    train = data.train

    def killing(model):
        if not any(value.any() for value in model.values()):
            os._exit(3)
        return train(model)

    data.train = killing
    return data
