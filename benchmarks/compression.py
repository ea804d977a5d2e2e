"""Accuracy against bytes: fedsync's wire formats, update deltas and top-k with error feedback (issue #25).

    python benchmarks/compression.py                    # 2 models x 10 configurations x 3 seeds x 30 rounds, + HTTP
    python benchmarks/compression.py --quick            # 2 rounds, 1 seed, 3 devices, no HTTP: a smoke run
    python benchmarks/compression.py --models mlp --configs float32,int8 --seeds 0 --http-rounds 0

**Data.** scikit-learn's digits as benchmarks/strategies.py and benchmarks/stateful.py take them
(fedsync/demo/data.py's ``load_split``): a stratified 25% test set on the coordinator, the rest split
over 10 devices by Dirichlet(0.1) label proportions; every device trains every round.

**Models** (torch, built here, ``fedsync_torch.FedTorch``): ``mlp``, 64-128-10 with ReLU (9,610
float32 parameters); ``cnn``, the 8x8 image through two 3x3 convolutions (8 and 16 channels, ReLU,
a 2x2 max-pool) and a linear layer to 10 classes (3,818 parameters). Each device runs ``--epochs``
local epochs of plain minibatch SGD (batch 32, ``--lr`` per model) each round; FedAvg.

**Configurations** (``CONFIGS``): the coordinator's ``wire_dtype`` (the download, and the format a
device replies in), its ``download="delta"`` (the model as its difference from the view the device
holds, in ``wire_dtype`` or as its top ``download_top_k``; the whole model in the first round) and the
device's ``updates=`` / ``top_k=``. float32 is what Flower sends.

**Accuracy** runs use ``run_simulation`` (threads in this process: the same payloads, merges and
device state as over HTTP); the payload bytes are ``RoundResult.bytes_sent`` (coordinator to
devices) and ``bytes_received`` (devices to coordinator), HTTP bodies only. The coordinator
measures test accuracy after every round (``evaluate_fn``).

**Socket bytes**: for each model and configuration, ``--http-rounds`` rounds over real HTTP: one
child process serves the 10 devices (``fedsync.serve``, one port each; the same FedTorch as in the
simulation), the coordinator is ``Federated`` in this process, and every byte this process's
sockets send and receive is counted by wrapping ``socket.socket``'s methods (as
benchmarks/secagg_peers.py does). The first round (``/info`` handshake, connection set-up) is
reported apart; the ratio is over the later rounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fedsync, whatever is installed

from fedsync.demo.data import load_split  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One configuration: the coordinator's ``wire_dtype``, ``download=`` and ``download_top_k=``, and the
    devices' ``updates=`` / ``top_k=``."""

    name: str
    wire_dtype: str | None = None
    updates: str | None = None
    top_k: float | None = None
    download: str | None = None
    download_top_k: float | None = None

    def coordinator(self) -> dict[str, Any]:
        """The coordinator's FedTorch keywords (only those set, so fedsync without ``download=`` runs the rest)."""
        options: dict[str, Any] = {"wire_dtype": self.wire_dtype}
        if self.download is not None:
            options["download"] = self.download
        if self.download_top_k is not None:
            options["download_top_k"] = self.download_top_k
        return options


CONFIGS = [
    Config("float32"),
    Config("float16", "float16"),
    Config("int8", "int8"),
    Config("int4", "int4"),
    Config("delta int8", "int8", "delta"),
    Config("delta int4", "int4", "delta"),
    Config("top-k 10%", None, "topk", 0.1),
    Config("top-k 1%", None, "topk", 0.01),
    Config("top-k 1% + int8 down", "int8", "topk", 0.01),
    Config("top-k 1% + int4 down", "int4", "topk", 0.01),
    # With an int4 download (0.077 of float32's round), an upload of at most 0.048 (about 3.5 % of the
    # entries, at 8 bytes each plus headers) keeps the round within 1/8 of float32's.
    Config("top-k 3% + int4 down", "int4", "topk", 0.03),
    Config("top-k 10% + int4 down", "int4", "topk", 0.1),
    # The download as a delta from the device's view (download="delta", main after 1babb84).
    Config("delta int8 + delta down", "int8", "delta", download="delta"),
    Config("delta int4 + delta down", "int4", "delta", download="delta"),
    Config("top-k 1% + int4 delta down", "int4", "topk", 0.01, download="delta"),
    Config("top-k 3% + int4 delta down", "int4", "topk", 0.03, download="delta"),
    Config("top-k 3% + top-k 5% delta down", None, "topk", 0.03, download="delta", download_top_k=0.05),
    Config("delta int4 + top-k 2% delta down", "int4", "delta", download="delta", download_top_k=0.02),
    Config("top-k 3% + top-k 2% delta down", None, "topk", 0.03, download="delta", download_top_k=0.02),
    # Sparse ternary compression (Sattler et al. 2019): each kept entry as a sign, one magnitude per array,
    # positions as a bitmap; both ways with error feedback (main after this session's fedsync.wire.stc).
    Config("stc 10%", None, "stc", 0.1),
    Config("stc 10% + stc 10% down", None, "stc", 0.1, download="stc", download_top_k=0.1),
    Config("stc 25% + stc 25% down", None, "stc", 0.25, download="stc", download_top_k=0.25),
]
BY_NAME = {c.name: c for c in CONFIGS}
MODELS = ("mlp", "cnn", "cnn32")
LR = {"mlp": 0.3, "cnn": 0.1, "cnn32": 0.1}
BATCH = 32


def build(model: str, seed: int) -> Any:
    """The torch model ``model`` with weights drawn from ``seed``; float32.

    ``"mlp"`` (9,610 parameters), ``"cnn"`` (3,818: 8 and 16 channels), ``"cnn32"`` (9,930: 16 and 32 channels;
    the same CNN at the MLP's size, so a payload's fixed header bytes weigh as much on both).
    """
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    if model == "mlp":
        return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if model in ("cnn", "cnn32"):
        first, second = (8, 16) if model == "cnn" else (16, 32)
        return nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, first, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(first, second, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(second * 4 * 4, 10),
        )
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def fit(net: Any, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, rng: np.random.Generator) -> None:
    """``epochs`` epochs of plain minibatch SGD (batch 32) on ``(x, y)``, in place."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    parameters = list(net.parameters())
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), BATCH):
            index = torch.from_numpy(order[start : start + BATCH])
            loss = torch.nn.functional.cross_entropy(net(xt[index]), yt[index])
            for p in parameters:
                p.grad = None
            loss.backward()
            with torch.no_grad():  # by hand: torch.optim's first use imports torch._dynamo (seconds)
                for p in parameters:
                    p -= lr * p.grad


def accuracy(net: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    net.eval()
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(dim=1).numpy() == y).mean())


def device_function(model: str, config: Config, split: Any, seed: int, epochs: int) -> Callable[[int], Any]:
    """``device_fn(k)``: device ``k``'s FedTorch over its shard, replying as ``config`` says."""
    from fedsync_torch import FedTorch

    rounds = [0] * len(split.shards)

    def device_fn(k: int) -> Any:
        shard = split.shards[k]
        rounds[k] += 1
        rng = np.random.default_rng([seed, k, rounds[k]])

        def train(net: Any) -> int:
            fit(net, shard.x, shard.y, epochs, LR[model], rng)
            return len(shard.y)

        return FedTorch(build(model, seed), train, updates=config.updates, top_k=config.top_k)

    return device_fn


def simulate(model: str, config: Config, split: Any, seed: int, rounds: int, epochs: int) -> dict[str, Any]:
    """One run of ``rounds`` rounds; per round the test accuracy and the payload bytes both ways."""
    from fedsync.coordinator.simulation import run_simulation
    from fedsync_torch import FedTorch

    net = build(model, seed)
    data = FedTorch(net, **config.coordinator())
    started = time.monotonic()
    history = run_simulation(
        device_function(model, config, split, seed, epochs),
        len(split.shards),
        rounds,
        data=data,
        fraction=1.0,
        workers=2,
        seed=seed,
        progress=False,
        evaluate_fn=lambda _model, _round: {"accuracy": accuracy(net, split.x_test, split.y_test)},
    )
    return {
        "accuracy": [measured(r) for r in history],
        "down": [r.bytes_sent for r in history],
        "up": [r.bytes_received for r in history],
        "seconds": time.monotonic() - started,
    }


def measured(result: Any) -> float:
    """The test accuracy ``evaluate_fn`` recorded in a ``RoundResult``.

    Raises:
        RuntimeError: the round has none (``evaluate_fn`` failed: its error is in the message).
    """
    evaluation = result.server_evaluation
    if evaluation is None or "accuracy" not in evaluation.metrics:
        raise RuntimeError(f"round {result.repetition} has no test accuracy: {evaluation!r}")
    return float(evaluation.metrics["accuracy"])


# ---- real HTTP: a child process serving the devices, socket bytes counted in this process ----


class SocketBytes:
    """Bytes this process's ``socket.socket``s send and receive, from :meth:`install` to :meth:`remove`."""

    SEND = ("send", "sendall", "sendto")
    RECEIVE = ("recv", "recv_into", "recvfrom", "recvfrom_into")

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()
        self._originals: dict[str, Any] = {}

    def install(self) -> SocketBytes:
        for name in self.SEND + self.RECEIVE:
            self._originals[name] = original = getattr(socket.socket, name)
            setattr(socket.socket, name, self._wrap(name, original))
        return self

    def remove(self) -> None:
        for name, original in self._originals.items():
            setattr(socket.socket, name, original)
        self._originals.clear()

    def _wrap(self, name: str, original: Any) -> Any:
        counter = self
        sending = name in self.SEND

        def wrapped(sock: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(sock, *args, **kwargs)
            if sending:  # sendall returns None once everything went
                n = memoryview(args[0]).nbytes if result is None else result
            else:  # recv and recvfrom return the data (first), the *_into ones a count
                first = result[0] if isinstance(result, tuple) else result
                n = first if isinstance(first, int) else len(first)
            with counter._lock:
                if sending:
                    counter.sent += n
                else:
                    counter.received += n
            return result

        return wrapped

    def take(self) -> tuple[int, int]:
        with self._lock:
            sent, received, self.sent, self.received = self.sent, self.received, 0, 0
        return sent, received


def host_devices(args: argparse.Namespace) -> int:
    """Child process: serve ``--devices`` devices on free ports, print their URLs, serve until stdin closes."""
    import torch

    import fedsync

    torch.set_num_threads(1)
    split = load_split(args.devices, args.alpha, args.seeds[0])
    make = device_function(args.models[0], BY_NAME[args.configs[0]], split, args.seeds[0], args.epochs)
    servers = [fedsync.serve(make(k), port=0, block=False) for k in range(args.devices)]
    print(json.dumps([s.url for s in servers]), flush=True)  # type: ignore[union-attr]
    sys.stdin.read()  # the parent closes it when done (or dies)
    for s in servers:
        s.close()  # type: ignore[union-attr]
    return 0


def over_http(model: str, config: Config, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """``--http-rounds`` rounds over HTTP: payload and socket bytes per round, both directions."""
    from fedsync import Federated
    from fedsync_torch import FedTorch

    command = [sys.executable, __file__, "--host-devices", "--models", model, "--configs", config.name]
    command += ["--seeds", str(seed), "--devices", str(args.devices), "--alpha", str(args.alpha)]
    command += ["--epochs", str(args.epochs)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    counter = SocketBytes()
    rows = []
    try:
        assert child.stdout is not None
        urls = json.loads(child.stdout.readline() or "null")
        if not urls:
            raise RuntimeError(f"the device process exited ({child.wait(60)}) before serving")
        counter.install()
        with Federated(FedTorch(build(model, seed), **config.coordinator()), urls, timeout=120) as alg:
            for _ in range(args.http_rounds):
                counter.take()
                result = alg.round()
                sent, received = counter.take()
                rows.append(
                    {"down": result.bytes_sent, "up": result.bytes_received, "socket_down": sent, "socket_up": received}
                )
    finally:
        counter.remove()
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(30)
    return {"rounds": rows}


# ---- report ----


def first_reaching(accuracies: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


def summary(runs: list[dict[str, Any]], rounds: int, target: float) -> dict[str, Any]:
    finals = [run["accuracy"][-1] for run in runs]
    reached = [first_reaching(run["accuracy"], target) for run in runs]
    down = float(np.mean([np.mean(run["down"]) for run in runs]))
    up = float(np.mean([np.mean(run["up"]) for run in runs]))
    median = float(np.median([r if r is not None else math.inf for r in reached]))
    return {
        "final": finals,
        "reached": reached,
        "median": median,
        "down": down,
        "up": up,
        "seconds": float(np.mean([r["seconds"] for r in runs])),
    }


def table(results: dict[str, Any], rounds: int, target: float, http: dict[str, Any]) -> str:
    lines = [
        f"| model | configuration | accuracy after {rounds} rounds: mean (min-max) | change vs float32 (points) | "
        f"rounds to {target:.0%}: median (per seed) | payload bytes per round: down / up | total vs float32 | "
        "meets 1/8 and -0.5 pt | socket bytes / payload bytes: down / up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, cells in results.items():
        base = summary(cells["float32"], rounds, target) if "float32" in cells else None
        for name, runs in cells.items():
            s = summary(runs, rounds, target)
            mean = float(np.mean(s["final"]))
            change = f"{100 * (mean - float(np.mean(base['final']))):+.1f}" if base else "-"
            total = s["down"] + s["up"]
            ratio = total / (base["down"] + base["up"]) if base else math.nan
            up_ratio = s["up"] / base["up"] if base else math.nan
            if base is None or name == "float32":
                meets = "-"
            else:
                accurate = mean >= float(np.mean(base["final"])) - 0.005
                meets = (
                    "yes"
                    if accurate and ratio <= 1 / 8
                    else ("upload only" if accurate and up_ratio <= 1 / 8 else "no")
                )
            med = f"{s['median']:g}" if math.isfinite(s["median"]) else f"> {rounds}"
            per_seed = " / ".join(str(r) if r else "-" for r in s["reached"])
            sock = http.get(model, {}).get(name)
            if sock:
                later = sock["rounds"][1:] or sock["rounds"]
                sdown = sum(r["socket_down"] for r in later) / sum(r["down"] for r in later)
                sup = sum(r["socket_up"] for r in later) / sum(r["up"] for r in later)
                sock_text = f"{sdown:.3f} / {sup:.3f}"
            else:
                sock_text = "-"
            lines.append(
                f"| {model} | {name} | {mean:.3f} ({min(s['final']):.3f}-{max(s['final']):.3f}) | {change} | "
                f"{med} ({per_seed}) | "
                f"{s['down']:,.0f} / {s['up']:,.0f} | {ratio:.3f} (1/{1 / ratio:.1f}) | {meets} | {sock_text} |"
            )
    return "\n".join(lines)


def http_table(http: dict[str, Any]) -> str:
    lines = [
        "| model | configuration | first round: socket / payload bytes, down + up | "
        "later rounds, per round: payload down / up | socket down / up |",
        "|---|---|---|---|---|",
    ]
    for model, cells in http.items():
        for name, cell in cells.items():
            first, later = cell["rounds"][0], cell["rounds"][1:] or cell["rounds"]
            n = len(later)
            lines.append(
                f"| {model} | {name} | "
                f"{first['socket_down'] + first['socket_up']:,} / {first['down'] + first['up']:,} | "
                f"{sum(r['down'] for r in later) / n:,.0f} / {sum(r['up'] for r in later) / n:,.0f} | "
                f"{sum(r['socket_down'] for r in later) / n:,.0f} / {sum(r['socket_up'] for r in later) / n:,.0f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> bool:
    """Mean test accuracy against cumulative payload bytes (both directions), one panel per model."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results) + 3.5, 4.8), squeeze=False)
    for ax, (model, cells) in zip(axes[0], results.items(), strict=True):
        for i, (name, runs) in enumerate(cells.items()):
            acc = np.mean([run["accuracy"] for run in runs], axis=0)
            spent = np.cumsum(np.mean([np.add(run["down"], run["up"]) for run in runs], axis=0))
            # float32 black and STC bold (the target's configurations), so that no colour is read twice
            style = ":" if "stc" in name else "--" if "top-k" in name else "-"
            color = "black" if name == "float32" else plt.cm.tab20(i % 20)
            width = 2.5 if name == "float32" or "stc" in name else 1.2
            ax.plot(spent, acc, marker=".", markersize=3, label=name, linestyle=style, color=color, linewidth=width)
        ax.set_xscale("log")
        ax.set_title(f"{model}: digits, Dirichlet 0.1, 10 devices ({len(next(iter(cells.values())))} seeds, mean)")
        ax.set_xlabel("cumulative payload bytes, both directions (log)")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.legend(handles, labels, fontsize=8, loc="center right")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    parser.add_argument("--configs", type=lambda s: s.split(","), default=[c.name for c in CONFIGS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument(
        "--http-rounds", type=int, default=3, help="rounds over HTTP per model and configuration (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 seed, 3 devices, no HTTP")
    parser.add_argument("--plot", type=Path, default=HERE / "compression.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    parser.add_argument("--replot", type=Path, default=None, help="print the tables and draw the plot of a --json file")
    parser.add_argument("--host-devices", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seeds, args.devices, args.http_rounds = 2, args.seeds[:1], 3, 0
    unknown = [c for c in args.configs if c not in BY_NAME] + [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(
            f"unknown configurations or models {unknown}; configurations: {list(BY_NAME)}; models: {list(MODELS)}"
        )
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; return ``{"results", "http", "table"}``."""
    args = parse(argv)
    if args.host_devices:
        sys.exit(host_devices(args))
    if args.replot is not None:
        saved = json.loads(args.replot.read_text())
        text = table(saved["results"], args.rounds, args.target, saved["http"])
        print(text)
        plot(saved["results"], args.plot)
        return {"results": saved["results"], "http": saved["http"], "table": text}
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    results: dict[str, Any] = {model: {name: [] for name in args.configs} for model in args.models}
    for seed in args.seeds:
        split = load_split(args.devices, args.alpha, seed)
        for model in args.models:
            for name in args.configs:
                run = simulate(model, BY_NAME[name], split, seed, args.rounds, args.epochs)
                results[model][name].append(run)
                print(
                    f"seed {seed} {model:3s} {name:22s} final {run['accuracy'][-1]:.3f}, to {args.target:.0%}: "
                    f"{first_reaching(run['accuracy'], args.target)}, bytes/round {np.mean(run['down']):,.0f} down "
                    f"{np.mean(run['up']):,.0f} up, {run['seconds']:.1f} s",
                    flush=True,
                )
    simulated = time.monotonic() - started
    http: dict[str, Any] = {}
    if args.http_rounds > 0:
        for model in args.models:
            for name in args.configs:
                cell = http.setdefault(model, {})[name] = over_http(model, BY_NAME[name], args, args.seeds[0])
                print(f"http {model} {name}: {cell['rounds']}", flush=True)
    elapsed = time.monotonic() - started
    text = table(results, args.rounds, args.target, http)
    print()
    print(text)
    if http:
        print()
        print(http_table(http))
    print(f"\nsimulation {simulated:.0f} s, total {elapsed:.0f} s")
    if not args.quick and plot(results, args.plot):
        print(f"plot: {args.plot}")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "http": http}, indent=1)
        )
    return {"results": results, "http": http, "table": text}


if __name__ == "__main__":
    main()
