"""The receiver's epoch journal: an epoch is made durable here, whole, before the medium sees it.

Applying an epoch writes many places of the medium; a crash in the middle would
leave a mix of two epochs. So the receiver first appends the epoch's writes to
this file, then a commit record holding the count and a BLAKE2b digest of every
byte before it, and fdatasyncs once. Only then does it apply the epoch to the
medium and flush. At start-up a committed epoch is applied again: replaying
writes in order is idempotent, and the journal only ever holds the last applied
epoch or the one after it, so the medium always ends as some epoch's image.

Records: 4-byte big-endian length, then CBOR ``["W", offset, data]``,
``["Z", offset, length, punch]`` or ``["C", epoch, count, digest]``. Each epoch
is written from offset 0; bytes after the commit record are stale and ignored.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import cbor2

from hal.media.remote.frames import MAX_FRAME_SIZE, Write, Zero
from hal.wire import MalformedCbor, strict_cbor

_PREFIX = struct.Struct(">I")
_READ_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class JournalWrite:
    offset: int
    data: bytes


@dataclass(frozen=True)
class JournalZero:
    offset: int
    length: int
    punch: bool


JournalOp = JournalWrite | JournalZero


@dataclass(frozen=True)
class CommittedEpoch:
    epoch: int
    count: int
    end: int  # offset just past the commit record


class EpochJournal:
    """One epoch at a time, in a file beside the medium (or wherever --journal says)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._pos = 0
        self._count = 0
        self._hash = hashlib.blake2b()

    def lock(self) -> None:
        """Claim the copy for this process; BlockingIOError if another holds it."""
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def begin(self) -> None:
        """Start a new epoch at the beginning of the file."""
        self._pos = 0
        self._count = 0
        self._hash = hashlib.blake2b()

    def append(self, op: Write | Zero | JournalOp) -> None:
        if isinstance(op, Write | JournalWrite):
            record = ["W", op.offset, op.data]
        else:
            record = ["Z", op.offset, op.length, op.punch]
        self._put(_encode(record))
        self._count += 1

    def commit(self, epoch: int) -> None:
        """Seal the epoch and make it durable; after this it survives a crash whole."""
        self._put(_encode(["C", epoch, self._count, self._hash.digest()]), hashed=False)
        os.fdatasync(self._fd)

    def _put(self, record: bytes, hashed: bool = True) -> None:
        view = memoryview(record)
        done = 0
        while done < len(record):
            done += os.pwrite(self._fd, view[done:], self._pos + done)
        self._pos += len(record)
        if hashed:
            self._hash.update(record)

    def committed(self) -> CommittedEpoch | None:
        """The epoch the file holds, if its commit record and digest are intact."""
        digest = hashlib.blake2b()
        count = 0
        for record, raw, end in self._records():
            if record[0] == "C":
                epoch, want_count, want_digest = record[1:]
                if want_count == count and want_digest == digest.digest():
                    return CommittedEpoch(epoch, count, end)
                return None
            digest.update(raw)
            count += 1
        return None

    def ops(self, committed: CommittedEpoch) -> Iterator[JournalOp]:
        """The committed epoch's writes, in order, read back from the file."""
        for record, _raw, end in self._records():
            if end > committed.end or record[0] == "C":
                return
            if record[0] == "W":
                yield JournalWrite(record[1], record[2])
            else:
                yield JournalZero(record[1], record[2], record[3])

    def clear(self) -> None:
        """Forget the journal (after a replay, or when the copy is discarded)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.begin()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _records(self) -> Iterator[tuple[list, bytes, int]]:
        """(record, its raw bytes, offset past it) until the first malformed record."""
        pos = 0
        while True:
            head = os.pread(self._fd, _PREFIX.size, pos)
            if len(head) < _PREFIX.size:
                return
            (length,) = _PREFIX.unpack(head)
            if length == 0 or length > MAX_FRAME_SIZE:
                return
            payload = _pread_all(self._fd, length, pos + _PREFIX.size)
            if len(payload) < length:
                return
            record = _decode(payload)
            if record is None:
                return
            pos += _PREFIX.size + length
            yield record, head + payload, pos


def _encode(record: list) -> bytes:
    payload = cbor2.dumps(record)
    return _PREFIX.pack(len(payload)) + payload


def _decode(payload: bytes) -> list | None:
    try:
        value = strict_cbor(payload, max_depth=1)
    except MalformedCbor:  # a torn or stale record: the journal ends here
        return None
    if type(value) is not list or not value:
        return None
    shapes = {"W": (int, bytes), "Z": (int, int, bool), "C": (int, int, bytes)}
    shape = shapes.get(value[0]) if type(value[0]) is str else None
    if shape is None or len(value) != len(shape) + 1:
        return None
    if not all(type(v) is t for v, t in zip(value[1:], shape, strict=True)):
        return None
    return value


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    done = 0
    while done < length:
        chunk = os.pread(fd, min(length - done, _READ_CHUNK), offset + done)
        if not chunk:
            break
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)
