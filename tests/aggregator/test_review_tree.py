"""A hostile review of the aggregator tree (#21 item 1): each test is one finding, failing today.

Each test states what the project's non-negotiables ask of a tree. The first three failed before the fixes of
commit 2699c4a, the evaluation's before its answer carried the weights, the deadline's before X-Fedsync-Deadline.
Real HTTP: every device and aggregator is served by fedsync.serve in this process's threads, on loopback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated, Remote
from fedsync.aggregator import Aggregator
from fedsync.wire import codec
from fedsync.wire.reports import FAILURES_KEY, MAX_FAILURES, MAX_REASON, report_metadata
from tests.support.devices.tree import declaration, leaf, model

TOKEN = "s3cret-review-token-0123456789abcdef"


@contextlib.contextmanager
def served(*feds, token=None):
    """Each FedData served over HTTP on a free port; their URLs. Every server is closed on the way out."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(fedsync.serve(f, port=0, block=False, token=token)).url for f in feds]


class RawFailures(FedArrays):
    """A hostile leaf that writes its failures below itself, past what fedsync's own writer would send."""

    raw: dict[str, str] = {}

    def serialize(self, repetition):
        metadata = {**report_metadata(self.report()), FAILURES_KEY: json.dumps(self.raw)}
        return codec.encode_payload(self.get_arrays(), metadata)


def header_bytes(fed: FedArrays) -> int:
    """The length of the header ``fed``'s reply carries (the 8-byte little-endian prefix of the payload)."""
    return struct.unpack("<Q", bytes(fed.serialize(1))[:8])[0]


def test_review_a_hostile_leaf_cannot_push_its_aggregators_reply_over_the_parents_header_limit():
    # A hostile leaf fills fedsync.failures with MAX_FAILURES entries whose reasons (within MAX_REASON characters,
    # each escaped twice on the wire) bring its own header just under the model's header limit: the aggregator
    # accepts it. The aggregator then writes the same failures under "host:port/site-NNN": about 4 KiB more.
    limit = declaration()._header_limit(declaration().layout())
    honest = leaf(1, 5)
    hostile = RawFailures(model(), honest.train)

    def fill(length: int) -> int:
        hostile.raw = {f"site-{i:03d}": "é" * length for i in range(MAX_FAILURES)}
        return header_bytes(hostile)

    low, high = 1, MAX_REASON  # the longest reason that keeps the leaf's own header within the limit
    for _ in range(12):  # bounded: a binary search over [1, 1000]
        if low >= high:
            break
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fill(middle) <= limit else (low, middle - 1)
    assert fill(low) <= limit < fill(MAX_REASON), "the leaf's reply must fit the limit, and could have exceeded it"
    fill(low)
    with served(hostile, leaf(2, 10)) as below, served(Aggregator(declaration(), below, timeout=30)) as (middle,):
        with Federated(declaration(), [middle], timeout=30) as alg:
            result = alg.round()  # today: RoundFailed, "header length ... exceeds the ... bytes"
    # The honest leaf's 10 samples reach the top, whatever becomes of the hostile leaf's report.
    assert middle not in result.failures and result.samples >= 10


def test_review_a_failure_reason_below_cannot_write_terminal_escapes_into_the_tops_logs(caplog):
    hostile = leaf(1, 5)
    forged = "\x1b[2J\x1b[1;1H\nround 1 of 1: every device answered\x07"
    hostile.failures_below = {"site-c": forged}
    with served(hostile, leaf(2, 10)) as (bad, good):
        with caplog.at_level(logging.WARNING, logger="fedsync"):
            with Federated(declaration(), [bad, good], timeout=30) as alg:
                history = alg.fit(1, progress=False)
    result = history[-1]
    assert good not in result.failures and result.samples is not None and result.samples >= 10  # honest merged
    texts = [*result.failures, *result.failures.values(), *(r.getMessage() for r in caplog.records)]
    # A failure may be kept (escaped) or the reply refused (that device's failure alone): never raw controls.
    assert all(text.isprintable() for text in texts), [t for t in texts if not t.isprintable()]


def test_review_a_failure_path_below_cannot_plant_the_token_in_the_history(tmp_path):
    planting = leaf(1, 5)
    planting.failures_below = {f"site-{TOKEN}": f"failed with {TOKEN}"}  # the token the coordinator sent it
    honest = leaf(2, 10)
    folder = tmp_path / "run"
    with served(planting, token=TOKEN) as (bad,), served(honest) as (good,):
        with Federated(declaration(), [Remote(bad, token=TOKEN), good], timeout=30, checkpoint=folder) as alg:
            history = alg.fit(1, progress=False)
    assert any("site-" in key for key in history[-1].failures)  # the failure below is recorded ...
    texts = {"history": history.to_json().encode()}
    texts.update({f"file {p.name}": p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    for where, data in texts.items():  # ... without the token, in its reason (scrubbed today) or its path
        assert TOKEN.encode() not in data, f"the token is in the {where}"


def test_review_a_federated_evaluation_through_a_tree_equals_the_flat_one():
    def evaluating(seed: int, n: int, metrics: dict[str, float]) -> FedArrays:
        data = leaf(seed, n)
        data.evaluate_fn = lambda m: (n, metrics)
        return data

    leaves = [
        evaluating(1, 10, {"mse": 1.0}),  # below agg-1: reports no accuracy
        evaluating(2, 30, {"mse": 2.0, "accuracy": 0.5}),  # below agg-1
        evaluating(3, 20, {"mse": 3.0, "accuracy": 0.9}),  # below agg-2
    ]
    with served(*leaves) as urls:
        with Federated(declaration(), urls, timeout=30) as alg:
            flat = alg.evaluate()
        with served(Aggregator(declaration(), urls[:2]), Aggregator(declaration(), urls[2:])) as middles:
            with Federated(declaration(), middles, timeout=30) as alg:
                tree = alg.evaluate()
    assert flat.metrics["accuracy"] == pytest.approx((0.5 * 30 + 0.9 * 20) / 50)
    assert tree.samples == flat.samples == 60
    assert tree.metrics == pytest.approx(flat.metrics)  # today accuracy is (0.5 * 40 + 0.9 * 20) / 60


def test_review_the_tree_helpers_here_merge_an_honest_tree():
    """The tests above fail for their finding, not for their set-up: the same tree, honest, merges."""
    with served(leaf(1, 5), leaf(2, 10)) as below, served(Aggregator(declaration(), below, timeout=30)) as (middle,):
        top = declaration()
        with Federated(top, [middle], timeout=30) as alg:
            result = alg.round()
    assert result.samples == 15 and result.failures == {}
    assert not np.array_equal(top.get_arrays()["w"], model()["w"])


@pytest.mark.slow  # waits out an aggregator's round below (about 6 s)
def test_review_an_aggregator_answers_within_its_parents_deadline_when_a_leaf_below_hangs():
    release = threading.Event()

    def hang(m):
        release.wait(20)  # bounded: released at the end of the test
        return 5

    try:
        with served(FedArrays(model(), hang), leaf(2, 10)) as below:
            with served(Aggregator(declaration(), below, timeout=6, min_results=1)) as (middle,):
                # The aggregator's own timeout (6 s) is above the parent's (4 s): X-Fedsync-Deadline cuts its
                # round below to end in time (about 2 s, its grace and the reply's upload kept aside).
                with Federated(declaration(), [middle], timeout=4) as alg:
                    result = alg.round()  # before #21's deadline header: RoundFailed, the aggregator late
                    second = alg.round()  # and then busy with the abandoned round below
    finally:
        release.set()
    assert result.samples == 10 and second.samples == 10  # the honest leaf, each round, within the parent's 4 s
