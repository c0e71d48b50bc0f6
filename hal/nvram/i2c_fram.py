"""I2C FRAM (Fujitsu MB85RC, Cypress FM24V/CY15B) through smbus2's ``i2c_rdwr``.

Addressing (MB85RC datasheets, "device address word"): the 7-bit slave address is
``1010 A2 A1 A0``; the memory address follows as one byte (parts up to 2 KiB) or
two bytes, MSB first. Memory address bits beyond those bytes replace the low
slave-address bits: A8 on the 512-byte MB85RC04V, A10..A8 on 2 KiB parts, A16 on
the 128 KiB MB85RC1MT/FM24V10 (which therefore answer on two slave addresses).
Messages are also split at those (1 << 8 * address bytes) boundaries, so each one
carries its own high bits in its slave address instead of relying on the chip's
address counter carrying into them.

A write is one message ``[address bytes] + data``; a read is an address write then a
repeated-start read in the same ``i2c_rdwr`` call.

Device ID (MB85RC256V datasheet DS501-00017 "Device ID"; FM24V02 datasheet fig. 13/14):
write the target's 8-bit address word to the reserved slave ``F8h`` (7-bit ``0x7C``),
repeated start, read 3 bytes from ``F9h``. Bytes: manufacturer ID in the first 12
bits, then a 4-bit density code, then 8 product/revision bits.

============= ============ ========== ======= ===============================
manufacturer  example      device ID  density size
============= ============ ========== ======= ===============================
0x00A Fujitsu MB85RC256V   00 A5 10   5       1 KiB << d (1..7); 0 = 512 B
0x004 Cypress FM24V02      00 42 00   2       8 KiB << d (1..4)
============= ============ ========== ======= ===============================

Known Fujitsu density codes (from the datasheet for 256V, from the part table of
the FRAM_MB85RC_I2C library for the rest): 0 MB85RC04V, 3 MB85RC64TA, 5 MB85RC256V,
6 MB85RC512T, 7 MB85RC1MT; Cypress: 1 CY15B128J, 2 FM24V02/CY15B256J, 3 FM24V05,
4 FM24V10. Parts without a device ID (MB85RC16, MB85RC64A/V, MB85RC128A, FM24CL64B,
...) NACK the reserved address; they need ``size`` from the board profile.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Protocol

from smbus2 import i2c_msg

from hal.nvram.base import NvramError, check_range
from hal.nvram.bus import FramOnBus
from hal.nvram.stats import NvramStats

DEVICE_ID_SLAVE = 0xF8 >> 1  # reserved slave ID F8h/F9h as a 7-bit address
DEFAULT_ADDRESS = 0x50
DEFAULT_CHUNK = 256
# i2c-dev rejects a single I2C_RDWR message longer than 8192 bytes.
I2C_RDWR_MAX_MESSAGE = 8192

_FUJITSU = 0x00A
_CYPRESS = 0x004
_FUJITSU_NAMES = {0: "MB85RC04V", 3: "MB85RC64TA", 5: "MB85RC256V", 6: "MB85RC512T", 7: "MB85RC1MT"}
_CYPRESS_NAMES = {1: "CY15B128J", 2: "FM24V02/CY15B256J", 3: "FM24V05", 4: "FM24V10"}


@dataclass(frozen=True)
class I2cFramPart:
    """An I2C FRAM: its size, and its device ID when the part has one."""

    name: str
    size: int
    device_id: bytes | None

    @property
    def address_bytes(self) -> int:
        """Memory address bytes after the slave address: 1 up to 2 KiB, else 2."""
        return 1 if self.size <= 2048 else 2

    @property
    def slave_address_bits(self) -> int:
        """How many low slave-address bits carry memory address bits (0..3)."""
        return max(0, (self.size - 1).bit_length() - 8 * self.address_bytes)


def identify_i2c_fram(device_id: bytes) -> I2cFramPart:
    """Decode a 3-byte device ID; NvramError if it names no supported FRAM."""
    if len(device_id) == 3:
        manufacturer = (device_id[0] << 4) | (device_id[1] >> 4)
        density = device_id[1] & 0x0F
        if manufacturer == _FUJITSU and density <= 7:
            size = 512 if density == 0 else 1024 << density
            name = _FUJITSU_NAMES.get(density, f"MB85RC (density {density})")
            return I2cFramPart(name, size, bytes(device_id))
        if manufacturer == _CYPRESS and 1 <= density <= 4:
            name = _CYPRESS_NAMES.get(density, f"FM24V (density {density})")
            return I2cFramPart(name, 8192 << density, bytes(device_id))
    raise NvramError(errno.ENODEV, f"unknown I2C FRAM: device ID {device_id.hex(' ')}")


def part_from_size(size: int) -> I2cFramPart:
    """The addressing of an ID-less part, from the size the board profile gives."""
    if size < 256 or size & (size - 1) or size > 512 * 1024:
        raise ValueError(f"I2C FRAM size {size} is not a power of two in 256..512 KiB")
    return I2cFramPart(f"I2C FRAM ({size} bytes, from configuration)", size, None)


class SMBusLike(Protocol):
    """The part of ``smbus2.SMBus`` the driver uses."""

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None: ...

    def close(self) -> None: ...


class I2cFram(FramOnBus[I2cFramPart]):
    """An I2C FRAM at ``address`` on an open SMBus-like bus.

    With ``probe_id`` the device ID is read first; it gives the size, and ``size``
    (if also given) must agree with it. A part that NACKs the device-ID address
    takes ``size`` from the caller. ``chunk`` is the most data bytes per I2C
    message (the address bytes come on top) -- some adapters cap message length
    well below the kernel's 8192.
    """

    def __init__(
        self,
        bus: SMBusLike,
        address: int = DEFAULT_ADDRESS,
        *,
        size: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        probe_id: bool = True,
    ) -> None:
        if not 1 <= chunk <= I2C_RDWR_MAX_MESSAGE - 2:
            raise ValueError(f"chunk {chunk} outside 1..{I2C_RDWR_MAX_MESSAGE - 2}")
        if not 0x08 <= address <= 0x77:
            raise ValueError(f"I2C address 0x{address:02x} is reserved or out of range")
        self._bus: SMBusLike | None = bus
        self._address = address
        self._chunk = chunk
        self._stats = NvramStats()
        device_id = self._read_device_id() if probe_id else None
        if device_id is not None:
            part = identify_i2c_fram(device_id)
            if size is not None and size != part.size:
                raise NvramError(
                    errno.ENODEV,
                    f"I2C FRAM at 0x{address:02x} is {part.name} of {part.size} bytes, "
                    f"but the board profile says {size}",
                )
        elif size is not None:
            part = part_from_size(size)
        else:
            raise NvramError(
                errno.ENODEV,
                f"I2C FRAM at 0x{address:02x} has no device ID; the board profile must give size",
            )
        high_bits = part.slave_address_bits
        if address & ((1 << high_bits) - 1):
            raise ValueError(
                f"{part.name} uses the low {high_bits} slave-address bit(s) for memory address; "
                f"0x{address:02x} must have them clear"
            )
        self._part = part
        self._page = 1 << (8 * part.address_bytes)
        if device_id is None:
            # Nothing has answered yet: make sure something acknowledges the address.
            try:
                self.read(0, 1)
            except NvramError as exc:
                raise NvramError(
                    exc.errno, f"no I2C FRAM answers at 0x{address:02x}: {exc.strerror}"
                ) from exc
            self._stats = NvramStats()

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self._stats.read_calls += 1
        out = bytearray()
        for pos, n in self._pieces(offset, length):
            slave, word = self._address_of(pos)
            rx = i2c_msg.read(slave, n)
            self._transfer(i2c_msg.write(slave, word), rx)
            out += bytes(rx)
        self._stats.bytes_read += length
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        check_range(self.size, offset, len(data))
        self._stats.write_calls += 1
        view = memoryview(data).cast("B")
        for pos, n in self._pieces(offset, len(view)):
            slave, word = self._address_of(pos)
            start = pos - offset
            self._transfer(i2c_msg.write(slave, word + bytes(view[start : start + n])))
            self._stats.bytes_written += n

    def barrier(self) -> None:
        """FRAM cells are written when the I2C write's last data byte is ACKed."""
        if self._bus is None:
            raise NvramError(errno.EBADF, "I2C FRAM is closed")

    def close(self) -> None:
        if self._bus is not None:
            bus, self._bus = self._bus, None
            bus.close()

    def _pieces(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Split [offset, offset+length) at chunk size and at slave-address pages."""
        pieces = []
        pos, end = offset, offset + length
        while pos < end:
            page_end = (pos // self._page + 1) * self._page
            n = min(self._chunk, end - pos, page_end - pos)
            pieces.append((pos, n))
            pos += n
        return pieces

    def _address_of(self, pos: int) -> tuple[int, bytes]:
        width = self._part.address_bytes
        word = (pos % self._page).to_bytes(width, "big")
        return self._address | (pos >> (8 * width)), word

    def _read_device_id(self) -> bytes | None:
        rx = i2c_msg.read(DEVICE_ID_SLAVE, 3)
        try:
            self._transfer(i2c_msg.write(DEVICE_ID_SLAVE, [self._address << 1]), rx)
        except NvramError:
            # A NACK here is how a part without the Device ID feature answers.
            return None
        return bytes(rx)

    def _transfer(self, *msgs: i2c_msg) -> None:
        if self._bus is None:
            raise NvramError(errno.EBADF, "I2C FRAM is closed")
        try:
            self._bus.i2c_rdwr(*msgs)
        except OSError as exc:
            raise NvramError(
                exc.errno, f"I2C FRAM at 0x{self._address:02x}: {exc.strerror or exc}"
            ) from exc


def open_i2c_fram(
    bus: int,
    address: int = DEFAULT_ADDRESS,
    *,
    size: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    probe_id: bool = True,
    device: SMBusLike | None = None,
) -> I2cFram:
    """Open ``/dev/i2c-<bus>`` (or use ``device``, e.g. a chip model) and identify the FRAM."""
    if device is None:
        from smbus2 import SMBus

        device = SMBus(bus)
    try:
        return I2cFram(device, address, size=size, chunk=chunk, probe_id=probe_id)
    except BaseException:
        device.close()
        raise
