"""The kernel's side of the TCMU ring, for driving the handler's ring core in tests.

Written from include/uapi/linux/target_core_user.h and the queueing rules of
drivers/target/target_core_user.c (queue_cmd_ring, tcmu_handle_completions),
independently of firmware/frontends/tcmu/ring.py: the entry layout comes from
ctypes structures that follow C's layout rules, so a wrong offset in the
handler shows up as a failed test rather than a mirrored mistake.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

PAGE = 4096
MAILBOX_BYTES = 128
OOOC, READ_LEN, TMR_CAP = 1, 2, 4
OP_PAD, OP_CMD, OP_TMR = 0, 1, 2
UFLAG_UNKNOWN_OP, UFLAG_READ_LEN = 1, 2


class Mailbox(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("version", ctypes.c_uint16), ("flags", ctypes.c_uint16),
                ("cmdr_off", ctypes.c_uint32), ("cmdr_size", ctypes.c_uint32),
                ("cmd_head", ctypes.c_uint32), ("_gap", ctypes.c_uint8 * 48),
                ("cmd_tail", ctypes.c_uint32), ("_line", ctypes.c_uint8 * 60)]


class EntryHeader(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("len_op", ctypes.c_uint32), ("cmd_id", ctypes.c_uint16),
                ("kflags", ctypes.c_uint8), ("uflags", ctypes.c_uint8)]


class Request(ctypes.Structure):       # natural alignment: the union is not packed
    _fields_ = [("iov_cnt", ctypes.c_uint32), ("iov_bidi_cnt", ctypes.c_uint32),
                ("iov_dif_cnt", ctypes.c_uint32), ("cdb_off", ctypes.c_uint64),
                ("pad1", ctypes.c_uint64), ("pad2", ctypes.c_uint64)]


class Response(ctypes.Structure):
    _fields_ = [("scsi_status", ctypes.c_uint8), ("pad1", ctypes.c_uint8),
                ("pad2", ctypes.c_uint16), ("read_len", ctypes.c_uint32),
                ("sense_buffer", ctypes.c_uint8 * 96)]


class RequestOrResponse(ctypes.Union):
    _fields_ = [("req", Request), ("rsp", Response)]


class Entry(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("hdr", EntryHeader), ("u", RequestOrResponse)]


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_uint64), ("iov_len", ctypes.c_uint64)]


class TmrEntry(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("hdr", EntryHeader), ("tmr_type", ctypes.c_uint8), ("pad1", ctypes.c_uint8),
                ("pad2", ctypes.c_uint16), ("cmd_cnt", ctypes.c_uint32),
                ("pad3", ctypes.c_uint64), ("pad4", ctypes.c_uint64)]


ENTRY_SIZE = ctypes.sizeof(Entry)
# Where C puts req.cdb_off and req.iov[] inside an entry (the union follows the 8-byte header).
CDB_OFF_OFFSET = Entry.u.offset + RequestOrResponse.req.offset + Request.cdb_off.offset
IOV_OFFSET = Entry.u.offset + ctypes.sizeof(Request)


@dataclass
class Completion:
    cmd_id: int
    status: int
    sense: bytes
    read_len: int | None
    data_in: bytes
    unknown_op: bool


@dataclass
class _Queued:
    cmd_id: int
    blocks: list[int]
    data_in_len: int
    entry_offset: int


@dataclass
class KernelRing:
    """A bytearray laid out like the kernel's TCMU mapping, with the kernel's two verbs."""

    cmdr_size: int = 4096 - MAILBOX_BYTES
    data_blocks: int = 32
    flags: int = OOOC | READ_LEN
    buf: bytearray = field(init=False)
    head: int = field(init=False, default=0)
    last_cleaned: int = field(init=False, default=0)
    next_id: int = field(init=False, default=1)
    free_blocks: list[int] = field(init=False)
    queued: dict[int, _Queued] = field(init=False, default_factory=dict)
    scatter_blocks: bool = False   # hand out data blocks in reverse to force several iovecs

    def __post_init__(self) -> None:
        self.data_off = MAILBOX_BYTES + self.cmdr_size
        self.buf = bytearray(self.data_off + self.data_blocks * PAGE)
        mb = Mailbox.from_buffer(self.buf)
        mb.version, mb.flags = 2, self.flags
        mb.cmdr_off, mb.cmdr_size = MAILBOX_BYTES, self.cmdr_size
        self.free_blocks = list(range(self.data_blocks))

    @property
    def mailbox(self) -> Mailbox:
        return Mailbox.from_buffer(self.buf)

    def _entry(self, ring_offset: int) -> Entry:
        return Entry.from_buffer(self.buf, MAILBOX_BYTES + ring_offset)

    def _space(self) -> int:
        used = (self.head - self.last_cleaned) % self.cmdr_size
        return self.cmdr_size - used - 1

    def queue(self, cdb: bytes, data_out: bytes = b"", data_in_len: int = 0) -> int:
        """Put one command in the ring as queue_cmd_ring does; return its cmd_id."""
        length = max(len(data_out), data_in_len)
        nblocks = -(-length // PAGE)
        if nblocks > len(self.free_blocks):
            raise RuntimeError("data area full")
        blocks = [self.free_blocks.pop(-1 if self.scatter_blocks else 0) for _ in range(nblocks)]
        iovecs: list[list[int]] = []
        remaining = length
        for block in blocks:
            base = self.data_off + block * PAGE
            take = min(PAGE, remaining)
            if iovecs and iovecs[-1][0] + iovecs[-1][1] == base:
                iovecs[-1][1] += take
            else:
                iovecs.append([base, take])
            remaining -= take
        pos = 0
        for base, size in iovecs:
            self.buf[base:base + size] = data_out[pos:pos + size].ljust(size, b"\0") \
                if data_out else bytes(size)
            pos += size
        base_size = max(IOV_OFFSET + len(iovecs) * ctypes.sizeof(IoVec), ENTRY_SIZE)
        size = base_size + -(-len(cdb) // 8) * 8
        needed = size if self.cmdr_size - self.head >= size else size + self.cmdr_size - self.head
        if self._space() < needed:
            raise RuntimeError("command ring full")
        if self.cmdr_size - self.head < size:
            pad = self._entry(self.head)
            pad.hdr.len_op = (self.cmdr_size - self.head) | OP_PAD
            pad.hdr.cmd_id = pad.hdr.kflags = pad.hdr.uflags = 0
            self.head = 0
        offset = self.head
        start = MAILBOX_BYTES + offset
        self.buf[start:start + size] = bytes(size)
        entry = self._entry(offset)
        entry.hdr.len_op = size | OP_CMD
        cmd_id = self.next_id
        self.next_id = self.next_id % 0xFFFF + 1
        entry.hdr.cmd_id = cmd_id
        entry.u.req.iov_cnt = len(iovecs)
        for index, (base, size_) in enumerate(iovecs):
            iov = IoVec.from_buffer(self.buf, start + IOV_OFFSET + index * ctypes.sizeof(IoVec))
            iov.iov_base, iov.iov_len = base, size_
        cdb_off = MAILBOX_BYTES + offset + base_size
        self.buf[cdb_off:cdb_off + len(cdb)] = cdb
        entry.u.req.cdb_off = cdb_off
        self.head = (offset + size) % self.cmdr_size
        self.mailbox.cmd_head = self.head
        self.queued[cmd_id] = _Queued(cmd_id, blocks, data_in_len, offset)
        return cmd_id

    def queue_raw(self, opcode: int, length: int) -> None:
        """An entry of another kind (TMR, or an opcode this kernel does not have yet)."""
        start = MAILBOX_BYTES + self.head
        self.buf[start:start + length] = bytes(length)
        header = EntryHeader.from_buffer(self.buf, start)
        header.len_op = length | opcode
        self.head = (self.head + length) % self.cmdr_size
        self.mailbox.cmd_head = self.head

    def queue_tmr(self, tmr_type: int, cmd_ids: list[int]) -> None:
        length = -(-(ctypes.sizeof(TmrEntry) + 2 * len(cmd_ids)) // 8) * 8
        start = MAILBOX_BYTES + self.head
        self.queue_raw(OP_TMR, length)
        tmr = TmrEntry.from_buffer(self.buf, start)
        tmr.tmr_type, tmr.cmd_cnt = tmr_type, len(cmd_ids)
        for index, cmd_id in enumerate(cmd_ids):
            at = start + ctypes.sizeof(TmrEntry) + 2 * index
            self.buf[at:at + 2] = cmd_id.to_bytes(2, "little")

    def collect(self) -> list[Completion]:
        """What tcmu_handle_completions finds between the last clean-up and cmd_tail."""
        done = []
        tail = self.mailbox.cmd_tail
        while self.last_cleaned != tail:
            entry = self._entry(self.last_cleaned)
            op, length = entry.hdr.len_op & 7, entry.hdr.len_op & ~7
            if op in (OP_PAD, OP_TMR):
                self.last_cleaned = (self.last_cleaned + length) % self.cmdr_size
                continue
            assert op == OP_CMD, f"entry op {op} at the tail"
            queued = self.queued.pop(entry.hdr.cmd_id)
            rsp = entry.u.rsp
            read_len = rsp.read_len if entry.hdr.uflags & UFLAG_READ_LEN else None
            data_len = queued.data_in_len if read_len is None else min(read_len,
                                                                      queued.data_in_len)
            data = b"".join(bytes(self.buf[self.data_off + b * PAGE:
                                           self.data_off + (b + 1) * PAGE])
                            for b in queued.blocks)[:data_len]
            done.append(Completion(entry.hdr.cmd_id, rsp.scsi_status,
                                   bytes(rsp.sense_buffer), read_len, data,
                                   bool(entry.hdr.uflags & UFLAG_UNKNOWN_OP)))
            self.free_blocks.extend(queued.blocks)
            self.last_cleaned = (self.last_cleaned + length) % self.cmdr_size
        return done
