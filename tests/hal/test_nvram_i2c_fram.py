"""I2C FRAM driver against the I2C FRAM chip model."""

from __future__ import annotations

import errno

import pytest

from hal.nvram.base import NvramError
from hal.nvram.i2c_fram import I2cFram, open_i2c_fram
from tools.sim.fram_models import I2C_CHIPS, I2cChip, I2cFramModel


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 13 + seed) & 0xFF for i in range(n))


@pytest.mark.parametrize(
    "name", [n for n, chip in sorted(I2C_CHIPS.items()) if chip.device_id is not None]
)
def test_device_id_gives_the_size(name):
    chip = I2C_CHIPS[name]
    fram = open_i2c_fram(1, device=I2cFramModel(name))
    assert fram.size == chip.size
    assert fram.part.device_id == chip.device_id
    assert fram.part.address_bytes == chip.address_bytes


def test_device_id_is_read_through_the_reserved_slave():
    model = I2cFramModel("MB85RC256V", address=0x52)
    fram = open_i2c_fram(1, 0x52, device=model)
    assert fram.part.name == "MB85RC256V"
    assert model.log[:2] == [(0x7C, "w", 1), (0x7C, "r", 3)]


def test_id_less_part_takes_size_from_configuration():
    model = I2cFramModel("MB85RC64A")
    fram = open_i2c_fram(1, size=8192, device=model)
    assert fram.size == 8192 and fram.part.device_id is None
    fram.write(8000, pattern(192))
    assert fram.read(8000, 192) == pattern(192)


def test_id_less_part_without_size_is_an_error():
    with pytest.raises(NvramError, match="must give size"):
        open_i2c_fram(1, device=I2cFramModel("MB85RC64A"))


def test_configured_size_must_match_the_device_id():
    model = I2cFramModel("MB85RC256V")
    with pytest.raises(NvramError, match="says 65536"):
        open_i2c_fram(1, size=65536, device=model)
    assert model.closed


def test_unknown_device_id_is_an_error_quoting_the_bytes():
    odd = I2cChip("odd", 8192, bytes([0x01, 0x23, 0x45]), 2, 0)
    with pytest.raises(NvramError, match="01 23 45") as exc:
        open_i2c_fram(1, device=I2cFramModel(odd))
    assert exc.value.errno == errno.ENODEV


def test_nothing_at_the_address_is_an_error():
    model = I2cFramModel("MB85RC64A", address=0x57)
    with pytest.raises(NvramError, match="no I2C FRAM answers at 0x50"):
        open_i2c_fram(1, 0x50, size=8192, device=model)


@pytest.mark.parametrize("name", ["MB85RC256V", "FM24V02", "MB85RC512T"])
def test_round_trip_across_chunk_boundaries(name):
    model = I2cFramModel(name)
    fram = open_i2c_fram(1, chunk=32, device=model)
    data = pattern(1000, seed=5)
    fram.write(100, data)
    assert fram.read(100, 1000) == data
    assert model.memory[100:1100] == data
    assert model.largest_message == 32 + 2


def test_round_trip_at_the_top_of_the_array_does_not_wrap():
    model = I2cFramModel("MB85RC256V")
    fram = open_i2c_fram(1, device=model)
    data = pattern(600, seed=1)
    fram.write(fram.size - 600, data)
    assert fram.read(fram.size - 600, 600) == data
    assert model.memory[:16] == bytes(16)


@pytest.mark.parametrize("name", ["MB85RC1MT", "FM24V10"])
def test_128k_parts_put_address_bit_16_in_the_slave_address(name):
    model = I2cFramModel(name, address=0x54)
    fram = open_i2c_fram(1, 0x54, device=model)
    assert fram.size == 128 * 1024
    data = pattern(3000, seed=2)
    offset = 0x10000 - 1000
    fram.write(offset, data)
    assert model.memory[offset : offset + 3000] == data
    writes = {slave for slave, kind, length in model.log if kind == "w" and length > 2}
    assert writes == {0x54, 0x55}
    assert fram.read(offset, 3000) == data
    fram.write(fram.size - 4, b"last")
    assert bytes(model.memory[-4:]) == b"last"


def test_128k_part_needs_an_even_slave_address():
    with pytest.raises(ValueError, match="low 1 slave-address bit"):
        open_i2c_fram(1, 0x51, device=I2cFramModel("MB85RC1MT", address=0x50))


def test_small_parts_put_high_address_bits_in_the_slave_address():
    model = I2cFramModel("MB85RC16")  # 2 KiB: 1 address byte + 3 slave-address bits
    fram = open_i2c_fram(1, size=2048, device=model)
    data = pattern(2048, seed=4)
    fram.write(0, data)
    assert bytes(model.memory) == data
    assert fram.read(0, 2048) == data
    data_writes = {slave for slave, kind, length in model.log if kind == "w" and length > 1}
    assert data_writes == set(range(0x50, 0x58))


def test_512_byte_part_from_its_device_id():
    model = I2cFramModel("MB85RC04V")
    fram = open_i2c_fram(1, device=model)
    assert fram.size == 512
    fram.write(200, pattern(200))
    assert fram.read(200, 200) == pattern(200)
    assert model.memory[200:400] == pattern(200)


def test_bus_errors_become_nvram_errors():
    model = I2cFramModel("MB85RC256V")
    fram = open_i2c_fram(1, device=model)
    model.address = 0x51  # the chip stops answering at 0x50
    with pytest.raises(NvramError) as exc:
        fram.write(0, b"x")
    assert exc.value.errno == errno.ENXIO


def test_close_releases_the_bus():
    model = I2cFramModel("MB85RC256V")
    fram = I2cFram(model)
    fram.close()
    assert model.closed
    with pytest.raises(NvramError):
        fram.read(0, 1)


def test_chunk_is_validated():
    with pytest.raises(ValueError):
        I2cFram(I2cFramModel("MB85RC256V"), chunk=0)
    with pytest.raises(ValueError):
        I2cFram(I2cFramModel("MB85RC256V"), chunk=9000)
