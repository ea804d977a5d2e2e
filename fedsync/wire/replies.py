"""A device's reply as the coordinator's merge reads it: a stream, not a buffer.

A FedData with ``accepts_streams = True`` (FedArrays and the adapters) is
handed :class:`ReplyStream` objects by ``Federated``: it reads each reply
piece by piece and folds it into its running sum, so the coordinator never
holds a whole reply. A reply found bad while reading (malformed, NaN, the
connection lost) is reported with :meth:`ReplyStream.reject`; the round goes on
without that device. Every device keeps its result until its next
submission, so a reply can be read again with :meth:`ReplyStream.reopen`
(what a merge does if it must start its sum over).

Every read waits at most as long as the round's :class:`~fedsync.wire.transfer.Deadline`
allows: a reply still flowing at the deadline is read within the grace period,
one that stalls is dropped as late (see :mod:`fedsync.wire.transfer`).

Public on purpose: a FedData with ``accepts_streams = True`` is handed :class:`ReplyStream`
objects, so their methods are part of the FedData contract.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import RemoteError, RemoteUnavailable
from .codec import read_exactly
from .transfer import Deadline, Readable, read_some

__all__ = ["ReplyStream"]

Opener = Callable[[], "tuple[Readable, int]"]
"""Requests the result again: ``(answer, content_length)``, the answer's body unread."""


class ReplyStream:
    """One device's reply body, unread: ``length`` bytes to take with :meth:`readinto`.

    Attributes:
        url: the device that sent it.
        length: the body's size in bytes (its Content-Length).
        content_type: the answer's Content-Type (``text/plain...`` for text payloads).
        rejected: ``None``, or why the merge refused the reply.
    """

    def __init__(self, url: str, opened: tuple[Readable, int], open_again: Opener, deadline: Deadline) -> None:
        self.url = url
        self.rejected: str | None = None
        self.content_type = ""
        self._answer: Readable | None
        self._answer, self.length = opened
        self._open = open_again
        self._deadline = deadline
        self._read = 0

    def __repr__(self) -> str:
        return f"ReplyStream({self.url!r}, {self.length} bytes{', rejected' if self.rejected else ''})"

    def __len__(self) -> int:
        return self.length

    def readinto(self, view: memoryview) -> int:
        """Fill up to ``len(view)`` bytes; 0 once all ``length`` bytes were read.

        Raises :class:`~fedsync.errors.RemoteUnavailable` if the connection ends
        early and :class:`~fedsync.errors.RemoteTimeout` when it stops arriving at
        the round's deadline (or stalls in its grace period).
        """
        if self._answer is None:
            raise RemoteError(
                self.url, "this reply was closed before it was read; read each reply before asking for the next"
            )
        wanted = min(len(view), self.length - self._read)
        if wanted <= 0:
            return 0
        n = read_some(self._answer, view[:wanted], self._deadline, self.url)
        if not n:
            raise RemoteUnavailable(self.url, f"result ended after {self._read} of {self.length} bytes")
        self._read += n
        return n

    def read_all(self) -> memoryview:
        """The rest of the reply in one numpy-allocated buffer (for merges that need it whole)."""
        # readinto raises rather than end early, so the buffer comes back full.
        return read_exactly(self.readinto, self.length - self._read, as_view=True)

    def reject(self, reason: str) -> None:
        """Refuse this reply: the round drops the device, naming ``reason``."""
        self.rejected = reason
        self.close()

    def reopen(self) -> ReplyStream:
        """Ask the device for the same result again and read it from the start."""
        self.close()
        answer, length = self._open()
        self._answer = answer
        if length != self.length:
            answer.close()
            raise RemoteError(self.url, f"sent {length} bytes for a result it sent as {self.length} before")
        self._read = 0
        return self

    def close(self) -> None:
        """Release the connection: back to the pool when the reply was read in full, else closed."""
        answer, self._answer = self._answer, None
        if answer is not None:
            answer.close()  # the answer's contract: released if its body was read to its end
