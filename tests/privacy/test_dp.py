"""Differential privacy: central DP strategies, local DP on the device, and ε in History (docs/privacy.md)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fedsync import FedArrays, Federated, History, strategies
from fedsync.coordinator._privacy import coordinator_privacy
from fedsync.coordinator.history import RoundResult
from fedsync.privacy import LocalDP, epsilon, round_privacy, update_norm

dp_accounting = pytest.importorskip("dp_accounting")


def model(size: int = 9) -> dict[str, np.ndarray]:
    return {"w": np.zeros(size - 1, np.float32), "b": np.zeros(1, np.float32), "steps": np.zeros((), np.int64)}


def reply(current, update: np.ndarray, steps: int = 7) -> dict[str, np.ndarray]:
    """``current`` moved by the flat ``update`` over its floating arrays, with a different counter."""
    return {"w": current["w"] + update[:-1].astype(np.float32), "b": current["b"] + update[-1:].astype(np.float32), "steps": np.array(steps)}


def test_clipping_bound_holds_and_small_updates_pass_unchanged():
    rng = np.random.default_rng(1)
    current = {k: v + 0.25 if v.dtype.kind == "f" else v for k, v in model(1000).items()}
    clip = 2.0
    for scale in (0.01, 0.05, 1.0, 10.0, 1e4):  # norms about 0.3 .. 3e5: under and over C
        update = rng.standard_normal(1000) * scale
        before = np.linalg.norm(update.astype(np.float32).astype(np.float64))
        dp = strategies.DPFixedClipping(noise_multiplier=0.0, clipping_norm=clip, num_sampled_clients=1)
        merged = dp.aggregate(current, [(reply(current, update), 5)])
        after = update_norm(merged, current)
        assert after <= clip * (1 + 1e-6)
        if before <= clip:
            np.testing.assert_allclose(merged["w"] - current["w"], update[:-1].astype(np.float32), rtol=0, atol=1e-6)
        else:
            assert after == pytest.approx(clip, rel=1e-5)
            # the direction is kept: clipping only scales
            np.testing.assert_allclose((merged["w"] - current["w"]) * before / clip, update[:-1], rtol=1e-3, atol=1e-3 * scale)
        assert merged["steps"] == current["steps"]  # a device's counter never leaves without noise


def test_mean_uses_the_fixed_denominator_and_ignores_sample_counts():
    current = model()
    dp = strategies.DPFixedClipping(noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=4)
    results = [(reply(current, np.full(9, step)), samples) for step, samples in ((0.1, 1), (1.0, 1000), (5.0, 3))]
    merged = dp.aggregate(current, results)
    # norms 0.3 (kept), 3 and 15 (clipped to 1: 1/3 per element); sum / n with n = 4, not 3
    np.testing.assert_allclose(merged["w"], (0.1 + 1 / 3 + 1 / 3) / 4, rtol=1e-6)
    assert dp.last_round["replies"] == 3 and dp.last_round["clipped"] == 2


def test_noise_std_matches_sigma_c_over_n():
    size, sigma, clip, n = 100_000, 1.3, 2.0, 4
    current = {"w": np.full(size, 0.5, np.float64)}
    dp = strategies.DPFixedClipping(noise_multiplier=sigma, clipping_norm=clip, num_sampled_clients=n, seed=7)
    merged = dp.aggregate(current, [({"w": current["w"].copy()}, 1) for _ in range(n)])  # zero updates: pure noise
    noise = merged["w"] - current["w"]
    expected = sigma * clip / n
    # s²/σ² ~ χ²(N-1)/(N-1): mean 1, std sqrt(2/(N-1)); 5 standard deviations either way.
    ratio = noise.var(ddof=1) / expected**2
    assert abs(ratio - 1) < 5 * math.sqrt(2 / (size - 1)), ratio
    assert abs(noise.mean()) < 5 * expected / math.sqrt(size)
    assert dp.last_round["noise_std"] == pytest.approx(expected)


def test_local_dp_noise_and_clip():
    size, sigma, clip = 100_000, 0.8, 0.5
    g = {"w": np.zeros(size, np.float64)}
    x = {"w": np.full(size, 3.0)}  # norm 3 * sqrt(N): clipped to C, then noise of std σC
    out = LocalDP(clipping_norm=clip, noise_multiplier=sigma, seed=3).apply(x, g)["w"]
    noise = out - clip / math.sqrt(size)
    ratio = noise.var(ddof=1) / (sigma * clip) ** 2
    assert abs(ratio - 1) < 5 * math.sqrt(2 / (size - 1)), ratio
    assert abs(noise.mean()) < 5 * sigma * clip / math.sqrt(size)


def test_server_optimizer_steps_along_the_privatized_mean():
    current = model()
    dp = strategies.DPFixedClipping(strategies.FedAvgM(server_learning_rate=0.5), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=1)
    merged = dp.aggregate(current, [(reply(current, np.full(9, 5.0)), 1)])
    np.testing.assert_allclose(merged["w"], 0.5 / 3, rtol=1e-6)  # half the clipped step
    with pytest.raises(ValueError, match="LocalDP"):
        strategies.DPFixedClipping(strategies.FedMedian(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=3)


def test_adaptive_clipping_geometric_update_and_state():
    current = model()
    dp = strategies.DPAdaptiveClipping(
        noise_multiplier=0.0, num_sampled_clients=4, initial_clipping_norm=1.0, clipped_count_stddev=0.0,
        target_clipped_quantile=0.5, clip_norm_lr=0.2,
    )
    dp.aggregate(current, [(reply(current, np.full(9, s)), 1) for s in (0.1, 1.0, 2.0, 5.0)])
    assert dp.clipping_norm == pytest.approx(math.exp(-0.2 * (0.25 - 0.5)))  # 1 of 4 under C
    state = dp.state()
    other = strategies.DPAdaptiveClipping(noise_multiplier=0.0, num_sampled_clients=4, clipped_count_stddev=0.0)
    other.load_state(state, {k: (v.shape, v.dtype) for k, v in current.items()})
    assert other.clipping_norm == dp.clipping_norm
    with pytest.raises(ValueError, match="clipping_norm"):
        other.check_state({"dp/clipping_norm": np.array(-1.0)}, {})
    # the count's noise is paid for: σ_Δ = (σ⁻² - (2σ_b)⁻²)^(-1/2)
    noisy = strategies.DPAdaptiveClipping(noise_multiplier=1.0, num_sampled_clients=40)
    assert noisy.update_noise_multiplier == pytest.approx((1 - 1 / 16) ** -0.5)
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        strategies.DPAdaptiveClipping(noise_multiplier=1.0, num_sampled_clients=4)


def independent_epsilon(sigma: float, q: float, rounds: int, delta: float) -> float:
    accountant = dp_accounting.rdp.RdpAccountant()
    for _ in range(rounds):
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    return accountant.get_epsilon(delta)


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_epsilon_matches_dp_accounting():
    rows: list = [None]  # a round without DP costs nothing
    for k in range(1, 4):
        row = round_privacy(rows, 1.1, Fraction(1, 4), 1e-5)
        rows.append(row)
        assert row["rounds"] == k
        assert row["epsilon"] == pytest.approx(independent_epsilon(1.1, 0.25, k, 1e-5), rel=1e-9)
    assert epsilon(2.0, [(1, 5)], 1e-6) == pytest.approx(
        dp_accounting.rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(2.0), 5).get_epsilon(1e-6), rel=1e-9)
    fed = Federated(FedArrays(model(), strategy=strategies.DPFixedClipping(noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2)),
                    [f"http://127.0.0.1:{9 + i}" for i in range(5)], fraction=0.3)
    assert coordinator_privacy(fed)["sampling_rate"] == 0.4  # ceil(0.3 * 5) = 2 of 5


def test_history_round_trips_privacy_and_rejects_bad_rows():
    row = round_privacy([], 1.0, Fraction(1, 2), 1e-5)
    history = History([RoundResult(repetition=1), RoundResult(repetition=2, privacy=row)])
    again = History.from_json(history.to_json())
    assert again[1].privacy == row and again[0].privacy is None
    old = '{"rounds": [{"repetition": 1}]}'  # written before the field existed
    assert History.from_json(old)[0].privacy is None
    for bad in ({**row, "epsilon": -1}, {**row, "sampling_rate": 0}, {**row, "extra": 1}, {**row, "rounds": 0}, "x"):
        with pytest.raises(ValueError, match="privacy"):
            RoundResult.from_dict({"repetition": 1, "privacy": bad})


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_round_over_devices_with_central_dp_records_epsilon(devices):
    urls = [devices("tests.support.devices.dp:moving", step, 10).url for step in (0.1, 1.0, 2.0, 5.0)]
    dp = strategies.DPFixedClipping(noise_multiplier=0.01, clipping_norm=1.0, num_sampled_clients=4, delta=1e-5, seed=0)
    fed = FedArrays(model(), strategy=dp)
    with Federated(fed, urls, timeout=30) as alg:
        history = alg.fit(2, progress=False)
    # Each round: norms 3·step; the mean of the clipped updates is (0.1 + 3 * 1/3) / 4 per element.
    np.testing.assert_allclose(fed.model["w"], 2 * 1.1 / 4, atol=0.02)
    assert fed.model["steps"] == 0
    privacy = history[1].privacy
    assert privacy["rounds"] == 2 and privacy["sampling_rate"] == 1.0
    assert privacy["epsilon"] == pytest.approx(
        dp_accounting.rdp.RdpAccountant().compose(dp_accounting.GaussianDpEvent(0.01), 2).get_epsilon(1e-5), rel=1e-9)
    assert History.from_json(history.to_json())[1].privacy == privacy


def test_local_dp_clips_on_the_device(devices):
    url = devices("tests.support.devices.dp:local", 5.0, 10, 1.0, 0.0, 0).url  # update norm 15, clipped to 1
    fed = FedArrays(model())
    with Federated(fed, [url], timeout=30) as alg:
        result = alg.round()
    assert result.privacy is None  # local DP is the device's: the coordinator accounts nothing
    np.testing.assert_allclose(fed.model["w"], 1 / 3, rtol=1e-6)
    assert update_norm(fed.model, model()) == pytest.approx(1.0, rel=1e-6)
    assert fed.model["steps"] == 0  # the device's counter went back as received


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_the_privacy_doc_example_prints_what_it_shows():
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "privacy.md").read_text().split("## Example", 1)[1]
    code, shown = re.findall(r"```(?:python)?\n(.*?)```", text, re.S)[:2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    assert out == shown


def test_adaptive_clipping_norm_and_optimizer_state_survive_a_checkpoint(tmp_path):
    from fedsync.coordinator import checkpoint

    def strategy():
        return strategies.DPAdaptiveClipping(strategies.FedAdam(), noise_multiplier=0.0, num_sampled_clients=2,
                                             initial_clipping_norm=1.0, clipped_count_stddev=0.0)

    fed = FedArrays(model(), strategy=strategy())
    current = fed.get_arrays()
    fed.set_arrays(fed.strategy.aggregate(current, [(reply(current, np.full(9, s)), 1) for s in (0.1, 0.2)]))
    fed.samples = 2  # as merge() records
    assert fed.strategy.clipping_norm != 1.0  # both under C: it shrank
    checkpoint.save(tmp_path, fed, 1, History([RoundResult(repetition=1, privacy=round_privacy([], 1.0, Fraction(1), 1e-5))]))
    again = FedArrays(model(), strategy=strategy())
    repetition, history = checkpoint.load(tmp_path, again)
    assert repetition == 1 and history[0].privacy["rounds"] == 1
    assert again.strategy.clipping_norm == fed.strategy.clipping_norm
    saved, restored = fed.strategy.state(), again.strategy.state()
    assert saved.keys() == restored.keys() and "m/w" in saved
    for key in saved:
        np.testing.assert_array_equal(saved[key], restored[key])
    np.testing.assert_array_equal(again.model["w"], fed.model["w"])


def test_local_dp_on_a_torch_model_clips_floats_and_returns_counters_as_received():
    pytest.importorskip("torch")
    from fedsync.privacy import RunningStatistics
    from fedsync_torch import FedTorch
    from tests.support.devices import torch_models as devices_torch

    coordinator = FedTorch(devices_torch.with_batchnorm())
    device = devices_torch.constant(5.0, 10, 3)  # every float to 5, num_batches_tracked to 3
    device.local_dp = LocalDP(clipping_norm=0.5, noise_multiplier=0.0)
    # BatchNorm's running statistics are refused (#22: noised, a variance turns negative): see docs/privacy.md.
    with pytest.raises(RunningStatistics, match="local DP noises the floating weights that train"):
        device.receive(coordinator.serialize(1), 1)


def test_the_accountant_reports_epsilon_without_flooding_the_log(caplog):
    """dp-accounting warns (through absl) for every RDP order it leaves out: q=0.1, σ=1 gives four a call."""
    pytest.importorskip("dp_accounting")
    from fedsync.privacy import epsilon

    with caplog.at_level("DEBUG"):
        value = epsilon(1.0, [(0.1, 50)], 1e-5)
    assert 5.0 < value < 7.0
    assert [r.getMessage()[:40] for r in caplog.records if r.name == "absl"] == []
