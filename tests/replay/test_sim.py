"""The replay's link model and the baselines' emulations, on scripted traces."""

from __future__ import annotations

from firmware.record.layout import Geometry
from firmware.record.policy import SequentialLru, SequentialLruConfig
from tools.replay.baselines import DmLog, DrbdActivityLog, LowerBound, MdBitmap
from tools.replay.sim import MIB, TandemModel, TraceWrites, replay, smallest_region

KIB = 1 << 10


def trace_of(*writes: tuple[float, int, int]) -> TraceWrites:
    trace = TraceWrites("t")
    for time, offset, length in writes:
        trace.append(time, offset, length)
    return trace


def test_lower_bound_counts_undrained_blocks_at_each_write() -> None:
    # 1 Mbit/s: a 64 KiB write takes 0.524 s to drain.
    trace = trace_of((0.0, 0, 64 * KIB), (0.1, 1 * MIB, 4 * KIB), (10.0, 2 * MIB, 4 * KIB))
    result = replay(trace, LowerBound(), link_mbps=1)
    # instants: {16 blocks}, {16 + 1}, {1} (the first two drained long before t=10)
    assert result.R_mean_MiB * MIB == (16 + 17 + 1) * 4 * KIB / 3
    assert result.record_updates == 3 and result.stalls == 0


def test_drbd_pays_once_per_new_extent_and_stalls_when_all_are_dirty() -> None:
    trace = trace_of(*[(0.0, i * 4 * MIB, 4 * KIB) for i in range(3)],
                     (0.0, 0, 4 * KIB))  # a hit
    result = replay(trace, DrbdActivityLog(slots=8), link_mbps=100)
    assert result.record_updates == 3 and result.R_mean_MiB > 0
    # Two slots, nothing drained yet: the third extent waits for the link to drain the
    # first, which it then replaces; the fourth write wants extent 0 back and waits too.
    full = replay(trace, DrbdActivityLog(slots=2), link_mbps=100)
    assert full.stalls == 2 and full.record_updates == 4


def test_dm_log_clears_with_the_next_write_md_after_ten_seconds() -> None:
    trace = trace_of((0.0, 0, 4 * KIB), (5.0, 0, 4 * KIB), (30.0, 128 * MIB, 4 * KIB))
    dm = replay(trace, DmLog(), link_mbps=100)
    # write 1 marks; write 2 re-marks region 0 (cleared in between, clear not flushed:
    # still marked on disk, so no mark needed, but the pending clear is dropped); write 3
    # marks a new region and flushes the clear of region 0.
    assert dm.record_updates == 2
    md = replay(trace, MdBitmap(), link_mbps=100)
    # chunk 0 set once, cleared by the daemon (one update) before chunk 2 is set
    assert md.record_updates == 3
    assert md.R_mean_MiB == 64  # one chunk named at each write instant


def test_tandem_model_drives_the_record_and_counts_its_transactions() -> None:
    geometry = Geometry(64 * MIB, 64 * KIB)
    model = TandemModel("t", geometry, SequentialLru(SequentialLruConfig(idle_evict_s=None)),
                        capacity_regions=2, tidy_s=None)
    trace = trace_of((0.0, 0, 4 * KIB), (0.0, 1 * MIB, 4 * KIB), (0.0, 2 * MIB, 4 * KIB))
    result = replay(trace, model, link_mbps=100)
    assert result.record_updates == model.record.counters.nvram_updates == 3
    assert result.stalls == 1  # capacity 2: the third waits for the first to drain
    assert len(model.record) == 2


def test_the_replayed_record_empties_when_the_host_goes_quiet_as_the_appliance_does() -> None:
    geometry = Geometry(64 * MIB, 64 * KIB)
    first = [(0.0, i * MIB, 4 * KIB) for i in range(8)]

    def replayed(pause_s: float, **quiet: float | None) -> TandemModel:
        model = TandemModel("t", geometry, SequentialLru(SequentialLruConfig(idle_evict_s=None)),
                            capacity_regions=100, **quiet)
        replay(trace_of(*first, (pause_s, 32 * MIB, 4 * KIB)), model, link_mbps=100)
        return model

    stopped = replayed(40.0)  # past the appliance's 30 s: the eight went during the pause
    assert stopped.record.regions() == [512]
    assert stopped.record.counters.nvram_updates == 8 + 1 + 1  # misses, one tidy, one miss
    assert len(replayed(20.0).record) == 9  # a pause, not a stop
    assert len(replayed(40.0, quiet_evict_s=None).record) == 9


def test_smallest_region_fits_the_nvram() -> None:
    assert smallest_region(100 * MIB, 262144) == 4096
    region = smallest_region(32 << 30, 262144)
    assert Geometry(32 << 30, region).nvram_bytes() <= 262144
    assert Geometry(32 << 30, region // 2).nvram_bytes() > 262144
