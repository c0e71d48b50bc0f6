"""Crash consistency with a local disk that has a volatile write cache.

Most disks acknowledge a write once it is in their cache and lose it at a power
cut unless the host flushed. The host accepts that for writes it did not flush;
but the pair of media must still agree after recovery on everything the record
does not name, or the resync misses a region (found by the torture harness).
"""

from __future__ import annotations

import asyncio
import time

from tools.sim.faulty import VolatileCacheMedium
from tools.sim.media import MemoryMedium

from .conftest import REGION, SIZE, make_rig, pattern


def test_region_leaves_the_record_only_once_local_data_is_durable(tmp_path) -> None:
    local = VolatileCacheMedium(MemoryMedium(SIZE, "local"), name="local")
    rig = make_rig(tmp_path, local=local, idle_evict_s=0.0)

    async def main() -> None:
        rig.mirror.start()
        # Acknowledged, never flushed by the host: still in the disk's cache.
        await rig.volume.write(5 * REGION, pattern(0x5A))
        await rig.mirror.drained()
        rig.record.tidy(time.monotonic() + 1)  # mirrored and quiet: evicted
        assert 5 not in rig.record_in_nvram()
        await rig.mirror.close()

    asyncio.run(main())
    # Power cut: the local disk's cache is lost. Whatever the record read back does not
    # name must be equal on both media, or the resync would leave it different.
    local.settle("lose")
    unnamed_differences = rig.differing_regions() - rig.record_in_nvram()
    assert unnamed_differences == set()


def test_same_after_a_region_copy(tmp_path) -> None:
    # The catch-up path (queue overflow, failure, start-up) copies by region from the
    # local medium: what it copies must be durable there too before the region is clean.
    local = VolatileCacheMedium(MemoryMedium(SIZE, "local"), name="local")
    rig = make_rig(tmp_path, local=local, idle_evict_s=0.0, queue=4096)

    async def main() -> None:
        rig.mirror.start()
        rig.mirror.pause()
        for region in range(3):
            await rig.volume.write(region * REGION, pattern(region + 1, 8192))  # overflows
        rig.mirror.resume()
        await rig.mirror.drained()
        assert rig.mirror.copied_bytes > 0
        rig.record.tidy(time.monotonic() + 1)
        assert rig.record_in_nvram() == set()
        await rig.mirror.close()

    asyncio.run(main())
    local.settle("lose")
    assert rig.differing_regions() - rig.record_in_nvram() == set()
