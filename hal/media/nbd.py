"""The second medium as any NBD export (qemu-nbd, nbdkit, another Tandem), through libnbd.

    NbdMedium("nbd://backup-host:10809/volume")
    NbdMedium("nbd+unix:///?socket=/run/nbd.sock")

A site without Tandem can be a mirror target this way. There are no epochs:
the export sees the writes of a run in order and flush() makes them durable,
but a link cut in the middle of a run leaves part of the run on the export
(so the copy is only crash-consistent at flush points; the mirror re-sends the
run's regions from its record). Failures are reported as by RemoteMedium: once
the connection dies, the next pwrite/write_zeroes/flush raises MediumError
(the writes since the last flush may be lost), and the call after it reconnects;
reset() drops a pending report.

With ``size`` (the volume's), nothing connects until the first call, so an
appliance starts while its target is down (the mirror retries); the export must
then be at least that large. ``rate_limit`` caps the bytes/s written.
"""

from __future__ import annotations

import errno
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import nbd

from hal.media.base import MediumError
from hal.media.remote.net import TokenBucket

CHUNK = 8 * 1024 * 1024  # bytes per NBD request (servers commonly take up to 32 MiB)
ZERO_CHUNK = 1024 * 1024 * 1024  # NBD lengths are 32-bit

T = TypeVar("T")


class NbdMedium:
    def __init__(self, uri: str, *, name: str | None = None, size: int | None = None,
                 rate_limit: float | None = None) -> None:
        self._uri = uri
        self._name = name or uri
        self._lock = threading.Lock()
        self._unflushed = False
        self._dead: MediumError | None = None
        self._closed = False
        self._bucket: TokenBucket | None = None
        self.rate_limit = rate_limit
        self.bytes_sent = 0  # data written (payload only)
        self.sessions = 0
        self._handle: nbd.NBD | None = None
        self._size = size if size is not None else 0
        if size is None:
            self._handle = self._connect()

    def _connect(self) -> nbd.NBD:
        handle = nbd.NBD()
        handle.set_handle_name("tandem-mirror")
        try:
            handle.connect_uri(self._uri)
            size = handle.get_size()
            self._can_zero = handle.can_zero()
            self._can_trim = handle.can_trim()
            self._can_flush = handle.can_flush()
            self.read_only = bool(handle.is_read_only())
        except nbd.Error as exc:
            raise MediumError(_errno(exc, errno.ECONNREFUSED),
                              f"{self._name}: cannot connect: {exc.string}") from None
        if self._size and size < self._size:
            with _quietly():
                handle.shutdown()
            raise MediumError(errno.ENOSPC, f"{self._name}: {size} bytes, the volume needs "
                                            f"{self._size}")
        if not self._size:
            self._size = size
        self.sessions += 1
        return handle

    @property
    def rate_limit(self) -> float | None:
        return self._bucket.rate if self._bucket else None

    @rate_limit.setter
    def rate_limit(self, rate: float | None) -> None:
        self._bucket = TokenBucket(rate) if rate else None

    def _pace(self, n: int) -> None:
        bucket = self._bucket
        if bucket is not None:
            delay = bucket.delay(n, time.monotonic())
            if delay > 0:
                time.sleep(delay)

    def reset(self) -> None:
        """Forget a pending loss report: the caller has written its run off."""
        with self._lock:
            self._unflushed = False

    def connect(self) -> None:
        """Connect now if not connected (the first call or one after a failure would)."""
        self._call(lambda h: None)

    def status(self) -> dict[str, object]:
        return {"remote": self._name, "connected": self.connected,
                "rate_limit": self.rate_limit, "sent_bytes": self.bytes_sent,
                "failure": str(self._dead) if self._dead else None}

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected(self) -> bool:
        return self._handle is not None and self._dead is None and not self._closed

    def _call(self, op: Callable[[nbd.NBD], T], writes: bool = False) -> T:
        """Run one libnbd call; reconnect first if the last connection died between runs."""
        with self._lock:
            if self._closed:
                raise MediumError(errno.EBADF, f"{self._name}: closed")
            if self._dead is not None:
                if self._unflushed:  # accepted writes may be lost: say so once, on a write
                    if writes:
                        self._unflushed = False
                    raise MediumError(self._dead.errno, self._dead.strerror)
                self._handle = None  # libnbd closes a handle when it is collected
                self._dead = None
            if self._handle is None:
                self._handle = self._connect()
            handle = self._handle
        try:
            result = op(handle)
        except nbd.Error as exc:
            error = MediumError(_errno(exc, errno.EIO), f"{self._name}: {exc.string}")
            if handle.aio_is_dead() or handle.aio_is_closed():
                with self._lock:
                    if self._handle is handle and self._dead is None:
                        self._dead = error
                    if writes:
                        self._unflushed = False  # this error is the report
            raise error from None
        if writes:
            self._unflushed = True
        return result

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise MediumError(errno.EINVAL, f"{self._name}: {offset}+{length} beyond "
                                            f"{self._size} bytes")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        parts = []
        for start in range(offset, offset + length, CHUNK):
            n = min(CHUNK, offset + length - start)
            parts.append(self._call(functools.partial(_pread, n=n, start=start)))
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            chunk = bytes(view[start:start + CHUNK])
            self._pace(len(chunk))
            self._call(functools.partial(_pwrite, chunk=chunk, at=offset + start), writes=True)
            self.bytes_sent += len(chunk)  # counted once the server took it

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check(offset, length)
        if self._handle is None:
            self.connect()
        if not self._can_zero:
            zeroes = bytes(min(length, CHUNK))
            for start in range(offset, offset + length, CHUNK):
                self.pwrite(start, zeroes[:min(CHUNK, offset + length - start)])
            return
        flags = 0 if punch else nbd.CMD_FLAG_NO_HOLE
        for start in range(offset, offset + length, ZERO_CHUNK):
            n = min(ZERO_CHUNK, offset + length - start)
            self._call(functools.partial(_zero, n=n, start=start, flags=flags), writes=True)

    def flush(self) -> None:
        with self._lock:
            unflushed, self._unflushed = self._unflushed, False
            dead = self._dead
        if dead is not None:
            if unflushed:
                raise MediumError(dead.errno, dead.strerror)
            return
        if self._handle is None:
            return  # never connected: nothing written
        if self._can_flush:
            self._call(lambda h: h.flush())

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            if self._dead is None:
                handle.shutdown()
        except nbd.Error:
            pass


class _quietly:
    """Ignore libnbd's errors while tidying up a connection that is going away."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: object, tb: object) -> bool:
        return isinstance(exc, nbd.Error)


def _errno(exc: nbd.Error, default: int) -> int:
    """libnbd's numeric errno (``exc.errno`` is its name, such as "ENOSPC")."""
    number = getattr(exc, "errnum", None)
    return number if isinstance(number, int) and number > 0 else default


# One libnbd call each, bound with functools.partial (a lambda in a loop would need
# default arguments to capture the loop's values, which mypy cannot type).
def _pread(handle: Any, n: int, start: int) -> bytes:
    return bytes(handle.pread(n, start))


def _pwrite(handle: Any, chunk: bytes, at: int) -> None:
    handle.pwrite(chunk, at)


def _zero(handle: Any, n: int, start: int, flags: int) -> None:
    handle.zero(n, start, flags)
