"""``fedsync serve FILE:NAME --state-dir DIR``: the command keeps a device's own state across restarts (#23 item 5)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from tests.support.cli import fedsync_command, read_line

DEVICE = """\
import numpy as np
import fedsync

seen = {"rounds": np.zeros(1, np.int64)}

def train(model):
    seen["rounds"] += 1
    return 1

data = fedsync.FedArrays({"w": np.zeros(2)}, train, state=seen)
"""


def serve_and_train(folder, state):
    command = fedsync_command(
        "serve", "device.py:data", "--port", "0", "--state-dir", str(state),
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        line = read_line(command.stdout, timeout=60)
        assert line.startswith("serving "), line
        with Federated(FedArrays({"w": np.zeros(2)}), [line.split()[1]], timeout=60) as alg:
            alg.round()
    finally:
        command.kill()
        command.wait(timeout=10)


@pytest.mark.slow  # two device processes, one after the other
def test_serve_state_dir_resumes_the_state_after_a_restart(tmp_path):
    from fedsync.device._kept import STATE_FILE

    (tmp_path / "device.py").write_text(DEVICE)
    state = tmp_path / "state"
    state.mkdir()
    serve_and_train(tmp_path, state)
    first = (state / STATE_FILE).read_bytes()
    serve_and_train(tmp_path, state)  # a new process: it starts from the saved state
    second = (state / STATE_FILE).read_bytes()
    assert first != second and b"rounds" in second
    restored = FedArrays({"w": np.zeros(2)}, state={"rounds": np.zeros(1, np.int64)})
    from fedsync.data._state import restore_state

    restore_state(restored, second)
    assert restored.state["rounds"].tolist() == [2]  # one round in each process, counted on
