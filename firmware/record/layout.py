"""How the record sits in NVRAM: two headers and a dual-rail bitmap over the volume.

Layout (all integers little-endian)::

    0     header slot A (64 bytes)
    64    header slot B (64 bytes)
    128   bitmap: for each bitmap byte b, the pair (b, b ^ 0xFF)

A header names the geometry (region size, volume size, volume identity), a
generation and a CRC32 of itself. Headers change only at start-up: the new one
goes to the slot not holding the current one, so a torn header write leaves the
previous header valid.

The bitmap changes on every record transaction and is written in place. FRAM
writes are byte-granular and reach the cells in ascending address order, so a
cut leaves each byte either old or new. Each bitmap byte is stored next to its
complement; a pair that disagrees (torn between its two bytes, or a flipped
bit) is read as the union ``b | ~c`` of both candidates, which contains the old
and the new value. Because a transaction only ever sets bits of regions whose
data write has not been issued yet and clears bits of regions that are already
mirrored, any mix of old and new bytes names every region that needs resync.
Reading a damaged pair as the union means a bit flip can only grow the record,
never shrink it.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

MAGIC = b"TANDEMRC"
LAYOUT_VERSION = 1
HEADER_SIZE = 64
HEADER_SLOTS = 2
BITMAP_OFFSET = HEADER_SIZE * HEADER_SLOTS
# magic, version, flags, region_shift, volume_size, volume_uuid, generation, nregions
_HEADER = struct.Struct("<8sHHB3xQ16sQQ")
_CRC = struct.Struct("<I")
assert _HEADER.size + _CRC.size <= HEADER_SIZE


class LayoutError(ValueError):
    """The NVRAM does not hold a usable record (no valid header, or wrong geometry)."""


def region_span(offset: int, length: int, shift: int) -> range:
    """The regions of ``1 << shift`` bytes that bytes ``offset .. offset+length`` touch; a
    zero-length request (a FLUSH at an offset, an empty write) touches its one region."""
    return range(offset >> shift, ((offset + max(length, 1) - 1) >> shift) + 1)


@dataclass(frozen=True)
class Geometry:
    """What a record describes: a volume cut into power-of-two regions."""

    volume_size: int
    region_size: int
    volume_uuid: bytes = field(default=b"\0" * 16)

    def __post_init__(self) -> None:
        if self.region_size < 4096 or self.region_size & (self.region_size - 1):
            raise ValueError(f"region size {self.region_size} is not a power of two >= 4096")
        if self.volume_size <= 0:
            raise ValueError("volume size must be positive")

    @property
    def region_shift(self) -> int:
        return self.region_size.bit_length() - 1

    @property
    def nregions(self) -> int:
        return -(-self.volume_size // self.region_size)

    def span(self, offset: int, length: int) -> range:
        """:func:`region_span`, clipped at the end of the volume."""
        end = min(offset + max(length, 1), self.volume_size)
        return region_span(offset, max(end - offset, 1), self.region_shift)

    def bitmap_bytes(self) -> int:
        return -(-self.nregions // 8)

    def nvram_bytes(self) -> int:
        """NVRAM needed for this geometry: headers plus the dual-rail bitmap."""
        return BITMAP_OFFSET + 2 * self.bitmap_bytes()

    def same_volume(self, other: Geometry) -> bool:
        return (self.volume_size, self.volume_uuid) == (other.volume_size, other.volume_uuid)


@dataclass(frozen=True)
class Header:
    geometry: Geometry
    generation: int

    def encode(self) -> bytes:
        g = self.geometry
        body = _HEADER.pack(MAGIC, LAYOUT_VERSION, 0, g.region_shift, g.volume_size,
                            g.volume_uuid, self.generation, g.nregions)
        body += _CRC.pack(zlib.crc32(body))
        return body.ljust(HEADER_SIZE, b"\0")

    @classmethod
    def decode(cls, raw: bytes) -> Header | None:
        """The header in ``raw``, or None if it is not a valid header of this layout."""
        if len(raw) < _HEADER.size + _CRC.size:
            return None
        body = raw[:_HEADER.size]
        (crc,) = _CRC.unpack_from(raw, _HEADER.size)
        if zlib.crc32(body) != crc:
            return None
        magic, version, _flags, shift, vsize, vuuid, generation, nregions = _HEADER.unpack(body)
        if magic != MAGIC or version != LAYOUT_VERSION or not 12 <= shift <= 40:
            return None
        try:
            geometry = Geometry(vsize, 1 << shift, vuuid)
        except ValueError:
            return None
        if geometry.nregions != nregions:
            return None
        return cls(geometry, generation)


def new_volume_uuid() -> bytes:
    return uuid.uuid4().bytes


def encode_pairs(bitmap: bytes | bytearray | memoryview) -> bytes:
    """Interleave each bitmap byte with its complement: b0 ~b0 b1 ~b1 ..."""
    out = bytearray(2 * len(bitmap))
    out[0::2] = bitmap
    out[1::2] = bytes(b ^ 0xFF for b in bitmap)
    return bytes(out)


def decode_pairs(raw: bytes | bytearray) -> tuple[bytearray, int]:
    """The bitmap from dual-rail pairs, and how many pairs disagreed.

    A disagreeing pair reads as the union of both candidates (never smaller).
    """
    direct = raw[0::2]
    complement = raw[1::2]
    bitmap = bytearray(direct)
    damaged = 0
    for i, (b, c) in enumerate(zip(direct, complement, strict=True)):
        if b ^ c != 0xFF:
            bitmap[i] = b | (c ^ 0xFF)
            damaged += 1
    return bitmap, damaged


def regions_in(bitmap: bytes | bytearray, nregions: int) -> list[int]:
    """Region indices whose bit is set (bit i of byte i//8, LSB first)."""
    found = []
    for byte_index, byte in enumerate(bitmap):
        if not byte:
            continue
        base = byte_index * 8
        for bit in range(8):
            if byte >> bit & 1 and base + bit < nregions:
                found.append(base + bit)
    return found


@dataclass
class LoadedRecord:
    """What start-up found in NVRAM."""

    header: Header
    slot: int
    regions: list[int]
    damaged_pairs: int
