"""open_nvram: board-profile tables to backends."""

from __future__ import annotations

import pytest

from hal.nvram import Nvram, NvramError, open_nvram
from hal.nvram.file_fram import FileFram
from hal.nvram.i2c_fram import I2cFram
from hal.nvram.spi_fram import SpiFram
from tools.sim.fram_models import I2cFramModel, SpiFramModel


def test_file_spec(tmp_path):
    fram = open_nvram({"kind": "file", "path": str(tmp_path / "f.bin"), "size": 262144})
    assert isinstance(fram, FileFram) and isinstance(fram, Nvram)
    assert fram.size == 262144
    fram.close()


def test_file_spec_without_sync(tmp_path):
    fram = open_nvram({"kind": "file", "path": str(tmp_path / "f.bin"), "size": 512,
                       "sync": False})
    # Writes wait on the host's disk (fdatasync at the barrier): the record commits
    # them on a worker thread, and what was written before a barrier is in the file.
    assert fram.slow_writes
    fram.write(0, b"x")
    fram.barrier()
    fram.close()
    assert (tmp_path / "f.bin").read_bytes() == b"x" + bytes(511)
    again = open_nvram({"kind": "file", "path": str(tmp_path / "f.bin"), "size": 512,
                        "sync": "process"})
    assert again.read(0, 1) == b"x" and not again.slow_writes
    again.close()


def test_spi_spec_with_injected_model():
    model = SpiFramModel("MB85RS2MTA", bufsiz=1024)
    spec = {"kind": "spi", "bus": 0, "cs": 1, "speed_hz": 20_000_000, "max_transfer": 1024,
            "size": 262144}
    fram = open_nvram(spec, device=model)
    assert isinstance(fram, SpiFram) and isinstance(fram, Nvram)
    assert fram.size == 262144 and fram.max_transfer == 1024
    assert model.opened == (0, 1) and model.max_speed_hz == 20_000_000
    fram.write(0, bytes(3000))
    assert model.largest_frame == 1024


def test_spi_spec_size_mismatch():
    spec = {"kind": "spi", "bus": 0, "cs": 0, "speed_hz": 1_000_000, "size": 32768}
    with pytest.raises(NvramError):
        open_nvram(spec, device=SpiFramModel("MB85RS2MTA"))


def test_i2c_spec_with_injected_model():
    model = I2cFramModel("MB85RC256V", address=0x51)
    fram = open_nvram({"kind": "i2c", "bus": 1, "address": 0x51, "size": 32768, "chunk": 64},
                      device=model)
    assert isinstance(fram, I2cFram) and isinstance(fram, Nvram)
    fram.write(0, bytes(500))
    assert model.largest_message == 66


def test_i2c_spec_for_a_part_without_device_id():
    fram = open_nvram({"kind": "i2c", "bus": 1, "size": 8192, "probe_id": False},
                      device=I2cFramModel("MB85RC64A"))
    assert fram.size == 8192


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"kind": "eeprom"}, "not one of"),
        ({"path": "x", "size": 1}, "not one of"),
        ({"kind": "file", "path": "x"}, "missing \\['size'\\]"),
        ({"kind": "file", "path": "x", "size": 1, "sizee": 2}, "unknown \\['sizee'\\]"),
        ({"kind": "spi", "bus": 0, "cs": 0}, "missing \\['speed_hz'\\]"),
        ({"kind": "i2c", "bus": 1, "adress": 0x50}, "unknown \\['adress'\\]"),
    ],
)
def test_bad_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        open_nvram(spec)


def test_file_kind_takes_no_device(tmp_path):
    with pytest.raises(ValueError):
        open_nvram({"kind": "file", "path": str(tmp_path / "f"), "size": 8}, device=object())
