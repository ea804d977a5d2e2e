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
ASK = {"updates": "stc", "top_k": 0.25}


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
    [(STC, (None, None)), (ASK, (None, None)), ({**STC, **ASK}, (None, None)), ({**STC, **ASK}, ("stc", 0.1))],
    ids=["top-downloads-stc", "top-asks-stc", "top-asks-and-downloads-stc", "leaves-declare-their-own"],
)
def test_the_tops_stc_options_reach_through_aggregators_as_in_the_flat_round(top, leaves):
    flat, flat_sent = run(top, {}, leaves, tree=False)
    tree, tree_sent = run(top, {}, leaves, tree=True)
    np.testing.assert_allclose(tree, flat, rtol=1e-5, atol=1e-6)
    assert np.abs(tree).max() > 0.1  # the rounds trained
    # Each aggregator gets the payload each leaf gets in the flat round: sparse ternary deltas after round 1
    assert [2 * sent for sent in tree_sent] == flat_sent


def test_stc_downloads_at_both_levels_with_the_same_share_equal_the_flat_stc_round():
    # The top sends STC deltas to the aggregators, which send STC deltas of what they loaded to the leaves. The
    # aggregator's delta is the top's decoded STC delta (at most its share of entries, one magnitude): STC again
    # at the same share keeps it whole, so the leaves hold the flat round's views. The aggregators reply updates
    # (the top asks), so the top keeps what its download left out, as in the flat round.
    flat, _ = run({**STC, **ASK}, {}, (None, None), tree=False)
    tree, _ = run({**STC, **ASK}, STC, (None, None), tree=True)
    np.testing.assert_allclose(tree, flat, rtol=1e-5, atol=1e-6)
    assert np.abs(tree).max() > 0.1
