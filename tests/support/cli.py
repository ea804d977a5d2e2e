"""The user's side of the `fedsync` command in a test: a device file to serve, and the command in a subprocess.

The ``workdir`` and ``serve`` fixtures (tests/conftest.py) build on these.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from tests.support.processes import ROOT

DEVICE_FILE = """\
import numpy as np
import fedsync

def train(model):
    model["w"] += 1.0
    return 3

data = fedsync.FedArrays({"w": np.zeros((2, 3), np.float32)}, train)
both = {"model": data, "threshold": fedsync.FedArrays({"t": np.zeros(1)}, train)}
not_fed = 42
"""


def preload_certs_dependencies() -> None:
    """Import what fedsync.wire.certs uses now: `workdir` swaps sys.modules, which cryptography's native modules do not
    survive (imported here, lazily, so that a run without the ``cryptography`` package still collects)."""
    import cryptography.hazmat.primitives.asymmetric.ec  # noqa: F401
    import cryptography.hazmat.primitives.serialization  # noqa: F401
    import cryptography.x509.oid  # noqa: F401


def fedsync_command(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """Start ``python -m fedsync ARGS`` in ``cwd``, importing this checkout's fedsync (``kwargs`` go to Popen)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "fedsync", *args], cwd=cwd, env=env, text=True, **kwargs)


def read_line(stream, timeout: float = 30.0) -> str:
    """The next line of a subprocess's text ``stream``; fails the test if none starts within ``timeout`` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no output within {timeout}s"
    return stream.readline()
