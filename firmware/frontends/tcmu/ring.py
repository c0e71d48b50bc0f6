"""The TCMU command ring as the kernel lays it out, over a shared buffer (no I/O).

``target_core_user`` shares one mapping with the handler (see the kernel's
``include/uapi/linux/target_core_user.h``):

    0                      mailbox: version, flags, cmdr_off, cmdr_size, cmd_head;
                           cmd_tail (written by us) on its own 64-byte line
    cmdr_off               command ring of cmdr_size bytes: variable-length entries
    cmdr_off + cmdr_size   data area: the iovecs of the entries point here

The kernel appends entries at ``cmd_head``; we complete them by writing the
response into the entry at ``cmd_tail`` and moving ``cmd_tail`` past it. With
out-of-order completion (mailbox flag CAP_OOOC) the response of *any* pending
command may go into the tail entry: the kernel finds the command by the
``cmd_id`` written there. That is why a command's request (CDB and iovecs) is
copied out of the ring as soon as it is parsed: its entry may be reused for
another command's response before it finishes.

Layout facts worth a test each (the entry struct is ``__packed`` but its inner
union is not, so offsets follow natural alignment): an entry header is 8 bytes,
``req.cdb_off`` sits at byte 24 and ``req.iov[]`` at byte 48; ``rsp.scsi_status``
at 8, ``rsp.read_len`` at 12 and ``rsp.sense_buffer`` (96 bytes) at 16.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

MAILBOX_VERSION = 2

# Mailbox capability flags (set by the kernel).
FLAG_CAP_OOOC = 1 << 0          # out-of-order completions
FLAG_CAP_READ_LEN = 1 << 1      # rsp.read_len honoured with UFLAG_READ_LEN
FLAG_CAP_TMR = 1 << 2           # task-management notifications
FLAG_CAP_KEEP_BUF = 1 << 3

OP_PAD = 0
OP_CMD = 1
OP_TMR = 2
OP_MASK = 0x7

UFLAG_UNKNOWN_OP = 0x1
UFLAG_READ_LEN = 0x2

SENSE_BUFFER_SIZE = 96

_MAILBOX = struct.Struct("=HHIII")          # version, flags, cmdr_off, cmdr_size, cmd_head
MAILBOX_SIZE = 128
CMD_TAIL_OFFSET = 64
_U32 = struct.Struct("=I")
_HEADER = struct.Struct("=IHBB")            # len_op, cmd_id, kflags, uflags
HEADER_SIZE = _HEADER.size                  # 8
_REQUEST = struct.Struct("=III4xQ")         # iov_cnt, iov_bidi_cnt, iov_dif_cnt, cdb_off
REQUEST_OFFSET = 8
CDB_OFF_OFFSET = 24
IOV_OFFSET = 48
_IOVEC = struct.Struct("=QQ")               # iov_base (offset in the mapping), iov_len
RSP_STATUS_OFFSET = 8
RSP_READ_LEN_OFFSET = 12
RSP_SENSE_OFFSET = 16
ENTRY_MIN_SIZE = RSP_SENSE_OFFSET + SENSE_BUFFER_SIZE   # 112: sizeof(struct tcmu_cmd_entry)

# SCSI CDB length by opcode group (the kernel's scsi_command_size table);
# 0x7F is variable length: 8 bytes plus the additional length in byte 7.
_CDB_LENGTH_BY_GROUP = (6, 10, 10, 12, 16, 12, 10, 10)


class RingError(Exception):
    """The shared area does not hold a ring we understand, or an entry is malformed."""


class SharedBuffer(Protocol):
    """What the ring needs of the mapping: a writable bytes-like object (mmap, bytearray)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> bytes: ...

    def __setitem__(self, index: slice, value: bytes | memoryview) -> None: ...


def cdb_length(first_bytes: bytes) -> int:
    """Length of a CDB from its first bytes (at least 8 for variable-length CDBs)."""
    opcode = first_bytes[0]
    if opcode == 0x7F:
        return 8 + first_bytes[7]
    return _CDB_LENGTH_BY_GROUP[opcode >> 5]


@dataclass(frozen=True)
class Mailbox:
    version: int
    flags: int
    cmdr_off: int
    cmdr_size: int
    cmd_head: int
    cmd_tail: int

    @classmethod
    def parse(cls, buf: SharedBuffer) -> Mailbox:
        version, flags, cmdr_off, cmdr_size, head = _MAILBOX.unpack(buf[0:_MAILBOX.size])
        (tail,) = _U32.unpack(buf[CMD_TAIL_OFFSET:CMD_TAIL_OFFSET + 4])
        return cls(version, flags, cmdr_off, cmdr_size, head, tail)


@dataclass(frozen=True)
class Command:
    """A SCSI command copied out of a CMD entry; its data lives in the data area."""

    cmd_id: int
    cdb: bytes
    iovecs: tuple[tuple[int, int], ...]         # (offset in the mapping, length)
    bidi_iovecs: tuple[tuple[int, int], ...] = ()

    @property
    def buffer_length(self) -> int:
        """Bytes of data buffer the kernel gave this command (data-out or data-in)."""
        return sum(length for _, length in self.iovecs)


@dataclass(frozen=True)
class TaskManagement:
    """A TMR notification (only sent when the device's tmr_notification is on)."""

    tmr_type: int
    cmd_ids: tuple[int, ...]


@dataclass(frozen=True)
class UnknownEntry:
    """An entry whose ring opcode we do not know; it is flagged UNKNOWN_OP and skipped."""

    opcode: int
    offset: int


RingEvent = Command | TaskManagement | UnknownEntry


class CommandRing:
    """Parses new entries and writes completions, keeping our view of head and tail.

    ``take()`` returns what the kernel queued since the last call;
    ``complete()`` writes one command's response into the ring. After a batch
    of completions the caller notifies the kernel (a write to the UIO fd).
    """

    def __init__(self, buf: SharedBuffer) -> None:
        mailbox = Mailbox.parse(buf)
        if mailbox.version != MAILBOX_VERSION:
            raise RingError(f"TCMU mailbox version {mailbox.version}, "
                            f"this handler speaks {MAILBOX_VERSION}")
        if mailbox.cmdr_off < MAILBOX_SIZE or mailbox.cmdr_size < ENTRY_MIN_SIZE or \
                mailbox.cmdr_off + mailbox.cmdr_size > len(buf):
            raise RingError(f"command ring {mailbox.cmdr_off}+{mailbox.cmdr_size} "
                            f"does not fit the {len(buf)}-byte mapping")
        if mailbox.cmd_tail >= mailbox.cmdr_size or mailbox.cmd_tail % 8:
            raise RingError(f"cmd_tail {mailbox.cmd_tail} is not an entry boundary")
        self._buf = buf
        self.flags = mailbox.flags
        self._ring_off = mailbox.cmdr_off
        self._ring_size = mailbox.cmdr_size
        self._tail = mailbox.cmd_tail       # first entry not yet completed
        self._parsed = mailbox.cmd_tail     # first entry not yet parsed
        self._in_flight = 0                 # parsed CMD entries not yet completed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def ring_offset(self) -> int:
        """Where the command ring starts in the shared map (the mailbox's cmdr_off)."""
        return self._ring_off

    @property
    def ring_size(self) -> int:
        return self._ring_size

    @property
    def tail(self) -> int:
        """Our cmd_tail: everything before it has been answered or skipped."""
        return self._tail

    @property
    def out_of_order(self) -> bool:
        return bool(self.flags & FLAG_CAP_OOOC)

    def head(self) -> int:
        (head,) = _U32.unpack(self._buf[12:16])
        return head

    def take(self) -> list[RingEvent]:
        """Parse every entry between our parse position and the kernel's cmd_head."""
        head = self.head()
        if head >= self._ring_size or head % 8:
            raise RingError(f"cmd_head {head} is not an entry boundary")
        events: list[RingEvent] = []
        while self._parsed != head:
            offset = self._parsed
            len_op, cmd_id, _kflags, uflags = self._header(offset)
            opcode, length = len_op & OP_MASK, len_op & ~OP_MASK
            if length < HEADER_SIZE or offset + length > self._ring_size:
                raise RingError(f"entry at {offset} has length {length}")
            if opcode == OP_CMD:
                events.append(self._parse_command(offset, cmd_id, length))
                self._in_flight += 1
            elif opcode == OP_TMR:
                events.append(self._parse_tmr(offset, length))
            elif opcode != OP_PAD:
                self._set_uflags(offset, uflags | UFLAG_UNKNOWN_OP)
                events.append(UnknownEntry(opcode, offset))
            self._parsed = (offset + length) % self._ring_size
        self._skip_consumed()
        return events

    def complete(self, cmd_id: int, status: int, sense: bytes = b"",
                 read_len: int | None = None) -> None:
        """Write a response for ``cmd_id`` into the tail entry and move the tail past it.

        ``read_len`` (data-in commands) tells the kernel how many bytes of the
        buffer hold data, so short answers carry a residual instead of stale bytes.
        """
        if self._in_flight == 0:
            raise RingError(f"completion for cmd {cmd_id} with no command in flight")
        if len(sense) > SENSE_BUFFER_SIZE:
            raise RingError(f"sense data of {len(sense)} bytes")
        self._skip_consumed()
        offset = self._tail
        len_op, _old_id, kflags, uflags = self._header(offset)
        uflags &= ~(UFLAG_READ_LEN | UFLAG_UNKNOWN_OP)
        if read_len is not None:
            uflags |= UFLAG_READ_LEN
        base = self._ring_off + offset
        self._buf[base:base + HEADER_SIZE] = _HEADER.pack(len_op, cmd_id, kflags, uflags)
        rsp = bytearray(ENTRY_MIN_SIZE - RSP_STATUS_OFFSET)
        rsp[0] = status
        struct.pack_into("=I", rsp, RSP_READ_LEN_OFFSET - RSP_STATUS_OFFSET, read_len or 0)
        sense_at = RSP_SENSE_OFFSET - RSP_STATUS_OFFSET
        rsp[sense_at:sense_at + len(sense)] = sense
        self._buf[base + RSP_STATUS_OFFSET:base + ENTRY_MIN_SIZE] = bytes(rsp)
        self._in_flight -= 1
        self._tail = (offset + (len_op & ~OP_MASK)) % self._ring_size
        self._skip_consumed()

    def gather(self, iovecs: Iterable[tuple[int, int]], limit: int | None = None) -> bytes:
        """The bytes the iovecs point at (data-out), at most ``limit`` of them."""
        parts = []
        remaining = limit
        for base, length in iovecs:
            if remaining is not None:
                length = min(length, remaining)
                remaining -= length
            self._check_data(base, length)
            parts.append(self._buf[base:base + length])
            if remaining == 0:
                break
        return b"".join(parts)

    def scatter(self, iovecs: Iterable[tuple[int, int]], data: bytes | memoryview) -> int:
        """Copy ``data`` into the iovecs (data-in); return how many bytes fit."""
        done = 0
        view = memoryview(data)
        for base, length in iovecs:
            if done >= len(data):
                break
            chunk = view[done:done + length]
            self._check_data(base, len(chunk))
            self._buf[base:base + len(chunk)] = chunk
            done += len(chunk)
        return done

    # -- internals ---------------------------------------------------------------------

    def _header(self, offset: int) -> tuple[int, int, int, int]:
        base = self._ring_off + offset
        return _HEADER.unpack(self._buf[base:base + HEADER_SIZE])

    def _set_uflags(self, offset: int, uflags: int) -> None:
        base = self._ring_off + offset + 7
        self._buf[base:base + 1] = bytes((uflags,))

    def _parse_command(self, offset: int, cmd_id: int, length: int) -> Command:
        base = self._ring_off + offset
        if length < IOV_OFFSET:
            raise RingError(f"CMD entry at {offset} of {length} bytes is too short")
        iov_cnt, bidi_cnt, dif_cnt, cdb_off = _REQUEST.unpack(
            self._buf[base + REQUEST_OFFSET:base + REQUEST_OFFSET + _REQUEST.size])
        total = iov_cnt + bidi_cnt + dif_cnt
        if IOV_OFFSET + total * _IOVEC.size > length:
            raise RingError(f"CMD entry at {offset}: {total} iovecs overrun its {length} bytes")
        raw = self._buf[base + IOV_OFFSET:base + IOV_OFFSET + total * _IOVEC.size]
        iovecs = tuple(_IOVEC.iter_unpack(raw))
        if cdb_off + 8 > len(self._buf):
            raise RingError(f"CMD entry at {offset}: cdb_off {cdb_off} outside the mapping")
        size = cdb_length(self._buf[cdb_off:cdb_off + 8])
        cdb = bytes(self._buf[cdb_off:cdb_off + size])
        return Command(cmd_id, cdb, iovecs[:iov_cnt], iovecs[iov_cnt:iov_cnt + bidi_cnt])

    def _parse_tmr(self, offset: int, length: int) -> TaskManagement:
        base = self._ring_off + offset
        tmr_type = self._buf[base + 8:base + 9][0]
        (count,) = _U32.unpack(self._buf[base + 12:base + 16])
        count = min(count, max(0, (length - 32) // 2))
        ids = struct.unpack(f"={count}H", self._buf[base + 32:base + 32 + 2 * count])
        return TaskManagement(tmr_type, ids)

    def _skip_consumed(self) -> None:
        """Move the tail over parsed entries that need no response (PAD, TMR, unknown)."""
        while self._tail != self._parsed:
            len_op = self._header(self._tail)[0]
            if len_op & OP_MASK == OP_CMD:
                break
            self._tail = (self._tail + (len_op & ~OP_MASK)) % self._ring_size
        self._buf[CMD_TAIL_OFFSET:CMD_TAIL_OFFSET + 4] = _U32.pack(self._tail)

    def _check_data(self, base: int, length: int) -> None:
        if base < self._ring_off + self._ring_size or base + length > len(self._buf):
            raise RingError(f"iovec {base}+{length} outside the data area")
