"""The hooks fedsync plugins implement; each docstring is the reference.

A plugin is a module (usually named by an entry point in the ``fedsync``
group) with functions marked ``@fedsync.hookimpl`` whose names match the specs
below. As in pluggy, an implementation may accept any subset of a spec's
arguments, so specs can grow without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from ..protocol import FedData

__all__ = ["hookspec", "hookimpl", "register_adapters", "register_transports", "RegisterAdapter", "RegisterTransport"]

RegisterAdapter = Callable[[str, "type[FedData]"], None]
"""The ``register`` callback :func:`register_adapters` is given: ``register(token, FedDataSubclass)``."""

RegisterTransport = Callable[[str, Callable[..., Any]], None]
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

    Call ``register(scheme, factory)`` once per scheme. ``scheme`` is a
    lowercase URL scheme (``[a-z][a-z0-9+.-]*``, e.g. ``"http"``,
    ``"local"``); ``factory(url, **options) -> remote`` builds the remote of one
    device from its URL (``options``: what the caller passed, e.g. ``timeout``).
    ``Federated(data, ["http://...", "local://a"])`` builds each remote given as
    a string through :func:`fedsync.plugins.transport_for`. Registering a scheme
    another plugin already registered is an error naming both plugins. fedsync's
    own ``http``/``https`` (:mod:`fedsync.transports.remote`) and ``local``
    (:mod:`fedsync.transports.local`) register through this hook.

    **The remote contract.** The round (:class:`fedsync.Federated`) talks to a
    remote only through the members below; the answers must be checked by
    the remote before they are returned (a bad one raises, naming the device).
    Errors are :class:`fedsync.errors.RemoteError` subclasses, built as
    ``RemoteError(url, reason)``; any error is that device's failure, never the
    round's. :class:`fedsync.transports.remote.Remote` is the reference implementation.

    - ``url: str``: the device's identity, unique in a run (failures and
      history are keyed by it). ``timeout: float``: seconds for one answer.
    - ``info(*, deadline) -> dict``: the handshake, answered before
      ``deadline`` (a :class:`fedsync.wire.transfer.Deadline`): at least ``specs``
      (a str of 1 to 4096 characters) and ``repetition`` (the last one the
      device accepted, an int in ``[0, 2**53]``). Raises ``RemoteTimeout`` late,
      ``RemoteError`` for a malformed answer.
    - ``submit(repetition, payload, specs, *, timeout, config) -> None``: hand
      the device the coordinator's payload (``str``, bytes-like or
      :class:`fedsync.wire.codec.Payload`; ``config`` a dict of the round's
      configuration, or ``None``); returns once the device accepted it (its
      training continues), within ``timeout`` seconds. Raises
      ``SpecsMismatch``, ``PayloadRejected`` (the device's ``check`` refused it),
      ``RemoteBusy``, ``RemoteTimeout``, ``RemoteUnavailable``.
    - ``open_result(repetition, wait, *, timeout, deadline) -> ReplyStream | None``:
      wait up to ``wait`` seconds for the result (``timeout`` bounds the whole
      call); ``None`` while the device is still training, else a
      :class:`fedsync.wire.replies.ReplyStream` whose body is read later, each read
      before ``deadline``. Raises ``TrainingFailed`` (the device's training
      raised), ``RemoteError`` for a wrong repetition or length.
    - ``download(stream, *, as_view=False) -> str | bytes | memoryview``: read an
      opened result whole (``str`` for ``text/plain``); refuses one over the
      remote's ``max_reply`` bytes before reading it, and closes the stream.
    - ``evaluate(repetition, payload, specs, *, timeout, deadline, config) -> dict``:
      ``{"samples": int, "metrics": {name: finite float}}`` measured on the
      device's data, before ``deadline``.
    - ``scrub(text) -> str``: ``text`` without any credential of this remote
      (applied to every failure message and history entry).
    - ``close() -> None``: release connections (or in-process state).

    Secure aggregation (:mod:`fedsync.secagg`) sends its extra phases through the
    reference implementation's JSON request (``Remote._json``, built on ``_request``):
    a transport that subclasses :class:`fedsync.transports.remote.Remote` and overrides only
    ``_request`` (as ``local://``, the worker processes and ``ray://`` do) carries them;
    any other transport fails each device's secure round with an error naming it.

    Keep this cheap: import heavy libraries (ray, grpc) inside the factory.

    Example::

        @fedsync.hookimpl
        def register_transports(register):
            register("grpc", lambda url, **options: GrpcRemote(url, **options))
    """
