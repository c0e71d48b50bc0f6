"""A medium in RAM: for tests and the torture harness, where files would only cost time."""

from __future__ import annotations

import threading

from hal.media.base import MediumError


class MemoryMedium:
    """``size`` bytes in a bytearray; durable for as long as the object lives.

    Thread-safe, since the mirror does its medium I/O in a worker thread.
    """

    def __init__(self, size: int, name: str = "memory") -> None:
        if size <= 0:
            raise ValueError(f"medium size must be positive, not {size}")
        self._data = bytearray(size)
        self._name = name
        self._lock = threading.Lock()
        self.flushes = 0

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def name(self) -> str:
        return self._name

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > len(self._data):
            raise MediumError(22, f"{self._name}: range {offset}+{length} outside "
                                  f"0..{len(self._data)}")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        with self._lock:
            return bytes(self._data[offset:offset + length])

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._check(offset, len(data))
        with self._lock:
            self._data[offset:offset + len(data)] = data

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check(offset, length)
        with self._lock:
            self._data[offset:offset + length] = bytes(length)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass
