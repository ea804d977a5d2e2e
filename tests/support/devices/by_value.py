"""Device functions for the tests of device functions sent by value (tests/transports, tests/fedsync_ray)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fedsync import FedArrays

ROOT = Path(__file__).resolve().parents[3]


def adding(values: np.ndarray, device_id: int) -> FedArrays:
    """A device whose training adds ``values * (device_id + 1)`` to the model (1 sample)."""

    def train(model):
        model["w"] += values * (device_id + 1)
        return 1

    return FedArrays({"w": np.zeros(len(values))}, train)


SCRIPT = """\
import json, sys
import numpy as np
from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation

SHIFT = np.array([1.0, 2.0])


def device_fn(device_id):
    def train(model):
        model["w"] += SHIFT * (device_id + 1)
        return 1
    return FedArrays({"w": np.zeros(2)}, train)


if __name__ == "__main__":
    data = FedArrays({"w": np.zeros(2)})
    options = {"ray": dict(backend="ray", backend_config={"num_cpus": 1, "actors": 2})}.get(
        sys.argv[-1], dict(workers=2, worker_kind="processes"))
    history = run_simulation(device_fn, 3, 1, data=data, timeout=120, progress=False, **options)
    print(json.dumps({"answered": len(history[0].answered), "w": data.get_arrays()["w"].tolist()}))
"""


def run_script(tmp_path: Path, how: str, backend: str) -> str:
    """Run :data:`SCRIPT` as a file (``python script.py``) or from standard input (``python - < script.py``)."""
    script = tmp_path / "notebook_like.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    argv = [sys.executable, str(script), backend] if how == "file" else [sys.executable, "-", backend]
    with open(script, "rb") as stdin:
        done = subprocess.run(argv, stdin=stdin if how == "stdin" else subprocess.DEVNULL, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]
