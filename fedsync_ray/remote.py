"""The coordinator side: :class:`RayRemote`, a device reached as ``ray://ACTOR/device-ID``.

It is a :class:`fedsync.transports.remote.Remote` over a :class:`RayTransport`, whose
requests a Ray actor (:class:`fedsync_ray.host.DeviceHost`) answers instead of a socket,
as :class:`fedsync.transports.local.LocalTransport` answers them in-process: the same codec,
the same checks of every answer, the same errors. Each call is bounded by its
timeout (``ray.get(..., timeout=...)``); an actor that died or does not answer
in time is this device's failure (``RemoteUnavailable``, ``RemoteTimeout``).

Payloads cross as numpy ``uint8`` buffers: a round's payload is put in Ray's
object store once and shared by every device it is submitted to, and results
come back as buffers read zero-copy from the store.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from fedsync.errors import RemoteError, RemoteTimeout, RemoteUnavailable
from fedsync.transports.base import Body, BytesAnswer, Transport, body_bytes
from fedsync.transports.remote import MAX_REPLY, Remote

__all__ = ["RayRemote", "RayTransport", "ActorSlot", "NAMESPACE", "url_parts"]

NAMESPACE = "fedsync"
"""The Ray namespace of fedsync's device actors (``ray://ACTOR/...`` names an actor in it)."""

_URL = re.compile(r"^ray://([A-Za-z0-9][A-Za-z0-9_.-]{0,127})/device-([0-9]{1,9})$")
_MAX_HEADERS = 100
_MAX_HEADER = 8192


def url_parts(url: str) -> tuple[str, int]:
    """``(actor name, device id)`` of ``"ray://ACTOR/device-ID"``.

    Raises:
        ValueError: ``url`` is not of that form.
    """
    found = _URL.match(url.rstrip("/")) if isinstance(url, str) else None
    if found is None:
        raise ValueError(
            "a Ray device URL is ray://ACTOR/device-ID (ACTOR a fedsync device actor, ID an integer), "
            f"got {str(url)[:200]!r}; "
            "e.g. 'ray://sim-0/device-17', as RayDevices(...).urls lists them"
        )
    return found.group(1), int(found.group(2))


class ActorSlot:
    """One device actor's place: its current handle, and a replacement once it was seen dead.

    As fedsync's process pool replaces a dead worker for the devices placed next, a
    slot replaces a dead actor for the requests sent next: the requests in flight when
    it died fail (each its own device's failure, named by URL); later ones reach the
    replacement, which builds its devices anew. ``start`` makes the replacement (a pool
    that owns the actor passes it); without it, the actor is looked up again by name
    (the pool that owns it may have replaced it).

    Args:
        name: the actor's name in namespace ``NAMESPACE``.
        handle: its handle now.
        start: ``start() -> handle`` of a new actor of the same name, or ``None``.
    """

    def __init__(self, name: str, handle: Any, start: Callable[[], Any] | None = None) -> None:
        self.name = name
        self.start = start
        self._handle = handle
        self._dead = False
        self._lock = threading.Lock()

    @property
    def handle(self) -> Any:
        """The live handle, replacing a dead actor first.

        Raises:
            ValueError: the actor is dead, this slot cannot start one, and none of its name is found.
        """
        with self._lock:
            if self._dead:
                if self.start is not None:
                    self._handle = self.start()
                else:
                    self._handle = _lookup(self.name)
                self._dead = False
            return self._handle

    def died(self, handle: Any) -> None:
        """Note that ``handle`` was seen dead (a later request gets a replacement; a replaced one is ignored)."""
        with self._lock:
            if handle is self._handle:
                self._dead = True

    @property
    def dead(self) -> bool:
        """Whether the current handle was seen dead and not replaced yet."""
        with self._lock:
            return self._dead


class RayTransport(Transport):
    """Requests answered by a device in a Ray actor (:class:`fedsync_ray.host.DeviceHost`).

    Args:
        url: ``"ray://ACTOR/device-ID"`` (named in errors).
        actor: the actor's handle, or its :class:`ActorSlot` (replaced after it dies).
        device: the device's id in that actor.
    """

    def __init__(self, url: str, actor: Any, device: int) -> None:
        self.url = url
        self.actor_name = url_parts(url)[0]
        self.slot = actor if isinstance(actor, ActorSlot) else ActorSlot(self.actor_name, actor)
        self.device = device

    @property
    def actor(self) -> Any:
        """The device's actor handle now."""
        return self.slot.handle

    def __repr__(self) -> str:
        return f"RayTransport({self.url!r})"

    def request(
        self, method: str, target: str, *, headers: Mapping[str, str], body: Body | None = None, timeout: float
    ) -> BytesAnswer:
        """The actor's answer, checked (:meth:`checked`); its body stays in the object store until read.

        Raises:
            RemoteUnavailable: the actor died or cannot take requests.
            RemoteTimeout: no answer within ``timeout`` seconds (the request is cancelled, best effort).
            RemoteError: the actor failed the request, or answered what is not an answer.
        """
        import ray

        path, _, query = target.partition("?")
        shared = _shared(body) if body is not None else None
        fields = {str(k): str(v) for k, v in headers.items()}
        try:
            actor = self.slot.handle
        except Exception as exc:  # noqa: BLE001 - a replacement that cannot start is this device's failure
            raise RemoteUnavailable(
                self.url, f"its Ray actor {self.actor_name!r} died and could not be replaced: {_first_line(exc)}"
            ) from None
        try:
            reference = actor.request.remote(self.device, method, path, fields, query, shared)
        except ray.exceptions.RayError as exc:
            self.slot.died(actor)
            raise RemoteUnavailable(
                self.url, f"its Ray actor {self.actor_name!r} cannot take requests: {_first_line(exc)}"
            ) from None
        try:
            answer = ray.get(reference, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            try:
                ray.cancel(reference)  # best effort: the actor may already be running it
            except Exception:  # noqa: BLE001 - the timeout is what this device's failure says
                pass
            raise RemoteTimeout(self.url, f"timed out: no answer from its Ray actor within {timeout:.3g}s") from None
        except ray.exceptions.RayActorError as exc:
            self.slot.died(actor)  # the next request, this device's or another's, reaches a replacement
            raise RemoteUnavailable(
                self.url,
                f"its Ray actor {self.actor_name!r} died or is unreachable (the device's state was lost; "
                f"the actor is replaced for later requests): {_first_line(exc)}",
            ) from None
        except ray.exceptions.RayError as exc:
            raise RemoteError(
                self.url, f"its Ray actor {self.actor_name!r} failed the request: {_first_line(exc)}"
            ) from None
        return BytesAnswer(*self.checked(answer, method))

    def checked(self, answer: Any, method: str = "GET") -> tuple[int, list[tuple[str, str]], memoryview]:
        """The actor's answer ``(status, headers, body, error)`` as ``(status, headers, body)``, every part
        checked: it came from another process. An answer to ``HEAD`` has no body whatever its
        ``Content-Length`` says (the :class:`~fedsync.transports.base.Answer` contract).

        Raises:
            RemoteError: the actor reported an error, or a part is malformed (the message says which).
        """
        import numpy as np

        if not isinstance(answer, tuple) or len(answer) != 4:
            raise RemoteError(
                self.url, f"its Ray actor answered a {type(answer).__name__}; expected (status, headers, body, error)"
            )
        status, headers, body, error = answer
        if not isinstance(error, str):
            raise RemoteError(
                self.url,
                f"its Ray actor answered an error of type {type(error).__name__}; expected a str ('' when none)",
            )
        if error:
            raise RemoteError(self.url, self.scrub(error[:2000]))
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise RemoteError(
                self.url, f"its Ray actor answered status {str(status)[:40]!r}; expected an HTTP status in [100, 599]"
            )
        if not _well_formed(headers):
            raise RemoteError(
                self.url, f"its Ray actor answered malformed headers; expected at most {_MAX_HEADERS} (str, str) pairs"
            )
        if not isinstance(body, np.ndarray) or body.dtype != np.uint8 or body.ndim != 1:
            raise RemoteError(
                self.url,
                f"its Ray actor answered a body of type {type(body).__name__}; expected a 1-d numpy uint8 array",
            )
        # Over HTTP the socket frames the body by its Content-Length; here the body is whole, so the two must agree.
        lengths = [value for name, value in headers if name.lower() == "content-length"]
        bodiless = method == "HEAD" and body.size == 0  # its Content-Length is what a GET would send
        if not bodiless and (len(lengths) > 1 or (lengths and lengths[0] != str(body.size))):
            raise RemoteError(
                self.url,
                f"its Ray actor answered Content-Length {[v[:40] for v in lengths[:2]]} for a body of "
                f"{body.size} bytes; they must agree",
            )
        return status, headers, body.data  # the array's buffer as a memoryview, not copied


class RayRemote(Remote):
    """A simulated device in a Ray actor, reached as ``ray://ACTOR/device-ID``.

    A :class:`fedsync.transports.remote.Remote` over a :class:`RayTransport`.

    Args:
        url: ``"ray://ACTOR/device-ID"``: device ``ID`` of the fedsync device actor
            named ``ACTOR`` in Ray namespace ``"fedsync"`` (started by
            :class:`fedsync_ray.RayDevices`).
        timeout: seconds for each answer (as for :class:`fedsync.transports.remote.Remote`).
        max_reply: the largest result, in bytes, downloaded whole.
        actor: the actor's handle or :class:`ActorSlot`; default: looked up by name in the connected Ray.

    Raises:
        ValueError: a malformed URL, a bad timeout, Ray not connected, or no such actor.
        ImportError: ray is not installed (``pip install 'fedsync[ray]'``).
    """

    transport: RayTransport

    def __init__(self, url: str, *, timeout: float = 30.0, max_reply: int = MAX_REPLY, actor: Any = None) -> None:
        actor_name, device = url_parts(url)
        url = url.rstrip("/")
        transport = RayTransport(url, actor if actor is not None else _slot(actor_name), device)
        super().__init__(url, timeout=timeout, max_reply=max_reply, transport=transport)

    @property
    def actor_name(self) -> str:
        """The name of the device's actor."""
        return self.transport.actor_name

    @property
    def device(self) -> int:
        """The device's id in its actor."""
        return self.transport.device

    @property
    def actor(self) -> Any:
        """The device's actor handle (a dead actor's replacement once one was started)."""
        return self.transport.actor

    def close(self) -> None:
        """Nothing to release here: the device's state belongs to its actor (:meth:`RayDevices.release`)."""


def _well_formed(headers: Any) -> bool:
    """At most ``_MAX_HEADERS`` ``(str, str)`` pairs, each part at most ``_MAX_HEADER`` characters."""
    return (
        isinstance(headers, list)
        and len(headers) <= _MAX_HEADERS
        and all(
            isinstance(h, tuple) and len(h) == 2 and all(isinstance(p, str) and len(p) <= _MAX_HEADER for p in h)
            for h in headers
        )
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


_slots: dict[str, ActorSlot] = {}
_slots_lock = threading.Lock()


def _slot(name: str) -> ActorSlot:
    """The slot of the device actor ``name`` (looked up once per name: 10,000 URLs share a few actors)."""
    with _slots_lock:
        slot = _slots.get(name)
        if slot is None:
            slot = _slots[name] = ActorSlot(name, _lookup(name))
        return slot


def register_slot(slot: ActorSlot) -> None:
    """Make ``slot`` the one ``ray://NAME/...`` URLs reach (the pool that owns the actor registers it)."""
    with _slots_lock:
        _slots[slot.name] = slot


def _lookup(name: str) -> Any:
    """The handle of the live device actor named ``name``.

    Raises:
        ImportError: ray is not installed.
        ValueError: Ray is not connected, or there is no such actor.
    """
    try:
        import ray
    except ImportError:
        raise ImportError("ray:// remotes need Ray: pip install 'fedsync[ray]'") from None
    if not ray.is_initialized():
        raise ValueError(
            f"ray://{name}/... needs a connected Ray: call ray.init(address=...) first, "
            "or start the devices with fedsync_ray.RayDevices(...), which connects"
        )
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise ValueError(
            f"no fedsync device actor named {name!r} in Ray namespace {NAMESPACE!r}; start it with "
            "fedsync_ray.RayDevices(device_fn, num_devices, name=...) and use its .urls"
        ) from None


def forget_actors() -> None:
    """Forget looked-up actor slots and the shared payload (after the actors were stopped, or Ray was)."""
    with _slots_lock:
        _slots.clear()
    with _Shared.lock:
        _Shared.source = _Shared.reference = None


class _Shared:
    """The last payload put in the object store, so every device of a round reads one copy."""

    lock = threading.Lock()
    source: Any = None  # a weak reference to the payload object
    reference: Any = None


def _shared(data: Any) -> Any:
    """The request body as an object-store reference to a numpy ``uint8`` buffer,
    shared while ``data`` is the same object."""
    import numpy as np
    import ray

    with _Shared.lock:
        if _Shared.source is not None and _Shared.source() is data:
            return _Shared.reference
    body = body_bytes(data)
    reference = ray.put(np.frombuffer(body, np.uint8))
    try:
        source = weakref.ref(data)
    except TypeError:  # bytes cannot be weakly referenced: not shared
        return reference
    with _Shared.lock:
        _Shared.source, _Shared.reference = source, reference
    return reference
