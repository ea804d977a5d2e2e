"""Under secure aggregation, Federated.evaluate() keeps only the aggregate: no device's count or metrics.

Evaluation answers are not masked (docs/privacy.md says so); what the coordinator's user,
its history and dashboard get is the sample-weighted aggregate, as for a secure training round.
Real device processes over real HTTP.
"""

from __future__ import annotations

import pytest

from fedsync import FedArrays, Federated
from fedsync.secagg import SecAgg
from tests.support.devices.secagg import model


def evaluating(samples: int, accuracy: float) -> FedArrays:
    data = FedArrays(model(), lambda weights: samples)
    data.evaluate_fn = lambda weights: (samples, {"accuracy": accuracy})
    return data


@pytest.mark.slow  # three device processes: the full suite runs it
def test_evaluation_under_secure_aggregation_reports_only_the_aggregate(devices):
    started = [
        devices("tests.coordinator.test_evaluate_under_secure_aggregation:evaluating", n, a)
        for n, a in [(10, 0.5), (30, 0.9), (60, 0.7)]
    ]
    urls = [d.url for d in started]
    with Federated(FedArrays(model()), urls, timeout=30) as plain:
        assert set(plain.evaluate().devices) == set(urls)  # without secure aggregation, per device
    with Federated(FedArrays(model()), urls, timeout=30, secure_aggregation=SecAgg()) as alg:
        result = alg.evaluate()
    assert result.devices == {} and not result.failures
    assert result.samples == 100
    assert result.metrics["accuracy"] == pytest.approx((10 * 0.5 + 30 * 0.9 + 60 * 0.7) / 100)
