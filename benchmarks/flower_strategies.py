"""Cross-check fedsync's strategies against Flower 1.42's own aggregation code, on the same random inputs.

Usage::

    bash benchmarks/setup_flower.sh            # once: benchmarks/.venv-flower with flwr 1.42
    python benchmarks/flower_strategies.py [--seed 0] [--replies 9]

Flower runs in its own venv, as a subprocess: the inputs go to it as ``.npy`` files
(read with ``allow_pickle=False``) plus a JSON file of sample counts and
parameters, and its results come back the same way. Never pickle.

For each strategy both have, the script prints the largest absolute and relative
difference. Rows marked ``(as the paper)`` differ on purpose: fedsync follows the
paper where Flower does not (docs/strategies.md explains each); their
``aligned`` rows run Flower with that one difference undone and must agree to float
tolerance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fedsync.strategies import Bulyan, FedAdagrad, FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, FedYogi, Krum, MultiKrum

VENV_PYTHON = ROOT / "benchmarks" / ".venv-flower" / "bin" / "python"
SHAPES = [(64, 32), (32,), (10, 3, 3)]
ROUNDS = 3

FLOWER_SIDE = r'''
import json, sys
from pathlib import Path
import numpy as np
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.strategy import FedAdagrad, FedAdam, FedAvgM, FedYogi
from flwr.server.strategy.aggregate import (
    aggregate, aggregate_bulyan, aggregate_krum, aggregate_median, aggregate_trimmed_avg,
)

folder = Path(sys.argv[1])
spec = json.loads((folder / "spec.json").read_text())
shapes, f, beta, m = spec["shapes"], spec["f"], spec["beta"], spec["m"]

def load(round_, i):
    return [np.load(folder / f"r{round_}_{i}_{j}.npy", allow_pickle=False) for j in range(len(shapes))]

def results(round_, weights):
    return [(load(round_, i), n) for i, n in enumerate(weights)]

def save(name, arrays):
    for j, a in enumerate(arrays):
        np.save(folder / f"out_{name}_{j}.npy", np.asarray(a), allow_pickle=False)

w, equal = spec["samples"][0], [1] * len(spec["samples"][0])
save("fedavg", aggregate(results(0, w)))
save("fedmedian", aggregate_median(results(0, w)))
save("fedtrimmedavg", aggregate_trimmed_avg(results(0, w), beta))
save("krum", aggregate_krum(results(0, w), f, 0))
save("multikrum", aggregate_krum(results(0, w), f, m))
save("multikrum_equal", aggregate_krum(results(0, equal), f, m))
save("bulyan", aggregate_bulyan(results(0, w), f, aggregate_krum, to_keep=0))

def fit(strategy, rounds, before_round=None):
    for r in range(rounds):
        if before_round is not None:
            before_round(strategy, r + 1)
        res = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), n, {})) for a, n in results(r, spec["samples"][r])]
        params, _ = strategy.aggregate_fit(r + 1, res, [])
    return parameters_to_ndarrays(params)

x0 = [np.load(folder / f"x0_{j}.npy", allow_pickle=False) for j in range(len(shapes))]
init = ndarrays_to_parameters(x0)
o = spec["opt"]
save("fedavgm", fit(FedAvgM(initial_parameters=init, server_learning_rate=o["lr"], server_momentum=o["momentum"]), spec["rounds"]))

def aligned(tau, adam):
    """Undo Flower's differences from the paper: v starts at tau**2, and (FedAdam) no bias correction."""
    def before(strategy, rnd):
        if rnd == 1:
            strategy.m_t = [np.zeros_like(x) for x in x0]
            strategy.v_t = [np.full_like(x, tau**2) for x in x0]
        if adam:
            b1, b2 = strategy.beta_1, strategy.beta_2
            strategy.eta = o["eta"] / (np.sqrt(1 - b2 ** (rnd + 1.0)) / (1 - b1 ** (rnd + 1.0)))
    return before

for name, cls, kw, adam in [
    ("fedadam", FedAdam, dict(beta_1=o["beta_1"], beta_2=o["beta_2"]), True),
    ("fedyogi", FedYogi, dict(beta_1=o["beta_1"], beta_2=o["beta_2"]), False),
    ("fedadagrad", FedAdagrad, {}, False),
]:
    make = lambda: cls(initial_parameters=init, eta=o["eta"], tau=o["tau"], **kw)
    save(name, fit(make(), spec["rounds"]))
    save(name + "_aligned", fit(make(), spec["rounds"], aligned(o["tau"], adam)))
'''


def inputs(seed: int, replies: int) -> tuple[list[list[tuple[dict[str, np.ndarray], int]]], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x0 = {f"a{j}": rng.normal(0, 1, shape).astype(np.float32) for j, shape in enumerate(SHAPES)}
    rounds = []
    for _ in range(ROUNDS):
        rounds.append([
            ({f"a{j}": rng.normal(0.1, 1, shape).astype(np.float32) for j, shape in enumerate(SHAPES)}, int(rng.integers(1, 200)))
            for _ in range(replies)
        ])
    return rounds, x0


def fedsync_side(rounds, x0, f: int, beta: float, m: int, opt: dict) -> dict[str, dict[str, np.ndarray]]:
    first = rounds[0]
    equal = [(a, 1) for a, _ in first]
    out = {
        "fedavg": FedAvg().aggregate(x0, iter(first)),
        "fedmedian": FedMedian().aggregate(x0, iter(first)),
        "fedtrimmedavg": FedTrimmedAvg(beta=beta).aggregate(x0, iter(first)),
        "krum": Krum(num_malicious_clients=f).aggregate(x0, iter(first)),
        "multikrum": MultiKrum(num_malicious_clients=f, num_clients_to_keep=m).aggregate(x0, iter(first)),
        "multikrum_equal": MultiKrum(num_malicious_clients=f, num_clients_to_keep=m).aggregate(x0, iter(equal)),
        "bulyan": Bulyan(num_malicious_clients=f).aggregate(x0, iter(first)),
    }
    optimizers = {
        "fedavgm": FedAvgM(server_learning_rate=opt["lr"], server_momentum=opt["momentum"]),
        "fedadam": FedAdam(eta=opt["eta"], beta_1=opt["beta_1"], beta_2=opt["beta_2"], tau=opt["tau"]),
        "fedyogi": FedYogi(eta=opt["eta"], beta_1=opt["beta_1"], beta_2=opt["beta_2"], tau=opt["tau"]),
        "fedadagrad": FedAdagrad(eta=opt["eta"], tau=opt["tau"]),
    }
    for name, strategy in optimizers.items():
        x = dict(x0)
        for replies in rounds:
            x = strategy.aggregate(x, iter(replies))
        out[name] = out[name + "_aligned"] = x
    return out


ROWS = [
    ("FedAvg", "fedavg", ""),
    ("FedMedian", "fedmedian", ""),
    ("FedTrimmedAvg", "fedtrimmedavg", ""),
    ("Krum", "krum", ""),
    ("MultiKrum, random sample counts", "multikrum", "(as the paper: unweighted mean)"),
    ("MultiKrum, equal sample counts", "multikrum_equal", ""),
    ("Bulyan", "bulyan", ""),
    ("FedAvgM, 3 rounds", "fedavgm", ""),
    ("FedAdam, 3 rounds", "fedadam", "(as the paper: no bias correction, v0 = tau^2)"),
    ("FedAdam, aligned", "fedadam_aligned", ""),
    ("FedYogi, 3 rounds", "fedyogi", "(as the paper: v0 = tau^2)"),
    ("FedYogi, aligned", "fedyogi_aligned", ""),
    ("FedAdagrad, 3 rounds", "fedadagrad", "(as the paper: v0 = tau^2)"),
    ("FedAdagrad, aligned", "fedadagrad_aligned", ""),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replies", type=int, default=9, help="replies per round (Bulyan with f=1 needs >= 7)")
    args = parser.parse_args()
    if not VENV_PYTHON.exists():
        sys.exit(f"no Flower venv at {VENV_PYTHON}; run: bash benchmarks/setup_flower.sh")
    f, beta, m = 1, 0.2, args.replies - 1 - 2
    opt = {"lr": 0.7, "momentum": 0.9, "eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    rounds, x0 = inputs(args.seed, args.replies)
    with tempfile.TemporaryDirectory(prefix="fedsync-flower-") as tmp:
        folder = Path(tmp)
        for r, replies in enumerate(rounds):
            for i, (arrays, _) in enumerate(replies):
                for j in range(len(SHAPES)):
                    np.save(folder / f"r{r}_{i}_{j}.npy", arrays[f"a{j}"], allow_pickle=False)
        for j in range(len(SHAPES)):
            np.save(folder / f"x0_{j}.npy", x0[f"a{j}"], allow_pickle=False)
        spec = {"shapes": SHAPES, "f": f, "beta": beta, "m": m, "rounds": ROUNDS, "opt": opt,
                "samples": [[n for _, n in replies] for replies in rounds]}
        (folder / "spec.json").write_text(json.dumps(spec))
        flower = subprocess.run([str(VENV_PYTHON), "-c", FLOWER_SIDE, str(folder)], capture_output=True, text=True,
                                env={"FLWR_TELEMETRY_ENABLED": "0", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if flower.returncode != 0:  # Flower's own warnings are noise otherwise
            sys.exit(f"the Flower side failed:\n{flower.stderr[-4000:]}")
        ours = fedsync_side(rounds, x0, f, beta, m, opt)
        print(f"{args.replies} replies of {sum(int(np.prod(s)) for s in SHAPES)} float32 parameters, f={f}, beta={beta}, "
              f"MultiKrum m={m}, seed {args.seed}; Flower 1.42 vs fedsync")
        print(f"{'strategy':34} {'max |diff|':>12} {'max rel diff':>13}")
        for label, key, note in ROWS:
            theirs = [np.load(folder / f"out_{key}_{j}.npy", allow_pickle=False) for j in range(len(SHAPES))]
            mine = [ours[key][f"a{j}"] for j in range(len(SHAPES))]
            diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) for a, b in zip(mine, theirs))
            scale = max(float(np.max(np.abs(b.astype(np.float64)))) for b in theirs)
            print(f"{label:34} {diff:12.3g} {diff / scale:13.3g}  {note}")


if __name__ == "__main__":
    main()
