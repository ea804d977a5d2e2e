"""SCAFFOLD and FedNova against FedAvg and FedProx, with heterogeneous data and heterogeneous local work.

    python benchmarks/stateful.py                          # both data sets, 5 seeds, 30 / 50 rounds
    python benchmarks/stateful.py --quick                  # 2 rounds, 1 seed, 6 devices: a smoke run
    python benchmarks/stateful.py --datasets synthetic --seeds 3 --rounds-synthetic 20

Issue #23, item 5. Everything runs through ``fedsync.coordinator.simulation.run_simulation``
(threads in this process, the same payloads, merges and device state as over HTTP), so a
run takes seconds; nothing here is a reimplementation of the algorithms.

**Data sets.**

- ``digits``: scikit-learn's 1,797 digits (fedsync/demo/data.py, as benchmarks/strategies.py):
  a stratified 25% test set on the coordinator, the rest split over 20 devices by
  Dirichlet(0.1) label proportions (most devices hold one to three digits); 10 devices a round.
- ``synthetic``: Synthetic(1,1) of Li et al., "Federated Optimization in Heterogeneous
  Networks" (FedProx, MLSys 2020), generated as the authors' ``generate_synthetic.py`` does,
  with numpy from the seed: 30 devices, 60 features, 10 classes; device ``k`` has its own
  softmax model ``W_k ~ N(u_k, 1)``, ``b_k ~ N(u_k, 1)``, ``u_k ~ N(0, 1)`` (alpha = 1) and
  features ``x ~ N(v_k, diag(j^-1.2))``, ``v_k ~ N(B_k, 1)``, ``B_k ~ N(0, 1)`` (beta = 1),
  labels ``argmax softmax(W_k x + b_k)``; ``lognormal(4, 2) + 50`` samples (power law: 50 to
  thousands). Each device keeps 90% for training; the coordinator tests on the other 10% of
  every device pooled (the paper's test accuracy). 10 devices a round.

**Heterogeneous local work** (what FedNova corrects): for each seed, device ``k`` draws its
number of local epochs ``E_k`` once, uniform in ``1..E`` (``E`` = 5 on digits, 10 on synthetic),
and keeps it for every round; an epoch is a pass of minibatch SGD (batch 32 on digits, 10 on
synthetic, as FedProx), so device ``k`` takes ``K_k = E_k * ceil(n_k / batch)`` steps a round and
``K_k`` differs by data size as well. ``E_k`` and the learning rate reach the device through a
per-device ``config(server_round, device)``.

**Model and algorithms.** Multinomial logistic (softmax) regression in float64 numpy, plain SGD
with the same learning rate for every algorithm (0.1 on digits, 0.01 on synthetic: FedProx's).
FedAvg (sample-weighted mean); FedProx (the device adds ``mu * (w - w_global)`` to its gradient,
coordinator FedAvg; ``mu = 1``, the value Li et al. found best on Synthetic and on MNIST among
{0.001, 0.01, 0.1, 1}, and ``mu = 0.01``, a mild one); SCAFFOLD (``Scaffold(num_devices=N)``:
option II, uniform means as in the paper's Algorithm 1, server lr 1); SCAFFOLD with
sample-weighted means (``total_samples=`` all devices' samples, so ``c`` stays their weighted mean);
FedNova (``FedNova()``, plain SGD: ``a_k = K_k``).

**Measured**, over the seeds (each its own split, local work and initial weights): test
accuracy of the merged model after the last round, mean (min-max); the training loss of the
merged model on every device's training data pooled (the federated objective), mean; the
first round reaching ``--target-*`` test accuracy, median (a seed never reaching it counts
as more than the rounds); wall seconds per run (this machine is shared: indicative only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's fedsync, whatever is installed

from fedsync import FedArrays  # noqa: E402
from fedsync.coordinator.simulation import device_id, run_simulation  # noqa: E402
from fedsync.demo.data import load_split  # noqa: E402
from fedsync.errors import RoundFailed  # noqa: E402
from fedsync.strategies import FedAvg, FedNova, Scaffold, Strategy, fednova, scaffold  # noqa: E402

ALGORITHMS = ["FedAvg", "FedProx mu=0.01", "FedProx mu=1", "SCAFFOLD", "SCAFFOLD weighted", "FedNova"]
MU = {"FedProx mu=0.01": 0.01, "FedProx mu=1": 1.0}


@dataclass
class Task:
    """One data set split over devices, with each device's local epochs and the SGD settings."""

    name: str
    shards: list[tuple[np.ndarray, np.ndarray]]
    x_test: np.ndarray
    y_test: np.ndarray
    epochs: list[int]  # E_k, drawn once per device
    lr: float
    batch: int
    per_round: int
    seed: int
    classes: int = 10
    x_train: np.ndarray = field(init=False)
    y_train: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.x_train = np.concatenate([x for x, _ in self.shards])
        self.y_train = np.concatenate([y for _, y in self.shards])

    @property
    def features(self) -> int:
        return int(self.x_test.shape[1])

    def steps(self, k: int) -> int:
        """``K_k``: the minibatch steps device ``k`` takes each round."""
        return self.epochs[k] * math.ceil(len(self.shards[k][1]) / self.batch)


def draw_epochs(devices: int, most: int, seed: int) -> list[int]:
    return np.random.default_rng([seed, 7]).integers(1, most + 1, devices).tolist()


def digits_task(seed: int, devices: int = 20, per_round: int = 10, most_epochs: int = 5) -> Task:
    """Non-IID digits: Dirichlet(0.1) labels over ``devices`` (fedsync/demo/data.py)."""
    split = load_split(devices, 0.1, seed)
    shards = [(s.x.astype(np.float64), s.y) for s in split.shards]
    return Task(
        "digits",
        shards,
        split.x_test.astype(np.float64),
        split.y_test,
        draw_epochs(devices, most_epochs, seed),
        lr=0.1,
        batch=32,
        per_round=per_round,
        seed=seed,
    )


def synthetic_task(seed: int, devices: int = 30, per_round: int = 10, most_epochs: int = 10) -> Task:
    """Synthetic(1,1) of Li et al. 2020 (the module docstring), 90% of each device's samples for training."""
    rng = np.random.default_rng([seed, 11])
    dim, classes, alpha, beta = 60, 10, 1.0, 1.0
    sizes = rng.lognormal(4, 2, devices).astype(int) + 50
    mean_w = rng.normal(0, alpha, devices)
    centre = rng.normal(0, beta, devices)
    scale = np.sqrt(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)  # cov = diag(j^-1.2)
    shards, tests_x, tests_y = [], [], []
    for k in range(devices):
        w = rng.normal(mean_w[k], 1, (dim, classes))
        b = rng.normal(mean_w[k], 1, classes)
        mean_x = rng.normal(centre[k], 1, dim)
        x = mean_x + rng.standard_normal((sizes[k], dim)) * scale
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone: its argmax is the logits'
        cut = int(0.9 * sizes[k])
        shards.append((x[:cut], y[:cut]))
        tests_x.append(x[cut:])
        tests_y.append(y[cut:])
    return Task(
        "synthetic",
        shards,
        np.concatenate(tests_x),
        np.concatenate(tests_y),
        draw_epochs(devices, most_epochs, seed),
        lr=0.01,
        batch=10,
        per_round=per_round,
        seed=seed,
    )


def initial(task: Task) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([task.seed, 3])
    return {"w": rng.normal(0, 0.01, (task.features, task.classes)), "b": np.zeros(task.classes)}


def loss_and_gradient(model: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, Any]]:
    """Mean cross-entropy of softmax regression on ``(x, y)`` and its gradient by array name."""
    logits = x @ model["w"] + model["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(y))
    loss = float(-np.log(p[rows, y] + 1e-300).mean())
    p[rows, y] -= 1.0
    p /= len(y)
    return loss, {"w": x.T @ p, "b": p.sum(axis=0)}


def measure(model: dict[str, np.ndarray], task: Task) -> dict[str, float]:
    """Test accuracy and the federated objective (training loss over every device's data pooled)."""
    accuracy = float((np.argmax(task.x_test @ model["w"] + model["b"], axis=1) == task.y_test).mean())
    loss, _ = loss_and_gradient(model, task.x_train, task.y_train)
    return {"accuracy": accuracy, "train_loss": loss}


def strategy_for(algorithm: str, task: Task) -> Strategy:
    if algorithm == "SCAFFOLD":
        return Scaffold(num_devices=len(task.shards))
    if algorithm == "SCAFFOLD weighted":
        return Scaffold(num_devices=len(task.shards), total_samples=sum(len(y) for _, y in task.shards))
    if algorithm == "FedNova":
        return FedNova()
    return FedAvg()


def device_function(algorithm: str, task: Task) -> Callable[[int], FedArrays]:
    """``device_fn(k)`` for ``run_simulation``: device ``k``'s FedArrays, whose train runs ``algorithm``."""
    mu = MU.get(algorithm, 0.0)
    controlled = algorithm.startswith("SCAFFOLD")

    def device_fn(k: int) -> FedArrays:
        x, y = task.shards[k]

        def train(model: dict[str, np.ndarray], config: dict[str, Any]) -> tuple[int, dict[str, float]]:
            epochs, lr = int(config["epochs"]), float(config["lr"])
            fix = scaffold.correction(fed) if controlled else {}
            start = (fed.global_weights() or {}) if mu else {}
            rng = np.random.default_rng([task.seed, int(config["round"]), k])
            steps, losses = 0, []
            for _ in range(epochs):
                order = rng.permutation(len(y))
                for first in range(0, len(y), task.batch):
                    batch = order[first : first + task.batch]
                    loss, grads = loss_and_gradient(model, x[batch], y[batch])
                    losses.append(loss)
                    for name, g in grads.items():
                        if mu:
                            g += mu * (model[name] - start[name])
                        if controlled:
                            g += fix[name]
                        model[name] -= lr * g
                    steps += 1
            if controlled:
                scaffold.finish(fed, steps=steps, lr=lr)
            elif algorithm == "FedNova":
                fednova.finish(fed, steps=steps)
            return len(y), {"local_loss": float(np.mean(losses))}

        # FedArrays' hint says train(model); train(model, config) is documented and works (report).
        fed = FedArrays(initial(task), train, strategy=strategy_for(algorithm, task))
        return fed

    return device_fn


def run_one(algorithm: str, task: Task, rounds: int, workers: int) -> dict[str, Any]:
    """One run of ``rounds`` rounds; the merged model's test accuracy and training loss after each."""
    curve: list[dict[str, float]] = []

    def evaluate_fn(model: dict[str, np.ndarray], server_round: int) -> dict[str, float]:
        measured = measure(model, task)
        curve.append(measured)
        return measured

    def config(server_round: int, device: str) -> dict[str, Any]:
        return {"epochs": task.epochs[device_id(device)], "lr": task.lr, "round": server_round}

    data = FedArrays(initial(task), strategy=strategy_for(algorithm, task))
    started = time.monotonic()
    error = None
    try:
        run_simulation(
            device_function(algorithm, task),
            len(task.shards),
            rounds,
            data=data,
            devices_per_round=task.per_round,
            seed=task.seed,
            workers=workers,
            config=config,
            evaluate_fn=evaluate_fn,
            progress=False,
        )
    except RoundFailed as exc:  # a diverged run (a non-finite reply) is reported, not hidden
        error = str(exc)[:300]
    return {
        "accuracy": [c["accuracy"] for c in curve],
        "train_loss": [c["train_loss"] for c in curve],
        "seconds": time.monotonic() - started,
        "error": error,
    }


def first_reaching(accuracies: list[float], target: float) -> int | None:
    return next((i + 1 for i, a in enumerate(accuracies) if a >= target), None)


def _final(run: dict[str, Any], key: str, rounds: int) -> float:
    values = run[key]
    return values[-1] if len(values) == rounds and math.isfinite(values[-1]) else math.nan


def _spread(values: list[float], form: str = "{:.3f}") -> str:
    """``mean (min-max)`` of the finite values; ``-`` when none is."""
    shown = [v for v in values if math.isfinite(v)]
    if not shown:
        return "-"
    return f"{form.format(np.mean(shown))} ({form.format(min(shown))}-{form.format(max(shown))})"


def table(results: dict[str, Any], targets: dict[str, float], rounds: dict[str, int]) -> str:
    """A Markdown row per data set and algorithm: final accuracy, final training loss, rounds to target, seconds."""
    lines = [
        "| data set | algorithm | test accuracy after the last round: mean (min-max) | training loss: mean (min-max) "
        "| rounds to target: median (per seed) | seconds per run |",
        "|---|---|---|---|---|---|",
    ]
    for name, cell in results.items():
        n, target = rounds[name], targets[name]
        for algorithm, runs in cell["runs"].items():
            acc = [_final(run, "accuracy", n) for run in runs]
            loss = [_final(run, "train_loss", n) for run in runs]
            reached = [first_reaching(run["accuracy"], target) for run in runs]
            median = float(np.median([r if r is not None else math.inf for r in reached]))
            per_seed = " / ".join(str(r or "-") for r in reached)
            failed = sum(run["error"] is not None for run in runs)
            accuracy = _spread(acc, "{:.3f}")
            lines.append(
                f"| {name} ({n} rounds, target {target:.0%}) | {algorithm} | {accuracy}"
                f"{f' ({failed} run(s) failed)' if failed else ''} | "
                f"{_spread(loss)} | "
                f"{f'{median:g}' if math.isfinite(median) else f'> {n}'} ({per_seed}) | "
                f"{np.mean([run['seconds'] for run in runs]):.1f} |"
            )
    return "\n".join(lines)


def plot(results: dict[str, Any], targets: dict[str, float], path: Path) -> bool:
    """Mean test accuracy and training loss against the round, a column per data set; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6.5 * len(results), 8), squeeze=False)
    for column, (name, cell) in enumerate(results.items()):
        for algorithm, runs in cell["runs"].items():
            for row, key in enumerate(("accuracy", "train_loss")):
                curves = [run[key] for run in runs if run["error"] is None]
                if curves:
                    mean = np.mean(np.array(curves), axis=0)
                    axes[row][column].plot(np.arange(1, len(mean) + 1), mean, label=algorithm)
        axes[0][column].axhline(targets[name], color="grey", linestyle=":", linewidth=1)
        axes[0][column].set_title(f"{name}: {len(cell['seeds'])} seeds (mean)")
        axes[0][column].set_ylabel("test accuracy")
        axes[1][column].set_ylabel("training loss (all devices' data)")
        axes[1][column].set_yscale("log")
        axes[1][column].set_xlabel("round")
        for row in (0, 1):
            axes[row][column].grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark as the command line asks; print the table. Returns the exit status."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default="digits,synthetic", help="comma-separated: digits, synthetic")
    parser.add_argument(
        "--algorithms", default=",".join(ALGORITHMS), help="comma-separated, from: " + ", ".join(ALGORITHMS)
    )
    parser.add_argument(
        "--seeds", type=int, default=5, help="how many seeds (0, 1, ...): each its own split, work, init"
    )
    parser.add_argument("--rounds-digits", type=int, default=30)
    parser.add_argument("--rounds-synthetic", type=int, default=50)
    parser.add_argument("--target-digits", type=float, default=0.9)
    parser.add_argument("--target-synthetic", type=float, default=0.7)
    parser.add_argument("--workers", type=int, default=2, help="devices training at once (threads)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, 1 seed, 6 devices, 3 a round")
    parser.add_argument("--plot", type=Path, default=HERE / "stateful.png", help="'none' to skip")
    parser.add_argument("--json", type=Path, default=None, help="also write every curve here")
    args = parser.parse_args(argv)

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    makers = {"digits": digits_task, "synthetic": synthetic_task}
    unknown += [d for d in datasets if d not in makers]
    if unknown:
        parser.error(
            f"unknown {', '.join(map(repr, unknown))}; "
            f"algorithms: {', '.join(ALGORITHMS)}; data sets: digits, synthetic"
        )
    rounds = {"digits": args.rounds_digits, "synthetic": args.rounds_synthetic}
    targets = {"digits": args.target_digits, "synthetic": args.target_synthetic}
    shape: dict[str, int] = {}
    if args.quick:
        rounds, args.seeds = {name: 2 for name in rounds}, 1
        shape = {"devices": 6, "per_round": 3, "most_epochs": 2}

    results: dict[str, Any] = {}
    started = time.monotonic()
    for name in datasets:
        cell = results[name] = {"seeds": [], "runs": {a: [] for a in algorithms}}
        for seed in range(args.seeds):
            task = makers[name](seed, **shape)
            sizes = [len(y) for _, y in task.shards]
            steps = [task.steps(k) for k in range(len(sizes))]
            cell["seeds"].append({"seed": seed, "samples": sizes, "epochs": task.epochs, "steps": steps})
            print(
                f"{name} seed {seed}: samples {min(sizes)}-{max(sizes)} (total {sum(sizes)}), "
                f"epochs {task.epochs}, steps a round {min(steps)}-{max(steps)}",
                flush=True,
            )
            for algorithm in algorithms:
                run = run_one(algorithm, task, rounds[name], args.workers)
                cell["runs"][algorithm].append(run)
                print(
                    f"  {algorithm:18s} accuracy {run['accuracy'][-1] if run['accuracy'] else math.nan:.3f}, "
                    f"training loss {run['train_loss'][-1] if run['train_loss'] else math.nan:.4f}, "
                    f"{run['seconds']:.1f} s" + (f" (failed: {run['error']})" if run["error"] else ""),
                    flush=True,
                )
    elapsed = time.monotonic() - started
    print()
    print(table(results, targets, rounds))
    print(f"\ntotal {elapsed:.0f} s; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if str(args.plot) != "none":
        print(
            f"plot: {args.plot}" if plot(results, targets, args.plot) else "plot: skipped (matplotlib is not installed)"
        )
    if args.json is not None:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results, "seconds": elapsed})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
