"""Starting devices on Ray: :class:`RayDevices`, a bounded pool of device actors and a ``ray://`` remote per device."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fedsync.transports.remote import MAX_REPLY

from .paths import device_fn_for_actors
from .remote import NAMESPACE, ActorSlot, RayRemote, forget_actors, register_slot

__all__ = ["RayDevices", "BACKEND_CONFIG", "connect"]

BACKEND_CONFIG: dict[str, Any] = {"num_cpus": 1, "num_gpus": 0, "memory": None, "resources": None, "actors": None}
"""Defaults of ``backend_config``: Ray resources per device actor (``memory`` in bytes, ``resources``
Ray's custom resources, e.g. ``{"tpu": 1}``), and how many actors (``None``: as many as the
cluster's resources hold, at most one per device)."""

MAX_CONCURRENCY = 128
"""Requests one actor answers at once (threads): long-polls of its devices wait in them."""

logger = logging.getLogger("fedsync_ray")

_NAME_FREED = 10.0
"""Seconds a dead actor's name may stay taken before its replacement gives up."""

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


_STEP = 1e-4

_BUILT_IN = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


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
    memory = merged["memory"]
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory < 1):
        raise ValueError(f"backend_config['memory'] must be a positive number of bytes or None, got {memory!r}")
    custom = merged["resources"]
    if custom is not None and (
        not isinstance(custom, Mapping)
        or not all(isinstance(k, str) and k and k not in _BUILT_IN for k in custom)
        or not all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v < math.inf for v in custom.values()
        )
    ):
        raise ValueError(
            "backend_config['resources'] must map custom Ray resource names (not CPU, GPU, memory) to amounts "
            f"of at least 0, got {str(custom)[:200]}; e.g. {{'tpu': 1}}"
        )
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
        device_fn: ``device_fn(device_id) -> FedData``: a module-level function or its import path
            ``"module:function"``, which the actors import (no pickle), or any other function (a lambda,
            a closure, one of a notebook or of ``__main__``), serialized by value with Ray's cloudpickle
            (:func:`fedsync_ray.paths.device_fn_for_actors`).
        num_devices: how many devices exist.
        name: the actors' name prefix (unique in the cluster; default: random).
        timeout: seconds for each answer of a device.
        ray_address: an existing Ray cluster; ``None`` connects to the one this
            process is connected to, or starts a local Ray (127.0.0.1, no usage stats).
        backend_config: ``{"num_cpus": 1, "num_gpus": 0, "memory": None, "resources": None}``
            per actor (Ray resources; a device trains on its actor's CPUs, one at a time per CPU),
            and ``"actors"``: how many (default: as many as the cluster's resources hold).
        max_reply: the largest result, in bytes, downloaded whole.
        max_content_length: a device's largest accepted payload (as ``serve``).

    Raises:
        ValueError, TypeError: a bad argument, a path that does not resolve here, or a ``device_fn``
            capturing what cannot be serialized (see :func:`fedsync_ray.paths.device_fn_for_actors`).
        ImportError: ray is not installed.
        ValueError: the cluster lacks the resources asked for (checked at once against
            ``ray.cluster_resources()``; the message names both).
        RuntimeError: the actors did not start within ``STARTUP`` seconds (the cluster's
            resources are taken by other work?).
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
        path = device_fn_for_actors(device_fn)
        if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 1:
            raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}")
        config = _checked_config(backend_config)
        self.name = name or f"sim-{uuid.uuid4().hex[:8]}"
        self.started = connect(ray_address)
        self.actors: list[Any] = []
        self.slots: list[ActorSlot] = []
        self._kept: dict[str, dict[str, bytes]] = {}  # the devices' states as last fetched (kept) or restored
        try:
            import ray

            from .host import DeviceHost

            count = fitting_actors(config, num_devices, ray.cluster_resources(), _node_resources(ray))
            workers = max(1, math.ceil(config["num_cpus"]))
            host = ray.remote(DeviceHost)

            def start(k: int) -> Any:
                return host.options(
                    name=f"{self.name}-{k}", namespace=NAMESPACE,
                    num_cpus=config["num_cpus"], num_gpus=config["num_gpus"],
                    memory=config["memory"], resources=dict(config["resources"] or {}),
                    max_concurrency=MAX_CONCURRENCY, max_restarts=0,
                ).remote(path, num_devices, workers, max_content_length)  # fmt: skip

            self.slots = []
            for k in range(count):
                self.slots.append(ActorSlot(f"{self.name}-{k}", start(k), functools.partial(self._replace, k, start)))
                self.actors.append(self.slots[-1].handle)
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
                    actor=self.slots[i % count],
                )
                for i in range(num_devices)
            ]
            for slot in self.slots:
                register_slot(slot)  # a ray:// URL of this pool reaches the replacement of a dead actor too
        except BaseException:
            self.close()
            raise

    def _replace(self, k: int, start: Callable[[int], Any]) -> Any:
        """A new actor ``k`` in place of the dead one (as the process pool replaces a dead worker).

        Not waited for: requests queue until it is up, each bounded by its own timeout.
        """
        import ray

        dead = self.actors[k]
        try:
            ray.kill(dead, no_restart=True)  # seen dead or unreachable: make sure, and free its name
        except Exception:  # noqa: BLE001 - already gone
            pass
        logger.warning("Ray device actor %s-%d died; starting a replacement for its devices", self.name, k)
        until = time.monotonic() + _NAME_FREED
        while True:  # the name is freed once Ray has noted the death: a moment, bounded
            try:
                self.actors[k] = start(k)
                return self.actors[k]
            except ValueError:
                if time.monotonic() >= until:
                    raise
                time.sleep(0.05)

    def kept(self) -> dict[str, dict[str, bytes]]:
        """Every device's kept state, by url then base (codec bytes), for a checkpoint; call after :meth:`release`.

        Only the states that changed since the last call travel from the actors; the others come from this
        pool's copy. A dead actor's devices keep the state last fetched.
        """
        import ray

        asked = []
        for slot in self.slots:
            if not slot.dead:
                try:
                    asked.append((slot, slot.handle, slot.handle.states.remote()))
                except ray.exceptions.RayError:
                    slot.died(slot.handle)
        until = time.monotonic() + STARTUP
        for slot, actor, reference in asked:
            try:
                changed = ray.get(reference, timeout=max(0.0, until - time.monotonic()))
            except ray.exceptions.RayActorError:
                slot.died(actor)
                continue
            except ray.exceptions.RayError:
                continue
            for device, states in changed.items():
                self._kept[self.remotes[device].url] = states
        return dict(self._kept)

    def restore(self, kept: Mapping[str, Mapping[str, bytes]]) -> None:
        """Give each device its ``kept`` state (by url, as :meth:`kept` returns), before any round.

        Raises:
            RuntimeError: an actor did not take its devices' states within ``STARTUP`` seconds.
        """
        import ray

        device_of = {remote.url: i for i, remote in enumerate(self.remotes)}
        by_actor: dict[int, dict[int, dict[str, bytes]]] = {}
        for url, states in kept.items():
            device = device_of[url]
            by_actor.setdefault(device % len(self.slots), {})[device] = dict(states)
            self._kept[url] = dict(states)
        references = [self.slots[k].handle.restore.remote(states) for k, states in by_actor.items()]
        try:
            ray.get(references, timeout=STARTUP)
        except ray.exceptions.RayError as exc:
            raise RuntimeError(f"the Ray device actors did not take the checkpoint's device states: {exc}") from None

    @property
    def urls(self) -> list[str]:
        """Every device's ``ray://`` URL, in device order (what ``Federated(data, urls)`` takes)."""
        return [remote.url for remote in self.remotes]

    def release(self) -> None:
        """Drop every device's state in every live actor (devices are built again when next used)."""
        import ray

        pending = []
        for slot in self.slots:
            if slot.dead:
                continue  # replaced when next used: nothing of its devices is left to drop
            actor = slot.handle
            try:
                pending.append((slot, actor, actor.release.remote()))
            except ray.exceptions.RayError:
                slot.died(actor)
        until = time.monotonic() + STARTUP  # one deadline for all: hung actors must not add up
        for slot, actor, reference in pending:
            try:
                ray.get(reference, timeout=max(0.0, until - time.monotonic()))
            except ray.exceptions.RayActorError:  # a dead actor holds nothing; it is replaced when next used
                slot.died(actor)
            except ray.exceptions.RayError:
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
        for slot in self.slots:
            slot.start = None  # closed: a late request must not start an actor again
        forget_actors()
        if self.started and ray.is_initialized():
            ray.shutdown()
            self.started = False

    def __enter__(self) -> RayDevices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fitting_actors(
    config: Mapping[str, Any], num_devices: int, cluster: Mapping[str, float], nodes: list[Mapping[str, float]]
) -> int:
    """How many device actors to start: ``config["actors"]``, or as many as ``cluster``'s resources hold
    (at most one per device), checked against what the cluster has, at once.

    Ray would wait for resources that never come (a GPU on a host with none): a request
    that no node of the cluster can hold, or more actors than the cluster holds in all, is
    refused before anything starts. (An autoscaling cluster's future nodes are not counted:
    start it with the resources, or ask for what it has now.)

    Args:
        config: the checked ``backend_config``.
        cluster: ``ray.cluster_resources()``: totals by resource name (``memory`` in bytes).
        nodes: each live node's resources (empty: not known, only the totals are checked).

    Raises:
        ValueError: the message names what each actor asks for and what the cluster has.
    """
    wanted = _wanted(config)
    actors = config["actors"]
    has = {name: cluster.get(name, 0) for name in wanted}
    advice = "lower backend_config's resources per actor (or 'actors'), or add them to the cluster"
    if nodes and not any(all(node.get(n, 0) + _STEP >= amount for n, amount in wanted.items()) for node in nodes):
        raise ValueError(
            f"backend_config asks each Ray device actor for {_shown(wanted)}, but no node of the cluster has that "
            f"much (the cluster has {_shown(has)} in all, over {len(nodes)} node(s)): {advice}"
        )
    # Ray counts resources in steps of 1e-4: 3 actors of 0.1 CPU fit in 0.3 although 3 * 0.1 > 0.3 in floats.
    fits = min([num_devices] + [int(cluster.get(n, 0) / amount + _STEP) for n, amount in wanted.items()])
    if actors is None:
        if fits < 1:
            raise ValueError(
                f"backend_config asks each Ray device actor for {_shown(wanted)}, but the cluster has {_shown(has)}: "
                f"{advice}"
            )
        return fits
    short = {n: amount * actors for n, amount in wanted.items() if amount * actors > cluster.get(n, 0) + _STEP}
    if short:
        raise ValueError(
            f"backend_config asks for {actors} Ray device actors of {_shown(wanted)} each, {_shown(short)} in all, "
            f"but the cluster has {_shown(has)}: {advice}"
        )
    return int(actors)


def _wanted(config: Mapping[str, Any]) -> dict[str, float]:
    """What one actor asks Ray for, by Ray's resource names (only the amounts above zero)."""
    wanted = {"CPU": config["num_cpus"], "GPU": config["num_gpus"], "memory": config["memory"] or 0}
    wanted.update(config["resources"] or {})
    return {name: amount for name, amount in wanted.items() if amount > 0}


def _shown(resources: Mapping[str, float]) -> str:
    parts = []
    for name, amount in resources.items():
        shown = f"{amount / 2**30:.3g} GiB" if name == "memory" else f"{amount:g}"
        parts.append(f"{name}: {shown}")
    return "{" + ", ".join(parts) + "}"


def _node_resources(ray: Any) -> list[Mapping[str, float]]:
    """Each live node's resources (``ray.nodes()``), or ``[]`` if this Ray does not say."""
    try:
        return [dict(node.get("Resources") or {}) for node in ray.nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001 - only the totals are checked then
        return []


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
