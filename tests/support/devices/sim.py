"""FedData factories for simulations on worker processes: module-level, so a worker imports them by name."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np

from fedsync import FedArrays
from tests.support.devices.basic import linreg

TRACE = "FEDSYNC_TEST_TRACE"
"""A directory where ``pure_python`` devices write when and where they trained."""


def linreg_device(device_id: int) -> FedArrays:
    """Linear regression on 40 samples of device ``device_id``'s data (tests.support.devices.basic.linreg)."""
    return linreg(device_id, 40)


def pure_python(device_id: int) -> FedArrays:
    """A training in pure Python (holds the GIL) that records its process and its start and end times."""

    def train(model):
        started = time.time()
        total = 0
        for k in range(1_500_000):  # about 0.1 s of bytecode: the GIL is held throughout
            total += k % 7
        model["w"] += 1.0
        trace = os.environ.get(TRACE)
        if trace:
            record = {"device": device_id, "pid": os.getpid(), "start": started, "end": time.time()}
            Path(trace, f"{device_id}.json").write_text(json.dumps(record))
        return 1 + total % 2

    return FedArrays({"w": np.zeros(3)}, train)


def killed_on_3(device_id: int) -> FedArrays:
    """Device 3's training kills its own process (SIGKILL), as the OOM killer would; the others train."""

    def train(model):
        if device_id == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.2)  # the other devices of that worker are still training when it dies
        model["w"] += 1.0
        return 1

    return FedArrays({"w": np.zeros(3)}, train)
