"""Fault injection on the media, at the volume: what the host sees, what the mirror does.

- a local write error reaches the host as EIO, and nothing is acknowledged that is
  not stored;
- a second-medium failure (EIO, full, vanished) degrades the mirror: the record
  keeps the regions, the status says so, hosts keep writing (past the record's
  capacity), and the mirror heals when the medium comes back.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from firmware.mirror.mirror import MirrorState
from firmware.volume.target import TargetError
from tools.sim.faulty import FaultyMedium
from tools.sim.media import MemoryMedium

from .conftest import REGION, SIZE, make_rig, pattern, wait_until


def run(coro):
    return asyncio.run(coro)


# -- the local medium -------------------------------------------------------------------


@pytest.mark.parametrize("partial", [False, True], ids=["nothing-landed", "half-landed"])
def test_local_write_error_fails_only_that_write(tmp_path, partial) -> None:
    local = FaultyMedium(MemoryMedium(SIZE, "local"))
    rig = make_rig(tmp_path, local=local)

    async def main() -> None:
        rig.mirror.start()
        await rig.volume.write(0, pattern(1, 2 * REGION))
        fault = local.inject("write", errno.EIO, offset=3 * REGION, length=REGION,
                             partial=partial)
        with pytest.raises(TargetError) as failed:
            await rig.volume.write(3 * REGION, pattern(2, 16384))
        assert failed.value.errno == errno.EIO
        assert fault.hits == 1 and rig.volume.local_errors == 1
        # The failed write's region stays named until the mirror has its content.
        assert 3 in rig.record_in_nvram()
        # Other writes go on; what was acknowledged reads back.
        await rig.volume.write(5 * REGION, pattern(3))
        assert await rig.volume.read(0, 2 * REGION) == pattern(1, 2 * REGION)
        assert await rig.volume.read(5 * REGION, 4096) == pattern(3)
        # Whatever part of the failed write landed, the mirror copies that state.
        local.clear()
        await rig.mirror.drained()
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    run(main())


def test_local_read_error_is_eio_and_passes(tmp_path) -> None:
    local = FaultyMedium(MemoryMedium(SIZE, "local"))
    rig = make_rig(tmp_path, local=local)

    async def main() -> None:
        rig.mirror.start()
        await rig.volume.write(0, pattern(7))
        local.inject("read", errno.EIO, offset=0, length=4096, times=1)
        with pytest.raises(TargetError) as failed:
            await rig.volume.read(0, 4096)
        assert failed.value.errno == errno.EIO
        assert await rig.volume.read(0, 4096) == pattern(7)
        await rig.mirror.close()

    run(main())


def test_local_flush_error_fails_flush_and_fua(tmp_path) -> None:
    local = FaultyMedium(MemoryMedium(SIZE, "local"))
    rig = make_rig(tmp_path, local=local)

    async def main() -> None:
        rig.mirror.start()
        await rig.volume.write(0, pattern(1))
        local.inject("flush", errno.EIO)
        with pytest.raises(TargetError) as flush_failed:
            await rig.volume.flush()
        assert flush_failed.value.errno == errno.EIO
        with pytest.raises(TargetError) as fua_failed:
            await rig.volume.write(REGION, pattern(2), fua=True)
        assert fua_failed.value.errno == errno.EIO
        local.clear()
        await rig.volume.flush()
        await rig.mirror.close()

    run(main())


def test_local_medium_that_vanishes_fails_every_request_until_it_returns(tmp_path) -> None:
    local = FaultyMedium(MemoryMedium(SIZE, "local"))
    rig = make_rig(tmp_path, local=local)

    async def main() -> None:
        rig.mirror.start()
        await rig.volume.write(0, pattern(1))
        await rig.mirror.drained()
        local.vanish()
        for request in (rig.volume.write(REGION, pattern(2)), rig.volume.read(0, 4096),
                        rig.volume.flush(), rig.volume.trim(0, 4096)):
            with pytest.raises(TargetError) as failed:
                await request
            assert failed.value.errno == errno.EIO
        local.reappear()
        await rig.volume.write(REGION, pattern(3))
        assert await rig.volume.read(0, 4096) == pattern(1)
        await rig.mirror.drained()
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    run(main())


# -- the second medium ------------------------------------------------------------------


def break_second(second: FaultyMedium, how: str) -> None:
    if how == "eio":
        second.inject(("write", "zeroes"), errno.EIO)
    elif how == "full":
        second.fill_up()
    elif how == "flush":
        second.inject("flush", errno.EIO)
    else:
        second.vanish()


def mend_second(second: FaultyMedium) -> None:
    second.clear()
    second.reappear()


@pytest.mark.parametrize("how", ["eio", "full", "flush", "vanished"])
def test_second_medium_failure_degrades_then_heals(tmp_path, how) -> None:
    second = FaultyMedium(MemoryMedium(SIZE, "second"))
    capacity = 8
    rig = make_rig(tmp_path, second=second, capacity=capacity)
    expected_error = {"eio": "Input/output error", "full": "No space left on device",
                      "flush": "Input/output error", "vanished": "No such device"}[how]

    async def main() -> None:
        rig.mirror.start()
        await rig.volume.write(0, pattern(1))
        await rig.mirror.drained()
        break_second(second, how)
        # Hosts keep writing -- to more regions than the record may hold when healthy.
        written = list(range(2, 2 + 3 * capacity))
        for region in written:
            await rig.volume.write(region * REGION, pattern(region))
        await wait_until(lambda: rig.mirror.state is MirrorState.DEGRADED, "degraded")
        status = rig.mirror.status()
        assert status["mirror_state"] == "degraded"
        assert expected_error in str(status["mirror_error"])
        assert second.errors_raised > 0
        # The record names every region the second medium may lack, in NVRAM too.
        assert set(written) <= set(rig.record.dirty_regions())
        assert set(written) <= rig.record_in_nvram()
        assert len(rig.record) > capacity
        for region in written:
            assert await rig.volume.read(region * REGION, 4096) == pattern(region)
        # The medium comes back: the mirror catches up and returns to ordered mode.
        mend_second(second)
        await rig.mirror.drained()
        status = rig.mirror.status()
        assert status["mirror_state"] == "ordered" and status["mirror_error"] is None
        assert rig.differing_regions() == set()
        assert rig.record.enforce_capacity
        rig.record.evict_clean()
        assert rig.record_in_nvram() == set()
        await rig.mirror.close()

    run(main())


def test_second_medium_read_errors_do_not_matter(tmp_path) -> None:
    # The mirror only writes the second medium: a failing read path there is harmless.
    second = FaultyMedium(MemoryMedium(SIZE, "second"))
    second.inject("read", errno.EIO)
    rig = make_rig(tmp_path, second=second)

    async def main() -> None:
        rig.mirror.start()
        for region in range(6):
            await rig.volume.write(region * REGION, pattern(region))
        await rig.mirror.drained()
        assert rig.mirror.status()["mirror_error"] is None
        second.clear()
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    run(main())


def test_writers_waiting_for_room_go_on_when_the_second_medium_fails(tmp_path) -> None:
    # The record is full of unmirrored regions, so a write to a new region waits for
    # the mirror to make room. If the second medium fails then, the record stops
    # enforcing its capacity -- and the waiting write must be let through.
    second = FaultyMedium(MemoryMedium(SIZE, "second"))
    rig = make_rig(tmp_path, second=second, capacity=4)

    async def main() -> None:
        rig.mirror.start()
        rig.mirror.pause()
        for region in (0, 2, 4, 6):
            await rig.volume.write(region * REGION, pattern(region))
        waiting = asyncio.ensure_future(rig.volume.write(40 * REGION, pattern(40)))
        await wait_until(lambda: rig.record.counters.waits > 0, "the write waits for room")
        assert not waiting.done()
        second.vanish()
        rig.mirror.resume()
        await wait_until(lambda: rig.mirror.state is MirrorState.DEGRADED, "degraded")
        await wait_until(waiting.done, "the waiting write is let through", limit_s=5)
        waiting.result()
        assert {0, 2, 4, 6, 40} <= rig.record_in_nvram()
        second.reappear()
        await rig.mirror.drained()
        assert rig.differing_regions() == set()
        await rig.mirror.close()

    run(main())
