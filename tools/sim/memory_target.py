"""An in-RAM BlockTarget for frontend unit tests and protocol fuzzing (no record, no mirror)."""

from __future__ import annotations

from firmware.volume.target import TargetShape, first_mismatch


class MemoryTarget(TargetShape):
    """A BlockTarget over a bytearray; counts flushes so tests can see them."""

    def __init__(self, size: int, read_only: bool = False) -> None:
        super().__init__(size, read_only)
        self._data = bytearray(size)
        self.flushes = 0
        self.fua_writes = 0

    async def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        return bytes(self._data[offset:offset + length])

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self.check_range(offset, len(data))
        self._data[offset:offset + len(data)] = data
        self.fua_writes += fua

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        self.check_range(offset, length)
        self._data[offset:offset + length] = bytes(length)

    async def trim(self, offset: int, length: int) -> None:
        await self.write_zeroes(offset, length)

    async def compare_and_write(self, offset: int, expected: bytes, data: bytes,
                                fua: bool = False) -> int | None:
        self.check_compare_and_write(offset, expected, data)
        # No await from the compare to the write: nothing else runs in between.
        mismatch = first_mismatch(bytes(self._data[offset:offset + len(expected)]), expected)
        if mismatch is None:
            self._data[offset:offset + len(data)] = data
            self.fua_writes += fua
        return mismatch

    async def flush(self) -> None:
        self.flushes += 1
