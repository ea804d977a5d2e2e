"""Review of the stc download (#25): under client sampling (devices sitting out rounds, views forgotten after
MAX_VIEWS, several bases and formats in one round) and after a device loses its view, both sides hold the same view
and every device trains from it; a device that does not list stc gets a dense delta, never an stc payload."""

from __future__ import annotations

import numpy as np

from fedsync import FedArrays, Federated
from fedsync.transports.local import LocalRemote
from fedsync.wire import codec

N = 600


class NoStc(FedArrays):
    """A device that does not decode stc (an older fedsync, another language): it refuses any stc payload."""

    def capabilities(self):
        answer = super().capabilities()
        return {**answer, "wire_formats": [f for f in answer["wire_formats"] if f != "stc"]}

    def check(self, encoding, repetition):
        assert '"stc"' not in codec.decode(bytes(encoding))[1].get("fedsync.wire", ""), "an stc payload"
        super().check(encoding, repetition)


def nudging(seen: list, step: float, cls=FedArrays):
    def train(model):
        seen.append(model["w"].copy())
        model["w"] += np.float32(step)
        return 5

    return cls({"w": np.zeros(N, np.float32)}, train)


def test_sampled_devices_forgotten_views_and_a_lost_view_keep_both_sides_on_the_same_view():
    data = FedArrays(
        {"w": np.random.default_rng(0).standard_normal(N).astype(np.float32)}, download="stc", download_top_k=0.05
    )
    seen = {i: [] for i in range(5)}
    devices = {i: nudging(seen[i], 0.01 * (i + 1), NoStc if i == 4 else FedArrays) for i in range(5)}
    remotes = [LocalRemote(f"local://d{i}", device=devices[i]) for i in range(5)]
    took_part = set()
    with Federated(data, remotes, devices_per_round=2, seed=3) as alg:
        for rnd in range(12):
            if rnd == 6:
                devices[1].view = None  # as after a restart without state: 409 unknown_base, then the whole model
            counts = {i: len(seen[i]) for i in seen}
            result = alg.round()
            assert not result.failures, result.failures
            trained = [i for i in seen if len(seen[i]) > counts[i]]
            assert len(trained) == 2
            for i in trained:
                took_part.add(i)
                assert alg._handshakes.held[f"local://d{i}"] == devices[i].view[0]
                np.testing.assert_array_equal(seen[i][-1], devices[i].view[1]["w"])  # it trained from its view
    assert took_part == set(range(5))
