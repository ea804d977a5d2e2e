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


def tls_context(ssl_context: Any, client_ca: str | os.PathLike | None) -> Any:
    """``ssl_context`` as an :class:`ssl.SSLContext` that, with ``client_ca``, requires client certificates.

    ``ssl_context`` is an :class:`ssl.SSLContext`, a ``(certfile, keyfile)`` pair or ``None``; without
    ``client_ca`` it is returned as given.

    Raises:
        ValueError: ``client_ca`` without ``ssl_context``.
        OSError: ``client_ca`` cannot be read as a PEM CA certificate.
    """
    if client_ca is None:
        return ssl_context
    if ssl_context is None:
        raise ValueError(
            "client_ca needs TLS: pass ssl_context=(certfile, keyfile) too (fedsync serve --certfile/--keyfile)"
        )
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
