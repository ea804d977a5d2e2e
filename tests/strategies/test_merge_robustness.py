"""Issue #10, merge side: numbers a device reports are checked before any arithmetic (kind 2),
headers are bounded by the model's own (kind 5), integers and booleans merge exactly (kind 9).

Replies are built with ``codec.encode`` and merged with ``FedArrays.merge`` where the
arithmetic is the point; rounds over real device processes show that a bad reply is
its device's failure, never the round's.
"""

from __future__ import annotations

import io
import json
import struct
import time
import types
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsync import FedArrays, Federated
from fedsync.wire import codec, compression
from fedsync.data.arrays import METRICS_KEY, SAMPLES_KEY
from fedsync.errors import CodecError, EmptyRound, PayloadRejected, RoundFailed
from fedsync.wire.metrics import MAX_METRIC_NAME, MAX_METRICS, MAX_SAMPLES, weighted_means
from fedsync.wire.replies import ReplyStream
from fedsync.wire.transfer import Deadline
from fedsync.strategies import FedAvg, Strategy, WeightedSum
from tests.support.devices.merge import weights

INTEGER_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


def reply(arrays: dict, samples: int | str, metrics: str = "{}") -> bytes:
    return codec.encode(arrays, {SAMPLES_KEY: str(samples), METRICS_KEY: metrics})


def merge_one_array(dtype, replies: list[tuple[object, int]], shape=(3,)) -> np.ndarray:
    """``FedArrays.merge`` of replies ``(value, samples)`` of a single array ``a``."""
    data = FedArrays({"a": np.zeros(shape, dtype)})
    data.merge([reply({"a": np.full(shape, value, dtype)}, samples) for value, samples in replies], 1)
    return data.model["a"]


class Response:
    """What ``ReplyStream`` reads from (an answer of the transport contract), over bytes in memory.

    Only to count the bytes the merge reads before refusing a reply; rounds over
    real HTTP are below.
    """

    def __init__(self, body: bytes) -> None:
        self.raw = io.BytesIO(body)
        self.closed = False

    def readinto(self, view, deadline) -> int:
        return self.raw.readinto(view)

    def close(self) -> None:
        self.closed = True


def stream(body: bytes) -> tuple[ReplyStream, Response]:
    response = Response(body)
    return ReplyStream("http://device", (response, len(body)), lambda: (Response(body), len(body)), Deadline.within(60)), response


# -- kind 9: integer and boolean arrays merge exactly ------------------------------


def test_uint8_200_from_two_devices_of_10_samples_merges_to_200():
    assert merge_one_array("uint8", [(200, 10), (200, 10)]).tolist() == [200, 200, 200]


def test_uint8_mask_of_300_samples_each_merges_to_the_mask():
    mask = np.array([0, 1, 1, 0], np.uint8)
    data = FedArrays({"m": np.zeros(4, np.uint8)})
    data.merge([reply({"m": mask}, 300), reply({"m": mask}, 300)], 1)
    assert data.model["m"].tolist() == [0, 1, 1, 0]


def test_int32_100000_with_60000_samples_each_merges_to_100000():
    assert merge_one_array("int32", [(100000, 60000), (100000, 60000)]).tolist() == [100000] * 3


def test_int64_above_2_to_the_53_merges_to_itself():
    assert merge_one_array("int64", [(2**62 + 3, 10), (2**62 + 3, 10)]).tolist() == [2**62 + 3] * 3
    assert merge_one_array("uint64", [(2**64 - 1, MAX_SAMPLES), (2**64 - 1, MAX_SAMPLES)]).tolist() == [2**64 - 1] * 3


def test_integer_means_round_half_to_even():
    # 1.5 -> 2, 2.5 -> 2, -127.5 -> -128, 3.5 -> 4: the rounding FedAvg documents.
    assert merge_one_array("int8", [(1, 1), (2, 1)]).tolist() == [2] * 3
    assert merge_one_array("int8", [(2, 1), (3, 1)]).tolist() == [2] * 3
    assert merge_one_array("int8", [(-128, 1), (-127, 1)]).tolist() == [-128] * 3
    assert merge_one_array("uint8", [(3, 5), (4, 5)]).tolist() == [4] * 3
    assert merge_one_array("int64", [(2**63 - 1, 3), (2**63 - 2, 1)]).tolist() == [2**63 - 1] * 3  # 2**63 - 1.25


def test_booleans_take_the_weighted_majority_and_a_tie_gives_true():
    assert merge_one_array(bool, [(True, 1), (False, 2)]).tolist() == [False] * 3
    assert merge_one_array(bool, [(True, 2), (False, 1)]).tolist() == [True] * 3
    assert merge_one_array(bool, [(True, 5), (False, 5)]).tolist() == [True] * 3
    assert merge_one_array(bool, [(True, MAX_SAMPLES), (False, MAX_SAMPLES), (False, 1)]).tolist() == [False] * 3


@st.composite
def integer_rounds(draw):
    dtype = np.dtype(draw(st.sampled_from(INTEGER_DTYPES + ["bool"])))
    if dtype.kind == "b":
        values = st.booleans()
    else:
        info = np.iinfo(dtype)
        values = st.integers(int(info.min), int(info.max))
    count = draw(st.integers(1, 5))
    replies = [
        (draw(st.lists(values, min_size=3, max_size=3)), draw(st.integers(0, MAX_SAMPLES) | st.sampled_from([1, MAX_SAMPLES])))
        for _ in range(count)
    ]
    if not any(samples for _, samples in replies):
        replies[0] = (replies[0][0], draw(st.integers(1, MAX_SAMPLES)))
    return dtype, replies


@pytest.mark.slow  # ~0.7 s: keeps the fast tier under 90 s
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(integer_rounds())
def test_integer_and_boolean_means_are_exact_for_every_dtype_and_count(case):
    dtype, replies = case
    data = FedArrays({"a": np.zeros(3, dtype)})
    data.merge([reply({"a": np.array(values, dtype)}, samples) for values, samples in replies], 1)
    total = sum(samples for _, samples in replies)
    for i in range(3):
        exact = Fraction(sum(int(values[i]) * samples for values, samples in replies), total)
        expected = bool(exact >= Fraction(1, 2)) if dtype.kind == "b" else round(exact)  # round(Fraction): half to even
        assert data.model["a"][i] == expected, (i, exact)
    assert data.model["a"].dtype == dtype


# -- kind 2: floating sums cannot overflow; numbers are checked before arithmetic --


def test_float32_near_its_maximum_from_two_one_sample_devices_stays_finite():
    assert merge_one_array("float32", [(3e38, 1), (3e38, 1)]).tolist() == [np.float32(3e38)] * 3
    assert merge_one_array("float32", [(3e38, 1), (-3e38, 1), (3e38, 2)]).tolist() == [np.float32(1.5e38)] * 3


def test_huge_sample_counts_times_huge_values_do_not_overflow():
    merged = merge_one_array("float32", [(1e30, 10**15), (3e30, 10**15)])
    np.testing.assert_allclose(merged, 2e30, rtol=1e-6)
    merged = merge_one_array("float16", [(60000.0, MAX_SAMPLES), (65000.0, MAX_SAMPLES)])
    np.testing.assert_allclose(merged.astype(np.float64), 62500.0, rtol=1e-3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
            st.integers(1, MAX_SAMPLES) | st.sampled_from([1, MAX_SAMPLES]),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_float32_means_are_finite_and_close_to_the_exact_weighted_mean(replies):
    data = FedArrays({"a": np.zeros(4, np.float32)})
    data.merge([reply({"a": np.array(values, np.float32)}, samples) for values, samples in replies], 1)
    total = sum(samples for _, samples in replies)
    peak = max(abs(v) for values, _ in replies for v in values)
    for i in range(4):
        exact = sum(Fraction(values[i]) * samples for values, samples in replies) / total
        # a few float32 roundings per reply, each relative to the largest value
        assert abs(Fraction(float(data.model["a"][i])) - exact) <= Fraction(len(replies) * 3 * peak) / 2**23 + Fraction(1, 2**140)


def test_pieces_of_a_reply_fold_in_any_order_to_the_same_mean():
    rng = np.random.default_rng(0)
    replies = [(rng.standard_normal(1000).astype(np.float32), samples) for samples in (3, 10, 7)]
    ints = [(rng.integers(-(2**40), 2**40, 1000), samples) for _, samples in replies]
    whole, pieces = WeightedSum({"f": np.zeros(1000, np.float32), "i": np.zeros(1000, np.int64)}), None
    pieces = WeightedSum({"f": np.zeros(1000, np.float32), "i": np.zeros(1000, np.int64)})
    for (values, samples), (integers, _) in zip(replies, ints):
        whole.start(samples)
        whole.add("f", 0, values, samples)
        whole.add("i", 0, integers, samples)
        pieces.start(samples)
        for first in (900, 0, 450, 100):  # out of order, uneven sizes
            end = {900: 1000, 0: 100, 450: 900, 100: 450}[first]
            pieces.add("i", first, integers[first:end], samples)
            pieces.add("f", first, values[first:end], samples)
    a, b = whole.result(20), pieces.result(20)
    assert np.array_equal(a["f"], b["f"]) and np.array_equal(a["i"], b["i"])
    exact = sum(values.astype(np.float64) * samples for values, samples in replies) / 20
    np.testing.assert_allclose(a["f"], exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "samples",
    ["1" + "0" * 40, "1" + "0" * 400, str(MAX_SAMPLES + 1), "-1", "1.5", "1e3", "abc", "", " 1", "１"],
    ids=["1e40", "1e400", "2**53+1", "negative", "fraction", "exponent", "text", "empty", "space", "fullwidth"],
)
def test_a_sample_count_out_of_range_is_rejected_before_any_arithmetic(samples):
    data = FedArrays(weights())
    with pytest.raises(PayloadRejected, match="fedsync.samples"):
        data.merge([reply(weights(), samples)], 1)
    assert data.samples == 0 and data.last_merge is None


@pytest.mark.parametrize(
    "metrics",
    [
        '{"loss": NaN}', '{"loss": Infinity}', '{"loss": -Infinity}', '{"loss": 1e400}',
        '{"loss": ' + "9" * 400 + "}", '{"loss": "0.1"}', '{"loss": true}', '{"loss": null}', '{"loss": [1]}',
        "[1, 2]", '"loss"', "not json", "[" * 100_000, json.dumps({f"m{i}": 1 for i in range(MAX_METRICS + 1)}),
        json.dumps({"x" * (MAX_METRIC_NAME + 1): 1}),
    ],
    ids=[
        "nan", "inf", "-inf", "1e400", "400-digits", "string", "bool", "null", "list", "array", "json-string",
        "garbage", "deep", "too-many", "long-name",
    ],
)
def test_metrics_that_are_not_finite_numbers_are_rejected(metrics):
    data = FedArrays(weights())
    with pytest.raises(PayloadRejected, match="fedsync.metrics"):
        data.merge([reply(weights(), 5, metrics)], 1)
    assert data.last_merge is None


def test_metrics_near_the_float_maximum_average_without_overflow():
    # Issue #10 kind 2, another instance: each weight samples / total is rounded, and these
    # add up to a little over 1, so fsum overflowed (OverflowError escaped round() after
    # the model was already changed, and Federated.evaluate).
    largest = float(np.finfo(np.float64).max)
    data = FedArrays(weights())
    counts = (8585386974194681, 1996546932452009, 8134197760409633)
    data.merge([reply(weights(), n, json.dumps({"loss": largest})) for n in counts], 1)
    assert data.last_merge["metrics"] == {"loss": largest}
    records = [{"samples": n, "metrics": {"m": v}} for n, v in [(860, largest), (62, largest), (914, largest), (1, -largest)]]
    mean = weighted_means(records)["m"]
    assert np.isfinite(mean) and 0 < mean <= largest


def test_zero_sample_replies_weigh_nothing_whatever_their_values_and_metrics():
    honest = {name: np.full_like(a, 2.0) for name, a in weights().items()}
    poisoned = {name: np.full_like(a, np.nan) for name, a in weights().items()}
    data = FedArrays(weights())
    data.merge([reply(poisoned, 0, '{"loss": 1000}'), reply(honest, 10, '{"loss": 0.5}'), reply(poisoned, 0)], 1)
    assert np.all(data.model["w"] == 2.0) and np.all(data.model["b"] == 2.0)
    assert data.last_merge["metrics"] == {"loss": 0.5} and data.last_merge["samples"] == 10


def test_a_zero_sample_stream_is_not_read_past_its_header_but_its_layout_is_checked():
    poisoned = {name: np.full_like(a, np.nan) for name, a in weights().items()}
    body = reply(poisoned, 0)
    header_end = 8 + struct.unpack("<Q", body[:8])[0]
    zero, response = stream(body)
    data = FedArrays(weights())
    data.merge([zero, reply({name: np.full_like(a, 2.0) for name, a in weights().items()}, 4)], 1)
    assert response.raw.tell() == header_end and zero.rejected is None
    assert np.all(data.model["w"] == 2.0)
    wrong, _ = stream(reply({"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}, 0))
    data.merge([wrong, reply({name: np.full_like(a, 3.0) for name, a in weights().items()}, 4)], 2)
    assert "expected (3, 2) float32" in wrong.rejected


def test_every_reply_of_zero_samples_fails_the_round_with_the_model_unchanged():
    data = FedArrays({name: np.full_like(a, 7.0) for name, a in weights().items()})
    with pytest.raises(EmptyRound, match="every device that answered \\(2\\) reported 0 samples"):  # #23: a policy
        data.merge([reply(weights(), 0), reply(weights(), 0)], 1)
    assert np.all(data.model["w"] == 7.0) and data.last_merge is None
    with pytest.raises(RoundFailed, match="no device reported any training samples"):
        FedAvg().aggregate(weights(), [(weights(), 0)])


def test_a_merged_result_with_nan_or_infinity_is_not_committed():
    class Amplify(Strategy):  # a strategy bug, or values no average can hold
        def aggregate(self, current, results):
            with np.errstate(over="ignore"):
                return {name: a * np.float32(1e38) for name, a in next(iter(results))[0].items()}

    data = FedArrays({name: np.full_like(a, 7.0) for name, a in weights().items()}, strategy=Amplify())
    with pytest.raises(RoundFailed, match="NaN or infinity"):
        data.merge([reply({name: np.full_like(a, 100.0) for name, a in weights().items()}, 3)], 1)
    assert np.all(data.model["w"] == 7.0) and data.last_merge is None


def test_zero_sample_replies_never_reach_a_strategy_that_takes_whole_replies():
    seen = []

    class Record(Strategy):
        def aggregate(self, current, results):
            for arrays, samples in results:
                seen.append(samples)
                last = {name: np.array(a) for name, a in arrays.items()}
            return last

    poisoned = {name: np.full_like(a, np.nan) for name, a in weights().items()}
    data = FedArrays(weights(), strategy=Record())
    data.merge([reply(poisoned, 0), reply({name: np.full_like(a, 1.0) for name, a in weights().items()}, 2)], 1)
    assert seen == [2] and np.all(data.model["w"] == 1.0)


def test_the_merged_sample_count_stays_within_what_peers_accept():
    data = FedArrays(weights())
    data.merge([reply(weights(), MAX_SAMPLES), reply(weights(), MAX_SAMPLES)], 1)
    assert data.last_merge["samples"] == 2 * MAX_SAMPLES and data.samples == MAX_SAMPLES
    FedArrays(weights()).check(bytes(data.serialize(2)), 2)  # a device accepts the coordinator's payload


# -- compression's wire metadata is checked too -----------------------------------


def packed(wire: str) -> bytes:
    arrays = {"w": np.ones((3, 2), np.int8), "b": np.ones(2, np.int8)}
    return codec.encode(arrays, {SAMPLES_KEY: "3", compression.WIRE_KEY: wire})


@pytest.mark.parametrize(
    "scale, message",
    [
        ("1e300", "int8 scale must be a number in"), ("1e39", "int8 scale must be a number in"),
        # Infinity is not JSON: the wire metadata is refused before its scales are read.
        ("NaN", "not a JSON object"), ("Infinity", "'fedsync.wire' holds Infinity, not a finite number"), ("0", "int8 scale"),
        ("-0.5", "int8 scale"), ("true", "int8 scale"), ('"0.5"', "int8 scale"), ("9" * 400, "int8 scale"),
    ],
)
def test_int8_scales_must_be_positive_and_keep_values_finite(scale, message):
    data = FedArrays(weights(), wire_dtype="int8")
    wire = '{"w": {"as": "int8", "scale": %s}, "b": {"as": "int8", "scale": 0.5}}' % scale
    if scale == "NaN":
        wire = wire.replace("NaN", '"NaN"')  # json.loads reads NaN; as a string it fails as not a number
        message = "int8 scale"
    with pytest.raises(PayloadRejected, match=message):
        data.merge([packed(wire)], 1)


@pytest.mark.parametrize(
    "wire",
    [
        '{"w": {"as": "int8", "scale": 0.5, "extra": 1}, "b": {"as": "int8", "scale": 0.5}}',
        '{"w": {"as": ["int8"], "scale": 0.5}, "b": {"as": "int8", "scale": 0.5}}',
        '{"w": {"as": "int8"}, "b": {"as": "int8", "scale": 0.5}}',
        "[" * 100_000,
    ],
    ids=["unknown-key", "unhashable-kind", "no-scale", "deep"],
)
def test_malformed_wire_metadata_is_rejected(wire):
    with pytest.raises(PayloadRejected):
        FedArrays(weights(), wire_dtype="int8").merge([packed(wire)], 1)


def test_an_honest_int8_payload_of_a_float16_model_at_its_maximum_unpacks():
    arrays = {"h": np.array([65504.0, -65504.0, 1.0], np.float16)}
    device = FedArrays({"h": arrays["h"].copy()}, wire_dtype="int8")
    device.samples = 1
    data = FedArrays({"h": np.zeros(3, np.float16)}, wire_dtype="int8")
    data.merge([bytes(device.serialize(1))], 1)
    np.testing.assert_allclose(data.model["h"].astype(np.float64), [65504.0, -65504.0, 0.0], atol=65504 / 254)


# -- kind 5: a payload header is bounded by the model's own -------------------------


def header_of(text: bytes, data_size: int = 0) -> bytes:
    padded = text + b" " * (-len(text) % 8)
    return struct.pack("<Q", len(padded)) + padded + b"\0" * data_size


def huge_metadata(megabytes: int) -> bytes:
    body = b'{"__metadata__": {"fedsync.samples": "1", "junk": "' + b"x" * (megabytes << 20) + b'"}}'
    return header_of(body)


def many_tensors(count: int) -> bytes:
    entries = b",".join(b'"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i for i in range(count))
    return header_of(b"{" + entries + b"}")


def test_a_90_mib_header_is_refused_after_reading_its_8_byte_length():
    body = huge_metadata(90)
    with pytest.raises(CodecError, match="exceeds HEADER_LIMIT"):
        codec.decode(body)
    reply_stream, response = stream(body)
    data = FedArrays(weights())
    data.merge([reply_stream, reply(weights(), 1)], 1)
    assert "can need" in reply_stream.rejected and response.raw.tell() == 8


def test_a_million_tensor_entries_are_refused_before_the_header_is_read():
    body = many_tensors(1_000_000)
    with pytest.raises(CodecError, match="exceeds HEADER_LIMIT"):
        codec.decode(body)
    reply_stream, response = stream(body)
    FedArrays(weights()).merge([reply_stream, reply(weights(), 1)], 1)
    assert "can need" in reply_stream.rejected and response.raw.tell() == 8


@pytest.mark.slow  # about a second: the full suite (the fast tier stays under 90 s)
def test_headers_within_the_size_limit_are_bounded_in_entries():
    with pytest.raises(CodecError, match="MAX_TENSORS"):
        codec.decode(many_tensors(codec.MAX_TENSORS + 1))
    assert len(codec.decode(many_tensors(1000))[0]) == 1000
    metadata = {f"k{i}": "" for i in range(codec.MAX_METADATA + 1)}
    text = json.dumps({"__metadata__": metadata}).encode()
    with pytest.raises(CodecError, match="MAX_METADATA"):
        codec.decode(header_of(text))


def test_a_model_refuses_a_header_much_larger_than_its_own_but_takes_the_largest_honest_one():
    padding = {SAMPLES_KEY: "1", "junk": "x" * (2 << 20)}  # 2 MiB: within HEADER_LIMIT, not within this model's
    body = codec.encode(weights(), padding)
    codec.decode(body)
    with pytest.raises(CodecError, match="can need"):
        FedArrays(weights()).check(body, 1)
    # The most metrics a device may report, with the longest names, escaped as much as JSON can.
    metrics = {"\U0001f600" * (MAX_METRIC_NAME // 2) + f"{i:03d}": 1.5 for i in range(MAX_METRICS)}
    honest = codec.encode(weights(), {SAMPLES_KEY: "1", METRICS_KEY: json.dumps(metrics)})
    FedArrays(weights()).check(honest, 1)


# -- over real devices: a bad number is that device's failure, never the round's ----


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_devices_reporting_absurd_numbers_fail_alone_and_the_round_merges_the_rest(devices):
    honest = devices("constant", 2.0, 10)
    bad = {
        devices("tests.support.devices.merge:forged", 100.0, "1" + "0" * 40).url: "fedsync.samples",
        devices("tests.support.devices.merge:forged", 100.0, "1" + "0" * 400).url: "fedsync.samples",
        devices("tests.support.devices.merge:forged", 100.0, "3", '{"loss": ' + "9" * 400 + "}").url: "fedsync.metrics",
        devices("tests.support.devices.merge:padded", 100.0, 3, 4).url: "can need",
    }
    zero = devices("tests.support.devices.merge:forged", float("nan"), "0", '{"loss": 1000}')
    data = FedArrays(weights())
    with Federated(data=data, remotes=[honest.url, zero.url, *bad], min_results=1, timeout=60) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted([honest.url, zero.url])
    assert result.failures.keys() == bad.keys()
    for url, why in bad.items():
        assert why in result.failures[url], result.failures[url]
    assert np.all(data.model["w"] == 2.0) and np.all(data.model["b"] == 2.0)
    assert result.samples == 10 and result.metrics == {"loss": 2.0}


def test_a_round_where_every_device_reports_zero_samples_fails_as_a_round(devices):
    remotes = [devices("constant", 5.0, 0).url, devices("constant", 6.0, 0).url]
    data = FedArrays(weights())
    with Federated(data=data, remotes=remotes, timeout=60) as alg:
        with pytest.raises(RoundFailed, match=r"every device that answered \(2\) reported 0 samples"):  # #23: EmptyRound
            alg.round()
    assert np.all(data.model["w"] == 0.0)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_integer_arrays_merge_exactly_over_real_devices(devices):
    for dtype, value, samples in [("uint8", 200, 10), ("int64", 2**62 + 3, 60000)]:
        remotes = [devices("tests.support.devices.merge:integers", dtype, value, samples).url for _ in range(2)]
        data = FedArrays({"n": np.zeros(4, dtype)})
        with Federated(data=data, remotes=remotes, timeout=60) as alg:
            alg.round()
        assert data.model["n"].tolist() == [value] * 4, dtype
