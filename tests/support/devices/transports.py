"""FedData for the transport tests, served by device processes (``devices("tests.support.devices.transports:picky", ...)``)."""

from __future__ import annotations

from fedsync import FedData


class Picky(FedData):
    """A number whose ``check`` refuses negative payloads: the same refusal over HTTP and in-process."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = float(value)

    def specs(self, repetition: int) -> str:
        return "picky:v1"

    def check(self, encoding: str, repetition: int) -> None:
        if float(encoding) < 0:
            raise ValueError(f"a picky value is never negative, got {encoding}")

    def receive(self, encoding: str, repetition: int) -> None:
        self.value = float(encoding) + 1.0

    def serialize(self, repetition: int) -> str:
        return repr(self.value)

    def merge(self, encodings, repetition: int) -> None:
        values = [float(e) for e in encodings]
        self.value = sum(values) / len(values)


def picky(value: float) -> Picky:
    return Picky(value)
