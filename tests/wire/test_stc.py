"""Sparse ternary compression (#25 item 3, the bytes target): what is kept, the byte layout, every refusal."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsync.errors import PayloadRejected
from fedsync.wire.compression import unpack
from fedsync.wire.sparse import topk_count
from fedsync.wire.stc import pack_stc, positions_are_bitmap, stc_size

FLOATS = [np.float16, np.float32, np.float64]


def round_trip(x, fraction):
    packed, how, residuals = pack_stc({"t": x}, fraction)
    back = unpack(packed, how, {"t": x.dtype}, shapes={"t": x.shape})["t"]
    return back, packed["t"], json.loads(how)["t"], residuals["t"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    n=st.sampled_from([0, 1, 2, 7, 8, 9, 63, 64, 65, 200, 1000]),
    fraction=st.sampled_from([1e-9, 0.01, 0.1, 0.25, 0.5, 1.0]),
    data=st.data(),
)
def test_the_largest_come_back_as_sign_times_their_mean_magnitude_and_the_rest_is_the_residual(
    dtype, n, fraction, data
):
    x = data.draw(hnp.arrays(dtype, n, elements=st.floats(-1e3, 1e3, width=16)))
    back, blob, entry, residual = round_trip(x, fraction)
    kept = np.flatnonzero(back)
    assert entry == {"as": "stc", "k": kept.size} and blob.size == stc_size(n, kept.size)
    assert kept.size <= topk_count(n, fraction) and not (x[kept] == 0).any()  # a zero is never sent
    if kept.size:
        # no left-out entry is larger than a kept one: the kept are the largest
        left = np.setdiff1d(np.arange(n), kept)
        assert not left.size or np.abs(x[left]).max() <= np.abs(x[kept]).min()
        mu = np.float32(np.abs(x[kept], dtype=np.float64).mean())
        assert np.array_equal(back[kept], np.where(x[kept] < 0, -mu, mu).astype(dtype))
    assert residual.dtype == x.dtype and np.array_equal(residual, x - back)


def test_the_byte_layout_of_a_bitmap_case():
    x = np.array([0.5, -2.0, 1.0, 0.0, 0.25, 0, 0, 0, 0, -1.5], np.float32)
    back, blob, entry, _ = round_trip(x, 0.3)  # the 3 largest: -2.0, -1.5, 1.0
    assert entry == {"as": "stc", "k": 3} and positions_are_bitmap(10, 3)
    mu = np.float32((2.0 + 1.5 + 1.0) / 3)
    assert blob.tobytes() == (
        np.array([mu], "<f4").tobytes()  # mu
        + bytes([0b00000110, 0b00000010])  # entries 1, 2 and 9, least significant bit first
        + bytes([0b101])  # the signs of entries 1, 2, 9: -, +, -
    )
    assert back.tolist() == [0, -mu, mu, 0, 0, 0, 0, 0, 0, -mu]


def test_the_byte_layout_of_an_index_case():
    x = np.zeros(1000, np.float32)
    x[[7, 500]] = [3.0, -1.0]
    back, blob, entry, _ = round_trip(x, 0.002)  # ceil(1000 / 8) = 125 bytes of bitmap > 4 * 2 of indices
    assert entry == {"as": "stc", "k": 2} and not positions_are_bitmap(1000, 2)
    assert blob.tobytes() == np.array([2.0], "<f4").tobytes() + np.array([7, 500], "<u4").tobytes() + bytes([0b10])
    assert back[7] == 2.0 and back[500] == -2.0 and np.count_nonzero(back) == 2


def test_an_all_zero_update_sends_k_0_in_four_bytes():
    back, blob, entry, residual = round_trip(np.zeros(300, np.float32), 0.1)
    assert entry == {"as": "stc", "k": 0} and blob.size == 4 and not back.any() and not residual.any()


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_sender_never_packs_nan_or_infinity(special):
    with pytest.raises(ValueError, match="NaN or infinity"):
        pack_stc({"t": np.array([1.0, special], np.float32)}, 0.5)


@pytest.mark.parametrize("fraction", [0, 1.5, float("nan"), "0.1"])
def test_a_fraction_out_of_range_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction must be a number in"):
        pack_stc({"t": np.ones(3, np.float32)}, fraction)


def test_integer_arrays_travel_as_they_are():
    steps = np.arange(4)
    packed, how, residuals = pack_stc({"steps": steps, "w": np.ones(4, np.float32)}, 0.5)
    assert packed["steps"] is steps and set(json.loads(how)) == {"w"} and set(residuals) == {"w"}


# -- the receiver checks every blob before use -----------------------------------------

BITMAP = np.array([0.5, -2.0, 1.0, 0.0, 0.25, 0, 0, 0, 0, -1.5], np.float32)  # k = 3: a bitmap of 2 bytes
INDEXED = np.zeros(1000, np.float32)
INDEXED[[7, 500, 900]] = [3.0, -1.0, 2.0]  # k = 3: 3 indices


def honest(x=BITMAP, fraction=0.3):
    packed, how, _ = pack_stc({"t": x}, fraction)
    return packed["t"].copy(), json.loads(how)["t"]


def forged(blob=None, spec=None, x=BITMAP, fraction=0.3, dtype=np.float32):
    honest_blob, entry = honest(x, fraction)
    return unpack(
        {"t": honest_blob if blob is None else blob},
        json.dumps({"t": entry if spec is None else spec}),
        {"t": np.dtype(dtype)},
        shapes={"t": x.shape},
    )["t"]


def with_bytes(at, data, x=BITMAP, fraction=0.3):
    blob, _ = honest(x, fraction)
    blob[at : at + len(data)] = np.frombuffer(bytes(data), np.uint8)
    return blob


def test_the_honest_blobs_are_accepted():
    assert np.count_nonzero(forged()) == 3 and np.count_nonzero(forged(x=INDEXED, fraction=0.003)) == 3


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_blob_whose_length_disagrees_with_k_is_refused(cut):
    blob, _ = honest()
    blob = blob[:cut] if cut < 0 else np.append(blob, np.uint8(0))
    with pytest.raises(PayloadRejected, match="'t': an stc blob of 10 entries, k=3, is 7 bytes"):
        forged(blob)


@pytest.mark.parametrize("k", [11, 10**30, -1, 3.0, True, "3", None])
def test_a_k_out_of_range_is_refused(k):
    with pytest.raises(PayloadRejected, match=r"'t': stc k must be an integer in \[0, 10\]"):
        forged(spec={"as": "stc", "k": k})


@pytest.mark.parametrize("k", [2, 4])
def test_a_bitmap_that_sets_other_than_k_bits_is_refused(k):
    blob, _ = honest()
    with pytest.raises(PayloadRejected, match=f"stc bitmap sets 3 bits, and k is {k}"):
        forged(blob, {"as": "stc", "k": k})


def test_a_bitmap_bit_beyond_the_entries_is_refused():
    with pytest.raises(PayloadRejected, match="stc bitmap sets a bit at or beyond its 10 entries"):
        forged(with_bytes(5, [0b00000110 | 0b10000000]))  # bit 15 of 10 entries


@pytest.mark.parametrize("mu", [np.nan, np.inf, -np.inf, -1.0])
def test_a_magnitude_not_finite_or_negative_is_refused(mu):
    with pytest.raises(PayloadRejected, match="'t': stc mu must be a number in"):
        forged(with_bytes(0, np.array([mu], "<f4").tobytes()))


def test_a_magnitude_beyond_the_arrays_dtype_is_refused():
    with pytest.raises(PayloadRejected, match=r"stc mu must be a number in \[0, 65504\], got 1e\+20"):
        forged(with_bytes(0, np.array([1e20], "<f4").tobytes()), dtype=np.float16)


def test_a_sign_bit_beyond_k_is_refused():
    with pytest.raises(PayloadRejected, match="stc sets a sign bit at or beyond its k=3 entries"):
        forged(with_bytes(6, [0b1101]))


@pytest.mark.parametrize("indices", [(7, 7, 900), (7, 900, 500)], ids=["duplicate", "decreasing"])
def test_indices_not_strictly_increasing_are_refused(indices):
    blob = with_bytes(4, np.array(indices, "<u4").tobytes(), INDEXED, 0.003)
    with pytest.raises(PayloadRejected, match="stc indices must be strictly increasing"):
        forged(blob, x=INDEXED, fraction=0.003)


@pytest.mark.parametrize("last", [1000, 2**32 - 1])
def test_an_index_out_of_range_is_refused(last):
    blob = with_bytes(4, np.array([7, 500, last], "<u4").tobytes(), INDEXED, 0.003)
    with pytest.raises(PayloadRejected, match=f"stc index {last} is out of range for 1000 entries"):
        forged(blob, x=INDEXED, fraction=0.003)


@pytest.mark.parametrize("blob", [np.zeros(7, np.int8), np.zeros((1, 7), np.uint8)], ids=["int8", "2-D"])
def test_a_blob_of_another_dtype_or_rank_is_refused(blob):
    with pytest.raises(PayloadRejected, match="stc travels as one 1-D U8 tensor"):
        forged(blob)


@pytest.mark.parametrize("spec", [{"as": "stc"}, {"as": "stc", "k": 3, "values": "float32"}])
def test_unknown_or_missing_keys_are_refused(spec):
    with pytest.raises(PayloadRejected, match=r"must have exactly the keys \['as', 'k'\]"):
        forged(spec=spec)


def test_a_receiver_that_gives_no_shape_refuses_with_the_reason():
    blob, entry = honest()
    with pytest.raises(PayloadRejected, match="packed as stc, which needs the array's shape"):
        unpack({"t": blob}, json.dumps({"t": entry}), {"t": np.dtype(np.float32)})
