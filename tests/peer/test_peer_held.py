"""The pair's FRAM: a power cut at every byte of a change never loses an acknowledged
entry and never invents one; the superblock is old or new, never neither.

Run against hal/nvram/file_fram.FileFram, whose ``arm_power_cut(n)`` stores the first n
bytes of the writes that follow and then fails, as a real cut would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware.peer.frames import KIND_PREDICTED, KIND_RESYNC, KIND_WRITE, PRIMARY, RECORD_HOLDER
from firmware.peer.held import (
    HELD,
    INTENT,
    Entry,
    PairFram,
    PairLayoutError,
    PairState,
    StateChange,
    TableChange,
    TableFull,
    required_bytes,
)
from hal.nvram.base import PowerLost
from hal.nvram.file_fram import FileFram

CAPACITY = 40
SIZE = required_bytes(CAPACITY) + 100
BASE = 100  # the pair's window need not start at 0
STATE = PairState("b", "a", RECORD_HOLDER)

# What the holder has acknowledged before the change under test.
ACKED = {r: Entry(r, 100 + r, KIND_WRITE) for r in (1, 2, 3, 10, 11, 12, 30)}
# A MARK batch as the core persists it: new regions, higher gens of held ones (a region
# written again after its clear raced), a lower gen (a late copy: no change), and the
# removals of a CLEAR in the same transaction.
BATCH = TableChange(HELD, add=(
    Entry(4, 500, KIND_WRITE), Entry(5, 500, KIND_PREDICTED), Entry(6, 500, KIND_PREDICTED),
    Entry(20, 500, KIND_RESYNC), Entry(2, 500, KIND_WRITE), Entry(11, 500, KIND_WRITE),
    Entry(3, 50, KIND_WRITE)),
    remove=(10, 12))


def open_fram(path: Path) -> FileFram:
    # "process": writes reach the file at once and barriers cost no fdatasync; a power
    # cut here is the injected one, not the host's.
    return FileFram(path, SIZE, sync="process")


def scenario(path: Path) -> tuple[FileFram, PairFram]:
    nvram = open_fram(path)
    pair = PairFram(nvram, base=BASE)
    pair.format(STATE, CAPACITY)
    pair.apply(TableChange(HELD, tuple(ACKED.values())))
    pair.apply(TableChange(INTENT, (Entry(7, 1, KIND_WRITE),)))
    pair.apply(TableChange(HELD, (), (30,)))  # cleared: its slot is free again
    return nvram, pair


def bytes_written(tmp_path: Path, change) -> int:
    nvram, pair = scenario(tmp_path / "probe.bin")
    before = nvram.stats.bytes_written
    pair.apply(change)
    written = nvram.stats.bytes_written - before
    nvram.close()
    return written


def cut_and_reload(tmp_path: Path, change, cut: int):
    path = tmp_path / "cut.bin"  # one file, formatted again each time: no unlinks
    nvram, pair = scenario(path)
    nvram.arm_power_cut(cut)
    try:
        pair.apply(change)
        completed = True
    except PowerLost:
        completed = False
    nvram.close()
    return reload(path), completed


def reload(path: Path):
    nvram = open_fram(path)
    try:
        return PairFram(nvram, base=BASE).load()
    finally:
        nvram.close()


def test_a_cut_at_every_byte_of_a_mark_batch_loses_nothing_acknowledged(tmp_path) -> None:
    size = bytes_written(tmp_path, BATCH)
    assert size > 100, "the batch should write several slots"
    before = {r: e for r, e in ACKED.items() if r != 30}
    allowed = {(e.region, e.gen, e.kind) for e in (*before.values(), *BATCH.add)}
    for cut in range(size + 1):
        loaded, completed = cut_and_reload(tmp_path, BATCH, cut)
        assert loaded.damaged == {HELD: 0, INTENT: 0}, cut
        for r, e in before.items():
            if r in BATCH.remove:
                continue  # being cleared: either way is right
            assert r in loaded.held and loaded.held[r].gen >= e.gen, (cut, r)
        invented = {(e.region, e.gen, e.kind) for e in loaded.held.values()} - allowed
        assert not invented, (cut, invented)
        assert set(loaded.intent) == {7}
        if completed:
            assert {r: e.gen for r, e in loaded.held.items()} == {
                1: 101, 2: 500, 3: 103, 4: 500, 5: 500, 6: 500, 11: 500, 20: 500}


def test_a_cut_at_every_byte_of_a_superblock_change_leaves_old_or_new(tmp_path) -> None:
    bumped = StateChange(PairState("b", "a", PRIMARY, epoch=2, epoch_creator="b",
                                   parent=(1, ""), boot=7, sole=True))
    size = bytes_written(tmp_path, bumped)
    for cut in range(size + 1):
        loaded, completed = cut_and_reload(tmp_path, bumped, cut)
        assert loaded.state in (STATE, bumped.state), cut
        if completed:
            assert loaded.state == bumped.state
        assert set(loaded.held) == set(ACKED) - {30}


def test_a_cut_while_formatting_leaves_the_old_pair_no_pair_or_the_new_one(tmp_path) -> None:
    probe = open_fram(tmp_path / "probe.bin")
    PairFram(probe, base=BASE).format(STATE, CAPACITY)
    size = probe.stats.bytes_written
    probe.close()
    for cut in range(0, size + 1, 7):
        path = tmp_path / "format.bin"
        nvram, pair = scenario(path)
        nvram.arm_power_cut(cut)
        other = PairState("b", "a", PRIMARY, epoch=9)
        try:
            pair.format(other, CAPACITY)
        except PowerLost:
            pass
        nvram.close()
        try:
            loaded = reload(path)
        except PairLayoutError:
            continue
        if loaded.state == STATE:  # cut before the old superblocks were unsealed
            assert set(loaded.held) == set(ACKED) - {30}, cut
        else:
            assert loaded.state == other and not loaded.held and not loaded.intent, cut


def test_a_cut_between_two_changes_keeps_the_first(tmp_path) -> None:
    nvram, pair = scenario(tmp_path / "two.bin")
    pair.apply(TableChange(HELD, (Entry(8, 1, KIND_WRITE),)))
    nvram.arm_power_cut(0)
    with pytest.raises(PowerLost):
        pair.apply(TableChange(HELD, (Entry(9, 1, KIND_WRITE),)))
    nvram.close()
    held = reload(tmp_path / "two.bin").held
    assert 8 in held and 9 not in held


def test_after_a_failed_write_the_next_change_starts_from_what_fram_says(tmp_path) -> None:
    nvram, pair = scenario(tmp_path / "retry.bin")
    nvram.arm_power_cut(30)  # the first slot lands, the second does not
    with pytest.raises(PowerLost):
        pair.apply(TableChange(HELD, (Entry(40, 1, 0), Entry(41, 1, 0), Entry(42, 1, 0))))
    nvram.power_on()
    pair.apply(TableChange(HELD, (Entry(41, 1, 0), Entry(42, 1, 0))))
    held = PairFram(nvram, base=BASE).load().held
    assert {40, 41, 42} <= set(held)


def test_compare_the_gen_on_raise_and_keep_the_higher() -> None:
    from tests.peer.pair_sim import RamFram

    pair = PairFram(RamFram(SIZE))
    pair.format(STATE, CAPACITY)
    pair.apply(TableChange(HELD, (Entry(5, 10, KIND_WRITE),)))
    pair.apply(TableChange(HELD, (Entry(5, 9, KIND_WRITE),)))  # older: no change
    assert pair.entries(HELD)[5].gen == 10
    pair.apply(TableChange(HELD, (Entry(5, 11, KIND_PREDICTED), Entry(5, 12, KIND_WRITE))))
    assert pair.entries(HELD)[5] == Entry(5, 12, KIND_WRITE)
    assert pair.load().held[5].gen == 12


def test_a_full_table_refuses_the_change_and_writes_nothing() -> None:
    from tests.peer.pair_sim import RamFram

    nvram = RamFram(SIZE)
    pair = PairFram(nvram)
    pair.format(STATE, 4)
    pair.apply(TableChange(HELD, tuple(Entry(r, 1, 0) for r in range(4))))
    image = bytes(nvram.data)
    with pytest.raises(TableFull):
        pair.apply(TableChange(HELD, (Entry(9, 1, 0),)))
    with pytest.raises(TableFull):
        pair.apply(TableChange(HELD, (Entry(0, 2, 0),)))  # a raise needs a spare slot
    assert bytes(nvram.data) == image
    pair.apply(TableChange(HELD, (Entry(9, 1, 0),), (0,)))  # room made in the same change
    assert set(pair.entries(HELD)) == {1, 2, 3, 9}


def test_a_flipped_bit_in_a_live_slot_is_reported_not_dropped() -> None:
    from firmware.peer.held import ENTRY_SIZE, TABLES_OFFSET
    from tests.peer.pair_sim import RamFram

    nvram = RamFram(SIZE)
    pair = PairFram(nvram)
    pair.format(STATE, CAPACITY)
    pair.apply(TableChange(HELD, (Entry(1, 1, 0), Entry(2, 1, 0))))
    nvram.data[TABLES_OFFSET + ENTRY_SIZE + 3] ^= 0x10  # inside the second slot's body
    loaded = PairFram(nvram).load()
    assert loaded.damaged[HELD] == 1 and set(loaded.held) == {1}


def test_boot_counts_up_and_is_durable_before_use() -> None:
    from tests.peer.pair_sim import RamFram

    nvram = RamFram(SIZE)
    PairFram(nvram).format(STATE, CAPACITY)
    boots = [PairFram(nvram).open_boot().state.boot for _ in range(3)]
    assert boots == [1, 2, 3]
    assert PairFram(nvram).load().state.boot == 3


def test_names_and_window_are_checked() -> None:
    from tests.peer.pair_sim import RamFram

    with pytest.raises(ValueError):
        PairState("a", "a", PRIMARY)
    with pytest.raises(ValueError):
        PairState("a-name-of-seventeen"[:17], "b", PRIMARY)
    with pytest.raises(ValueError):
        PairFram(RamFram(100))
    with pytest.raises(PairLayoutError):
        PairFram(RamFram(SIZE)).load()  # blank
