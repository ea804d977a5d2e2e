"""The coordinator talks to devices through a bounded pool of threads."""

import threading

import pytest

from werkzeug.serving import make_server

from fedsync import Federated
from fedsync._util.workers import Workers, concurrently
from fedsync.device import DeviceApp
from tests.support.seed_fedfloat import FedFloat


def test_no_more_calls_run_at_once_than_the_pool_has_threads():
    running, most, lock, done = [0], [0], threading.Lock(), threading.Semaphore(0)
    together = threading.Barrier(3, timeout=10)  # three calls must overlap: no timing luck involved

    def call():
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1
        done.release()

    with Workers(3) as workers:
        for _ in range(12):
            workers.submit(call)
        assert all(done.acquire(timeout=10) for _ in range(12))
    assert most[0] == 3


def test_a_call_can_queue_the_next_behind_the_others():
    order, finished = [], threading.Event()

    def step(name, left):
        order.append(name)
        if left:
            workers.submit(step, name, left - 1)
        elif name == "b":
            finished.set()

    with Workers(1) as workers:
        workers.submit(step, "a", 1)
        workers.submit(step, "b", 1)
        assert finished.wait(10)
    assert order == ["a", "b", "a", "b"]


def test_closing_drops_the_calls_still_queued():
    ran, gate = [], threading.Event()
    workers = Workers(1, name="closing-test")
    workers.submit(gate.wait, 10)
    workers.submit(ran.append, "late")
    workers.close()
    gate.set()
    # Wait for the pool's thread to end: it has then run, or dropped, everything it was given.
    for thread in [t for t in threading.enumerate() if t.name.startswith("closing-test-")]:
        thread.join(10)
        assert not thread.is_alive()
    assert ran == []


def test_concurrently_returns_each_result_or_exception_by_key():
    def boom():
        raise RuntimeError("no")

    out = concurrently({"a": lambda: 1, "b": boom, "c": lambda: 3}, limit=2)
    assert out["a"] == 1 and out["c"] == 3 and isinstance(out["b"], RuntimeError)


class Recording:
    """WSGI middleware in front of a device: the order of the requests it gets, and the most at once."""

    def __init__(self, app, log):
        self.app, self.log = app, log

    def __call__(self, environ, start_response):
        log = self.log
        with log["lock"]:
            log["events"].append(environ["PATH_INFO"].rsplit("/", 1)[-1])
            log["in_flight"] += 1
            log["most"] = max(log["most"], log["in_flight"])
            if log["events"].count("submit") == log["devices"]:
                log["all_submitted"].set()
            first_two_polls = log["events"][-1] == "result" and log["events"].count("result") <= 2
        try:
            if first_two_polls:
                log["overlap"].wait()  # the two threads both hold a request: the most is 2, by force
            return list(self.app(environ, start_response))  # the whole answer, while counted
        finally:
            with log["lock"]:
                log["in_flight"] -= 1


@pytest.mark.slow  # over 1 s: full suite only (fast tier < 90 s)
def test_round_with_more_devices_than_workers_submits_to_all_before_fetching():
    log = {"lock": threading.Lock(), "events": [], "in_flight": 0, "most": 0, "devices": 5, "all_submitted": threading.Event(),
           "overlap": threading.Barrier(2, timeout=10)}

    class Waiting(FedFloat):
        def receive(self, encoding, repetition):
            # Training lasts until every device has its payload: the long-polls then overlap
            # for real, so a pool that let more than 2 requests run at once would show it.
            assert log["all_submitted"].wait(10)
            super().receive(encoding, repetition)

    servers = [make_server("127.0.0.1", 0, Recording(DeviceApp(Waiting(float(v))), log), threaded=True) for v in range(5)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = FedFloat(0.0)
        with Federated(data=data, remotes=[f"http://127.0.0.1:{s.server_port}" for s in servers], workers=2) as alg:
            result = alg.round()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    assert len(result.answered) == 5 and data.value == pytest.approx(2.0)
    round_events = [e for e in log["events"] if e != "info"]
    # Every device trains while others are polled: the pool runs the five submits first (FIFO), so
    # while the last submit is on the wire at most the pool's other thread has started a long-poll
    # (requests are logged as they reach the devices, so those two can arrive in either order).
    last_submit = max(i for i, e in enumerate(round_events) if e == "submit")
    assert round_events.count("submit") == 5 and round_events[: last_submit + 1].count("result") <= 1, round_events
    assert log["most"] == 2  # the pool's two threads were both busy, never more


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be at least 1"):
        Federated(data=FedFloat(0.0), remotes=["http://127.0.0.1:9"], workers=0)
