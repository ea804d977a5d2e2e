"""DP privatizes the floating weights that train; a model with running statistics (BatchNorm) is refused.

Central DP noised BatchNorm's ``running_var`` like a weight: entries went negative and the
model answered NaN in eval mode, without a word. Central DP (the coordinator) and local DP
(the device) now refuse such a model, naming the layer and what to use instead, as Opacus does.
Real torch models (FedTorch).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fedsync import Federated  # noqa: E402
from fedsync.privacy import LocalDP, RunningStatistics, running_statistics  # noqa: E402
from fedsync.strategies import DPAdaptiveClipping, DPFixedClipping, FedAdam  # noqa: E402
from fedsync_torch import FedTorch  # noqa: E402


def model(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = {
        "batch": torch.nn.BatchNorm1d(64),
        "untracked": torch.nn.BatchNorm1d(64, track_running_stats=False),
        "group": torch.nn.GroupNorm(8, 64),
    }[norm]
    return torch.nn.Sequential(torch.nn.Linear(8, 64), layer, torch.nn.ReLU(), torch.nn.Linear(64, 1))


def central(strategy=None, **options):
    return DPFixedClipping(strategy, noise_multiplier=1.0, clipping_norm=0.5, num_sampled_clients=3, seed=1, **options)


@pytest.mark.parametrize(
    "strategy",
    [
        central,
        lambda: central(FedAdam()),
        lambda: DPAdaptiveClipping(noise_multiplier=1.0, num_sampled_clients=3, clipped_count_stddev=1.0, seed=1),
    ],
)
def test_central_dp_refuses_a_batchnorm_model_naming_the_layer(strategy):
    data = FedTorch(model("batch"), None, strategy=strategy())
    with pytest.raises(
        RunningStatistics, match=r"layer '1' keeps running statistics of the data \('1.running_mean'\)"
    ) as refused:
        Federated(data, ["http://127.0.0.1:9"])
    assert isinstance(refused.value, ValueError)
    assert "GroupNorm" in str(refused.value) and "track_running_stats=False" in str(refused.value)


@pytest.mark.parametrize("norm", ["group", "untracked"])
def test_central_dp_over_normalization_without_running_statistics_merges_finite_weights(norm):
    data = FedTorch(model(norm), None, strategy=central())
    Federated(data, ["http://127.0.0.1:9"]).close()  # accepted
    sender = FedTorch(model(norm), None)
    with torch.no_grad():
        for p in sender.model.parameters():
            p.add_(0.1)
    sender.samples = 5
    data.merge([bytes(sender.serialize(2))], 2)
    data.model.eval()
    assert torch.isfinite(data.model(torch.randn(16, 8))).all()


def test_local_dp_refuses_running_statistics_too():
    device = FedTorch(model("batch"), None)
    arrays = device.get_arrays()
    with pytest.raises(RunningStatistics, match="local DP noises the floating weights that train, but layer '1'"):
        LocalDP(clipping_norm=1.0, noise_multiplier=1.0, seed=0).apply(arrays, arrays)
    untracked = FedTorch(model("untracked"), None).get_arrays()
    out = LocalDP(clipping_norm=1.0, noise_multiplier=1.0, seed=0).apply(untracked, untracked)
    assert all(np.isfinite(a).all() for a in out.values())


def test_running_statistics_by_torch_and_keras_names():
    names = [
        "bn.running_mean",
        "bn.running_var",
        "bn.weight",
        "bn.num_batches_tracked",
        "conv.weight",
        "batch_normalization/moving_mean",
        "batch_normalization/moving_variance:0",
        "my_running_mean_gate",
    ]
    assert running_statistics(names) == [
        "bn.running_mean",
        "bn.running_var",
        "batch_normalization/moving_mean",
        "batch_normalization/moving_variance:0",
    ]
