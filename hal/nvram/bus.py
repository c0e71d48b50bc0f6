"""What the SPI and the I2C FRAM drivers share: a part identified on a bus, counters."""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from hal.nvram.stats import CountedOperations


class FramPart(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...


PartT = TypeVar("PartT", bound=FramPart)


class FramOnBus(CountedOperations, Generic[PartT]):
    """An FRAM chip the driver identified (``_part``) behind a bus."""

    _part: PartT

    @property
    def slow_writes(self) -> bool:
        return False  # a FRAM write is done when its bus transfer ends

    @property
    def size(self) -> int:
        return self._part.size

    @property
    def part(self) -> PartT:
        return self._part
