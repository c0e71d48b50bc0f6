"""COMPARE AND WRITE on the appliance's volume (record, local medium, mirror): one of
several racing for a block wins, and a miscompare leaves the media equal and the record
free to let the region go -- with the local medium written inline (page cache) and on
the I/O worker (a medium that blocks its caller)."""

from __future__ import annotations

import asyncio
import errno
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from firmware.mirror.mirror import Mirror, MirrorState
from firmware.record.layout import Geometry
from firmware.record.record import Record
from firmware.record.store import NullRecordStore
from firmware.volume.target import TargetError
from firmware.volume.volume import Volume
from tools.sim.faulty import FaultyMedium
from tools.sim.media import MemoryMedium

from .conftest import REGION, SIZE, Rig, make_rig, pattern, wait_until

BLOCK = 512


class BlockingMedium(MemoryMedium):
    """Says it blocks its caller, so the volume does its I/O on the worker."""

    blocking = True


def build(tmp_path: Path, io_path: str, local: MemoryMedium | FaultyMedium | None = None
          ) -> Rig:
    if io_path == "inline":
        return make_rig(tmp_path, local=local or MemoryMedium(SIZE, "local"), capacity=64)
    medium = local or BlockingMedium(SIZE, "local")
    if isinstance(medium, FaultyMedium):
        medium.blocking = True  # the fault injector stands in front of a disk
    rig = make_rig(tmp_path, local=medium, capacity=64, io_executor=ThreadPoolExecutor(1))
    assert not rig.volume._inline_io
    return rig


async def drain(rig: Rig) -> None:
    drained = asyncio.ensure_future(rig.mirror.drained())
    await wait_until(drained.done, "the mirror drains", limit_s=10)


IO_PATHS = ["inline", "worker"]


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_compare_and_writes_racing_for_one_block_let_exactly_one_win(tmp_path, io_path):
    # ATS: every host expects the lock block free and writes its own id into it.
    async def main() -> None:
        rig = build(tmp_path, io_path)
        rig.mirror.start()
        lock_at = 3 * REGION + 7 * BLOCK
        free = bytes(BLOCK)
        claims = [free[:100] + bytes([host]) + free[101:] for host in range(1, 9)]
        outcomes = await asyncio.gather(
            *(rig.volume.compare_and_write(lock_at, free, claim) for claim in claims))
        winners = [host for host, outcome in enumerate(outcomes) if outcome is None]
        assert len(winners) == 1
        # Each loser compared against the winner's claim: it differs at byte 100.
        assert sorted(o for o in outcomes if o is not None) == [100] * 7
        assert await rig.volume.read(lock_at, BLOCK) == claims[winners[0]]
        # Releasing needs the winner's value, which only the winner has.
        assert await rig.volume.compare_and_write(lock_at, claims[winners[0]], free) is None
        await drain(rig)
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    asyncio.run(main())


class HandOverStore(NullRecordStore):
    """A record store whose every write waits for a grant, as the pair's store waits for
    the peer to hand a region over (its MARK acknowledged) before the write proceeds."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__(geometry)
        self.granted = asyncio.Event()
        self.waiting = 0

    def must_wait(self, regions: range) -> int:
        return 1

    async def durable(self, transaction: int | None = None) -> None:
        if transaction:
            self.waiting += 1
            await self.granted.wait()


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_the_compare_reads_only_once_the_region_is_ours(tmp_path, io_path):
    # Active-active: the peer writes the shared local medium (D) until it hands the
    # region over. A compare that read before the ticket was durable would find the
    # lock free, write over the peer's claim, and both hosts would hold the lock.
    async def main() -> None:
        local = BlockingMedium(SIZE, "D") if io_path == "worker" else MemoryMedium(SIZE, "D")
        second = MemoryMedium(SIZE, "M")
        geometry = Geometry(SIZE, REGION)
        store = HandOverStore(geometry)
        record = Record(geometry, store, capacity_regions=64)
        mirror = Mirror(local, second, record)
        volume = Volume(local, record, mirror, io_executor=ThreadPoolExecutor(1))
        mirror.start()
        lock_at, free = 11 * REGION, bytes(BLOCK)
        ours, peers = b"A" * BLOCK, free[:100] + b"B" + free[101:]
        attempt = asyncio.ensure_future(volume.compare_and_write(lock_at, free, ours))
        await wait_until(lambda: store.waiting == 1, "the ticket waits for the region")
        for medium in (local, second):  # the peer's claim, mirrored by the peer
            medium.pwrite(lock_at, peers)
        store.granted.set()  # the peer hands the region over
        assert await attempt == 100
        assert local.pread(lock_at, BLOCK) == peers
        await mirror.drained()
        assert second.pread(lock_at, BLOCK) == peers
        await mirror.close()

    asyncio.run(main())


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_compare_and_write_under_plain_writes_to_the_same_block(tmp_path, io_path):
    # Writes to the block in flight around the compare and write: it sees each one
    # before or after, never half, and both media end with the same winner.
    async def main() -> None:
        rig = build(tmp_path, io_path)
        rig.mirror.start()
        at = 5 * REGION
        await rig.volume.write(at, pattern(1, BLOCK))
        results = await asyncio.gather(
            rig.volume.write(at, pattern(2, BLOCK)),
            rig.volume.compare_and_write(at, pattern(2, BLOCK), pattern(3, BLOCK)),
            rig.volume.write(at, pattern(4, BLOCK)))
        assert results[1] in (None, 0)  # it saw 2 (and wrote 3), or 1 or 4: never half
        await drain(rig)
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    asyncio.run(main())


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_a_miscompare_writes_nothing_and_the_region_may_leave_the_record(tmp_path, io_path):
    async def main() -> None:
        rig = build(tmp_path, io_path)
        rig.mirror.start()
        record = rig.record
        at = 9 * REGION + 3 * BLOCK
        region = at // REGION
        assert not record.contains(region)  # a miss: the ticket adds the region
        outcome = await rig.volume.compare_and_write(at, b"x" * BLOCK, b"y" * BLOCK)
        assert outcome == 0
        assert await rig.volume.read(at, BLOCK) == bytes(BLOCK)
        assert record.contains(region) and region in rig.record_in_nvram()
        await drain(rig)  # a ticket with no mirror write behind it would hang here
        assert rig.differing_regions() == set()
        assert record.is_clean(region) and record.evictable(region)
        assert record.evict_clean() >= 1
        assert not record.contains(region) and region not in rig.record_in_nvram()
        # Nothing forced a copy by region: the mirror stayed ordered throughout.
        assert rig.mirror.state is MirrorState.ORDERED and rig.mirror.copied_bytes == 0
        await rig.mirror.close()

    asyncio.run(main())


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_a_miscompare_after_writes_still_on_their_way_to_the_second_medium(tmp_path,
                                                                         io_path):
    # The bytes compared go to the mirror behind the writes before them: the second
    # medium ends up with the newest, not with what the compare read.
    async def main() -> None:
        rig = build(tmp_path, io_path)
        rig.mirror.start()
        rig.mirror.pause()
        at = 2 * REGION
        for tag in range(1, 6):
            await rig.volume.write(at, pattern(tag, 4 * BLOCK))
        assert await rig.volume.compare_and_write(
            at + BLOCK, pattern(9, BLOCK), pattern(7, BLOCK)) == 0
        await rig.volume.write(at + 2 * BLOCK, pattern(8, BLOCK))
        rig.mirror.resume()
        await drain(rig)
        assert rig.differing_regions() == set()
        assert rig.second.pread(at, 3 * BLOCK) == \
            pattern(5, 2 * BLOCK) + pattern(8, BLOCK)
        assert rig.record.evict_clean() >= 1 and not rig.record.dirty_regions()
        await rig.mirror.close()

    asyncio.run(main())


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_a_match_writes_both_media(tmp_path, io_path):
    async def main() -> None:
        rig = build(tmp_path, io_path)
        rig.mirror.start()
        at = 4 * REGION - BLOCK  # across a region boundary: two regions, one ticket
        await rig.volume.write(at, pattern(1, 2 * BLOCK))
        assert await rig.volume.compare_and_write(
            at, pattern(1, 2 * BLOCK), pattern(2, 2 * BLOCK), fua=True) is None
        assert await rig.volume.read(at, 2 * BLOCK) == pattern(2, 2 * BLOCK)
        await drain(rig)
        assert rig.second.pread(at, 2 * BLOCK) == pattern(2, 2 * BLOCK)
        assert rig.differing_regions() == set() and not rig.record.dirty_regions()
        await rig.mirror.close()

    asyncio.run(main())


@pytest.mark.parametrize("io_path", IO_PATHS)
def test_a_failed_read_refuses_the_compare_and_write_and_the_region_is_copied(tmp_path,
                                                                            io_path):
    async def main() -> None:
        local = FaultyMedium(MemoryMedium(SIZE, "local"))
        rig = build(tmp_path, io_path, local=local)
        rig.mirror.start()
        at = 6 * REGION
        await rig.volume.write(at, pattern(1, BLOCK))
        local.inject("read", errno.EIO, offset=at, length=BLOCK, times=1)
        with pytest.raises(TargetError) as refused:
            await rig.volume.compare_and_write(at, pattern(1, BLOCK), pattern(2, BLOCK))
        assert refused.value.errno == errno.EIO
        assert await rig.volume.read(at, BLOCK) == pattern(1, BLOCK)
        await drain(rig)
        assert rig.differing_regions() == set() and not rig.record.dirty_regions()
        await rig.mirror.close()

    asyncio.run(main())


def test_compare_and_write_refuses_what_a_write_refuses(tmp_path):
    async def main() -> None:
        rig = build(tmp_path, "inline")
        with pytest.raises(TargetError) as beyond:
            await rig.volume.compare_and_write(SIZE, b"a", b"b")
        assert beyond.value.errno in (errno.EINVAL, errno.ENOSPC)
        with pytest.raises(ValueError):
            await rig.volume.compare_and_write(0, b"ab", b"c")
        assert rig.record.seq == 0  # refused before any ticket

    asyncio.run(main())
