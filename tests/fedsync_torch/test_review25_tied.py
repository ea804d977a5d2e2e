"""Review of #25 item 1 with torch: a parameter tied to another (one tensor under two names) split by ``shared=``.

Tied weights are common (a language model's output head is its input embedding). When ``shared=`` sends
one name and keeps the other local, the "local" layer is the shared tensor: the coordinator's values land
in it and its values leave the device. That must be refused with the reason (or the tie respected).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
FedTorch = pytest.importorskip("fedsync_torch").FedTorch

SHARED = {"exclude": ["1.weight"]}  # keep the "head" local, FedPer-style


def tied(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False), torch.nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight  # one tensor, two names
    return model


@pytest.mark.xfail(
    strict=True,
    reason="review25: shared= splits a tied parameter without a word (_sharing.select works on names): the "
    "coordinator's payload overwrites the 'local' layer, which is the same tensor as the shared one",
)
def test_a_local_layer_tied_to_a_shared_one_is_refused_or_left_alone():
    try:
        device = FedTorch(tied(1), lambda model: 1, shared=SHARED)
        coordinator = FedTorch(tied(2), shared=SHARED)
        payload = coordinator.serialize(1)
    except (ValueError, TypeError) as exc:  # refused up front, naming the tie: acceptable
        assert "tied" in str(exc) or "same" in str(exc)
        return
    local_before = device.model[1].weight.detach().clone()
    device.check(payload, 1)
    device.receive(payload, 1)
    assert torch.equal(device.model[1].weight.detach(), local_before), "the coordinator overwrote a local layer"
