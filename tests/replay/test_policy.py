"""The cost-aware policy in the firmware's Record: what it sheds, when, and at what price."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from firmware.record.layout import Geometry
from firmware.record.policy import (
    POINTS,
    CostAwareConfig,
    CostAwarePolicy,
    SequentialLru,
    make_policy,
)
from firmware.record.record import Record, RecordFull
from firmware.record.store import NullRecordStore

KIB = 1 << 10
MIB = 1 << 20
REGION = 64 * KIB


def make(hold_cost: float, capacity: int = 1 << 20, **kw) -> Record:
    geometry = Geometry(1 << 30, REGION)
    policy = CostAwarePolicy(CostAwareConfig(hold_cost=hold_cost, **kw))
    return Record(geometry, NullRecordStore(geometry), capacity_regions=capacity, policy=policy)


def write(record: Record, offset: int, length: int = 4 * KIB, mirrored: bool = True) -> None:
    ticket = record.begin_write(offset, length, 0.0)
    record.end_write(ticket)
    if mirrored:
        record.mirrored_upto(ticket.seq)


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
    record = make(hold_cost=1024.0 * REGION, max_admit_bytes=0)
    write(record, 0)
    write(record, 0)  # region 0: reused
    write(record, 10 * MIB)  # region 160: written once
    rng = random.Random(3)
    for _ in range(300):  # misses elsewhere shed what has expired, at no extra update
        write(record, rng.randrange(100, 200) * MIB)
    assert record.contains(0) and not record.contains(160)


def test_shedding_rides_on_a_miss_transaction() -> None:
    record = make(hold_cost=8.0 * REGION, max_admit_bytes=0)
    for i in range(40):
        write(record, i * MIB)
    # every write was a miss, and nothing else cost an update
    assert record.counters.nvram_updates == record.counters.misses == 40
    assert record.counters.evictions > 0
    assert len(record) < 40


def test_dirty_regions_stay_until_mirrored() -> None:
    record = make(hold_cost=2.0 * REGION, max_admit_bytes=0)
    for i in range(50):
        write(record, i * MIB, mirrored=False)
    assert len(record) == 50  # all expired, none mirrored: none may go
    record.mirrored_upto(record.seq)
    for _ in range(20):
        write(record, 900 * MIB)  # one miss, then hits
    write(record, 901 * MIB)  # the next miss sheds them
    assert len(record) <= 3


def test_a_tidy_sheds_due_regions_only_after_waiting_eight_updates_worth_for_a_miss() -> None:
    # 50 regions of 64 KiB, each due 64 writes after its write: waiting costs 50 regions
    # x writes; a tidy may spend an update once that reaches 8 x 64 region-writes.
    record = make(hold_cost=64.0 * REGION, max_admit_bytes=0, once_written_share=1.0)
    for i in range(50):
        write(record, i * MIB)  # 50 misses
    for _ in range(70):
        write(record, 0)  # hits: past every region's time, no miss to shed them with
    assert record.tidy(0.0) == 0  # the rent is counted from here
    for _ in range(10):
        write(record, 0)
    assert record.tidy(0.5) == 0  # 50 x 10 region-writes paid: less than 8 updates' worth
    before = record.counters.nvram_updates
    write(record, 0)
    assert record.tidy(1.0) > 0  # 50 x 11 >= 512: one update sheds them
    assert record.counters.nvram_updates == before + 1
    assert len(record) <= 2


def test_once_a_miss_has_shed_the_due_regions_a_tidy_spends_nothing() -> None:
    record = make(hold_cost=64.0 * REGION, max_admit_bytes=0, once_written_share=1.0)
    for i in range(50):
        write(record, i * MIB)
    for _ in range(70):
        write(record, 0)
    record.tidy(0.0)
    for _ in range(10):
        write(record, 0)
    write(record, 700 * MIB)  # a miss: it sheds the due regions for free
    assert len(record) <= 3
    for _ in range(11):
        write(record, 0)
    before = record.counters.nvram_updates
    assert record.tidy(1.0) == 0  # nothing left due: no update spent
    assert record.counters.nvram_updates == before


def _scattered_then_clustered(min_guess_yield: float) -> tuple[int, int]:
    """Guesses added by 600 misses scattered over 64 GiB, and by the last 200 of 1000
    misses that come after, each followed by a write 2 MiB further (which a guess of
    the miss's area catches)."""
    geometry = Geometry(64 << 30, 1 * MIB)
    policy = CostAwarePolicy(CostAwareConfig(hold_cost=float(1 << 30), written_hold_factor=64.0,
                                             background_shed=False,
                                             min_guess_yield=min_guess_yield))
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=1 << 20,
                    policy=policy)
    rng = random.Random(7)
    for _ in range(600):
        write(record, rng.randrange(64 << 10) * MIB)
    scattered = record.counters.predicted_added
    for i in range(1000):
        if i == 800:
            before_last = record.counters.predicted_added
        area = rng.randrange(16 << 10) * 4 * MIB
        write(record, area)
        write(record, area + 2 * MIB)
    return scattered, record.counters.predicted_added - before_last


def test_an_area_level_that_catches_nothing_stops_guessing_and_one_that_does_resumes() -> None:
    scattered, clustered = _scattered_then_clustered(min_guess_yield=0.25)
    always_scattered, always_clustered = _scattered_then_clustered(min_guess_yield=0.0)
    # 64 MiB areas of 64 regions at every scattered miss, ungated: 600 x 63 guesses.
    assert always_scattered > 30_000
    # Once the levels are judged (16 admissions), gated ones add nothing.
    assert scattered < always_scattered / 20
    # Writes would land on the guesses again: the shadow admissions see it and the
    # levels reopen, early enough that the last 200 misses guess as much as ungated.
    assert clustered > 0.95 * always_clustered


def _follower_guesses(min_guess_yield: float, same_order: bool) -> int:
    """Guesses added while 400 scattered regions are written once, then rewritten five
    times over, long after they left the record: in the same order (what followed a
    region last time follows it again) or shuffled each time (it never does)."""
    record = make(hold_cost=64.0 * REGION, max_admit_bytes=0, min_guess_yield=min_guess_yield)
    rng = random.Random(3)
    regions = rng.sample(range((1 << 30) // REGION), 400)
    for _ in range(6):
        for region in regions if same_order else rng.sample(regions, len(regions)):
            write(record, region * REGION)
    return record.counters.predicted_added


def test_followers_that_never_follow_stop_being_guessed_and_those_that_do_stay() -> None:
    shuffled, always_shuffled = _follower_guesses(0.25, False), _follower_guesses(0.0, False)
    repeated, always_repeated = _follower_guesses(0.25, True), _follower_guesses(0.0, True)
    assert always_shuffled > 5000  # four guesses a miss, ungated
    assert shuffled < always_shuffled / 4  # one admission in 16, once judged
    assert repeated > 0.9 * always_repeated


def test_over_capacity_a_region_the_mirror_copied_makes_room_while_the_rest_wait() -> None:
    # Eight regions written, none mirrored in order (the mirror is catching up by
    # region copies): a ninth cannot come in until one of them has been copied.
    record = make(hold_cost=4 * 64.0 * REGION, capacity=8, max_admit_bytes=0, follow_writes=0)
    for i in range(8):
        write(record, i * MIB, mirrored=False)
    with pytest.raises(RecordFull):
        record.begin_write(100 * MIB, 4096, 0.0)
    for copied, newcomer in ((5, 100), (2, 101), (7, 102)):
        record.mirrored_region(copied * 16, record.seq)
        write(record, newcomer * MIB, mirrored=False)
        assert copied * 16 not in record.regions() and newcomer * 16 in record.regions()
    with pytest.raises(RecordFull):
        record.begin_write(103 * MIB, 4096, 0.0)
    record.mirrored_upto(record.seq)  # the mirror is back in order: everything may go
    write(record, 103 * MIB)
    assert len(record) == 8 and 103 * 16 in record.regions()


@pytest.mark.parametrize("point", sorted(POINTS))
def test_guesses_in_a_small_full_record_leave_in_their_time(point: str) -> None:
    # Short streams of 4 KiB writes (look-ahead guesses) and scattered writes into a
    # record of 16 regions, every write mirrored at once; then 300 scattered writes,
    # each a miss that must make room. The guesses never written must all be gone by
    # then: a miss once forgot its own new guesses while looking for room, and they
    # stayed in the record for good (the torture test's appliance stopped once the
    # whole record was such). No area guesses (they rightly stay while their area is
    # written) nor followers (they may name earlier members again).
    geometry = Geometry(1 << 30, REGION)
    policy = CostAwarePolicy(replace(POINTS[point], max_admit_bytes=0, follow_writes=0))
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=16, policy=policy)
    rng = random.Random(0)
    for _ in range(400):
        start = rng.randrange((1 << 30) // 4096 - 64) * 4096
        for i in range(rng.choice((1, 4, 16))):
            write(record, start + i * 4096)
    guesses = {r for r in record.regions() if record.last_write_seq(r) == 0}
    assert guesses
    for _ in range(300):
        write(record, rng.randrange((1 << 30) // 4096) * 4096)
    assert not guesses & set(record.regions())


def test_a_full_record_makes_room_from_the_earliest_expiries_first() -> None:
    # Written once: a region stays 4 x 64 / 8 = 32 writes; rewritten: 256.
    record = make(hold_cost=4 * 64.0 * REGION, capacity=4, max_admit_bytes=0)
    seq = record.begin_write(1 * MIB, 4096, 0.0)  # region 16's write stays in flight
    for i in (2, 3):
        write(record, i * MIB)
    write(record, 0)
    write(record, 0)
    write(record, 9 * MIB)  # full, nothing due: 16 first by expiry, but in flight; then 32
    assert record.regions() == [0, 16, 48, 144]
    record.end_write(seq)
    record.mirrored_upto(record.seq)
    write(record, 10 * MIB)  # now 16 may go, and its expiry is the earliest
    assert record.regions() == [0, 48, 144, 160]


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


def _areas(**kw) -> Record:
    # Areas of 4 MiB (kept 16 writes after their latest write), 1 MiB (64) and 256 KiB
    # (256) around a random miss.
    return make(hold_cost=64.0 * MIB, max_admit_bytes=4 * MIB, **kw)


def test_a_random_miss_guesses_its_area_and_a_first_write_there_hits() -> None:
    record = _areas()
    write(record, 100 * MIB)
    assert record.counters.misses == 1
    assert all(record.contains(r) for r in range(100 * MIB // REGION, 104 * MIB // REGION))
    write(record, 103 * MIB + 12 * KIB)  # never written before, guessed: no update
    assert record.counters.misses == record.counters.nvram_updates == 1


def test_guesses_thin_out_from_the_edges_of_a_quiet_area() -> None:
    record = _areas(once_written_share=1.0)

    def quiet(writes: int) -> None:
        for _ in range(writes):
            write(record, 500 * MIB)  # hits elsewhere: the area around 100 MiB is quiet

    def region(offset: int) -> int:
        return offset // REGION

    write(record, 100 * MIB)
    write(record, 500 * MIB)
    quiet(30)  # past the 4 MiB area's 16 writes, within the 1 MiB area's 64
    write(record, 800 * MIB)  # a miss: what is due leaves with its transaction
    assert not record.contains(region(103 * MIB))
    assert record.contains(region(100 * MIB + 512 * KIB))
    quiet(70)  # past the 1 MiB area's 64 writes, within the 256 KiB area's 256
    write(record, 900 * MIB)
    assert not record.contains(region(100 * MIB + 512 * KIB))
    assert record.contains(region(100 * MIB + 128 * KIB))
    quiet(200)
    write(record, 950 * MIB)
    assert not record.contains(region(100 * MIB + 128 * KIB))
    # The region the host wrote is not a guess: it stays for its own time (1024 writes).
    assert record.contains(region(100 * MIB))
    assert record.counters.nvram_updates == record.counters.misses == 5


def test_latency_first_spends_no_update_on_shedding() -> None:
    geometry = Geometry(1 << 30, REGION)
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=1 << 20,
                    policy=make_policy("latency-first"))
    write(record, 100 * MIB)
    for _ in range(5000):
        write(record, 100 * MIB)  # hits: the guessed area goes quiet around them
    assert record.tidy(0.0) == 0
    assert record.counters.nvram_updates == 1


def test_a_miss_guesses_what_followed_that_region_last_time() -> None:
    # hold_cost / region = 1024 writes; a once-written region stays 128 writes.
    record = make(hold_cost=1024.0 * REGION, max_admit_bytes=0)
    scattered = [7 * MIB, 300 * MIB, 42 * MIB, 900 * MIB, 123 * MIB]  # a checkpoint, say

    def checkpoint() -> None:
        for offset in scattered:
            write(record, offset)

    checkpoint()
    assert record.counters.misses == len(scattered)
    for _ in range(2000):
        write(record, 600 * MIB)  # long enough for every checkpoint region to be shed
    write(record, 700 * MIB)  # a miss: what is due leaves with it
    assert not any(record.contains(offset // REGION) for offset in scattered)
    misses = record.counters.misses
    checkpoint()  # the same sequence again: its first write misses, and guesses the rest
    assert record.counters.misses == misses + 1


def test_followers_are_guesses_that_expire_unwritten() -> None:
    record = make(hold_cost=1024.0 * REGION, max_admit_bytes=0)
    write(record, 7 * MIB)
    write(record, 300 * MIB)
    for _ in range(2000):
        write(record, 600 * MIB)
    write(record, 700 * MIB)
    write(record, 7 * MIB)  # a miss: 300 MiB followed it last time and is guessed
    assert record.contains(300 * MIB // REGION)
    # One region guessed: kept hold_cost / its bytes = 1024 writes, then shed with a miss.
    for _ in range(1100):
        write(record, 600 * MIB)
    write(record, 800 * MIB)
    assert not record.contains(300 * MIB // REGION)


def test_history_can_be_turned_off() -> None:
    record = make(hold_cost=1024.0 * REGION, max_admit_bytes=0, history_writes=0)
    write(record, 7 * MIB)
    write(record, 300 * MIB)
    for _ in range(2000):
        write(record, 600 * MIB)
    write(record, 700 * MIB)
    write(record, 7 * MIB)
    assert not record.contains(300 * MIB // REGION)


def test_a_region_due_while_unmirrored_leaves_once_the_mirror_passes_it() -> None:
    # A once-written region is due 8 writes after its write; here the mirror lags by
    # hundreds of writes, so every region comes due while still dirty.
    record = make(hold_cost=64.0 * REGION, max_admit_bytes=0, history_writes=0)
    for i in range(500):
        write(record, i * MIB, mirrored=False)  # 1 MiB apart: no stream
    assert len(record) == 500  # dirty: nothing may leave
    record.mirrored_upto(record.seq)  # the backlog drains at once
    write(record, 900 * MIB)  # the next miss sheds all that is due, in its transaction
    assert len(record) <= 10
    assert record.counters.nvram_updates == record.counters.misses == 501
