"""Media over an image file or a block device (pread/pwrite, fdatasync on flush)."""

from __future__ import annotations

import errno
import fcntl
import functools
import mmap
import os
import stat
import struct
from typing import Any

from hal.media.base import MediumError

_BLKGETSIZE64 = 0x80081272
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_DIRECT_ALIGN = 4096


@functools.cache
def _libc() -> Any:
    # Once per process: find_library runs `ldconfig -p` in a subprocess on every call.
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Linux fallocate(2) through libc; False where the file system does not support it."""
    import ctypes

    if _libc().fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err))


class FileMedium:
    """A medium backed by a regular file (sparse image) or a block device node.

    ``size`` creates (or extends) a regular file to that size; an existing
    file keeps its size when ``size`` is None. ``o_direct`` bypasses the page
    cache on block devices; I/O is then staged through an aligned buffer.
    """

    def __init__(self, path: str, size: int | None = None, *, create: bool = False,
                 o_direct: bool = False, read_only: bool = False) -> None:
        self._path = path
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create:
            flags |= os.O_CREAT
        if o_direct:
            flags |= os.O_DIRECT
        try:
            self._fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise MediumError(exc.errno, f"cannot open medium {path}: {exc.strerror}") from exc
        mode = os.fstat(self._fd).st_mode
        self._is_block = stat.S_ISBLK(mode)
        if self._is_block:
            buf = fcntl.ioctl(self._fd, _BLKGETSIZE64, b"\0" * 8)
            self._size = struct.unpack("Q", buf)[0]
        else:
            # A new (empty) image takes the requested size; an existing one keeps its own,
            # so a typo in --size never truncates a volume.
            if size is not None and os.fstat(self._fd).st_size == 0:
                os.ftruncate(self._fd, size)
            self._size = os.fstat(self._fd).st_size
        self._o_direct = o_direct
        self._punch_supported = not self._is_block

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._path

    @property
    def blocking(self) -> bool:
        """pread/pwrite wait for the device (O_DIRECT, or a block device's own I/O)."""
        return self._o_direct or self._is_block

    def fileno(self) -> int:
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        if self._o_direct:
            return self._direct_read(offset, length)
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise MediumError(exc.errno, f"read {self._path}@{offset}: {exc.strerror}") from exc
        if len(data) < length:  # sparse tail of a file that was cut short
            data += bytes(length - len(data))
        return data

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if self._o_direct:
            self._direct_write(offset, data)
            return
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise MediumError(exc.errno, f"write {self._path}@{offset}: {exc.strerror}") from exc

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        if punch and self._punch_supported:
            try:
                if _fallocate(self._fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                              offset, length):
                    return
            except OSError as exc:
                raise MediumError(exc.errno, f"punch {self._path}: {exc.strerror}") from exc
            self._punch_supported = False
        chunk = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            n = min(len(chunk), end - offset)
            self.pwrite(offset, chunk[:n] if n < len(chunk) else chunk)
            offset += n

    def flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise MediumError(exc.errno, f"flush {self._path}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # O_DIRECT needs aligned offsets, lengths and buffers: widen to 4 KiB and stage
    # through an anonymous mmap (page aligned). Unaligned writes read-modify-write.
    def _aligned_span(self, offset: int, length: int) -> tuple[int, int]:
        start = offset - offset % _DIRECT_ALIGN
        end = -(-(offset + length) // _DIRECT_ALIGN) * _DIRECT_ALIGN
        return start, end - start

    def _direct_read(self, offset: int, length: int) -> bytes:
        start, span = self._aligned_span(offset, length)
        buf = mmap.mmap(-1, span)
        try:
            os.preadv(self._fd, [buf], start)
            return bytes(buf[offset - start:offset - start + length])
        except OSError as exc:
            raise MediumError(exc.errno, f"read {self._path}@{offset}: {exc.strerror}") from exc
        finally:
            buf.close()

    def _direct_write(self, offset: int, data: bytes | memoryview) -> None:
        start, span = self._aligned_span(offset, len(data))
        buf = mmap.mmap(-1, span)
        try:
            if start != offset or span != len(data):
                os.preadv(self._fd, [buf], start)
            buf[offset - start:offset - start + len(data)] = data
            os.pwritev(self._fd, [buf], start)
        except OSError as exc:
            raise MediumError(exc.errno, f"write {self._path}@{offset}: {exc.strerror}") from exc
        finally:
            buf.close()


def open_medium(spec: dict[str, object], default_size: int | None = None) -> FileMedium:
    """Open a medium from a board-profile table: ``{"kind": "file"|"block", "path": ...}``."""
    kind = spec.get("kind", "file")
    path = str(spec["path"])
    if kind == "file":
        size = spec.get("size", default_size)
        return FileMedium(path, int(str(size)) if size is not None else None, create=True)
    if kind == "block":
        return FileMedium(path, o_direct=bool(spec.get("o_direct", True)))
    raise ValueError(f"unknown medium kind {kind!r} (expected 'file' or 'block')")
