"""#25 item 1 with a real PEFT model: LoRA adapters on a small torch model built here (no hub download).

``FedTorch(peft_model, train, shared="trainable")`` sends only the LoRA tensors (bytes asserted), the merged
adapters are the devices' sample-weighted mean, and the frozen base never moves.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import Federated
from fedsync.transports.local import LocalRemote

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft", reason="the peft extra is not installed: pip install 'fedsync[peft]'")
FedTorch = pytest.importorskip("fedsync_torch").FedTorch


class Tiny(torch.nn.Module):
    """Two projections and a classifier: LoRA goes on ``q`` and ``v``."""

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(64, 64)
        self.v = torch.nn.Linear(64, 64)
        self.out = torch.nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.q(x)) * torch.tanh(self.v(x)))


def lora_model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same base everywhere, as a device loads the same pretrained weights
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"], lora_dropout=0.0, init_lora_weights=True)
    return peft.get_peft_model(Tiny(), config)


def device(i: int) -> FedTorch:
    model = lora_model()
    rng = np.random.default_rng(i)
    x = torch.from_numpy(rng.standard_normal((64, 64)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 4, 64))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)

    def train(module):
        for _ in range(4):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(module(x), y).backward()
            optimizer.step()
        return 10 * (i + 1)

    return FedTorch(model, train, shared="trainable")


@pytest.mark.slow  # importing peft (and transformers) takes seconds
def test_only_the_lora_tensors_travel_and_merge_to_the_weighted_mean():
    coordinator = FedTorch(lora_model(), shared="trainable")
    shared = coordinator.selection.shared
    assert shared and all(".lora_A." in n or ".lora_B." in n for n in shared), shared
    assert any("base_layer.weight" in n for n in coordinator.selection.frozen)
    lora_bytes = sum(coordinator.model.state_dict()[n].numel() * 4 for n in shared)
    full_bytes = sum(t.numel() * t.element_size() for t in coordinator.model.state_dict().values())
    payload = len(bytes(coordinator.serialize(0)))
    assert lora_bytes <= payload < lora_bytes + 4096  # the adapters and a header, nothing of the base
    assert payload < full_bytes / 2

    devices = [device(i) for i in range(3)]
    base = {n: devices[1].model.state_dict()[n].clone() for n in coordinator.selection.frozen}
    with Federated(coordinator, [LocalRemote(f"local://lora-{i}", device=d) for i, d in enumerate(devices)]) as alg:
        result = alg.round()
    assert not result.failures and result.samples == 60
    assert result.bytes_received < 3 * (lora_bytes + 4096)
    weights = np.array([10.0, 20.0, 30.0]) / 60.0
    for name in shared:
        stacked = np.stack([d.model.state_dict()[name].numpy() for d in devices])
        np.testing.assert_allclose(
            coordinator.model.state_dict()[name].numpy(), np.tensordot(weights, stacked, 1), rtol=1e-6, atol=1e-7
        )
    assert any(not torch.equal(devices[0].model.state_dict()[n], devices[1].model.state_dict()[n]) for n in shared)
    for name, value in base.items():  # the base stayed where it was, on every side
        assert torch.equal(devices[1].model.state_dict()[name], value)
        assert torch.equal(coordinator.model.state_dict()[name], value)
