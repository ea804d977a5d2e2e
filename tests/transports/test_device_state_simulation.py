"""A simulated device's own state survives between the rounds it is sampled in, though its FedData is rebuilt."""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator.simulation import run_simulation
from fedsync.errors import RemoteError
from fedsync.transports.local import LocalTransport
from tests.device.factories import check_counted, counting_device


@pytest.mark.parametrize("kind", ["threads", pytest.param("processes", marks=pytest.mark.slow)])
def test_state_survives_the_rounds_a_device_is_sampled_in(kind):
    history = run_simulation(
        counting_device, 6, 4, data=FedArrays({"w": np.zeros(2)}), fraction=0.5, seed=3,
        workers=2, worker_kind=kind, progress=False,
    )  # fmt: skip
    check_counted(history)


def test_a_released_device_keeps_only_its_state_bytes_and_a_changed_layout_is_refused():
    built = []

    def device() -> FedArrays:
        fed = counting_device(0) if len(built) < 2 else FedArrays({"w": np.zeros(2)}, state={"seen": np.zeros(3)})
        built.append(fed)
        return fed

    transport = LocalTransport("local://d", device)
    transport.app()
    built[0].state["seen"][:] = 5
    transport.release()
    assert transport.device_app is None and list(transport.kept) == [""]
    assert len(transport.kept[""]) < 1024  # the state's 16 bytes and a header, not a model
    transport.app()
    assert built[1].state["seen"].tolist() == [5, 5]  # restored into the FedData built afresh
    transport.release()
    with pytest.raises(RemoteError, match=r"refused, nothing changed.*expected \(3,\) float64"):
        transport.app()  # device_fn's FedData changed its state's layout: that device's failure


@pytest.mark.parametrize(
    "entries, body",
    [
        ({"": 3}, b"abc"),  # not a list
        ([["", 4]], b"abc"),  # longer than the body
        ([["", 2]], b"abc"),  # a byte left over
        ([["", True]], b"a"),  # a bool is no length
        ([[7, 1]], b"a"),  # a base that is no string
        ([["", -1]], b""),
    ],
)
def test_a_malformed_kept_state_frame_is_refused(entries, body):
    from fedsync.transports.process._frames import FrameError, pack_kept, unpack_kept

    with pytest.raises(FrameError, match="kept state"):
        unpack_kept(entries, body)
    assert unpack_kept(*pack_kept({"": b"ab", "/m": b"c"})) == {"": b"ab", "/m": b"c"}


@pytest.mark.slow  # starts a worker process
def test_a_state_too_large_to_travel_back_fails_that_device_by_name_instead_of_starting_it_afresh():
    from fedsync import Federated
    from fedsync.transports.process.pool import ProcessPool, process_remotes

    with ProcessPool("tests.device.factories:large_state", 1, max_content_length=4096) as pool:
        (remote,) = process_remotes(pool, 1)
        with Federated(FedArrays({"w": np.zeros(2)}), [remote]) as alg:
            alg.round()  # trains; its 64 KiB state cannot come back through a 4 KiB frame
            remote.release()
            with pytest.raises(Exception, match="state from its last round is lost.*max_content_length"):
                alg.round()
        assert len(pool.pids) == 1
