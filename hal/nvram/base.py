"""The NVRAM seam: what the record needs from a non-volatile memory, nothing more."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class NvramError(OSError):
    """The NVRAM device failed or answered something the driver cannot accept."""


class PowerLost(NvramError):
    """Raised by emulations when an injected power cut interrupts an operation.

    After it, the device keeps exactly the bytes that reached it before the cut.
    """


@runtime_checkable
class Nvram(Protocol):
    """Byte-addressable non-volatile memory (FRAM or its emulation).

    Writes are byte-granular: a write interrupted by power loss leaves every byte
    either old or new, with all new bytes forming a prefix of the write.
    """

    @property
    def size(self) -> int:
        """Capacity in bytes."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``."""
        ...

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset``; bytes reach the cells in ascending address order."""
        ...

    def barrier(self) -> None:
        """Return only when every earlier write is non-volatile (no-op on FRAM)."""
        ...

    @property
    def slow_writes(self) -> bool:
        """True when a write waits on a host disk (an O_DSYNC file, fdatasync), so that
        the record commits on a worker thread instead of on the event loop. FRAM on SPI
        or I2C answers in microseconds: False."""
        ...

    def close(self) -> None:
        """Release the bus or file."""
        ...


def check_range(nvram_size: int, offset: int, length: int) -> None:
    """Raise ValueError when [offset, offset+length) is outside the device."""
    if offset < 0 or length < 0 or offset + length > nvram_size:
        raise ValueError(f"NVRAM range {offset}+{length} outside 0..{nvram_size}")
