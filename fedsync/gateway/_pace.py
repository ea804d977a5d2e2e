"""What a connection may hold, and for how long: read deadlines and the connection slots.

A slow peer must never keep what honest peers need. Two parts of :mod:`fedsync.gateway.server`
enforce it:

- :class:`TimedReader`, the connection's raw input: every read from the socket gets the time
  left before the current deadline, so a peer cannot stretch a request head past its deadline by
  sending a byte now and then (a per-read timeout alone restarts with every byte), nor a body
  by trickling it under a minimum rate.
- :class:`Slots`, the connections open at once: a stranger (a connection that has not
  authenticated and is not in the middle of a request) gives up its slot to a newcomer when all
  are taken, so connections that never send a whole request cannot lock out one that would.

Internal: its names may change without notice.
"""

from __future__ import annotations

import http.client
import io
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TimedReader", "Slots", "HeaderBudget", "handshake"]


class TimedReader(io.RawIOBase):
    """A socket's input whose every read ends by the current deadline (:class:`TimeoutError` after it).

    Three limits, the earliest wins:

    - ``idle``: seconds a single read may wait (no progress at all);
    - ``deadline``: a :func:`time.monotonic` instant by which reading must be over (a request
      head's, a linger's); :meth:`arm` sets it once the first byte of a request arrives;
    - :meth:`pace`: a minimum rate (a body), ``rate`` bytes per second on average once
      ``grace`` seconds have passed since it began.

    After each read the socket's timeout goes back to ``idle``, for the writes that follow.
    """

    def __init__(self, sock: socket.socket, idle: float) -> None:
        super().__init__()
        self._sock = sock
        self.idle = idle
        self.deadline: float | None = None
        self._arm_for: float | None = None
        self._pace: tuple[float, int, float] | None = None  # (start + grace, bytes at start, rate)
        self.total = 0
        """Bytes read from the socket so far."""

    def readable(self) -> bool:
        return True

    def arm(self, seconds: float) -> None:
        """Set ``deadline`` to ``seconds`` after the next byte arrives (a request head's time starts with it)."""
        self.deadline, self._arm_for = None, seconds

    def pace(self, grace: float, rate: float) -> None:
        """From now on, require ``rate`` bytes per second on average after ``grace`` seconds."""
        self._pace = (time.monotonic() + grace, self.total, rate)

    def unpace(self) -> None:
        """End :meth:`pace`."""
        self._pace = None

    def _timeout(self) -> float:
        now = time.monotonic()
        timeout = self.idle
        if self.deadline is not None:
            timeout = min(timeout, self.deadline - now)
        if self._pace is not None:
            after_grace, start, rate = self._pace
            # The next byte must come before the average since the grace falls below the rate.
            timeout = min(timeout, after_grace + (self.total - start) / rate - now)
        if timeout <= 0:
            raise TimeoutError("the peer was too slow: a read deadline passed")
        return timeout

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._timeout())
        try:
            n = self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self.idle)
        self.total += n
        if n and self._arm_for is not None:
            self.deadline, self._arm_for = time.monotonic() + self._arm_for, None
        return n


@dataclass(eq=False)
class _Slot:
    trusted: bool = False
    busy: bool = False  # a request head arrived and is being answered
    since: float = field(default_factory=time.monotonic)


class Slots:
    """The connections open at once, at most ``limit``; strangers make room for newcomers.

    A connection is *trusted* once it authenticated (a request the app accepted, see
    :data:`fedsync.gateway.server.TRUST_KEY`, or a verified client certificate), and *busy*
    while a request of it is answered. When all ``limit`` slots are taken, a newcomer takes the
    slot of the stranger (neither trusted nor busy) that has held one the longest; that
    connection is shut down. With no stranger to replace, the newcomer is refused.
    No address plays a part: behind NAT many honest devices share one.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[Any, _Slot] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def admit(self, connection: Any) -> bool:
        """Give ``connection`` a slot (replacing the oldest stranger if all are taken); False if none can be had."""
        evicted = None
        with self._lock:
            if len(self._open) >= self.limit:
                strangers = [
                    (slot.since, i, c)
                    for i, (c, slot) in enumerate(self._open.items())
                    if not slot.trusted and not slot.busy
                ]
                if not strangers:
                    return False
                evicted = min(strangers)[2]
                del self._open[evicted]
            self._open[connection] = _Slot()
        if evicted is not None:
            try:
                evicted.shutdown(socket.SHUT_RDWR)  # its thread's read returns at once, and it ends
            except OSError:
                pass
        return True

    def trust(self, connection: Any) -> None:
        """Mark ``connection`` authenticated: no newcomer takes its slot from now on."""
        with self._lock:
            slot = self._open.get(connection)
            if slot is not None:
                slot.trusted = True

    def busy(self, connection: Any, busy: bool) -> None:
        """Mark whether a request of ``connection`` is being answered (its slot is not taken meanwhile)."""
        with self._lock:
            slot = self._open.get(connection)
            if slot is not None:
                slot.busy = busy

    def holds(self, connection: Any) -> bool:
        """Whether ``connection`` still has its slot (False once a newcomer took it)."""
        with self._lock:
            return connection in self._open

    def discard(self, connection: Any) -> None:
        """Free ``connection``'s slot."""
        with self._lock:
            self._open.pop(connection, None)

    def connections(self) -> list[Any]:
        """The connections holding a slot now."""
        with self._lock:
            return list(self._open)


def handshake(tls: ssl.SSLSocket, deadline: float) -> None:
    """Run ``tls``'s server handshake, over by ``deadline`` (a peer sending its hello byte by byte included)."""
    tls.setblocking(False)
    wanted: tuple[list[ssl.SSLSocket], list[ssl.SSLSocket]]
    try:
        while True:
            try:
                tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                wanted = ([tls], [])
            except ssl.SSLWantWriteError:
                wanted = ([], [tls])
            left = deadline - time.monotonic()
            if left <= 0 or not any(select.select(*wanted, [], left)[:2]):
                raise TimeoutError("no TLS handshake by the connection's head deadline")
    finally:
        tls.setblocking(True)


class HeaderBudget:
    """The connection's input while headers are parsed: at most ``budget`` bytes in all."""

    def __init__(self, rfile: Any, budget: int) -> None:
        self._rfile = rfile
        self._budget = self._limit = budget

    def readline(self, limit: int = -1) -> bytes:
        allowed = self._budget + 1 if limit is None or limit < 0 else min(limit, self._budget + 1)
        line = self._rfile.readline(allowed)
        self._budget -= len(line)
        if self._budget < 0:
            raise http.client.LineTooLong(f"headers (over {self._limit} bytes in all)")
        return line
