"""The ring core on byte images a real kernel wrote (recorded with
``python -m tools.rig.capture`` in the virtual rig).

Each recorded batch is the ring bytes between the handler's parse position and
cmd_head at one wake-up: the scan's first commands, writes carrying data,
batches of queued commands (fio at queue depth 16), and the wrap where the
kernel pads the end of the ring. The checks are about what the bytes mean
(CDBs, buffer sizes, iovecs inside the data area), not about our own parse.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

import pytest

from firmware.frontends.tcmu import ring as r

DATA = Path(__file__).parent / "data"
CAPTURES = sorted(DATA.glob("ring-*.json"))
BLOCK = 512
READS_WRITES = {0x08: 6, 0x0A: 6, 0x28: 10, 0x2A: 10, 0x88: 16, 0x8A: 16}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(params=CAPTURES, ids=[p.stem for p in CAPTURES])
def capture(request) -> dict:
    return load(request.param)


def pattern(base: int, length: int) -> bytes:
    seed = base.to_bytes(8, "little")
    return (seed * (length // 8 + 1))[:length]


def image(capture: dict, batch: dict) -> tuple[bytearray, int, int]:
    """The mapping as it was when the handler woke up: mailbox, ring bytes, data."""
    buf = bytearray(capture["map_size"])
    buf[0:128] = bytes.fromhex(capture["mailbox"])
    ring_off, ring_size = capture["cmdr_off"], capture["cmdr_size"]
    for offset, hexed in batch["ring"]:
        raw = bytes.fromhex(hexed)
        buf[ring_off + offset:ring_off + offset + len(raw)] = raw
    for base, length, packed in batch["data"]:
        data = zlib.decompress(base64.b64decode(packed)) if packed else pattern(base, length)
        buf[base:base + length] = data
    start = batch["ring"][0][0]
    last_offset, last_hex = batch["ring"][-1]
    head = (last_offset + len(last_hex) // 2) % ring_size
    struct.pack_into("=I", buf, 12, head)
    struct.pack_into("=I", buf, r.CMD_TAIL_OFFSET, start)
    return buf, start, head


def test_there_is_a_capture():
    assert CAPTURES, "tests/tcmu/data has no ring capture"


def test_mailbox_as_the_kernel_sets_it_up(capture):
    mailbox = r.Mailbox.parse(bytes.fromhex(capture["mailbox"]).ljust(128, b"\0"))
    assert mailbox.version == r.MAILBOX_VERSION
    assert mailbox.flags & r.FLAG_CAP_OOOC and mailbox.flags & r.FLAG_CAP_READ_LEN
    assert mailbox.cmdr_off == r.MAILBOX_SIZE == capture["cmdr_off"]
    assert mailbox.cmdr_size == capture["cmdr_size"]
    assert (mailbox.cmdr_off + mailbox.cmdr_size) % 4096 == 0     # data area page-aligned


def test_every_recorded_batch_parses_into_sensible_commands(capture):
    data_start = capture["cmdr_off"] + capture["cmdr_size"]
    for index, batch in enumerate(capture["batches"]):
        buf, start, head = image(capture, batch)
        ring = r.CommandRing(buf)
        events = ring.take()
        assert len(events) == batch["events"], index
        used: set[int] = set()
        for command in events:
            assert isinstance(command, r.Command), index
            assert len(command.cdb) == r.cdb_length(command.cdb.ljust(8, b"\0"))
            for base, length in command.iovecs:
                assert data_start <= base and base + length <= capture["map_size"]
                pages = set(range(base // 4096, (base + length - 1) // 4096 + 1))
                assert not pages & used, f"batch {index}: two commands share a data page"
                used |= pages
            size = READS_WRITES.get(command.cdb[0])
            if size == 10:
                blocks = int.from_bytes(command.cdb[7:9], "big")
                assert command.buffer_length == blocks * BLOCK, command.cdb.hex()
            elif size == 16:
                blocks = int.from_bytes(command.cdb[10:14], "big")
                assert command.buffer_length == blocks * BLOCK, command.cdb.hex()
        for command in reversed(events):            # answer them out of order
            ring.complete(command.cmd_id, 0)
        assert ring.tail == head, index
        assert struct.unpack_from("=I", buf, r.CMD_TAIL_OFFSET)[0] == head


def test_the_scan_starts_with_inquiry(capture):
    first = capture["batches"][0]
    buf, _, _ = image(capture, first)
    (command,) = r.CommandRing(buf).take()
    assert command.cdb[0] == 0x12                   # INQUIRY
    assert command.buffer_length >= 36


def test_write_data_is_gathered_as_the_kernel_copied_it(capture):
    checked = 0
    for batch in capture["batches"]:
        if batch["kind"] != "data":
            continue
        buf, _, _ = image(capture, batch)
        ring = r.CommandRing(buf)
        for command in ring.take():
            if command.cdb[0] not in (0x0A, 0x2A, 0x8A, 0xAA):
                continue
            expected = b"".join(
                zlib.decompress(base64.b64decode(packed)) if packed else pattern(base, length)
                for base, length, packed in batch["data"]
                if any(base == b for b, _ in command.iovecs))
            assert ring.gather(command.iovecs) == expected
            checked += 1
    assert checked
    first_write = next(b for b in capture["batches"] if b["kind"] == "data")
    buf, _, _ = image(capture, first_write)
    ring = r.CommandRing(buf)
    (command,) = ring.take()
    assert ring.gather(command.iovecs) == b"A" * 4096  # the workload's first write


def test_the_wrap_pads_the_end_of_the_ring(capture):
    wrapped = [b for b in capture["batches"] if b["wrapped"]]
    assert wrapped
    batch = wrapped[0]
    buf, start, head = image(capture, batch)
    ring_off = capture["cmdr_off"]
    len_op = struct.unpack_from("=I", buf, ring_off + start)[0]
    assert len_op & r.OP_MASK == r.OP_PAD
    assert start + (len_op & ~r.OP_MASK) == capture["cmdr_size"]
    ring = r.CommandRing(buf)
    (command,) = ring.take()
    assert head < start
    ring.complete(command.cmd_id, 0)
    assert ring.tail == head
