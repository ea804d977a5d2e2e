"""``fedsync serve FILE:NAME --aggregate URL,...``: one line makes a node of a tree (#21).

The real command in a subprocess serves the model's declaration as an aggregator over two leaf processes; a
coordinator's round through it merges both leaves. Usage errors exit 2 with the cause and start nothing.
"""

from __future__ import annotations

import subprocess

import pytest

from fedsync import Federated
from tests.support.cli import fedsync_command, read_line
from tests.support.devices.tree import declaration
from tests.support.processes import start_device, stop_all

MODEL = """\
import numpy as np
import fedsync

declaration = fedsync.FedArrays({"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)})
trains = fedsync.FedArrays({"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)}, lambda m: 1)
"""


@pytest.mark.slow  # three processes
def test_serve_aggregate_runs_a_round_below_for_its_parent(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    leaves = [start_device("tests.support.devices.tree:leaf", seed, 10 * seed, False, False, False, token="below") for seed in (1, 2)]
    command = None
    try:
        command = fedsync_command(
            "serve", "model.py:declaration", "--port", "0", "--aggregate", ",".join(leaf.url for leaf in leaves),
            "--aggregate-token", "below", "--aggregate-timeout", "30",
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        line = read_line(command.stdout, timeout=60)
        assert line.startswith("serving "), line
        with Federated(declaration(), [line.split()[1]], timeout=60) as alg:
            result = alg.round()
        assert result.failures == {} and result.samples == 30
    finally:
        if command is not None:
            command.kill()
            command.wait(timeout=10)
        stop_all(leaves)


@pytest.mark.parametrize(
    "args, says",
    [
        (["model.py:trains", "--aggregate", "http://127.0.0.1:9"], "does not train"),
        (["model.py:declaration", "--aggregate", " , "], "--aggregate needs the devices below"),
        pytest.param(["model.py:declaration", "--aggregate", "dial://site-a"], "--aggregate-listen HOST:PORT", marks=pytest.mark.slow),
        # the others in the full suite (a process each): the fast tier stays under 90 s
        pytest.param(
            ["model.py:declaration", "--aggregate", "dial://site-a", "--aggregate-listen", "9100"],
            "HOST:PORT",
            marks=pytest.mark.slow,
        ),
        pytest.param(["model.py:declaration", "--aggregate", "ftp://x"], "http:// or https://", marks=pytest.mark.slow),
        pytest.param(
            ["model.py:declaration", "--aggregate", "http://x", "--aggregate-cafile", "nope.pem"],
            "not found",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_serve_aggregate_usage_errors_exit_2_naming_the_cause(tmp_path, args, says):
    (tmp_path / "model.py").write_text(MODEL)
    command = fedsync_command("serve", *args, "--port", "0", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = command.communicate(timeout=60)
    assert command.returncode == 2, (out, err)
    assert says in err and "serving" not in out
