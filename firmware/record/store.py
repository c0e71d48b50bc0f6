"""Persisting the record: transactions against the NVRAM layout (see layout.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from firmware.record.layout import (
    BITMAP_OFFSET,
    HEADER_SIZE,
    HEADER_SLOTS,
    Geometry,
    Header,
    LayoutError,
    LoadedRecord,
    decode_pairs,
    encode_pairs,
    regions_in,
)
from hal.nvram.base import Nvram

# Changed bitmap bytes closer than this are written as one run: one transfer
# beats two command headers on SPI.
_RUN_MERGE_GAP = 8


class RecordStore(Protocol):
    """Where a record's changes become durable: the seam a peer-held record implements.

    ``commit`` hands over one change (regions added, regions removed). A store either
    persists it before returning (an NVRAM written inline: FRAM on SPI/I2C) or only
    stages it, and it becomes durable later, asynchronously (group commit on a worker
    thread; a peer appliance's acknowledgement that the change is in *its* FRAM). The
    record never lets data be written to a region before ``durable`` has returned
    for the transaction that added it (``must_wait``): that is the write-ahead.
    Removals need no wait: a region named too long costs a resync, never data.
    """

    def commit(self, add: Iterable[int], remove: Iterable[int]) -> int:
        """Persist or stage the change; the NVRAM bytes written now (0: none yet)."""
        ...

    def must_wait(self, regions: range) -> int:
        """The transaction that must be durable before data is written to ``regions``
        (0: every region named there is durable already)."""
        ...

    async def durable(self, transaction: int | None = None) -> None:
        """Return once ``transaction`` (default: everything committed so far) is
        durable; raise OSError if it cannot be made so."""
        ...

    def barrier(self) -> None:
        """Make earlier NVRAM writes non-volatile (a no-op on FRAM)."""
        ...

    def ended(self, transaction: int) -> None:
        """The write ``must_wait`` answered ``transaction`` for is on the medium or gave
        up (a store that admits each write, as the pair's does, lets it go)."""
        ...


class InlineDurability:
    """For stores whose ``commit`` persists before it returns: nothing is ever pending."""

    def must_wait(self, regions: range) -> int:
        return 0

    async def durable(self, transaction: int | None = None) -> None:
        return None

    def ended(self, transaction: int) -> None:
        pass


class NullRecordStore(InlineDurability):
    """A store that only counts bytes as the NVRAM layout would (for trace replay)."""

    def __init__(self, geometry: Geometry) -> None:
        self._bitmap = bytearray(geometry.bitmap_bytes())

    def commit(self, add: Iterable[int], remove: Iterable[int]) -> int:
        changed = _apply(self._bitmap, add, remove)
        return sum(2 * (end - start) for start, end in _runs(changed))

    def barrier(self) -> None:
        pass


def _apply(bitmap: bytearray, add: Iterable[int], remove: Iterable[int]) -> list[int]:
    """Set/clear bits in place; return the sorted indices of bytes that changed."""
    before: dict[int, int] = {}
    for region in add:
        i = region >> 3
        before.setdefault(i, bitmap[i])
        bitmap[i] |= 1 << (region & 7)
    for region in remove:
        i = region >> 3
        before.setdefault(i, bitmap[i])
        bitmap[i] &= ~(1 << (region & 7)) & 0xFF
    return sorted(i for i, old in before.items() if bitmap[i] != old)


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Group sorted byte indices into [start, end) runs, merging small gaps."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i - runs[-1][1] < _RUN_MERGE_GAP:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class NvramRecordStore(InlineDurability):
    """The record in an NVRAM device, with a shadow of the bitmap as written."""

    def __init__(self, nvram: Nvram) -> None:
        self._nvram = nvram
        self._geometry: Geometry | None = None
        self._bitmap = bytearray()
        self._header_slot = 0
        self._generation = 0
        # After a failed transaction the NVRAM may hold any mix: rewrite it all next time.
        self._rewrite_all = False
        self._staged: set[int] = set()  # bitmap bytes changed since the last transaction
        self.transactions = 0
        self.bytes_written = 0

    @property
    def nvram(self) -> Nvram:
        return self._nvram

    @property
    def generation(self) -> int:
        return self._generation

    def check_fits(self, geometry: Geometry) -> None:
        need = geometry.nvram_bytes()
        if need > self._nvram.size:
            largest = self._nvram.size - BITMAP_OFFSET
            raise LayoutError(
                f"a record of {geometry.nregions} regions needs {need} bytes of NVRAM but the "
                f"device has {self._nvram.size}; use a region size of at least "
                f"{_smallest_region_fitting(geometry.volume_size, largest)} bytes")

    def load(self) -> LoadedRecord:
        """Read the record at start-up; LayoutError says why there is none."""
        if self._nvram.size < BITMAP_OFFSET:
            raise LayoutError(f"NVRAM of {self._nvram.size} bytes cannot hold a record")
        best: tuple[Header, int] | None = None
        for slot in range(HEADER_SLOTS):
            header = Header.decode(self._nvram.read(slot * HEADER_SIZE, HEADER_SIZE))
            if header and (best is None or header.generation > best[0].generation):
                best = (header, slot)
        if best is None:
            raise LayoutError("no valid record header in NVRAM")
        header, slot = best
        geometry = header.geometry
        if geometry.nvram_bytes() > self._nvram.size:
            raise LayoutError("record header describes a bitmap larger than the NVRAM")
        raw = self._nvram.read(BITMAP_OFFSET, 2 * geometry.bitmap_bytes())
        bitmap, damaged = decode_pairs(raw)
        self._geometry = geometry
        self._bitmap = bitmap
        self._header_slot = slot
        self._generation = header.generation
        self._rewrite_all = damaged > 0
        return LoadedRecord(header, slot, regions_in(bitmap, geometry.nregions), damaged)

    def adopt(self, loaded: LoadedRecord) -> None:
        """Continue with a loaded record: bump its generation into the other header slot."""
        self._generation = loaded.header.generation + 1
        self._header_slot ^= 1
        self._write_header(Header(loaded.header.geometry, self._generation), self._header_slot)
        if self._rewrite_all:
            self._write_bitmap_runs([(0, len(self._bitmap))])
            self._rewrite_all = False
        self._nvram.barrier()

    def format(self, geometry: Geometry, regions: Iterable[int], generation: int = 1) -> None:
        """Write a new record naming ``regions``.

        Both headers are invalidated first, so a cut anywhere in here leaves either
        no valid record (a full resync, never a silent loss) or the new one.
        """
        self.check_fits(geometry)
        blank = bytes(HEADER_SIZE)
        for slot in range(HEADER_SLOTS):
            self._nvram.write(slot * HEADER_SIZE, blank)
        self._nvram.barrier()
        self._geometry = geometry
        self._bitmap = bytearray(geometry.bitmap_bytes())
        _apply(self._bitmap, regions, ())
        self._write_bitmap_runs([(0, len(self._bitmap))])
        self._nvram.barrier()
        self._generation = generation
        self._header_slot = 0
        self._write_header(Header(geometry, generation), 0)
        self._nvram.barrier()
        self._rewrite_all = False

    def commit(self, add: Iterable[int], remove: Iterable[int]) -> int:
        self.stage(add, remove)
        return self.write_staged(self.take_staged())

    # A commit in two halves, for group commit (firmware/record/group_commit.py): stage
    # changes on the event loop, write them from a worker thread, one transaction for
    # everything staged since the last one.

    def stage(self, add: Iterable[int], remove: Iterable[int]) -> None:
        """Apply a change to the shadow bitmap; it reaches NVRAM with the next write."""
        if self._geometry is None:
            raise LayoutError("record store used before load() or format()")
        self._staged.update(_apply(self._bitmap, add, remove))

    def take_staged(self) -> list[tuple[int, bytes]]:
        """The NVRAM writes (offset, bytes) that persist everything staged so far."""
        if self._rewrite_all:
            runs = [(0, len(self._bitmap))]
        else:
            runs = _runs(sorted(self._staged))
        self._staged.clear()
        return [(BITMAP_OFFSET + 2 * start, encode_pairs(self._bitmap[start:end]))
                for start, end in runs]

    def write_staged(self, writes: list[tuple[int, bytes]]) -> int:
        """Perform one transaction (may run in a worker thread); return bytes written."""
        if not writes:
            return 0
        self._rewrite_all = True  # until every write below has fully returned
        written = 0
        for offset, data in writes:
            self._nvram.write(offset, data)
            written += len(data)
        self._nvram.barrier()
        self._rewrite_all = False
        self.transactions += 1
        self.bytes_written += written
        return written

    def barrier(self) -> None:
        self._nvram.barrier()

    def _write_bitmap_runs(self, runs: list[tuple[int, int]]) -> int:
        written = 0
        for start, end in runs:
            data = encode_pairs(self._bitmap[start:end])
            self._nvram.write(BITMAP_OFFSET + 2 * start, data)
            written += len(data)
        return written

    def _write_header(self, header: Header, slot: int) -> None:
        self._nvram.write(slot * HEADER_SIZE, header.encode())


def _smallest_region_fitting(volume_size: int, bitmap_space: int) -> int:
    region = 4096
    while Geometry(volume_size, region).bitmap_bytes() * 2 > bitmap_space:
        region *= 2
    return region
