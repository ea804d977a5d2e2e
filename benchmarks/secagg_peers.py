"""The coordinators that benchmarks/secagg.py starts: fedsync with and without secure
aggregation, and Flower 1.42 with and without SecAgg+ (Bell et al. 2020) in its simulation engine.

Run as ``python benchmarks/secagg_peers.py ROLE [options]``; secagg.py does that. The
fedsync devices are benchmarks/peers.py's ``fedsync-device`` processes (no-op training,
``fedsync.serve`` with its defaults, which answer plain and secure rounds alike).
Results are ``@@ {json}`` lines on stdout, as in peers.py.

Bytes per round are counted on the coordinator's side of the exchange:

- fedsync: every byte the coordinator process passes through its sockets (HTTP headers,
  the key phases' JSON, the payloads), counted by wrapping ``socket.socket``'s send and
  receive methods in that process (urllib3 and http.client reach the kernel only through
  them). ``/proc/<pid>/io`` would not do: its ``rchar``/``wchar`` count ``read``/``write``
  but not ``send``/``recv``, which is what Python's sockets call.
- Flower: the ServerApp's ``Grid`` is wrapped, and every message it pushes to or pulls
  from a ClientApp is counted as the size of its protobuf (``message_to_proto``), the
  form Flower's deployment engine sends over gRPC. The simulation itself hands messages
  over in memory, so there are no socket bytes to read.

Only the standard library and numpy are imported at the top (the Flower role runs in
benchmarks/.venv-flower, where fedsync is not installed).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

from peers import SAMPLES, Rounds, emit, model, report_done, report_start


def record(rounds: Rounds, seconds: float) -> None:
    """Record a round; the budget counts from the end of the warm-up, which includes Flower's Ray
    start (30-70 s here), so that a slow first round does not leave no time for a measured one."""
    rounds.record(seconds)
    if len(rounds.times) == 1:
        rounds.started = time.monotonic()


class SocketBytes:
    """Counts the bytes every ``socket.socket`` of this process sends and receives, from :meth:`install` on."""

    SEND = ("send", "sendall", "sendto", "sendmsg")
    RECEIVE = ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into")

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()

    def _add(self, n: int) -> None:
        with self._lock:
            self.total += n

    def install(self) -> "SocketBytes":
        for name in self.SEND + self.RECEIVE:
            original = getattr(socket.socket, name)
            setattr(socket.socket, name, self._wrap(name, original))
        return self

    def _wrap(self, name: str, original):
        counter = self

        def sent(sock, data, *args, **kwargs):
            result = original(sock, data, *args, **kwargs)
            # sendall returns None after sending everything; send and sendto return the count.
            counter._add(_length(data) if result is None else result)
            return result

        def sent_msg(sock, buffers, *args, **kwargs):
            result = original(sock, buffers, *args, **kwargs)
            counter._add(result)
            return result

        def received(sock, *args, **kwargs):
            result = original(sock, *args, **kwargs)
            # recv, recvfrom, recvmsg return the data first; the *_into ones its length.
            first = result[0] if isinstance(result, tuple) else result
            counter._add(first if isinstance(first, int) else len(first))
            return result

        return sent_msg if name == "sendmsg" else sent if name in self.SEND else received


def _length(data) -> int:
    return memoryview(data).nbytes


# ----------------------------------------------------------------- fedsync


def fedsync_coordinator(args) -> None:
    import fedsync  # noqa: F401  (imported before the baseline is read)
    from fedsync import FedArrays, Federated, Remote

    secure = None
    if args.secure:
        from fedsync.secagg import SecAgg

        secure = SecAgg(threshold=args.threshold or None)
    report_start(args.params)
    data = FedArrays(model(args.params))
    remotes = [Remote(url, timeout=args.timeout) for url in args.urls]
    rounds = Rounds(args.rounds, args.budget)
    moved: list[int] = []
    counted = SocketBytes().install()
    with Federated(data, remotes, timeout=args.timeout, secure_aggregation=secure) as alg:
        while rounds.more():
            before = counted.total
            started = time.perf_counter()
            result = alg.round()
            seconds = time.perf_counter() - started
            moved.append(counted.total - before)
            if len(result.answered) != len(remotes):
                raise SystemExit(f"round {result.repetition}: only {len(result.answered)} answered: {result.failures}")
            record(rounds, seconds)
    threshold = secure.threshold_for(len(remotes)) if secure is not None else None
    emit(moved=moved, threshold=threshold, shares=len(remotes) - 1 if secure is not None else None, dtypes=sorted({a.dtype.name for a in data.get_arrays().values()}))
    report_done(rounds)


# ----------------------------------------------------------------- Flower 1.42 simulation


def flower_simulation(args) -> None:
    """FedAvg, alone or inside SecAggPlusWorkflow, over ``--clients`` no-op ClientApps in Flower's simulation engine."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import logging

    import flwr  # noqa: F401  (imported before the baseline is read)
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.common.serde import message_to_proto
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    logging.getLogger("flwr").setLevel(logging.WARNING)
    report_start(args.params)
    arrays = list(model(args.params).values())
    rounds = Rounds(args.rounds, args.budget)
    state: dict = {"start": None, "bytes": 0, "moved": [], "error": None}

    class CountingGrid:
        """The ServerApp's Grid, counting the protobuf size of every message pushed and pulled."""

        def __init__(self, grid) -> None:
            self._grid = grid

        def __getattr__(self, name):
            return getattr(self._grid, name)

        def _count(self, messages) -> None:
            state["bytes"] += sum(message_to_proto(m).ByteSize() for m in messages)

        def push_messages(self, messages):
            messages = list(messages)
            self._count(messages)
            return self._grid.push_messages(messages)

        def pull_messages(self, message_ids):
            replies = list(self._grid.pull_messages(message_ids))
            self._count(replies)
            return replies

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self._count(messages)
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
            self._count(replies)
            return replies

    class TimedFedAvg(FedAvg):
        """FedAvg that times each fit round (configure_fit to aggregate_fit) and stops once the budget is spent."""

        def configure_fit(self, server_round, parameters, client_manager):
            if not rounds.more():
                return []
            state["start"], state["bytes"] = time.perf_counter(), 0
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            if failures or len(results) != args.clients:
                state["error"] = f"Flower round {server_round}: {len(results)} results, {len(failures)} failures: {failures[:1]}"
                raise SystemExit(state["error"])
            seconds = time.perf_counter() - state["start"]
            state["moved"].append(state["bytes"])
            if "dtypes" not in state and aggregated[0] is not None:  # what the next round sends down
                state["dtypes"] = sorted({a.dtype.name for a in parameters_to_ndarrays(aggregated[0])})
            record(rounds, seconds)
            return aggregated

    def client_fn(context: Context):
        mine = list(model(args.params, seed=1).values())

        class NoOpClient(NumPyClient):
            def fit(self, parameters, config):
                return mine, SAMPLES, {}

            def evaluate(self, parameters, config):
                return 0.0, SAMPLES, {}

        return NoOpClient().to_client()

    client = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if args.secure else [])
    server = ServerApp()
    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(arrays),
    )
    del arrays

    @server.main()
    def main(grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=args.rounds + 1), strategy=strategy)
        fit = SecAggPlusWorkflow(num_shares=args.num_shares, reconstruction_threshold=args.threshold) if args.secure else None
        workflow = DefaultWorkflow(fit_workflow=fit) if fit is not None else DefaultWorkflow()
        workflow(CountingGrid(grid), legacy)

    resources = {"num_cpus": args.client_cpus, "num_gpus": 0.0}
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=args.clients,
        backend_config={"client_resources": resources, "init_args": {"num_cpus": args.cpus, "include_dashboard": False}},
    )
    if state["error"] or not rounds.times:
        raise SystemExit(state["error"] or "Flower ran no fit round (see its log above)")
    emit(moved=state["moved"], threshold=args.threshold if args.secure else None, shares=args.num_shares if args.secure else None, dtypes=state.get("dtypes"))
    report_done(rounds)


ROLES = {"fedsync-coordinator": fedsync_coordinator, "flower-simulation": flower_simulation}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--urls", nargs="*", default=[])
    parser.add_argument("--secure", action="store_true", help="secure aggregation (fedsync SecAgg, Flower SecAgg+)")
    parser.add_argument("--threshold", type=int, default=0, help="shares needed to rebuild a secret (0: fedsync's default, a majority)")
    parser.add_argument("--num-shares", type=float, default=1.0, help="Flower SecAgg+: shares per client (a float <= 1: a fraction of the clients)")
    parser.add_argument("--clients", type=int, default=0, help="Flower: the number of simulated clients")
    parser.add_argument("--client-cpus", type=float, default=0.25, help="Flower: CPUs Ray reserves per ClientApp")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="Flower: CPUs Ray may use")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="no new round after this many seconds")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    if args.num_shares >= 1 and args.num_shares == int(args.num_shares) and args.num_shares != 1.0:
        args.num_shares = int(args.num_shares)
    ROLES[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
