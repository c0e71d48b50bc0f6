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

    async def flush(self) -> None:
        """Return once every write completed before the call is durable."""
        ...
