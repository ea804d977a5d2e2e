"""Devices for the tests of transfers that resume (tests/transports/test_resume_http.py)."""

import numpy as np

from fedsync.data import FedArrays

N = 1 << 22  # float32 values: a 16 MiB payload each way, several times what a connection buffers at a break


def start_values(n: int = N) -> np.ndarray:
    """The coordinator's model: distinct values, exact in float32, so a byte out of place shows."""
    return (np.arange(n) % 251).astype(np.float32)


def plus(step: float, n: int = N) -> FedArrays:
    """Training adds ``step`` to every weight it received: the reply depends on every byte of the upload."""

    def train(model):
        model["w"] += np.float32(step)
        return 10

    return FedArrays({"w": np.zeros(n, np.float32)}, train)
