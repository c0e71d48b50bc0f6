"""What a frontend (NBD, TCMU) sees of the volume: a block target with errno errors.

Frontends translate ``TargetError.errno`` into their protocol's error (an NBD
error code, a SCSI sense triple); the volume behind it applies the record,
the media and the mirror.
"""

from __future__ import annotations

import errno
from typing import Protocol, runtime_checkable


class TargetError(Exception):
    """A request failed; ``errno`` is one of EIO, EINVAL, ENOSPC, EOVERFLOW, EPERM, ESHUTDOWN."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err

    @classmethod
    def out_of_range(cls, offset: int, length: int, size: int) -> TargetError:
        return cls(errno.ENOSPC if offset <= size else errno.EINVAL,
                   f"request {offset}+{length} beyond end of volume ({size} bytes)")


@runtime_checkable
class BlockTarget(Protocol):
    """The volume as the frontends use it. All offsets and lengths are in bytes."""

    @property
    def size(self) -> int:
        """Volume size in bytes."""
        ...

    @property
    def logical_block_size(self) -> int:
        """Smallest addressable unit (512)."""
        ...

    @property
    def preferred_block_size(self) -> int:
        """Writes of this size and alignment avoid read-modify-write (4096)."""
        ...

    @property
    def read_only(self) -> bool:
        ...

    async def read(self, offset: int, length: int) -> bytes:
        ...

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        """Return once the data is on the local medium (durably if ``fua``)."""
        ...

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        ...

    async def trim(self, offset: int, length: int) -> None:
        """Discard a range; it reads back as zeroes afterwards."""
        ...

    async def compare_and_write(self, offset: int, expected: bytes, data: bytes,
                                fua: bool = False) -> int | None:
        """Write ``data`` at ``offset`` only if the range holds ``expected`` (as long as
        ``data``), as one step no other write to the range can come between. None: it
        matched and ``data`` is on the local medium (durably if ``fua``); else the offset,
        from ``offset``, of the first byte that differs, and nothing was written."""
        ...

    async def flush(self) -> None:
        """Return once every write completed before the call is durable."""
        ...


class TargetShape:
    """What every block target shares: its size, block sizes, read-only flag and the
    range checks, so that Volume and the test and rig targets refuse alike."""

    logical_block_size = 512  # the smallest addressable unit
    preferred_block_size = 4096  # aligned writes of this size avoid read-modify-write

    def __init__(self, size: int, read_only: bool = False) -> None:
        self._size = size
        self._read_only = read_only

    @property
    def size(self) -> int:
        return self._size

    @property
    def read_only(self) -> bool:
        return self._read_only

    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise TargetError.out_of_range(offset, length, self._size)

    def check_writable(self, offset: int, length: int) -> None:
        if self._read_only:
            raise TargetError(errno.EPERM, "volume is read-only")
        self.check_range(offset, length)

    def check_compare_and_write(self, offset: int, expected: bytes, data: bytes) -> None:
        if len(expected) != len(data):
            # A frontend's mistake, not the host's: the SCSI command splits one buffer.
            raise ValueError(f"compare and write: {len(expected)} bytes to compare, "
                             f"{len(data)} to write")
        self.check_writable(offset, len(data))


def first_mismatch(stored: bytes, expected: bytes) -> int | None:
    """Offset of the first byte where two equally long buffers differ (None: equal)."""
    if stored == expected:
        return None
    if len(stored) != len(expected):
        raise ValueError(f"comparing {len(stored)} bytes with {len(expected)}")
    # The XOR of the two as big-endian numbers is zero down to the first differing
    # byte: its bit length says where that byte is, without a Python loop per byte.
    diff = int.from_bytes(stored, "big") ^ int.from_bytes(expected, "big")
    return len(stored) - (diff.bit_length() + 7) // 8
