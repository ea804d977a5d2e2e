"""Closing either side of a dial-out link: prompt, and nothing alarming logged (issue #20)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.device import DeviceApp, RunningDialer
from fedsync.transports.dial import Listener
from tests.transports.dial.e2e import dial

pytestmark = pytest.mark.slow

TOKENS = {"site-a": "token-a"}


def test_a_listener_closes_at_once_with_a_dialer_process_parked_in_its_long_poll(tmp_path):
    listener = Listener("127.0.0.1", 0, devices=TOKENS)
    device = dial(tmp_path, listener.url, "site-a", "token-a")
    try:
        listener.wait_for(1, timeout=60)
        device.wait_log("registered with")
        time.sleep(1)  # its first long-poll parks (nothing is asserted on time)
        listener.close()  # before: TimeoutError after 15 s, the parked long-poll holding aiohttp's shutdown
        assert not listener.thread.is_alive()
        device.wait_log("listener_closing")  # the device is told why, then retries by itself
        assert device.process.poll() is None
    finally:
        listener.close()
        device.stop()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_closing_a_dialer_logs_no_loss_of_the_coordinator():
    logger, seen = logging.getLogger("fedsync.server.dial"), _Records()
    level = logger.level
    logger.addHandler(seen)
    logger.setLevel(logging.INFO)
    try:
        _dial_and_close()
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert any("registered with" in r.getMessage() for r in seen.records)
    assert [r.getMessage() for r in seen.records if r.levelno >= logging.WARNING] == []


def _dial_and_close() -> None:
    with Listener("127.0.0.1", 0, devices=TOKENS) as listener:
        dialer = RunningDialer(DeviceApp(FedArrays({"w": np.zeros(3, np.float32)})), listener.url, "site-a", "token-a")
        listener.wait_for(1, timeout=30)
        time.sleep(0.5)  # its first long-poll parks: close() cuts it (nothing is asserted on time)
        dialer.close()
        dialer.join(5)
