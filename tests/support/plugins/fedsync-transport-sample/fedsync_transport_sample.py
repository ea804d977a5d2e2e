"""``plain://HOST:PORT[/BASE]``: a device served by ``fedsync serve``, reached with the standard library's http.client.

A third party's transport, written from the ``register_transports`` hook's docstring
(fedsync/plugins/hookspecs.py) and fedsync/transports/base.py alone: one connection per
request, no pool, no retries, no TLS. The Remote it is wrapped in speaks fedsync's protocol.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import fedsync
from fedsync.errors import RemoteError, RemoteTimeout, RemoteUnavailable
from fedsync.transports.base import Answer, Transport
from fedsync.transports.remote import Remote


class PlainAnswer(Answer):
    """An http.client response, its body read one piece at a time."""

    def __init__(self, url, connection, response):
        self.url = url
        self.connection = connection
        self.response = response
        self.status = response.status
        self.headers = response.msg  # http.client's headers: lookups ignore case

    def readinto(self, view, deadline):
        wait = deadline.read_wait()
        if wait <= 0:
            raise RemoteTimeout(self.url, deadline.expired)
        if self.connection.sock is not None:
            self.connection.sock.settimeout(wait)
        try:
            piece = self.response.read1(len(view))  # at most one recv
        except TimeoutError:
            raise RemoteTimeout(self.url, deadline.expired) from None
        except (OSError, http.client.HTTPException) as exc:
            raise RemoteUnavailable(self.url, f"connection lost while reading: {exc}") from None
        view[: len(piece)] = piece
        return len(piece)

    def close(self):
        self.connection.close()


class PlainTransport(Transport):
    """Requests to ``plain://HOST:PORT[/BASE]`` as plain HTTP/1.1."""

    def __init__(self, url):
        parts = urlsplit(url)
        if parts.scheme != "plain" or not parts.hostname or not parts.port:
            raise ValueError(f"a plain URL is plain://HOST:PORT, got {url!r}")
        self.url, self.host, self.port, self.base = url, parts.hostname, parts.port, parts.path.rstrip("/")

    def request(self, method, target, *, headers, body=None, timeout):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.putrequest(method, self.base + target, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            if body is not None:
                frames = [body] if isinstance(body, (bytes, bytearray, memoryview)) else list(body)
                connection.putheader("Content-Length", str(sum(memoryview(f).nbytes for f in frames)))
            connection.endheaders()
            for frame in frames if body is not None else ():
                connection.send(memoryview(frame).cast("B"))  # each frame as it is: no join
            response = connection.getresponse()
        except TimeoutError:
            connection.close()
            raise RemoteTimeout(self.url, f"no answer within {timeout:g}s") from None
        except http.client.HTTPException as exc:
            connection.close()
            raise RemoteError(self.url, f"answered malformed HTTP: {exc!r}") from None
        except OSError as exc:
            connection.close()
            raise RemoteUnavailable(self.url, f"cannot connect: {exc}") from None
        return PlainAnswer(self.url, connection, response)


@fedsync.hookimpl
def register_transports(register):
    register("plain", lambda url, **options: Remote(url, transport=PlainTransport(url), **options))
