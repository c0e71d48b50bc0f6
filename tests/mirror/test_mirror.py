"""The mirror: ordered copy, overflow to catch-up and back, pause, recovery resync."""

from __future__ import annotations

import asyncio
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

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


def test_after_pulling_ahead_only_the_blocks_written_are_copied(tmp_path: Path) -> None:
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path, queue_limit=256 * 1024)
        mirror.start()
        mirror.pause()
        rng = random.Random(1)
        blocks = rng.sample(range(SIZE // 4096), 200)  # scattered 4 KiB writes
        for block in blocks:
            await volume.write(block * 4096, os.urandom(4096))
        assert mirror.state is MirrorState.CATCH_UP and mirror.overflows == 1
        # The lag shown is what is left to copy: the blocks, not their regions.
        assert 0 < mirror.lag_bytes() <= len(blocks) * 4096
        assert mirror.resync_remaining_bytes() <= len(blocks) * 4096
        mirror.resume()
        await mirror.drained()
        assert media_equal(local, second)
        # Whole 64 KiB regions would have been ~13 times as much.
        assert mirror.resync_sent_bytes <= len(blocks) * 4096
        await mirror.close()

    asyncio.run(main())


def test_block_copies_keep_odd_writes_and_zeroes_while_the_host_keeps_writing(
        tmp_path: Path) -> None:
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path, queue_limit=128 * 1024)
        mirror.start()
        mirror.pause()
        rng = random.Random(2)

        async def odd_writes(count: int) -> None:
            for _ in range(count):
                offset = rng.randrange(0, SIZE - 70_000) // 512 * 512 + rng.choice((0, 512))
                if rng.random() < 0.1:
                    await volume.write_zeroes(offset, rng.randrange(1, 129) * 512)
                else:
                    await volume.write(offset, os.urandom(rng.randrange(1, 129) * 512))

        await odd_writes(300)  # sector-sized, unaligned to 4 KiB, across region edges
        assert mirror.state is MirrorState.CATCH_UP
        mirror.resume()
        await odd_writes(300)  # during the passes
        await mirror.drained()
        assert mirror.state is MirrorState.ORDERED
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


def test_a_write_that_overtakes_an_earlier_one_does_not_clean_it(tmp_path: Path) -> None:
    # With group commit a miss waits for its NVRAM transaction while a later hit goes
    # ahead: the mirror sees seq 2 before seq 1 and must not count 1 as mirrored.
    async def main() -> None:
        _volume, mirror, local, second = build(tmp_path)
        record = mirror.record
        mirror.start()
        first = record.begin_write(0, 4096, 0.0)  # waiting for its transaction
        second_seq = record.begin_write(5 * REGION, 4096, 0.0)
        local.pwrite(5 * REGION, b"b" * 4096)
        mirror.submit_write(second_seq.seq, 5 * REGION, b"b" * 4096)
        record.end_write(second_seq)
        for _ in range(50):  # let the mirror ship and retire what it has
            await asyncio.sleep(0.01)
        assert second.pread(5 * REGION, 4096) == b"b" * 4096
        assert not record.is_clean(0) and record.mirrored_seq < first.seq
        local.pwrite(0, b"a" * 4096)
        mirror.submit_write(first.seq, 0, b"a" * 4096)
        record.end_write(first)
        await mirror.drained()
        assert record.is_clean(0) and media_equal(local, second)
        await mirror.close()

    asyncio.run(main())


def test_catch_up_ends_while_the_host_keeps_writing(tmp_path: Path) -> None:
    # New writes are queued during a pass, so leaving catch-up needs no quiet moment.
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path, queue_limit=256 * 1024)
        mirror.start()
        mirror.pause()
        for i in range(200):  # overflow: catch-up
            await volume.write(i * 4096 * 3, os.urandom(4096))
        assert mirror.state is MirrorState.CATCH_UP
        mirror.config.queue_limit_bytes = 16 << 20  # room for what the writer adds per pass
        mirror.resume()
        states = set()
        for i in range(2000):  # a steady writer that never pauses for long
            await volume.write((i % 256) * 4096 * 5, os.urandom(4096))
            states.add(mirror.state)
            if mirror.state is MirrorState.ORDERED:
                break
            await asyncio.sleep(0)
        assert MirrorState.ORDERED in states
        await mirror.drained()
        assert media_equal(local, second)
        await mirror.close()

    asyncio.run(main())


def test_a_given_executor_does_the_io_and_is_left_running(tmp_path: Path) -> None:
    class Counting(ThreadPoolExecutor):
        jobs = 0

        def submit(self, fn, /, *args, **kwargs):  # noqa: ANN001, ANN202, ANN003, ANN002
            Counting.jobs += 1
            return super().submit(fn, *args, **kwargs)

    async def main() -> None:
        local = FileMedium(str(tmp_path / "local.img"), SIZE, create=True)
        second = FileMedium(str(tmp_path / "second.img"), SIZE, create=True)
        geometry = Geometry(SIZE, REGION)
        record = Record(geometry, NullRecordStore(geometry), capacity_regions=256)
        executor = Counting(1)
        mirror = Mirror(local, second, record, executor=executor)
        volume = Volume(local, record, mirror)
        mirror.start()
        await volume.write(0, b"a" * 4096)
        await mirror.drained()
        await mirror.close()
        assert Counting.jobs > 0 and media_equal(local, second)
        assert executor.submit(lambda: 7).result() == 7  # the caller shuts it down
        executor.shutdown()

    asyncio.run(main())


def test_a_region_another_appliance_copies_is_left_to_it(tmp_path: Path) -> None:
    # The seam for a pair (issue 15): Mirror.may_copy says which regions this one copies.
    async def main() -> None:
        volume, mirror, local, second = build(tmp_path, initial=(3, 9))
        mirror.config.probe_interval_s = 0.01
        local.pwrite(3 * REGION, b"a" * REGION)
        local.pwrite(9 * REGION, b"b" * REGION)
        mirror.may_copy = lambda region: region != 9
        mirror.start()
        record = volume.record
        for _ in range(100):
            if record.is_clean(3):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert record.is_clean(3) and not record.is_clean(9)
        assert mirror.state is MirrorState.CATCH_UP  # the remote is not the volume yet
        assert second.pread(9 * REGION, REGION) == bytes(REGION)
        # The other appliance copies region 9 and says so.
        second.pwrite(9 * REGION, local.pread(9 * REGION, REGION))
        record.mirrored_region(9, record.completed_seq())
        await asyncio.wait_for(mirror.drained(), 10)
        assert mirror.state is MirrorState.ORDERED and media_equal(local, second)
        await mirror.close()

    asyncio.run(main())


def test_only_a_link_takes_a_rate_cap(tmp_path: Path) -> None:
    async def main() -> None:
        _, mirror, _, _ = build(tmp_path)
        with pytest.raises(ValueError, match="no rate cap"):
            mirror.set_link_rate(20 << 20)
        await mirror.close()

    asyncio.run(main())
