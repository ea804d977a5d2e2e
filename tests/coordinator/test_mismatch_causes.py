"""A specs mismatch names its cause (#24, item 5): another architecture (the first differing weight), another kind
of FedData, another wire format, or the same weights hashed by another rule (a device in another language).

Real HTTP: each device is served by fedsync.serve in this process; nothing is ever sent to a mismatching device.
"""

from __future__ import annotations

import numpy as np
import pytest

import fedsync
from fedsync import FedArrays, Federated, Remote, SpecsMismatch


def weights(size: int = 4) -> dict[str, np.ndarray]:
    return {"w": np.zeros(size, np.float32)}


class OtherRule(FedArrays):
    """The same weights, its specs hashed some other way (as a hand-written device might)."""

    def specs(self, repetition):
        return "arrays:sha256:0123456789abcdef"


class OtherKind(FedArrays):
    token = "torch"


def mismatch(coordinator: FedArrays, device: FedArrays) -> str:
    with fedsync.serve(device, port=0, block=False) as served:
        with Federated(coordinator, [served.url], timeout=30) as alg, pytest.raises(SpecsMismatch) as refused:
            alg.round()
        assert Remote(served.url).info()["repetition"] == 0  # nothing was sent
    return str(refused.value)


def test_another_architecture_names_the_first_differing_weight():
    why = mismatch(FedArrays(weights(4)), FedArrays(weights(5), lambda m: 1))
    assert "first difference: w: expected (4,) float32, device has (5,) float32" in why


def test_another_wire_format_is_no_mismatch_at_all():
    # #24: the wire format is negotiated from /info, not part of the specs: the round runs
    coordinator, device = FedArrays(weights(), wire_dtype="float16"), FedArrays(weights(), lambda m: 1)
    with fedsync.serve(device, port=0, block=False) as served, Federated(coordinator, [served.url], timeout=30) as alg:
        assert alg.round().failures == {}


def test_the_same_weights_hashed_by_another_rule_point_to_the_documented_rule():
    why = mismatch(FedArrays(weights()), OtherRule(weights(), lambda m: 1))
    assert "computed its specs by another rule" in why and "docs/protocol.md" in why


def test_another_kind_of_fed_data_is_named():
    why = mismatch(FedArrays(weights()), OtherKind(weights(), lambda m: 1))
    assert "another kind of FedData ('torch' against 'arrays')" in why


class UnknownDtype(FedArrays):
    """A device whose summary names a dtype the protocol does not carry (as a hand-written one might: bfloat16)."""

    def summary(self, repetition):
        return {"weights": [{"name": "w", "shape": [4], "dtype": "bfloat16"}]}

    def specs(self, repetition):
        return "arrays:sha256:00000000000000aa"


def test_an_unknown_dtype_is_named_as_such():
    why = mismatch(FedArrays(weights()), UnknownDtype(weights(), lambda m: 1))
    assert "the device's dtype bfloat16 is none the protocol carries" in why and "float32" in why
