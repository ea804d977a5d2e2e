"""Evaluation apart from training (issue #23, item 3).

Federated evaluation draws its devices from a generator of its own, seeded from ``seed``: turning
evaluation on (how often, on how many) never changes which devices train. ``evaluate_fraction=1.0``
evaluates on every device; ``run_simulation(evaluate_every=...)`` evaluates during a simulation.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.simulation import local_remotes, run_simulation
from tests.support.devices.research import straggler


def model() -> FedArrays:
    return FedArrays({"w": np.zeros((3, 1)), "b": np.zeros(1)})


def trained_devices(**evaluation) -> list[list[str]]:
    history = run_simulation(straggler, 10, 4, data=model(), fraction=0.3, seed=11, workers=2, progress=False, **evaluation)
    return [sorted(r.answered) for r in history]


def test_evaluating_never_changes_which_devices_train():
    plain = trained_devices()
    assert len({tuple(r) for r in plain}) > 1  # the sample changes from round to round: the property has teeth
    assert trained_devices(evaluate_every=1) == plain
    assert trained_devices(evaluate_every=2, evaluate_fraction=0.5) == plain
    assert trained_devices(evaluate_every=1, evaluate_fraction=1.0) == plain


def test_evaluate_every_in_a_simulation_and_evaluate_fraction_all_devices():
    history = run_simulation(straggler, 6, 3, data=model(), devices_per_round=2, evaluate_every=1, evaluate_fraction=1.0,
                             seed=1, workers=2, progress=False)  # fmt: skip
    assert [len(r.answered) for r in history] == [2, 2, 2]
    assert [sorted(r.evaluation.devices) for r in history] == [[f"local://device-{i}" for i in range(6)]] * 3
    assert all(r.evaluation.samples == 240 and "mse" in r.evaluation.metrics for r in history)
    every_other = run_simulation(straggler, 6, 4, data=model(), evaluate_every=2, workers=2, progress=False)
    assert [r.evaluation is not None for r in every_other] == [False, True, False, True]


def test_the_evaluation_sample_is_seeded_and_as_large_as_trainings_by_default():
    def evaluated(seed):
        history = run_simulation(straggler, 10, 3, data=model(), devices_per_round=3, evaluate_every=1, seed=seed,
                                 workers=2, progress=False)  # fmt: skip
        return [sorted(r.evaluation.devices) for r in history]

    first = evaluated(4)
    assert [len(devices) for devices in first] == [3, 3, 3]
    assert evaluated(4) == first


@pytest.mark.slow  # over a second: the full suite (the fast tier stays under 90 s)
def test_over_http_an_evaluation_between_rounds_leaves_the_training_sample(devices):
    # seed 8 samples more than one device across the 3 rounds (checked below): evaluation draws in between
    urls = [devices("tests.support.devices.research:straggler", i).url for i in range(4)]

    def run(evaluate: bool) -> tuple[list[list[str]], list[list[str]]]:
        trained, evaluated = [], []
        with Federated(model(), urls, devices_per_round=1, seed=8, evaluate_fraction=0.5) as alg:
            for _ in range(3):
                trained.append(alg.round().answered)
                if evaluate:
                    evaluated.append(sorted(alg.evaluate().devices))
        return trained, evaluated

    without, _ = run(False)
    with_evaluation, evaluated = run(True)
    assert with_evaluation == without and len({tuple(r) for r in without}) > 1
    assert [len(r) for r in evaluated] == [2, 2, 2]


def test_a_bad_evaluate_fraction_is_refused():
    remotes = local_remotes(straggler, 3)
    for bad in (0, 1.5, "all", True):
        with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
            Federated(model(), remotes, evaluate_fraction=bad)
