"""Shamir secret sharing of 32-byte secrets (Shamir 1979), for secure aggregation's dropout recovery.

pycryptodome's :class:`Crypto.Protocol.SecretSharing.Shamir` shares 16-byte secrets in
GF(2^128) (``ssss=False``); a 32-byte secret is shared as its two 16-byte halves with the
same indices, and a share is the two 16-byte shares concatenated. The share of device
``j`` is the polynomial's value at ``j`` (devices are numbered 1..n).

Reconstruction is *checked*: the caller gives a test (a commitment), so a device that
reveals a false share is found and left out (:func:`recover`), exhaustively up to
:data:`SUBSETS` subsets. (Reed-Solomon decoding, Berlekamp-Welch, would correct up to
``(n - t) / 2`` false shares in polynomial time, but no maintained library offers it over
pycryptodome's field, and fedsync does not hand-write it.)
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Iterator
from itertools import combinations

__all__ = ["split", "combine", "recover", "Unrecoverable"]

HALF = 16
SUBSETS = 1024
"""The most subsets of ``threshold`` shares :func:`recover` tries for one secret.

When the shares allow at most this many subsets (``C(shares, threshold)``: e.g. every
round of up to 12 devices, 13 with ``t >= 9``, 16 with ``t >= 13``), every one is tried,
so a secret is rebuilt whenever ``threshold`` honest shares remain, whatever the others
reveal. Past it the search is a random sample of this many subsets (after the ones that
avoid known false shares) and may miss an honest subset that exists. At about 4 ms per
subset (t = 7, pycryptodome), the bound costs at most about 4 s per secret."""


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
    shares: dict[int, bytes],
    threshold: int,
    check: Callable[[bytes], bool],
    seed: int = 0,
    suspects: Iterable[int] = (),
) -> tuple[bytes, list[int]]:
    """The secret whose ``check`` passes, and the indices whose shares are false.

    Tries subsets of ``threshold`` shares: first the lowest indices not in ``suspects``
    (devices already caught revealing a false share), then every subset, those with
    fewer suspects first, when there are at most :data:`SUBSETS`; else :data:`SUBSETS`
    random ones. Once a subset passes, each other share is tested with
    ``threshold - 1`` shares of that subset, which names every false share exactly.

    Raises:
        Unrecoverable: fewer than ``threshold`` shares, or no subset tried passes.
    """
    indices = sorted(shares)
    if len(indices) < threshold:
        raise Unrecoverable(f"{len(indices)} shares, fewer than the threshold {threshold}")
    good: tuple[int, ...] | None = None
    exhaustive = math.comb(len(indices), threshold) <= SUBSETS
    for subset in _subsets(indices, threshold, seed, set(suspects)):
        secret = combine([(i, shares[i]) for i in subset])
        if check(secret):
            good = subset
            break
    if good is None:
        searched = (
            f"every one of the {math.comb(len(indices), threshold)} subsets was tried"
            if exhaustive
            else f"{SUBSETS} of the {math.comb(len(indices), threshold)} subsets were tried, at random"
        )
        raise Unrecoverable(
            f"no {threshold} of the {len(indices)} shares from devices "
            f"{indices} rebuild a secret that matches its commitment ({searched})"
        )
    base = [(i, shares[i]) for i in good[: threshold - 1]]
    false = [i for i in indices if i not in good and not check(combine([*base, (i, shares[i])]))]
    return secret, false


def _subsets(indices: list[int], size: int, seed: int, suspects: set[int]) -> Iterator[tuple[int, ...]]:
    """At most ``SUBSETS + 1`` subsets: the first avoids suspects; all of them when few, else random ones."""
    ordered = [i for i in indices if i not in suspects] + [i for i in indices if i in suspects]
    first = tuple(sorted(ordered[:size]))
    yield first
    if math.comb(len(indices), size) <= SUBSETS:
        # Lexicographic over ``ordered``: subsets of non-suspects come before those with suspects.
        yield from (s for s in (tuple(sorted(c)) for c in combinations(ordered, size)) if s != first)
        return
    rng = random.Random(seed)
    for _ in range(SUBSETS):
        yield tuple(sorted(rng.sample(indices, size)))
