"""SPI FRAM driver against the SPI FRAM chip model."""

from __future__ import annotations

import errno

import pytest

from hal.nvram.base import NvramError
from hal.nvram.spi_fram import RDID, RDSR, READ, WREN, WRITE, SpiFram, open_spi_fram
from tools.sim.fram_models import SPI_CHIPS, SpiChip, SpiFramModel


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def open_on(model: SpiFramModel, **kwargs) -> SpiFram:
    return open_spi_fram(0, 1, 10_000_000, device=model, **kwargs)


@pytest.mark.parametrize("name", sorted(SPI_CHIPS))
def test_rdid_identifies_part_size_and_address_width(name):
    chip = SPI_CHIPS[name]
    fram = open_on(SpiFramModel(name))
    assert fram.part.name == name
    assert fram.size == chip.size
    assert fram.part.address_bytes == chip.address_bytes


@pytest.mark.parametrize("name, header", [("MB85RS256B", 3), ("FM25V05", 3), ("MB85RS1MT", 4),
                                          ("CY15B104Q", 4)])
def test_write_frames_carry_2_or_3_address_bytes(name, header):
    model = SpiFramModel(name)
    fram = open_on(model)
    offset = fram.size - 0x1234
    fram.write(offset, b"abcdefghij")
    writes = [length for opcode, length in model.log if opcode == WRITE]
    assert writes == [header + 10]
    assert model.memory[offset : offset + 10] == b"abcdefghij"


def test_open_configures_and_close_releases_the_device():
    model = SpiFramModel("MB85RS64V")
    fram = open_spi_fram(2, 3, 25_000_000, mode=0, device=model)
    assert model.opened == (2, 3)
    assert model.max_speed_hz == 25_000_000 and model.mode == 0
    fram.close()
    assert model.closed
    with pytest.raises(NvramError):
        fram.read(0, 1)


@pytest.mark.parametrize("name", ["MB85RS64V", "MB85RS2MTA", "FM25V02", "FM25V20A"])
def test_round_trip_across_chunk_boundaries(name):
    model = SpiFramModel(name, bufsiz=64)
    fram = open_on(model, max_transfer=64)
    data = pattern(1000, seed=3)
    fram.write(77, data)
    assert fram.read(77, 1000) == data
    assert fram.read(70, 20) == bytes(7) + data[:13]
    assert model.largest_frame == 64  # full frames, header included, never more


def test_round_trip_at_the_top_of_the_array_does_not_wrap():
    model = SpiFramModel("MB85RS1MT", bufsiz=256)
    fram = open_on(model, max_transfer=256)
    data = pattern(700, seed=9)
    fram.write(fram.size - 700, data)
    assert fram.read(fram.size - 700, 700) == data
    assert model.memory[:16] == bytes(16)
    fram.write(fram.size - 1, b"\xaa")
    assert fram.read(fram.size - 1, 1) == b"\xaa"


def test_out_of_range_is_refused_before_touching_the_bus():
    model = SpiFramModel("MB85RS64V")
    fram = open_on(model)
    frames = len(model.log)
    with pytest.raises(ValueError):
        fram.write(fram.size - 1, b"xy")
    with pytest.raises(ValueError):
        fram.read(-1, 1)
    assert len(model.log) == frames


def test_every_write_frame_is_preceded_by_its_own_wren():
    model = SpiFramModel("FM25V10", bufsiz=100)
    fram = open_on(model, max_transfer=100)
    fram.write(5, pattern(1000))
    fram.write(2000, b"z")
    opcodes = [opcode for opcode, _ in model.log]
    write_positions = [i for i, op in enumerate(opcodes) if op == WRITE]
    assert len(write_positions) == 11 + 1  # 1000 bytes / 96 per frame, then one more
    assert all(opcodes[i - 1] == WREN for i in write_positions)
    assert model.writes_without_wren() == 0
    assert not model.violations
    assert not model.wel


def test_the_model_ignores_a_write_without_wren():
    # What the driver is protected against: the chip drops the data silently.
    model = SpiFramModel("MB85RS64V")
    model.open(0, 0)
    model.xfer2([WREN])
    model.xfer2([WRITE, 0x00, 0x10, 1, 2, 3])
    model.xfer2([WRITE, 0x00, 0x20, 4, 5, 6])  # WEL was cleared by the first WRITE
    assert model.memory[0x10:0x13] == b"\x01\x02\x03"
    assert model.memory[0x20:0x23] == bytes(3)
    assert model.writes_without_wren() == 1


def test_default_transfer_limit_is_spidev_bufsiz_with_header_included():
    model = SpiFramModel("MB85RS2MTA")  # bufsiz 4096, like the kernel default
    fram = open_on(model)
    data = pattern(10_000)
    fram.write(100, data)
    assert fram.read(100, 10_000) == data
    assert model.largest_frame == 4096


def test_transfer_limit_above_the_kernels_is_reported_not_split():
    model = SpiFramModel("MB85RS2MTA", bufsiz=4096)
    fram = open_on(model, max_transfer=8192)
    with pytest.raises(NvramError) as exc:
        fram.write(0, bytes(6000))
    assert exc.value.errno == errno.EMSGSIZE
    assert "max_transfer" in str(exc.value)
    assert model.memory[:6000] == bytes(6000)


def test_unknown_rdid_is_an_error_quoting_the_bytes():
    flash = SpiChip("W25Q128", bytes([0xEF, 0x40, 0x18]), 16 * 1024 * 1024, 3)
    with pytest.raises(NvramError) as exc:
        open_on(SpiFramModel(flash))
    assert exc.value.errno == errno.ENODEV
    assert "ef 40 18" in str(exc.value)


def test_no_chip_at_all_says_so():
    floating = SpiChip("nothing", bytes([0xFF] * 9), 8192, 2)
    with pytest.raises(NvramError, match="no chip answers"):
        open_on(SpiFramModel(floating))


def test_cypress_density_out_of_family_is_unknown():
    odd = SpiChip("odd", bytes([0x7F] * 6 + [0xC2, 0x44, 0x00]), 8192, 2)
    with pytest.raises(NvramError, match="c2 44 00"):
        open_on(SpiFramModel(odd))


def test_parts_outside_the_table_decode_by_density():
    fujitsu = SpiChip("x", bytes([0x04, 0x7F, 0x05, 0x77]), 32 * 1024, 2)
    fram = open_on(SpiFramModel(fujitsu))
    assert fram.size == 32 * 1024 and "density 5" in fram.part.name


def test_inside_out_cypress_id_is_recognised():
    chip = SPI_CHIPS["FM25V10"]
    reversed_id = SpiChip("FM25V10 inside-out", chip.rdid[::-1], chip.size, 3)
    fram = open_on(SpiFramModel(reversed_id))
    assert fram.part.name == "FM25V10" and fram.size == 128 * 1024


def test_expected_size_must_match_the_part():
    with pytest.raises(NvramError, match="expects 65536"):
        open_on(SpiFramModel("MB85RS2MTA"), expected_size=65536)
    assert open_on(SpiFramModel("MB85RS2MTA"), expected_size=262144).size == 262144


def test_block_protection_is_refused_at_open():
    model = SpiFramModel("MB85RS256B", block_protect=1)
    with pytest.raises(NvramError, match="block protection"):
        open_on(model)
    assert model.closed


def test_barrier_reads_the_status_register():
    model = SpiFramModel("MB85RS64V")
    fram = open_on(model)
    fram.write(0, b"abc")
    before = len(model.log)
    fram.barrier()
    assert [op for op, _ in model.log[before:]] == [RDSR]


class CorruptingModel(SpiFramModel):
    """A bus that flips a bit in the next WRITE opcode: the chip does not take it."""

    corrupt_next_write = False

    def xfer2(self, data):
        data = list(data)
        if self.corrupt_next_write and data and data[0] == WRITE:
            self.corrupt_next_write = False
            data[0] ^= 0x10
        return super().xfer2(data)


def test_barrier_detects_a_write_the_chip_did_not_take():
    model = CorruptingModel("MB85RS64V")
    fram = open_on(model)
    model.corrupt_next_write = True
    fram.write(0, b"lost")
    with pytest.raises(NvramError, match="WEL still set"):
        fram.barrier()


def test_reads_use_one_frame_per_chunk_with_read_opcode():
    model = SpiFramModel("MB85RS64V", bufsiz=40)
    fram = open_on(model, max_transfer=40)
    fram.read(0, 100)
    reads = [length for opcode, length in model.log if opcode == READ]
    assert reads == [40, 40, 29]  # 37 + 37 + 26 data bytes after a 3-byte header
    assert model.log[0][0] == RDID


def test_stats_count_calls_and_bytes():
    fram = open_on(SpiFramModel("MB85RS64V"))
    fram.write(0, b"12345")
    fram.write(10, b"67")
    fram.read(0, 4)
    stats = fram.stats
    assert (stats.write_calls, stats.bytes_written, stats.read_calls, stats.bytes_read) == (
        2, 7, 1, 4)
