"""SPI FRAM (Fujitsu MB85RS, Cypress/Infineon FM25V and CY15B) through Linux spidev.

The driver talks to a ``spidev.SpiDev``-like object: every ``xfer2`` call is one
chip-select frame. The part is identified by RDID, which gives the size and so the
address width (2 bytes up to 64 KiB, 3 bytes above).

Opcodes (common to both vendors' datasheets):

====== ===== ==================================================================
WREN   0x06  set the write-enable latch (WEL)
WRDI   0x04  clear WEL
RDSR   0x05  read the status register (bit 1 WEL, bits 3..2 BP1..BP0)
WRITE  0x02  opcode, address, data...; needs WEL, and clears WEL when CS rises
READ   0x03  opcode, address, then data is clocked out
RDID   0x9F  device ID, manufacturer first
====== ===== ==================================================================

Because WEL is cleared at the end of every WRITE frame, each WRITE frame is
preceded by its own WREN frame: a WRITE without it is silently ignored by the chip.

RDID formats and the parts checked against them. Sources, cross-checked: the
Linux ``drivers/misc/eeprom/at25.c`` fm25 probe (``id[6] == 0xc2``, size
``BIT(id[7] - 0x21 + 4) KiB``, 3-byte addressing above 64 KiB, and the reversed
"inside-out" ID of some dies); the Linux spi-nor entry ``mb85rs1mt INFO(0x047f27)``;
the NuttX ``drivers/mtd/ramtron.c`` part table (FM25V01..CY15B104Q ID bytes,
MB85RS1MT ``27 03``, MB85RS256B ``05 09``); published MB85RS ID tables for the
other Fujitsu parts (density 03..09 = 64 Kbit..4 Mbit); the Cypress FM24V02
datasheet (rev 2.0, fig. 14) for the meaning of the density field (01h = 128 Kbit
.. 04h = 1 Mbit, same coding on the SPI FM25V parts). The Fujitsu SPI datasheet
pages themselves were not available to check against: the MB85RS byte-1 layout
(bits 4..0 density) is inferred from those tables, which all agree with it.

Fujitsu MB85RS -- 4 bytes: ``04`` (manufacturer), ``7F`` (continuation code),
product ID byte 1 (bits 7..5 proprietary, bits 4..0 density: size = 1 KiB << d),
product ID byte 2 (proprietary).

=========== ================ ======== ======= ========
part        RDID             density  size    address
=========== ================ ======== ======= ========
MB85RS64V   04 7F 03 02      3        8 KiB   2 bytes
MB85RS128B  04 7F 04 09      4        16 KiB  2 bytes
MB85RS256B  04 7F 05 09      5        32 KiB  2 bytes
MB85RS512T  04 7F 26 03      6        64 KiB  2 bytes
MB85RS1MT   04 7F 27 03      7        128 KiB 3 bytes
MB85RS2MTA  04 7F 48 03      8        256 KiB 3 bytes
MB85RS4MT   04 7F 49 03      9        512 KiB 3 bytes
=========== ================ ======== ======= ========

Cypress/Infineon -- 9 bytes: six ``7F`` continuation codes, ``C2`` (manufacturer),
device ID byte 1 (bits 7..5 family = 001, bits 4..0 density: size = 8 KiB << d),
device ID byte 2 (sub-type, revision; bit 0 = serial-number part).

=========== ============================ ======== ======= ========
part        RDID                         density  size    address
=========== ============================ ======== ======= ========
FM25V01     7F x6 C2 21 00               1        16 KiB  2 bytes
FM25V01A    7F x6 C2 21 08               1        16 KiB  2 bytes
FM25V02     7F x6 C2 22 00               2        32 KiB  2 bytes
FM25V02A    7F x6 C2 22 08               2        32 KiB  2 bytes
FM25V05     7F x6 C2 23 00               3        64 KiB  2 bytes
FM25V10     7F x6 C2 24 00               4        128 KiB 3 bytes
FM25V20A    7F x6 C2 25 08               5        256 KiB 3 bytes
CY15B104Q   7F x6 C2 26 08               6        512 KiB 3 bytes
=========== ============================ ======== ======= ========

Parts outside the tables but with a valid vendor/density encoding are accepted and
named by their density; anything else is an :class:`NvramError` quoting the bytes.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hal.nvram.base import NvramError, check_range
from hal.nvram.bus import FramOnBus
from hal.nvram.stats import NvramStats

WREN = 0x06
WRDI = 0x04
RDSR = 0x05
WRITE = 0x02
READ = 0x03
RDID = 0x9F

SR_WEL = 0x02
SR_BP_MASK = 0x0C
# Bit 0 reads 0 on every supported part (it is WIP on serial flash); a 1 there means
# MISO is floating high or something that is not one of these FRAMs is answering.
SR_ALWAYS_ZERO = 0x01

DEFAULT_MAX_TRANSFER = 4096  # Linux spidev's default ``bufsiz`` module parameter
RDID_LENGTH = 9  # long enough for the Cypress form; Fujitsu needs only 4

_FUJITSU_NAMES = {
    (0x03, 0x02): "MB85RS64V",
    (0x04, 0x09): "MB85RS128B",
    (0x05, 0x09): "MB85RS256B",
    (0x26, 0x03): "MB85RS512T",
    (0x27, 0x03): "MB85RS1MT",
    (0x48, 0x03): "MB85RS2MTA",
    (0x49, 0x03): "MB85RS4MT",
}
_CYPRESS_NAMES = {
    (0x21, 0x00): "FM25V01",
    (0x21, 0x08): "FM25V01A",
    (0x22, 0x00): "FM25V02",
    (0x22, 0x01): "FM25VN02",
    (0x22, 0x08): "FM25V02A",
    (0x23, 0x00): "FM25V05",
    (0x23, 0x01): "FM25VN05",
    (0x24, 0x00): "FM25V10",
    (0x24, 0x01): "FM25VN10",
    (0x25, 0x08): "FM25V20A",
    (0x26, 0x08): "CY15B104Q",
}
_CYPRESS_PREFIX = bytes([0x7F] * 6 + [0xC2])


@dataclass(frozen=True)
class SpiFramPart:
    """An identified SPI FRAM: what RDID said and what follows from it."""

    name: str
    size: int
    rdid: bytes

    @property
    def address_bytes(self) -> int:
        """Address width of READ/WRITE: 3 bytes once the array exceeds 64 KiB."""
        return 3 if self.size > 0x10000 else 2


def identify_spi_fram(rdid: bytes) -> SpiFramPart:
    """Decode the bytes that followed an RDID opcode; NvramError if they name no FRAM."""
    if len(rdid) >= 4 and rdid[0] == 0x04 and rdid[1] == 0x7F:
        density = rdid[2] & 0x1F
        if 1 <= density <= 9:
            name = _FUJITSU_NAMES.get((rdid[2], rdid[3]), f"MB85RS (density {density})")
            return SpiFramPart(name, 1024 << density, bytes(rdid[:4]))
    for candidate in (rdid, rdid[::-1]):
        # Some Cypress dies shift the ID out last byte first (Linux at25 "inside-out").
        if len(candidate) >= 9 and candidate[:7] == _CYPRESS_PREFIX:
            family, density = candidate[7] >> 5, candidate[7] & 0x1F
            if family == 1 and 1 <= density <= 6:
                name = _CYPRESS_NAMES.get(
                    (candidate[7], candidate[8]), f"FM25V/CY15B (density {density})"
                )
                return SpiFramPart(name, 8192 << density, bytes(candidate[:9]))
    if rdid and all(b == rdid[0] for b in rdid) and rdid[0] in (0x00, 0xFF):
        hint = " (no chip answers: MISO stuck, wrong bus/chip-select, or no power)"
    else:
        hint = ""
    raise NvramError(errno.ENODEV, f"unknown SPI FRAM: RDID returned {rdid.hex(' ')}{hint}")


class SpiDevice(Protocol):
    """The part of ``spidev.SpiDev`` the driver uses: one ``xfer2`` call = one CS frame."""

    max_speed_hz: int
    mode: int

    def open(self, bus: int, device: int) -> None: ...

    def xfer2(self, data: Sequence[int]) -> list[int]: ...

    def close(self) -> None: ...


class SpiFram(FramOnBus[SpiFramPart]):
    """An SPI FRAM behind an open spidev-like device.

    ``max_transfer`` bounds every frame including the opcode and address bytes (the
    kernel rejects a larger message with EMSGSIZE). ``expected_size``, when given,
    must match what RDID reports -- a board profile naming the wrong part is caught
    at open instead of when the record outgrows the chip.

    Writes use ``xfer2`` rather than ``writebytes2`` on purpose: writebytes2 quietly
    splits an oversize buffer into several CS frames, and the chip would take the
    second one's data bytes as an opcode; xfer2 fails loudly instead.
    """

    def __init__(
        self,
        device: SpiDevice,
        *,
        max_transfer: int = DEFAULT_MAX_TRANSFER,
        expected_size: int | None = None,
    ) -> None:
        if max_transfer < 8:
            raise ValueError(f"max_transfer {max_transfer} leaves no room for data")
        self._dev: SpiDevice | None = device
        self._max_transfer = max_transfer
        self._stats = NvramStats()
        rdid = self._frame([RDID] + [0] * RDID_LENGTH)[1:]
        self._part = identify_spi_fram(rdid)
        if expected_size is not None and expected_size != self._part.size:
            raise NvramError(
                errno.ENODEV,
                f"SPI FRAM is {self._part.name} of {self._part.size} bytes, "
                f"but the board profile expects {expected_size}",
            )
        status = self._read_status()
        if status & SR_BP_MASK:
            raise NvramError(
                errno.EROFS,
                f"{self._part.name}: block protection is set (status 0x{status:02x}); "
                "writes to the protected part of the array would be silently dropped",
            )
        self._header = 1 + self._part.address_bytes

    @property
    def max_transfer(self) -> int:
        return self._max_transfer

    def read(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self._stats.read_calls += 1
        out = bytearray()
        step = self._max_transfer - self._header
        for pos in range(offset, offset + length, step):
            n = min(step, offset + length - pos)
            rx = self._frame(self._command(READ, pos) + [0] * n)
            out += rx[self._header :]
        self._stats.bytes_read += length
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        check_range(self.size, offset, len(data))
        self._stats.write_calls += 1
        view = memoryview(data).cast("B")
        step = self._max_transfer - self._header
        for start in range(0, len(view), step):
            chunk = view[start : start + step]
            self._frame([WREN])
            self._frame(self._command(WRITE, offset + start) + list(chunk))
            self._stats.bytes_written += len(chunk)

    def barrier(self) -> None:
        """Nothing to flush on FRAM; check the status register instead.

        WEL still set here means the chip did not take the last WRITE frame (WRITE
        clears it), and a non-zero bit 0 means the bus is not answering.
        """
        status = self._read_status()
        if status & SR_WEL:
            raise NvramError(
                errno.EIO, f"{self._part.name}: WEL still set after WRITE (status 0x{status:02x})"
            )

    def close(self) -> None:
        if self._dev is not None:
            dev, self._dev = self._dev, None
            dev.close()

    def _command(self, opcode: int, address: int) -> list[int]:
        width = self._part.address_bytes
        return [opcode] + [(address >> (8 * i)) & 0xFF for i in reversed(range(width))]

    def _read_status(self) -> int:
        status = self._frame([RDSR, 0])[1]
        if status & SR_ALWAYS_ZERO:
            raise NvramError(
                errno.EIO,
                f"SPI FRAM status register reads 0x{status:02x}: the bus is not answering",
            )
        return status

    def _frame(self, tx: list[int]) -> bytes:
        if self._dev is None:
            raise NvramError(errno.EBADF, "SPI FRAM is closed")
        if len(tx) > self._max_transfer:  # a driver bug, not a device failure
            raise AssertionError(f"frame of {len(tx)} bytes exceeds max_transfer")
        try:
            rx = self._dev.xfer2(tx)
        except OverflowError as exc:  # py-spidev's own bufsiz check
            raise NvramError(
                errno.EMSGSIZE, f"spidev refused a {len(tx)}-byte frame ({exc}); lower max_transfer"
            ) from exc
        except OSError as exc:
            too_long = exc.errno == errno.EMSGSIZE
            hint = "; lower max_transfer or raise spidev.bufsiz" if too_long else ""
            raise NvramError(exc.errno, f"SPI transfer failed: {exc.strerror}{hint}") from exc
        return bytes(rx)


def open_spi_fram(
    bus: int,
    cs: int,
    speed_hz: int,
    *,
    max_transfer: int = DEFAULT_MAX_TRANSFER,
    mode: int = 0,
    expected_size: int | None = None,
    device: SpiDevice | None = None,
) -> SpiFram:
    """Open ``/dev/spidev<bus>.<cs>`` and identify the FRAM on it.

    ``device`` replaces ``spidev.SpiDev()`` (tests pass a chip model); it is opened
    and configured exactly like the real one. spidev is imported only here, so the
    module loads on machines without it.
    """
    if device is None:
        try:
            import spidev
        except ImportError as exc:
            raise ImportError("SPI FRAM needs spidev: install the 'board' extra") from exc
        device = spidev.SpiDev()
    device.open(bus, cs)
    try:
        device.max_speed_hz = speed_hz
        device.mode = mode
        return SpiFram(device, max_transfer=max_transfer, expected_size=expected_size)
    except BaseException:
        device.close()
        raise
