"""Run a device: :func:`serve` listens and answers a FedData's routes until stopped.

The app is :class:`fedsync.device.app.DeviceApp`; the server under it is the gateway's
:class:`~fedsync.gateway.server.KeepAliveServer`, on a socket and TLS context from
:mod:`fedsync.gateway.listen`. :func:`fedsync.serve` is this module's :func:`serve`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from .._util.checks import positive_int
from ..gateway.listen import listen, loopback, tls_context
from ..gateway.server import MAX_CONNECTIONS, KeepAliveServer
from ..protocol import FedData
from ..secagg.identity import Identity
from ._kept import use_state_dir
from .app import DeviceApp
from .dialer import RunningDialer

__all__ = ["serve", "RunningServer", "RunningDialer", "STOP_POLL"]

# The device's one logger name (the app and the gateway log under it too): users filter on it.
logger = logging.getLogger("fedsync.server")

STOP_POLL = 0.05
"""How often, in seconds, the accepting loop checks for a stop request: a device stops (and frees
its port) this soon after ``close()`` or SIGTERM (socketserver's default, 0.5 s, made stopping slow)."""


class RunningServer:
    """A device server running in a background thread; a context manager.

    ``url`` is where it answers (``http://`` or ``https://``, the port it listens on); ``close()``
    stops it and frees the port.
    """

    def __init__(self, server: KeepAliveServer, app: DeviceApp) -> None:
        self.server = server
        self.app = app
        self.host = server.server_address[0]
        self.port = server.socket.getsockname()[1]
        self.url = f"{'https' if server.ssl_context else 'http'}://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": STOP_POLL}, name="fedsync-serve", daemon=True
        )
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Block until the server stops (or ``timeout`` seconds pass)."""
        self._thread.join(timeout)

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    data: FedData | Mapping[str, FedData],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    block: bool = True,
    token: str | None = None,
    max_content_length: int | None = None,
    ssl_context: Any = None,
    client_ca: str | os.PathLike | None = None,
    max_connections: int = MAX_CONNECTIONS,
    secure_aggregation: str | None = None,
    peer_ca: str | os.PathLike | None = None,
    connect: str | None = None,
    name: str | None = None,
    verify: bool | str | os.PathLike = True,
    cert: tuple[str, str] | str | None = None,
    crl: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    state_dir: str | os.PathLike | None = None,
) -> RunningServer | RunningDialer | None:
    """Serve a FedData (or a dict ``{name: FedData}``) over HTTP, listening, or dialing out with ``connect``.

    Listening (the default), the device answers a coordinator that connects to it. With ``connect=URL``
    it opens outgoing connections only, to a coordinator's listener (a device behind NAT or a firewall,
    ``docs/dial-out.md``): it registers as ``name`` with ``token``, fetches the coordinator's requests
    and answers them, and reconnects by itself when the coordinator restarts or the network drops.

    Args:
        data: what this device holds; a dict mounts each FedData under ``/<name>/``.
        host: interface to listen on; the default only accepts local connections.
        port: TCP port; ``0`` picks a free one (read it back from ``.url``).
        block: ``True`` serves until interrupted (Ctrl-C) and returns ``None``;
            ``False`` serves in a background thread and returns a
            :class:`RunningServer` with ``.url`` and ``.close()``.
        token: if set, requests must carry ``Authorization: Bearer <token>``;
            surrounding whitespace is stripped (a token read from a file ends
            with a newline).
        max_content_length: the largest payload accepted, in bytes (default 2 GiB).
        ssl_context: serve HTTPS: an ``ssl.SSLContext`` or a ``(certfile, keyfile)`` pair.
        client_ca: mutual TLS: a CA certificate file (PEM); only coordinators presenting
            a certificate signed by it complete the TLS handshake (``Remote(url,
            cert=(certfile, keyfile))``); others are refused before any HTTP is read.
            Needs ``ssl_context``. ``fedsync certs`` makes the CA and certificates.
        max_connections: connections open at once (a thread each, default 128); one
            more is answered ``503 too_many_connections`` and closed.
        secure_aggregation: ``"required"``: take part only in rounds that ran secure
            aggregation's key phases (``Federated(secure_aggregation=SecAgg())``); a plain
            submission is refused (409). Default: answer both kinds (docs/privacy.md).
        peer_ca: signed secure aggregation (against a coordinator that forges keys or
            views): the CA (PEM) whose *device* certificates this device believes. The
            device signs its keys and survivor list with the key of ``ssl_context``'s
            certificate (ECDSA P-256), refuses peers whose keys are not signed by a
            device certificate of this CA, and reveals shares only after ``t`` survivors
            signed the same survivor list (:mod:`fedsync.secagg.identity`). Separate
            from ``client_ca`` (who may drive this device): give a CA the coordinator's
            operator cannot issue device certificates from, or the same file when one
            CA does both. Needs ``ssl_context=(certfile, keyfile)`` (dialing out: ``cert=``).
        connect: dial out to this listener URL (``http://`` or ``https://host:port``) instead of
            listening; ``host``, ``port``, ``ssl_context``, ``client_ca`` and ``max_connections`` then do
            not apply. ``block=False`` returns a :class:`~fedsync.device.dialer.RunningDialer`; ``block=True``
            dials until Ctrl-C, or raises :class:`~fedsync.device.dialer.DialRefused` when the listener
            refuses this device (401 a wrong token, 403 a name not on its allow-list).
        name: dialing out: this device's name on the listener's allow-list (1-64 of ``[A-Za-z0-9._-]``).
        verify: dialing out over HTTPS: ``True`` (the system's CAs), the coordinator's CA file, or ``False``.
        cert: dialing out with mutual TLS: ``(certfile, keyfile)``; its identity (CN or a DNS name) is ``name``.
        crl: the certificate revocation list(s) (PEM) of ``client_ca``'s and ``peer_ca``'s CAs
            (``fedsync certs revoke``): a revoked coordinator is refused in the TLS handshake, a
            revoked device's keys in signed secure aggregation. Checked at start: a list that is
            missing, unreadable, not signed by its CA or past its next update stops the start
            (fail closed); one list per CA when the two differ. Read once: restart to load a renewed list.
        state_dir: a folder keeping each FedData's own state (:meth:`~fedsync.protocol.FedData.device_state`,
            e.g. ``FedArrays(state=...)``) across restarts: restored from ``device_state.safetensors``
            (``<name>.device_state.safetensors`` for a dict's) at start, saved there atomically after each
            round before its reply is served. The codec's safetensors layout, checked before use.

    Where it serves or dials is logged at INFO on ``fedsync.server``; a blocking call also prints it
    to stderr when logging is not set up to show INFO (a script's ``fedsync.serve(model)`` says where it is).

    Raises:
        ValueError: an empty or whitespace-only token, or one with control or
            non-ASCII characters (see :func:`checked_token`); a bad
            ``max_content_length`` or ``max_connections``; a bad dict of FedData.
        OSError: the address cannot be listened on (it names the address), or
            ``client_ca`` cannot be read as a CA certificate.
        ValueError: ``peer_ca`` without ``ssl_context=(certfile, keyfile)``, or a device
            certificate that is not ECDSA P-256 or does not verify against ``peer_ca``; a
            ``crl`` refused, or given without ``client_ca`` or ``peer_ca``.
        ValueError: a state file in ``state_dir`` that is damaged, of another layout, or not a regular
            file (the message names it; move it away to start afresh).
        ValueError: dialing out, a bad ``connect`` URL, ``name``, ``token``, ``verify`` or ``cert``,
            or a listening-only option (``host``, ``port``, ``ssl_context``, ...) given with ``connect``.
        DialRefused: ``block=True`` and the listener refused this device (a PermissionError).
    """
    if connect is not None and crl is not None:  # never ignored: a device dialing out does not check lists yet
        raise ValueError("crl= is for a listening device (client_ca, peer_ca); with connect= it is not supported yet")
    if connect is not None:
        return _dial(data, connect, name, token, verify, cert, block, max_content_length, secure_aggregation, peer_ca,
                     state_dir,
                     listening={"ssl_context": ssl_context, "client_ca": client_ca,
                                "max_connections": max_connections != MAX_CONNECTIONS,
                                "host": host != "127.0.0.1", "port": port != 8000})  # fmt: skip
    if name is not None or cert is not None or verify is not True:
        raise ValueError("name=, verify= and cert= are for dialing out: pass connect='https://coordinator:9000' too")
    app = DeviceApp(data, token=token, max_content_length=max_content_length, secure_aggregation=secure_aggregation)
    if state_dir is not None:
        use_state_dir(app, state_dir)
    positive_int("max_connections", max_connections)
    if crl is not None:
        _check_crl(crl, client_ca, peer_ca)
    if peer_ca is not None:
        _sign_with(app, ssl_context, peer_ca, crl)
    ssl_context = tls_context(ssl_context, client_ca, crl if client_ca is not None else None)
    if not loopback(host) and (token is None or ssl_context is None):
        missing = " and ".join(w for w, absent in (("a token", token is None), ("TLS", ssl_context is None)) if absent)
        logger.warning(
            "serving on %s without %s: anyone who reaches this address can %s (docs/security.md: bind to 127.0.0.1, "
            "or pass token= and ssl_context=)",
            host,
            missing,
            "submit payloads and read results" if token is None else "read the token and the weights on the network",
        )
    sock = listen(host, port)
    try:
        server = KeepAliveServer(sock, app, ssl_context=ssl_context, max_connections=max_connections)
    except BaseException:
        sock.close()
        raise
    url = f"{'https' if ssl_context else 'http'}://{host}:{server.socket.getsockname()[1]}"
    if not block:
        # The caller holds the server's .url: logged only, a library does not print on its caller's behalf.
        logger.info("fedsync device serving on %s", url)
        return RunningServer(server, app)
    try:  # Ctrl-C right after the announcement is still a quiet stop
        _announce(f"fedsync device serving on {url}")
        server.serve_forever(poll_interval=STOP_POLL)
    except KeyboardInterrupt:
        logger.info("fedsync device stopped (Ctrl-C); port %d released", server.socket.getsockname()[1])
    finally:
        server.server_close()
    return None


def _announce(line: str) -> None:
    """Log ``line`` at INFO; print it to stderr too when logging would not show it (nothing configured).

    stderr, not stdout: a script's stdout is its own output (``fedsync serve`` prints its URL on
    stdout itself, with logging configured, so it is not said twice).
    """
    logger.info("%s", line)
    if not (logger.isEnabledFor(logging.INFO) and logger.hasHandlers()):
        print(f"{line} (Ctrl-C stops)", file=sys.stderr, flush=True)


def _dial(
    data: FedData | Mapping[str, FedData],
    connect: str,
    name: str | None,
    token: str | None,
    verify: bool | str | os.PathLike,
    cert: tuple[str, str] | str | None,
    block: bool,
    max_content_length: int | None,
    secure_aggregation: str | None,
    peer_ca: str | os.PathLike | None,
    state_dir: str | os.PathLike | None,
    listening: dict[str, Any],
) -> RunningDialer | None:
    """``serve(..., connect=URL)``: the device dials the listener at ``connect`` (see :func:`serve`)."""
    given = [option for option, value in listening.items() if value not in (None, False)]
    if given:
        raise ValueError(
            f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for a listening device; a device that dials "
            "out (connect=) listens on nothing: pass verify= (the coordinator's CA) and cert= (mutual TLS) instead"
        )
    if name is None:
        raise ValueError(
            "connect= needs name=: the name this device has on the coordinator's allow-list, e.g. 'site-a'"
        )
    # No token on the app: the listener authenticated the coordinator; the device trusts the listener by TLS.
    app = DeviceApp(data, max_content_length=max_content_length, secure_aggregation=secure_aggregation)
    if state_dir is not None:
        use_state_dir(app, state_dir)
    if peer_ca is not None:
        _sign_with(app, tuple(cert) if isinstance(cert, list) else cert, peer_ca)
    if token is None:
        raise ValueError(f"connect= needs token=: the token the coordinator's listener holds for {name!r}")
    if urllib.parse.urlsplit(connect.strip() if isinstance(connect, str) else "").scheme == "http":
        logger.warning(
            "dialing %s without TLS: the token and the weights cross the network in the clear (use https://)", connect
        )
    dialer = RunningDialer(app, connect, name, token, verify=verify, cert=cert)
    if not block:
        logger.info("fedsync device dialing %s as %s", dialer.url, dialer.name)
        return dialer
    try:
        _announce(f"fedsync device dialing {dialer.url} as {dialer.name}")
        dialer.join()
    except KeyboardInterrupt:
        logger.info("fedsync device stopped (Ctrl-C)")
    finally:
        dialer.close()
    if dialer.error is not None:
        raise dialer.error
    return None


def _check_crl(crl: Any, client_ca: Any, peer_ca: Any) -> None:
    """Refuse a ``crl`` nothing would check: without a CA, or a list of neither CA (a mistake, not a no-op)."""
    from ..wire.certs import unused_crls

    if client_ca is None and peer_ca is None:
        raise ValueError("crl needs client_ca or peer_ca: a revocation list belongs to the CA it revokes for")
    unused = unused_crls(crl, [client_ca, peer_ca])
    if unused:
        raise ValueError(
            f"the revocation list(s) {[str(p) for p in unused]} belong to neither client_ca nor peer_ca: "
            "give the crl.pem of the CA folder whose ca.pem you pass"
        )


def _sign_with(app: DeviceApp, ssl_context: Any, peer_ca: str | os.PathLike, crl: Any = None) -> None:
    """Give every FedData of ``app`` the identity that signs its secure-aggregation views (fedsync.secagg.identity).

    Raises:
        ValueError: ``ssl_context`` is not a ``(certfile, keyfile)`` pair, or the certificate does not
            suit signing (see :class:`fedsync.secagg.identity.Identity`).
    """
    if not (isinstance(ssl_context, tuple) and len(ssl_context) == 2):
        raise ValueError(
            "peer_ca needs ssl_context=(certfile, keyfile) (fedsync serve --certfile/--keyfile): "
            "the device signs with its certificate's key"
        )
    identity = Identity(ssl_context[0], ssl_context[1], peer_ca, crl)
    for device in app.devices.values():
        device.secagg_identity = identity
