"""The TCMU ring core on byte images laid out as the kernel lays them out."""

from __future__ import annotations

import pytest

from firmware.frontends.tcmu import ring as r
from tests.tcmu.kernel_model import (
    CDB_OFF_OFFSET,
    ENTRY_SIZE,
    IOV_OFFSET,
    OOOC,
    OP_TMR,
    READ_LEN,
    KernelRing,
    Mailbox,
    Response,
)

INQUIRY = bytes((0x12, 0, 0, 0, 0xFF, 0))
READ_10 = bytes((0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0))
WRITE_16 = bytes((0x8A,)) + bytes(12) + bytes((1, 0, 0))


def test_layout_constants_match_the_c_structs():
    assert r.CDB_OFF_OFFSET == CDB_OFF_OFFSET == 24
    assert r.IOV_OFFSET == IOV_OFFSET == 48
    assert r.ENTRY_MIN_SIZE == ENTRY_SIZE == 112
    assert r.CMD_TAIL_OFFSET == Mailbox.cmd_tail.offset == 64
    assert r.RSP_READ_LEN_OFFSET == 8 + Response.read_len.offset
    assert r.RSP_SENSE_OFFSET == 8 + Response.sense_buffer.offset


def test_cdb_lengths_follow_the_opcode_group():
    assert r.cdb_length(bytes((0x00,)) + bytes(7)) == 6
    assert r.cdb_length(bytes((0x28,)) + bytes(7)) == 10
    assert r.cdb_length(bytes((0x88,)) + bytes(7)) == 16
    assert r.cdb_length(bytes((0xA8,)) + bytes(7)) == 12
    assert r.cdb_length(bytes((0x7F, 0, 0, 0, 0, 0, 0, 24))) == 32


def test_mailbox_of_another_version_is_refused():
    kernel = KernelRing()
    kernel.mailbox.version = 1
    with pytest.raises(r.RingError, match="version 1"):
        r.CommandRing(kernel.buf)


def test_ring_that_does_not_fit_the_mapping_is_refused():
    kernel = KernelRing()
    kernel.mailbox.cmdr_size = len(kernel.buf)
    with pytest.raises(r.RingError, match="does not fit"):
        r.CommandRing(kernel.buf)


def test_a_command_is_copied_out_with_its_cdb_and_buffer():
    kernel = KernelRing()
    cmd_id = kernel.queue(INQUIRY, data_in_len=255)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    assert command == r.Command(cmd_id, INQUIRY, ((kernel.data_off, 255),))
    assert command.buffer_length == 255
    assert ring.in_flight == 1
    assert ring.take() == []


def test_completion_carries_status_read_len_and_data_back_to_the_kernel():
    kernel = KernelRing()
    cmd_id = kernel.queue(INQUIRY, data_in_len=255)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    assert ring.scatter(command.iovecs, b"hello") == 5
    ring.complete(command.cmd_id, 0, read_len=5)
    (done,) = kernel.collect()
    assert (done.cmd_id, done.status, done.read_len, done.data_in) == (cmd_id, 0, 5, b"hello")
    assert kernel.mailbox.cmd_tail == kernel.head
    assert ring.in_flight == 0


def test_check_condition_carries_sense_data():
    kernel = KernelRing()
    kernel.queue(READ_10, data_in_len=4096)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    sense = bytes((0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0, 0, 0, 0, 0))
    ring.complete(command.cmd_id, 2, sense)
    (done,) = kernel.collect()
    assert done.status == 2
    assert done.sense[:18] == sense
    assert done.read_len is None


def test_data_out_spread_over_several_iovecs_is_gathered_in_order():
    kernel = KernelRing(scatter_blocks=True)
    payload = bytes(range(256)) * 48            # three pages, not contiguous in the data area
    kernel.queue(WRITE_16, data_out=payload)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    assert len(command.iovecs) == 3
    assert ring.gather(command.iovecs) == payload
    assert ring.gather(command.iovecs, limit=5000) == payload[:5000]


def test_data_in_spread_over_several_iovecs_is_scattered_in_order():
    kernel = KernelRing(scatter_blocks=True)
    kernel.queue(READ_10, data_in_len=3 * 4096)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    payload = bytes(range(256)) * 48
    assert ring.scatter(command.iovecs, payload) == len(payload)
    ring.complete(command.cmd_id, 0)
    (done,) = kernel.collect()
    assert done.data_in == payload


def test_out_of_order_completions_name_their_command_in_the_tail_entry():
    kernel = KernelRing()
    first = kernel.queue(READ_10, data_in_len=4096)
    second = kernel.queue(INQUIRY, data_in_len=64)
    ring = r.CommandRing(kernel.buf)
    a, b = ring.take()
    ring.scatter(b.iovecs, b"second")
    ring.complete(b.cmd_id, 0, read_len=6)
    (done,) = kernel.collect()
    assert (done.cmd_id, done.data_in) == (second, b"second")
    ring.scatter(a.iovecs, b"first".ljust(4096, b"."))
    ring.complete(a.cmd_id, 0)
    (done,) = kernel.collect()
    assert done.cmd_id == first
    assert done.data_in.startswith(b"first")
    assert kernel.mailbox.cmd_tail == kernel.head


def test_a_pad_entry_at_the_end_of_the_ring_is_skipped_on_both_sides():
    kernel = KernelRing(cmdr_size=1024)
    ring = r.CommandRing(kernel.buf)
    for _ in range(40):                         # enough entries to wrap several times
        cmd_id = kernel.queue(WRITE_16, data_out=b"x" * 512)
        (command,) = ring.take()
        assert (command.cmd_id, command.cdb) == (cmd_id, WRITE_16)
        assert ring.gather(command.iovecs) == b"x" * 512
        ring.complete(command.cmd_id, 0)
        assert [done.cmd_id for done in kernel.collect()] == [cmd_id]
    assert kernel.mailbox.cmd_tail == kernel.head


def test_wrapping_with_several_commands_in_flight():
    kernel = KernelRing(cmdr_size=1024)
    ring = r.CommandRing(kernel.buf)
    seen = []
    for round_ in range(12):
        ids = [kernel.queue(INQUIRY, data_in_len=36) for _ in range(3)]
        commands = ring.take()
        assert [c.cmd_id for c in commands] == ids
        for command in reversed(commands):      # answer newest first
            ring.complete(command.cmd_id, 0, read_len=1)
        seen += [done.cmd_id for done in kernel.collect()]
        assert sorted(seen[-3:]) == sorted(ids), round_


def test_unknown_ring_opcode_is_flagged_and_skipped():
    kernel = KernelRing()
    kernel.queue_raw(5, 64)
    cmd_id = kernel.queue(INQUIRY, data_in_len=36)
    ring = r.CommandRing(kernel.buf)
    unknown, command = ring.take()
    assert unknown == r.UnknownEntry(5, 0)
    assert kernel.buf[128 + 7] & r.UFLAG_UNKNOWN_OP
    assert command.cmd_id == cmd_id
    ring.complete(cmd_id, 0)
    assert ring.tail == kernel.head


def test_task_management_entry_is_reported_and_skipped():
    kernel = KernelRing(flags=OOOC | READ_LEN)
    running = kernel.queue(READ_10, data_in_len=4096)
    kernel.queue_tmr(1, [running])
    ring = r.CommandRing(kernel.buf)
    command, tmr = ring.take()
    assert tmr == r.TaskManagement(1, (running,))
    ring.complete(command.cmd_id, 0)
    assert [done.cmd_id for done in kernel.collect()] == [running]
    assert kernel.mailbox.cmd_tail == kernel.head


def test_tmr_opcode_constant_matches():
    assert r.OP_TMR == OP_TMR


def test_handler_started_with_entries_already_queued_sees_them_all():
    kernel = KernelRing()
    ids = [kernel.queue(INQUIRY, data_in_len=36) for _ in range(4)]
    ring = r.CommandRing(kernel.buf)
    assert [c.cmd_id for c in ring.take()] == ids


def test_entry_with_zero_length_is_a_ring_error():
    kernel = KernelRing()
    kernel.queue_raw(r.OP_CMD, 0)
    kernel.mailbox.cmd_head = 8
    ring = r.CommandRing(kernel.buf)
    with pytest.raises(r.RingError, match="length 0"):
        ring.take()


def test_iovec_outside_the_data_area_is_refused():
    kernel = KernelRing()
    kernel.queue(INQUIRY, data_in_len=36)
    ring = r.CommandRing(kernel.buf)
    (command,) = ring.take()
    with pytest.raises(r.RingError, match="outside the data area"):
        ring.scatter(((128, 16),), b"x" * 16)


def test_completion_without_a_command_is_refused():
    ring = r.CommandRing(KernelRing().buf)
    with pytest.raises(r.RingError):
        ring.complete(1, 0)
