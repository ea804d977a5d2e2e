"""The processes benchmarks/simulation.py starts: one simulation of one peer each.

Run as ``python benchmarks/sim_peers.py ROLE --data DIR ...`` (simulation.py does it, and
measures the whole process tree from outside). Roles print one result line
``@@ {json}`` on stdout: the wall-clock times (``time.time()``) at which each round
started and ended, the final model's test accuracy, and where the time went.

Only the standard library, numpy and sim_workload are imported at the top: the Flower
role runs in Flower's own venv, where fedsync is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sim_workload import NAMES, Workload, accuracy, trainer  # noqa: E402

_workload: Workload | None = None


def workload() -> Workload:
    """This process's workload, loaded on first use from ``$SIM_DATA``."""
    global _workload
    if _workload is None:
        _workload = Workload(os.environ["SIM_DATA"])
    return _workload


def emit(**fields) -> None:
    sys.stdout.write("@@ " + json.dumps(fields) + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------- fedsync


def device_fn(device_id: int):
    """Device ``device_id``: its shard and the MLP (module-level: worker processes import it by name)."""
    from fedsync import FedArrays

    wl = workload()
    x, y = wl.shard(device_id)
    train = trainer(os.environ["SIM_FRAMEWORK"])

    def fit(model):
        loss = train([model[name] for name in NAMES], x, y)
        return len(x), {"loss": loss}

    return FedArrays({name: a.copy() for name, a in zip(NAMES, wl.init)}, fit)


def fedsync_peer(args) -> None:
    from fedsync import FedArrays
    from fedsync.coordinator.simulation import run_simulation

    wl = workload()
    data = FedArrays({name: a.copy() for name, a in zip(NAMES, wl.init)})
    starts: list[float] = []
    ends: list[float] = []
    answered: list[int] = []

    def config(rnd: int) -> dict:
        starts.append(time.time())
        return {}

    def ended(alg, result) -> None:
        ends.append(time.time())
        answered.append(len(result.answered))

    if args.kind == "ray":
        kwargs = {"backend": "ray", "backend_config": {"num_cpus": 1, "num_gpus": 0}}
    else:
        kwargs = {"worker_kind": args.kind, "workers": args.workers}
    profiler = _profile_threads() if args.profile else None
    run_simulation(
        # By name: worker processes and Ray actors import it (this file runs as __main__).
        "sim_peers:device_fn", wl.devices, args.rounds, data=data, fraction=args.fraction, seed=args.seed,
        config=config, callbacks=[ended], progress=False, timeout=900, **kwargs,
    )
    if profiler is not None:
        profiler(args.profile)
    arrays = data.get_arrays()
    emit(starts=starts, ends=ends, answered=answered, accuracy=accuracy([arrays[n] for n in NAMES], wl.x_test, wl.y_test))


def _profile_threads():
    """cProfile in every thread started from now on (the round's work runs on pool threads); returns the dump function."""
    import cProfile
    import pstats
    import threading

    # Each thread's own CPU time: a wall-clock profile of threads counts the time each waits for the GIL.
    profiles = [cProfile.Profile(time.thread_time)]
    profiles[0].enable()

    def start(frame, event, arg):
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(start)

    def dump(path: str) -> None:
        threading.setprofile(None)
        profiles[0].disable()
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(path)

    return dump


# ----------------------------------------------------------------- Flower


def flower_peer(args) -> None:
    import logging

    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    wl = workload()
    train = trainer(args.framework)
    starts: list[float] = []
    ends: list[float] = []
    answered: list[int] = []
    final: dict = {}

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            starts.append(time.time())
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            answered.append(sum(1 for reply in replies if not reply.has_error()))
            errors = [reply.error for reply in replies if reply.has_error()]
            if errors:
                print(f"round {server_round}: {len(errors)} of {len(replies)} replies failed: {errors[0]}", file=sys.stderr)
            merged = super().aggregate_train(server_round, replies)
            ends.append(time.time())
            return merged

    client = ClientApp()

    @client.train()
    def fit(msg: Message, context: Context) -> Message:
        x, y = wl.shard(int(context.node_config["partition-id"]))
        model = [np.array(a, copy=True) for a in msg.content["arrays"].to_numpy_ndarrays()]
        loss = train(model, x, y)
        content = RecordDict({"arrays": ArrayRecord(model), "metrics": MetricRecord({"loss": loss, "num-examples": len(x)})})
        return Message(content=content, reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        # min_train_nodes: Flower computes the fraction over the nodes connected when round 1
        # starts, often 1 of N in simulation; it samples N * fraction every round only with this.
        sampled = max(1, int(wl.devices * args.fraction))
        strategy = TimedFedAvg(fraction_train=args.fraction, fraction_evaluate=0.0, min_train_nodes=sampled, min_available_nodes=wl.devices)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord([a.copy() for a in wl.init]), num_rounds=args.rounds)
        final["arrays"] = result.arrays.to_numpy_ndarrays()

    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": args.workers, "include_dashboard": False, "_node_ip_address": "127.0.0.1", "logging_level": "error"},
    }
    run_simulation(server_app=server, client_app=client, num_supernodes=wl.devices, backend_config=backend)
    emit(starts=starts, ends=ends, answered=answered, accuracy=accuracy(final["arrays"], wl.x_test, wl.y_test))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["fedsync", "flower"])
    parser.add_argument("--kind", default="threads", help="fedsync: threads, processes or ray")
    parser.add_argument("--framework", default="numpy")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="", help="fedsync: cProfile of every thread, written to this file")
    args = parser.parse_args(argv)
    os.environ["SIM_FRAMEWORK"] = args.framework
    if args.role == "fedsync":
        fedsync_peer(args)
    else:
        flower_peer(args)


if __name__ == "__main__":
    main()
