"""Every reply of a round, kept for strategies that need them all: in RAM up to a budget, then spilled to disk.

Robust strategies (median, trimmed mean, Krum, Bulyan) cannot fold replies into a
running sum. :class:`ReplyStore` keeps each reply's arrays as they arrive: in RAM
while the replies held stay within ``spill_bytes``, past that in a spill file
under a :class:`tempfile.TemporaryDirectory`. Strategies then read the replies a
chunk of coordinates at a time (:meth:`ReplyStore.rows`): a ``(replies, chunk)``
matrix, each spilled row read through a short-lived :class:`numpy.memmap` window
that is unmapped after the copy, so the file's pages do not stay in the
process's resident memory. The folder and its file are deleted when the store
closes, whatever happened (it is a context manager).

Once every reply is in, :meth:`ReplyStore.canonicalize` puts them in an order that
depends on their content alone (their sha256 digests), so a strategy reading them
back computes the same bits whatever order they arrived in: ties, partitions and
means of kept replies see the same rows in the same order on every rerun.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO

import numpy as np

from .._util.checks import is_int

__all__ = ["ReplyStore", "default_spill_bytes", "SPILL_SHARE", "checked_spill_bytes", "reply_digest"]

SPILL_SHARE = 4
"""The default RAM budget is 1/SPILL_SHARE of the memory available when the merge begins."""

_FALLBACK = 1 << 30  # bytes, where the available memory cannot be read
_WORK = 1 << 25  # bytes of a (replies, chunk) matrix in float64


def available_memory() -> int | None:
    """Bytes of memory available now: ``MemAvailable`` of /proc/meminfo, else ``os.sysconf``.

    ``None`` if neither says.
    """
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f.read(1 << 16).splitlines():
                if line.startswith(b"MemAvailable:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if parts[-1].lower() == b"kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def default_spill_bytes() -> int:
    """A quarter (1/:data:`SPILL_SHARE`) of :func:`available_memory`; 1 GiB where that cannot be read."""
    available = available_memory()
    return _FALLBACK if available is None or available <= 0 else available // SPILL_SHARE


def checked_spill_bytes(value: Any) -> int | None:
    """``spill_bytes`` as given to a strategy: ``None`` (the default) or an integer >= 0."""
    if value is None:
        return None
    if not is_int(value) or value < 0:
        raise ValueError(f"spill_bytes must be None (a share of available memory) or an integer >= 0, got {value!r}")
    return value


def reply_digest(arrays: Mapping[str, np.ndarray], samples: int, names: Iterable[str]) -> bytes:
    """sha256 of a reply: its sample count (8 bytes, little-endian), then each array's bytes, in ``names``' order.

    What :meth:`ReplyStore.canonicalize` orders replies by (32 bytes).
    """
    digest = hashlib.sha256(int(samples).to_bytes(8, "little"))
    for name in names:
        digest.update(np.ascontiguousarray(arrays[name]).reshape(-1).view(np.uint8).data)
    return digest.digest()


class ReplyStore:
    """The round's replies, by arrival: ``(arrays, samples)`` each, read back by coordinate chunks.

    Args:
        layout: name -> (shape, dtype) of the model; replies were checked against it.
        spill_bytes: bytes of replies kept in RAM; the next reply that would pass it,
            and every one after, goes to the spill file. 0 spills every reply.

    Attributes:
        samples: each stored reply's sample count, in arrival order (canonical order after
            :meth:`canonicalize`).
        digests: each stored reply's sha256 (of its sample count and its arrays' bytes, in
            ``layout``'s order), in the same order.
        spilled: how many replies went to the spill file.
    """

    def __init__(self, layout: Mapping[str, tuple[tuple[int, ...], np.dtype]], spill_bytes: int) -> None:
        self.layout = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in layout.items()}
        self.spill_bytes = spill_bytes
        self.samples: list[int] = []
        self.digests: list[bytes] = []
        self.spilled = 0
        self._ram: list[dict[str, np.ndarray] | None] = []
        self._offsets: list[dict[str, int] | None] = []
        self._held = 0
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._file: BinaryIO | None = None
        self._end = 0
        self._dirty = False

    def __enter__(self) -> ReplyStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def folder(self) -> str | None:
        """The spill folder while it exists."""
        return self._folder.name if self._folder is not None else None

    def add(self, arrays: Mapping[str, np.ndarray], samples: int) -> None:
        """Keep one reply (arrays already checked against ``layout``)."""
        self.digests.append(reply_digest(arrays, samples, self.layout))
        size = sum(int(np.asarray(arrays[name]).nbytes) for name in self.layout)
        if self._held + size <= self.spill_bytes:
            self._ram.append({name: np.asarray(arrays[name]).reshape(-1) for name in self.layout})
            self._offsets.append(None)
            self._held += size
        else:
            self._ram.append(None)
            self._offsets.append(self._write(arrays))
            self.spilled += 1
        self.samples.append(samples)

    def _write(self, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
        if self._file is None:
            self._folder = tempfile.TemporaryDirectory(prefix="fedsync-spill-")
            self._file = open(os.path.join(self._folder.name, "replies.bin"), "w+b")
        offsets = {}
        for name in self.layout:
            flat = np.ascontiguousarray(arrays[name]).reshape(-1)
            offsets[name] = self._end
            self._file.write(flat.view(np.uint8).data)  # its bytes, not a copy
            self._end += flat.nbytes
        self._dirty = True
        return offsets

    def canonicalize(self) -> None:
        """Reorder the stored replies by their digests: an order set by their content, not their arrival.

        Replies with equal digests hold the same bytes, so their relative order changes nothing.
        Nothing is copied or read: only the index lists move.
        """
        order = sorted(range(len(self)), key=self.digests.__getitem__)
        self._ram = [self._ram[i] for i in order]
        self._offsets = [self._offsets[i] for i in order]
        self.samples = [self.samples[i] for i in order]
        self.digests = [self.digests[i] for i in order]

    def rows(self, name: str, first: int, end: int, which: list[int] | None = None) -> np.ndarray:
        """Elements ``[first, end)`` of array ``name`` of each reply (or of ``which`` ones).

        Returns a new ``(replies, end - first)`` array.
        """
        _, dtype = self.layout[name]
        indices = range(len(self)) if which is None else which
        out = np.empty((len(indices), end - first), dtype)
        if self._dirty and self._file is not None:
            self._file.flush()
            self._dirty = False
        for row, index in enumerate(indices):
            kept = self._ram[index]
            if kept is not None:
                out[row] = kept[name][first:end]
                continue
            if end == first:
                continue
            spilled, file = self._offsets[index], self._file
            assert spilled is not None and file is not None  # a reply not kept in RAM went to the spill file
            offset = spilled[name] + first * dtype.itemsize
            window = np.memmap(file, dtype=dtype, mode="r", offset=offset, shape=(end - first,))
            out[row] = window
            del window  # unmapped now: the pages leave this process's resident memory
        return out

    def chunks(self, name: str, replies: int | None = None) -> Iterator[tuple[int, int]]:
        """``(first, end)`` coordinate ranges of array ``name``.

        Each small enough for a ``(replies, chunk)`` float64 matrix.
        """
        shape, _ = self.layout[name]
        size = int(np.prod(shape, dtype=np.int64))
        step = max(1024, _WORK // (8 * max(1, replies if replies is not None else len(self))))
        for first in range(0, size, step):
            yield first, min(first + step, size)

    def close(self) -> None:
        """Drop the replies and delete the spill folder."""
        self._ram.clear()
        file, self._file = self._file, None
        folder, self._folder = self._folder, None
        try:
            if file is not None:
                file.close()
        finally:
            if folder is not None:
                folder.cleanup()
