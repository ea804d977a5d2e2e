"""Fixed-point encoding and PRG masks in the ring of integers modulo 2**64 (Bonawitz et al. 2017, section 3).

A device's *input vector* has ``L + 1`` elements, ``L`` the number of elements of its
model (every array in the model's order, each flattened in C order), as uint64:

- element ``i < L``: ``n_k * rint(clip(w_i - g_i, -clip, clip) * scale)`` as a two's
  complement int64, where ``w`` are its trained weights, ``g`` the global ones it
  received, ``n_k`` its sample count;
- element ``L``: ``n_k``.

Masks are ChaCha20 keystreams (RFC 7539 as in ``cryptography``: 32-byte key, 16-byte
nonce = 4-byte little-endian block counter 0 then 12 zero bytes), read as
little-endian uint64: element ``i`` of ``PRG(key)`` is keystream bytes ``[8i, 8i+8)``.
numpy's uint64 arithmetic wraps modulo 2**64, which is the ring. Keystreams are made
``CHUNK`` elements at a time, so no mask is ever held whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["CHUNK", "Stream", "input_vector", "apply_masks", "decode_sum", "length_of"]

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


def length_of(layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """``L``: the number of elements of a model of this layout."""
    return sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in layout.values())


def input_vector(
    trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], samples: int, clip: float, scale: int
) -> np.ndarray:
    """The unmasked input vector (``L + 1`` uint64) of a device's update; see the module's layout.

    Raises:
        ValueError: the update holds NaN or infinity.
    """
    total = sum(a.size for a in trained.values())
    out = np.empty(total + 1, np.uint64)
    offset = 0
    for name, now in trained.items():
        flat, before = now.reshape(-1), received[name].reshape(-1)
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
) -> tuple[dict[str, np.ndarray], int]:
    """The unmasked sum as new arrays ``current + sum(n_k * update_k) / sum(n_k)``, and ``sum(n_k)``.

    ``bound``: the largest ``|n_k * q|`` summed over the devices (:meth:`.settings.SecAgg.bound`);
    an element past it means the masks did not cancel (a device sent a false mask or
    share), which is refused rather than merged.

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
        out = np.empty(size, np.float64)
        for first in range(0, size, CHUNK):
            q = total[offset + first : offset + min(size, first + CHUNK)].view(np.int64)
            if q.size and (int(q.max()) > bound or int(q.min()) < -bound):
                raise ValueError(
                    f"array {name!r}: an unmasked element is past the bound {bound}: the masks did not cancel"
                )
            out[first : first + q.size] = q / (float(scale) * samples)
        before = current[name].reshape(-1).astype(np.float64)
        new = before + out
        if np.dtype(dtype).kind == "f":
            merged[name] = new.astype(dtype).reshape(shape)
        elif np.dtype(dtype).kind == "b":
            merged[name] = (np.rint(new) != 0).reshape(shape)
        else:
            info = np.iinfo(dtype)
            merged[name] = np.clip(np.rint(new), info.min, info.max).astype(dtype).reshape(shape)
        offset += size
    return merged, samples
