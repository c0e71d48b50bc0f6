"""The SCSI block command set (SBC-3 / SPC-4 subset) answered over a BlockTarget.

``ScsiDisk.execute(cdb, data_out, buffer_length)`` is the whole interface: it
decodes a CDB, calls the volume, and returns status, data-in and sense data.
Nothing here knows about the TCMU ring; the kernel's target core answers
REPORT LUNS and persistent reservations itself, everything else reaches us.

Volume errors (``TargetError.errno``) become sense data through
``sense.sense_for_errno``; malformed or unsupported CDBs become ILLEGAL REQUEST
with a field pointer at the offending byte.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from firmware.frontends.tcmu import sense as sk
from firmware.frontends.tcmu.alua import (
    TPGS_IMPLICIT,
    PortGroups,
    port_designators,
    report_target_port_groups,
)
from firmware.frontends.tcmu.sense import CheckCondition, Sense, invalid_field
from firmware.volume.target import BlockTarget, TargetError, first_mismatch

# Operation codes.
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
VERIFY_10 = 0x2F
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_SAME_10 = 0x41
UNMAP = 0x42
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
VERIFY_16 = 0x8F
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
MAINTENANCE_IN = 0xA3
READ_12 = 0xA8
WRITE_12 = 0xAA
VERIFY_12 = 0xAF

SA_READ_CAPACITY_16 = 0x10
SA_REPORT_SUPPORTED_OPERATION_CODES = 0x0C
SA_REPORT_TARGET_PORT_GROUPS = 0x0A

# Mode pages.
PAGE_CACHING = 0x08
PAGE_CONTROL = 0x0A
PAGE_ALL = 0x3F

# VPD pages.
VPD_SUPPORTED_PAGES = 0x00
VPD_UNIT_SERIAL = 0x80
VPD_DEVICE_IDENTIFICATION = 0x83
VPD_BLOCK_LIMITS = 0xB0
VPD_BLOCK_CHARACTERISTICS = 0xB1
VPD_LOGICAL_BLOCK_PROVISIONING = 0xB2

# Version descriptors claimed in standard INQUIRY data: SAM-5, SPC-4, SBC-3.
VERSION_DESCRIPTORS = (0x00A0, 0x0460, 0x04C0)

# Data-out chunk used to expand a WRITE SAME pattern (bounded memory per command).
WRITE_SAME_CHUNK = 1 << 20

INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT = (0x0E, 0x03)


@dataclass(frozen=True)
class DiskIdentity:
    """What the disk says about itself: names, serial and the limits it advertises."""

    serial: str
    vendor: str = "TANDEM"
    product: str = "MIRROR VOLUME"
    revision: str = "0001"
    # Largest READ/WRITE accepted (32 MiB at 512-byte blocks; the TCMU data area must hold
    # it) and the size initiators should use (Linux sizes its requests by it: 1 MiB).
    max_transfer_blocks: int = 65536
    optimal_transfer_blocks: int = 2048
    max_unmap_blocks: int = 0x100000
    max_unmap_descriptors: int = 256
    max_write_same_blocks: int = 0x100000
    # COMPARE AND WRITE: as much as its one-byte NUMBER OF LOGICAL BLOCKS can ask, so no
    # host has to split one. The data-out is twice that (255 KiB at 512-byte blocks):
    # the TCMU data area, sized for 32 MiB commands, holds it many times over, and it
    # is under max_transfer_blocks (the limit below the two). VMware's ATS uses 1.
    max_compare_and_write_blocks: int = 255
    write_cache: bool = True                # acknowledged writes need a flush to be durable

    def naa(self) -> bytes:
        """An 8-byte NAA 3 (locally assigned) designator derived from the serial."""
        digest = int.from_bytes(hashlib.sha256(self.serial.encode()).digest()[:8], "big")
        return ((0x3 << 60) | (digest & ((1 << 60) - 1))).to_bytes(8, "big")


@dataclass(frozen=True)
class ScsiResult:
    status: int
    data: bytes = b""           # data-in, already cut to the allocation length
    sense: bytes = b""

    @classmethod
    def check_condition(cls, sense: Sense) -> ScsiResult:
        return cls(sk.CHECK_CONDITION, sense=sense.fixed())


GOOD = ScsiResult(sk.GOOD)


@dataclass(frozen=True)
class _Opcode:
    """One row of the command table: how REPORT SUPPORTED OPERATION CODES describes it."""

    opcode: int
    usage: bytes                # CDB usage bitmap; byte 0 is the opcode itself
    service_action: int | None = None
    data_out: bool = False


def _usage(opcode: int, *rest: int) -> bytes:
    return bytes((opcode, *rest))


# The commands this disk implements, with their CDB usage data (SPC-4 6.35.3).
_OPCODES: tuple[_Opcode, ...] = (
    _Opcode(TEST_UNIT_READY, _usage(0x00, 0, 0, 0, 0, 0x07)),
    _Opcode(REQUEST_SENSE, _usage(0x03, 0x01, 0, 0, 0xFF, 0x07)),
    _Opcode(READ_6, _usage(0x08, 0x1F, 0xFF, 0xFF, 0xFF, 0x07)),
    _Opcode(WRITE_6, _usage(0x0A, 0x1F, 0xFF, 0xFF, 0xFF, 0x07), data_out=True),
    _Opcode(INQUIRY, _usage(0x12, 0x01, 0xFF, 0xFF, 0xFF, 0x07)),
    _Opcode(MODE_SENSE_6, _usage(0x1A, 0x08, 0xFF, 0xFF, 0xFF, 0x07)),
    _Opcode(START_STOP_UNIT, _usage(0x1B, 0x01, 0, 0x0F, 0xF7, 0x07)),
    _Opcode(READ_CAPACITY_10, _usage(0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, 0x07)),
    _Opcode(READ_10, _usage(0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07)),
    _Opcode(WRITE_10, _usage(0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07),
            data_out=True),
    _Opcode(VERIFY_10, _usage(0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07),
            data_out=True),
    _Opcode(SYNCHRONIZE_CACHE_10,
            _usage(0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07)),
    _Opcode(WRITE_SAME_10, _usage(0x41, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x07),
            data_out=True),
    _Opcode(UNMAP, _usage(0x42, 0x00, 0, 0, 0, 0, 0x1F, 0xFF, 0xFF, 0x07), data_out=True),
    _Opcode(MODE_SENSE_10, _usage(0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0x07)),
    _Opcode(READ_16, _usage(0x88, 0xF8, *(0xFF,) * 12, 0x1F, 0x07)),
    _Opcode(COMPARE_AND_WRITE, _usage(0x89, 0xF8, *(0xFF,) * 8, 0, 0, 0, 0xFF, 0x1F, 0x07),
            data_out=True),
    _Opcode(WRITE_16, _usage(0x8A, 0xF8, *(0xFF,) * 12, 0x1F, 0x07), data_out=True),
    _Opcode(VERIFY_16, _usage(0x8F, 0xF6, *(0xFF,) * 12, 0x1F, 0x07), data_out=True),
    _Opcode(SYNCHRONIZE_CACHE_16, _usage(0x91, 0x02, *(0xFF,) * 12, 0x1F, 0x07)),
    _Opcode(WRITE_SAME_16, _usage(0x93, 0xF9, *(0xFF,) * 12, 0x1F, 0x07), data_out=True),
    _Opcode(SERVICE_ACTION_IN_16,
            _usage(0x9E, 0x10, *(0xFF,) * 8, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
            service_action=SA_READ_CAPACITY_16),
    _Opcode(MAINTENANCE_IN,
            _usage(0xA3, 0xEA, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
            service_action=SA_REPORT_TARGET_PORT_GROUPS),
    _Opcode(MAINTENANCE_IN,
            _usage(0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0x07),
            service_action=SA_REPORT_SUPPORTED_OPERATION_CODES),
    _Opcode(READ_12, _usage(0xA8, 0xF8, *(0xFF,) * 8, 0x1F, 0x07)),
    _Opcode(WRITE_12, _usage(0xAA, 0xF8, *(0xFF,) * 8, 0x1F, 0x07), data_out=True),
    _Opcode(VERIFY_12, _usage(0xAF, 0xF6, *(0xFF,) * 8, 0x1F, 0x07), data_out=True),
)
_BY_OPCODE = {row.opcode: row for row in _OPCODES}
_BY_ACTION = {(row.opcode, row.service_action): row for row in _OPCODES}
_SERVICE_ACTION_OPCODES = {row.opcode for row in _OPCODES if row.service_action is not None}
_DATA_OUT_OPCODES = frozenset(row.opcode for row in _OPCODES if row.data_out)


def wants_data_out(cdb: bytes) -> bool:
    """Whether the command carries data from the initiator (so its buffer must be read)."""
    return bool(cdb) and cdb[0] in _DATA_OUT_OPCODES


def _be(data: bytes, start: int, length: int) -> int:
    return int.from_bytes(data[start:start + length], "big")


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width, b" ")


@dataclass(frozen=True)
class _Transfer:
    """The common fields of READ/WRITE/VERIFY CDBs."""

    lba: int
    blocks: int
    flags: int          # byte 1: RDPROTECT/WRPROTECT (7-5), DPO (4), FUA (3)


def _decode_transfer(cdb: bytes) -> _Transfer:
    opcode = cdb[0]
    if opcode in (READ_6, WRITE_6):
        blocks = cdb[4] or 256      # a 6-byte CDB's transfer length 0 means 256 blocks
        return _Transfer(_be(cdb, 1, 3) & 0x1FFFFF, blocks, 0)
    if opcode in (READ_10, WRITE_10, VERIFY_10):
        return _Transfer(_be(cdb, 2, 4), _be(cdb, 7, 2), cdb[1])
    if opcode in (READ_12, WRITE_12, VERIFY_12):
        return _Transfer(_be(cdb, 2, 4), _be(cdb, 6, 4), cdb[1])
    return _Transfer(_be(cdb, 2, 8), _be(cdb, 10, 4), cdb[1])


Handler = Callable[[bytes, bytes, int], Awaitable[ScsiResult]]


@dataclass
class ScsiDisk:
    """A direct-access block device (peripheral type 0) over a BlockTarget."""

    target: BlockTarget
    identity: DiskIdentity
    # The target port groups (alua.py): one, always active, unless a pair says more.
    ports: PortGroups = field(default_factory=PortGroups.alone)
    _handlers: dict[int, Handler] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._handlers = {
            TEST_UNIT_READY: self._test_unit_ready,
            REQUEST_SENSE: self._request_sense,
            INQUIRY: self._inquiry,
            MODE_SENSE_6: self._mode_sense,
            MODE_SENSE_10: self._mode_sense,
            START_STOP_UNIT: self._start_stop_unit,
            READ_CAPACITY_10: self._read_capacity_10,
            SERVICE_ACTION_IN_16: self._service_action_in,
            MAINTENANCE_IN: self._maintenance_in,
            SYNCHRONIZE_CACHE_10: self._synchronize_cache,
            SYNCHRONIZE_CACHE_16: self._synchronize_cache,
            UNMAP: self._unmap,
            WRITE_SAME_10: self._write_same,
            WRITE_SAME_16: self._write_same,
            COMPARE_AND_WRITE: self._compare_and_write,
        }
        for opcode in (READ_6, READ_10, READ_12, READ_16):
            self._handlers[opcode] = self._read
        for opcode in (WRITE_6, WRITE_10, WRITE_12, WRITE_16):
            self._handlers[opcode] = self._write
        for opcode in (VERIFY_10, VERIFY_12, VERIFY_16):
            self._handlers[opcode] = self._verify

    @property
    def block_size(self) -> int:
        return self.target.logical_block_size

    @property
    def block_count(self) -> int:
        return self.target.size // self.block_size

    async def execute(self, cdb: bytes, data_out: bytes = b"",
                      buffer_length: int = 0) -> ScsiResult:
        """Run one command. ``buffer_length`` is the size of the initiator's buffer
        (the expected data transfer length); data-in is cut to it."""
        handler = self._handlers.get(cdb[0]) if cdb else None
        if handler is None:
            return ScsiResult.check_condition(
                Sense(sk.ILLEGAL_REQUEST, sk.INVALID_COMMAND_OPERATION_CODE, 0))
        if len(cdb) < len(_BY_OPCODE[cdb[0]].usage):
            return ScsiResult.check_condition(Sense(sk.ILLEGAL_REQUEST, sk.INVALID_FIELD_IN_CDB))
        try:
            result = await handler(cdb, data_out, buffer_length)
        except CheckCondition as exc:
            return ScsiResult.check_condition(exc.sense)
        except TargetError as exc:
            writing = cdb[0] in _DATA_OUT_OPCODES or cdb[0] in (
                SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16)
            return ScsiResult.check_condition(sk.sense_for_errno(exc.errno, writing))
        if len(result.data) > buffer_length:
            result = ScsiResult(result.status, result.data[:buffer_length], result.sense)
        return result

    # -- checks shared by the media commands --------------------------------------------

    def _check_range(self, lba: int, blocks: int) -> None:
        if lba + blocks > self.block_count:
            raise CheckCondition(Sense(sk.ILLEGAL_REQUEST, sk.LBA_OUT_OF_RANGE))

    def _check_writable(self) -> None:
        if self.target.read_only:
            raise CheckCondition(Sense(sk.DATA_PROTECT, sk.WRITE_PROTECTED))

    def _check_transfer_length(self, blocks: int, field_pointer: int) -> None:
        if blocks > self.identity.max_transfer_blocks:
            raise invalid_field(field_pointer)

    @property
    def max_compare_and_write_blocks(self) -> int:
        """What the Block Limits page advertises: within the one-byte field and the
        largest transfer (SBC-4 counts a COMPARE AND WRITE's blocks against both)."""
        ident = self.identity
        return min(ident.max_compare_and_write_blocks, ident.max_transfer_blocks, 0xFF)

    # -- media access ------------------------------------------------------------------

    async def _read(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        xfer = _decode_transfer(cdb)
        if xfer.flags & 0xE0:               # RDPROTECT: no protection information here
            raise invalid_field(1, 7)
        self._check_range(xfer.lba, xfer.blocks)
        self._check_transfer_length(xfer.blocks, _length_field(cdb[0]))
        if xfer.blocks == 0:
            return GOOD
        bs = self.block_size
        data = await self.target.read(xfer.lba * bs, xfer.blocks * bs)
        return ScsiResult(sk.GOOD, data)

    async def _write(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        xfer = _decode_transfer(cdb)
        self._check_writable()
        if xfer.flags & 0xE0:               # WRPROTECT
            raise invalid_field(1, 7)
        self._check_range(xfer.lba, xfer.blocks)
        self._check_transfer_length(xfer.blocks, _length_field(cdb[0]))
        if xfer.blocks == 0:
            return GOOD
        bs = self.block_size
        needed = xfer.blocks * bs
        if len(data_out) < needed:
            # The initiator sent less than the CDB asks for: write nothing (SPC-4 / FCP-4 b).
            raise CheckCondition(Sense(sk.ILLEGAL_REQUEST,
                                       INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT))
        await self.target.write(xfer.lba * bs, data_out[:needed], fua=bool(xfer.flags & 0x08))
        return GOOD

    async def _verify(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        xfer = _decode_transfer(cdb)
        if xfer.flags & 0xE0:               # VRPROTECT
            raise invalid_field(1, 7)
        bytchk = (xfer.flags >> 1) & 0x3
        if bytchk in (2, 3):                # 2 reserved; 3 (one block vs. all) not offered
            raise invalid_field(1, 2)
        self._check_range(xfer.lba, xfer.blocks)
        self._check_transfer_length(xfer.blocks, _length_field(cdb[0]))
        if xfer.blocks == 0:
            return GOOD
        bs = self.block_size
        stored = await self.target.read(xfer.lba * bs, xfer.blocks * bs)
        if bytchk == 0:
            return GOOD                     # medium verification: the read succeeded
        if len(data_out) < len(stored):
            raise CheckCondition(Sense(sk.ILLEGAL_REQUEST,
                                       INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT))
        offset = first_mismatch(stored, data_out[:len(stored)])
        if offset is None:
            return GOOD
        return _miscompare(offset)

    async def _compare_and_write(self, cdb: bytes, data_out: bytes,
                                 buffer_length: int) -> ScsiResult:
        """COMPARE AND WRITE (SBC-4 5.2): the data-out is the verify data (N blocks) then
        the write data (N blocks); the write happens only if the range holds the verify
        data, atomically (the target's compare_and_write)."""
        self._check_writable()
        flags = cdb[1]
        if flags & 0xE0:                    # WRPROTECT
            raise invalid_field(1, 7)
        lba, blocks = _be(cdb, 2, 8), cdb[13]
        if blocks > self.max_compare_and_write_blocks:
            raise invalid_field(13)
        self._check_range(lba, blocks)
        bs = self.block_size
        length = blocks * bs
        if len(data_out) != 2 * length:
            # NUMBER OF LOGICAL BLOCKS disagrees with what the initiator sent: do nothing.
            # Pointed at as a CDB field rather than as the information unit (which
            # _write reports for short data): libiscsi asks for 256 blocks with the byte
            # wrapped to 0 and 512 blocks of data-out, and wants INVALID FIELD IN CDB.
            raise invalid_field(13)
        if blocks == 0:
            return GOOD                     # nothing to compare, nothing written
        mismatch = await self.target.compare_and_write(
            lba * bs, data_out[:length], data_out[length:], fua=bool(flags & 0x08))
        if mismatch is None:
            return GOOD
        # INFORMATION: the byte offset of the first difference in the verify data.
        return _miscompare(mismatch)

    async def _synchronize_cache(self, cdb: bytes, data_out: bytes,
                                 buffer_length: int) -> ScsiResult:
        if cdb[0] == SYNCHRONIZE_CACHE_10:
            lba, blocks = _be(cdb, 2, 4), _be(cdb, 7, 2)
        else:
            lba, blocks = _be(cdb, 2, 8), _be(cdb, 10, 4)
        self._check_range(lba, blocks)
        await self.target.flush()
        return GOOD

    async def _unmap(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        self._check_writable()
        if cdb[1] & 0x01:                   # ANCHOR: no anchored state here (ANC_SUP=0)
            raise invalid_field(1, 0)
        param_length = min(_be(cdb, 7, 2), len(data_out))
        if param_length == 0:
            return GOOD
        if param_length < 8:
            raise sk.illegal_request(sk.PARAMETER_LIST_LENGTH_ERROR, 7)
        params = data_out[:param_length]
        descriptor_bytes = min(_be(params, 2, 2), param_length - 8) // 16 * 16
        count = descriptor_bytes // 16
        if count > self.identity.max_unmap_descriptors:
            raise sk.illegal_request(sk.INVALID_FIELD_IN_PARAMETER_LIST, 2, in_cdb=False)
        ranges = []
        for index in range(count):
            start = 8 + 16 * index
            lba, blocks = _be(params, start, 8), _be(params, start + 8, 4)
            if lba + blocks > self.block_count:
                raise CheckCondition(Sense(sk.ILLEGAL_REQUEST, sk.LBA_OUT_OF_RANGE))
            if blocks > self.identity.max_unmap_blocks:
                raise sk.illegal_request(sk.INVALID_FIELD_IN_PARAMETER_LIST, start + 8,
                                         in_cdb=False)
            if blocks:
                ranges.append((lba, blocks))
        bs = self.block_size
        for lba, blocks in ranges:
            await self.target.trim(lba * bs, blocks * bs)
        return GOOD

    async def _write_same(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        self._check_writable()
        flags = cdb[1]
        if flags & 0xE0:                    # WRPROTECT
            raise invalid_field(1, 7)
        unmap = bool(flags & 0x08)
        if flags & 0x10:                    # ANCHOR (ANC_SUP=0)
            raise invalid_field(1, 4)
        if cdb[0] == WRITE_SAME_10:
            lba, blocks, no_data_out = _be(cdb, 2, 4), _be(cdb, 7, 2), False
            length_field = 7
        else:
            lba, blocks, no_data_out = _be(cdb, 2, 8), _be(cdb, 10, 4), bool(flags & 0x01)
            length_field = 10
        if blocks == 0:                     # WSNZ=1: "to the end of the medium" not offered
            raise invalid_field(length_field)
        if blocks > self.identity.max_write_same_blocks:
            raise invalid_field(length_field)
        self._check_range(lba, blocks)
        bs = self.block_size
        if no_data_out:
            pattern = bytes(bs)
        elif len(data_out) != bs:
            # The data-out buffer must hold exactly one logical block.
            raise CheckCondition(Sense(sk.ILLEGAL_REQUEST,
                                       INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT))
        else:
            pattern = data_out
        offset, length = lba * bs, blocks * bs
        if not any(pattern):
            await self.target.write_zeroes(offset, length, may_trim=unmap)
            return GOOD
        chunk_blocks = max(1, min(blocks, WRITE_SAME_CHUNK // bs))
        chunk = pattern * chunk_blocks
        while length:
            piece = chunk[:min(len(chunk), length)]
            await self.target.write(offset, piece)
            offset += len(piece)
            length -= len(piece)
        return GOOD

    # -- status and identification -----------------------------------------------------

    async def _test_unit_ready(self, cdb: bytes, data_out: bytes,
                               buffer_length: int) -> ScsiResult:
        return GOOD

    async def _start_stop_unit(self, cdb: bytes, data_out: bytes,
                               buffer_length: int) -> ScsiResult:
        # Nothing spins: starting and stopping leave the volume serving.
        return GOOD

    async def _request_sense(self, cdb: bytes, data_out: bytes,
                             buffer_length: int) -> ScsiResult:
        # Sense is always returned with the failing command (autosense): nothing is pending.
        no_sense = Sense(sk.NO_SENSE, sk.NO_ADDITIONAL_SENSE)
        data = no_sense.descriptor() if cdb[1] & 0x01 else no_sense.fixed()
        return ScsiResult(sk.GOOD, data[:cdb[4]])

    async def _inquiry(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        allocation = _be(cdb, 3, 2)
        if cdb[1] & 0x02:                   # CMDDT (obsolete)
            raise invalid_field(1, 1)
        if not cdb[1] & 0x01:
            if cdb[2]:
                raise invalid_field(2)
            return ScsiResult(sk.GOOD, self._standard_inquiry()[:allocation])
        pages = self._vpd_pages()
        page = pages.get(cdb[2])
        if page is None:
            raise invalid_field(2)
        return ScsiResult(sk.GOOD, page()[:allocation])

    def _standard_inquiry(self) -> bytes:
        ident = self.identity
        data = bytearray(74)
        data[0] = 0x00                      # peripheral qualifier 0, direct-access block device
        data[2] = 0x06                      # SPC-4
        data[3] = 0x12                      # HISUP, response data format 2
        data[4] = len(data) - 5
        data[5] = TPGS_IMPLICIT             # ALUA, implicit transitions only
        data[7] = 0x02                      # CMDQUE
        data[8:16] = _ascii(ident.vendor, 8)
        data[16:32] = _ascii(ident.product, 16)
        data[32:36] = _ascii(ident.revision, 4)
        for index, descriptor in enumerate(VERSION_DESCRIPTORS):
            struct.pack_into(">H", data, 58 + 2 * index, descriptor)
        return bytes(data)

    def _vpd_pages(self) -> dict[int, Callable[[], bytes]]:
        return {
            VPD_SUPPORTED_PAGES: self._vpd_supported_pages,
            VPD_UNIT_SERIAL: self._vpd_unit_serial,
            VPD_DEVICE_IDENTIFICATION: self._vpd_device_identification,
            VPD_BLOCK_LIMITS: self._vpd_block_limits,
            VPD_BLOCK_CHARACTERISTICS: self._vpd_block_characteristics,
            VPD_LOGICAL_BLOCK_PROVISIONING: self._vpd_logical_block_provisioning,
        }

    @staticmethod
    def _vpd(page: int, body: bytes) -> bytes:
        return bytes((0x00, page)) + len(body).to_bytes(2, "big") + body

    def _vpd_supported_pages(self) -> bytes:
        return self._vpd(VPD_SUPPORTED_PAGES, bytes(sorted(self._vpd_pages())))

    def _vpd_unit_serial(self) -> bytes:
        return self._vpd(VPD_UNIT_SERIAL, self.identity.serial.encode("ascii", "replace"))

    def _vpd_device_identification(self) -> bytes:
        ident = self.identity
        naa = ident.naa()
        t10 = _ascii(ident.vendor, 8) + ident.serial.encode("ascii", "replace")
        body = (
            # code set binary, association: logical unit, designator type NAA
            bytes((0x01, 0x03, 0x00, len(naa))) + naa
            # code set ASCII, association: logical unit, designator type T10 vendor ID
            + bytes((0x02, 0x01, 0x00, len(t10))) + t10
            # the port this command came in through: a host's multipath groups by it
            + port_designators(self.ports.local_group())
        )
        return self._vpd(VPD_DEVICE_IDENTIFICATION, body)

    def _vpd_block_limits(self) -> bytes:
        ident = self.identity
        body = bytearray(0x3C)
        body[0] = 0x01                      # WSNZ: WRITE SAME of zero blocks is refused
        body[1] = self.max_compare_and_write_blocks
        granularity = max(1, self.target.preferred_block_size // self.block_size)
        struct.pack_into(">H", body, 2, granularity)
        struct.pack_into(">I", body, 4, ident.max_transfer_blocks)
        struct.pack_into(">I", body, 8, min(ident.optimal_transfer_blocks,
                                            ident.max_transfer_blocks))
        struct.pack_into(">I", body, 16, ident.max_unmap_blocks)
        struct.pack_into(">I", body, 20, ident.max_unmap_descriptors)
        struct.pack_into(">I", body, 24, granularity)
        struct.pack_into(">I", body, 28, 0x80000000)    # UGAVALID, alignment 0
        struct.pack_into(">Q", body, 32, ident.max_write_same_blocks)
        return self._vpd(VPD_BLOCK_LIMITS, bytes(body))

    def _vpd_block_characteristics(self) -> bytes:
        # Rotation rate and form factor not reported: the media behind vary.
        return self._vpd(VPD_BLOCK_CHARACTERISTICS, bytes(0x3C))

    def _vpd_logical_block_provisioning(self) -> bytes:
        # LBPU (UNMAP), LBPWS (WRITE SAME 16 + UNMAP), LBPWS10, LBPRZ=1: unmapped reads zero.
        return self._vpd(VPD_LOGICAL_BLOCK_PROVISIONING, bytes((0x00, 0xE4, 0x02, 0x00)))

    # -- capacity ----------------------------------------------------------------------

    async def _read_capacity_10(self, cdb: bytes, data_out: bytes,
                                buffer_length: int) -> ScsiResult:
        if not cdb[8] & 0x01 and _be(cdb, 2, 4):
            raise invalid_field(2)          # an LBA without PMI
        last = min(self.block_count - 1, 0xFFFFFFFF)
        return ScsiResult(sk.GOOD, struct.pack(">II", last, self.block_size))

    async def _service_action_in(self, cdb: bytes, data_out: bytes,
                                 buffer_length: int) -> ScsiResult:
        if cdb[1] & 0x1F != SA_READ_CAPACITY_16:
            raise invalid_field(1, 4)
        allocation = _be(cdb, 10, 4)
        exponent = max(0, (self.target.preferred_block_size // self.block_size).bit_length() - 1)
        data = bytearray(32)
        struct.pack_into(">QI", data, 0, self.block_count - 1, self.block_size)
        data[13] = exponent & 0x0F          # logical blocks per physical block exponent
        data[14] = 0x80 | 0x40              # LBPME (thin provisioning), LBPRZ
        return ScsiResult(sk.GOOD, bytes(data[:allocation]))

    # -- mode pages --------------------------------------------------------------------

    def _mode_pages(self, changeable: bool) -> dict[int, bytes]:
        caching = bytearray(20)
        caching[0:2] = (PAGE_CACHING, 0x12)
        if not changeable and self.identity.write_cache:
            caching[2] = 0x04               # WCE
        control = bytearray(12)
        control[0:2] = (PAGE_CONTROL, 0x0A)
        if not changeable:
            control[3] = 0x10               # queue algorithm modifier 1: unrestricted reordering
            control[8:10] = (0xFF, 0xFF)    # busy timeout period: unlimited
        return {PAGE_CACHING: bytes(caching), PAGE_CONTROL: bytes(control)}

    async def _mode_sense(self, cdb: bytes, data_out: bytes, buffer_length: int) -> ScsiResult:
        six = cdb[0] == MODE_SENSE_6
        dbd = bool(cdb[1] & 0x08)
        long_lba = not six and bool(cdb[1] & 0x10)
        page_control, page_code, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        allocation = cdb[4] if six else _be(cdb, 7, 2)
        if page_control == 3:
            raise sk.illegal_request(sk.SAVING_PARAMETERS_NOT_SUPPORTED, 2, 7)
        pages = self._mode_pages(changeable=page_control == 1)
        if page_code == PAGE_ALL:
            if subpage not in (0x00, 0xFF):
                raise invalid_field(3)
            body = b"".join(pages[code] for code in sorted(pages))
        elif page_code in pages:
            if subpage:
                raise invalid_field(3)
            body = pages[page_code]
        else:
            raise invalid_field(2, 5)
        descriptor = b""
        if not dbd:
            if long_lba:
                descriptor = struct.pack(">Q4xI", self.block_count, self.block_size)
            else:
                blocks = min(self.block_count, 0xFFFFFFFF)
                descriptor = struct.pack(">II", blocks, self.block_size & 0xFFFFFF)
        device_specific = 0x10              # DPOFUA: DPO and FUA bits are honoured
        if self.target.read_only:
            device_specific |= 0x80
        if six:
            header = bytes((0, 0, device_specific, len(descriptor)))
            data = bytearray(header + descriptor + body)
            data[0] = min(len(data) - 1, 0xFF)
        else:
            header = struct.pack(">HBBBBH", 0, 0, device_specific, 0x01 if long_lba else 0, 0,
                                 len(descriptor))
            data = bytearray(header + descriptor + body)
            struct.pack_into(">H", data, 0, len(data) - 2)
        return ScsiResult(sk.GOOD, bytes(data[:allocation]))

    # -- REPORT TARGET PORT GROUPS (alua.py) ---------------------------------------------

    def _report_target_port_groups(self, cdb: bytes) -> ScsiResult:
        data_format = cdb[1] >> 5
        if data_format not in (0, 1):       # length-only or extended header
            raise invalid_field(1, 7)
        allocation = _be(cdb, 6, 4)
        data = report_target_port_groups(self.ports.states(), extended=data_format == 1)
        return ScsiResult(sk.GOOD, data[:allocation])

    # -- REPORT SUPPORTED OPERATION CODES ----------------------------------------------

    async def _maintenance_in(self, cdb: bytes, data_out: bytes,
                              buffer_length: int) -> ScsiResult:
        action = cdb[1] & 0x1F
        if action == SA_REPORT_TARGET_PORT_GROUPS:
            return self._report_target_port_groups(cdb)
        if action != SA_REPORT_SUPPORTED_OPERATION_CODES:
            raise invalid_field(1, 4)
        timeouts = bool(cdb[2] & 0x80)      # RCTD
        options = cdb[2] & 0x07
        requested, requested_sa = cdb[3], _be(cdb, 4, 2)
        allocation = _be(cdb, 6, 4)
        timeouts_descriptor = bytes((0x00, 0x0A)) + bytes(10)
        if options == 0:
            body = bytearray()
            for row in _OPCODES:
                flags = (0x02 if timeouts else 0) | (0x01 if row.service_action is not None
                                                    else 0)
                body += struct.pack(">BxHxBH", row.opcode, row.service_action or 0, flags,
                                    len(row.usage))
                if timeouts:
                    body += timeouts_descriptor
            data = len(body).to_bytes(4, "big") + bytes(body)
            return ScsiResult(sk.GOOD, data[:allocation])
        if options not in (1, 2, 3):
            raise invalid_field(2, 2)
        has_sa = requested in _SERVICE_ACTION_OPCODES
        if options == 1 and has_sa:
            raise invalid_field(3)
        if options == 2 and not has_sa:
            raise invalid_field(3)
        entry = _BY_ACTION.get((requested, requested_sa if has_sa else None))
        supported = entry is not None
        if not supported:
            data = bytes((0, 0x01, 0, 0))   # SUPPORT 001b: not supported
            return ScsiResult(sk.GOOD, data[:allocation])
        assert entry is not None
        support = 0x03                      # supported, conforming to the standard
        data = bytes((0, (0x80 if timeouts else 0) | support)) + \
            len(entry.usage).to_bytes(2, "big") + entry.usage
        if timeouts:
            data += timeouts_descriptor
        return ScsiResult(sk.GOOD, data[:allocation])


def _length_field(opcode: int) -> int:
    """Byte offset of the TRANSFER LENGTH field, for field pointers."""
    if opcode in (READ_6, WRITE_6):
        return 4
    if opcode in (READ_10, WRITE_10, VERIFY_10):
        return 7
    if opcode in (READ_12, WRITE_12, VERIFY_12):
        return 6
    return 10


def _miscompare(offset: int) -> ScsiResult:
    """CHECK CONDITION, MISCOMPARE DURING VERIFY OPERATION at byte ``offset``."""
    sense = Sense(sk.MISCOMPARE, sk.MISCOMPARE_DURING_VERIFY)
    return ScsiResult(sk.CHECK_CONDITION, sense=_with_information(sense, offset))


def _with_information(sense: Sense, value: int) -> bytes:
    """Fixed-format sense with the VALID bit and INFORMATION field set (e.g. miscompare offset)."""
    data = bytearray(sense.fixed())
    data[0] |= 0x80
    data[3:7] = value.to_bytes(4, "big")
    return bytes(data)
