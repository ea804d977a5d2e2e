"""A deferred Ctrl-C (``workers.STOP``) ends the coordinator's waits on its threads from fedsync's own code."""

import queue
import threading

import pytest

from fedsync._util import workers


@pytest.fixture
def stop():
    workers.STOP.set()
    yield workers.STOP
    workers.STOP.clear()


def test_take_returns_what_arrives_and_raises_empty_at_its_timeout():
    tasks: queue.Queue = queue.Queue()
    tasks.put("ready")
    assert workers.take(tasks, 5) == "ready"
    with pytest.raises(queue.Empty):
        workers.take(tasks, 0.3)  # longer than one STOP_CHECK slice: the slices add up to the timeout


def test_take_raises_keyboard_interrupt_once_stop_is_set(stop):
    with pytest.raises(KeyboardInterrupt):
        workers.take(queue.Queue(), None)


def test_concurrently_raises_keyboard_interrupt_instead_of_waiting_for_its_calls(stop):
    release = threading.Event()
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.concurrently({"a": lambda: release.wait(30)}, 1)
    finally:
        release.set()
