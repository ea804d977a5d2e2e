"""Shamir secret sharing of 32-byte secrets (Shamir 1979), for secure aggregation's dropout recovery.

pycryptodome's :class:`Crypto.Protocol.SecretSharing.Shamir` shares 16-byte secrets in
GF(2^128) (``ssss=False``); a 32-byte secret is shared as its two 16-byte halves with the
same indices, and a share is the two 16-byte shares concatenated. The share of device
``j`` is the polynomial's value at ``j`` (devices are numbered 1..n).

Reconstruction is *checked*: the caller gives a test (a commitment), so a device that
reveals a false share is found and left out (:func:`recover`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import combinations

__all__ = ["split", "combine", "recover", "Unrecoverable"]

HALF = 16
ATTEMPTS = 64
"""Subsets tried to find ``threshold`` honest shares when the first one fails its check."""


def _shamir():
    try:
        from Crypto.Protocol.SecretSharing import Shamir
    except ImportError:
        raise ImportError(
            "secure aggregation needs the 'pycryptodome' package: pip install 'fedsync[secagg]'"
        ) from None
    return Shamir


def split(secret: bytes, threshold: int, count: int) -> dict[int, bytes]:
    """Shares of a 32-byte ``secret`` for indices 1..``count``, any ``threshold`` of which rebuild it."""
    if len(secret) != 2 * HALF:
        raise ValueError(f"secret must be {2 * HALF} bytes, got {len(secret)}")
    shamir = _shamir()
    low = shamir.split(threshold, count, secret[:HALF])
    high = shamir.split(threshold, count, secret[HALF:])
    return {i: a + b for (i, a), (j, b) in zip(low, high, strict=True) if i == j}  # count shares each


def combine(shares: list[tuple[int, bytes]]) -> bytes:
    """The 32-byte secret of exactly ``threshold`` shares ``(index, 32 bytes)``."""
    shamir = _shamir()
    low = shamir.combine([(i, s[:HALF]) for i, s in shares])
    high = shamir.combine([(i, s[HALF:]) for i, s in shares])
    return low + high


class Unrecoverable(ValueError):
    """No ``threshold`` of the given shares rebuild a secret that passes its check."""


def recover(
    shares: dict[int, bytes], threshold: int, check: Callable[[bytes], bool], seed: int = 0
) -> tuple[bytes, list[int]]:
    """The secret whose ``check`` passes, and the indices whose shares are false.

    Tries the ``threshold`` lowest indices, then other subsets (all of them when there
    are at most ``ATTEMPTS``, else ``ATTEMPTS`` random ones); once a subset passes, each
    other share is tested with ``threshold - 1`` shares of that subset, which names
    every false share exactly.

    Raises:
        Unrecoverable: fewer than ``threshold`` shares, or no subset tried passes.
    """
    indices = sorted(shares)
    if len(indices) < threshold:
        raise Unrecoverable(f"{len(indices)} shares, fewer than the threshold {threshold}")
    good: tuple[int, ...] | None = None
    for subset in _subsets(indices, threshold, seed):
        secret = combine([(i, shares[i]) for i in subset])
        if check(secret):
            good = subset
            break
    if good is None:
        raise Unrecoverable(
            f"no {threshold} of the {len(indices)} shares from devices "
            f"{indices} rebuild a secret that matches its commitment"
        )
    base = [(i, shares[i]) for i in good[: threshold - 1]]
    false = [i for i in indices if i not in good and not check(combine([*base, (i, shares[i])]))]
    return secret, false


def _subsets(indices: list[int], size: int, seed: int):
    yield tuple(indices[:size])
    everything = combinations(indices, size)
    first = [s for _, s in zip(range(ATTEMPTS + 1), everything, strict=False)]  # at most ATTEMPTS + 1, on purpose
    if len(first) <= ATTEMPTS:  # few enough to try them all
        yield from first[1:]
        return
    rng = random.Random(seed)
    for _ in range(ATTEMPTS):
        yield tuple(sorted(rng.sample(indices, size)))
