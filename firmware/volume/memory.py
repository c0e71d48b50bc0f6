"""An in-RAM BlockTarget for frontend unit tests and protocol fuzzing (no record, no mirror)."""

from __future__ import annotations

from firmware.volume.target import TargetError


class MemoryTarget:
    """A BlockTarget over a bytearray; counts flushes so tests can see them."""

    def __init__(self, size: int, read_only: bool = False) -> None:
        self._data = bytearray(size)
        self._read_only = read_only
        self.flushes = 0
        self.fua_writes = 0

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def logical_block_size(self) -> int:
        return 512

    @property
    def preferred_block_size(self) -> int:
        return 4096

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self._data):
            raise TargetError.out_of_range(offset, length, len(self._data))

    async def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return bytes(self._data[offset:offset + length])

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self._check(offset, len(data))
        self._data[offset:offset + len(data)] = data
        self.fua_writes += fua

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        self._check(offset, length)
        self._data[offset:offset + length] = bytes(length)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def flush(self) -> None:
        self.flushes += 1
