"""#25 item 1 with torch: ``shared="trainable"`` sends the parameters that train and keeps the rest.

A frozen first layer (``requires_grad=False``) stays on the device and is fingerprinted into the specs, so a
device that loaded another base is refused with a readable difference before anything trains; BatchNorm's
running statistics (buffers) stay local, each device's own (FedBN, Li et al. 2021).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import Federated
from fedsync.errors import SpecsMismatch
from fedsync.transports.local import LocalRemote
from fedsync.wire import codec

torch = pytest.importorskip("torch")
FedTorch = pytest.importorskip("fedsync_torch").FedTorch


def net(base_seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(base_seed)
    base = torch.nn.Linear(6, 8)
    torch.manual_seed(100)
    model = torch.nn.Sequential(base, torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    base.requires_grad_(False)
    return model.double()


def device(i: int, base_seed: int = 0) -> FedTorch:
    rng = np.random.default_rng(i)
    x = torch.from_numpy(rng.standard_normal((32, 6)) + i)
    y = torch.from_numpy(rng.integers(0, 3, 32))
    model = net(base_seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)

    def train(module):
        module.train()
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(x), y).backward()
            optimizer.step()
        return 32 + 8 * i

    return FedTorch(model, train, shared="trainable")


def test_only_trainable_parameters_travel_and_merge_to_their_weighted_mean_while_the_rest_stay():
    coordinator = FedTorch(net(), shared="trainable")
    names = [w["name"] for w in coordinator.summary(0)["weights"]]
    assert names == ["1.weight", "1.bias", "3.weight", "3.bias"]  # not the frozen 0.*, not BatchNorm's buffers
    assert coordinator.selection.frozen == ("0.weight", "0.bias")
    assert coordinator.selection.local == ("1.running_mean", "1.running_var", "1.num_batches_tracked")
    devices = [device(i) for i in range(3)]
    base = {k: v.clone() for k, v in devices[0].model.state_dict().items() if k.startswith("0.")}
    with Federated(coordinator, [LocalRemote(f"local://d{i}", device=d) for i, d in enumerate(devices)]) as alg:
        result = alg.round()
    assert not result.failures
    arrays, _ = codec.decode(bytes(devices[0].serialize(1)))
    assert sorted(arrays) == sorted(names)
    weights = np.array([32.0, 40.0, 48.0]) / 120.0
    for name in names:  # the merged parameters are the devices' sample-weighted mean
        stacked = np.stack([d.model.state_dict()[name].numpy() for d in devices])
        np.testing.assert_allclose(coordinator.model.state_dict()[name].numpy(), np.tensordot(weights, stacked, 1))
    for d in devices:  # the frozen base was never sent nor written; BatchNorm's statistics are each device's own
        for k, v in base.items():
            assert torch.equal(d.model.state_dict()[k], v)
    means = [d.model.state_dict()["1.running_mean"] for d in devices]
    assert not torch.allclose(means[0], means[1])
    assert torch.equal(coordinator.model.state_dict()["1.running_mean"], torch.zeros(8, dtype=torch.float64))


def test_a_device_with_another_frozen_base_is_refused_naming_the_frozen_part_before_it_trains():
    trained = []
    other = device(0, base_seed=1)
    honest = other.train
    other.train = lambda module: trained.append(1) or honest(module)
    coordinator = FedTorch(net(), shared="trainable")
    with Federated(coordinator, [LocalRemote("local://other-base", device=other)]) as alg:
        with pytest.raises(SpecsMismatch) as caught:
            alg.round()
    message = str(caught.value)
    assert "frozen parameters differ" in message and "another base model" in message, message
    assert trained == []  # nothing was sent, nothing trained


def test_the_frozen_fingerprint_is_computed_once_and_pins_the_base():
    a, b = FedTorch(net(), shared="trainable"), FedTorch(net(base_seed=2), shared="trainable")
    assert a.specs(0) != b.specs(0)
    assert a.summary(0)["frozen"]["arrays"] == 2 and a.summary(0)["frozen"] != b.summary(0)["frozen"]
    first = a.frozen_fingerprint()
    with torch.no_grad():
        a.model[0].weight.add_(1.0)  # the base changed after the first use: the fingerprint stays (computed once)
    assert a.frozen_fingerprint() == first
