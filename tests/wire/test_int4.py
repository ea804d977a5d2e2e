"""int4 blockwise quantization (#25 item 3): the documented error bound, the byte layout, and every refusal."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedsync.errors import PayloadRejected
from fedsync.wire.compression import WIRE_DTYPES, pack, unpack

FLOATS = [np.float16, np.float32, np.float64]


def round_trip(x, block=64):
    packed, how = pack({"t": x}, "int4", block=block)
    return unpack(packed, how, {"t": x.dtype}, shapes={"t": x.shape})["t"], packed["t"], how


def scales_of(blob, n, block):
    return blob[: 4 * -(-n // block)].view("<f4").astype(np.float64)


def assert_within_bound(x, back, blob, block):
    n = x.size
    flat, got = x.reshape(-1).astype(np.float64), back.reshape(-1).astype(np.float64)
    scale = np.repeat(scales_of(blob, n, block), block)[:n]
    peak = np.maximum.reduceat(np.abs(flat), np.arange(0, n, block)) if n else np.zeros(0)
    assert np.all(scales_of(blob, n, block) >= peak / 7)  # rounded up, never down
    # |e| <= scale / 2, plus the rounding of the decoded value to the array's own dtype
    slack = np.finfo(x.dtype).eps * np.abs(got) + np.finfo(x.dtype).smallest_subnormal
    assert np.all(np.abs(got - flat) <= scale / 2 * (1 + 1e-12) + slack)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    n=st.sampled_from([0, 1, 2, 7, 63, 64, 65, 128, 129, 300]),
    block=st.sampled_from([8, 9, 64, 100, 4096]),
    data=st.data(),
)
def test_round_trip_within_half_a_scale(dtype, n, block, data):
    x = data.draw(hnp.arrays(dtype, n, elements=hnp.from_dtype(np.dtype(dtype), allow_nan=False, allow_infinity=False)))
    if dtype == np.float64:
        x = np.clip(x, -1e39, 1e39)  # beyond 7 * float32's largest int4 refuses (tested apart)
    back, blob, _ = round_trip(x, block)
    assert back.dtype == x.dtype and back.shape == x.shape and np.all(np.isfinite(back))
    assert blob.dtype == np.uint8 and blob.shape == (4 * -(-n // block) + (n + 1) // 2,)
    assert_within_bound(x, back, blob, block)


@pytest.mark.parametrize("dtype", FLOATS)
def test_zeros_huge_and_subnormal_blocks(dtype):
    info = np.finfo(dtype)
    x = np.zeros(64 * 5, dtype)
    x[64:128] = info.max * np.linspace(-1, 1, 64).astype(dtype)  # the dtype's largest
    x[128:192] = info.smallest_subnormal * np.arange(64)  # subnormal peaks: the scale must not round to 0
    x[192] = info.smallest_subnormal
    x[256:] = np.linspace(-3, 3, 64)
    if dtype == np.float64:
        x[64:128] /= 1e270  # still far above float32, within int4's range
    back, blob, _ = round_trip(x)
    assert np.all(np.isfinite(back))
    assert scales_of(blob, x.size, 64)[0] == 0 and np.all(back[:64] == 0)  # a block of zeros: scale 0, codes 0
    assert not blob[4 * 5 : 4 * 5 + 32].any()
    assert_within_bound(x, back, blob, 64)


def test_the_largest_float32_comes_back_as_itself():
    x = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 0.0], np.float32)
    back, _, _ = round_trip(x)
    assert back.tolist() == x.tolist()


def test_a_shape_of_several_axes_comes_back():
    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
    back, blob, _ = round_trip(x)
    assert back.shape == (3, 5, 7) and blob.size == 4 * 2 + 53
    assert_within_bound(x, back, blob, 64)


def test_the_byte_layout_of_a_small_case():
    # docs/protocol.md, "Compressed payloads", int4's worked example
    x = np.array([1.75, -3.5, 0, 0.5, 3.5, 0, 0, 0, 7.0, -1.0], np.float32)
    back, blob, how = round_trip(x, block=8)
    assert json.loads(how) == {"t": {"as": "int4", "block": 8}}
    assert blob.tobytes().hex(" ") == "00 00 00 3f 00 00 80 3f 94 10 07 00 f7"
    assert back.tolist() == [2.0, -3.5, 0, 0.5, 3.5, 0, 0, 0, 7.0, -1.0]  # 1.75 / 0.5 = 3.5 rounds half to even


def test_an_odd_count_pads_the_last_high_nibble_with_zero():
    _, blob, _ = round_trip(np.array([-7.0] * 9, np.float32), block=8)
    assert blob.tobytes().hex(" ") == "00 00 80 3f 00 00 80 3f 99 99 99 99 09"


def test_payload_is_about_a_seventh_of_float32():
    _, blob, _ = round_trip(np.ones(64 * 1000, np.float32))
    assert blob.size == 0.5625 * 64 * 1000


def test_int4_is_a_wire_dtype_and_integer_arrays_travel_as_they_are():
    assert "int4" in WIRE_DTYPES
    steps = np.arange(3)
    packed, how = pack({"steps": steps, "w": np.ones(3, np.float16)}, "int4")
    assert packed["steps"] is steps and set(json.loads(how)) == {"w"}


@pytest.mark.parametrize("block", [7, 4097, 64.0, True, "64"])
def test_a_sender_refuses_a_block_out_of_range(block):
    with pytest.raises(ValueError, match=r"block must be an integer in \[8, 4096\]"):
        pack({"t": np.ones(3, np.float32)}, "int4", block=block)


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_sender_never_packs_nan_or_infinity(special):
    with pytest.raises(ValueError, match="NaN or infinity"):
        pack({"t": np.array([1.0, special], np.float32)}, "int4")


def test_a_sender_refuses_float64_beyond_float32_scales():
    with pytest.raises(ValueError, match="beyond int4's"):
        pack({"t": np.array([1e300])}, "int4")


# -- the receiver checks every blob before use -----------------------------------------

X = np.array([1.75, -3.5, 0, 0.5, 3.5, 0, 0, 0, 7.0, -1.0], np.float32)


def forged(blob=None, spec=None, shape=(10,), dtype=np.float32):
    packed, how = pack({"t": X}, "int4", block=8)
    entry = json.loads(how)["t"] if spec is None else spec
    arrays = {"t": packed["t"] if blob is None else blob}
    return unpack(arrays, json.dumps({"t": entry}), {"t": np.dtype(dtype)}, shapes={"t": shape})


def honest_blob():
    return pack({"t": X}, "int4", block=8)[0]["t"].copy()


def with_scale(value, dtype="<f4"):
    blob = honest_blob()
    blob[:4] = np.frombuffer(np.array([value], dtype).astype("<f4").tobytes(), np.uint8)
    return blob


def test_the_honest_blob_is_accepted():
    assert forged()["t"].tolist() == [2.0, -3.5, 0, 0.5, 3.5, 0, 0, 0, 7.0, -1.0]


@pytest.mark.parametrize("cut", [-1, 1])
def test_a_blob_whose_length_disagrees_with_the_shape_is_refused(cut):
    blob = honest_blob()
    blob = blob[:cut] if cut < 0 else np.append(blob, np.uint8(0))
    with pytest.raises(PayloadRejected, match=r"'t': an int4 blob of 10 entries in blocks of 8 is 13 bytes"):
        forged(blob)


def test_a_shape_that_disagrees_with_the_blob_is_refused():
    with pytest.raises(PayloadRejected, match="an int4 blob of 12 entries"):
        forged(shape=(3, 4))


def test_a_huge_shape_is_refused_before_any_allocation():
    with pytest.raises(PayloadRejected, match="an int4 blob of 1125899906842624 entries .* got 13"):
        forged(shape=(2**50,))


@pytest.mark.parametrize("block", [7, 4097, 8.0, True, "8", None, -8])
def test_a_block_out_of_range_is_refused(block):
    with pytest.raises(PayloadRejected, match=r"'t': int4 block must be an integer in \[8, 4096\]"):
        forged(spec={"as": "int4", "block": block})


@pytest.mark.parametrize(
    "value, why",
    [(np.nan, "not finite"), (np.inf, "not finite"), (-np.inf, "not finite"), (-0.5, "negative"), (-0.0, "negative")],
)
def test_a_bad_scale_is_refused(value, why):
    with pytest.raises(PayloadRejected, match=f"'t': int4 scale of block 0 is .*, {why}"):
        forged(with_scale(value))


def test_a_scale_beyond_what_the_dtype_needs_is_refused():
    with pytest.raises(PayloadRejected, match=r"int4 scale of block 0 is 10000\.0, too large: .* for float16"):
        forged(with_scale(1e4), dtype=np.float16)  # 7 * 1e4 is beyond float16's 65504


def test_a_scale_of_every_nan_bit_pattern_is_refused():
    blob = honest_blob()
    blob[4:8] = [0xFF, 0xFF, 0xFF, 0xFF]  # the second block's scale: a NaN with every mantissa bit set
    with pytest.raises(PayloadRejected, match="int4 scale of block 1 is nan, not finite"):
        forged(blob)


@pytest.mark.parametrize("byte, nibble_at", [(0x98, 0), (0x89, 1)])
def test_code_minus_8_is_refused(byte, nibble_at):
    blob = honest_blob()
    blob[8] = byte
    with pytest.raises(PayloadRejected, match=f"int4 code -8 \\(nibble 0x8\\) at entry {nibble_at}"):
        forged(blob)


def test_a_nonzero_padding_nibble_is_refused():
    packed, how = pack({"t": X[:9]}, "int4", block=8)
    packed["t"][-1] |= 0x10
    with pytest.raises(PayloadRejected, match="unused high nibble of its last int4 byte must be 0"):
        unpack(packed, how, {"t": np.dtype(np.float32)}, shapes={"t": (9,)})


@pytest.mark.parametrize("blob", [np.zeros(13, np.int8), np.zeros((1, 13), np.uint8)], ids=["int8", "2-D"])
def test_a_blob_of_another_dtype_or_rank_is_refused(blob):
    with pytest.raises(PayloadRejected, match="int4 travels as one 1-D U8 tensor"):
        forged(blob)


@pytest.mark.parametrize(
    "spec", [{"as": "int4"}, {"as": "int4", "block": 8, "scale": 1.0}, {"as": "int4", "block": 8, "k": 1}]
)
def test_unknown_or_missing_keys_are_refused(spec):
    with pytest.raises(PayloadRejected, match=r"must have exactly the keys \['as', 'block'\]"):
        forged(spec=spec)


def test_an_int4_entry_on_a_non_floating_array_is_refused():
    with pytest.raises(PayloadRejected, match="'t' is int32 here; only floating arrays are packed"):
        forged(dtype=np.int32)


def test_a_receiver_that_gives_no_shape_refuses_with_the_reason():
    packed, how = pack({"t": X}, "int4")
    with pytest.raises(PayloadRejected, match="packed as int4, which needs the array's shape"):
        unpack(packed, how, {"t": np.dtype(np.float32)})


def test_today_s_formats_need_no_shapes():
    packed, how = pack({"t": X}, "int8")
    assert unpack(packed, how, {"t": np.dtype(np.float32)})["t"].shape == (10,)
