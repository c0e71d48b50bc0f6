"""The mirror: ordered copy, overflow to catch-up and back, pause, recovery resync."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from firmware.mirror.mirror import Mirror, MirrorConfig, MirrorState
from firmware.record.layout import Geometry
from firmware.record.record import Record
from firmware.record.store import NullRecordStore
from firmware.volume.volume import Volume
from hal.media.file import FileMedium

REGION = 64 * 1024
SIZE = 16 << 20


def build(tmp_path: Path, queue_limit: int = 1 << 20, initial: tuple[int, ...] = ()
          ) -> tuple[Volume, Mirror, FileMedium, FileMedium]:
    local = FileMedium(str(tmp_path / "local.img"), SIZE, create=True)
    second = FileMedium(str(tmp_path / "second.img"), SIZE, create=True)
    geometry = Geometry(SIZE, REGION)
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=256,
                    initial_regions=initial)
    holder: list[Volume] = []
    mirror = Mirror(local, second, record, MirrorConfig(queue_limit_bytes=queue_limit),
                    on_progress=lambda: holder[0].room_made())
    volume = Volume(local, record, mirror)
    holder.append(volume)
    return volume, mirror, local, second


def media_equal(a: FileMedium, b: FileMedium) -> bool:
    return a.pread(0, SIZE) == b.pread(0, SIZE)


def test_ordered_mirror_copies_everything(tmp_path: Path) -> None:
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path)
        mirror.start()
        for i in range(50):
            await volume.write((i * 7919 % 4000) * 4096, os.urandom(4096))
        await volume.write_zeroes(8 * REGION, REGION)
        await mirror.drained()
        assert mirror.state is MirrorState.ORDERED and mirror.overflows == 0
        assert mirror.lag_bytes() == 0 and not volume.record.dirty_regions()
        assert media_equal(local, second)
        await mirror.close()

    asyncio.run(main())


def test_overflow_falls_back_to_region_copy_then_returns(tmp_path: Path) -> None:
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path, queue_limit=256 * 1024)
        mirror.start()
        mirror.pause()
        for i in range(200):  # 800 KiB while paused: the 256 KiB queue overflows
            await volume.write(i * 4096 * 3, os.urandom(4096))
        assert mirror.state is MirrorState.CATCH_UP and mirror.overflows == 1
        assert mirror.status()["mirror_state"] == "paused"
        assert mirror.lag_bytes() > 0
        mirror.resume()
        await mirror.drained()
        assert mirror.state is MirrorState.ORDERED
        assert mirror.copied_bytes > 0
        assert media_equal(local, second)
        await mirror.close()

    asyncio.run(main())


def test_start_up_regions_are_resynced_while_serving(tmp_path: Path) -> None:
    async def main() -> None:
        # Local differs from second in regions 3 and 9, which the record names.
        volume, mirror, local, second = build(tmp_path, initial=(3, 9))
        local.pwrite(3 * REGION + 100, b"a" * 5000)
        local.pwrite(9 * REGION, b"b" * REGION)
        assert mirror.state is MirrorState.CATCH_UP
        assert mirror.resync_remaining_bytes() == 2 * REGION
        mirror.start()
        await volume.write(20 * REGION, b"c" * 4096)  # a host write during the resync
        await mirror.drained()
        assert mirror.resync_remaining_bytes() == 0
        assert media_equal(local, second)
        in_record = len(volume.record)
        assert volume.record.evict_clean() == in_record  # all clean now
        await mirror.close()

    asyncio.run(main())
