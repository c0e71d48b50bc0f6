"""The record: write-ahead marking, counters, eviction rules, and the NVRAM layout."""

from __future__ import annotations

import random

import pytest

from firmware.record.layout import (
    BITMAP_OFFSET,
    Geometry,
    LayoutError,
    decode_pairs,
    encode_pairs,
    new_volume_uuid,
)
from firmware.record.policy import SequentialLru, SequentialLruConfig
from firmware.record.record import Record, RecordFull
from firmware.record.store import InlineDurability, NvramRecordStore
from hal.nvram.file_fram import FileFram

KIB = 1024
REGION = 64 * KIB


class CountingStore(InlineDurability):
    """A store double that records each commit, to assert on transactions."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[int], list[int]]] = []

    def commit(self, add, remove) -> int:
        self.commits.append((sorted(add), sorted(remove)))
        return 1

    def barrier(self) -> None:
        pass


def make_record(capacity: int = 1000, volume: int = 64 << 20, **policy_kw) -> Record:
    geometry = Geometry(volume, REGION, new_volume_uuid())
    policy = SequentialLru(SequentialLruConfig(**policy_kw))
    return Record(geometry, CountingStore(), capacity_regions=capacity, policy=policy)


def write(record: Record, offset: int, length: int, now: float = 0.0) -> int:
    ticket = record.begin_write(offset, length, now)
    record.end_write(ticket)
    return ticket.seq


def test_scripted_pattern_miss_is_one_transaction_hit_is_none(tmp_path) -> None:
    """Acceptance 5: counters on a scripted pattern over a real (file) FRAM."""
    nvram = FileFram(tmp_path / "nvram.bin", 262144)
    store = NvramRecordStore(nvram)
    geometry = Geometry(64 << 20, REGION, new_volume_uuid())
    store.format(geometry, ())
    record = Record(geometry, store, capacity_regions=100,
                    policy=SequentialLru(SequentialLruConfig(idle_evict_s=None)))
    script = [
        # (offset, length, expect_miss)
        (0, 4096, True),            # region 0: miss
        (4096, 4096, False),        # region 0 again: hit
        (10 * REGION, 512, True),   # random region 10: miss
        (10 * REGION + 512, 512, False),
        (0, 8192, False),
        (30 * REGION - 4096, 8192, True),  # straddles 29/30: one miss, one transaction
        (30 * REGION, 4096, False),        # 30 was added by that miss
    ]
    for offset, length, expect_miss in script:
        before = (record.counters.nvram_updates, nvram.stats.write_calls, record.counters.misses)
        write(record, offset, length)
        updates = record.counters.nvram_updates - before[0]
        assert updates == (1 if expect_miss else 0), (offset, length)
        assert record.counters.misses - before[2] == (1 if expect_miss else 0)
        if not expect_miss:
            assert nvram.stats.write_calls == before[1], "a hit touched NVRAM"
    assert record.counters.hits == 4 and record.counters.misses == 3
    # The record as read back names what the record holds in RAM.
    assert NvramRecordStore(nvram).load().regions == record.regions()


def test_regions_are_persisted_before_begin_write_returns(tmp_path) -> None:
    nvram = FileFram(tmp_path / "nvram.bin", 65536)
    store = NvramRecordStore(nvram)
    geometry = Geometry(16 << 20, REGION, new_volume_uuid())
    store.format(geometry, ())
    record = Record(geometry, store, capacity_regions=50)
    record.begin_write(5 * REGION + 100, 10, 0.0)
    # Nothing has reached the media yet, but the record on "FRAM" already names region 5.
    nvram.close()
    assert 5 in NvramRecordStore(FileFram(tmp_path / "nvram.bin", 65536)).load().regions


def test_sequential_stream_predicts_ahead() -> None:
    record = make_record()
    for i in range(4):
        write(record, i * 32 * KIB, 32 * KIB)
    misses = record.counters.misses
    # The stream is established: the next region was added ahead of it.
    assert record.contains(2) and record.counters.predicted_added > 0
    for i in range(4, 64):
        write(record, i * 32 * KIB, 32 * KIB)
    # 60 more writes (30 regions): the look-ahead doubles with the stream, so the
    # misses grow with the logarithm of its length.
    assert record.counters.misses - misses <= 5


def test_random_writes_predict_nothing() -> None:
    record = make_record()
    rng = random.Random(1)
    for _ in range(50):
        write(record, rng.randrange(0, 1000) * REGION, 4096)
    assert record.counters.predicted_added == 0


def test_dirty_region_is_never_evicted_write_waits() -> None:
    record = make_record(capacity=4)
    for r in range(4):
        write(record, r * REGION, 4096)
    with pytest.raises(RecordFull):
        record.begin_write(10 * REGION, 4096, 1.0)
    assert record.counters.waits == 1
    assert record.regions() == [0, 1, 2, 3]  # nothing changed
    record.mirrored_upto(2)  # writes 1 and 2 (regions 0 and 1) are on the second medium
    write(record, 10 * REGION, 4096, 2.0)
    assert record.contains(10) and not record.contains(0) and record.contains(2)


def test_in_flight_region_is_not_evicted() -> None:
    record = make_record(capacity=2)
    seq = record.begin_write(0, 4096, 0.0)  # still in flight
    write(record, REGION, 4096)
    record.mirrored_upto(record.seq)
    # Region 0's write has not ended: only region 1 may go.
    write(record, 5 * REGION, 4096)
    assert record.contains(0) and not record.contains(1)
    record.end_write(seq)


def test_idle_clean_regions_are_tidied_in_one_transaction() -> None:
    record = make_record(idle_evict_s=1.0)
    for r in range(5):
        write(record, r * REGION, 4096, now=0.0)
    write(record, 7 * REGION, 4096, now=5.0)
    record.mirrored_upto(5)  # all but the last write
    store = record.store
    before = len(store.commits)
    assert record.tidy(now=5.5) == 5
    assert len(store.commits) == before + 1
    assert record.regions() == [7]


def test_a_quiet_host_leaves_only_dirty_regions_after_quiet_evict_s() -> None:
    geometry = Geometry(64 << 20, REGION, new_volume_uuid())
    record = Record(geometry, CountingStore(), capacity_regions=1000, quiet_evict_s=5.0,
                    policy=SequentialLru(SequentialLruConfig(idle_evict_s=None)))
    for r in range(4):
        write(record, r * 10 * REGION, 4096, now=1.0)
    record.mirrored_upto(3)  # the fourth write is still on its way
    store = record.store
    before = len(store.commits)
    assert record.tidy(now=5.9) == 0  # 4.9 s without a write: nothing
    assert record.tidy(now=6.0) == 3  # 5 s: every clean region, one transaction
    assert len(store.commits) == before + 1
    assert record.regions() == [30]
    assert record.tidy(now=7.0) == 0  # the dirty one stays, and no update is spent
    record.mirrored_upto(4)
    assert record.tidy(now=7.5) == 1 and len(record) == 0
    write(record, 0, 4096, now=8.0)  # the host is back: the clock starts again
    record.mirrored_upto(5)
    assert record.tidy(now=12.9) == 0 and record.regions() == [0]


class ToldPolicy(SequentialLru):
    """Records what the record tells it: ("admitted" | "evicted", regions)."""

    def __init__(self) -> None:
        super().__init__(SequentialLruConfig(idle_evict_s=1.0))
        self.told: list[tuple[str, list[int]]] = []

    def on_admitted(self, regions) -> None:
        self.told.append(("admitted", sorted(regions)))

    def on_evicted(self, regions) -> None:
        self.told.append(("evicted", sorted(regions)))


def test_the_policy_is_told_what_entered_and_left_even_when_nothing_did() -> None:
    geometry = Geometry(64 << 20, REGION, new_volume_uuid())
    policy = ToldPolicy()
    record = Record(geometry, CountingStore(), capacity_regions=2, policy=policy)
    write(record, 0, 4096)
    write(record, REGION, 4096)
    assert policy.told == [("evicted", []), ("admitted", [0]),
                           ("evicted", []), ("admitted", [1])]
    policy.told.clear()
    with pytest.raises(RecordFull):  # both dirty: no room, the write waits
        record.begin_write(5 * REGION, 4096, 1.0)
    assert policy.told == [("evicted", [])]
    record.mirrored_upto(record.seq)
    policy.told.clear()
    write(record, 5 * REGION, 4096, 1.0)  # a miss that sheds region 0 to make room
    assert policy.told == [("evicted", [0]), ("admitted", [5])]
    policy.told.clear()
    record.mirrored_upto(record.seq)
    assert record.tidy(now=3.0) == 2  # what it names in the background
    assert record.evict_clean() == 0  # nothing left: nothing to tell
    assert policy.told == [("evicted", [1, 5])]
    write(record, 9 * REGION, 4096, 4.0)
    record.mirrored_upto(record.seq)
    policy.told.clear()
    assert record.evict_clean() == 1  # a rule of the record's own
    assert policy.told == [("evicted", [9])]


def test_catch_up_marks_regions_clean_individually() -> None:
    record = make_record()
    write(record, 0, 4096)
    write(record, REGION, 4096)
    assert record.dirty_regions() == [0, 1]
    record.mirrored_region(0, record.completed_seq())
    assert record.dirty_regions() == [1]


def test_completed_seq_waits_for_oldest_in_flight() -> None:
    record = make_record()
    first = record.begin_write(0, 10, 0.0)
    second = record.begin_write(REGION, 10, 0.0)
    record.end_write(second)
    assert record.completed_seq() == first.seq - 1
    record.end_write(first)
    assert record.completed_seq() == second.seq


# -- layout ------------------------------------------------------------------------


def test_dual_rail_union_on_disagreement() -> None:
    bitmap = bytes([0b1010_0001, 0, 0xFF])
    raw = bytearray(encode_pairs(bitmap))
    assert decode_pairs(raw) == (bytearray(bitmap), 0)
    raw[0] = 0  # the direct byte lost its bits; the complement still says they are set
    decoded, damaged = decode_pairs(raw)
    assert damaged == 1 and decoded[0] == 0b1010_0001


def test_region_size_must_fit_the_nvram(tmp_path) -> None:
    store = NvramRecordStore(FileFram(tmp_path / "n.bin", 8192))
    with pytest.raises(LayoutError, match="region size of at least"):
        store.format(Geometry(1 << 40, 4096, new_volume_uuid()), ())


def test_torn_header_update_keeps_previous_header(tmp_path) -> None:
    nvram = FileFram(tmp_path / "n.bin", 65536)
    store = NvramRecordStore(nvram)
    geometry = Geometry(16 << 20, REGION, new_volume_uuid())
    store.format(geometry, [3, 4])
    loaded = store.load()
    for cut in range(0, 64, 7):
        nvram.arm_power_cut(cut)
        try:
            NvramRecordStore(nvram).adopt(loaded)
        except OSError:
            pass
        nvram.power_on()
        again = NvramRecordStore(nvram).load()
        assert again.regions == [3, 4]
        assert again.header.geometry == geometry


def test_random_images_never_load_smaller_than_the_truth(tmp_path) -> None:
    nvram = FileFram(tmp_path / "n.bin", 8192)
    store = NvramRecordStore(nvram)
    geometry = Geometry(64 << 20, REGION, new_volume_uuid())
    truth = [1, 9, 200, 511]
    store.format(geometry, truth)
    image = bytearray(nvram.read(0, nvram.size))
    rng = random.Random(7)
    for _ in range(300):
        flipped = bytearray(image)
        bit = rng.randrange(BITMAP_OFFSET * 8, len(flipped) * 8)
        flipped[bit // 8] ^= 1 << (bit % 8)
        nvram.write(0, bytes(flipped))
        try:
            loaded = NvramRecordStore(nvram).load()
        except LayoutError:
            continue
        assert set(truth) <= set(loaded.regions)


def test_disowned_regions_leave_without_a_commit_unless_a_write_waits() -> None:
    # Active-active: a region handed to the peer is the peer's to mirror; it leaves this
    # record at once, with no NVRAM transaction, but not under a write of ours.
    record = make_record(capacity=8)
    write(record, 0, 4096)
    write(record, REGION, 4096)
    waiting = record.begin_write(2 * REGION, 4096, 1.0)
    store = record.store
    assert isinstance(store, CountingStore)
    commits = len(store.commits)
    assert record.disown([0, 2, 7]) == 1
    assert not record.contains(0) and record.contains(1) and record.contains(2)
    assert len(store.commits) == commits
    record.end_write(waiting)
