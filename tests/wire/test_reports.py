"""A reply's report (fedsync.wire.reports): an aggregator's metric weights and failures below are checked before use.

Every bound of an entry a peer writes is refused with PayloadRejected naming the entry; and end to end, a device
whose reply carries a bad one is that device's failure alone: the honest device's reply is merged.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated
from fedsync.errors import PayloadRejected
from fedsync.wire import codec
from fedsync.wire.reports import (
    FAILURES_KEY,
    MAX_FAILURES,
    MAX_PATH,
    MAX_REASON,
    METRICS_KEY,
    SAMPLES_KEY,
    WEIGHTS_KEY,
    evaluation_report,
    metric_weights,
    node_name,
    read_report,
    report_metadata,
)

BASE = {SAMPLES_KEY: "30", METRICS_KEY: json.dumps({"loss": 0.5, "acc": 0.9})}


def test_a_report_reads_back_what_was_written():
    report = {
        "samples": 30,
        "metrics": {"loss": 0.5, "acc": 0.9},
        "weights": {"loss": 30, "acc": 12},
        "below": {"site-c": "RemoteTimeout: late"},
    }
    assert read_report(report_metadata(report)) == report
    assert read_report(BASE) == {"samples": 30, "metrics": {"loss": 0.5, "acc": 0.9}}  # a plain device's reply


@pytest.mark.parametrize(
    "entries, named",
    [
        ({WEIGHTS_KEY: '{"loss": 31}'}, "in [1, 30]"),  # more than the reply's samples
        ({WEIGHTS_KEY: '{"loss": 0}'}, "in [1, 30]"),
        ({WEIGHTS_KEY: '{"loss": 2.5}'}, "whole number"),
        ({WEIGHTS_KEY: '{"loss": true}'}, "whole number"),
        ({WEIGHTS_KEY: '{"loss": "3"}'}, "whole number"),
        ({WEIGHTS_KEY: '{"f1": 3}'}, "does not carry"),  # a weight for a metric the reply has not
        ({WEIGHTS_KEY: '{"loss": 3, "loss": 4}'}, "twice"),
        ({WEIGHTS_KEY: "[3]"}, "JSON object"),
        ({WEIGHTS_KEY: "{nope"}, "not JSON"),
        ({WEIGHTS_KEY: '{"loss": NaN}'}, "NaN"),
        ({WEIGHTS_KEY: "[" * 100_000}, "not JSON"),  # deep nesting: refused, never a RecursionError
        ({FAILURES_KEY: json.dumps({f"d{i}": "x" for i in range(MAX_FAILURES + 1)})}, "more than"),
        ({FAILURES_KEY: json.dumps({"x" * (MAX_PATH + 1): "why"})}, "printable characters"),
        ({FAILURES_KEY: json.dumps({"": "why"})}, "printable characters"),
        ({FAILURES_KEY: json.dumps({"site\x1b[2J": "why"})}, "printable characters"),  # a terminal escape
        ({FAILURES_KEY: json.dumps({"site-c": "x" * (MAX_REASON + 1)})}, "at most"),
        ({FAILURES_KEY: json.dumps({"site-c": 3})}, "text"),
        ({FAILURES_KEY: '"site-c"'}, "JSON object"),
    ],
)
def test_every_bad_entry_is_refused_naming_it(entries, named):
    with pytest.raises(PayloadRejected, match=re.escape(named)) as refused:
        read_report({**BASE, **entries})
    assert next(iter(entries)) in str(refused.value)


@pytest.mark.parametrize(
    "answer, named",
    [
        ({"samples": 10, "metrics": {"acc": 0.5}, "weights": {"acc": 11}}, "in [1, 10]"),
        ({"samples": 10, "metrics": {"acc": 0.5}, "weights": {"f1": 3}}, "does not carry"),
        ({"samples": 10, "metrics": {"acc": 0.5}, "weights": [3]}, "JSON object"),
        ({"samples": "10", "metrics": {}}, "whole number"),
        ({"samples": 10, "metrics": {"acc": float("nan")}}, "finite"),
    ],
)
def test_an_evaluation_answer_is_checked_as_a_reply_is(answer, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        evaluation_report(answer)
    good = {"samples": 10, "metrics": {"acc": 0.5}, "weights": {"acc": 4}}
    assert evaluation_report(good) == good


def test_metric_weights_default_to_samples_and_skip_empty_replies():
    records = [
        {"samples": 10, "metrics": {"loss": 1.0}},
        {"samples": 30, "metrics": {"loss": 2.0, "acc": 0.5}, "weights": {"loss": 30, "acc": 12}},
        {"samples": 0, "metrics": {}},
    ]
    assert metric_weights(records) == {"acc": 12, "loss": 40}


def test_writing_keeps_the_bounds_reading_checks():
    below = {f"site-{i:04d}": "y" * (MAX_REASON + 50) for i in range(MAX_FAILURES + 10)}
    report = read_report(report_metadata({"samples": 1, "metrics": {}, "below": below}))
    kept = {path: why for path, why in report["below"].items() if path != "+more"}
    assert len(report["below"]) <= MAX_FAILURES and all(len(why) == MAX_REASON for why in kept.values())
    assert report["below"]["+more"].startswith(f"{len(below) - len(kept)} more device(s) below failed")
    # non-ASCII text costs more header bytes than characters: the writer counts bytes
    wide = {f"site-{i:04d}": "\u00e9" * MAX_REASON for i in range(MAX_FAILURES)}
    metadata = report_metadata({"samples": 1, "metrics": {}, "below": wide})
    assert len(json.dumps(metadata[FAILURES_KEY])) <= 256 * 1024 and "+more" in read_report(metadata)["below"]


def test_node_names():
    assert node_name("dial://site-c") == "site-c"
    assert node_name("http://10.0.0.5:8000") == "10.0.0.5:8000"
    assert node_name("https://host:9000/model/") == "host:9000/model"
    assert node_name("agg-1") == "agg-1"


class _Lying(FedArrays):
    """A device whose reply claims weights and failures out of bounds (set by the test)."""

    lie: dict[str, str] = {}

    def serialize(self, repetition):
        arrays = self.get_arrays()
        metadata = {**report_metadata(self.report()), **self.lie}
        return codec.encode_payload(arrays, metadata)


@pytest.mark.parametrize(
    "lie", [{WEIGHTS_KEY: '{"loss": 999}'}, {FAILURES_KEY: json.dumps({"\x07bell": "x"})}, {FAILURES_KEY: "{"}]
)
def test_a_reply_with_a_bad_report_is_that_devices_failure_alone(lie):
    def train(value, samples):
        def run(model):
            model["w"][...] = value
            return samples, {"loss": value}

        return run

    liar = _Lying({"w": np.zeros(4, np.float32)}, train(100.0, 5))
    liar.lie = lie
    honest = FedArrays({"w": np.zeros(4, np.float32)}, train(2.0, 10))
    coordinator = FedArrays({"w": np.zeros(4, np.float32)})
    with fedsync.serve(liar, port=0, block=False) as bad, fedsync.serve(honest, port=0, block=False) as good:
        with Federated(coordinator, [bad.url, good.url], min_results=1, timeout=30) as alg:
            result = alg.round()
    assert set(result.failures) == {bad.url} and next(iter(lie)) in result.failures[bad.url]
    assert result.samples == 10 and result.metrics == {"loss": 2.0}
    np.testing.assert_array_equal(coordinator.get_arrays()["w"], np.full(4, 2.0, np.float32))

