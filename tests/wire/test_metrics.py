"""Sample counts and metrics: what train/evaluate callbacks may return, and how reported numbers are checked."""

import math

import numpy as np
import pytest

from fedsync.wire.metrics import MAX_SAMPLES, checked_metrics, checked_samples, parse_counted, weighted_means


@pytest.mark.parametrize(
    "returned",
    [(3, [1]), (True, {}), (-1, {}), (2.5, {}), "3", None, (3, {"loss": 1}, 1)],
)
def test_parse_counted_refuses_what_is_not_a_count_and_quotes_what_was_returned(returned):
    with pytest.raises(TypeError) as refused:
        parse_counted(returned)
    assert f"it returned {returned!r}" in str(refused.value)


def test_parse_counted_takes_numpy_counts_and_scalar_metrics():
    assert parse_counted((np.int64(7), {"loss": np.float32(0.5)})) == (7, {"loss": 0.5})
    assert parse_counted(4) == (4, {})


@pytest.mark.parametrize("metrics", [{"loss": float("nan")}, {"loss": float("inf")}, {"loss": 10**400}])
def test_parse_counted_refuses_metrics_that_are_not_finite(metrics):
    with pytest.raises(ValueError, match="finite"):
        parse_counted((3, metrics))


def test_parse_counted_refuses_counts_over_the_maximum():
    with pytest.raises(ValueError, match=r"2\*\*53"):
        parse_counted(MAX_SAMPLES + 1)


@pytest.mark.parametrize("value", ["0x10", "+5", " 5", "1e3", "-0", "", "5" * 18, True, 1.0, -1, None, [1]])
def test_checked_samples_refuses_anything_but_a_plain_count(value):
    with pytest.raises(ValueError, match="whole number of samples"):
        checked_samples(value)


def test_checked_samples_accepts_decimal_strings_and_integers_up_to_the_maximum():
    assert [checked_samples(v) for v in ("0", "17", 17, np.uint8(3), MAX_SAMPLES)] == [0, 17, 17, 3, MAX_SAMPLES]


@pytest.mark.parametrize("metrics", [{"a": True}, {"a": "1"}, {"a": None}, {"": 1.0}, {"x" * 201: 1.0}, [("a", 1.0)], {str(i): 1.0 for i in range(257)}])
def test_checked_metrics_refuses_what_a_peer_may_not_send(metrics):
    with pytest.raises(ValueError):
        checked_metrics(metrics)


def test_weighted_means_ignore_zero_sample_records_whatever_their_values():
    records = [
        {"samples": 0, "metrics": {"loss": float("nan"), "only_here": 5.0}},
        {"samples": 1, "metrics": {"loss": 1.0}},
        {"samples": 3, "metrics": {"loss": 3.0}},
    ]
    assert weighted_means(records) == {"loss": 2.5}


def test_weighted_means_of_huge_counts_and_values_do_not_overflow():
    big = np.finfo(np.float64).max
    means = weighted_means([{"samples": MAX_SAMPLES, "metrics": {"m": big}}, {"samples": MAX_SAMPLES, "metrics": {"m": big}}])
    assert math.isfinite(means["m"]) and means["m"] == pytest.approx(big)
