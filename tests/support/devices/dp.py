"""Devices for the differential privacy tests (``devices("tests.support.devices.dp:NAME", ...)``)."""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays
from fedsync.privacy import LocalDP


def moving(step: float, samples: int) -> FedArrays:
    """Training adds ``step`` to every weight (update norm ``step * sqrt(9)``) and bumps the integer counter."""
    weights = {"w": np.zeros(8, np.float32), "b": np.zeros(1, np.float32), "steps": np.zeros((), np.int64)}

    def train(model):
        model["w"] += step
        model["b"] += step
        model["steps"] += 1
        return samples

    return FedArrays(weights, train)


def local(step: float, samples: int, clipping_norm: float, noise_multiplier: float, seed: int) -> FedArrays:
    """``moving`` with local DP on the device."""
    fed = moving(step, samples)
    fed.local_dp = LocalDP(clipping_norm=clipping_norm, noise_multiplier=noise_multiplier, seed=seed)
    return fed
