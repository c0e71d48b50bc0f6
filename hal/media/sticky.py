"""A medium whose failed flush stays failed: the error reaches every later caller.

Linux reports a writeback error to one fsync/fdatasync of a file and then clears
it, and the data it stood for may be gone from the page cache. The volume and the
mirror flush the same local medium from different threads: if the mirror's flush
took the error, the host's next FLUSH would succeed and acknowledge data that is
not on the disk. Wrapped in :class:`StickyFailureMedium`, the first failed flush
makes the medium *failed* and every later write and flush raises
:class:`MediumFailed`, naming the medium and the original error, until the medium
is opened again (a restart, an operator replacing the disk).

Errors of a device that is gone (ENODEV, ENXIO, ENOMEDIUM) are not latched: the
device itself fails every request while it is away, so no report can be lost.
"""

from __future__ import annotations

import errno
import os

from hal.media.base import Medium, MediumError, blocks_the_caller

_GONE = frozenset({errno.ENODEV, errno.ENXIO, errno.ENOMEDIUM})


class MediumFailed(MediumError):
    """A medium lost writes that were reported complete; it is failed until reopened."""


class StickyFailureMedium:
    """A Medium that latches its first flush failure (see the module's docstring)."""

    def __init__(self, inner: Medium, role: str = "local medium") -> None:
        self.inner = inner
        self.role = role
        self.failure: MediumFailed | None = None

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
        self._raise_if_failed()
        self.inner.pwrite(offset, data)  # type: ignore[arg-type]  # media take views too

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._raise_if_failed()
        self.inner.write_zeroes(offset, length, punch=punch)

    def flush(self) -> None:
        self._raise_if_failed()
        try:
            self.inner.flush()
        except OSError as exc:
            if exc.errno in _GONE:
                raise
            # Set before raising: the other thread's next call must see it too.
            err = exc.errno or errno.EIO
            self.failure = MediumFailed(
                err, f"{self.role} {self.inner.name}: flush failed ({os.strerror(err)}); "
                     f"writes since its last good flush may be lost (restart after checking "
                     f"or replacing it)")
            self._raise_if_failed()

    def close(self) -> None:
        self.inner.close()

    def _raise_if_failed(self) -> None:
        failure = self.failure
        if failure is not None:
            # A new exception each time: one instance re-raised would pile up tracebacks.
            raise MediumFailed(failure.errno, failure.strerror)
