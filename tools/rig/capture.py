"""Record what a real kernel writes into the TCMU ring, for the unit tests' fixtures.

    python -m tools.rig.capture OUT.json     (as root, on a kernel with LIO)

Creates a scratch storage object with a 1 MiB command ring, maps it into
tcm_loop, drives a small workload at the disk (the kernel's scan, writes and
reads of several sizes, a flush, and enough small commands to wrap the ring so
the kernel has to insert a PAD entry), and serves it with the real handler
while recording the ring bytes of each batch the handler took. The file is a
byte image (mailbox + ring segments + small data-out buffers) that
tests/tcmu replays through CommandRing without a kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import subprocess
import sys
import zlib
from pathlib import Path

from firmware.frontends.tcmu.handler import TcmuHandler
from firmware.frontends.tcmu.lio import LioExport, LioSettings
from firmware.frontends.tcmu.ring import Command, CommandRing, RingEvent
from firmware.frontends.tcmu.scsi import DiskIdentity, ScsiDisk
from firmware.frontends.tcmu.service import wait_for_disk, wait_for_uio
from firmware.frontends.tcmu.uio import UioDevice
from tools.sim.memory_target import MemoryTarget

MAX_RECORDED_DATA = 64 << 10
SIZE = 64 << 20


def _data_record(base: int, data: bytes) -> list[object]:
    """[offset, length, contents]: contents (zlib, base64) only when they compress well —
    random payloads would bloat the fixture and say nothing more than their iovec."""
    packed = zlib.compress(data, 9)
    return [base, len(data), base64.b64encode(packed).decode() if len(packed) < 512 else None]


class RecordingRing(CommandRing):
    """A CommandRing that keeps a copy of the ring bytes behind every batch it takes."""

    def __init__(self, buf: object) -> None:
        super().__init__(buf)  # type: ignore[arg-type]
        self.batches: list[dict[str, object]] = []
        self.kept: dict[str, int] = {}
        self.pads = 0

    def take(self) -> list[RingEvent]:
        start, head = self._parsed, self.head()
        events = super().take()
        if start == head:
            return events
        segments = [(start, head)] if head > start else [(start, self._ring_size), (0, head)]
        ring = [[a, bytes(self._buf[self._ring_off + a:self._ring_off + b]).hex()]
                for a, b in segments if b > a]
        data = []
        for event in events:
            if isinstance(event, Command) and 0 < event.buffer_length <= MAX_RECORDED_DATA \
                    and event.cdb[0] in (0x0A, 0x2A, 0x8A, 0xAA):
                data += [_data_record(base, bytes(self._buf[base:base + size]))
                         for base, size in event.iovecs]
        wrapped = head < start
        self.pads += wrapped
        kinds = {"first": len(self.batches) < 12, "data": bool(data),
                 "many": len(events) >= 4, "wrapped": wrapped}
        for kind, present in kinds.items():
            if present and self.kept.get(kind, 0) < 4:
                self.kept[kind] = self.kept.get(kind, 0) + 1
                self.batches.append({"ring": ring, "data": data, "wrapped": wrapped,
                                     "events": len(events), "kind": kind})
                break
        return events


async def capture(out: Path) -> None:
    settings = LioSettings(name="capture0", volume="capture0", size=SIZE,
                           serial="TDMCAPTURE0", hw_max_sectors=2048, max_data_area_mb=16,
                           cmd_ring_size_mb=1, tcm_loop=True)   # small: the workload wraps it
    export = await asyncio.to_thread(LioExport, settings)
    await asyncio.to_thread(export.ensure_storage_object)
    device = UioDevice(await wait_for_uio(settings.name, settings.config))
    await asyncio.to_thread(export.restart_ring)
    disk = ScsiDisk(MemoryTarget(SIZE), DiskIdentity(serial=settings.serial,
                                                     max_transfer_blocks=2048))
    ring = RecordingRing(device.mapping)
    handler = TcmuHandler(device, disk, ring)
    handler.start()
    mailbox = bytes(device.mapping[0:128]).hex()
    try:
        await asyncio.to_thread(export.ensure_loopback)
        dev = await wait_for_disk(settings.serial)
        workload = (
            f"dd if=/dev/zero bs=4k count=1 2>/dev/null | tr '\\0' 'A' | "
            f"dd of={dev} bs=4k seek=1 oflag=direct status=none && "
            f"dd if=/dev/urandom of={dev} bs=64k count=2 seek=4 oflag=direct status=none && "
            f"dd if={dev} of=/dev/null bs=1M count=2 iflag=direct status=none && "
            f"sync && blockdev --flushbufs {dev} && "
            f"fio --name=queued --filename={dev} --direct=1 --ioengine=libaio --iodepth=16 "
            f"--rw=randrw --bs=4k --size=4M --number_ios=400 --output=/dev/null && "
            f"dd if={dev} of=/dev/null bs=512 count=12000 iflag=direct status=none")
        await asyncio.to_thread(subprocess.run, ["bash", "-c", workload], check=True)
    finally:
        await asyncio.to_thread(export.remove_fabrics)
        await handler.close()
        device.close()
        await asyncio.to_thread(export.remove_storage_object)
    record = {
        "kernel": os.uname().release, "map_size": device.size, "mailbox": mailbox,
        "cmdr_off": ring.ring_offset, "cmdr_size": ring.ring_size,
        "batches": ring.batches,
    }
    out.write_text(json.dumps(record) + "\n")
    print(f"recorded {len(ring.batches)} batches ({ring.pads} wraps) from kernel "
          f"{record['kernel']} into {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.rig.capture")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    asyncio.run(capture(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
