"""The cost-aware policy in the firmware's Record: what it sheds, when, and at what price."""

from __future__ import annotations

import random

import pytest

from firmware.record.layout import Geometry
from firmware.record.policy import (
    POINTS,
    CostAwareConfig,
    CostAwarePolicy,
    SequentialLru,
    make_policy,
)
from firmware.record.record import Record
from firmware.record.store import NullRecordStore

KIB = 1 << 10
MIB = 1 << 20
REGION = 64 * KIB


def make(hold_cost: float, capacity: int = 1 << 20, **kw) -> Record:
    geometry = Geometry(1 << 30, REGION)
    policy = CostAwarePolicy(CostAwareConfig(hold_cost=hold_cost, **kw))
    return Record(geometry, NullRecordStore(geometry), capacity_regions=capacity, policy=policy)


def write(record: Record, offset: int, length: int = 4 * KIB, mirrored: bool = True) -> None:
    seq = record.begin_write(offset, length, 0.0)
    record.end_write(offset, length, seq)
    if mirrored:
        record.mirrored_upto(seq)


def test_points_and_factory() -> None:
    assert set(POINTS) == {"latency-first", "recovery-first"}
    lat, rec = make_policy("latency-first"), make_policy("recovery-first")
    assert lat.config.hold_cost > rec.config.hold_cost
    lat.config.hold_cost = 1.0  # each policy has its own copy of the point's settings
    assert POINTS["latency-first"].hold_cost > 1.0
    with pytest.raises(ValueError, match="operating point"):
        make_policy("fastest")


def test_sequential_stream_costs_few_updates() -> None:
    record = make(hold_cost=float(1 << 30))
    for i in range(2048):  # 128 MiB in 64 KiB writes
        write(record, 512 * MIB + i * 64 * KIB, 64 * KIB)
    assert record.counters.nvram_updates <= 20


def test_a_rewritten_region_outlives_a_once_written_one() -> None:
    # hold_cost / region = 1024 writes for a rewritten region, 128 for a once-written one
    record = make(hold_cost=1024.0 * REGION, burst_writes=1 << 30)
    write(record, 0)
    write(record, 0)  # region 0: reused
    write(record, 10 * MIB)  # region 160: written once
    rng = random.Random(3)
    for _ in range(300):  # misses elsewhere shed what has expired, at no extra update
        write(record, rng.randrange(100, 200) * MIB)
    assert record.contains(0) and not record.contains(160)


def test_shedding_rides_on_a_miss_transaction() -> None:
    record = make(hold_cost=8.0 * REGION, burst_writes=1 << 30)
    for i in range(40):
        write(record, i * MIB)
    # every write was a miss, and nothing else cost an update
    assert record.counters.nvram_updates == record.counters.misses == 40
    assert record.counters.evictions > 0
    assert len(record) < 40


def test_dirty_regions_stay_until_mirrored() -> None:
    record = make(hold_cost=2.0 * REGION, burst_writes=1 << 30)
    for i in range(50):
        write(record, i * MIB, mirrored=False)
    assert len(record) == 50  # all expired, none mirrored: none may go
    record.mirrored_upto(record.seq)
    for _ in range(20):
        write(record, 900 * MIB)  # one miss, then hits
    write(record, 901 * MIB)  # the next miss sheds them
    assert len(record) <= 3


def test_idle_sheds_when_waiting_for_a_miss_costs_more_than_an_update() -> None:
    record = make(hold_cost=64.0 * REGION, burst_writes=1 << 30, once_written_share=1.0)
    for i in range(50):
        write(record, i * MIB)  # 50 regions, each due 64 writes after its write
    for _ in range(200):
        write(record, 0)  # hits: no miss to ride on
    assert len(record) == 50
    before = record.counters.nvram_updates
    assert record.tidy(0.0) > 0
    assert record.counters.nvram_updates == before + 1
    assert len(record) <= 2


def test_record_keeps_the_invariant_whatever_the_policy_names() -> None:
    class Greedy(SequentialLru):
        """Names every member, dirty or not, as a victim."""

        def victims(self, view, need, protect):
            return [r for r, _ in view.lru()]

    geometry = Geometry(1 << 30, REGION)
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=100, policy=Greedy())
    write(record, 0, mirrored=False)
    write(record, 5 * MIB)  # a miss: the greedy policy names region 0, which is dirty
    assert record.contains(0)
    write(record, 9 * MIB)
    assert not record.contains(5 * MIB // REGION)  # clean: shed with this miss
