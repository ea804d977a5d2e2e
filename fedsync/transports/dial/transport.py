"""``dial://NAME``: the transport of a device dialed in to this process's :class:`~fedsync.transports.dial.Listener`.

Each request a :class:`~fedsync.transports.remote.Remote` makes becomes a *job* the device fetches, runs through
its own ``DeviceApp`` and answers (docs/protocol.md, "Devices that dial out"). :meth:`DialTransport.request`
blocks the coordinator's thread until the answer's head is in; :class:`DialAnswer` reads its body from a bounded
pipe fed by the device's upload, so no whole answer is held anywhere.

This module does not need aiohttp: the ``dial`` scheme registers without it (a remote is built only once a
Listener runs, which needs ``pip install 'fedsync[dial]'``).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

from ...plugins.hookspecs import RegisterTransport, hookimpl
from ...wire.transfer import Deadline
from ..base import Answer, Body, Headers, Transport
from ..remote import MAX_REPLY, Remote
from ._jobs import Hub, Job

__all__ = ["DialTransport", "DialAnswer", "dial_remote", "NAME", "running", "split"]

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
"""A device name: 1-64 characters of ``[A-Za-z0-9._-]``, not starting with ``.`` or ``-``."""

_HOP_BY_HOP = {"connection", "transfer-encoding", "keep-alive", "content-length"}
_NO_BODY = {204, 304}

_running: list[Any] = []  # the running Listeners (typed loosely: listener.py imports this module)
_running_lock = threading.Lock()


def running(listener: Any, on: bool) -> None:
    """Note ``listener`` as running in this process (or no longer): what ``dial://NAME`` URLs are resolved against."""
    with _running_lock:
        if on:
            _running.append(listener)
        elif listener in _running:
            _running.remove(listener)


class DialAnswer(Answer):
    """A dialed-in device's answer: its status and headers as the device sent them, its body from the job's pipe.

    ``Content-Length`` is the upload's ``Upload-Length`` (an answer to ``HEAD``, or a 204/304, has no body and
    keeps the device's own header).
    """

    def __init__(self, hub: Hub, job: Job) -> None:
        self.hub, self.job = hub, job
        assert job.status is not None and job.pipe is not None  # wait_head returned: the head is in
        self.status = job.status
        bodiless = job.method == "HEAD" or job.status in _NO_BODY or job.status < 200
        pairs = [(k, v) for k, v in job.answer_headers.items() if k.lower() not in _HOP_BY_HOP]
        device_length = next((v for k, v in job.answer_headers.items() if k.lower() == "content-length"), None)
        if bodiless:
            if device_length is not None:
                pairs.append(("Content-Length", device_length))
        else:
            pairs.append(("Content-Length", str(job.pipe.length)))
        self.headers = Headers(pairs)
        self.bodiless = bodiless
        self.closed = False

    def readinto(self, view: memoryview, deadline: Deadline) -> int:
        """The next answer bytes into ``view`` (0 at the end), waiting at most ``deadline.read_wait()`` seconds.

        Raises:
            RemoteTimeout: nothing arrived in time (the device stalled or went away and did not resume).
            RemoteUnavailable: the device registered again (its earlier session's jobs fail), or the listener closed.
        """
        if self.bodiless or self.closed:
            return 0
        assert self.job.pipe is not None
        return self.job.pipe.readinto(view, deadline)

    def close(self) -> None:
        """Forget the job: its upload, if still running, is refused with 404 ``unknown_job``."""
        if not self.closed:
            self.closed = True
            self.hub.drop(self.job)


class DialTransport(Transport):
    """Requests to the device ``name`` that dialed in to a listener, as jobs it fetches and answers.

    Args:
        hub: the listener's state (``Listener.hub``).
        name: the device's name, on the listener's allow-list.
        url: the device's URL (``dial://NAME``, optionally ``/base``), named in errors.
        prefix: the URL's path (``"/model"`` for ``dial://site-a/model``), put in front of every target.
    """

    def __init__(self, hub: Hub, name: str, url: str, prefix: str = "") -> None:
        self.hub, self.name, self.url, self.prefix = hub, name, url, prefix

    def __repr__(self) -> str:
        return f"DialTransport({self.url!r})"

    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> DialAnswer:
        """Hand the request to the device; its answer once the head is in (at most ``timeout`` s), the body unread.

        Raises:
            RemoteUnavailable: the device has not dialed in since the listener started, registered again while
                the request was in flight, or the listener closed.
            RemoteTimeout: the device did not fetch the request, or did not answer it, within ``timeout`` seconds.
        """
        job = self.hub.submit(self.name, self.url, method, self.prefix + target, headers, body)
        try:
            self.hub.wait_head(job, timeout)
        except BaseException:
            self.hub.drop(job)
            raise
        return DialAnswer(self.hub, job)


def split(url: str) -> tuple[str, str]:
    """``dial://NAME[/base]`` as ``(NAME, "/base" or "")``.

    Raises:
        ValueError: not such a URL.
    """
    if not isinstance(url, str) or not url.startswith("dial://"):
        raise ValueError(f"a dial remote's URL is dial://NAME, got {url!r}; e.g. listener.remote('site-a')")
    name, slash, base = url[len("dial://") :].rstrip("/").partition("/")
    if not NAME.match(name) or (slash and not NAME.match(base)):
        raise ValueError(
            f"a dial remote's URL is dial://NAME or dial://NAME/BASE with names of 1-64 characters of "
            f"[A-Za-z0-9._-], got {url!r}"
        )
    return name, f"/{base}" if slash else ""


def dial_remote(url: str, *, timeout: float = 30.0, max_reply: int = MAX_REPLY, **options: Any) -> Remote:
    """The :class:`~fedsync.transports.remote.Remote` of ``dial://NAME``, through the Listener that allows NAME.

    What ``fedsync.plugins.remote("dial://site-a")`` (and so ``Federated(remotes=["dial://site-a"])``) calls.

    Raises:
        ValueError: not a ``dial://NAME`` URL, no Listener runs in this process that allows NAME, or several do,
            or an option this transport does not take.
    """
    if options:
        raise ValueError(f"dial:// remotes take timeout= and max_reply= only, got {sorted(options)}")
    name, prefix = split(url)
    with _running_lock:
        found = [listener for listener in _running if name in listener.devices]
    if not found:
        raise ValueError(
            f"no Listener running in this process allows {name!r}; start one first: "
            f"Listener('0.0.0.0', 9000, devices={{{name!r}: token}}) (fedsync.transports.dial)"
        )
    if len(found) > 1:
        raise ValueError(f"{len(found)} Listeners in this process allow {name!r}; use listener.remote({name!r})")
    return found[0].remote(url[len("dial://") :], timeout=timeout, max_reply=max_reply)


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """``dial``: devices that dialed in to a :class:`~fedsync.transports.dial.Listener` of this process."""
    register("dial", dial_remote)
