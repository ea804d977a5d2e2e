"""STC both ways between processes (#25): devices in child processes reply sparse ternary updates, the
coordinator downloads sparse ternary deltas, and a device whose STC reply is forged fails alone."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from tests.support.devices.compressing import model
from tests.support.processes import start_device, stop_all

FACTORY = "tests.support.devices.compressing:"


def rounds(devices: list[tuple[str, int]], count: int) -> tuple[np.ndarray, list]:
    data = FedArrays(model(), download="stc", download_top_k=0.25)
    started = [start_device(FACTORY + name, seed, "stc", 0.25) for name, seed in devices]
    try:
        with Federated(data, [d.url for d in started], min_results=2) as alg:
            results = [alg.round() for _ in range(count)]
        return data.model["w"].copy(), [(r.failures, r.bytes_sent, r.bytes_received) for r in results]
    finally:
        stop_all(started)


@pytest.mark.slow  # ~6 s: five device processes
def test_stc_both_ways_over_http_and_a_forged_reply_is_that_devices_failure_alone():
    with_forger, seen = rounds([("least_squares", 0), ("least_squares", 1), ("forging", 2)], 3)
    honest, alone = rounds([("least_squares", 0), ("least_squares", 1)], 3)
    for failures, _, _ in seen:
        ((url, reason),) = failures.items()
        assert "stc bitmap sets a bit at or beyond its 30 entries" in reason, reason
    assert all(not failures for failures, _, _ in alone)
    np.testing.assert_array_equal(with_forger, honest)  # the forged replies changed nothing
    assert np.abs(honest).max() > 0.1  # and the honest ones trained
