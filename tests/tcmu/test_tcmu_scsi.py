"""The SCSI command set against an in-RAM volume: what an initiator sees for each command."""

from __future__ import annotations

import asyncio
import errno
import random
import struct

import pytest

from firmware.frontends.tcmu import alua, scsi
from firmware.frontends.tcmu.scsi import DiskIdentity, ScsiDisk
from firmware.volume.target import TargetError, first_mismatch
from tools.sim.memory_target import MemoryTarget

BLOCKS = 2048
BS = 512
GOOD, CHECK = 0x00, 0x02


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def target() -> MemoryTarget:
    return MemoryTarget(BLOCKS * BS)


@pytest.fixture
def disk(target) -> ScsiDisk:
    return ScsiDisk(target, DiskIdentity(serial="T3ST0001", max_transfer_blocks=256,
                                         optimal_transfer_blocks=64,
                                         max_unmap_descriptors=4, max_write_same_blocks=512))


def execute(disk: ScsiDisk, cdb: bytes, data_out: bytes = b"", buffer_length: int = 65536):
    return run(disk.execute(cdb, data_out, buffer_length))


def sense_of(result) -> tuple[int, int, int]:
    assert result.status == CHECK
    assert result.sense[0] & 0x7F == 0x70
    return result.sense[2] & 0x0F, result.sense[12], result.sense[13]


ILLEGAL_OPCODE = (0x5, 0x20, 0x00)
LBA_OUT_OF_RANGE = (0x5, 0x21, 0x00)
INVALID_FIELD_IN_CDB = (0x5, 0x24, 0x00)
INVALID_FIELD_IN_PARAMETERS = (0x5, 0x26, 0x00)
WRITE_PROTECTED = (0x7, 0x27, 0x00)


def cdb10(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIBHB", opcode, flags, lba, 0, blocks, 0)


def cdb16(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIBB", opcode, flags, lba, blocks, 0, 0)


def cdb12(opcode: int, lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIIBB", opcode, flags, lba, blocks, 0, 0)


def inquiry(evpd: bool = False, page: int = 0, allocation: int = 255) -> bytes:
    return struct.pack(">BBBHB", 0x12, 1 if evpd else 0, page, allocation, 0)


# -- identification ------------------------------------------------------------------------


def test_standard_inquiry_describes_a_disk(disk):
    result = execute(disk, inquiry())
    data = result.data
    assert result.status == GOOD
    assert data[0] == 0x00                      # connected direct-access block device
    assert data[2] == 0x06                      # SPC-4
    assert data[3] & 0x0F == 2
    assert data[4] == len(data) - 5
    assert data[7] & 0x02                       # command queuing
    assert data[8:16] == b"TANDEM  "
    assert data[16:32].rstrip() == b"MIRROR VOLUME"
    descriptors = struct.unpack(">8H", data[58:74])
    assert 0x04C0 in descriptors                # SBC-3: libiscsi keys SBC-3 tests off this


def test_inquiry_is_cut_to_the_allocation_length(disk):
    assert len(execute(disk, inquiry(allocation=36)).data) == 36
    assert len(execute(disk, inquiry(allocation=255), buffer_length=20).data) == 20


def test_inquiry_page_code_without_evpd_is_an_invalid_field(disk):
    assert sense_of(execute(disk, inquiry(page=0x80))) == INVALID_FIELD_IN_CDB


def test_invalid_field_sense_points_at_the_byte(disk):
    result = execute(disk, inquiry(page=0x80))
    assert result.sense[15] & 0xC0 == 0xC0      # SKSV, in the CDB
    assert int.from_bytes(result.sense[16:18], "big") == 2


def test_supported_vpd_pages(disk):
    data = execute(disk, inquiry(True, 0x00)).data
    assert data[1] == 0x00
    pages = list(data[4:4 + data[3]])
    assert pages == sorted(pages)
    assert {0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2} <= set(pages)


def test_unknown_vpd_page_is_an_invalid_field(disk):
    assert sense_of(execute(disk, inquiry(True, 0x89))) == INVALID_FIELD_IN_CDB


def test_unit_serial_number(disk):
    data = execute(disk, inquiry(True, 0x80)).data
    assert data[4:4 + data[3]] == b"T3ST0001"


def designators_of(disk: ScsiDisk) -> dict[tuple[int, int], bytes]:
    """(association, designator type) -> designator, from the device identification page."""
    data = execute(disk, inquiry(True, 0x83)).data
    end, pos, designators = 4 + int.from_bytes(data[2:4], "big"), 4, {}
    while pos < end:
        association, kind, length = (data[pos + 1] >> 4) & 0x03, data[pos + 1] & 0x0F, \
            data[pos + 3]
        designators[association, kind] = data[pos + 4:pos + 4 + length]
        pos += 4 + length
    assert pos == end
    return designators


def test_device_identification_has_a_naa_and_a_t10_designator(disk):
    designators = designators_of(disk)
    assert designators[0, 3][0] >> 4 == 3       # the logical unit's NAA, locally assigned
    assert designators[0, 1] == b"TANDEM  T3ST0001"
    other = ScsiDisk(MemoryTarget(BS * 8), DiskIdentity(serial="OTHER"))
    assert designators_of(other)[0, 3] != designators[0, 3]


# -- ALUA (alua.py) ------------------------------------------------------------------------


def rtpg(extended: bool = False, allocation: int = 1024) -> bytes:
    return struct.pack(">BBxxxxIxx", 0xA3, (0x20 if extended else 0) | 0x0A, allocation)


def port_groups(data: bytes, extended: bool) -> list[tuple[int, int, list[int]]]:
    """(group id, state, relative ports) per descriptor of RTPG parameter data."""
    length = int.from_bytes(data[0:4], "big") + 4
    assert len(data) == length
    pos, groups = (8 if extended else 4), []
    if extended:
        assert data[4] & 0x70 == 0x10
    while pos < length:
        count = data[pos + 7]
        ports = [int.from_bytes(data[pos + 8 + 4 * i + 2:pos + 8 + 4 * i + 4], "big")
                 for i in range(count)]
        groups.append((int.from_bytes(data[pos + 2:pos + 4], "big"), data[pos] & 0x0F, ports))
        pos += 8 + 4 * count
    return groups


def test_an_appliance_alone_is_one_active_port_group(disk):
    assert execute(disk, inquiry()).data[5] & 0x30 == 0x10     # TPGS: implicit ALUA
    designators = designators_of(disk)
    assert designators[1, 4] == bytes((0, 0, 0, 1))            # relative target port 1
    assert designators[1, 5] == bytes(4)                       # target port group 0
    for extended in (False, True):
        result = execute(disk, rtpg(extended))
        assert result.status == GOOD
        assert port_groups(result.data, extended) == [(0, alua.ACTIVE_OPTIMIZED, [1])]


def test_a_pair_node_reports_both_groups_with_the_states_it_is_given(target):
    states = {1: alua.ACTIVE_OPTIMIZED, 2: alua.ACTIVE_OPTIMIZED}
    ports = alua.PortGroups(2, lambda: [alua.PortGroup(g, g, s) for g, s in states.items()])
    node = ScsiDisk(target, DiskIdentity(serial="PAIR"), ports=ports)
    assert designators_of(node)[1, 5] == bytes((0, 0, 0, 2))
    assert port_groups(execute(node, rtpg()).data, False) == [
        (1, alua.ACTIVE_OPTIMIZED, [1]), (2, alua.ACTIVE_OPTIMIZED, [2])]
    states[1] = alua.UNAVAILABLE                               # the peer failed
    assert port_groups(execute(node, rtpg(True)).data, True)[0] == (1, alua.UNAVAILABLE, [1])
    short = execute(node, rtpg(allocation=4))
    assert short.status == GOOD and short.data == (24).to_bytes(4, "big")


def test_rtpg_with_an_unknown_data_format_is_an_invalid_field(disk):
    cdb = bytearray(rtpg())
    cdb[1] |= 0x40
    assert sense_of(execute(disk, bytes(cdb))) == INVALID_FIELD_IN_CDB


def test_block_limits_page(disk):
    data = execute(disk, inquiry(True, 0xB0)).data
    assert len(data) == 64 and data[3] == 0x3C
    assert data[4] & 0x01                       # WSNZ
    assert int.from_bytes(data[6:8], "big") == 8            # 4 KiB granularity
    assert int.from_bytes(data[8:12], "big") == 256         # maximum transfer length
    assert int.from_bytes(data[12:16], "big") == 64         # optimal transfer length
    assert int.from_bytes(data[24:28], "big") == 4          # unmap descriptors
    assert int.from_bytes(data[36:44], "big") == 512        # write same length


def test_logical_block_provisioning_page_claims_unmap_and_zeroes(disk):
    data = execute(disk, inquiry(True, 0xB2)).data
    assert data[5] & 0x80 and data[5] & 0x40 and data[5] & 0x20     # LBPU, LBPWS, LBPWS10
    assert data[5] & 0x04                                           # LBPRZ
    assert data[6] & 0x07 == 2                                      # thin provisioned


def test_block_device_characteristics_page(disk):
    data = execute(disk, inquiry(True, 0xB1)).data
    assert data[1] == 0xB1 and data[3] == 0x3C


# -- capacity and status -----------------------------------------------------------------


def test_read_capacity_10(disk):
    data = execute(disk, bytes((0x25,)) + bytes(9)).data
    assert struct.unpack(">II", data) == (BLOCKS - 1, BS)


def test_read_capacity_10_lba_without_pmi_is_invalid(disk):
    cdb = bytes((0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0))
    assert sense_of(execute(disk, cdb)) == INVALID_FIELD_IN_CDB


def test_read_capacity_16(disk):
    cdb = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0)
    data = execute(disk, cdb).data
    assert len(data) == 32
    last, size = struct.unpack(">QI", data[:12])
    assert (last, size) == (BLOCKS - 1, BS)
    assert data[13] & 0x0F == 3                 # 8 logical blocks per physical block
    assert data[14] & 0x80 and data[14] & 0x40  # LBPME, LBPRZ


def test_read_capacity_16_respects_the_allocation_length(disk):
    cdb = struct.pack(">BBQIBB", 0x9E, 0x10, 0, 12, 0, 0)
    assert len(execute(disk, cdb).data) == 12


def test_other_service_action_in_is_invalid(disk):
    cdb = struct.pack(">BBQIBB", 0x9E, 0x12, 0, 32, 0, 0)    # GET LBA STATUS
    assert sense_of(execute(disk, cdb)) == INVALID_FIELD_IN_CDB


def test_test_unit_ready_and_start_stop_unit(disk):
    assert execute(disk, bytes(6)).status == GOOD
    assert execute(disk, bytes((0x1B, 0, 0, 0, 1, 0))).status == GOOD


def test_request_sense_reports_nothing_pending(disk):
    data = execute(disk, bytes((0x03, 0, 0, 0, 252, 0))).data
    assert data[0] == 0x70 and data[2] & 0x0F == 0
    data = execute(disk, bytes((0x03, 1, 0, 0, 252, 0))).data
    assert data[0] == 0x72 and data[1] == 0


def test_unknown_opcode_is_illegal(disk):
    assert sense_of(execute(disk, bytes((0xD5,)) + bytes(9))) == ILLEGAL_OPCODE


def test_truncated_cdb_is_invalid(disk):
    assert sense_of(execute(disk, bytes((0x28, 0, 0)))) == INVALID_FIELD_IN_CDB


# -- mode pages --------------------------------------------------------------------------


def mode_sense6(page: int, pc: int = 0, dbd: bool = False, allocation: int = 255) -> bytes:
    return bytes((0x1A, 0x08 if dbd else 0, (pc << 6) | page, 0, allocation, 0))


def mode_sense10(page: int, pc: int = 0, llbaa: bool = False, allocation: int = 1024) -> bytes:
    return struct.pack(">BBBBxxxHB", 0x5A, 0x10 if llbaa else 0, (pc << 6) | page, 0,
                       allocation, 0)


def pages_in(body: bytes) -> dict[int, bytes]:
    pages, pos = {}, 0
    while pos < len(body):
        code, length = body[pos] & 0x3F, body[pos + 1]
        pages[code] = body[pos:pos + 2 + length]
        pos += 2 + length
    return pages


def test_mode_sense_6_caching_page_with_block_descriptor(disk):
    data = execute(disk, mode_sense6(0x08)).data
    assert data[0] == len(data) - 1
    assert data[2] & 0x10                       # DPOFUA
    assert not data[2] & 0x80                   # not write protected
    assert data[3] == 8
    assert struct.unpack(">II", data[4:12]) == (BLOCKS, BS)
    caching = pages_in(data[12:])[0x08]
    assert caching[2] & 0x04                    # WCE: a flush makes writes durable


def test_mode_sense_all_pages_includes_control(disk):
    data = execute(disk, mode_sense6(0x3F, dbd=True)).data
    pages = pages_in(data[4:])
    assert {0x08, 0x0A} <= set(pages)
    control = pages[0x0A]
    assert control[2] & 0x04 == 0               # D_SENSE clear: fixed-format sense
    assert control[3] >> 4 in (0, 1)


def test_mode_sense_10_long_lba_descriptor(disk):
    data = execute(disk, mode_sense10(0x08, llbaa=True)).data
    assert int.from_bytes(data[0:2], "big") == len(data) - 2
    assert data[4] & 0x01 and int.from_bytes(data[6:8], "big") == 16
    blocks, size = struct.unpack(">Q4xI", data[8:24])
    assert (blocks, size) == (BLOCKS, BS)


def test_mode_sense_changeable_values_are_all_clear(disk):
    data = execute(disk, mode_sense6(0x08, pc=1, dbd=True)).data
    assert not any(pages_in(data[4:])[0x08][2:])


def test_mode_sense_saved_values_are_not_supported(disk):
    assert sense_of(execute(disk, mode_sense6(0x08, pc=3))) == (0x5, 0x39, 0x00)


def test_mode_sense_unknown_page_is_invalid(disk):
    assert sense_of(execute(disk, mode_sense6(0x19))) == INVALID_FIELD_IN_CDB


def test_read_only_volume_says_so_and_refuses_writes(target):
    ro = ScsiDisk(MemoryTarget(BLOCKS * BS, read_only=True), DiskIdentity(serial="RO"))
    assert execute(ro, mode_sense6(0x3F)).data[2] & 0x80
    assert sense_of(execute(ro, cdb10(0x2A, 0, 1), b"x" * BS)) == WRITE_PROTECTED
    assert execute(ro, cdb10(0x28, 0, 1)).status == GOOD


# -- reads and writes --------------------------------------------------------------------


@pytest.mark.parametrize("build,read_op,write_op", [
    (cdb10, 0x28, 0x2A), (cdb12, 0xA8, 0xAA), (cdb16, 0x88, 0x8A)])
def test_write_then_read_back(disk, target, build, read_op, write_op):
    payload = bytes(range(256)) * 2 * 3
    assert execute(disk, build(write_op, 100, 3), payload).status == GOOD
    assert run(target.read(100 * BS, 3 * BS)) == payload
    assert execute(disk, build(read_op, 100, 3)).data == payload


def test_read_6_and_write_6(disk, target):
    payload = b"\xa5" * BS
    assert execute(disk, bytes((0x0A, 0, 0, 7, 1, 0)), payload).status == GOOD
    assert execute(disk, bytes((0x08, 0, 0, 7, 1, 0))).data == payload


def test_fua_reaches_the_volume(disk, target):
    execute(disk, cdb10(0x2A, 0, 1, flags=0x08), b"f" * BS)
    assert target.fua_writes == 1


def test_dpo_and_fua_on_reads_are_accepted(disk):
    assert execute(disk, cdb10(0x28, 0, 1, flags=0x18)).status == GOOD


@pytest.mark.parametrize("lba,blocks", [
    (BLOCKS, 1), (BLOCKS - 1, 2), (BLOCKS + 1, 0), (0xFFFFFFFF, 1), (0x80000000, 0)])
def test_beyond_the_end_is_lba_out_of_range(disk, lba, blocks):
    assert sense_of(execute(disk, cdb10(0x28, lba, blocks))) == LBA_OUT_OF_RANGE
    assert sense_of(execute(disk, cdb10(0x2A, lba, blocks), b"x" * blocks * BS)) == \
        LBA_OUT_OF_RANGE


def test_read_16_at_the_last_possible_lba_is_out_of_range(disk):
    assert sense_of(execute(disk, cdb16(0x88, 2**64 - 1, 1))) == LBA_OUT_OF_RANGE


def test_zero_blocks_at_the_end_is_fine(disk):
    assert execute(disk, cdb10(0x28, BLOCKS, 0)).status == GOOD
    assert execute(disk, cdb10(0x2A, 0, 0)).status == GOOD


def test_transfer_longer_than_the_advertised_maximum_is_invalid(disk):
    assert sense_of(execute(disk, cdb10(0x28, 0, 257))) == INVALID_FIELD_IN_CDB


@pytest.mark.parametrize("protect", range(1, 8))
def test_protection_fields_are_refused_without_protection_information(disk, protect):
    assert sense_of(execute(disk, cdb10(0x28, 0, 1, flags=protect << 5))) == \
        INVALID_FIELD_IN_CDB
    assert sense_of(execute(disk, cdb10(0x2A, 0, 1, flags=protect << 5), b"x" * BS)) == \
        INVALID_FIELD_IN_CDB


def test_write_with_less_data_than_the_cdb_asks_writes_nothing(disk, target):
    result = execute(disk, cdb10(0x2A, 0, 2), b"y" * BS)
    assert sense_of(result) == (0x5, 0x0E, 0x03)
    assert run(target.read(0, BS)) == bytes(BS)


def test_read_into_a_shorter_buffer_is_cut(disk):
    assert len(execute(disk, cdb10(0x28, 0, 4), buffer_length=BS).data) == BS


def test_verify_compares_bytes(disk, target):
    execute(disk, cdb10(0x2A, 5, 1), b"v" * BS)
    assert execute(disk, cdb10(0x2F, 5, 1, flags=0x02), b"v" * BS).status == GOOD
    result = execute(disk, cdb10(0x2F, 5, 1, flags=0x02), b"v" * 10 + b"w" * (BS - 10))
    assert sense_of(result) == (0xE, 0x1D, 0x00)
    assert int.from_bytes(result.sense[3:7], "big") == 10
    assert execute(disk, cdb16(0x8F, 5, 1)).status == GOOD


# -- volume errors -----------------------------------------------------------------------


class FailingTarget(MemoryTarget):
    def __init__(self, err: int) -> None:
        super().__init__(BLOCKS * BS)
        self.err = err

    async def read(self, offset: int, length: int) -> bytes:
        raise TargetError(self.err, "injected")

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        raise TargetError(self.err, "injected")

    async def flush(self) -> None:
        raise TargetError(self.err, "injected")


@pytest.mark.parametrize("err,on_read,on_write", [
    (errno.EIO, (0x3, 0x11, 0x00), (0x3, 0x0C, 0x00)),
    (errno.ENOSPC, (0x7, 0x27, 0x07), (0x7, 0x27, 0x07)),
    (errno.EINVAL, LBA_OUT_OF_RANGE, LBA_OUT_OF_RANGE),
    (errno.EPERM, WRITE_PROTECTED, WRITE_PROTECTED),
    (errno.ESHUTDOWN, (0x2, 0x04, 0x00), (0x2, 0x04, 0x00)),
    (errno.EBUSY, (0x4, 0x44, 0x00), (0x4, 0x44, 0x00)),
])
def test_volume_errors_become_sense(err, on_read, on_write):
    disk = ScsiDisk(FailingTarget(err), DiskIdentity(serial="F"))
    assert sense_of(execute(disk, cdb10(0x28, 0, 1))) == on_read
    assert sense_of(execute(disk, cdb10(0x2A, 0, 1), b"x" * BS)) == on_write
    assert sense_of(execute(disk, cdb10(0x35, 0, 0))) == on_write


# -- cache, unmap, write same ------------------------------------------------------------


def test_synchronize_cache_flushes(disk, target):
    assert execute(disk, cdb10(0x35, 0, 0)).status == GOOD
    assert execute(disk, cdb16(0x91, 0, 0)).status == GOOD
    assert target.flushes == 2


def test_synchronize_cache_beyond_the_end_is_out_of_range(disk):
    assert sense_of(execute(disk, cdb10(0x35, BLOCKS, 1))) == LBA_OUT_OF_RANGE


def unmap(*ranges: tuple[int, int]) -> tuple[bytes, bytes]:
    descriptors = b"".join(struct.pack(">QI4x", lba, n) for lba, n in ranges)
    params = struct.pack(">HH4x", 6 + len(descriptors), len(descriptors)) + descriptors
    cdb = struct.pack(">BB5xHB", 0x42, 0, len(params), 0)
    return cdb, params


def test_unmap_zeroes_the_ranges(disk, target):
    run(target.write(0, b"z" * 64 * BS))
    cdb, params = unmap((1, 2), (10, 3), (20, 0))
    assert execute(disk, cdb, params).status == GOOD
    data = run(target.read(0, 64 * BS))
    for block in range(64):
        expected = bytes(BS) if block in (1, 2, 10, 11, 12) else b"z" * BS
        assert data[block * BS:(block + 1) * BS] == expected, block


def test_unmap_with_no_parameters_does_nothing(disk):
    assert execute(disk, struct.pack(">BB5xHB", 0x42, 0, 0, 0)).status == GOOD
    cdb, params = unmap()
    assert execute(disk, cdb, params).status == GOOD


def test_unmap_beyond_the_end_changes_nothing(disk, target):
    run(target.write(0, b"z" * BS))
    cdb, params = unmap((0, 1), (BLOCKS - 1, 2))
    assert sense_of(execute(disk, cdb, params)) == LBA_OUT_OF_RANGE
    assert run(target.read(0, BS)) == b"z" * BS


def test_unmap_with_too_many_descriptors_is_invalid(disk):
    cdb, params = unmap(*[(i, 1) for i in range(5)])
    assert sense_of(execute(disk, cdb, params)) == INVALID_FIELD_IN_PARAMETERS


def test_unmap_short_parameter_list_is_a_length_error(disk):
    assert sense_of(execute(disk, struct.pack(">BB5xHB", 0x42, 0, 4, 0), bytes(4))) == \
        (0x5, 0x1A, 0x00)


def test_unmap_anchor_is_not_supported(disk):
    cdb, params = unmap((0, 1))
    cdb = cdb[:1] + b"\x01" + cdb[2:]
    assert sense_of(execute(disk, cdb, params)) == INVALID_FIELD_IN_CDB


def write_same(lba: int, blocks: int, flags: int = 0, sixteen: bool = False) -> bytes:
    if sixteen:
        return cdb16(0x93, lba, blocks, flags)
    return cdb10(0x41, lba, blocks, flags)


@pytest.mark.parametrize("sixteen", [False, True])
def test_write_same_repeats_the_block(disk, target, sixteen):
    pattern = bytes(range(256)) * 2
    assert execute(disk, write_same(4, 300, sixteen=sixteen), pattern).status == GOOD
    assert run(target.read(4 * BS, 300 * BS)) == pattern * 300
    assert run(target.read(3 * BS, BS)) == bytes(BS)


def test_write_same_with_unmap_zeroes(disk, target):
    run(target.write(0, b"q" * 8 * BS))
    assert execute(disk, write_same(2, 3, flags=0x08), bytes(BS)).status == GOOD
    assert run(target.read(0, 8 * BS)) == b"q" * 2 * BS + bytes(3 * BS) + b"q" * 3 * BS


def test_write_same_16_without_data_out_writes_zeroes(disk, target):
    run(target.write(0, b"q" * 2 * BS))
    assert execute(disk, write_same(0, 1, flags=0x01, sixteen=True)).status == GOOD
    assert run(target.read(0, 2 * BS)) == bytes(BS) + b"q" * BS


def test_write_same_of_zero_blocks_is_invalid(disk):
    assert sense_of(execute(disk, write_same(0, 0), bytes(BS))) == INVALID_FIELD_IN_CDB


def test_write_same_longer_than_advertised_is_invalid(disk):
    assert sense_of(execute(disk, write_same(0, 513), bytes(BS))) == INVALID_FIELD_IN_CDB


def test_write_same_beyond_the_end_is_out_of_range(disk):
    assert sense_of(execute(disk, write_same(BLOCKS - 1, 2), bytes(BS))) == LBA_OUT_OF_RANGE


def test_write_same_needs_exactly_one_block_of_data(disk):
    assert execute(disk, write_same(0, 1, flags=0x08), bytes(BS // 2)).status == CHECK
    assert execute(disk, write_same(0, 1, flags=0x08), bytes(BS * 2)).status == CHECK


def test_write_same_anchor_is_refused(disk):
    assert sense_of(execute(disk, write_same(0, 1, flags=0x10), bytes(BS))) == \
        INVALID_FIELD_IN_CDB
    assert sense_of(execute(disk, write_same(0, 1, flags=0x18), bytes(BS))) == \
        INVALID_FIELD_IN_CDB


# -- REPORT SUPPORTED OPERATION CODES ----------------------------------------------------


def rsoc(options: int, opcode: int = 0, sa: int = 0, rctd: bool = False) -> bytes:
    return struct.pack(">BBBBHIBB", 0xA3, 0x0C, options | (0x80 if rctd else 0), opcode, sa,
                       65535, 0, 0)


def test_report_all_operation_codes(disk):
    data = execute(disk, rsoc(0)).data
    length = int.from_bytes(data[:4], "big")
    assert length == len(data) - 4 and length % 8 == 0
    listed = {data[pos]: data[pos + 5] & 1 for pos in range(4, len(data), 8)}
    assert {0x28, 0x2A, 0x35, 0x42, 0x41, 0x93, 0x12, 0x00} <= set(listed)
    assert listed[0x9E] == 1 and listed[0x28] == 0     # SERVACTV


def test_report_all_operation_codes_with_timeouts(disk):
    data = execute(disk, rsoc(0, rctd=True)).data
    assert (len(data) - 4) % 20 == 0
    assert data[4 + 5] & 0x02                           # CTDP


def test_report_one_command_usage_data(disk):
    data = execute(disk, rsoc(1, 0x28)).data
    assert data[1] & 0x07 == 3                          # supported
    assert int.from_bytes(data[2:4], "big") == 10
    assert data[4] == 0x28
    assert data[5] & 0x18 == 0x18                       # DPO and FUA usable


def test_report_one_command_rules_for_service_actions(disk):
    assert sense_of(execute(disk, rsoc(1, 0x9E, 0x10))) == INVALID_FIELD_IN_CDB
    assert execute(disk, rsoc(2, 0x9E, 0x10)).data[4] == 0x9E
    assert sense_of(execute(disk, rsoc(2, 0x28))) == INVALID_FIELD_IN_CDB


def test_report_one_unsupported_command(disk):
    assert execute(disk, rsoc(1, 0xD5)).data[1] & 0x07 == 1


def test_which_commands_carry_data_out():
    assert scsi.wants_data_out(cdb10(0x2A, 0, 1))
    assert scsi.wants_data_out(bytes((0x42,)) + bytes(9))
    assert not scsi.wants_data_out(cdb10(0x28, 0, 1))
    assert not scsi.wants_data_out(inquiry())


# -- COMPARE AND WRITE -------------------------------------------------------------------


def caw(lba: int, blocks: int, flags: int = 0) -> bytes:
    """COMPARE AND WRITE: LBA in bytes 2-9, NUMBER OF LOGICAL BLOCKS in byte 13."""
    return struct.pack(">BBQ3xBBB", 0x89, flags, lba, blocks, 0, 0)


MISCOMPARE = (0xE, 0x1D, 0x00)


def test_first_mismatch_finds_the_first_differing_byte():
    rnd = random.Random(5)
    for _ in range(300):
        length = rnd.randrange(1, 2048)
        stored = bytes(rnd.choice((0, 0, 0xFF, rnd.randrange(256))) for _ in range(length))
        sent = bytearray(stored)
        for _ in range(rnd.randrange(0, 4)):
            sent[rnd.randrange(length)] ^= 1 << rnd.randrange(8)
        expected = next((i for i in range(length) if stored[i] != sent[i]), None)
        assert first_mismatch(stored, bytes(sent)) == expected
    with pytest.raises(ValueError):
        first_mismatch(b"ab", b"a")


def test_compare_and_write_that_matches_writes(disk, target):
    run(target.write(10 * BS, b"a" * 2 * BS))
    result = execute(disk, caw(10, 2), b"a" * 2 * BS + b"b" * 2 * BS)
    assert result.status == GOOD
    assert execute(disk, cdb16(0x88, 10, 2)).data == b"b" * 2 * BS
    assert run(target.read(9 * BS, BS)) == bytes(BS)          # neighbours untouched
    assert run(target.read(12 * BS, BS)) == bytes(BS)


def test_compare_and_write_that_miscompares_writes_nothing_and_says_where(disk, target):
    run(target.write(10 * BS, b"a" * 2 * BS))
    verify = b"a" * (BS + 37) + b"x" + b"a" * (BS - 38)
    result = execute(disk, caw(10, 2), verify + b"b" * 2 * BS)
    assert sense_of(result) == MISCOMPARE
    assert result.sense[0] & 0x80                               # VALID: INFORMATION holds
    assert int.from_bytes(result.sense[3:7], "big") == BS + 37  # bytes into the verify data
    assert run(target.read(10 * BS, 2 * BS)) == b"a" * 2 * BS


def test_compare_and_write_first_byte_and_last_byte_miscompares(disk, target):
    run(target.write(0, b"a" * BS))
    first = execute(disk, caw(0, 1), b"z" + b"a" * (BS - 1) + b"b" * BS)
    assert int.from_bytes(first.sense[3:7], "big") == 0
    last = execute(disk, caw(0, 1), b"a" * (BS - 1) + b"z" + b"b" * BS)
    assert int.from_bytes(last.sense[3:7], "big") == BS - 1
    assert run(target.read(0, BS)) == b"a" * BS


def test_compare_and_write_of_zero_blocks_does_nothing(disk, target):
    assert execute(disk, caw(5, 0)).status == GOOD
    assert execute(disk, caw(BLOCKS, 0)).status == GOOD        # at the end: still fine
    assert run(target.read(0, 8 * BS)) == bytes(8 * BS)


def test_compare_and_write_data_out_must_be_twice_the_blocks(disk, target):
    run(target.write(0, b"a" * 4 * BS))
    for blocks, sent in ((1, 4), (3, 4), (2, 3), (0, 2)):
        # (0, 2): libiscsi's 256 blocks, the byte wrapped to 0, with data for them
        result = execute(disk, caw(0, blocks), b"a" * blocks * BS + b"b" * (sent - blocks) * BS)
        assert sense_of(result) == INVALID_FIELD_IN_CDB, (blocks, sent)
        assert int.from_bytes(result.sense[16:18], "big") == 13
    assert run(target.read(0, 4 * BS)) == b"a" * 4 * BS


def test_compare_and_write_longer_than_advertised_is_invalid(target):
    small = ScsiDisk(target, DiskIdentity(serial="CAW", max_compare_and_write_blocks=4))
    assert inquiry_block_limits(small)[5] == 4
    result = execute(small, caw(0, 5), bytes(10 * BS))
    assert sense_of(result) == INVALID_FIELD_IN_CDB
    assert int.from_bytes(result.sense[16:18], "big") == 13
    assert execute(small, caw(0, 4), bytes(4 * BS) + b"c" * 4 * BS).status == GOOD
    # The largest transfer bounds it too.
    short = ScsiDisk(target, DiskIdentity(serial="CAW", max_transfer_blocks=8))
    assert inquiry_block_limits(short)[5] == 8
    assert sense_of(execute(short, caw(0, 9), bytes(18 * BS))) == INVALID_FIELD_IN_CDB


def test_compare_and_write_beyond_the_end_is_out_of_range(disk, target):
    run(target.write((BLOCKS - 1) * BS, b"a" * BS))
    result = execute(disk, caw(BLOCKS - 1, 2), b"a" * BS + bytes(BS) + b"b" * 2 * BS)
    assert sense_of(result) == LBA_OUT_OF_RANGE
    assert sense_of(execute(disk, caw(2**64 - 1, 1), bytes(2 * BS))) == LBA_OUT_OF_RANGE
    assert execute(disk, caw(BLOCKS - 1, 1), b"a" * BS + b"b" * BS).status == GOOD
    assert run(target.read((BLOCKS - 1) * BS, BS)) == b"b" * BS


def test_compare_and_write_on_a_read_only_volume_is_write_protected():
    ro_target = MemoryTarget(BLOCKS * BS, read_only=True)
    ro = ScsiDisk(ro_target, DiskIdentity(serial="RO"))
    assert sense_of(execute(ro, caw(0, 1), bytes(BS) + b"b" * BS)) == WRITE_PROTECTED
    assert run(ro_target.read(0, BS)) == bytes(BS)


@pytest.mark.parametrize("protect", range(1, 8))
def test_compare_and_write_protection_field_is_refused(disk, target, protect):
    result = execute(disk, caw(0, 1, flags=protect << 5), bytes(BS) + b"b" * BS)
    assert sense_of(result) == INVALID_FIELD_IN_CDB
    assert run(target.read(0, BS)) == bytes(BS)


def test_compare_and_write_fua_reaches_the_volume_and_dpo_is_accepted(disk, target):
    assert execute(disk, caw(0, 1, flags=0x18), bytes(BS) + b"f" * BS).status == GOOD
    assert target.fua_writes == 1
    assert execute(disk, caw(0, 1, flags=0x10), b"f" * BS + b"g" * BS).status == GOOD
    assert target.fua_writes == 1
    assert run(target.read(0, BS)) == b"g" * BS


def test_two_compare_and_writes_with_one_expected_value_let_one_win(disk, target):
    # Two hosts taking an ATS lock: both expect it free; the second finds it taken.
    free, mine, theirs = bytes(BS), b"1" * BS, b"2" * BS

    async def both() -> list:
        return await asyncio.gather(disk.execute(caw(7, 1), free + mine, 2 * BS),
                                    disk.execute(caw(7, 1), free + theirs, 2 * BS))

    first, second = run(both())
    assert first.status == GOOD
    assert sense_of(second) == MISCOMPARE
    assert int.from_bytes(second.sense[3:7], "big") == 0
    assert run(target.read(7 * BS, BS)) == mine


def inquiry_block_limits(disk: ScsiDisk) -> bytes:
    return execute(disk, inquiry(True, 0xB0)).data


def test_block_limits_page_gives_the_compare_and_write_length(disk):
    assert inquiry_block_limits(disk)[5] == 255     # MAXIMUM COMPARE AND WRITE LENGTH


def test_report_supported_operation_codes_lists_compare_and_write(disk):
    data = execute(disk, rsoc(0)).data
    listed = {data[pos] for pos in range(4, len(data), 8)}
    assert 0x89 in listed
    one = execute(disk, rsoc(1, 0x89)).data
    assert one[1] & 0x07 == 3                       # supported, as the standard says
    usage = one[4:4 + int.from_bytes(one[2:4], "big")]
    assert len(usage) == 16 and usage[0] == 0x89
    assert usage[1] & 0x18 == 0x18                  # DPO and FUA usable (as DPOFUA says)
    assert usage[13] == 0xFF                        # NUMBER OF LOGICAL BLOCKS
    assert scsi.wants_data_out(caw(0, 1))
