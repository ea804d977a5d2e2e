"""Starting devices on Ray: :class:`RayDevices`, a bounded pool of device actors and a ``ray://`` remote per device."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fedsync.transports.remote import MAX_REPLY

from .paths import device_fn_path
from .remote import NAMESPACE, RayRemote, forget_actors

__all__ = ["RayDevices", "BACKEND_CONFIG", "connect"]

BACKEND_CONFIG: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "actors": None}
"""Defaults of ``backend_config``: Ray resources per device actor, and how many actors
(``None``: as many as the cluster's CPUs hold, at most one per device)."""

MAX_CONCURRENCY = 128
"""Requests one actor answers at once (threads): long-polls of its devices wait in them."""

STARTUP = 120.0
"""Seconds the actors have to start (import numpy and fedsync) before the pool gives up."""


def connect(address: str | None = None) -> bool:
    """Connect to Ray: ``address`` (an existing cluster), or a local Ray bound to 127.0.0.1 with usage stats off.

    Returns whether this call started the connection (so the caller shuts it down).
    An already connected Ray is used as it is.

    Raises:
        ImportError: ray is not installed.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        # Ray replaces _node_ip_address="127.0.0.1" by the machine's address (its
        # resolve_ip_for_localhost) unless clusters are off, read when ray is imported:
        # a local simulation then listens on loopback only.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise ImportError("the ray backend needs Ray: pip install 'fedsync[ray]'") from None
    if ray.is_initialized():
        return False
    if address is None:
        with _loopback(ray):
            # address="local": always a new Ray of our own; with None, Ray joins whatever cluster
            # /tmp/ray/ray_current_cluster names (a `ray start` on this machine, even a dead one).
            ray.init(
                address="local",
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                namespace=NAMESPACE,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
    else:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    return True


def _checked_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return dict(BACKEND_CONFIG)
    if not isinstance(config, Mapping) or set(config) - set(BACKEND_CONFIG):
        unknown = sorted(set(config) - set(BACKEND_CONFIG)) if isinstance(config, Mapping) else config
        raise ValueError(
            f"backend_config takes the keys {sorted(BACKEND_CONFIG)}, got {unknown!r}; "
            "e.g. {'num_cpus': 1, 'num_gpus': 0}"
        )
    merged = {**BACKEND_CONFIG, **config}
    for key in ("num_cpus", "num_gpus"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"backend_config[{key!r}] must be a number of at least 0, got {value!r}")
    actors = merged["actors"]
    if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
        raise ValueError(f"backend_config['actors'] must be a positive integer or None, got {actors!r}")
    if merged["num_cpus"] == 0 and actors is None:
        raise ValueError("backend_config with num_cpus=0 needs 'actors' (how many device actors to start)")
    return merged


class RayDevices:
    """``num_devices`` simulated devices served by a bounded pool of Ray actors.

    Device ``i`` lives in actor ``i % actors`` and is reached as
    ``ray://NAME-K/device-i``; each actor builds a device's FedData by
    ``device_fn(i)`` on its first request and drops it on :meth:`release`. Use
    as a context manager, or call :meth:`close`, to stop the actors (and the
    local Ray, if this pool started it).

    Args:
        device_fn: ``device_fn(device_id) -> FedData``, a module-level function or
            its import path ``"module:function"``; the actors import it (no pickle).
        num_devices: how many devices exist.
        name: the actors' name prefix (unique in the cluster; default: random).
        timeout: seconds for each answer of a device.
        ray_address: an existing Ray cluster; ``None`` connects to the one this
            process is connected to, or starts a local Ray (127.0.0.1, no usage stats).
        backend_config: ``{"num_cpus": 1, "num_gpus": 0}`` per actor (Ray resources;
            a device trains on its actor's CPUs, one at a time per CPU), and
            ``"actors"``: how many (default: the cluster's CPUs / ``num_cpus``).
        max_reply: the largest result, in bytes, downloaded whole.
        max_content_length: a device's largest accepted payload (as ``serve``).

    Raises:
        ValueError, TypeError: a bad argument, or a ``device_fn`` that is a lambda or
            closure (see :func:`fedsync_ray.paths.device_fn_path`).
        ImportError: ray is not installed.
        RuntimeError: the actors did not start within ``STARTUP`` seconds (not enough
            resources in the cluster for ``actors`` x ``num_cpus``?).
    """

    def __init__(
        self,
        device_fn: Callable[[int], Any] | str,
        num_devices: int,
        *,
        name: str | None = None,
        timeout: float = 30.0,
        ray_address: str | None = None,
        backend_config: Mapping[str, Any] | None = None,
        max_reply: int = MAX_REPLY,
        max_content_length: int | None = None,
    ) -> None:
        path = device_fn_path(device_fn)
        if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
            raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
        config = _checked_config(backend_config)
        self.name = name or f"sim-{uuid.uuid4().hex[:8]}"
        self.started = connect(ray_address)
        self.actors: list[Any] = []
        try:
            import ray

            from .host import DeviceHost

            count = config["actors"] or _fitting(ray.cluster_resources().get("CPU", 1), config["num_cpus"], num_devices)
            workers = max(1, math.ceil(config["num_cpus"]))
            host = ray.remote(DeviceHost)
            self.actors = [
                host.options(
                    name=f"{self.name}-{k}", namespace=NAMESPACE,
                    num_cpus=config["num_cpus"], num_gpus=config["num_gpus"],
                    max_concurrency=MAX_CONCURRENCY, max_restarts=0,
                ).remote(path, num_devices, workers, max_content_length)
                for k in range(count)
            ]  # fmt: skip
            try:
                ray.get([actor.pid.remote() for actor in self.actors], timeout=STARTUP)
            except ray.exceptions.GetTimeoutError:
                raise RuntimeError(
                    f"{count} Ray device actors of {config['num_cpus']} CPU(s) and {config['num_gpus']} GPU(s) "
                    f"did not start in {STARTUP:.0f}s; the cluster has {ray.cluster_resources()}: "
                    "lower backend_config['actors'] or the resources per actor"
                ) from None
            self.remotes = [
                RayRemote(
                    f"ray://{self.name}-{i % count}/device-{i}",
                    timeout=timeout,
                    max_reply=max_reply,
                    actor=self.actors[i % count],
                )
                for i in range(num_devices)
            ]
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        """Every device's ``ray://`` URL, in device order (what ``Federated(data, urls)`` takes)."""
        return [remote.url for remote in self.remotes]

    def release(self) -> None:
        """Drop every device's state in every live actor (devices are built again when next used)."""
        import ray

        pending = [actor.release.remote() for actor in self.actors]
        until = time.monotonic() + STARTUP  # one deadline for all: hung actors must not add up
        for reference in pending:
            try:
                ray.get(reference, timeout=max(0.0, until - time.monotonic()))
            except ray.exceptions.RayError:  # a dead actor holds nothing; its devices fail on their own
                pass

    def close(self) -> None:
        """Stop the actors, and the local Ray if this pool started it."""
        try:
            import ray
        except ImportError:
            return
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already dead, or Ray already down
                pass
        self.actors = []
        forget_actors()
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False

    def __enter__(self) -> RayDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fitting(cpus: float, per_actor: float, num_devices: int) -> int:
    """How many actors of ``per_actor`` CPUs the cluster's ``cpus`` hold, at least one, at most one per device."""
    return max(1, min(num_devices, int(cpus // per_actor)))


@contextlib.contextmanager
def _loopback(ray: Any) -> Iterator[None]:
    """Keep a local Ray on 127.0.0.1 even when ray was imported before our environment variable.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, into ray_constants.ENABLE_RAY_CLUSTER,
    when it is imported; with clusters on it replaces 127.0.0.1 by the machine's address.
    Only the address chosen by ``ray.init`` depends on it, so it is switched off for that call.
    """
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        yield  # another Ray version: the environment variable is all we can do
        return
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before
