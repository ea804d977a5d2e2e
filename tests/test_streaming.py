"""Replies fold into the coordinator's sum while they download; a bad one is dropped, not merged.

The coordinator never holds a whole reply (see ``FedData.accepts_streams``): it
checks each piece as it folds it. A reply found bad after part of it was folded
(NaN at its end, a device dying mid-answer) is dropped, and the sum is started
over from the replies kept so far, which their devices send again.
"""

import numpy as np
import pytest

from fedsync import FedArrays, Federated
from fedsync.errors import RoundFailed
from tests.devices import big_model


@pytest.mark.parametrize(
    "spoil, reason",
    [("nan", "array 'last' contains NaN or infinity"), ("cut", "RemoteUnavailable")],
)
def test_reply_found_bad_at_its_end_is_dropped_and_the_others_merge_exactly(devices, spoil, reason):
    good = [devices("tests.devices:big_constant", 1.0, 10), devices("tests.devices:big_constant", 3.0, 30)]
    # Slower, so the good replies are folded first; 1000 samples: any of it left in the sum shows.
    bad = devices("tests.devices:big_constant", 100.0, 1000, 1.0, spoil)
    data = FedArrays(big_model())
    with Federated(data=data, remotes=[d.url for d in [*good, bad]], min_results=2) as alg:
        result = alg.round()
    assert sorted(result.answered) == sorted(d.url for d in good)
    assert list(result.failures) == [bad.url]
    assert reason in result.failures[bad.url]
    assert np.all(data.model["big"] == 2.5) and np.all(data.model["last"] == 2.5)  # (1*10 + 3*30) / 40
    assert result.samples == 40


def test_rejections_that_break_the_quorum_fail_the_round_and_keep_the_model(devices):
    good = devices("tests.devices:big_constant", 1.0, 10)
    bad = devices("tests.devices:big_constant", 100.0, 1000, 0.5, "nan")
    data = FedArrays(big_model())
    with Federated(data=data, remotes=[good.url, bad.url]) as alg:
        with pytest.raises(RoundFailed) as failed:
            alg.round()
    assert "NaN" in failed.value.failures[bad.url]
    assert np.all(data.model["big"] == 0.0) and np.all(data.model["last"] == 0.0)
