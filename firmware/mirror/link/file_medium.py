"""A minimal Medium over an image file or block device, for the receiver.

Stand-in until ``hal.media.file.FileMedium`` lands; ``open_file_medium`` prefers
that one when it exists, so the receiver follows the HAL without a change here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import stat
from collections.abc import Callable

from hal.media.base import Medium, MediumError

_ZERO_CHUNK = 1024 * 1024


class LinkFileMedium:
    """pread/pwrite/fdatasync on one file descriptor; zeroes by fallocate when it can."""

    def __init__(self, path: str, size: int | None = None, create: bool = False,
                 o_direct: bool = False) -> None:
        del o_direct  # the receiver relies on flush(), not on O_DIRECT
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise MediumError(exc.errno, f"{path}: {exc.strerror}") from exc
        self._path = path
        self._block_device = stat.S_ISBLK(os.fstat(self._fd).st_mode)
        current = os.lseek(self._fd, 0, os.SEEK_END)
        if size is not None and current < size and not self._block_device:
            os.ftruncate(self._fd, size)
            current = size
        self._size = current

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._path

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise MediumError(errno.EINVAL, f"{self._path}: {offset}+{length} beyond "
                                            f"{self._size} bytes")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        parts = []
        done = 0
        try:
            while done < length:
                chunk = os.pread(self._fd, length - done, offset + done)
                if not chunk:
                    raise MediumError(errno.EIO, f"{self._path}: short read at {offset + done}")
                parts.append(chunk)
                done += len(chunk)
        except OSError as exc:
            raise _medium_error(self._path, exc) from exc
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        view = memoryview(data)
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            raise _medium_error(self._path, exc) from exc

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check(offset, length)
        if length == 0:
            return
        if not self._block_device:
            mode = (0x02 | 0x01) if punch else 0x10  # PUNCH_HOLE|KEEP_SIZE, or ZERO_RANGE
            if _fallocate(self._fd, mode, offset, length):
                return
        zeroes = bytes(min(length, _ZERO_CHUNK))
        done = 0
        while done < length:
            n = min(len(zeroes), length - done)
            self.pwrite(offset + done, zeroes[:n])
            done += n

    def flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise _medium_error(self._path, exc) from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@functools.cache
def _libc_fallocate() -> Callable[[int, int, int, int], int]:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc.fallocate


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Linux fallocate(2) through libc; False when the file system cannot do it."""
    return _libc_fallocate()(fd, mode, offset, length) == 0


def _medium_error(path: str, exc: OSError) -> MediumError:
    return MediumError(exc.errno or errno.EIO, f"{path}: {exc.strerror or exc}")


def open_file_medium(path: str, size: int | None = None, create: bool = False) -> Medium:
    """The HAL's FileMedium when it has landed, else the stand-in above."""
    create = create and not os.path.exists(path)
    try:
        from hal.media.file import FileMedium  # type: ignore[import-not-found]
    except ModuleNotFoundError:
        return LinkFileMedium(path, size=size if create else None, create=create)
    return FileMedium(path, size=size if create else None, create=create)
