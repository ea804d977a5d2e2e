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


def serve_and_train(folder, state, coordinator=None):
    """One round against ``fedsync serve device.py:data --state-dir state``, a new process each time."""
    command = fedsync_command(
        "serve", "device.py:data", "--port", "0", "--state-dir", str(state),
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        line = read_line(command.stdout, timeout=60)
        assert line.startswith("serving "), line
        with Federated(coordinator or FedArrays({"w": np.zeros(2)}), [line.split()[1]], timeout=60) as alg:
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


SCAFFOLD_DEVICE = """\
import numpy as np
import fedsync
from fedsync.strategies import Scaffold, scaffold

x = np.arange(12.0).reshape(4, 3) / 10
y = np.array([1.0, 0.0, 2.0, 1.0])

def train(model):
    fix = scaffold.correction(data)
    for _ in range(3):
        model["w"] -= 0.1 * (x.T @ (x @ model["w"] - y) / 4 + fix["w"])
    scaffold.finish(data, steps=3, lr=0.1)
    return 4

data = fedsync.FedArrays({"w": np.zeros(3)}, train, strategy=Scaffold(num_devices=2))
"""


@pytest.mark.slow  # two device processes, one after the other
def test_scaffold_control_variate_survives_a_device_restart_as_if_it_never_stopped(tmp_path):
    """The coordinator's model and c after a restart between rounds equal a run whose device never stopped."""
    from fedsync.strategies import Scaffold

    (tmp_path / "device.py").write_text(SCAFFOLD_DEVICE)
    state = tmp_path / "state"
    state.mkdir()
    coordinator = FedArrays({"w": np.zeros(3)}, strategy=Scaffold(num_devices=2))
    for _ in range(2):  # a new device process per round: c_i comes back from the state folder
        serve_and_train(tmp_path, state, coordinator)
    namespace: dict = {}
    exec(compile(SCAFFOLD_DEVICE, "device.py", "exec"), namespace)  # the same device, in this process, never stopped
    steady = FedArrays({"w": np.zeros(3)}, strategy=Scaffold(num_devices=2))
    from fedsync.transports.local import LocalRemote

    with Federated(steady, [LocalRemote("local://steady", device=namespace["data"])], timeout=60) as alg:
        alg.round()
        alg.round()
    assert np.abs(coordinator.extra_arrays["scaffold.c/w"]).max() > 0
    np.testing.assert_array_equal(coordinator.model["w"], steady.model["w"])
    np.testing.assert_array_equal(coordinator.extra_arrays["scaffold.c/w"], steady.extra_arrays["scaffold.c/w"])
