"""What people see when things go wrong during a run: one clear line, visible on the console.

Real device processes over real HTTP; the console is the ``fedsync`` logger's warnings
(what Python prints by default).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.coordinator.callbacks import EarlyStopping
from fedsync.errors import RoundFailed
from fedsync.wire.metrics import parse_counted


def zeros() -> FedArrays:
    return FedArrays({"w": np.zeros(4, np.float32)})


def empty_split() -> FedArrays:
    """A device with no training data: 0 samples and the NaN mean of an empty split."""

    def train(model):
        return 0, {"loss": math.nan}

    return FedArrays({"w": np.zeros(4, np.float32)}, train)


def other_architecture() -> FedArrays:
    return FedArrays({"w": np.zeros(5, np.float32)}, lambda model: 1)


def test_a_string_for_remotes_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"remotes must be a list of devices, got str 'http://127.0.0.1:9'.*a list"):
        Federated(zeros(), "http://127.0.0.1:9")


def test_zero_sample_metrics_are_ignored_not_refused():
    assert parse_counted((0, {"loss": math.nan})) == (0, {})
    assert parse_counted((0, {"loss": math.inf, "acc": 0.5})) == (0, {})
    with pytest.raises(ValueError, match="finite"):
        parse_counted((3, {"loss": math.nan}))
    with pytest.raises(TypeError):
        parse_counted((0, "not a mapping"))


@pytest.mark.slow  # ~0.8 s: keeps the fast tier under 90 s
def test_a_zero_sample_device_with_a_nan_metric_does_not_fail_the_round(devices):
    honest = devices("slow_first", 0.0, 2.0)  # sets w to 2.0, 1 sample
    empty = devices("tests.coordinator.test_what_people_see:empty_split")
    data = zeros()
    with Federated(data, [honest.url, empty.url]) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted([honest.url, empty.url]) and not result.failures
    assert np.all(data.model["w"] == 2.0)


@pytest.mark.slow  # ~1.1 s: keeps the fast tier under 90 s
def test_a_device_with_another_architecture_is_the_first_line(devices):
    good = [devices("slow_first", 0.0, 1.0) for _ in range(2)]
    wrong = devices("tests.coordinator.test_what_people_see:other_architecture")
    with Federated(zeros(), [*(d.url for d in good), wrong.url]) as alg, pytest.raises(RoundFailed) as failed:
        alg.round()
    first, second = str(failed.value).splitlines()[:2]
    assert (
        first.startswith("round 1: ")
        and wrong.url in first
        and "first difference: w: expected (4,) float32, device has (5,) float32" in first
    )
    assert "only 2 of 3 required devices are reachable" in second


@pytest.mark.slow  # ~1.0 s: keeps the fast tier under 90 s
def test_fit_shows_failing_devices_early_stopping_and_a_finished_run(devices, tmp_path, caplog):
    good = devices("slow_first", 0.0, 1.0)
    wrong = devices("tests.coordinator.test_what_people_see:other_architecture")
    caplog.set_level(logging.WARNING, logger="fedsync")
    with Federated(zeros(), [good.url, wrong.url], min_results=1, checkpoint=tmp_path / "run") as alg:
        alg.fit(2, progress=False)
    failing = [r.getMessage() for r in caplog.records if "failed: SpecsMismatch" in r.getMessage()]
    assert len(failing) == 2 and failing[0].startswith(f"round 1 of 2: {wrong.url} failed")
    caplog.clear()
    with Federated(zeros(), [good.url], checkpoint=tmp_path / "run") as alg:
        alg.fit(2, progress=False)  # finished already
    assert any(
        "nothing to run" in r.getMessage() and "already holds 2 merged rounds" in r.getMessage() for r in caplog.records
    )
    caplog.clear()
    with Federated(zeros(), [good.url]) as alg:
        alg.fit(10, callbacks=[EarlyStopping("missing", patience=1, source="train"), lambda f, r: True], progress=False)
    assert any(r.getMessage() == "stopped early after round 1 of 10: function asked to stop" for r in caplog.records)
