"""A medium that asks, right before every write, whether it may be written now.

Two appliances of a pair reach the same media. Which one may write is the pair's
decision (a lease, a takeover), and it can change between the decision to write and the
write itself: a process stopped for a while, a worker thread that ran late. The check
therefore sits where the write happens, in whatever thread issues it: a write after the
fence closed fails with EACCES and never reaches the medium. Reads and flushes pass.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from hal.media.base import Medium, MediumError, blocks_the_caller


class MediumFenced(MediumError):
    """The medium may not be written by this appliance now."""


class FencedMedium:
    def __init__(self, inner: Medium, may_write: Callable[[], bool],
                 refusal: Callable[[], str] = lambda: "fenced") -> None:
        self.inner = inner
        self._may_write = may_write
        self._refusal = refusal
        self.refused = 0

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def blocking(self) -> bool:
        return blocks_the_caller(self.inner)

    def pread(self, offset: int, length: int) -> bytes:
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        self._check()
        self.inner.pwrite(offset, data)  # type: ignore[arg-type]  # media take views too

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check()
        self.inner.write_zeroes(offset, length, punch=punch)

    def flush(self) -> None:
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    def _check(self) -> None:
        if not self._may_write():
            self.refused += 1
            raise MediumFenced(errno.EACCES, f"{self.inner.name}: {self._refusal()}")
