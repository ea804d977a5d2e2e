"""A TCP proxy in a thread that cuts connections part-way: a real break between a coordinator and a device.

``CuttingProxy(device_url, direction="down", after=K)`` forwards every connection to the device and,
on the first connection that carries more than ``K`` bytes in ``direction`` (``"down"``: device to
coordinator, ``"up"``: coordinator to device), forwards exactly ``K`` bytes, then closes both sides.
``times`` connections are cut so (``None``: every one). ``pause`` seconds after each piece (<= 64 KiB) forwarded
in ``direction``: a slow link. ``forwarded`` counts the bytes that crossed
in each direction, so a test measures what a resumed transfer really cost on the wire.
"""

from __future__ import annotations

import select
import socket
import threading
from urllib.parse import urlsplit

__all__ = ["CuttingProxy"]

BUFFER = 1 << 16
"""Bytes of each proxy socket's kernel buffers."""


class CuttingProxy:
    """A proxy listening on 127.0.0.1 (``url``) for one device; a context manager, closed by :meth:`close`."""

    def __init__(
        self, device_url: str, *, direction: str, after: int, times: int | None = 1, pause: float = 0.0
    ) -> None:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
        parts = urlsplit(device_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.direction, self.after, self.times, self.pause = direction, after, times, pause
        self.forwarded = {"up": 0, "down": 0}
        self.cuts = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        # Small buffers, as a slow link's: what the sender has in flight at a break stays near what a WAN holds,
        # not the megabytes loopback buffers absorb (accepted sockets inherit the listener's size).
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}{parts.path}"
        self._threads: list[threading.Thread] = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, end every connection and join the proxy's threads (each ends within 0.2 s)."""
        self._closed.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._pump, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _cut_now(self) -> bool:
        with self._lock:
            if self.times is not None and self.cuts >= self.times:
                return False
            self.cuts += 1
            return True

    def _pump(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        try:
            server = socket.create_connection(self.target, timeout=5)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                server.setsockopt(socket.SOL_SOCKET, option, BUFFER)
        except OSError:
            client.close()
            return
        counted = 0  # bytes of this connection in the cut direction
        ends = {client: (server, "up"), server: (client, "down")}
        try:
            while not self._closed.is_set():  # ends with the proxy, or when either side closes
                ready, _, _ = select.select(list(ends), [], [], 0.2)
                for source in ready:
                    sink, direction = ends[source]
                    data = source.recv(1 << 16)
                    if not data:
                        return
                    if direction == self.direction and counted + len(data) > self.after and self._cut_now():
                        data = data[: max(0, self.after - counted)]
                        sink.sendall(data)
                        self._count(direction, len(data))
                        return  # the break: both sides closed in finally
                    if direction == self.direction:
                        counted += len(data)
                    sink.sendall(data)
                    self._count(direction, len(data))
                    if self.pause and direction == self.direction:
                        self._closed.wait(self.pause)
        except OSError:
            return
        finally:
            for end in (client, server):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                end.close()

    def _count(self, direction: str, n: int) -> None:
        with self._lock:
            self.forwarded[direction] += n
