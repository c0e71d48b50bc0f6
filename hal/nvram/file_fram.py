"""File-backed FRAM: the simulated board's NVRAM, with power-cut injection for tests.

The file holds exactly ``size`` bytes. With ``sync`` (the default) it is opened
O_DSYNC, so a write is durable when it returns -- the way a FRAM write is done when
its SPI frame ends -- and ``barrier`` has nothing to do. Without ``sync`` the page
cache holds writes until ``barrier`` (fdatasync); that is faster for tests that
do not crash the machine. With ``sync="process"`` writes go to the page cache and
``barrier`` does nothing: the FRAM then lives as long as the host's kernel does,
which is what the simulated board models -- its power cut is the appliance
process dying (kill -9), not the host crashing -- and a record update costs what
it costs on FRAM (microseconds), not a journal commit of the host's file system.

Power cuts (for crash-consistency tests of the layers above)::

    fram.arm_power_cut(after_bytes=5)
    fram.write(0, b"0123456789")      # stores b"01234", then raises PowerLost
    fram.read(0, 4)                   # PowerLost: the device is off
    fram.power_on()                   # back on; cells keep what reached them

The budget counts bytes over all writes after arming, in ascending address order
within each write, matching the byte-granular guarantee of the :class:`Nvram`
protocol. A write that fits in the remaining budget completes normally.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Literal

from hal.nvram.base import NvramError, PowerLost, check_range
from hal.nvram.stats import CountedOperations, NvramStats


class FileFram(CountedOperations):
    """NVRAM emulated by a file of exactly ``size`` bytes.

    An absent file is created zero-filled (so is an empty one: a creation
    interrupted before it was sized). An existing file of another size is an
    error rather than being resized: it is some other board's FRAM, or a profile
    typo that would otherwise cut the record short. The file is locked (flock) so
    two instances never share one FRAM.
    """

    def __init__(self, path: str | os.PathLike[str], size: int, *,
                 sync: bool | Literal["process"] = True) -> None:
        if sync not in (True, False, "process"):
            raise ValueError(f"sync must be true, false or 'process', not {sync!r}")
        if size <= 0:
            raise ValueError(f"FRAM size must be positive, not {size}")
        self._path = os.fspath(path)
        self._size = size
        self._sync = sync
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (os.O_DSYNC if sync is True else 0)
        try:
            fd = os.open(self._path, flags, 0o644)
        except OSError as exc:
            raise NvramError(
                exc.errno, f"cannot open FRAM file {self._path}: {exc.strerror}"
            ) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise NvramError(errno.EBUSY, f"FRAM file {self._path} is already open") from exc
            actual = os.fstat(fd).st_size
            if actual == 0:
                os.ftruncate(fd, size)
                if sync is True:
                    os.fsync(fd)
                    self._sync_directory()
            elif actual != size:
                raise NvramError(
                    errno.EINVAL,
                    f"FRAM file {self._path} holds {actual} bytes, the board expects {size}",
                )
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self._stats = NvramStats()
        self._cut_budget: int | None = None
        self._powered = True

    @property
    def slow_writes(self) -> bool:
        # "process": the page cache is the cells (see the module's docstring).
        return self._sync in (True, False)

    @property
    def size(self) -> int:
        return self._size

    @property
    def path(self) -> str:
        return self._path

    @property
    def powered(self) -> bool:
        """False between an injected power cut and :meth:`power_on`."""
        return self._powered

    def arm_power_cut(self, after_bytes: int) -> None:
        """Cut power once ``after_bytes`` more bytes have been written.

        The write that would store byte ``after_bytes + 1`` stores the bytes up to
        the budget, then raises :class:`PowerLost`; so does every later operation
        until :meth:`power_on`. ``after_bytes=0`` cuts at the next non-empty write.
        """
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._cut_budget = after_bytes

    def power_on(self) -> None:
        """Restore power (and cancel a cut that is armed but has not happened)."""
        self._powered = True
        self._cut_budget = None

    def read(self, offset: int, length: int) -> bytes:
        fd = self._live_fd()
        check_range(self._size, offset, length)
        self._stats.read_calls += 1
        out = bytearray()
        while len(out) < length:
            piece = os.pread(fd, length - len(out), offset + len(out))
            if not piece:
                raise NvramError(errno.EIO, f"FRAM file {self._path} shrank under us")
            out += piece
        self._stats.bytes_read += length
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        fd = self._live_fd()
        check_range(self._size, offset, len(data))
        view = memoryview(data).cast("B")
        self._stats.write_calls += 1
        budget = self._cut_budget
        if budget is not None and len(view) > budget:
            self._pwrite_all(fd, offset, view[:budget])
            self._cut_budget = None
            self._powered = False
            raise PowerLost(
                errno.EIO,
                f"power cut after {budget} of {len(view)} bytes written at offset {offset}",
            )
        self._pwrite_all(fd, offset, view)
        if budget is not None:
            self._cut_budget = budget - len(view)

    def barrier(self) -> None:
        fd = self._live_fd()
        if self._sync is False:
            os.fdatasync(fd)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # also drops the flock

    def _live_fd(self) -> int:
        if self._fd is None:
            raise NvramError(errno.EBADF, f"FRAM file {self._path} is closed")
        if not self._powered:
            raise PowerLost(errno.EIO, "FRAM is powered off (injected power cut)")
        return self._fd

    def _pwrite_all(self, fd: int, offset: int, data: memoryview) -> None:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
        self._stats.bytes_written += len(data)

    def _sync_directory(self) -> None:
        """Make the new file's directory entry durable too."""
        dirfd = os.open(os.path.dirname(os.path.abspath(self._path)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
