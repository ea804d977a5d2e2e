"""Listening sockets and TLS for every role that serves HTTP.

The device serves through it today; a dial-out listener and an aggregator will too, without importing the device.

Nothing here knows federated learning: an address to bind, a TLS context to build, whether an
address is this machine only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from typing import Any

__all__ = ["listen", "tls_context", "loopback"]


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (``port`` 0: any free one), or an OSError naming the address.

    Binding here gives the caller an error to catch with the address in it
    (werkzeug's make_server, used before, printed and called sys.exit(1)).

    Raises:
        OSError: the address cannot be bound or listened on; the message names it and what to try.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except socket.gaierror as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); "
            "use an address of this machine, e.g. 127.0.0.1",
        ) from None
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}; try another port, or port=0 for any free one"
        ) from None
    except (UnicodeError, OverflowError) as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


def tls_context(
    ssl_context: Any,
    client_ca: str | os.PathLike | None,
    crl: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> Any:
    """``ssl_context`` as an :class:`ssl.SSLContext` that, with ``client_ca``, requires client certificates.

    ``ssl_context`` is an :class:`ssl.SSLContext`, a ``(certfile, keyfile)`` pair or ``None``; without
    ``client_ca`` it is returned as given. With ``crl`` (the revocation list(s) of ``client_ca``'s
    CA, :func:`fedsync.wire.certs.revoke`), a client certificate listed there is refused in the
    handshake; the lists are checked first (:func:`fedsync.wire.certs.crls_for`), so a list that is
    missing, unreadable, not signed by the CA or past its next update stops the start.

    Raises:
        ValueError: ``client_ca`` without ``ssl_context``, ``crl`` without ``client_ca``, or a ``crl``
            refused (the message says why).
        OSError: ``client_ca`` cannot be read as a PEM CA certificate, or ``crl`` cannot be read.
    """
    if client_ca is None:
        if crl is not None:
            raise ValueError(
                "crl needs client_ca: a revocation list is checked against the CA it belongs to (fedsync serve "
                "--client-ca DIR/ca.pem --crl DIR/crl.pem)"
            )
        return ssl_context
    if ssl_context is None:
        raise ValueError(
            "client_ca needs TLS: pass ssl_context=(certfile, keyfile) too (fedsync serve --certfile/--keyfile)"
        )
    lists = []
    if crl is not None:
        from ..wire.certs import crls_for

        lists = crls_for(crl, client_ca, "client_ca")  # before the context is changed: a refusal changes nothing
    if isinstance(ssl_context, tuple):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*ssl_context)
        ssl_context = context
    try:
        ssl_context.load_verify_locations(cafile=os.fspath(client_ca))
    except (ssl.SSLError, OSError) as exc:
        raise OSError(
            f"cannot load the client CA {os.fspath(client_ca)!r} ({exc}); "
            "give the PEM file made by `fedsync certs init`"
        ) from None
    for path, _ in lists:
        try:
            ssl_context.load_verify_locations(cafile=os.fspath(path))
        except (ssl.SSLError, OSError) as exc:
            raise OSError(f"cannot load the revocation list {os.fspath(path)!r} into TLS ({exc})") from None
    if lists:
        # OpenSSL then refuses a client certificate listed in its CA's list, and every one when the
        # list is past its next update (it needs a current list for the leaf's issuer: fail closed).
        ssl_context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ssl_context.verify_mode = ssl.CERT_REQUIRED
    return ssl_context


def loopback(host: str) -> bool:
    """Whether ``host`` (a name, or an IP address, IPv6 with or without brackets) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere
