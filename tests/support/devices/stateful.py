"""SCAFFOLD and FedNova as their papers write them, in plain numpy, and the fedsync devices that run them.

Shared by tests/strategies/test_scaffold_fednova.py and tests/fedsync_torch/test_scaffold_fednova.py. The
references are written from the papers alone (SCAFFOLD: Karimireddy et al. 2020, Algorithm 1, option II;
FedNova: Wang et al. 2020, eq. 8-9 with plain SGD); each takes the devices fedsync sampled in each round.
"""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays
from fedsync.coordinator.simulation import device_id
from fedsync.strategies import FedNova, Scaffold, fednova, scaffold

N, DIM, LR = 6, 5, 0.05


def device_data(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Least squares on each device's own, differently shifted data (non-IID): float64 throughout."""
    rng = np.random.default_rng(40 + i)
    x = rng.standard_normal((10 + 3 * i, DIM)) + i * 0.3
    y = x @ rng.standard_normal(DIM) + i
    return x, y


def gradient(w: np.ndarray, i: int) -> np.ndarray:
    x, y = device_data(i)
    return x.T @ (x @ w - y) / len(x)


def local_steps(i: int) -> int:
    return 2 + i  # heterogeneous local work: what FedNova corrects


def scaffold_device(i: int) -> FedArrays:
    strategy = Scaffold(num_devices=N)

    def train(arrays):
        fix = scaffold.correction(fed)
        for _ in range(local_steps(i)):
            arrays["w"] -= LR * (gradient(arrays["w"], i) + fix["w"])
        scaffold.finish(fed, steps=local_steps(i), lr=LR)
        return len(device_data(i)[0])

    fed = FedArrays({"w": np.zeros(DIM)}, train, strategy=strategy)
    return fed


def samples(i: int) -> int:
    return len(device_data(i)[0])


TOTAL = sum(samples(i) for i in range(N))


def scaffold_reference(sampled: list[list[int]], server_lr: float = 1.0, weighted: bool = False):
    """Algorithm 1 (option II) of the paper, uniform means, in float64; returns ``(x, c, [c_i])``.

    ``weighted``: the means weigh by samples and ``c`` moves by ``sum_S n_i / n * dc_i`` (n: all devices' samples).
    """
    x, c = np.zeros(DIM), np.zeros(DIM)
    ci = [np.zeros(DIM) for _ in range(N)]
    for devices in sampled:
        dy, dc = [], []
        for i in devices:
            y = x.copy()
            for _ in range(local_steps(i)):
                y -= LR * (gradient(y, i) - ci[i] + c)
            new = ci[i] - c + (x - y) / (local_steps(i) * LR)
            dy.append(y - x)
            dc.append(new - ci[i])
            ci[i] = new
        if weighted:
            n = np.array([samples(i) for i in devices], float)
            x = x + server_lr * (n / n.sum()) @ np.array(dy)
            c = c + (n / TOTAL) @ np.array(dc)
        else:
            x = x + server_lr * np.mean(dy, axis=0)
            c = c + len(devices) / N * np.mean(dc, axis=0)
    return x, c, ci


def sampled_ids(history) -> list[list[int]]:
    return [sorted(device_id(url) for url in r.sampled) for r in history]


def fedavg_reference(sampled: list[list[int]]) -> np.ndarray:
    x = np.zeros(DIM)
    for devices in sampled:
        ys = []
        for i in devices:
            y = x.copy()
            for _ in range(local_steps(i)):
                y -= LR * gradient(y, i)
            ys.append(y)
        x = np.mean(ys, axis=0)
    return x


def fednova_device(i: int) -> FedArrays:
    def train(arrays):
        for _ in range(local_steps(i)):
            arrays["w"] -= LR * gradient(arrays["w"], i)
        fednova.finish(fed, steps=local_steps(i))
        return len(device_data(i)[0])

    fed = FedArrays({"w": np.zeros(DIM)}, train, strategy=FedNova())
    return fed


def fednova_reference(sampled: list[list[int]]) -> np.ndarray:
    """x <- x - tau_eff * sum_i p_i (x - y_i) / tau_i, tau_eff = sum_i p_i tau_i, p_i by samples."""
    x = np.zeros(DIM)
    for devices in sampled:
        n = np.array([len(device_data(i)[0]) for i in devices], float)
        p = n / n.sum()
        tau = np.array([local_steps(i) for i in devices], float)
        d = []
        for i in devices:
            y = x.copy()
            for _ in range(local_steps(i)):
                y -= LR * gradient(y, i)
            d.append((x - y) / local_steps(i))
        x = x - (p @ tau) * (p @ np.array(d))
    return x


def fedavg_weighted_reference(sampled: list[list[int]]) -> np.ndarray:
    x = np.zeros(DIM)
    for devices in sampled:
        n = np.array([len(device_data(i)[0]) for i in devices], float)
        ys = []
        for i in devices:
            y = x.copy()
            for _ in range(local_steps(i)):
                y -= LR * gradient(y, i)
            ys.append(y)
        x = (n / n.sum()) @ np.array(ys)
    return x


def research_device(i: int) -> FedArrays:
    """A SCAFFOLD device taking its local steps from its own config, with a federated evaluation."""
    x, y = device_data(i)

    def train(arrays, config):
        steps = int(config["steps"])
        fix = scaffold.correction(fed)
        for _ in range(steps):
            arrays["w"] -= LR * (gradient(arrays["w"], i) + fix["w"])
        scaffold.finish(fed, steps=steps, lr=LR)
        return len(x)

    def evaluate(arrays):
        return len(x), {"loss": float(np.mean((x @ arrays["w"] - y) ** 2) / 2)}

    fed = FedArrays({"w": np.zeros(DIM)}, train, evaluate=evaluate, strategy=Scaffold(num_devices=N))
    return fed


def every_other_first(server_round: int, available: list[str], rng) -> list[str]:
    """A custom sampler: the even devices in odd rounds, then three drawn by the coordinator's generator."""
    evens = [url for url in available if device_id(url) % 2 == 0]
    return evens if server_round % 2 else rng.sample(available, 3)


def steps_by_device(server_round: int, device: str) -> dict[str, int]:
    """Per-device instructions: a straggler does one step, the others more each round."""
    return {"steps": 1 if device_id(device) == 1 else 2 + server_round}
