"""Chip models: stand-ins for ``spidev.SpiDev`` and ``smbus2.SMBus`` with a FRAM behind them.

They answer the datasheet command sets the way the chips do, including the
unforgiving parts -- a WRITE without a preceding WREN is ignored, addresses wrap at
the top of the array, an oversize transfer is refused with the kernel's errno --
and record what they saw so tests can assert on the conversation, not only on the
resulting bytes.

The part tables here are written out independently of the drivers' decoding
rules (sizes spelled out, not derived from the ID), so a driver test against a
model checks the decoding instead of repeating it. Source for each value: see
the tables in :mod:`hal.nvram.spi_fram` and :mod:`hal.nvram.i2c_fram`.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

KIB = 1024


@dataclass(frozen=True)
class SpiChip:
    """What an SPI FRAM model answers: its RDID bytes, size and address width."""

    name: str
    rdid: bytes
    size: int
    address_bytes: int


def _cypress(d1: int, d2: int) -> bytes:
    return bytes([0x7F] * 6 + [0xC2, d1, d2])


SPI_CHIPS: dict[str, SpiChip] = {
    chip.name: chip
    for chip in (
        SpiChip("MB85RS64V", bytes([0x04, 0x7F, 0x03, 0x02]), 8 * KIB, 2),
        SpiChip("MB85RS128B", bytes([0x04, 0x7F, 0x04, 0x09]), 16 * KIB, 2),
        SpiChip("MB85RS256B", bytes([0x04, 0x7F, 0x05, 0x09]), 32 * KIB, 2),
        SpiChip("MB85RS512T", bytes([0x04, 0x7F, 0x26, 0x03]), 64 * KIB, 2),
        SpiChip("MB85RS1MT", bytes([0x04, 0x7F, 0x27, 0x03]), 128 * KIB, 3),
        SpiChip("MB85RS2MTA", bytes([0x04, 0x7F, 0x48, 0x03]), 256 * KIB, 3),
        SpiChip("MB85RS4MT", bytes([0x04, 0x7F, 0x49, 0x03]), 512 * KIB, 3),
        SpiChip("FM25V01", _cypress(0x21, 0x00), 16 * KIB, 2),
        SpiChip("FM25V02", _cypress(0x22, 0x00), 32 * KIB, 2),
        SpiChip("FM25V02A", _cypress(0x22, 0x08), 32 * KIB, 2),
        SpiChip("FM25V05", _cypress(0x23, 0x00), 64 * KIB, 2),
        SpiChip("FM25V10", _cypress(0x24, 0x00), 128 * KIB, 3),
        SpiChip("FM25VN10", _cypress(0x24, 0x01), 128 * KIB, 3),
        SpiChip("FM25V20A", _cypress(0x25, 0x08), 256 * KIB, 3),
        SpiChip("CY15B104Q", _cypress(0x26, 0x08), 512 * KIB, 3),
    )
}

_WREN, _WRDI, _RDSR, _WRSR, _READ, _WRITE, _RDID = 0x06, 0x04, 0x05, 0x01, 0x03, 0x02, 0x9F
_SR_WEL = 0x02
_SR_WRITABLE = 0x8C  # WPEN, BP1, BP0


class SpiFramModel:
    """A ``spidev.SpiDev`` stand-in with an SPI FRAM on its chip select.

    Every ``xfer2``/``xfer``/``writebytes``/``writebytes2``/``readbytes`` call is
    one chip-select frame (the model does not reproduce py-spidev's splitting of
    large ``writebytes2`` buffers: it refuses them like ``xfer2``). A frame longer
    than ``bufsiz`` raises ``OSError(EMSGSIZE)`` as the spidev ioctl does.

    Inspection: ``memory`` (the cells), ``wel``, ``status``, ``log`` (one
    ``(opcode, frame_length)`` per frame), ``violations`` (protocol errors the chip
    would silently ignore, e.g. WRITE without WREN), ``largest_frame``.
    ``block_protect`` (0..3) presets BP1..BP0: the upper quarter, half or all of the
    array then ignores writes, as on the chip.
    """

    def __init__(
        self,
        part: str | SpiChip = "MB85RS2MTA",
        *,
        bufsiz: int = 4096,
        block_protect: int = 0,
        fill: int = 0x00,
    ) -> None:
        self.chip = part if isinstance(part, SpiChip) else SPI_CHIPS[part]
        self.bufsiz = bufsiz
        self.memory = bytearray([fill]) * self.chip.size
        self.wel = False
        self._status_bits = (block_protect & 3) << 2
        self.log: list[tuple[int, int]] = []
        self.violations: list[str] = []
        self.largest_frame = 0
        self.opened: tuple[int, int] | None = None
        self.closed = False
        self.max_speed_hz = 500_000
        self.mode = 0
        self.bits_per_word = 8

    # -- spidev surface -----------------------------------------------------------------

    def open(self, bus: int, device: int) -> None:
        self.opened = (bus, device)
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def xfer2(self, data: Sequence[int]) -> list[int]:
        return self._frame(list(data))

    def xfer(self, data: Sequence[int]) -> list[int]:
        return self._frame(list(data))

    def writebytes(self, data: Sequence[int]) -> None:
        self._frame(list(data))

    def writebytes2(self, data: Iterable[int] | bytes | bytearray | memoryview) -> None:
        self._frame(list(bytes(data)))

    def readbytes(self, length: int) -> list[int]:
        return self._frame([0] * length)

    # -- inspection -------------------------------------------------------------------

    @property
    def status(self) -> int:
        return self._status_bits | (_SR_WEL if self.wel else 0)

    def writes_without_wren(self) -> int:
        return sum(1 for v in self.violations if v.startswith("WRITE without WREN"))

    # -- the chip -----------------------------------------------------------------------

    def _frame(self, tx: list[int]) -> list[int]:
        if self.closed or self.opened is None:
            raise OSError(errno.EBADF, "SPI device is not open")
        if len(tx) > self.bufsiz:
            raise OSError(errno.EMSGSIZE, "Message too long")
        self.largest_frame = max(self.largest_frame, len(tx))
        rx = [0] * len(tx)
        if not tx:
            return rx
        opcode = tx[0]
        self.log.append((opcode, len(tx)))
        header = 1 + self.chip.address_bytes
        if opcode == _WREN:
            self.wel = True
        elif opcode == _WRDI:
            self.wel = False
        elif opcode == _RDSR:
            rx[1:] = [self.status] * (len(tx) - 1)
        elif opcode == _WRSR:
            if not self.wel:
                self.violations.append("WRSR without WREN")
            elif len(tx) > 1:
                self._status_bits = tx[1] & _SR_WRITABLE
            self.wel = False
        elif opcode == _RDID:
            ident = list(self.chip.rdid) + [0xFF] * len(tx)
            rx[1:] = ident[: len(tx) - 1]
        elif opcode == _READ:
            if len(tx) >= header:
                address = self._address(tx[1:header])
                for i in range(header, len(tx)):
                    rx[i] = self.memory[(address + i - header) % self.chip.size]
        elif opcode == _WRITE:
            if not self.wel:
                self.violations.append(f"WRITE without WREN ({len(tx)}-byte frame ignored)")
            else:
                if len(tx) >= header:
                    address = self._address(tx[1:header])
                    for i, value in enumerate(tx[header:]):
                        cell = (address + i) % self.chip.size
                        if not self._protected(cell):
                            self.memory[cell] = value
                self.wel = False  # WEL resets when CS rises after WRITE
        elif opcode == 0x00 and not any(tx):
            pass  # readbytes(): MOSI held low, no command
        else:
            self.violations.append(f"unsupported opcode 0x{opcode:02x}")
        return rx

    def _address(self, address_bytes: Sequence[int]) -> int:
        address = 0
        for b in address_bytes:
            address = (address << 8) | b
        return address % self.chip.size  # bits above the array are "don't care"

    def _protected(self, cell: int) -> bool:
        size = self.chip.size
        protected = (0, size // 4, size // 2, size)[(self._status_bits >> 2) & 3]
        return cell >= size - protected


@dataclass(frozen=True)
class I2cChip:
    """What an I2C FRAM model answers."""

    name: str
    size: int
    device_id: bytes | None
    address_bytes: int
    slave_address_bits: int  # memory address bits carried in the slave address


I2C_CHIPS: dict[str, I2cChip] = {
    chip.name: chip
    for chip in (
        # Third device-ID byte: 0x10 for MB85RC256V (datasheet); for the other Fujitsu
        # parts it is "proprietary use" and the value here is only a placeholder.
        I2cChip("MB85RC04V", 512, bytes([0x00, 0xA0, 0x10]), 1, 1),
        I2cChip("MB85RC16", 2 * KIB, None, 1, 3),
        I2cChip("MB85RC64A", 8 * KIB, None, 2, 0),
        I2cChip("MB85RC64TA", 8 * KIB, bytes([0x00, 0xA3, 0x58]), 2, 0),
        I2cChip("MB85RC256V", 32 * KIB, bytes([0x00, 0xA5, 0x10]), 2, 0),
        I2cChip("MB85RC512T", 64 * KIB, bytes([0x00, 0xA6, 0x58]), 2, 0),
        I2cChip("MB85RC1MT", 128 * KIB, bytes([0x00, 0xA7, 0x58]), 2, 1),
        I2cChip("FM24V02", 32 * KIB, bytes([0x00, 0x42, 0x00]), 2, 0),
        I2cChip("FM24V10", 128 * KIB, bytes([0x00, 0x44, 0x00]), 2, 1),
    )
}

_I2C_M_RD = 0x0001
_RESERVED_ID_SLAVE = 0x7C  # F8h/F9h
_I2C_RDWR_MAX_MSGS = 42
_I2C_RDWR_MAX_LEN = 8192


class I2cFramModel:
    """An ``smbus2.SMBus`` stand-in with one I2C FRAM at ``address`` on the bus.

    ``i2c_rdwr`` runs its messages as one transaction: an address write followed by
    data bytes stores them; an address write then a (repeated-start) read returns
    data from that address; a read on its own continues from the chip's internal
    address counter. The reserved device-ID slave (F8h/F9h) answers where the part
    has a device ID. Anything unaddressed NACKs -> ``OSError(ENXIO)``; the kernel's
    message-count and 8192-byte length limits -> ``OSError(EINVAL)``.

    Inspection: ``memory``, ``log`` (``(slave, "w"|"r", length)`` per message),
    ``largest_message``, ``pointer``.
    """

    def __init__(
        self, part: str | I2cChip = "MB85RC256V", *, address: int = 0x50, fill: int = 0x00
    ) -> None:
        self.chip = part if isinstance(part, I2cChip) else I2C_CHIPS[part]
        self.address = address
        self.memory = bytearray([fill]) * self.chip.size
        self.pointer = 0
        self.log: list[tuple[int, str, int]] = []
        self.largest_message = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def i2c_rdwr(self, *msgs: Any) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "I2C bus is closed")
        if len(msgs) > _I2C_RDWR_MAX_MSGS or any(m.len > _I2C_RDWR_MAX_LEN for m in msgs):
            raise OSError(errno.EINVAL, "Invalid argument")
        id_selected = False
        for msg in msgs:
            is_read = bool(msg.flags & _I2C_M_RD)
            self.log.append((msg.addr, "r" if is_read else "w", msg.len))
            self.largest_message = max(self.largest_message, msg.len)
            if msg.addr == _RESERVED_ID_SLAVE and self.chip.device_id is not None:
                if not is_read:
                    payload = ctypes.string_at(msg.buf, msg.len)
                    id_selected = bool(payload) and self._page_of(payload[0] >> 1) is not None
                elif id_selected:
                    ident = self.chip.device_id * (msg.len // 3 + 1)
                    ctypes.memmove(msg.buf, ident, msg.len)
                else:
                    raise OSError(errno.ENXIO, "No such device or address")
                continue
            page = self._page_of(msg.addr)
            if page is None:
                raise OSError(errno.ENXIO, "No such device or address")
            if is_read:
                size = self.chip.size
                data = bytes(self.memory[(self.pointer + i) % size] for i in range(msg.len))
                ctypes.memmove(msg.buf, data, msg.len)
                self.pointer = (self.pointer + msg.len) % self.chip.size
            else:
                payload = ctypes.string_at(msg.buf, msg.len)
                width = self.chip.address_bytes
                if len(payload) < width:
                    continue  # a truncated address: the chip keeps its counter
                word = int.from_bytes(payload[:width], "big")
                self.pointer = ((page << (8 * width)) | word) % self.chip.size
                for value in payload[width:]:
                    self.memory[self.pointer] = value
                    self.pointer = (self.pointer + 1) % self.chip.size

    def _page_of(self, slave: int) -> int | None:
        """The memory-address bits a slave address carries, or None if it is not this chip."""
        mask = (1 << self.chip.slave_address_bits) - 1
        if slave & ~mask != self.address:
            return None
        return slave & mask
