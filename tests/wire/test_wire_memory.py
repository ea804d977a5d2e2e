"""int4, topk and stc on a 10M-entry array: temporaries bounded by a constant (int4) or a few copies (#25 item 3)."""

import tracemalloc

import numpy as np
import pytest

from fedsync.wire.compression import pack, unpack
from fedsync.wire.sparse import pack_topk

N = 10_000_000
MiB = 2**20


@pytest.fixture(scope="module")
def update():
    return np.random.default_rng(0).normal(size=N).astype(np.float32)


def peak_of(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_int4_works_in_chunks_both_ways(update):
    (packed, how), peak = peak_of(lambda: pack({"t": update}, "int4"))
    assert peak - packed["t"].nbytes < 24 * MiB  # a float64 copy of the array alone is 76 MiB
    back, peak = peak_of(lambda: unpack(packed, how, {"t": update.dtype}, shapes={"t": (N,)}))
    assert peak - back["t"].nbytes < 24 * MiB


def test_topk_holds_a_few_copies_of_the_array_at_most(update):
    (packed, how, residuals), peak = peak_of(lambda: pack_topk({"t": update}, 0.01))
    assert peak <= 3 * update.nbytes + packed["t"].nbytes + 8 * MiB  # |x|, its partition, the residual
    back, peak = peak_of(lambda: unpack(packed, how, {"t": update.dtype}, shapes={"t": (N,)}))
    assert peak <= back["t"].nbytes + packed["t"].nbytes + 8 * MiB
    np.testing.assert_array_equal(back["t"] + residuals["t"], update)


@pytest.mark.slow  # ~1.5 s each: keeps the fast tier under 90 s
@pytest.mark.parametrize("fraction", [0.01, 0.25], ids=["indices", "bitmap"])
def test_stc_holds_a_few_copies_of_the_array_at_most(update, fraction):
    from fedsync.wire.stc import pack_stc

    (packed, how, residuals), peak = peak_of(lambda: pack_stc({"t": update}, fraction))
    # |x|, its partition, the residual, and a byte an entry for the bitmap; the kept entries' float64 magnitudes
    kept = int(fraction * N)
    assert peak <= 3 * update.nbytes + N + 8 * kept + packed["t"].nbytes + 8 * MiB, peak / MiB
    back, peak = peak_of(lambda: unpack(packed, how, {"t": update.dtype}, shapes={"t": (N,)}))
    # the dense result, a byte an entry for the bitmap's bits, the kept positions (int64) and their values
    assert peak <= back["t"].nbytes + N + 16 * kept + packed["t"].nbytes + 8 * MiB, peak / MiB
    np.testing.assert_array_equal(residuals["t"], update - back["t"])
