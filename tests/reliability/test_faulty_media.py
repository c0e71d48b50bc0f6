"""The misbehaving media themselves: what a cut, a cache and an injected fault leave."""

from __future__ import annotations

import errno
import random

import pytest

from hal.media.base import Medium, MediumError
from tools.sim.faulty import (
    SECTOR,
    Cut,
    FaultyMedium,
    IoEvent,
    MediumPowerLost,
    PowerRail,
    VolatileCacheMedium,
)
from tools.sim.media import MemoryMedium

SIZE = 64 * SECTOR


def sectors(medium: Medium) -> list[bytes]:
    data = medium.pread(0, medium.size)
    return [data[i:i + SECTOR] for i in range(0, len(data), SECTOR)]


def test_all_three_are_media() -> None:
    inner = MemoryMedium(SIZE)
    for medium in (inner, FaultyMedium(inner), VolatileCacheMedium(inner)):
        assert isinstance(medium, Medium)
        assert medium.size == SIZE


# -- the volatile cache -----------------------------------------------------------------


def test_unflushed_writes_are_read_back_and_lost_at_a_cut() -> None:
    inner = MemoryMedium(SIZE)
    disk = VolatileCacheMedium(inner)
    disk.pwrite(0, b"a" * SECTOR)
    disk.flush()
    disk.pwrite(0, b"b" * 100)  # partial sector: merged with what the sector holds
    disk.write_zeroes(SECTOR, SECTOR)
    assert disk.pread(0, 2 * SECTOR) == b"b" * 100 + b"a" * (SECTOR - 100) + bytes(SECTOR)
    assert inner.pread(0, 100) == b"a" * 100  # not on the platter yet
    assert disk.unflushed_sectors == 2
    disk.settle("lose")
    assert disk.pread(0, SECTOR) == b"a" * SECTOR
    assert disk.unflushed_sectors == 0


def test_flushed_writes_survive_and_keep_mode_keeps_the_newest() -> None:
    disk = VolatileCacheMedium(MemoryMedium(SIZE))
    disk.pwrite(0, b"1" * SECTOR)
    disk.flush()
    disk.pwrite(SECTOR, b"2" * SECTOR)
    disk.pwrite(SECTOR, b"3" * SECTOR)
    disk.settle("keep")
    assert disk.pread(0, 2 * SECTOR) == b"1" * SECTOR + b"3" * SECTOR


def test_random_settle_leaves_whole_sectors_of_some_version() -> None:
    rng = random.Random(5)
    seen: set[bytes] = set()
    for _ in range(40):
        disk = VolatileCacheMedium(MemoryMedium(SIZE), rng=rng)
        for version in b"xyz":
            disk.pwrite(0, bytes([version]) * 4 * SECTOR)
        disk.settle("random")
        for sector in sectors(disk)[:4]:
            assert sector in {bytes(SECTOR)} | {bytes([v]) * SECTOR for v in b"xyz"}
            seen.add(sector[:1])
    assert seen == {b"\0", b"x", b"y", b"z"}  # any version may be what survives


def test_write_through_loses_nothing_completed() -> None:
    disk = VolatileCacheMedium(MemoryMedium(SIZE), cache=False)
    disk.pwrite(0, b"w" * 3 * SECTOR)
    disk.settle("lose")
    assert disk.pread(0, 3 * SECTOR) == b"w" * 3 * SECTOR


# -- the power rail ---------------------------------------------------------------------


def test_a_cut_before_an_io_stops_everything_on_the_rail() -> None:
    rail = PowerRail()
    local = VolatileCacheMedium(MemoryMedium(SIZE), rail=rail, name="local")
    second = VolatileCacheMedium(MemoryMedium(SIZE), rail=rail, name="second")
    events: list[IoEvent] = []

    def trip(event: IoEvent) -> Cut | None:
        events.append(event)
        return Cut.BEFORE if event.device == "second" else None

    rail.trip = trip
    local.pwrite(0, b"l" * SECTOR)
    with pytest.raises(MediumPowerLost):
        second.pwrite(0, b"s" * SECTOR)
    assert not rail.on and "second" in str(rail.cause)
    assert second.unflushed_sectors == 0  # the write had no effect
    for operation in (lambda: local.pread(0, 1), local.flush, lambda: second.pwrite(0, b"x")):
        with pytest.raises(MediumPowerLost):
            operation()
    assert [e.op for e in events] == ["write", "write"]


@pytest.mark.parametrize("cache", [True, False])
def test_a_cut_during_a_write_lands_some_of_its_sectors(cache) -> None:
    landed_counts = set()
    for seed in range(30):
        rail = PowerRail()
        rail.trip = lambda event: Cut.DURING
        inner = MemoryMedium(SIZE)
        disk = VolatileCacheMedium(inner, rail=rail, cache=cache, rng=random.Random(seed))
        with pytest.raises(MediumPowerLost):
            disk.pwrite(0, b"p" * 8 * SECTOR)
        disk.settle("keep")
        landed = [s == b"p" * SECTOR for s in sectors(inner)[:8]]
        assert all(s in (b"p" * SECTOR, bytes(SECTOR)) for s in sectors(inner))
        landed_counts.add(sum(landed))
    assert len(landed_counts) > 2  # some, not all or nothing: the write was torn


def test_another_device_can_take_the_rail_down() -> None:
    rail = PowerRail()
    fram_powered = [True]
    rail.sense("nvram", lambda: fram_powered[0])
    stopped: list[str] = []
    rail.when_cut(lambda: stopped.append("fram stops too"))
    disk = VolatileCacheMedium(MemoryMedium(SIZE), rail=rail)
    disk.pwrite(0, b"ok")
    fram_powered[0] = False
    with pytest.raises(MediumPowerLost):
        disk.pwrite(0, b"no")
    assert rail.cause == "nvram lost power" and stopped == ["fram stops too"]
    rail.restore()
    fram_powered[0] = True
    assert disk.pread(0, 2) == b"ok"


# -- errors on demand -------------------------------------------------------------------


def test_faults_match_operation_and_range_and_count() -> None:
    disk = FaultyMedium(MemoryMedium(SIZE, "disk"))
    fault = disk.inject("write", errno.EIO, offset=4 * SECTOR, length=SECTOR, skip=1, times=2)
    disk.pwrite(0, b"x" * SECTOR)  # outside the range
    disk.pwrite(4 * SECTOR, b"1")  # skipped once
    for _ in range(2):
        with pytest.raises(MediumError) as failed:
            disk.pwrite(3 * SECTOR, b"y" * 2 * SECTOR)  # overlaps the range
        assert failed.value.errno == errno.EIO and "injected" in str(failed.value)
    disk.pwrite(4 * SECTOR, b"2")  # exhausted
    assert (fault.seen, fault.hits, disk.errors_raised) == (3, 2, 2)
    assert disk.pread(4 * SECTOR, 1) == b"2"


def test_a_partial_failing_write_lands_its_first_half() -> None:
    disk = FaultyMedium(MemoryMedium(SIZE))
    disk.inject("write", partial=True, times=1)
    with pytest.raises(MediumError):
        disk.pwrite(0, b"h" * 4 * SECTOR)
    assert disk.pread(0, 4 * SECTOR) == b"h" * 2 * SECTOR + bytes(2 * SECTOR)


def test_full_and_vanished_media() -> None:
    disk = FaultyMedium(MemoryMedium(SIZE))
    disk.fill_up()
    with pytest.raises(MediumError) as full:
        disk.write_zeroes(0, SECTOR)
    assert full.value.errno == errno.ENOSPC
    disk.pread(0, 1)
    disk.flush()  # a full disk still reads and flushes
    disk.clear()
    disk.vanish()
    assert disk.gone
    for operation in (lambda: disk.pread(0, 1), disk.flush, lambda: disk.pwrite(0, b"x")):
        with pytest.raises(MediumError) as gone:
            operation()
        assert gone.value.errno == errno.ENODEV
    disk.reappear()
    disk.pwrite(0, b"x")


def test_unknown_operation_is_refused() -> None:
    with pytest.raises(ValueError):
        FaultyMedium(MemoryMedium(SIZE)).inject("erase")


def test_a_failed_flush_stays_failed_but_a_vanished_device_does_not_latch():
    from hal.media.sticky import MediumFailed, StickyFailureMedium

    inner = FaultyMedium(MemoryMedium(1 << 20, "disk"))
    disk = StickyFailureMedium(inner)
    inner.vanish()
    with pytest.raises(OSError) as gone:
        disk.flush()
    assert gone.value.errno == errno.ENODEV and disk.failure is None
    inner.reappear()
    disk.pwrite(0, b"x" * 512)
    inner.inject("flush", errno.EIO, times=1)
    with pytest.raises(MediumFailed):
        disk.flush()
    for later in (disk.flush, lambda: disk.pwrite(0, b"y"), lambda: disk.write_zeroes(0, 8)):
        with pytest.raises(MediumFailed, match="local medium disk: flush failed"):
            later()
    assert disk.pread(0, 1) == b"x"
