"""Top-k sparse updates (#25 item 3): what is kept, the residual, the byte layout, and every refusal."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsync.errors import PayloadRejected
from fedsync.wire.compression import unpack
from fedsync.wire.sparse import SPARSE_FORMATS, pack_topk, topk_count

FLOATS = [np.float16, np.float32, np.float64]


def round_trip(x, fraction, values="float32"):
    packed, how, residuals = pack_topk({"t": x}, fraction, values=values)
    back = unpack(packed, how, {"t": x.dtype}, shapes={"t": x.shape})["t"]
    return back, packed["t"], json.loads(how)["t"], residuals["t"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    n=st.sampled_from([0, 1, 2, 63, 64, 65, 200]),
    fraction=st.sampled_from([1e-9, 0.01, 0.1, 0.5, 0.999, 1.0]),
    data=st.data(),
)
def test_the_k_largest_are_kept_and_back_plus_residual_is_the_update(dtype, n, fraction, data):
    # small integers as values: many ties, so the tie rule is exercised
    x = data.draw(hnp.arrays(dtype, n, elements=st.integers(-4, 4).map(float)))
    back, blob, entry, residual = round_trip(x, fraction)
    k = entry["k"]
    assert k == (min(n, max(1, int(np.ceil(fraction * n - 1e-9)))))
    assert back.dtype == residual.dtype == x.dtype and back.shape == residual.shape == x.shape
    assert blob.size == 8 * k
    np.testing.assert_array_equal(back + residual, x)  # float32 values: exact for these dtypes' small integers
    index = blob[: 4 * k].view("<u4").astype(np.int64)
    # the same k entries a stable sort by decreasing magnitude picks: ties go to the lower index
    expected = np.sort(np.argsort(-np.abs(x.astype(np.float64)), kind="stable")[:k])
    np.testing.assert_array_equal(index, expected)
    assert np.all(residual[index] == 0)


@pytest.mark.parametrize("dtype", FLOATS)
def test_rounding_to_float16_values_goes_into_the_residual(dtype):
    x = np.array([1 / 3, -2 / 3, 1e-9, 0.0], dtype)
    back, blob, entry, residual = round_trip(x, 1.0, values="float16")
    assert entry == {"as": "topk", "k": 4, "values": "float16"} and blob.size == 4 * 6
    np.testing.assert_array_equal(back.astype(np.float64) + residual.astype(np.float64), x.astype(np.float64))
    assert np.all(np.abs(back - x) <= 2**-11 * np.abs(x) + 2**-25)


def test_the_byte_layout_of_a_small_case():
    # docs/protocol.md, "Compressed payloads", topk's worked example
    x = np.array([0.5, -2.0, 1.0, 1.0, 0.25], np.float32)
    back, blob, entry, residual = round_trip(x, 0.4)
    assert entry == {"as": "topk", "k": 2, "values": "float32"}
    assert blob.tobytes().hex(" ") == "01 00 00 00 02 00 00 00 00 00 00 c0 00 00 80 3f"
    assert back.tolist() == [0, -2.0, 1.0, 0, 0] and residual.tolist() == [0.5, 0, 0, 1.0, 0.25]


def test_ties_go_to_the_lower_index_whatever_the_size():
    x = np.ones(3_000_000, np.float32)  # spans several scan chunks
    x[2_999_999] = -1.5
    _, blob, entry, _ = round_trip(x, 1e-6)
    assert entry["k"] == 3 and blob[:12].view("<u4").tolist() == [0, 1, 2_999_999]
    assert round_trip(x, 1e-6)[1].tobytes() == blob.tobytes()  # the same update, the same bytes


def test_k_follows_the_decimal_fraction():
    assert topk_count(30, 0.1) == 3 and topk_count(1000, 0.01) == 10 and topk_count(7, 1e-9) == 1
    assert topk_count(0, 0.5) == 0 and topk_count(5, 1.0) == 5


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), "0.1", True])
def test_a_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        pack_topk({"t": np.ones(3, np.float32)}, fraction)


def test_unknown_values_are_refused():
    with pytest.raises(ValueError, match="values must be one of float32, float16"):
        pack_topk({"t": np.ones(3, np.float32)}, 0.5, values="int8")


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_sender_never_packs_nan_or_infinity(special):
    with pytest.raises(ValueError, match="NaN or infinity"):
        pack_topk({"t": np.array([0.0, special], np.float32)}, 0.5)


def test_a_value_beyond_float16_is_refused_by_the_sender():
    with pytest.raises(ValueError, match="beyond float16's range; use values='float32'"):
        pack_topk({"t": np.array([1e6, 1.0], np.float32)}, 0.5, values="float16")


def test_integer_arrays_travel_as_they_are():
    steps = np.arange(4)
    packed, how, residuals = pack_topk({"steps": steps, "w": np.ones(4, np.float32)}, 0.5)
    assert packed["steps"] is steps and set(json.loads(how)) == {"w"} and set(residuals) == {"w"}


def test_topk_and_stc_are_sparse_formats_not_wire_dtypes():
    from fedsync.wire.compression import WIRE_DTYPES

    assert SPARSE_FORMATS == ("topk", "stc") and not set(SPARSE_FORMATS) & set(WIRE_DTYPES)


# -- the receiver checks every blob before use -----------------------------------------

X = np.array([0.5, -2.0, 1.0, 1.0, 0.25], np.float32)


def honest():
    packed, how, _ = pack_topk({"t": X}, 0.4)
    return packed["t"].copy(), json.loads(how)["t"]


def forged(blob=None, spec=None, shape=(5,), dtype=np.float32):
    honest_blob, entry = honest()
    arrays = {"t": honest_blob if blob is None else blob}
    return unpack(
        arrays, json.dumps({"t": entry if spec is None else spec}), {"t": np.dtype(dtype)}, shapes={"t": shape}
    )


def with_indices(*indices):
    blob, _ = honest()
    blob[:8] = np.frombuffer(np.array(indices, "<u4").tobytes(), np.uint8)
    return blob


def with_value(value, at=0):
    blob, _ = honest()
    blob[8 + 4 * at : 12 + 4 * at] = np.frombuffer(np.array([value], "<f4").tobytes(), np.uint8)
    return blob


def test_the_honest_blob_is_accepted():
    assert forged()["t"].tolist() == [0, -2.0, 1.0, 0, 0]


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_blob_whose_length_disagrees_with_k_is_refused(cut):
    blob, _ = honest()
    blob = blob[:cut] if cut < 0 else np.append(blob, np.uint8(0))
    with pytest.raises(PayloadRejected, match="'t': a topk blob of k=2 float32 values is 16 bytes"):
        forged(blob)


def test_a_length_for_float16_values_under_a_float32_entry_is_refused():
    with pytest.raises(PayloadRejected, match="a topk blob of k=2 float16 values is 12 bytes, got 16"):
        forged(spec={"as": "topk", "k": 2, "values": "float16"})


@pytest.mark.parametrize("k", [0, 6, 10**30, -1, 2.0, True, "2", None])
def test_a_k_out_of_range_is_refused(k):
    with pytest.raises(PayloadRejected, match=r"'t': topk k must be an integer in \[1, 5\]"):
        forged(spec={"as": "topk", "k": k, "values": "float32"})


def test_an_empty_array_takes_k_0_only():
    empty = np.zeros(0, np.uint8)
    spec = {"as": "topk", "k": 0, "values": "float32"}
    assert forged(empty, spec, shape=(0, 3))["t"].shape == (0, 3)
    with pytest.raises(PayloadRejected, match=r"topk k must be an integer in \[0, 0\], got 1"):
        forged(empty, {**spec, "k": 1}, shape=(0,))


@pytest.mark.parametrize("values", ["float64", "bfloat16", None, 32])
def test_unknown_values_in_an_entry_are_refused(values):
    with pytest.raises(PayloadRejected, match="topk values must be one of float32, float16"):
        forged(spec={"as": "topk", "k": 2, "values": values})


def test_an_index_out_of_range_is_refused():
    with pytest.raises(PayloadRejected, match="'t': topk index 5 is out of range for 5 entries"):
        forged(with_indices(1, 5))


def test_an_index_far_out_of_range_is_refused():
    with pytest.raises(PayloadRejected, match="topk index 4294967295 is out of range"):
        forged(with_indices(0, 2**32 - 1))


@pytest.mark.parametrize("indices", [(2, 2), (3, 1)], ids=["duplicate", "decreasing"])
def test_indices_not_strictly_increasing_are_refused(indices):
    with pytest.raises(PayloadRejected, match=f"strictly increasing, index 1 is {indices[1]} after {indices[0]}"):
        forged(with_indices(*indices))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_value_nan_or_infinite_is_refused(value):
    with pytest.raises(PayloadRejected, match="'t': topk value 1 is .*, not a finite float32"):
        forged(with_value(value, at=1))


def test_a_value_beyond_the_arrays_dtype_is_refused():
    with pytest.raises(PayloadRejected, match=r"topk value 0 is 1\.00000002\d*e\+20, not a finite float16"):
        forged(with_value(1e20), dtype=np.float16)


@pytest.mark.parametrize("blob", [np.zeros(16, np.int8), np.zeros((2, 8), np.uint8)], ids=["int8", "2-D"])
def test_a_blob_of_another_dtype_or_rank_is_refused(blob):
    with pytest.raises(PayloadRejected, match="topk travels as one 1-D U8 tensor"):
        forged(blob)


@pytest.mark.parametrize("spec", [{"as": "topk", "k": 2}, {"as": "topk", "k": 2, "values": "float32", "block": 8}])
def test_unknown_or_missing_keys_are_refused(spec):
    with pytest.raises(PayloadRejected, match=r"must have exactly the keys \['as', 'k', 'values'\]"):
        forged(spec=spec)


def test_a_topk_entry_on_a_non_floating_array_is_refused():
    with pytest.raises(PayloadRejected, match="'t' is int64 here; only floating arrays are packed"):
        forged(dtype=np.int64)


def test_a_receiver_that_gives_no_shape_refuses_with_the_reason():
    blob, entry = honest()
    with pytest.raises(PayloadRejected, match="packed as topk, which needs the array's shape"):
        unpack({"t": blob}, json.dumps({"t": entry}), {"t": np.dtype(np.float32)})
