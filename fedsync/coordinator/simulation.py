"""Simulating many devices in one process, on the production path: :func:`run_simulation`.

The devices are ``local://`` remotes (:mod:`fedsync.transports.local`): the same
``Federated`` round, FedData, strategies, codec and checks as with real
devices; only the transport changes. See docs/simulation.md.

Memory: a device's FedData exists only while the device is sampled. It is built
by ``device_fn(device_id)`` when the round first talks to it and dropped after
the round; between rounds a device costs one small :class:`~fedsync.transports.local.LocalRemote`
(its URL and ``device_fn``), so 10,000 devices cost a few megabytes plus the
sampled ones. A device keeps no state across rounds (as Flower's ``client_fn``
clients): keep what must persist in the data ``device_fn`` reads.

A hung call (``device_fn``, ``train`` or an evaluation that never returns) is its
device's failure at the round's deadline, and gives its slot back after the round:
a worker process is killed and replaced; a thread cannot be stopped, so another thread
takes its place (bounded, with a ``RuntimeWarning``: :mod:`fedsync.transports.process._hung`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._util.checks import positive_int
from ..protocol import FedData
from ..transports import device_functions
from ..transports.local import LocalRemote, LocalTransport, TrainingPool
from ..transports.process._hung import OnceAtATime, ReplaceablePool, owners, still_running
from ..transports.process.pool import ProcessPool, ProcessRemote, process_remotes
from ..transports.remote import Remote
from ..wire.config import ConfigSource
from . import checkpoint as checkpoint_io
from ._sampling import Sampler
from .federated import Federated
from .history import History, RoundResult

__all__ = ["run_simulation", "local_remotes", "device_id"]


def device_id(url: str) -> int:
    """The ``device_id`` a simulated device's URL names: 7 for ``local://device-7`` or ``ray://sim-ab-1/device-7``.

    For a ``sampler`` or a per-device ``config`` that decides by the ``device_fn`` index.

    Raises:
        ValueError: ``url`` is not a simulated device's.
    """
    head, _, number = url.rpartition("/device-")
    if not head or not number.isdigit() or not number.isascii():
        raise ValueError(f"{url!r} is not a simulated device's URL (local://device-N or ray://.../device-N)")
    return int(number)


def local_remotes(
    device_fn: Callable[[int], FedData], num_devices: int, *, pool: TrainingPool | None = None, timeout: float = 30.0
) -> list[LocalRemote]:
    """``local://device-{i}`` remotes for ``i`` in ``range(num_devices)``, each built by ``device_fn(i)`` when used.

    Raises:
        ValueError: ``num_devices`` is not a positive integer.
        TypeError: ``device_fn`` is not callable.
    """
    if not callable(device_fn):
        raise TypeError(f"device_fn must be a function device_fn(device_id) -> FedData, got {type(device_fn).__name__}")
    positive_int("num_devices", num_devices)
    return [
        LocalRemote(f"local://device-{i}", device=OnceAtATime(device_fn, i), pool=pool, timeout=timeout)
        for i in range(num_devices)
    ]


def _release_local(remote: LocalRemote, pool: ReplaceablePool) -> None:
    """Drop a device's state after its round; what still runs of it is hung: its slot is given back.

    A device whose ``device_fn`` hangs keeps the state kept from its last round (it never loaded it), in
    the next rounds and in a checkpoint.
    """
    transport = remote.transport
    if still_running(transport):
        if transport.device_app is None:
            # device_fn holds the transport's lock for good: the device gets a fresh transport (OnceAtATime
            # refuses to call device_fn again while the hung call lasts, so no thread more hangs).
            warnings.warn(
                f"{remote.url}: device_fn has not returned after its round (hung?); a thread cannot be stopped, "
                "so it is left running and the device fails until it returns; worker_kind='processes' kills a hung "
                "worker instead",
                RuntimeWarning,
                stacklevel=2,
            )
            remote.transport = LocalTransport(  # with the state kept from its last round: it was not built
                remote.url,
                transport.source,
                pool=pool,
                max_content_length=transport.max_content_length,
                kept=transport.kept,
            )
            return
        pool.executor.replace(owners(transport), f"{remote.url}'s training or evaluation")
    remote.release()


def _checkpoint_states(
    federated: Federated,
    checkpoint: str | os.PathLike[str],
    urls: Sequence[str],
    kept: Callable[[], checkpoint_io.DeviceStates],
    restore: Callable[[Mapping[str, Mapping[str, bytes]]], None],
    release_all: Callable[[], None],
) -> None:
    """Devices' kept states saved with each checkpoint (released first) and restored from the last one.

    ``kept()``: the devices' states by url (after ``release_all``); ``restore(states)``: gives them back.
    The checkpoint names each device ``local://device-N`` whatever the backend: a Ray pool's URLs carry
    a name drawn anew each run.
    """
    named = {url: f"local://device-{device_id(url)}" for url in urls}
    url_of = {name: url for url, name in named.items()}
    each = checkpoint_io.device_state_limit(federated.data, federated.repetition)  # in proportion to the model
    saved = checkpoint_io.load_devices(os.fspath(checkpoint), url_of, each)
    restore({url_of[name]: states for name, states in saved.items()})

    def states() -> checkpoint_io.DeviceStates:
        release_all()  # the round is over: the sampled devices' states join the others'
        return {named[url]: states for url, states in kept().items()}

    federated.device_states = states


def _local_states(
    simulated: Sequence[LocalRemote | ProcessRemote],
) -> tuple[Callable[[], checkpoint_io.DeviceStates], Callable[[Mapping[str, Mapping[str, bytes]]], None]]:
    """``kept`` and ``restore`` for devices on threads or worker processes: their transports hold the states."""
    by_url = {remote.url: remote for remote in simulated}

    def restore(states: Mapping[str, Mapping[str, bytes]]) -> None:
        for url, kept in states.items():
            by_url[url].transport.kept = dict(kept)

    return lambda: {url: r.transport.kept for url, r in by_url.items() if r.transport.kept}, restore


def run_simulation(
    device_fn: Callable[[int], FedData] | str,
    num_devices: int,
    rounds: int,
    *,
    data: FedData,
    strategy: Any = None,
    fraction: float | None = None,
    devices_per_round: int | None = None,
    sampler: Sampler | None = None,
    min_results: int | None = None,
    timeout: float = 600.0,
    workers: int | None = None,
    worker_kind: str = "threads",
    seed: int | None = None,
    progress: bool | None = None,
    config: ConfigSource = None,
    evaluate_fn: Any = None,
    callbacks: Sequence[Callable[[Federated, RoundResult], Any]] = (),
    backend: str = "local",
    ray_address: str | None = None,
    backend_config: Mapping[str, Any] | None = None,
    empty_rounds: str = "fail",
    evaluate_every: int = 0,
    evaluate_fraction: float | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> History:
    """Run ``rounds`` federated rounds over ``num_devices`` simulated devices in this process.

    Args:
        device_fn: ``device_fn(device_id) -> FedData`` for ``device_id`` in
            ``range(num_devices)``: the device's FedData over its data partition,
            built when the device is sampled and dropped after the round. One that
            raises, or returns no FedData, is that device's failure that round.
        num_devices: how many devices exist.
        rounds: rounds to run.
        data: the coordinator's FedData (same specs as the devices'); it holds the
            merged model at the end.
        strategy: if given, set as ``data.strategy`` (FedArrays and the adapters).
        fraction, devices_per_round, sampler, min_results, timeout, seed, config, evaluate_fn,
            empty_rounds, evaluate_fraction, checkpoint: as for :class:`fedsync.Federated` (``timeout``: seconds
            per round). A ``sampler`` or a per-device ``config(server_round, device)`` gets the devices'
            URLs; :func:`device_id` reads the ``device_id`` back from one.
        evaluate_every: federated evaluation after every n-th round (0: never), as for
            :meth:`fedsync.Federated.fit`; devices need an ``evaluate`` callback.
        workers: devices training at once (default: the CPU count).
        worker_kind: ``"threads"`` (the default: numpy's BLAS and torch release
            the GIL while computing) or ``"processes"``, for a training that
            holds the GIL (pure Python): ``workers`` processes, each importing
            ``device_fn`` by name when it has one (a module-level function, or
            ``"module:function"``), else receiving it by value (a lambda, a closure,
            a notebook's function: cloudpickle, ``pip install 'fedsync[sim]'``; only
            from this process to its own workers, docs/security.md;
            :mod:`fedsync.transports.process.pool`). A worker
            that dies is its devices' failure that round; it is replaced. A call that
            hangs is its device's failure at the deadline; after the round its worker
            process is killed and replaced, or (threads) another thread takes its slot.
        progress: a progress bar as with ``fit()`` (default: when stderr is a terminal).
        callbacks: as for :meth:`fedsync.Federated.fit`.
        backend: ``"local"`` (threads in this process) or ``"ray"``: devices in a
            bounded pool of Ray actors (:class:`fedsync_ray.RayDevices`, ``pip install
            'fedsync[ray]'``), each device named ``ray://sim-XXXX-K/device-ID``;
            ``device_fn`` goes by its import path when it has one, else by value
            (Ray's own cloudpickle; docs/simulation.md).
        ray_address: ``backend="ray"``: an existing cluster's address; ``None``
            starts a local Ray (127.0.0.1, usage stats off) and stops it at the end,
            unless this process is already connected to one.
        backend_config: ``backend="ray"``: ``{"num_cpus": 1, "num_gpus": 0}`` per
            device actor, as Flower's; ``"actors"``: how many (default: as many as
            the cluster's CPUs hold). ``workers`` is for the local backend only.

    Returns:
        The :class:`History` of the run, as ``fit()`` returns it.

    Raises:
        SpecsMismatch, RoundFailed: as :meth:`fedsync.Federated.round`.
        ValueError, TypeError: a bad argument (before anything runs), e.g. a
            ``device_fn`` capturing something that cannot be sent to a worker (a lock).
        ImportError: ``backend="ray"`` without Ray installed, or
            ``worker_kind="processes"`` and a worker could not import ``device_fn``.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    if worker_kind not in ("threads", "processes"):
        raise ValueError(f"worker_kind must be 'threads' or 'processes', got {worker_kind!r}")
    if backend == "local" and (ray_address is not None or backend_config is not None):
        raise ValueError("ray_address and backend_config are for backend='ray'; pass backend='ray' or drop them")
    if backend == "ray" and workers is not None:
        raise ValueError(
            "workers is for backend='local'; with backend='ray', backend_config={'num_cpus': ..., 'actors': ...} "
            "sets how many devices train at once"
        )
    if backend == "ray" and worker_kind != "threads":
        raise ValueError("worker_kind is for backend='local'; Ray actors are processes already")
    if strategy is not None:
        if not hasattr(data, "strategy"):
            raise TypeError(
                f"strategy= needs a FedData with a strategy (FedArrays or an adapter), got {type(data).__name__}"
            )
        data.strategy = strategy
    remotes: Sequence[Remote]
    if backend == "ray":
        from fedsync_ray import RayDevices  # this distribution's Ray plugin; it imports ray itself

        on_ray = RayDevices(
            device_fn, num_devices, timeout=timeout, ray_address=ray_address, backend_config=backend_config
        )
        remotes, slots, release_all, close = on_ray.remotes, len(on_ray.actors), on_ray.release, on_ray.close
    else:
        pool: TrainingPool | ProcessPool
        simulated: Sequence[LocalRemote | ProcessRemote]
        local: list[LocalRemote] = []
        if worker_kind == "processes":
            positive_int("num_devices", num_devices)
            pool = ProcessPool(device_fn, workers)
            simulated = process_remotes(pool, num_devices, timeout=timeout)
        else:
            if isinstance(device_fn, str):
                module, _, name = device_functions.locate(device_fn)
                device_fn = device_functions.load(name, module)
            pool = threads = ReplaceablePool(workers)
            simulated = local = local_remotes(device_fn, num_devices, pool=pool, timeout=timeout)
        remotes, slots, close = simulated, pool.workers, pool.close

        def release_all() -> None:
            # A device's state exists only while it is sampled; what of it still runs is hung (its round is over).
            for remote in local:
                _release_local(remote, threads)
            if not local:
                for other in simulated:
                    other.release()

    def release(federated: Federated, result: RoundResult) -> None:
        release_all()

    try:
        federated = Federated(
            data,
            remotes,
            fraction=fraction,
            devices_per_round=devices_per_round,
            sampler=sampler,
            min_results=min_results,
            timeout=timeout,
            seed=seed,
            workers=min(64, max(slots, 1) * 4),
            config=config,
            evaluate_fn=evaluate_fn,
            empty_rounds=empty_rounds,
            evaluate_fraction=evaluate_fraction,
            checkpoint=checkpoint,
        )
        if checkpoint is not None:
            urls = [remote.url for remote in remotes]
            if backend == "ray":  # the actors keep their devices' states; the pool fetches those that changed
                _checkpoint_states(federated, checkpoint, urls, on_ray.kept, on_ray.restore, release_all)
            else:
                _checkpoint_states(federated, checkpoint, urls, *_local_states(simulated), release_all)
        return federated.fit(rounds, evaluate_every=evaluate_every, callbacks=[release, *callbacks], progress=progress)
    finally:
        release_all()
        close()
