"""The hooks fedsync plugins implement; each docstring is the reference.

A plugin is a module (usually named by an entry point in the ``fedsync``
group) with functions marked ``@fedsync.hookimpl`` whose names match the specs
below. As in pluggy, an implementation may accept any subset of a spec's
arguments, so specs can grow without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ..protocol import FedData

__all__ = ["hookspec", "hookimpl", "register_adapters", "register_transports", "RegisterAdapter", "RegisterTransport"]

RegisterAdapter = Callable[[str, "type[FedData]"], None]
"""The ``register`` callback :func:`register_adapters` is given: ``register(token, FedDataSubclass)``."""

# The factory returns a fedsync.transports.remote.Remote (fedsync.plugins.RemoteFactory), typed object here:
# transports/remote.py registers through this hook, so naming Remote here would close an import cycle.
RegisterTransport = Callable[[str, Callable[..., object]], None]
"""The ``register`` callback :func:`register_transports` is given: ``register(scheme, factory)``."""

hookspec = pluggy.HookspecMarker("fedsync")
"""Marks the hook specifications below (fedsync's own use)."""

hookimpl = pluggy.HookimplMarker("fedsync")
"""Marks a plugin's hook implementation: ``@fedsync.hookimpl def register_adapters(register): ...``."""


@hookspec
def register_adapters(register: RegisterAdapter) -> None:
    """Register FedData adapters by their specs token.

    Call ``register(token, cls)`` once per adapter. ``token`` is the part of the
    adapter's specs strings before the first ``:`` (``"torch"`` for
    ``"torch:sha256:9f2c..."``): a coordinator that receives specs from a
    device finds the adapter through it. ``cls`` is a :class:`fedsync.FedData`
    subclass. Tokens are lowercase words (``[a-z0-9_.-]+``); registering a
    token another plugin already registered is an error naming both plugins.

    Keep this cheap: import your framework (torch, tensorflow) inside the
    adapter's methods, not at module level, so that loading plugins never
    imports a framework.

    Example::

        @fedsync.hookimpl
        def register_adapters(register):
            register("jax", FedJax)
    """


@hookspec
def register_transports(register: RegisterTransport) -> None:
    """Register transports by URL scheme: how the coordinator reaches a device.

    **What to register.** Call ``register(scheme, factory)`` once per scheme.
    ``scheme`` is a lowercase URL scheme (``[a-z][a-z0-9+.-]*``, e.g. ``"grpc"``);
    registering one another plugin registered (``http`` included) is an error
    naming both plugins. ``Federated(data, ["grpc://a", "http://b"])`` builds each
    remote given as a string with :func:`fedsync.plugins.remote`, i.e.
    ``factory(url, **options)``, where ``options`` are what the caller passed
    (``Federated`` passes none; ``timeout=`` and ``max_reply=`` are common). A URL
    your transport cannot read raises ``ValueError`` from the factory, as the built-in
    factories do (``Remote`` for a URL that is not ``http(s)://``, ``LocalRemote`` for
    one not ``local://NAME``, ``fedsync_ray``'s for one not ``ray://ACTOR/device-ID``);
    it surfaces from ``Federated(...)`` itself, before any round.

    **What the factory returns: a** :class:`fedsync.transports.remote.Remote` **over
    your transport**, ``Remote(url, transport=MyTransport(url), **options)``. The
    ``Remote`` speaks fedsync's protocol (routes, headers, long-polls, error codes,
    every check of an answer, secure aggregation's phases); your transport only
    moves requests and answers. fedsync's own ``http``/``https``
    (:mod:`fedsync.transports.http`), ``local`` (:mod:`fedsync.transports.local`) and
    ``fedsync_ray``'s ``ray`` are built this way. With a transport, ``Remote`` uses
    neither ``token`` nor ``$FEDSYNC_TOKEN`` (they configure HTTP only): a transport that
    authenticates takes its token itself.

    **The transport contract** (:mod:`fedsync.transports.base`, whose
    ``Transport.request`` docstring holds every rule below in full): subclass
    :class:`~fedsync.transports.base.Transport` and implement

    - ``request(method, target, *, headers, body, timeout) -> Answer``: send one
      request and return the answer once its status and headers are there; any
      status is an answer (the ``Remote`` reads a 409's reason).

      - ``method``: ``GET``, ``POST``, or ``HEAD`` (only ``Remote.ready`` sends it).
      - ``target``: the path and query below the device's URL, e.g.
        ``"/3/result?wait=1.500"``. Put the URL's own path in front of it: a device
        serving ``serve({"model": ...})`` is ``http://host:port/model``, and the
        HTTP transport requests ``/model/3/result?...`` (``url + target``).
      - ``headers``: only the protocol's (``X-Fedsync-Specs``, ``Content-Type``,
        ``X-Fedsync-Config``; none for ``GET``/``HEAD``). An HTTP transport adds
        ``Host``, ``Content-Length`` for every body, and ``Authorization: Bearer``
        if it has a token; devices refuse ``Transfer-Encoding``.
      - ``body``: ``None``, bytes-like, or an iterable of frames (a
        :class:`~fedsync.wire.codec.Payload`), see
        :data:`~fedsync.transports.base.Body`. Count its bytes with
        ``memoryview(body).nbytes`` (a ``memoryview``'s ``len()`` counts items) or
        a ``Payload``'s ``len()``, which is its ``.nbytes``.
      - ``timeout``: no single wait for the device (connecting, sending a piece of
        the body, the status line and headers) may last longer than ``timeout``
        seconds; a long-poll's wait is inside it. That is what the HTTP transport
        does (per socket wait, not in total); bounding the whole request, body
        included, is stricter and allowed. Past it: ``RemoteTimeout``.
      - Threads: it is called from several threads at once, and a request may start
        while an earlier answer's body is still unread. A transport may pool
        connections: reuse one only after its answer was read to its end, was framed
        by ``Content-Length`` and did not say ``Connection: close``.

    - ``close()``: release connections; optional.

    and return an :class:`~fedsync.transports.base.Answer`: ``status`` (int),
    ``headers`` (a mapping whose lookups ignore case, e.g.
    :class:`~fedsync.transports.base.Headers`; a result must carry
    ``Content-Length``), ``readinto(view, deadline) -> int`` (at most ``len(view)``
    bytes, one ``recv``, 0 at the end, never waiting past ``deadline.read_wait()``
    seconds: a float, never ``None``, zero or less once the time is up, then raise
    ``RemoteTimeout(url, deadline.expired)``; see
    :class:`fedsync.wire.transfer.Deadline`) and ``close()``. An answer to ``HEAD``,
    or with status 204 or 304, has no body. A body already in memory is a
    :class:`~fedsync.transports.base.BytesAnswer`; a Payload that must be one
    buffer is :func:`~fedsync.transports.base.body_bytes`.

    **Answers from a fedsync device** are HTTP/1.1 (docs/protocol.md, "Connections"):
    every body framed by one ``Content-Length``, never chunked, the connection kept
    alive unless the answer says ``Connection: close``. Bound what you read: the HTTP
    transport refuses a status or header line over 64 KiB and more than 100 header
    lines (the device's own bounds on a request are 100 lines, 64 KiB in all).

    **Errors to raise**, built as ``RemoteError(url, reason)`` (:mod:`fedsync.errors`):
    ``RemoteUnavailable`` when the device cannot be reached or the connection is lost,
    ``RemoteTimeout`` when it does not answer in time (from ``request`` past
    ``timeout``, from ``readinto`` past the deadline), ``RemoteError`` for anything
    else that is the device's fault (malformed HTTP, an answer over your bounds).
    Whatever a transport raises (or an answer that breaks a check: a body over a
    limit, a wrong length) fails that device alone, never the round. Put no
    credential in a message, or override ``Transport.scrub``.

    Keep registering cheap: import heavy libraries (ray, grpc) inside the factory.

    Example::

        @fedsync.hookimpl
        def register_transports(register):
            register("grpc", lambda url, **options: Remote(url, transport=GrpcTransport(url), **options))
    """
