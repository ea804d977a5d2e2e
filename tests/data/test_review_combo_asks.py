"""A coordinator that asks for compressed updates (``updates=``) keeps asking when its download is a delta (#25).

The ask travels in the payload's metadata (``fedsync.updates``). A coordinator with ``download="delta"`` or
``"stc"`` sends the whole model in round 1 and a difference from each device's view after: every one of those
payloads must carry the ask, or from round 2 on the devices reply whole weights and the upload is not compressed.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation
from tests.support.devices.compressing import least_squares, model


def replies(coordinator: dict, devices: tuple) -> tuple[list[int], np.ndarray]:
    """Bytes the coordinator received each round over 3 rounds of 3 devices, and the model it ends with."""
    data = FedArrays(model(), **coordinator)
    history = run_simulation(lambda i: least_squares(i, *devices), 3, 3, data=data, progress=False)
    return [r.bytes_received for r in history], data.model["w"].copy()


@pytest.mark.parametrize(
    "download",
    [{"download": "delta"}, {"download": "stc", "download_top_k": 0.25}, {"download": "delta", "download_top_k": 0.5}],
)
@pytest.mark.parametrize("asked", ["stc", "topk"])
def test_a_coordinators_ask_reaches_the_devices_in_every_round_of_a_delta_download(asked, download):
    got, model_asked = replies({"updates": asked, "top_k": 0.05, **download}, (None, None))
    declared, model_declared = replies(download, (asked, 0.05))
    whole, _ = replies(download, (None, None))
    # Asked or declared on the devices: the same replies, round after round, smaller than whole weights.
    assert got == declared, (got, declared)
    assert all(g < w for g, w in zip(got, whole, strict=True)), (got, whole)
    np.testing.assert_array_equal(model_asked, model_declared)
