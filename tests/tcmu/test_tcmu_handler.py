"""The asyncio handler between a kernel-shaped ring and an in-RAM volume."""

from __future__ import annotations

import asyncio
import os
import struct

from firmware.frontends.tcmu.handler import TcmuHandler
from firmware.frontends.tcmu.scsi import DiskIdentity, ScsiDisk
from tests.tcmu.kernel_model import OOOC, READ_LEN, KernelRing
from tools.sim.memory_target import MemoryTarget

BS = 512


class FakeUio:
    """A pipe stands in for the UIO fd: the 'kernel' writes a byte to signal."""

    def __init__(self, kernel: KernelRing) -> None:
        self.kernel = kernel
        self.mapping = kernel.buf
        self.fd, self._signal = os.pipe()
        os.set_blocking(self.fd, False)
        self.notified = asyncio.Event()
        self.completions: list = []

    def read_event(self) -> int | None:
        try:
            return len(os.read(self.fd, 64))
        except BlockingIOError:
            return None

    def signal(self) -> None:
        os.write(self._signal, b"\1")

    def notify(self) -> None:
        self.completions += self.kernel.collect()
        self.notified.set()

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._signal)


async def wait_for(device: FakeUio, count: int) -> list:
    while len(device.completions) < count:
        device.notified.clear()
        await asyncio.wait_for(device.notified.wait(), 5)
    return device.completions


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x2A, 0, lba, 0, blocks, 0)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0)


def serve(kernel: KernelRing, scenario) -> None:
    async def main() -> None:
        target = MemoryTarget(1024 * BS)
        device = FakeUio(kernel)
        handler = TcmuHandler(device, ScsiDisk(target, DiskIdentity(serial="H")))
        handler.start()
        try:
            await scenario(kernel, device, target)
        finally:
            await handler.close()
            device.close()
    asyncio.run(main())


def test_write_then_read_through_the_ring():
    async def scenario(kernel, device, target):
        payload = os.urandom(8 * BS)
        write_id = kernel.queue(write10(16, 8), data_out=payload)
        device.signal()
        (done,) = await wait_for(device, 1)
        assert (done.cmd_id, done.status) == (write_id, 0)
        assert await target.read(16 * BS, 8 * BS) == payload
        read_id = kernel.queue(read10(16, 8), data_in_len=8 * BS)
        device.signal()
        done = (await wait_for(device, 2))[1]
        assert (done.cmd_id, done.status, done.data_in) == (read_id, 0, payload)
    serve(KernelRing(data_blocks=64), scenario)


def test_short_answer_reports_its_length():
    async def scenario(kernel, device, target):
        kernel.queue(bytes((0x12, 0, 0, 0, 0xFF, 0)), data_in_len=255)
        device.signal()
        (done,) = await wait_for(device, 1)
        assert done.read_len == 74 and len(done.data_in) == 74
        assert done.data_in[8:14] == b"TANDEM"
    serve(KernelRing(), scenario)


def test_many_commands_in_flight_all_complete():
    async def scenario(kernel, device, target):
        ids = [kernel.queue(write10(i, 1), data_out=bytes([i]) * BS) for i in range(20)]
        device.signal()
        done = await wait_for(device, 20)
        assert sorted(c.cmd_id for c in done) == sorted(ids)
        assert all(c.status == 0 for c in done)
        for i in range(20):
            assert await target.read(i * BS, BS) == bytes([i]) * BS
    serve(KernelRing(cmdr_size=8192 - 128, data_blocks=32), scenario)


def test_in_order_completion_when_the_kernel_cannot_take_them_out_of_order():
    async def scenario(kernel, device, target):
        ids = [kernel.queue(write10(i, 1), data_out=b"o" * BS) for i in range(5)]
        ids.append(kernel.queue(bytes(6)))      # TEST UNIT READY
        device.signal()
        done = await wait_for(device, 6)
        assert [c.cmd_id for c in done] == ids
    serve(KernelRing(cmdr_size=4096 - 128, flags=READ_LEN), scenario)


def test_check_condition_goes_back_with_sense():
    async def scenario(kernel, device, target):
        kernel.queue(read10(5000, 1), data_in_len=BS)
        device.signal()
        (done,) = await wait_for(device, 1)
        assert done.status == 2
        assert (done.sense[2], done.sense[12]) == (0x5, 0x21)
    serve(KernelRing(flags=OOOC | READ_LEN), scenario)


def test_commands_queued_before_start_are_served():
    kernel = KernelRing()
    kernel.queue(bytes(6))

    async def scenario(kernel, device, target):
        (done,) = await wait_for(device, 1)
        assert done.status == 0
    serve(kernel, scenario)


def test_a_broken_ring_stops_the_handler_instead_of_guessing():
    kernel = KernelRing()
    kernel.queue_raw(1, 0)                      # a CMD entry of length 0
    kernel.mailbox.cmd_head = 8

    async def main() -> None:
        device = FakeUio(kernel)
        handler = TcmuHandler(device, ScsiDisk(MemoryTarget(8 * BS), DiskIdentity(serial="B")))
        handler.start()
        assert handler.broken is not None
        await handler.close()
        device.close()
    asyncio.run(main())


def compare_and_write(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQ3xBBB", 0x89, 0, lba, blocks, 0, 0)


def test_compare_and_write_gets_its_whole_data_out_through_the_ring():
    # The kernel passes COMPARE AND WRITE through with the initiator's whole buffer,
    # verify data then write data, here over several iovecs.
    async def scenario(kernel, device, target):
        old, new = os.urandom(9 * BS), os.urandom(9 * BS)
        await target.write(40 * BS, old)
        kernel.queue(compare_and_write(40, 9), data_out=old + new)
        device.signal()
        (matched,) = await wait_for(device, 1)
        assert matched.status == 0
        assert await target.read(40 * BS, 9 * BS) == new
        stale = bytearray(new)
        stale[5 * BS + 3] ^= 0xFF
        kernel.queue(compare_and_write(40, 9), data_out=bytes(stale) + old)
        device.signal()
        missed = (await wait_for(device, 2))[1]
        assert missed.status == 2
        assert (missed.sense[2], missed.sense[12], missed.sense[13]) == (0xE, 0x1D, 0x00)
        assert int.from_bytes(missed.sense[3:7], "big") == 5 * BS + 3
        assert await target.read(40 * BS, 9 * BS) == new
    serve(KernelRing(data_blocks=64, scatter_blocks=True), scenario)
