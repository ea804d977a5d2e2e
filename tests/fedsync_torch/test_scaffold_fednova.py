"""SCAFFOLD and FedNova with a real torch model: the gradient correction goes into ``p.grad`` and the result
equals the numpy version of each paper (tests/strategies/test_scaffold_fednova.py), float64 throughout."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync.coordinator.simulation import run_simulation
from fedsync.strategies import FedNova, Scaffold, fednova, scaffold
from tests.support.devices.stateful import (
    DIM,
    LR,
    N,
    device_data,
    fednova_reference,
    local_steps,
    sampled_ids,
    scaffold_reference,
)

torch = pytest.importorskip("torch")
FedTorch = pytest.importorskip("fedsync_torch").FedTorch


def model() -> torch.nn.Module:
    layer = torch.nn.Linear(DIM, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.zero_()
    return layer


def torch_device(kind: str):
    def build(i: int) -> FedTorch:
        x, y = (torch.from_numpy(a) for a in device_data(i))
        net = model()
        optimizer = torch.optim.SGD(net.parameters(), lr=LR)

        def train(module):
            fix = (
                {name: torch.from_numpy(a) for name, a in scaffold.correction(fed).items()}
                if kind == "scaffold"
                else {}
            )
            for _ in range(local_steps(i)):
                optimizer.zero_grad()
                loss = 0.5 * ((module(x).squeeze(1) - y) ** 2).mean()  # its gradient: x.T @ (x @ w - y) / n
                loss.backward()
                for name, p in module.named_parameters():
                    if name in fix:
                        p.grad += fix[name]  # g - c_i + c
                optimizer.step()
            if kind == "scaffold":
                scaffold.finish(fed, steps=local_steps(i), lr=LR)
            else:
                fednova.finish(fed, steps=local_steps(i))
            return len(x)

        fed = FedTorch(net, train, strategy=Scaffold(num_devices=N) if kind == "scaffold" else FedNova())
        return fed

    return build


@pytest.mark.parametrize("kind", ["scaffold", "fednova"])
def test_torch_devices_match_the_papers_numpy_algorithm(kind):
    data = FedTorch(model(), strategy=Scaffold(num_devices=N) if kind == "scaffold" else FedNova())
    history = run_simulation(torch_device(kind), N, 4, data=data, devices_per_round=3, seed=7, progress=False)
    sampled = sampled_ids(history)
    reference = scaffold_reference(sampled)[0] if kind == "scaffold" else fednova_reference(sampled)
    # The numpy reference keeps w as a vector, torch as a (1, DIM) weight: the same numbers.
    np.testing.assert_allclose(data.model.weight.detach().numpy()[0], reference, rtol=1e-10, atol=1e-12)
