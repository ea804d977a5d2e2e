"""Convergence of fedsync's merge strategies on non-IID digits, over real device processes.

    python benchmarks/strategies.py                      # alpha 0.1 and 0.5, 10 devices, 30 rounds, every strategy
    python benchmarks/strategies.py --alphas 0.5 --rounds 10 --strategies FedAvg,FedMedian   # a quick look

The data is the demo's (fedsync/demo/data.py): scikit-learn's 1,797 digits, a
stratified 25% test set kept by the coordinator, the rest shared out among the
devices by Dirichlet(alpha) label proportions (alpha 0.1: most devices hold one
or two digits; 0.5: a few dominant digits each). Each device is a
``python -m fedsync.demo device`` process serving the demo's numpy softmax
regression (``FedArrays``), trained by one epoch of minibatch SGD (lr 0.5,
batch 32) per round. The same device processes serve every strategy: a strategy
lives on the coordinator only, and every round starts from the coordinator's
weights.

Strategies are found by name in ``fedsync.strategies`` at run time and built
with their defaults (the paper's or Flower's); a name that is missing, or
cannot be built without arguments, is reported as skipped. After every round the
coordinator measures the merged model on its test set (``evaluate_fn``). For each
strategy and alpha, over ``--seeds`` (each its own split and initial weights),
this reports the first round reaching ``--target`` test accuracy (90%) and the
accuracy after the last round; the plot (mean accuracy against round, one panel
per alpha) goes to ``--plot``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fedsync, whatever is installed

import fedsync.strategies  # noqa: E402
from fedsync import FedArrays, Federated  # noqa: E402
from fedsync.demo.data import load_split  # noqa: E402
from fedsync.demo.fleet import Fleet  # noqa: E402
from fedsync.demo.models import NumpyBackend  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402

# Issue #12's strategies, by the names Flower users know.
NAMES = ["FedAvg", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan"]

SETTINGS = {
    # Hsu et al. 2019 use server momentum 0.9; Flower's default (0) would make FedAvgM plain FedAvg.
    "FedAvgM": {"server_momentum": 0.9},
    # Tolerate one Byzantine device of the 10 (Bulyan needs n >= 4f + 3); the run itself is honest.
    "Krum": {"num_malicious_clients": 1},
    "MultiKrum": {"num_malicious_clients": 1},
    "Bulyan": {"num_malicious_clients": 1},
}
"""Arguments given to a strategy when its constructor takes them; the others run with their defaults."""


def strategies(wanted: list[str]) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """A factory for each strategy present in ``fedsync.strategies``, and why the others are skipped."""
    found, skipped = {}, {}
    for name in wanted:
        cls = getattr(fedsync.strategies, name, None)
        if cls is None:
            skipped[name] = "not in fedsync.strategies"
            continue
        for kwargs in (SETTINGS.get(name, {}), {}):
            try:
                cls(**kwargs)
            except TypeError as exc:
                why = str(exc)
                continue
            found[name] = functools.partial(cls, **kwargs)
            break
        else:
            skipped[name] = f"cannot be built with its defaults: {why}"
    return found, skipped


def run_strategy(make: Callable[[], Any], urls: list[str], split, rounds: int, seed: int, timeout: float) -> dict:
    """One run of ``rounds`` rounds from the same initial weights; test accuracy after each."""
    backend = NumpyBackend()
    model = backend.build(seed)
    accuracies: list[float | None] = []

    def evaluate_fn(model, server_round):
        loss, accuracy = backend.evaluate(model, split.x_test, split.y_test)
        return {"loss": loss, "accuracy": accuracy}

    started = time.monotonic()
    error = None
    with Federated(FedArrays(model, strategy=make()), urls, timeout=timeout, evaluate_fn=evaluate_fn) as alg:
        for _ in range(rounds):
            try:
                result = alg.round()
            except RoundFailed as exc:  # recorded as a gap; the next round starts from the unchanged model
                error = str(exc)[:300]
                accuracies.append(None)
                continue
            accuracies.append(result.server_evaluation.metrics.get("accuracy"))
    return {"accuracy": accuracies, "seconds": time.monotonic() - started, "error": error}


def central_baseline(split, epochs: int, seed: int) -> float:
    """Test accuracy of the same model trained on all devices' data pooled, ``epochs`` epochs."""
    backend = NumpyBackend()
    model = backend.build(seed)
    pooled = split.pooled()
    rng = np.random.default_rng(seed)
    backend.fit(model, pooled.x, pooled.y, epochs, rng)
    return backend.evaluate(model, split.x_test, split.y_test)[1]


def dominant_labels(counts: list[int], share: float = 0.9) -> int:
    """How many of a device's labels, most frequent first, make up ``share`` of its samples."""
    ordered = np.sort(np.asarray(counts))[::-1]
    return int(np.searchsorted(np.cumsum(ordered), share * ordered.sum()) + 1)


def first_reaching(accuracies: list[float | None], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a is not None and a >= target), None)


def plot(results: dict, alphas: list[float], target: float, path: Path) -> None:
    """Mean test accuracy over the seeds against the round, one panel per alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(alphas), figsize=(6.5 * len(alphas), 4.5), sharey=True, squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        cell = results[str(alpha)]
        for name, runs in cell["runs"].items():
            curves = np.array([[np.nan if a is None else a for a in run["accuracy"]] for run in runs])
            ax.plot(np.arange(1, curves.shape[1] + 1), np.nanmean(curves, axis=0), marker=".", label=name, linestyle="-" if name.startswith("Fed") else "--")
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.axhline(float(np.mean(cell["central"])), color="black", linestyle="--", linewidth=1, label="central (pooled)")
        ax.set_title(f"Dirichlet alpha = {alpha}, {len(cell['central'])} seeds (mean)")
        ax.set_xlabel("round")
        ax.set_ylim(0.3, 1.0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (coordinator's held-out digits)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(results: dict, alphas: list[float], target: float, rounds: int) -> str:
    """Per strategy and alpha: rounds to the target per seed, their median; final accuracy's mean and range."""
    lines = [
        f"| strategy | alpha | rounds to {target:.0%}, per seed | median | accuracy after {rounds} rounds: mean (min-max) | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for alpha in alphas:
        cell = results[str(alpha)]
        for name, runs in cell["runs"].items():
            reached = [first_reaching(run["accuracy"], target) for run in runs]
            # A seed that never reaches the target counts as more than ``rounds`` for the median.
            median = float(np.median([r if r is not None else math.inf for r in reached]))
            finals = [run["accuracy"][-1] for run in runs]
            shown = [f for f in finals if f is not None]
            lines.append(
                f"| {name} | {alpha} | {' / '.join(str(r) if r else '-' for r in reached)} | "
                f"{f'{median:g}' if math.isfinite(median) else f'> {rounds}'} | "
                f"{np.mean(shown):.3f} ({min(shown):.3f}-{max(shown):.3f}){' (a run failed)' if len(shown) < len(finals) else ''} | "
                f"{np.mean([run['seconds'] for run in runs]):.1f} |"
            )
        central = cell["central"]
        lines.append(f"| central (pooled data, {rounds} epochs) | {alpha} | | | {np.mean(central):.3f} ({min(central):.3f}-{max(central):.3f}) | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="each seed draws its own split and initial weights")
    parser.add_argument("--strategies", default=",".join(NAMES), help="comma-separated names in fedsync.strategies")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per round")
    parser.add_argument("--plot", type=Path, default=HERE / "strategies.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every accuracy here")
    args = parser.parse_args()

    found, skipped = strategies([n.strip() for n in args.strategies.split(",") if n.strip()])
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", flush=True)
    for name, make in found.items():
        print(f"{name}: {getattr(make, 'keywords', None) or 'defaults'}", flush=True)
    results: dict = {}
    started = time.monotonic()
    for alpha in args.alphas:
        cell = results[str(alpha)] = {"central": [], "runs": {name: [] for name in found}, "samples": [], "labels": []}
        for seed in args.seeds:
            split = load_split(args.devices, alpha, seed)
            cell["samples"].append([len(s.y) for s in split.shards])
            cell["labels"].append([dominant_labels(s.label_counts()) for s in split.shards])
            print(f"alpha {alpha}, seed {seed}: samples {cell['samples'][-1]}, labels making up 90% of each {cell['labels'][-1]}", flush=True)
            cell["central"].append(central_baseline(split, args.rounds, seed))
            with tempfile.TemporaryDirectory(prefix="fedsync-strategies-") as workdir, Fleet(Path(workdir)) as fleet:
                fleet.start(split.shards, "numpy", 1, seed)
                urls = fleet.wait_ready()
                for name, make in found.items():
                    run = run_strategy(make, urls, split, args.rounds, seed, args.timeout)
                    cell["runs"][name].append(run)
                    final = run["accuracy"][-1]
                    print(
                        f"  {name:14s} rounds to {args.target:.0%}: {first_reaching(run['accuracy'], args.target)}, "
                        f"final {final if final is None else round(final, 3)}, {run['seconds']:.1f}s"
                        + (f" (a round failed: {run['error']})" if run["error"] else ""),
                        flush=True,
                    )
    elapsed = time.monotonic() - started
    print()
    print(table(results, args.alphas, args.target, args.rounds))
    print(f"\nskipped: {', '.join(f'{n} ({w})' for n, w in skipped.items()) or 'none'}; total {elapsed:.0f} s")
    plot(results, args.alphas, args.target, args.plot)
    print(f"plot: {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "seconds": elapsed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
