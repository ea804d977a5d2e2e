"""The actor side: a :class:`DeviceHost` runs in a Ray actor and serves the devices given to it.

Each device is a :class:`fedsync.transports.local.LocalTransport` inside the actor: built by
``device_fn(device_id)`` on its first request, answering through its own
:class:`fedsync.device.app.DeviceApp` (the application ``serve`` runs), so every
check a device makes over HTTP it makes here. Training runs on the actor's
:class:`fedsync.transports.local.TrainingPool`, sized by the actor's CPUs.

What crosses the process boundary is plain: the request as str/int/dict of
str plus the body as a numpy ``uint8`` buffer (Ray's object store, read
zero-copy), and the answer as ``(status, headers, body, error)`` with the body
again a ``uint8`` buffer. ``device_fn`` arrives as an import path, or serialized by the driver
(``ray.cloudpickle``) when it has none: the driver's own code, never anything a device sent.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from .paths import load

if TYPE_CHECKING:
    from fedsync.transports.local import LocalTransport

__all__ = ["DeviceHost", "Answer"]

Answer = tuple[int, list[tuple[str, str]], Any, str]
"""``(status, headers, body, error)``: what :meth:`DeviceHost.request` returns; ``error`` is non-empty (and
``status`` 0) when the device could not be built; ``body`` is a numpy ``uint8`` array."""


class DeviceHost:
    """Devices ``0 .. num_devices-1`` of one simulation, inside one Ray actor (or in-process, for tests).

    Args:
        device_fn: ``"module:qualname"`` of ``device_fn(device_id) -> FedData``, imported in the actor,
            or the function serialized by the driver (:func:`fedsync_ray.paths.device_fn_for_actors`).
        num_devices: device ids accepted are ``range(num_devices)``.
        workers: threads training at once in this actor.
        max_content_length: a device's largest accepted payload (as ``serve``), or ``None``.
    """

    def __init__(
        self, device_fn: str | bytes, num_devices: int, workers: int, max_content_length: int | None = None
    ) -> None:
        from fedsync.transports.local import TrainingPool

        self.device_fn = device_fn
        self.num_devices = int(num_devices)
        self.pool = TrainingPool(int(workers))
        self.max_content_length = max_content_length
        self.devices: dict[int, LocalTransport] = {}
        self.kept: dict[int, dict[str, bytes]] = {}  # each released device's own state (codec bytes)
        self.changed: set[int] = set()  # devices whose kept state changed since :meth:`states` last gave it
        self.lock = threading.Lock()
        self._function: Any = None

    def pid(self) -> int:
        """This actor's process id (answers once the actor is up)."""
        return os.getpid()

    def request(self, device: int, method: str, path: str, headers: dict[str, str], query: str, body: Any) -> Answer:
        """Answer one request to ``device`` through its WSGI application (:meth:`LocalTransport.respond`).

        ``body`` is bytes-like (a read-only numpy view out of the object store).
        Returns ``(status, headers, body, "")``, or ``(0, [], empty, reason)`` when the
        device cannot be built (``device_fn`` failed to import or raised).
        """
        import numpy as np

        from fedsync.errors import RemoteError

        empty = np.zeros(0, np.uint8)
        data = memoryview(body).cast("B") if body is not None else b""
        target = f"{path}?{query}" if query else path
        try:
            status, answer_headers, content = self._device(device).respond(method, target, headers, data)
        except RemoteError as exc:
            return 0, [], empty, exc.reason
        return status, [(str(k), str(v)) for k, v in answer_headers], np.frombuffer(content, np.uint8), ""

    def release(self) -> int:
        """Drop every device's state (they are built again when next used); the number dropped."""
        with self.lock:
            devices, self.devices = self.devices, {}
        for device, remote in devices.items():
            remote.release()  # encodes the device's own state into remote.kept
            if remote.kept:
                with self.lock:
                    self.kept[device] = remote.kept
                    self.changed.add(device)
        return len(devices)

    def states(self) -> dict[int, dict[str, bytes]]:
        """The kept states that changed since the last call, by device (a checkpoint's; codec bytes by base)."""
        with self.lock:
            changed, self.changed = self.changed, set()
            return {device: self.kept[device] for device in changed if device in self.kept}

    def restore(self, kept: dict[int, dict[str, bytes]]) -> int:
        """Take ``kept`` (a checkpoint's states, by device) as the devices' states; the number taken.

        Each is checked when its device is built, as any kept state (a bad one fails that device by name).
        """
        taken = 0
        with self.lock:
            for device, states in kept.items():
                if isinstance(device, int) and 0 <= device < self.num_devices and isinstance(states, dict):
                    self.kept[device] = {str(base): bytes(raw) for base, raw in states.items()}
                    taken += 1
        return taken

    def _device(self, device: int) -> LocalTransport:
        from fedsync.errors import RemoteError
        from fedsync.transports.local import LocalTransport

        with self.lock:
            remote = self.devices.get(device)
            if remote is not None:
                return remote
            if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < self.num_devices:
                raise RemoteError(
                    f"device-{device}",
                    f"no device {device!r} here; this actor serves device ids 0 to {self.num_devices - 1}",
                )
            if self._function is None:
                try:
                    self._function = load(self.device_fn)
                except Exception as exc:  # the actor's environment: every device's failure, with the reason
                    shown = "(sent by value)" if isinstance(self.device_fn, bytes) else repr(self.device_fn)
                    raise RemoteError(
                        f"device-{device}",
                        f"the Ray actor cannot load device_fn {shown} "
                        f"({type(exc).__name__}: {str(exc)[:300]}); "
                        "install its package on the workers or ship it with runtime_env",
                    ) from None
            function = self._function
            remote = LocalTransport(
                f"local://device-{device}", lambda: function(device), pool=self.pool,
                max_content_length=self.max_content_length, kept=self.kept.get(device),
            )  # fmt: skip
            self.devices[device] = remote
            return remote
