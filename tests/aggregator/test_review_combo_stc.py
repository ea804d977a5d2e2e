"""STC through a tree of aggregators (#25): leaves, aggregators and the top in their own processes, over HTTP.

The top's compression reaches through an aggregator as it reaches a device: its ``download="stc"`` (and
``wire_dtype``) is what an aggregator receives when it says it decodes it, and its ``updates="stc"`` ask
reaches the leaves below, so a tree equals the flat round over the same leaves, with the same options.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.aggregator import Aggregator
from tests.support.devices.compressing import model
from tests.support.processes import start_device, stop_all

pytestmark = pytest.mark.slow  # 4 to 6 device processes per run

HERE = "tests.aggregator.test_review_combo_stc:"
LEAF = "tests.support.devices.compressing:least_squares"
STC = {"download": "stc", "download_top_k": 0.25}


def aggregator(urls: list[str], options: dict) -> Aggregator:
    """An aggregator over ``urls``, its declaration with ``options`` (for the round below)."""
    return Aggregator(FedArrays(model(), **options), urls, timeout=30)


def run(top: dict, below: dict, leaves: tuple, tree: bool, rounds: int = 3) -> tuple[np.ndarray, list[int]]:
    """The top's model after ``rounds`` rounds over 4 leaves (two aggregators of 2 if ``tree``), and bytes sent."""
    started = []
    try:
        started = [start_device(LEAF, seed, *leaves) for seed in range(4)]
        urls = [s.url for s in started]
        if tree:
            middle = [start_device(HERE + "aggregator", part, below) for part in (urls[:2], urls[2:])]
            started += middle
            urls = [m.url for m in middle]
        data = FedArrays(model(), **top)
        with Federated(data, urls, timeout=60) as alg:
            results = [alg.round() for _ in range(rounds)]
        assert all(not r.failures for r in results), [r.failures for r in results]
        return data.model["w"].copy(), [r.bytes_sent for r in results]
    finally:
        stop_all(started)


@pytest.mark.parametrize(
    ("top", "leaves"),
    [(STC, (None, None)), ({"updates": "stc", "top_k": 0.25}, (None, None)), (STC, ("stc", 0.25))],
    ids=["top-download-stc", "top-asks-stc", "both"],
)
@pytest.mark.xfail(
    strict=True,
    reason="an Aggregator's /info lists no wire formats (the top sends it whole float32) and it does not pass the "
    "top's updates= ask to the leaves below",
)
def test_the_tops_stc_options_reach_through_aggregators_as_in_the_flat_round(top, leaves):
    flat, _ = run(top, {}, leaves, tree=False)
    tree, sent = run(top, {}, leaves, tree=True)
    np.testing.assert_allclose(tree, flat, rtol=1e-6, atol=1e-7)
    assert np.abs(tree).max() > 0.1  # the rounds trained
    if "download" in top:  # the aggregators received sparse ternary deltas after the first, whole, model
        assert sent[1] < sent[0] and sent[2] < sent[0], sent


def test_an_aggregator_downloading_stc_below_a_top_downloading_stc_equals_the_flat_stc_round():
    # Both levels send STC deltas: the leaves hold the view of what their aggregator loaded, which is the view
    # the top sent it: the leaves train from the same model as in the flat STC round.
    flat, _ = run(STC, {}, ("stc", 0.25), tree=False)
    tree, _ = run(STC, STC, ("stc", 0.25), tree=True)
    np.testing.assert_allclose(tree, flat, rtol=1e-5, atol=1e-6)
