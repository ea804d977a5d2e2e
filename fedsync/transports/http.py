"""The HTTP transport: one ``requests`` session per device, retries, TLS, and errors named for people.

:class:`HTTPTransport` is what ``Remote("http://...")`` talks through. Bodies are never read by
``requests`` (which reads them whole): an :class:`HTTPAnswer` is read from its socket with
:func:`fedsync.wire.transfer.read_some`, one ``recv`` at a time into the caller's buffer, and a
request body that is a :class:`~fedsync.wire.codec.Payload` goes out frame by frame, without a copy.
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Mapping
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from ..errors import RemoteError, RemoteTimeout, RemoteUnavailable
from ..wire.transfer import Deadline, read_some
from .base import Answer, Body, Transport, redact_bearer

__all__ = ["HTTPTransport", "HTTPAnswer"]


class HTTPAnswer(Answer):
    """An HTTP answer, its body unread on the socket.

    Attributes:
        response: the ``requests.Response`` (opened with ``stream=True``), for
            :mod:`fedsync.wire.transfer`'s readers, which read its socket directly.
    """

    def __init__(self, response: requests.Response, url: str) -> None:
        self.response = response
        self.status = response.status_code
        self.headers = response.headers
        self.url = url

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """At most one ``recv`` into ``view``, waiting at most ``deadline.read_wait()`` (see ``read_some``)."""
        return read_some(self.response, view, deadline, self.url)

    def close(self) -> None:
        """Close the connection (a body read to its end was already released to the pool)."""
        self.response.close()


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

    Raises:
        FileNotFoundError: a ``cert`` file that does not exist.
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
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.token = token
        self.session = requests.Session()
        retry = Retry(total=retries, connect=retries, read=0, status=0, other=0, backoff_factor=0.1)
        self.session.mount("http://", HTTPAdapter(max_retries=retry))
        self.session.mount("https://", HTTPAdapter(max_retries=retry))
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
            if "CERTIFICATE_VERIFY_FAILED" in detail or "certificate verify failed" in detail.lower():
                raise RemoteUnavailable(
                    self.url,
                    "TLS certificate not trusted (pass verify=CA_BUNDLE, the device's certificate or its CA): "
                    f"{detail}",
                ) from None
            raise RemoteUnavailable(self.url, f"TLS handshake failed: {detail}") from None
        except requests.exceptions.ConnectTimeout as exc:
            raise RemoteTimeout(self.url, f"timed out connecting ({self.short(exc)})") from None
        except requests.exceptions.Timeout as exc:
            raise RemoteTimeout(self.url, f"timed out: no answer within the timeout ({self.short(exc)})") from None
        except requests.exceptions.ConnectionError as exc:
            raise_if_refused_certificate(self.url, self.short(exc))
            if timed_out(exc):  # a read timeout that exhausted the retries arrives as a ConnectionError
                raise RemoteTimeout(self.url, f"timed out: no answer within the timeout ({self.short(exc)})") from None
            if malformed(exc):  # it connected and answered, but not HTTP a client can read
                raise RemoteError(self.url, f"answered malformed HTTP ({self.short(exc)})") from None
            raise RemoteUnavailable(self.url, f"cannot connect: is the device running? ({self.short(exc)})") from None
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
    if any(alert in lowered for alert in CERTIFICATE_ALERTS):
        raise RemoteUnavailable(
            url,
            "TLS handshake refused: the device does not trust this coordinator's certificate "
            f"(is it signed by the CA the device was given as client_ca?): {detail}",
        )
