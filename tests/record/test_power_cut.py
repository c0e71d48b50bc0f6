"""Acceptance 6: a power cut at every byte of a record update never loses a region."""

from __future__ import annotations

import pytest

from firmware.record.layout import Geometry
from firmware.record.policy import SequentialLru, SequentialLruConfig
from firmware.record.record import Record
from firmware.record.store import NvramRecordStore
from hal.nvram.base import PowerLost
from hal.nvram.file_fram import FileFram

REGION = 64 * 1024
UUID = bytes(range(16))


def scenario(nvram: FileFram) -> tuple[Record, set[int]]:
    """A record at capacity: some regions dirty (unmirrored), some clean, a stream going."""
    store = NvramRecordStore(nvram)
    geometry = Geometry(256 << 20, REGION, UUID)
    store.format(geometry, ())
    record = Record(geometry, store, capacity_regions=24,
                    policy=SequentialLru(SequentialLruConfig(idle_evict_s=0.5)))
    for r in (3, 17, 40, 41, 900, 1500, 2047):  # scattered writes, soon mirrored
        s = record.begin_write(r * REGION, 4096, 0.0)
        record.end_write(s)
    record.mirrored_upto(record.seq)
    for i in range(12):  # a sequential stream, not mirrored yet
        off = 100 * REGION + i * 32768
        s = record.begin_write(off, 32768, 1.0)
        record.end_write(s)
    record.capacity = len(record)  # full: the next miss must evict in the same transaction
    dirty = set(record.dirty_regions())
    assert dirty and len(record) > len(dirty)
    return record, dirty


def transaction_size(tmp_path, action) -> int:
    nvram = FileFram(tmp_path / "probe.bin", 65536, sync=False)
    record, _ = scenario(nvram)
    before = nvram.stats.bytes_written
    action(record)
    size = nvram.stats.bytes_written - before
    nvram.close()
    return size


def miss_far_away(record: Record) -> None:
    # A miss at capacity: adds the region (and the stream's look-ahead when it
    # continues it) and evicts clean regions, all in one transaction.
    record.begin_write(3000 * REGION, 3 * REGION, 2.0)


def stream_continues(record: Record) -> None:
    # A large write continuing the stream: misses past the look-ahead, evicts to fit.
    record.begin_write(100 * REGION + 12 * 32768, 256 << 10, 2.0)


def tidy(record: Record) -> None:
    record.tidy(now=5.0)


@pytest.mark.parametrize("action", [miss_far_away, stream_continues, tidy])
def test_cut_at_every_byte_of_a_record_update(tmp_path, action) -> None:
    size = transaction_size(tmp_path, action)
    assert size > 4, "the action should write a real transaction"
    for cut in range(size + 1):
        path = tmp_path / f"cut{cut}.bin"
        nvram = FileFram(path, 65536, sync=False)
        record, dirty = scenario(nvram)
        nvram.arm_power_cut(cut)
        try:
            action(record)
        except PowerLost:
            pass
        nvram.close()
        # Power comes back: the firmware starts and reads the record.
        loaded = NvramRecordStore(FileFram(path, 65536, sync=False)).load()
        missing = dirty - set(loaded.regions)
        assert not missing, f"cut after {cut} bytes lost regions {sorted(missing)}"
        path.unlink()
