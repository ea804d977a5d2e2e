"""The coordinator's :class:`Listener` for devices that dial out (behind NAT, outgoing connections only).

It serves HTTP(S) from an aiohttp server on an event loop in a background thread, so thousands of devices
waiting in a long-poll cost no thread each; the coordinator's threads reach each device through a
``dial://NAME`` :class:`~fedsync.transports.remote.Remote` (:meth:`Listener.remote`), so ``Federated``
treats a dialed-in device as any other. The wire is in docs/protocol.md, "Devices that dial out".
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..._util.checks import is_int
from ..._util.json import loads_strict, shown
from ...gateway.listen import listen, tls_context
from ...wire.tokens import checked_token
from ..remote import MAX_REPLY, Remote
from ._jobs import Hub
from .transport import NAME, DialTransport, running, split

__all__ = ["Listener", "MAX_ALLOW_LIST"]

MAX_ALLOW_LIST = 16 * 1024**2
"""The largest allow-list file, in bytes."""


def allow_list(devices: Mapping[str, str] | str | os.PathLike[str]) -> dict[str, str]:
    """The allow-list ``{name: token}``, checked; from a mapping or a JSON file holding one.

    Raises:
        ValueError: a name that is not 1-64 characters of ``[A-Za-z0-9._-]`` (not starting with ``.``/``-``), a
            token that ``checked_token`` refuses, an empty list, or a file that is not such a JSON object.
        OSError: the file cannot be read.
    """
    if isinstance(devices, (str, os.PathLike)):
        path = os.fspath(devices)
        with open(path, "rb") as file:
            text = file.read(MAX_ALLOW_LIST + 1)
        if len(text) > MAX_ALLOW_LIST:
            raise ValueError(f"the allow-list {path!r} is over {MAX_ALLOW_LIST} bytes")
        try:
            devices = loads_strict(
                text,
                duplicate=lambda key: ValueError(f"the device {shown(key)} twice"),
                constant=lambda name: ValueError(f"{name} is not JSON"),
            )
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"the allow-list {path!r} is not a JSON object of names to tokens: {exc}") from None
    if not isinstance(devices, Mapping) or not devices:
        raise ValueError(
            f"devices must be a non-empty {{name: token}} mapping, got {shown(devices)}; "
            "e.g. devices={'site-a': 'token-a'}"
        )
    checked = {}
    for name, token in devices.items():
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(
                f"device name {shown(name)}: use 1-64 characters of [A-Za-z0-9._-], not starting with '.' or '-'"
            )
        if not isinstance(token, str):
            raise ValueError(f"the token of {name!r} must be a string (each device has its own)")
        try:
            checked[name] = checked_token(token)
        except ValueError as exc:
            raise ValueError(f"the token of {name!r}: {exc}") from None
    return checked  # type: ignore[return-value]  # checked_token keeps a string a string


class Listener:
    """Serve devices that dial out; reach each as ``dial://NAME``.

    Starts serving at once, on an event loop in a background thread; close it (or use it as a context manager).

    Args:
        host: the address to listen on (``"0.0.0.0"``: every interface).
        port: the port; 0 picks a free one (:attr:`url` tells which).
        devices: the allow-list ``{name: token}`` (a token per device), or the path of a JSON file of it.
        ssl_context: TLS: an :class:`ssl.SSLContext` or a ``(certfile, keyfile)`` pair; ``None`` for plain HTTP.
        client_ca: mutual TLS (needs ``ssl_context``): a device's certificate must verify against this CA, and
            its identity (subject CN or a DNS name) must be the name it registers under.
        crl: the revocation list(s) of ``client_ca``'s CA (``fedsync certs revoke``): a revoked device
            certificate is refused in the TLS handshake. Checked at start (fail closed: a list
            missing, unreadable, not signed by the CA or past its next update is an error).
        max_connections: connections open at once; one more is answered 503 ``too_many_connections``.

    Raises:
        ImportError: aiohttp is missing (``pip install 'fedsync[dial]'``).
        ValueError: a bad allow-list, ``client_ca`` without ``ssl_context``, ``crl`` without
            ``client_ca``, or a ``crl`` refused.
        OSError: the address cannot be listened on, or a TLS file cannot be read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        devices: Mapping[str, str] | str | os.PathLike[str],
        ssl_context: Any = None,
        client_ca: str | os.PathLike[str] | None = None,
        max_connections: int = 10_000,
        crl: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        try:
            from . import _server
        except ImportError as exc:
            raise ImportError(
                f"the dial-out listener needs aiohttp ({exc}); install it with: pip install 'fedsync[dial]'"
            ) from None
        if not is_int(max_connections) or max_connections < 1:
            raise ValueError(f"max_connections must be a positive integer, got {shown(max_connections)}")
        self.devices = allow_list(devices)
        context = tls_context(ssl_context, client_ca, crl)
        if isinstance(context, tuple):
            import ssl

            built = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            built.load_cert_chain(*context)
            context = built
        sock = listen(host, port)
        self.loop = asyncio.new_event_loop()
        self.hub = Hub(self.devices, self.loop)
        routes = _server.Routes(self.hub, self.devices, identity=client_ca is not None)
        self.server = _server.Server(routes, context, max_connections)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fedsync-dial", daemon=True)
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(sock), self.loop).result(30)
        except BaseException:
            sock.close()
            self._stop_loop()
            raise
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if context is not None else 'http'}://{shown_host}:{sock.getsockname()[1]}"
        self.closed = False
        running(self, True)

    def __repr__(self) -> str:
        return f"Listener({self.url!r}, {len(self.devices)} devices)"

    def remote(self, name: str, timeout: float = 30.0, *, max_reply: int = MAX_REPLY) -> Remote:
        """The :class:`~fedsync.transports.remote.Remote` of device ``name`` (``"site-a"``, or ``"site-a/model"``
        for a named base), URL ``dial://NAME``; ``timeout`` seconds for each answer's head.

        Raises:
            ValueError: ``name`` is not on the allow-list.
        """
        bare, prefix = split(f"dial://{name}")
        if bare not in self.devices:
            raise ValueError(f"{bare!r} is not on this listener's allow-list ({', '.join(list(self.devices)[:10])})")
        url = f"dial://{bare}{prefix}"
        return Remote(url, timeout=timeout, max_reply=max_reply, transport=DialTransport(self.hub, bare, url, prefix))

    def remotes(self, timeout: float = 30.0) -> list[Remote]:
        """One remote per allowed device, in the allow-list's order (see :meth:`remote`)."""
        return [self.remote(name, timeout) for name in self.devices]

    def connected(self) -> list[str]:
        """The names registered now, in the allow-list's order."""
        with self.hub.lock:
            return [name for name in self.devices if name in self.hub.sessions]

    def wait_for(self, n: int, timeout: float = 60.0) -> list[str]:
        """Block until ``n`` allowed devices registered; their names.

        Raises:
            ValueError: ``n`` is not between 1 and the allow-list's size.
            TimeoutError: fewer registered within ``timeout`` seconds (the message names the missing).
        """
        if not is_int(n) or not 1 <= n <= len(self.devices):
            raise ValueError(f"n must be between 1 and {len(self.devices)} (the allow-list's size), got {shown(n)}")
        return self.hub.wait_for(n, timeout)

    def stats(self, name: str) -> dict[str, int]:
        """Device ``name``'s transfers since the listener started, in bytes and counts: ``bytes_sent`` (request
        bodies), ``bytes_received`` (answers), ``bytes_resent`` (body bytes served more than once),
        ``resumed_uploads``, ``resumed_downloads``.

        Raises:
            KeyError: ``name`` is not on the allow-list.
        """
        with self.hub.lock:
            return dataclasses.asdict(self.hub.stats[name])

    def connections(self) -> int:
        """Connections open now."""
        return self.server.connections()

    def close(self) -> None:
        """Stop: requests in flight fail (``RemoteUnavailable``), connections close, the thread ends."""
        if self.closed:
            return
        self.closed = True
        running(self, False)
        self.hub.close()
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(15)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        if not self.thread.is_alive():
            self.loop.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
