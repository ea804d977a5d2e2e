"""Issue #23 item 5: SCAFFOLD and FedNova on device state, against plain numpy versions of their papers.

The reference implementations below are written from the papers alone (SCAFFOLD: Karimireddy et al. 2020,
Algorithm 1, option II; FedNova: Wang et al. 2020, eq. 8-9 with plain SGD), with the devices each round
sampled by fedsync read back from the run's history. fedsync's runs go through ``run_simulation``: payloads,
device state kept between rounds while the devices' FedData are rebuilt, and the streaming merge.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation
from fedsync.strategies import FedNova, Scaffold, fednova, scaffold
from tests.support.devices.stateful import (
    DIM,
    N,
    device_data,
    fedavg_reference,
    fedavg_weighted_reference,
    fednova_device,
    fednova_reference,
    sampled_ids,
    scaffold_device,
    scaffold_reference,
)

# -- SCAFFOLD --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_round", [N, 3])
def test_scaffold_equals_the_papers_algorithm_with_state_kept_between_the_rounds_a_device_is_sampled_in(per_round):
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    history = run_simulation(
        scaffold_device, N, 6, data=data, devices_per_round=per_round, seed=5, workers=2, progress=False
    )
    sampled = sampled_ids(history)
    assert all(len(s) == per_round for s in sampled)
    if per_round < N:
        assert len({tuple(s) for s in sampled}) > 1  # devices sat out and came back with their own c_i
    expected, _, _ = scaffold_reference(sampled)
    np.testing.assert_allclose(data.model["w"], expected, rtol=1e-12, atol=1e-12)
    # It is not FedAvg: the same run without control variates ends elsewhere.
    assert np.abs(expected - fedavg_reference(sampled)).max() > 1e-3


def test_weighted_scaffold_keeps_c_the_sample_weighted_mean_of_every_devices_c_i():
    """total_samples=: the means weigh by samples and c moves by the replies' share of all samples, so c stays
    sum_i n_i/n c_i over all N devices (the invariant the corrections need), sampled or not."""
    from tests.support.devices.stateful import TOTAL, samples

    def weighted_device(i):
        fed = scaffold_device(i)
        fed.strategy = Scaffold(num_devices=N, total_samples=TOTAL)
        return fed

    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N, total_samples=TOTAL))
    history = run_simulation(weighted_device, N, 5, data=data, devices_per_round=3, seed=6, progress=False)
    x, c, ci = scaffold_reference(sampled_ids(history), weighted=True)
    np.testing.assert_allclose(data.model["w"], x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(data.extra_arrays["scaffold.c/w"], c, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c, sum(samples(i) / TOTAL * ci[i] for i in range(N)), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="total_samples"):
        Scaffold(num_devices=N, total_samples=0)


def test_scaffold_server_learning_rate_and_the_coordinators_control_variate():
    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N, server_lr=0.5))
    history = run_simulation(scaffold_device, N, 3, data=data, devices_per_round=4, seed=1, progress=False)
    np.testing.assert_allclose(data.model["w"], scaffold_reference(sampled_ids(history), 0.5)[0], rtol=1e-12)
    assert np.abs(data.extra_arrays["scaffold.c/w"]).max() > 0  # c moved, and is what the next round sends


# -- FedNova ---------------------------------------------------------------------------------------------


def test_fednova_equals_the_papers_normalized_averaging_with_devices_doing_unequal_work():
    data = FedArrays({"w": np.zeros(DIM)}, strategy=FedNova())
    history = run_simulation(fednova_device, N, 5, data=data, devices_per_round=4, seed=2, progress=False)
    sampled = sampled_ids(history)
    expected = fednova_reference(sampled)
    np.testing.assert_allclose(data.model["w"], expected, rtol=1e-12, atol=1e-12)
    assert np.abs(expected - fedavg_weighted_reference(sampled)).max() > 1e-3  # unequal steps: not FedAvg


def test_fednova_with_equal_steps_is_fedavg():
    merged = {}
    for strategy in (FedNova(), None):
        coordinator = FedArrays({"w": np.zeros(DIM)}, strategy=strategy)
        replies = []
        for i in range(3):
            device = FedArrays({"w": np.zeros(DIM)}, strategy=strategy)

            def train(arrays, i=i, device=device):
                arrays["w"][:] = i + 1.0
                if isinstance(device.strategy, FedNova):
                    fednova.finish(device, steps=4)
                return 10 * (i + 1)

            device.train = train
            device.receive(coordinator.serialize(0), 0)
            replies.append(device.serialize(0))
        coordinator.merge(replies, 0)
        merged[strategy is None] = coordinator.model["w"]
    np.testing.assert_allclose(merged[False], merged[True], rtol=1e-12)
    np.testing.assert_allclose(merged[True], (10 * 1 + 20 * 2 + 30 * 3) / 60)


def test_fednova_momentum_normalizer_is_the_l1_norm_of_the_steps_weights():
    steps, m = 7, 0.9
    weights = [sum(m**j for j in range(k)) for k in range(1, steps + 1)]  # step k moves by 1 + m + ... + m^(k-1)
    assert fednova.normalizer(steps, m) == pytest.approx(sum(weights), rel=1e-12)
    assert fednova.normalizer(steps) == steps


# -- what is refused, and whose failure it is ---------------------------------------------------------------


def test_a_device_whose_train_forgets_finish_fails_alone_with_the_call_to_make():
    def device_fn(i):
        if i != 1:
            return scaffold_device(i)
        return FedArrays({"w": np.zeros(DIM)}, lambda arrays: 5, strategy=Scaffold(num_devices=N))

    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    history = run_simulation(device_fn, 3, 1, data=data, min_results=2, progress=False)
    (failure,) = history[0].failures.items()
    assert failure[0] == "local://device-1" and "scaffold.finish(fed, steps=..., lr=...)" in failure[1]
    assert history[0].samples == len(device_data(0)[0]) + len(device_data(2)[0])


@pytest.mark.parametrize("steps", [0.0, 0.5, 2e9, -3.0])
def test_a_fednova_reply_with_impossible_steps_is_that_devices_failure_and_the_rest_merge(steps):
    def device_fn(i):
        fed = fednova_device(i)
        if i == 2:
            honest = fed.train

            def train(arrays):
                samples = honest(arrays)
                fed.extra_arrays["fednova.steps"][:] = steps  # a hostile or broken device
                return samples

            fed.train = train
        return fed

    alone = FedArrays({"w": np.zeros(DIM)}, strategy=FedNova())
    run_simulation(fednova_device, 2, 1, data=alone, progress=False)
    data = FedArrays({"w": np.zeros(DIM)}, strategy=FedNova())
    history = run_simulation(device_fn, 3, 1, data=data, min_results=2, progress=False)
    assert list(history[0].failures) == ["local://device-2"]
    assert "fednova.steps must be in [1, 1e+09]" in history[0].failures["local://device-2"]
    np.testing.assert_array_equal(data.model["w"], alone.model["w"])


def test_more_replies_than_the_federation_has_fail_the_round_and_change_nothing():
    coordinator = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=2))
    replies = []
    for i in range(3):
        device = scaffold_device(i)
        device.receive(coordinator.serialize(0), 0)
        replies.append(device.serialize(0))
    before = bytes(coordinator.serialize(0))
    from fedsync.errors import RoundFailed

    with pytest.raises(RoundFailed, match=r"3 devices replied but Scaffold\(num_devices=2\)"):
        coordinator.merge(replies, 0)
    assert bytes(coordinator.serialize(0)) == before


def test_the_helpers_work_only_inside_train_and_only_once():
    fed = scaffold_device(0)
    with pytest.raises(RuntimeError, match="inside train"):
        scaffold.correction(fed)
    nova = fednova_device(0)
    with pytest.raises(RuntimeError, match="inside train, once per round"):
        fednova.finish(nova, steps=2)

    def twice(arrays):
        scaffold.finish(fed2, steps=1, lr=0.1)
        scaffold.finish(fed2, steps=1, lr=0.1)
        return 1

    fed2 = FedArrays({"w": np.zeros(DIM)}, twice, strategy=Scaffold(num_devices=2))
    with pytest.raises(RuntimeError, match="before finish"):
        fed2.receive(FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=2)).serialize(0), 0)
    with pytest.raises(ValueError, match="lr=.... is the local learning rate"):
        scaffold.finish(fed2, steps=1, lr=float("nan"))
    with pytest.raises(ValueError, match="num_devices"):
        Scaffold(num_devices=0)


def test_compositions_that_would_leak_or_lose_the_extra_arrays_are_refused_with_the_reason():
    from fedsync.privacy import LocalDP
    from fedsync.secagg import SecAgg
    from fedsync.secagg.coordinator import checked
    from fedsync.strategies import DPFixedClipping

    for strategy in (Scaffold(num_devices=3), FedNova()):
        with pytest.raises(ValueError, match="central DP would neither clip nor noise"):
            DPFixedClipping(strategy, noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2)
        with pytest.raises(ValueError, match="not offered"):
            checked(SecAgg(threshold=3), FedArrays({"w": np.zeros(DIM)}, strategy=strategy))
    device = scaffold_device(0)
    device.local_dp = LocalDP(clipping_norm=1.0, noise_multiplier=0.1)
    before = device.model["w"].copy()
    with pytest.raises(ValueError, match="unprotected"):
        device.receive(FedArrays({"w": np.ones(DIM)}, strategy=Scaffold(num_devices=N)).serialize(0), 0)
    np.testing.assert_array_equal(device.model["w"], before)
    with pytest.raises(ValueError, match="which the model already has"):
        FedArrays({"scaffold.c/w": np.zeros(2), "w": np.zeros(2)}, strategy=Scaffold(num_devices=2)).serialize(0)


def test_a_plain_device_meeting_a_scaffold_coordinator_is_refused_before_anything_trains():
    coordinator = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    plain = FedArrays({"w": np.zeros(DIM)}, lambda arrays: 1)
    assert coordinator.specs(0) != plain.specs(0)
    from fedsync.errors import PayloadRejected

    with pytest.raises(PayloadRejected, match="scaffold.c/w"):
        plain.check(coordinator.serialize(0), 0)


def test_a_checkpoint_restores_the_coordinators_control_variate_with_the_model():
    """The coordinator's c travels in its payload, which is what a checkpoint saves and restores."""
    from fedsync.data.snapshot import restore

    data = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    run_simulation(scaffold_device, N, 2, data=data, devices_per_round=3, seed=4, progress=False)
    fresh = FedArrays({"w": np.zeros(DIM)}, strategy=Scaffold(num_devices=N))
    restore(fresh, data.serialize(0), 0)
    assert np.abs(data.extra_arrays["scaffold.c/w"]).max() > 0
    np.testing.assert_array_equal(fresh.extra_arrays["scaffold.c/w"], data.extra_arrays["scaffold.c/w"])
    np.testing.assert_array_equal(fresh.model["w"], data.model["w"])
