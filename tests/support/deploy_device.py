"""The device file deployment tests serve with the real command: ``fedsync serve tests/support/deploy_device.py:data``.

Its model and training come from ``$FEDSYNC_DEPLOY_DEVICE`` (JSON): ``size`` float32 weights in one array ``w``
(default 6), training that sleeps ``delay`` seconds (so the coordinator's long-poll waits), then sets every weight
to ``value`` and reports ``samples``. The same file stands for the user's ``device.py`` in docs/deployment.md.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

import fedsync

_config = json.loads(os.environ.get("FEDSYNC_DEPLOY_DEVICE", "{}"))
SIZE = int(_config.get("size", 6))
VALUE = float(_config.get("value", 1.0))
SAMPLES = int(_config.get("samples", 1))
DELAY = float(_config.get("delay", 0.0))


def train(model: dict[str, np.ndarray]) -> int:
    time.sleep(DELAY)
    model["w"][...] = VALUE
    return SAMPLES


data = fedsync.FedArrays({"w": np.zeros(SIZE, np.float32)}, train)
