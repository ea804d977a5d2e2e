"""Review of the STC wire format (#25): docs/protocol.md's byte layout read by a decoder written from the doc
alone, in plain Python, against fedsync's; and what a receiver allocates to decode a blob."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
import warnings

import numpy as np
import pytest

from fedsync.wire.compression import unpack
from fedsync.wire.stc import pack_stc


def decode_from_the_doc(blob: bytes, k: int, n: int) -> list[tuple[int, bool, float]]:
    """docs/protocol.md, "stc sparse ternary updates", and nothing else: ``(position, negative, mu)`` per kept entry."""
    (mu,) = struct.unpack("<f", blob[:4])
    bitmap_bytes = -(-n // 8)
    if bitmap_bytes <= 4 * k:  # "when ceil(n / 8) <= 4 * k, a bitmap"
        bitmap = blob[4 : 4 + bitmap_bytes]
        positions = [i for i in range(n) if bitmap[i // 8] >> (i % 8) & 1]
        rest = blob[4 + bitmap_bytes :]
    else:  # "otherwise k flat indices as uint32 little-endian"
        positions = list(struct.unpack(f"<{k}I", blob[4 : 4 + 4 * k]))
        rest = blob[4 + 4 * k :]
    assert len(rest) == -(-k // 8) and len(positions) == k  # "Its length is 4 + positions + ceil(k / 8)"
    return [(p, bool(rest[j // 8] >> (j % 8) & 1), mu) for j, p in enumerate(positions)]


def cases():
    rng = np.random.default_rng(25)
    out = []
    for dtype in (np.float16, np.float32, np.float64):
        for n in (0, 1, 5, 8, 9, 31, 33, 100, 257, 1000, 4099):
            for fraction in (1e-9, 0.01, 0.03, 0.05, 0.2, 1.0):
                x = (rng.standard_normal(n) * rng.choice([0, 1, 1, 1], n)).astype(dtype)
                out.append((x, fraction))
        out.append((np.zeros(64, dtype), 0.5))  # k = 0
    return out


def test_a_decoder_written_from_the_doc_reads_what_fedsync_writes_and_fedsync_decodes_the_same():
    bitmaps = indices = empties = 0
    for x, fraction in cases():
        n = x.size
        packed, how, residuals = pack_stc({"t": x}, fraction)
        blob, k = packed["t"].tobytes(), json.loads(how)["t"]["k"]
        entries = decode_from_the_doc(blob, k, n)
        expected = [0.0] * n
        for position, negative, mu in entries:
            magnitude = float(np.float32(mu).astype(x.dtype))  # "rounded to the model's dtype"
            expected[position] = -magnitude if negative else magnitude
        # What the doc says was sent: the k largest magnitudes, none a zero, mu their mean magnitude.
        assert k <= max(1, math.ceil(fraction * n)) if n else k == 0
        assert all(x[p] != 0 and (x[p] < 0) == negative for p, negative, _ in entries)
        if k:
            assert entries[0][2] == np.float32(np.mean([abs(float(x[p])) for p, _, _ in entries]))
        back = unpack(packed, how, {"t": x.dtype}, shapes={"t": x.shape})["t"]
        assert back.dtype == x.dtype and back.tolist() == expected
        assert np.array_equal(residuals["t"], x - back)
        is_bitmap = -(-n // 8) <= 4 * k
        bitmaps += is_bitmap and k > 0
        indices += not is_bitmap
        empties += k == 0
    assert bitmaps > 20 and indices > 20 and empties > 5  # every branch of the layout was compared


def test_the_doc_example_decodes_as_the_doc_says():
    blob = bytes.fromhex("0000c03f 0602 05".replace(" ", ""))
    assert decode_from_the_doc(blob, 3, 10) == [(1, True, 1.5), (2, False, 1.5), (9, True, 1.5)]
    back = unpack(
        {"t": np.frombuffer(blob, np.uint8)}, '{"t":{"as":"stc","k":3}}', {"t": np.dtype("<f4")}, shapes={"t": (10,)}
    )
    assert back["t"].tolist() == [0, -1.5, 1.5, 0, 0, 0, 0, 0, 0, -1.5]


def test_decoding_a_dense_bitmap_allocates_little_beyond_the_decoded_array():
    """A 2 MiB blob (every bit of an 8 Mi-entry bitmap set) decodes to a 32 MiB array: the temporaries must stay
    a bounded working set (as topk's decoder keeps them), not several times the model (a bit a byte, an int64
    index per kept entry, the signs a byte each, a second array of values)."""
    n = 8 * 2**20
    blob = np.zeros(4 + n // 8 + n // 8, np.uint8)
    blob[:4] = np.frombuffer(np.array([1.0], "<f4").tobytes(), np.uint8)
    blob[4:] = 0xFF  # every position kept, every sign negative
    tracemalloc.start()
    try:
        back = unpack({"t": blob}, json.dumps({"t": {"as": "stc", "k": n}}), {"t": np.dtype("<f4")}, shapes={"t": (n,)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert back["t"].shape == (n,) and bool((back["t"] == -1).all())
    assert peak < back["t"].nbytes + 16 * 2**20, f"{peak / 2**20:.0f} MiB to decode {back['t'].nbytes / 2**20:.0f} MiB"


def test_a_float64_update_beyond_float32s_range_is_refused_by_the_sender_not_sent_as_an_infinite_mu():
    """mu travels as float32: a float64 update past 3.4e38 would send mu = inf, which every receiver refuses, and
    leave a residual of -inf that fails every later round; pack_topk refuses it with the reason, so must pack_stc."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either: the sender checks before casting
        with pytest.raises(ValueError, match="beyond float32's range"):
            pack_stc({"t": np.array([1e39, 0.0, -2e39])}, 1.0)
