"""examples/node-device/: a device in Node.js, written from docs/protocol.md, in real rounds and the checker."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from fedsync import FedArrays, serve
from fedsync.cli import main
from fedsync.client import Federated, Remote
from fedsync.wire import codec

ROOT = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
if NODE is None:
    if os.environ.get("FEDSYNC_REQUIRE_EXTRAS") == "1":
        pytest.fail("node is not installed and FEDSYNC_REQUIRE_EXTRAS=1 (.ci/run installs nodejs)", pytrace=False)
    pytest.skip("node is not installed (apt-get install nodejs; .ci/run does)", allow_module_level=True)


@pytest.fixture
def node_device() -> Iterator[str]:
    process = subprocess.Popen(
        [NODE, str(ROOT / "examples/node-device/device.js"), "--port", "0", "--token", "s3cret"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://"), url
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def model() -> dict[str, np.ndarray]:
    return {"w": np.zeros((3, 1), np.float32), "b": np.zeros(1, np.float32)}


def test_node_device_passes_the_checker(node_device, capsys):
    code = main(["check", node_device, "--token", "s3cret", "--deadline", "60"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0, "\n".join(lines)
    assert lines[-1].startswith("29 passed, 0 failed, 0 skipped")


def test_a_round_mixes_the_node_device_with_a_python_device(node_device):
    def train(m: dict) -> tuple[int, dict]:
        m["w"][:] = 1.0
        m["b"][:] = 3.0
        return 20, {"loss": 2.0}

    python_device = serve(FedArrays(model(), train, evaluate=lambda m: (7, {"loss": 1.0})), port=0, block=False)
    try:
        coordinator = FedArrays(model())
        remotes = [Remote(node_device, token="s3cret"), Remote(python_device.url)]
        fed = Federated(coordinator, remotes, timeout=30, config={"lr": 0.5})
        result = fed.round()
        assert not result.failures, result.failures
        # The Node device's own step from zeros with lr 0.5, recomputed here: its reply is merged 40:20.
        node = Remote(node_device, token="s3cret")
        assert node.info()["repetition"] == result.repetition
        report = coordinator.last_merge
        assert report is not None and report["samples"] == 60
        answer = requests.get(
            f"{node_device}/{result.repetition}/result", headers={"Authorization": "Bearer s3cret"}, timeout=10
        )
        arrays, metadata = codec.decode(answer.content)
        assert metadata["fedsync.samples"] == "40" and np.all(arrays["w"] != 0)  # it trained on its 40 points
        for name, python_value in (("w", 1.0), ("b", 3.0)):  # the sample-weighted mean, rounded once
            expected = ((40 * arrays[name].astype(np.float64) + 20 * python_value) / 60).astype(np.float32)
            assert np.array_equal(coordinator.model[name], expected)
        evaluated = fed.evaluate()
        assert evaluated.samples == 47 and "loss" in evaluated.metrics
        with pytest.raises(Exception, match="token"):
            Remote(node_device, token="wrong").info()
    finally:
        python_device.close()
