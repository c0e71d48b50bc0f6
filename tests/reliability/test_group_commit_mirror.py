"""Group commit lets writes reach the mirror out of sequence order; none may be forgotten.

Found by the torture harness (seed 5, sequential-lru, group commit: "the mirror did
not drain"). A write that misses waits for its record transaction while a later
write that hits goes ahead; the mirror must still, once both are on the second
medium, count both as mirrored -- else the later one's region stays dirty for ever
and ``drained()`` (and a writer waiting for room) never returns.
"""

from __future__ import annotations

import asyncio

from firmware.mirror.mirror import Mirror, MirrorConfig
from firmware.record.group_commit import GroupCommitStore
from firmware.record.layout import Geometry
from firmware.record.policy import SequentialLru, SequentialLruConfig
from firmware.record.record import Record
from firmware.record.store import NvramRecordStore
from firmware.volume.volume import Volume
from hal.nvram.file_fram import FileFram
from tools.sim.media import MemoryMedium

from .conftest import REGION, SIZE, pattern, wait_until


def test_a_write_that_overtakes_a_miss_is_mirrored_too(tmp_path) -> None:
    async def main() -> None:
        nvram = FileFram(tmp_path / "nvram.bin", 4096, sync=False)
        store = NvramRecordStore(nvram)
        geometry = Geometry(SIZE, REGION)
        store.format(geometry, ())
        commits = GroupCommitStore(store, inline=False)
        record = Record(geometry, commits, capacity_regions=32,
                        policy=SequentialLru(SequentialLruConfig(idle_evict_s=None)))
        local, second = MemoryMedium(SIZE, "local"), MemoryMedium(SIZE, "second")
        holder: list[Volume] = []
        mirror = Mirror(local, second, record, MirrorConfig(),
                        on_progress=lambda: holder[0].room_made() if holder else None)
        volume = Volume(local, record, mirror)
        holder.append(volume)
        commits.start()
        mirror.start()
        await volume.write(0, pattern(1))  # region 0 is in the record, durably
        await mirror.drained()
        miss = asyncio.ensure_future(volume.write(10 * REGION, pattern(2)))  # waits for NVRAM
        hit = asyncio.ensure_future(volume.write(0, pattern(3)))  # goes ahead of it
        await asyncio.gather(miss, hit)
        drained = asyncio.ensure_future(mirror.drained())
        await wait_until(drained.done, "the mirror drains both writes", limit_s=10)
        assert record.dirty_regions() == []
        assert local.pread(0, SIZE) == second.pread(0, SIZE)
        await mirror.close()
        await commits.close()
        nvram.close()

    asyncio.run(main())
