"""Frames between a simulation's coordinator and its worker processes: memory follows the bytes that arrive."""

import io
import os
import tracemalloc

import pytest

from fedsync.transports.process._frames import FrameError, frame_head, read_frame
from fedsync.wire.http import MAX_PAYLOAD


class Trickle(io.RawIOBase):
    """A pipe's reading end: ``data`` a few bytes at a time, then the end of the stream."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.step = memoryview(data), step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.step, len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


@pytest.mark.parametrize("part", ["body", "header"])
def test_an_announced_length_costs_memory_only_as_its_bytes_arrive(part):
    # Within the limits (a worker accepts a 2 GiB payload), 256 MiB announced, 10 bytes sent:
    # the reader used to allocate the announced length at once, before a single byte came.
    announced = 256 << 20
    if part == "body":
        stream = frame_head({"id": 1}, announced) + b"0123456789"
    else:
        stream = (announced).to_bytes(4, "big") + (0).to_bytes(8, "big") + b"{" + b" " * 9
    tracemalloc.start()
    try:
        with pytest.raises(FrameError, match="ended inside"):
            read_frame(Trickle(stream), max_body=MAX_PAYLOAD + (1 << 16), max_header=1 << 30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"reading 10 bytes of a frame announcing {announced} bytes allocated {peak} bytes"


def test_a_frame_that_arrives_whole_is_read_whole_whatever_its_size():
    body = os.urandom((3 << 20) + 5)  # over the first chunk: the buffer grows twice
    header, read = read_frame(Trickle(frame_head({"id": 2}, len(body)) + body, step=1 << 16), max_body=len(body))
    assert header == {"id": 2} and bytes(read) == body
    header, read = read_frame(io.BytesIO(frame_head({"id": 3}, 0)), max_body=0)
    assert header == {"id": 3} and read == bytearray()
