"""A write waiting for room in a full record gets it once the regions are mirrored.

Found by the torture harness (seed 1, cut 186: a host write waited for ever with
every region of the record clean). ``CostAwarePolicy.victims`` forgets the regions
it names; when the record then cannot fit the write anyway (RecordFull), those
regions stay in the record, unknown to the policy, and are never named again.
"""

from __future__ import annotations

import pytest

from firmware.record.layout import Geometry
from firmware.record.policy import POINTS, SequentialLru, make_policy
from firmware.record.record import Record, RecordFull
from firmware.record.store import NullRecordStore

REGION = 64 * 1024


def write(record: Record, region: int, length: int = 4096) -> None:
    seq = record.begin_write(region * REGION, length, 0.0)
    record.end_write(seq)


@pytest.mark.parametrize("point", [*POINTS, "sequential-lru"])
def test_room_comes_back_after_a_full_record_is_mirrored(point) -> None:
    geometry = Geometry(256 * REGION, REGION)
    policy = SequentialLru() if point == "sequential-lru" else make_policy(point)
    record = Record(geometry, NullRecordStore(geometry), capacity_regions=2, policy=policy)
    write(record, 100)
    write(record, 101)
    record.mirrored_upto(record.seq)
    write(record, 101)  # the record is full: region 100 is clean, 101 is not
    assert record.regions() == [100, 101] and record.evictable(100)
    # A write over two new regions needs two victims: one is not enough, it must wait.
    with pytest.raises(RecordFull):
        record.begin_write(10 * REGION, 2 * REGION, 0.0)
    # The mirror catches up: both regions are clean now, so the write fits.
    record.mirrored_upto(record.seq)
    assert all(record.evictable(r) for r in record.regions())
    seq = record.begin_write(10 * REGION, 2 * REGION, 0.0)
    record.end_write(seq)
    assert {10, 11} <= set(record.regions())
