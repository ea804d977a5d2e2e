"""The processes that benchmarks/round.py starts: devices and coordinators of each peer.

Run as ``python benchmarks/peers.py ROLE [options]``; round.py does that, one process per
device and one for the coordinator, so that every peer's coordinator is measured alone
(its own peak RSS, its own interpreter). Roles print their results as lines
``@@ {json}`` on stdout; anything else they print is logging.

Only the standard library and numpy are imported at the top: the Flower roles run in
Flower's own venv (benchmarks/setup_flower.sh), where fedsync is not installed, and each
role imports its framework itself, before its baseline memory is read.

A device exits when its standard input closes, so it cannot outlive round.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import struct
import sys
import threading
import time

import numpy as np

SAMPLES = 100  # what every no-op train reports
HOST = "127.0.0.1"


# ----------------------------------------------------------------- shared


def emit(**fields) -> None:
    """One result line for round.py."""
    sys.stdout.write("@@ " + json.dumps(fields) + "\n")
    sys.stdout.flush()


def status_bytes(key: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def layer_shapes(params: int) -> list[tuple[int, ...]]:
    """A handful of layer-like shapes (three weight matrices, their biases) totalling ``params``."""
    width = max(1, min(1024, params // 64))
    biases = 3 * width
    rest = max(0, params - biases)
    first, second = (rest * 5 // 10) // width, (rest * 3 // 10) // width
    third = rest - (first + second) * width
    return [(first, width), (width,), (second, width), (width,), (third,), (width,)]


def model(params: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A float32 model of ``params`` parameters named like layers."""
    rng = np.random.default_rng(seed)
    names = ["dense0.weight", "dense0.bias", "dense1.weight", "dense1.bias", "head.weight", "head.bias"]
    arrays = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in zip(names, layer_shapes(params))}
    assert sum(a.size for a in arrays.values()) == params, (params, [a.shape for a in arrays.values()])
    return arrays


def wait_for_stdin_eof() -> None:
    """Block until round.py closes our stdin (or dies)."""
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except (OSError, ValueError):
        pass


class Rounds:
    """Runs rounds after one warm-up until ``rounds`` are measured or ``budget`` seconds pass."""

    def __init__(self, rounds: int, budget: float) -> None:
        self.rounds, self.budget = rounds, budget
        self.started = time.monotonic()
        self.times: list[float] = []
        self.cpus: list[float] = []
        self.cpu = cpu_seconds()

    def more(self) -> bool:
        measured = len(self.times) - 1
        if not self.times:
            return True
        if measured >= self.rounds:
            return False
        elapsed = time.monotonic() - self.started
        return elapsed + self.times[-1] <= self.budget

    def record(self, seconds: float) -> None:
        cpu, self.cpu = self.cpu, cpu_seconds()
        self.times.append(seconds)
        self.cpus.append(self.cpu - cpu)
        emit(
            round=len(self.times),
            seconds=seconds,
            cpu=self.cpus[-1],
            hwm=status_bytes("VmHWM"),
            rss=status_bytes("VmRSS"),
        )


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pids) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (from /proc/<pid>/stat; gone ones count 0)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def report_start(params: int) -> int:
    baseline = status_bytes("VmRSS")
    emit(baseline=baseline, hwm_before_model=status_bytes("VmHWM"), model_bytes=params * 4)
    return baseline


def report_done(rounds: Rounds) -> None:
    def after_warmup(values):
        return values[1:] if len(values) > 1 else values

    emit(
        done=True,
        times=rounds.times,
        median=statistics.median(after_warmup(rounds.times)),
        cpu=statistics.median(after_warmup(rounds.cpus)),
        warmup_only=len(rounds.times) == 1,
        peak=status_bytes("VmHWM"),
    )


# ----------------------------------------------------------------- fedsync


def fedsync_device(args) -> None:
    import fedsync

    def train(model):
        return SAMPLES

    if args.bases > 1:
        datas = {f"d{i}": fedsync.FedArrays(model(args.params, seed=i), train) for i in range(args.bases)}
        server = fedsync.serve(datas, host=HOST, port=0, block=False)
        urls = [f"{server.url}/{name}" for name in datas]
    else:
        server = fedsync.serve(fedsync.FedArrays(model(args.params, seed=1), train), host=HOST, port=0, block=False)
        urls = [server.url]
    emit(ready=urls, pid=os.getpid())
    try:
        wait_for_stdin_eof()
    finally:
        server.close()


def fedsync_coordinator(args) -> None:
    import fedsync  # noqa: F401  (imported before the baseline is read)
    from fedsync import FedArrays, Federated, Remote

    report_start(args.params)
    # FEDSYNC_BENCH_FEDAVG=lean measures FedAvg(exact=False), the float32 running mean (docs/strategies.md).
    lean = os.environ.get("FEDSYNC_BENCH_FEDAVG") == "lean"
    if lean:
        from fedsync.strategies import FedAvg
    data = FedArrays(model(args.params), strategy=FedAvg(exact=False) if lean else None)
    remotes = [Remote(url, timeout=args.timeout) for url in args.urls]
    rounds = Rounds(args.rounds, args.budget)
    with Federated(data, remotes, timeout=args.timeout) as alg:
        time_rounds(alg, rounds, len(remotes), args.profile)
    report_done(rounds)


def time_rounds(alg, rounds: Rounds, devices: int, profile: str | None = None, each=None) -> None:
    """Run and time ``alg``'s rounds until ``rounds`` has enough; cProfile the first measured one into ``profile``.

    Every round must be answered by all ``devices`` (a benchmark of fewer would not be the one asked for).
    ``each(result)``: fields to :func:`emit` after each round (its payload bytes, say), before it is recorded.
    """
    while rounds.more():
        profiler = None
        if profile and len(rounds.times) == 1:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        started = time.perf_counter()
        result = alg.round()
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        if len(result.answered) != devices:
            raise SystemExit(f"round {result.repetition}: only {len(result.answered)} answered: {result.failures}")
        if each is not None:
            emit(**each(result))
        rounds.record(seconds)


# ----------------------------------------------------------------- raw TCP sockets: the physical limit

_SIZE = struct.Struct("<Q")


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise ConnectionError(f"peer closed after {got} of {len(view)} bytes")
        got += n


def raw_device(args) -> None:
    """Echo: receive a sized message into a preallocated buffer, send it back, repeat."""
    listener = socket.create_server((HOST, 0))
    emit(ready=[f"{HOST}:{listener.getsockname()[1]}"], pid=os.getpid())
    threading.Thread(target=lambda: (wait_for_stdin_eof(), os._exit(0)), daemon=True).start()
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffer = bytearray(0)
    header = bytearray(_SIZE.size)
    while True:
        _recv_exactly(sock, memoryview(header))
        (size,) = _SIZE.unpack(header)
        if size == 0:
            break
        if len(buffer) != size:
            buffer = bytearray(size)
        _recv_exactly(sock, memoryview(buffer))
        sock.sendall(buffer)


def raw_coordinator(args) -> None:
    report_start(args.params)
    payload = b"".join(memoryview(a.reshape(-1).view(np.uint8)) for a in model(args.params).values())
    socks = []
    for address in args.urls:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=args.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    replies = [bytearray(len(payload)) for _ in socks]
    errors: list[BaseException] = []

    def exchange(sock: socket.socket, reply: bytearray) -> None:
        try:
            sock.sendall(_SIZE.pack(len(payload)))
            sock.sendall(payload)
            _recv_exactly(sock, memoryview(reply))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    rounds = Rounds(args.rounds, args.budget)
    while rounds.more():
        started = time.perf_counter()
        threads = [threading.Thread(target=exchange, args=(s, r)) for s, r in zip(socks, replies)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        if errors:
            raise SystemExit(f"raw socket exchange failed: {errors[0]!r}")
        rounds.record(seconds)
    for sock in socks:
        sock.sendall(_SIZE.pack(0))
        sock.close()
    report_done(rounds)


# ----------------------------------------------------------------- pickle + base64 + JSON over HTTP


def _pickle_pack(arrays, samples: int | None = None) -> bytes:
    import base64
    import pickle

    message = {"weights": base64.b64encode(pickle.dumps(arrays)).decode("ascii")}
    if samples is not None:
        message["samples"] = samples
    return json.dumps(message).encode("utf-8")


def pickle_device(args) -> None:
    """The prototype's shape: http.server, JSON bodies with base64-encoded pickles."""
    import base64
    import pickle
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            weights = pickle.loads(base64.b64decode(json.loads(body)["weights"]))  # noqa: S301 (the point)
            del body
            reply = _pickle_pack(weights, SAMPLES)  # no-op training: send the weights back
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    emit(ready=[f"http://{HOST}:{server.server_port}"], pid=os.getpid())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait_for_stdin_eof()
    server.shutdown()


def pickle_coordinator(args) -> None:
    import base64
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    import requests

    report_start(args.params)
    arrays = model(args.params)
    sessions = [requests.Session() for _ in args.urls]
    rounds = Rounds(args.rounds, args.budget)
    with ThreadPoolExecutor(len(args.urls)) as pool:
        while rounds.more():
            started = time.perf_counter()
            body = _pickle_pack(list(arrays.values()))  # once for all devices (kinder than requests' json=)
            replies = list(
                pool.map(lambda su: su[0].post(su[1], data=body, timeout=args.timeout).json(), zip(sessions, args.urls))
            )
            del body
            total = sum(r["samples"] for r in replies)
            merged = [np.zeros_like(a) for a in arrays.values()]
            for reply in replies:
                weights = pickle.loads(base64.b64decode(reply.pop("weights")))  # noqa: S301
                for acc, w in zip(merged, weights):
                    acc += w * (reply["samples"] / total)
            del replies, weights
            for a, m in zip(arrays.values(), merged):
                a[...] = m
            del merged
            rounds.record(time.perf_counter() - started)
    report_done(rounds)


# ----------------------------------------------------------------- Flower 1.42 (its own venv)


def _flower_quiet() -> None:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)


def flower_client(args) -> None:
    _flower_quiet()
    import flwr as fl

    arrays = list(model(args.params, seed=1).values())

    class NoOpClient(fl.client.NumPyClient):
        def get_parameters(self, config):
            return arrays

        def fit(self, parameters, config):
            return parameters, SAMPLES, {}

        def evaluate(self, parameters, config):
            return 0.0, SAMPLES, {}

    emit(ready=[args.address], pid=os.getpid())
    threading.Thread(target=lambda: (wait_for_stdin_eof(), os._exit(0)), daemon=True).start()
    fl.client.start_client(
        server_address=args.address,
        client=NoOpClient().to_client(),
        grpc_max_message_length=args.grpc_max,
        insecure=True,
        max_wait_time=args.timeout,
    )


def flower_server(args) -> None:
    _flower_quiet()
    import flwr as fl
    from flwr.common import ndarrays_to_parameters

    report_start(args.params)
    arrays = list(model(args.params).values())
    rounds = Rounds(args.rounds, args.budget)
    state = {"start": None}

    class TimedFedAvg(fl.server.strategy.FedAvg):
        """FedAvg that times each fit round and stops scheduling once the budget is spent."""

        def configure_fit(self, server_round, parameters, client_manager):
            if not rounds.more():
                return []
            state["start"] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            aggregated = super().aggregate_fit(server_round, results, failures)
            if failures or len(results) != args.clients:
                raise SystemExit(f"Flower round {server_round}: {len(results)} results, {len(failures)} failures")
            rounds.record(time.perf_counter() - state["start"])
            return aggregated

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=args.clients,
        min_evaluate_clients=0,
        min_available_clients=args.clients,
        initial_parameters=ndarrays_to_parameters(arrays),
    )
    del arrays
    threading.Thread(target=lambda: (wait_for_stdin_eof(), os._exit(0)), daemon=True).start()
    emit(ready=[args.address], pid=os.getpid())
    fl.server.start_server(
        server_address=args.address,
        config=fl.server.ServerConfig(num_rounds=args.rounds + 1),
        strategy=strategy,
        grpc_max_message_length=args.grpc_max,
    )
    report_done(rounds)


# ----------------------------------------------------------------- command line

ROLES = {
    "fedsync-device": fedsync_device,
    "fedsync-coordinator": fedsync_coordinator,
    "raw-device": raw_device,
    "raw-coordinator": raw_coordinator,
    "pickle-device": pickle_device,
    "pickle-coordinator": pickle_coordinator,
    "flower-client": flower_client,
    "flower-server": flower_server,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--urls", nargs="*", default=[])
    parser.add_argument("--bases", type=int, default=1, help="fedsync-device: FedData served under named bases")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up")
    parser.add_argument("--budget", type=float, default=120.0, help="no new round after this many seconds")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--address", default="")
    parser.add_argument("--clients", type=int, default=0)
    parser.add_argument("--grpc-max", type=int, default=1 << 30)
    parser.add_argument("--profile", default="", help="fedsync-coordinator: cProfile the first measured round here")
    args = parser.parse_args(argv)
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
