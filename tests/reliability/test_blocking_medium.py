"""A local medium that blocks its caller (O_DIRECT, a block device): the volume runs its
reads and writes on the I/O worker, not on the event loop, and the two media still end
up identical however the host's writes overlap."""

from __future__ import annotations

import asyncio
import errno
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from firmware.volume.target import TargetError
from tools.sim.faulty import FaultyMedium
from tools.sim.media import MemoryMedium

from .conftest import REGION, SIZE, make_rig, wait_until


class SlowDevice(MemoryMedium):
    """Takes its time per write, as a disk does, and says that it blocks."""

    blocking = True

    def __init__(self, size: int, name: str, delay_s: float) -> None:
        super().__init__(size, name)
        self.delay_s = delay_s

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        time.sleep(self.delay_s)
        super().pwrite(offset, data)


def rig_with(tmp_path, local):
    # As the appliance builds it: one I/O worker for the local medium.
    return make_rig(tmp_path, local=local, capacity=64, io_executor=ThreadPoolExecutor(1))


def test_the_loop_keeps_running_while_the_medium_writes(tmp_path):
    async def main() -> int:
        rig = rig_with(tmp_path, SlowDevice(SIZE, "local", delay_s=0.3))
        rig.mirror.start()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.ensure_future(ticker())
        await rig.volume.write(0, b"x" * 4096)
        beat.cancel()
        assert await rig.volume.read(0, 4096) == b"x" * 4096
        await rig.mirror.close()
        return ticks

    # Inline, the 0.3 s write would have stopped the ticker; on the worker it ticks on.
    assert asyncio.run(main()) >= 10


def test_racing_overlapping_writes_leave_both_media_equal(tmp_path):
    async def main() -> None:
        rig = rig_with(tmp_path, SlowDevice(SIZE, "local", delay_s=0.0005))
        rig.mirror.start()
        rnd = random.Random(7)
        for _ in range(30):
            writes = []
            for _ in range(rnd.randrange(2, 9)):  # overlapping writes, issued together
                block = rnd.randrange(0, 24)
                length = rnd.choice((1, 2, 8, 20))
                writes.append(rig.volume.write(block * 4096,
                                               rnd.randbytes(length * 4096)))
            await asyncio.gather(*writes)
        await rig.volume.flush()
        drained = asyncio.ensure_future(rig.mirror.drained())
        await wait_until(drained.done, "the mirror drains", limit_s=30)
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    asyncio.run(main())


def test_a_failed_blocking_write_is_refused_and_the_mirror_repairs_the_region(tmp_path):
    async def main() -> None:
        device = FaultyMedium(SlowDevice(SIZE, "local", delay_s=0.0))
        device.blocking = True  # the fault injector stands in front of a disk
        rig = rig_with(tmp_path, device)
        rig.mirror.start()
        await rig.volume.write(0, b"a" * 4096)
        device.inject("write", errno.EIO, offset=3 * REGION, length=REGION)
        with pytest.raises(TargetError) as refused:
            await rig.volume.write(3 * REGION, b"b" * 8192)
        assert refused.value.errno == errno.EIO
        device.clear()
        await rig.volume.write(5 * REGION, b"c" * 4096)
        drained = asyncio.ensure_future(rig.mirror.drained())
        await wait_until(drained.done, "the mirror copies the failed region", limit_s=30)
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    asyncio.run(main())
