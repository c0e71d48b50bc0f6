"""File-backed FRAM: sizing, persistence, locking and injected power cuts."""

from __future__ import annotations

import errno
import os

import pytest

from hal.nvram.base import Nvram, NvramError, PowerLost
from hal.nvram.file_fram import FileFram

SIZE = 4096


def test_absent_file_is_created_zero_filled(tmp_path):
    path = tmp_path / "fram.bin"
    fram = FileFram(path, SIZE)
    assert isinstance(fram, Nvram)
    assert os.path.getsize(path) == SIZE
    assert fram.read(0, SIZE) == bytes(SIZE)
    fram.close()


def test_contents_persist_across_reopen(tmp_path):
    path = tmp_path / "fram.bin"
    fram = FileFram(path, SIZE)
    fram.write(100, b"record")
    fram.write(SIZE - 3, b"end")
    fram.close()
    fram = FileFram(path, SIZE)
    assert fram.read(100, 6) == b"record"
    assert fram.read(SIZE - 3, 3) == b"end"
    fram.close()


def test_existing_file_of_another_size_is_an_error_and_untouched(tmp_path):
    path = tmp_path / "fram.bin"
    path.write_bytes(b"\x11" * 1000)
    with pytest.raises(NvramError, match="holds 1000 bytes") as exc:
        FileFram(path, SIZE)
    assert exc.value.errno == errno.EINVAL
    assert path.read_bytes() == b"\x11" * 1000


def test_an_empty_file_counts_as_absent(tmp_path):
    path = tmp_path / "fram.bin"
    path.touch()
    fram = FileFram(path, SIZE)
    assert fram.size == SIZE and os.path.getsize(path) == SIZE
    fram.close()


def test_two_instances_cannot_share_the_file(tmp_path):
    path = tmp_path / "fram.bin"
    first = FileFram(path, SIZE)
    with pytest.raises(NvramError) as exc:
        FileFram(path, SIZE)
    assert exc.value.errno == errno.EBUSY
    first.close()
    FileFram(path, SIZE).close()


def test_out_of_range_and_closed_use_are_refused(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    with pytest.raises(ValueError):
        fram.write(SIZE - 1, b"ab")
    with pytest.raises(ValueError):
        fram.read(SIZE, 1)
    fram.close()
    fram.close()  # idempotent
    with pytest.raises(NvramError):
        fram.read(0, 1)


@pytest.mark.parametrize("sync", [True, False])
def test_barrier_in_both_sync_modes(tmp_path, sync):
    fram = FileFram(tmp_path / "fram.bin", SIZE, sync=sync)
    fram.write(0, b"x")
    fram.barrier()
    fram.close()
    assert (tmp_path / "fram.bin").read_bytes()[:1] == b"x"


OLD = bytes(range(100, 132))
NEW = bytes(range(200, 232))


def test_power_cut_at_every_byte_leaves_new_prefix_then_old_bytes(tmp_path):
    path = tmp_path / "fram.bin"
    offset = SIZE - len(NEW)  # at the top of the array, to cover the edge too
    for cut in range(len(NEW)):
        fram = FileFram(path, SIZE)
        fram.write(offset, OLD)
        fram.arm_power_cut(cut)
        with pytest.raises(PowerLost):
            fram.write(offset, NEW)
        assert not fram.powered
        fram.close()
        fram = FileFram(path, SIZE)  # what a reboot finds
        assert fram.read(offset, len(NEW)) == NEW[:cut] + OLD[cut:]
        fram.close()


def test_cut_budget_equal_to_the_write_lets_it_complete(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    fram.arm_power_cut(len(NEW))
    fram.write(0, NEW)
    assert fram.read(0, len(NEW)) == NEW
    with pytest.raises(PowerLost):
        fram.write(64, b"!")
    fram.power_on()
    assert fram.read(64, 1) == b"\x00"


def test_cut_budget_spans_several_writes(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    fram.arm_power_cut(10)
    fram.write(0, b"abcd")
    with pytest.raises(PowerLost):
        fram.write(100, b"ABCDEFGH")
    fram.power_on()
    assert fram.read(0, 4) == b"abcd"
    assert fram.read(100, 8) == b"ABCDEF\x00\x00"


def test_everything_fails_while_powered_off_until_power_on(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    fram.arm_power_cut(0)
    with pytest.raises(PowerLost):
        fram.write(0, b"x")
    for operation in (lambda: fram.read(0, 1), lambda: fram.write(0, b"y"), fram.barrier):
        with pytest.raises(PowerLost):
            operation()
    fram.power_on()
    assert fram.powered
    assert fram.read(0, 1) == b"\x00"
    fram.write(0, b"y")
    assert fram.read(0, 1) == b"y"


def test_power_on_cancels_an_armed_cut(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    fram.arm_power_cut(1)
    fram.power_on()
    fram.write(0, b"whole")
    assert fram.read(0, 5) == b"whole"


def test_stats_count_bytes_that_reached_the_cells(tmp_path):
    fram = FileFram(tmp_path / "fram.bin", SIZE)
    fram.write(0, b"1234")
    fram.read(0, 2)
    fram.arm_power_cut(3)
    with pytest.raises(PowerLost):
        fram.write(10, b"abcdef")
    stats = fram.stats
    assert (stats.write_calls, stats.bytes_written, stats.read_calls, stats.bytes_read) == (
        2, 7, 1, 2)

