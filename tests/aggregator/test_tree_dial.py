"""A tree behind NAT (#21): leaves dial in to an aggregator, which itself dials out to the top coordinator.

Every node is a real process, and every connection is opened outward, from a leaf to its aggregator and from
the aggregator to the top. The top's round result names a failing leaf by its path, ``agg-1/site-c``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from fedsync import Federated  # noqa: E402
from fedsync.transports.dial import Listener  # noqa: E402
from tests.support.devices.tree import declaration  # noqa: E402
from tests.support.processes import start_device, stop_all  # noqa: E402
from tests.transports.dial.e2e import free_port  # noqa: E402

pytestmark = pytest.mark.slow  # five processes

LEAVES = {"site-a": "leaf-token-a", "site-b": "leaf-token-b", "site-c": "leaf-token-c"}


def test_dialed_in_leaves_under_an_aggregator_that_dials_out_to_the_top(tmp_path):
    started = []
    try:
        with Listener("127.0.0.1", 0, devices={"agg-1": "agg-token"}) as top:
            port = free_port()
            below = f"http://127.0.0.1:{port}"
            # The leaves first: they retry until the aggregator listens, and it serves once all three registered.
            for seed, (name, token) in enumerate(LEAVES.items(), start=1):
                fail = name == "site-c"
                started.append(
                    start_device(
                        "tests.support.devices.tree:leaf", seed, 10 * seed, False, fail,
                        token=token, serve={"connect": below, "name": name},
                    )
                )  # fmt: skip
            started.append(
                start_device(
                    "tests.support.devices.tree:dialed_aggregator", port, LEAVES, 2,
                    token="agg-token", serve={"connect": top.url, "name": "agg-1"},
                )
            )  # fmt: skip
            assert top.wait_for(1, timeout=60) == ["agg-1"]
            data = declaration()
            with Federated(data, top.remotes(), timeout=60) as alg:
                first = alg.round()
                second = alg.round()
    finally:
        stop_all(started)
    for result in (first, second):
        assert result.samples == 30  # site-a and site-b, 10 and 20 samples; site-c failed below
        assert set(result.failures) == {"agg-1/site-c"}, result.failures
        assert "leaf 3 cannot train today" in result.failures["agg-1/site-c"]
        assert result.devices["dial://agg-1"]["samples"] == 30
    assert np.isfinite(data.get_arrays()["w"]).all() and data.get_arrays()["w"].any()
