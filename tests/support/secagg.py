"""Helpers of the secure-aggregation tests: the phases by hand over HTTP, and the references a secure sum is held to.

The in-process devices they talk to come from the ``served`` and ``hostile`` fixtures (tests/secagg/conftest.py).
"""

from __future__ import annotations

import json
import time

import numpy as np
import requests

from fedsync import FedArrays, Remote


def fedavg(parts: list[tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    """Sample-weighted mean of trained weights (global zeros + update), float64 then float32."""
    total = sum(n for _, n in parts)
    return {
        name: (sum(n * u[name].astype(np.float64) for u, n in parts) / total).astype(np.float32) for name in parts[0][0]
    }


def assert_within_quantization(got: dict[str, np.ndarray], want: dict[str, np.ndarray], scale: int) -> None:
    """|got - want| <= 0.5/scale (rounding to the fixed point; the weighted mean of errors of at most
    0.5/scale each) + one float32 ulp of the value (both sides round to float32 once)."""
    for name in want:
        bound = 0.5 / scale + np.spacing(np.abs(want[name]))
        error = np.abs(got[name].astype(np.float64) - want[name].astype(np.float64))
        assert (error <= bound).all(), f"{name}: error {error.max()} past the quantization bound"


def post(url: str, rep: int, phase: str, body) -> requests.Response:
    """POST ``body`` (bytes as they are, anything else as JSON) to the device's ``/REP/secagg/PHASE``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(
        f"{url}/{rep}/secagg/{phase}", data=data, headers={"Content-Type": "application/json"}, timeout=10
    )


def keys_body(me: int, devices: int = 3, threshold: int = 3) -> dict:
    """The keys phase's request for device number ``me`` of ``devices``."""
    return {"devices": devices, "id": me, "threshold": threshold, "clip": 1.0, "scale": 2**20, "max_samples": 1000}


def submit_and_wait(url: str, rep: int, coordinator: FedArrays) -> None:
    """Submit the coordinator's model for repetition ``rep``; wait (at most 20 s) until the device's reply is ready."""
    remote = Remote(url)
    remote.submit(rep, coordinator.serialize(rep), coordinator.specs(rep))
    deadline = time.monotonic() + 20
    while not remote.ready(rep, 1.0):
        assert time.monotonic() < deadline
