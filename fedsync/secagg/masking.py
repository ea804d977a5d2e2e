"""Fixed-point encoding and PRG masks in the ring of integers modulo 2**64 (Bonawitz et al. 2017, section 3).

A device's *input vector* (uint64) holds, for every array in the model's order, each
flattened in C order:

- a floating array's element: ``n_k * rint(clip(w_i - g_i, -clip, clip) * scale)`` as a
  two's complement int64, where ``w`` are its trained weights, ``g`` the global ones it
  received, ``n_k`` its sample count;
- an integer or boolean array's element ``v`` (its *value*, as plain FedAvg averages values):
  ``limbs`` elements ``n_k * d_j``, the base-``2**width`` digits ``d_j`` (least significant
  first) of ``v - min(dtype)`` (0 to ``2**bits - 1``), neither clipped nor scaled, so the sum
  gives ``sum(n_k * v_k)`` exactly and the merge is plain FedAvg's, rounded half to even;
  ``width = 63 - bit_length(max_samples * devices)`` keeps each digit's sum below 2**63;

and last, ``n_k``. What the coordinator learns from an integer array is what plain FedAvg
computes from it, the sample-weighted sum, and nothing per device.

Masks are ChaCha20 keystreams (RFC 7539 as in ``cryptography``: 32-byte key, 16-byte
nonce = 4-byte little-endian block counter 0 then 12 zero bytes), read as
little-endian uint64: element ``i`` of ``PRG(key)`` is keystream bytes ``[8i, 8i+8)``.
numpy's uint64 arithmetic wraps modulo 2**64, which is the ring. Keystreams are made
``CHUNK`` elements at a time, so no mask is ever held whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["CHUNK", "Stream", "input_vector", "apply_masks", "decode_sum", "length_of", "digit_width"]

CHUNK = 1 << 17
"""Elements of a mask (1 MiB) made at a time."""

_ZEROS = bytes(8 * CHUNK)


class Stream:
    """``PRG(key)``: the ChaCha20 keystream as uint64, taken ``count`` elements at a time in order."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

        self._cipher = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` (at most ``CHUNK``) elements."""
        return np.frombuffer(self._cipher.update(_ZEROS[: 8 * count]), "<u8")


def digit_width(max_samples: int, devices: int) -> int:
    """Bits of an integer digit: ``63 - bit_length(max_samples * devices)``, at least 2 within SecAgg's bounds."""
    return 63 - (max_samples * devices).bit_length()


def _limbs(dtype: np.dtype, width: int) -> int:
    """Ring elements one element of an array of ``dtype`` takes: 1 if floating, else its digits."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 1
    return -(-(1 if dtype.kind == "b" else 8 * dtype.itemsize) // width)


def length_of(layout: Mapping[str, tuple[tuple[int, ...], np.dtype]], width: int) -> int:
    """The input vector's length, the sample count's element excluded, for digits of ``width`` bits."""
    return sum(int(np.prod(shape, dtype=np.int64)) * _limbs(dtype, width) for shape, dtype in layout.values())


def _lowest(dtype: np.dtype) -> int:
    return 0 if np.dtype(dtype).kind in "bu" else int(np.iinfo(dtype).min)


def input_vector(
    trained: Mapping[str, np.ndarray],
    received: Mapping[str, np.ndarray],
    samples: int,
    clip: float,
    scale: int,
    width: int,
) -> np.ndarray:
    """The unmasked input vector (uint64) of a device's update; see the module's layout.

    Raises:
        ValueError: the update holds NaN or infinity.
    """
    layout = {name: (a.shape, a.dtype) for name, a in trained.items()}
    total = length_of(layout, width)
    out = np.empty(total + 1, np.uint64)
    offset = 0
    for name, now in trained.items():
        flat, before = now.reshape(-1), received[name].reshape(-1)
        if flat.dtype.kind != "f":
            offset = _put_digits(out, offset, flat, samples, width)
            continue
        for first in range(0, flat.size, CHUNK):
            update = flat[first : first + CHUNK].astype(np.float64) - before[first : first + CHUNK].astype(np.float64)
            if not np.isfinite(update).all():
                raise ValueError(
                    f"the update of array {name!r} holds NaN or infinity; secure aggregation cannot mask it"
                )
            q = np.rint(np.clip(update, -clip, clip) * scale).astype(np.int64) * np.int64(samples)
            out[offset + first : offset + first + q.size] = q.view(np.uint64)
        offset += flat.size
    out[total] = samples
    return out


def _put_digits(out: np.ndarray, offset: int, flat: np.ndarray, samples: int, width: int) -> int:
    """Write ``samples * digit`` of each integer element at ``out[offset:]``, digits innermost; the next offset."""
    limbs = _limbs(flat.dtype, width)
    mask = np.uint64((1 << width) - 1)
    for first in range(0, flat.size, CHUNK):
        part = flat[first : first + CHUNK]
        # v - min(dtype) as uint64: two's complement wraps it into 0 .. 2**bits - 1 exactly.
        shifted = part.astype(np.uint8 if part.dtype.kind == "b" else part.dtype).astype(np.uint64)
        shifted -= np.uint64(_lowest(part.dtype) % 2**64)
        block = out[offset + first * limbs : offset + (first + part.size) * limbs].reshape(part.size, limbs)
        for j in range(limbs):
            block[:, j] = ((shifted >> np.uint64(j * width)) & mask) * np.uint64(samples)
    return offset + flat.size * limbs


def apply_masks(vector: np.ndarray, masks: Iterable[tuple[bytes, int]]) -> None:
    """Add ``sign * PRG(key)`` to ``vector`` in place (mod 2**64) for each ``(key, sign)``, sign ±1."""
    streams = [(Stream(key), sign) for key, sign in masks]
    for first in range(0, vector.size, CHUNK):
        part = vector[first : first + CHUNK]
        for stream, sign in streams:
            (np.add if sign > 0 else np.subtract)(part, stream.take(part.size), out=part)


def decode_sum(
    total: np.ndarray,
    layout: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    current: Mapping[str, np.ndarray],
    scale: int,
    bound: int,
    width: int,
) -> tuple[dict[str, np.ndarray], int]:
    """The unmasked sum as new arrays, and ``sum(n_k)``.

    Floating arrays: ``current + sum(n_k * update_k) / sum(n_k)``. Integer and boolean
    arrays: plain FedAvg's exact weighted mean of the values (rounded half to even; booleans
    the weighted majority, a tie ``True``), from their digits' sums.

    ``bound``: the largest ``|n_k * q|`` summed over the devices (:meth:`.settings.SecAgg.bound`);
    an element past it (or a digit sum past ``sum(n_k) * (2**width - 1)``) means the masks
    did not cancel (a device sent a false mask or share), which is refused rather than merged.

    Raises:
        ValueError: the sample sum is 0 or past the bound, or an element is past it.
    """
    samples = int(total[-1])
    if not 0 < samples <= bound:
        raise ValueError(
            f"the unmasked sample count is {samples}; expected 1 to {bound}: "
            "every device reported 0 samples, or the masks did not cancel"
        )
    merged: dict[str, np.ndarray] = {}
    offset = 0
    for name, (shape, dtype) in layout.items():
        size = int(np.prod(shape, dtype=np.int64))
        if np.dtype(dtype).kind != "f":
            merged[name] = _integer_mean(total, offset, size, np.dtype(dtype), samples, width, name).reshape(shape)
            offset += size * _limbs(dtype, width)
            continue
        out = np.empty(size, np.float64)
        for first in range(0, size, CHUNK):
            q = total[offset + first : offset + min(size, first + CHUNK)].view(np.int64)
            if q.size and (int(q.max()) > bound or int(q.min()) < -bound):
                raise ValueError(
                    f"array {name!r}: an unmasked element is past the bound {bound}: the masks did not cancel"
                )
            out[first : first + q.size] = q / (float(scale) * samples)
        before = current[name].reshape(-1).astype(np.float64)
        merged[name] = (before + out).astype(dtype).reshape(shape)
        offset += size
    return merged, samples


def _integer_mean(
    total: np.ndarray, offset: int, size: int, dtype: np.dtype, samples: int, width: int, name: str
) -> np.ndarray:
    """An integer array's exact weighted mean from its digits' sums: as :class:`fedsync.strategies.WeightedSum`."""
    from ..strategies.base import rounded_mean

    limbs = _limbs(dtype, width)
    digits = total[offset : offset + size * limbs].reshape(size, limbs)
    if digits.size and int(digits.max()) > samples * ((1 << width) - 1):
        raise ValueError(f"array {name!r}: an unmasked digit sum is past its bound: the masks did not cancel")
    # Python integers: integer arrays in models are small (counters, masks), and the sum may pass 64 bits.
    sums = np.zeros(size, object)
    for j in range(limbs):
        sums += digits[:, j].astype(object) * (1 << (j * width))
    sums += _lowest(dtype) * samples  # sum(n_k * v_k) = sum(n_k * (v_k - min)) + min * sum(n_k)
    if dtype.kind == "b":
        return (sums >= samples - sums).astype(bool)  # 2 * sum >= total: the weighted majority, a tie True
    return rounded_mean(sums, samples).astype(dtype)
