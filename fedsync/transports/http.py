"""The HTTP transport: one ``requests`` session per device, retries, TLS, and errors named for people.

:class:`HTTPTransport` is what ``Remote("http://...")`` talks through. Bodies are never read by
``requests`` (which reads them whole): an :class:`HTTPAnswer` reads its socket itself
(:meth:`HTTPAnswer.readinto`), one ``recv`` at a time into the caller's buffer, and a
request body that is a :class:`~fedsync.wire.codec.Payload` goes out frame by frame, without a copy.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import RemoteError, RemoteTimeout, RemoteUnavailable
from ..wire.transfer import Deadline
from .base import Answer, Body, Transport, redact_bearer

__all__ = ["HTTPTransport", "HTTPAnswer"]


class HTTPAnswer(Answer):
    """An HTTP answer, its body unread on the socket.

    Its body is read past ``requests`` and urllib3 (which would read it whole, or copy it):
    straight from http.client's response into the caller's buffer, one ``recv`` at a time,
    each waiting no longer than the :class:`~fedsync.wire.transfer.Deadline` allows.

    Attributes:
        response: the ``requests.Response``, opened with ``stream=True``.
        url: the device's URL, named in errors.
    """

    def __init__(self, response: requests.Response, url: str) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self.url = url

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """Read at most ``len(view)`` bytes of the body into ``view`` with at most one ``recv``.

        The socket waits no longer than ``deadline.read_wait()``. Returns 0 at the
        body's end (or when ``view`` is empty); a connection that ends before the
        announced length also returns 0 (the caller knows the length).

        Raises:
            RemoteTimeout: nothing arrived in time (``deadline.expired`` says why).
            RemoteUnavailable: the connection failed.
        """
        if not len(view):
            return 0
        wait = deadline.read_wait()
        if wait <= 0:
            raise RemoteTimeout(self.url, deadline.expired)
        raw = self.response.raw
        source = getattr(raw, "_fp", None)  # http.client's response: fills our buffer directly
        sock = _socket(raw)
        try:
            if sock is not None:
                sock.settimeout(wait)
            if source is None:  # not http.client underneath: urllib3's own read
                data = raw.read(len(view))
                view[: len(data)] = data
                return len(data)
            return _readinto1(source, view)
        except TimeoutError:
            if deadline.left() <= 0 or deadline.grace <= 0:
                raise RemoteTimeout(self.url, deadline.expired) from None
            raise RemoteTimeout(self.url, f"the answer stopped arriving for {wait:.1f}s") from None
        except Exception as exc:  # urllib3, http.client and ssl raise several types for a lost connection
            raise RemoteUnavailable(
                self.url, f"connection lost while reading the answer ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None

    def close(self) -> None:
        """Release the connection: back to the pool if the body was read to its end, else closed."""
        raw = self.response.raw
        source = getattr(raw, "_fp", None)
        if raw is not None and source is not None and source.isclosed() and hasattr(raw, "release_conn"):
            raw.release_conn()
        else:
            self.response.close()


def _socket(raw: Any) -> Any:
    """The socket under urllib3's response ``raw`` (``None`` once its connection is released)."""
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    return getattr(connection, "sock", None)


def _readinto1(source: http.client.HTTPResponse, view: memoryview) -> int:
    """http.client's ``HTTPResponse.readinto`` with one ``recv`` at most (it loops until ``view`` is full)."""
    if source.fp is None:
        return 0
    if source.chunked or source.length is None:
        data = source.read1(len(view))
        view[: len(data)] = data
        return len(data)
    wanted = min(len(view), source.length)
    if wanted <= 0:
        source.readinto(memoryview(bytearray(0)))  # at the end: http.client releases the connection
        return 0
    n = source.fp.readinto1(view[:wanted])
    if n:
        source.length -= n
        if not source.length:
            # An empty read at length 0 is how http.client marks the body done,
            # so the kept-alive connection can return to the pool.
            source.readinto(memoryview(bytearray(0)))
    return n


class HTTPTransport(Transport):
    """Requests to one device's base URL over a ``requests`` session.

    Args:
        url: the device's base URL (``http://`` or ``https://``, no trailing ``/``).
        timeout: the longest wait for a connection, in seconds.
        token: sent as ``Authorization: Bearer <token>``, or ``None``.
        retries: connection attempts retried with backoff (never a request that was sent).
        verify: TLS verification: ``True`` (``$REQUESTS_CA_BUNDLE`` or ``$CURL_CA_BUNDLE``
            if set, else the system's), ``False``, or a CA bundle path.
        cert: a client certificate for mutual TLS: ``(certfile, keyfile)`` or one PEM file.
        crl: the revocation list(s) of ``verify``'s CA (``fedsync certs revoke``): a device whose
            certificate is listed is refused in the TLS handshake. Needs ``verify`` to be a CA file.

    Raises:
        FileNotFoundError: a ``cert`` file that does not exist.
        ValueError: ``crl`` without a CA file as ``verify``, or a list refused (not signed by that CA,
            past its next update, ...: :func:`fedsync.wire.certs.crls_for`).
        OSError: ``crl`` cannot be read.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        token: str | None = None,
        retries: int = 3,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        crl: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.token = token
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=0, other=0, backoff_factor=0.1)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
        if crl is not None:
            self.session.mount("https://", _RevocationAdapter(_revocation_context(verify, crl), max_retries=retry))
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        # Proxies and the CA bundle from the environment are resolved once here:
        # requests would look them up again on every request (about 0.7 ms each).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.url))
        if verify is True:
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.session.trust_env = False
        self.verify = verify
        if cert is not None:
            for path in (cert,) if isinstance(cert, (str, os.PathLike)) else cert:
                if not os.path.isfile(path):
                    raise FileNotFoundError(
                        f"client certificate file {os.fspath(path)!r} not found; "
                        "make one with `fedsync certs coordinator DIR`"
                    )
            self.session.cert = cert if isinstance(cert, str) else (os.fspath(cert[0]), os.fspath(cert[1]))

    def __repr__(self) -> str:
        return f"HTTPTransport({self.url!r})"

    def scrub(self, text: str) -> str:
        """``text`` without the token or any ``Bearer`` credential."""
        if self.token:
            text = text.replace(self.token, "[token]")
        return redact_bearer(text)

    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> HTTPAnswer:
        """One request; connecting waits at most ``min(self.timeout, timeout)``, each read ``timeout`` seconds.

        Redirects are not followed (a device has no business sending the token elsewhere).

        Raises:
            RemoteUnavailable: refused, reset, or TLS refused (the message says which side and what to pass).
            RemoteTimeout: no connection or no answer in time.
            RemoteError: malformed HTTP, or another ``requests`` error.
        """
        data: Any = body  # a Payload: requests writes its frames to the socket as they are, with its len()
        try:
            response = self.session.request(
                method,
                self.url + target,
                data=data,
                headers=headers,
                timeout=(min(self.timeout, timeout), timeout),
                verify=self.verify,
                stream=True,
                allow_redirects=False,
            )
        except requests.exceptions.SSLError as exc:
            detail = self.short(exc)
            raise_if_refused_certificate(self.url, detail)
            if "EOF" in detail or "reset" in detail.lower():  # a device refusing a client certificate may just hang up
                hint = (
                    "on this coordinator's certificate (is it signed by the CA the device was given as client_ca?)"
                    if self.session.cert
                    else "(if it requires a client certificate, pass cert=(certfile, keyfile) signed by its CA)"
                )
                raise RemoteUnavailable(
                    self.url, f"TLS handshake refused: the device closed the connection {hint}: {detail}"
                ) from None
            if "verify failed: certificate revoked" in detail.lower():  # this side's check, not the device's alert
                raise RemoteUnavailable(
                    self.url,
                    f"TLS certificate revoked: the device's certificate is on the revocation list (crl=): {detail}",
                ) from None
            if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail.lower():
                raise RemoteUnavailable(
                    self.url,
                    "TLS certificate not trusted (pass verify=CA_BUNDLE, the device's certificate or its CA): "
                    f"{detail}",
                ) from None
            raise RemoteUnavailable(self.url, self.scrub(connection_cause(exc))) from None
        except requests.exceptions.ConnectTimeout as exc:
            raise RemoteTimeout(self.url, f"cannot connect: {self.scrub(connection_cause(exc))}") from None
        except requests.exceptions.Timeout:
            raise RemoteTimeout(self.url, f"timed out: no answer within {timeout:g}s") from None
        except requests.exceptions.ConnectionError as exc:
            raise_if_refused_certificate(self.url, self.short(exc))
            if timed_out(exc):  # a read timeout that exhausted the retries arrives as a ConnectionError
                raise RemoteTimeout(self.url, f"timed out: no answer within {timeout:g}s") from None
            if malformed(exc):  # it connected and answered, but not HTTP a client can read
                raise RemoteError(self.url, f"answered malformed HTTP ({self.short(exc)})") from None
            if "Connection aborted" in str(exc):  # urllib3's words for a connection lost mid-request
                raise RemoteUnavailable(
                    self.url, f"connection lost during the request: {self.scrub(connection_cause(exc))}"
                ) from None
            raise RemoteUnavailable(self.url, f"cannot connect: {self.scrub(connection_cause(exc))}") from None
        except requests.exceptions.RequestException as exc:
            raise RemoteError(self.url, self.short(exc)) from None
        return HTTPAnswer(response, self.url)

    def close(self) -> None:
        """Release the session's connections."""
        self.session.close()

    def short(self, exc: BaseException) -> str:
        """``exc``'s text, scrubbed, at most about 300 characters."""
        text = self.scrub(str(exc))
        return text if len(text) < 300 else text[:300] + "..."


def connection_cause(exc: BaseException) -> str:
    """Why a connection failed, on one line: refused, reset, timed out, DNS, unreachable, TLS, with its detail.

    Walks ``exc``'s wrapped errors (``requests`` wraps urllib3's ``MaxRetryError``,
    which wraps ``NewConnectionError``, caused by the socket's ``OSError``) rather
    than quoting their six nested reprs. E.g. ``"connection refused (is the device
    running?)"``, ``"DNS lookup of 'h' failed (Name or service not known)"``.
    """
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 12 and all(current is not seen for seen in chain):
        chain.append(current)
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in current.args if isinstance(a, BaseException)), None)
        current = inner or current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, urllib3.exceptions.NameResolutionError | socket.gaierror):
            host = getattr(getattr(error, "conn", None), "host", None)
            why = re.search(r"\[Errno -?\d+\] ([^)\"']+)", str(error))
            what = f" of {host!r}" if host else ""
            return f"DNS lookup{what} failed ({why.group(1) if why else 'the name does not resolve'})"
        if isinstance(error, ConnectionRefusedError):
            return "connection refused (is the device running, on this host and port?)"
        if isinstance(error, ConnectionResetError):
            return "connection reset by the device (did it stop or restart?)"
        if isinstance(error, http.client.RemoteDisconnected):
            return "the device closed the connection without answering (did it stop or restart?)"
        if isinstance(error, urllib3.exceptions.SSLError | ssl.SSLError):
            return f"TLS handshake failed: {_one_line(chain[-1])}"
        if isinstance(error, OSError) and error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"{(error.strerror or 'unreachable').lower()} (is the address right?)"
    # urllib3's NewConnectionError (a refusal) is a ConnectTimeoutError by inheritance only.
    if any(isinstance(e, urllib3.exceptions.TimeoutError | TimeoutError) for e in chain) and not any(
        isinstance(e, urllib3.exceptions.NewConnectionError) for e in chain
    ):
        return "timed out (is the address right, and does a firewall let it through?)"
    return _one_line(chain[-1])


def _one_line(error: BaseException) -> str:
    """An error's text without urllib3's object reprs and pool prefixes, on one line, at most 200 characters."""
    text = re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>: |\w+Connection(Pool)?\(host=[^)]*\): ", "", str(error))
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def timed_out(exc: BaseException) -> bool:
    """A ``requests`` connection error that is a read or connect timeout (not a refusal)."""
    reason = getattr(exc.args[0] if exc.args else None, "reason", None)
    if isinstance(reason, urllib3.exceptions.NewConnectionError):  # refused: a ConnectTimeoutError by inheritance only
        return False
    return isinstance(reason, (urllib3.exceptions.TimeoutError, TimeoutError))


def malformed(exc: BaseException) -> bool:
    """A connection error that is a malformed answer (a status line or headers http.client refused)."""
    reason: Any = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the ProtocolError
    if not isinstance(reason, urllib3.exceptions.ProtocolError) or len(reason.args) < 2:
        return False
    cause = reason.args[1]
    # RemoteDisconnected and IncompleteRead are a device that went away, not bad HTTP.
    return isinstance(cause, http.client.HTTPException) and not isinstance(
        cause, (ConnectionError, http.client.IncompleteRead)
    )


CERTIFICATE_ALERTS = (
    "unknown ca",
    "unknown_ca",
    "bad certificate",
    "bad_certificate",
    "certificate unknown",
    "certificate_unknown",
)
"""TLS alerts of a device that refused this coordinator's client certificate."""


class _RevocationAdapter(HTTPAdapter):
    """An adapter whose connections verify with ``context`` (a CA and its revocation lists, leaf checked)."""

    def __init__(self, context: ssl.SSLContext, **options: Any) -> None:
        self._context = context
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **options: Any) -> None:
        options["ssl_context"] = self._context
        super().init_poolmanager(*args, **options)


def _revocation_context(verify: Any, crl: Any) -> ssl.SSLContext:
    """A client context trusting the CA file ``verify`` and refusing device certificates its lists revoke.

    Raises:
        ValueError, OSError: as :func:`fedsync.wire.certs.crls_for`; ``verify`` not a CA file.
    """
    from ..wire.certs import crls_for

    if isinstance(verify, bool) or not isinstance(verify, (str, os.PathLike)):
        raise ValueError(
            "crl needs verify=CA_FILE (the ca.pem whose revocation list it is), got "
            f"verify={verify!r}; e.g. Remote(url, verify='pki/ca.pem', crl='pki/crl.pem')"
        )
    lists = crls_for(crl, verify, "verify")
    context = ssl.create_default_context(cafile=os.fspath(verify))
    for path, _ in lists:
        context.load_verify_locations(cafile=os.fspath(path))
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def raise_if_refused_certificate(url: str, detail: str) -> None:
    """A device requiring client certificates (mutual TLS) refused ours, or got none: say which.

    Raises:
        RemoteUnavailable: ``detail`` is such a refusal.
    """
    lowered = detail.lower()
    if "certificate required" in lowered or "certificate_required" in lowered:
        raise RemoteUnavailable(
            url,
            "TLS handshake refused: the device requires a client certificate "
            f"(pass cert=(certfile, keyfile) signed by its CA): {detail}",
        )
    if "alert certificate revoked" in lowered or "alert_certificate_revoked" in lowered:  # the device's alert
        raise RemoteUnavailable(
            url,
            "TLS handshake refused: the device's revocation list (serve crl=) revokes this coordinator's "
            f"certificate; issue a new one (fedsync certs coordinator DIR --name NEW): {detail}",
        )
    if any(alert in lowered for alert in CERTIFICATE_ALERTS):
        raise RemoteUnavailable(
            url,
            "TLS handshake refused: the device does not trust this coordinator's certificate "
            f"(is it signed by the CA the device was given as client_ca?): {detail}",
        )
