"""Which 4 KiB blocks of each region the second medium misses (pure bookkeeping, no I/O).

When the mirror pulled ahead from ordered mode it knows every write the second
medium is missing (the dropped queue, and each write since), so catch-up copies
only the blocks written in each region, not whole regions: small random writes
would otherwise cost a region each (16 × the data at 64 KiB) just when the link
is already behind. After a crash, a failure of the second medium or a new link
session nothing of the sort is known (``Mode.blocks_known`` is False) and whole
regions are copied.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

# The unit of the blocks written since the mirror pulled ahead (the bitmap granularity
# of DRBD's, and the page size of the hosts' file systems).
WRITTEN_BLOCK = 4096


class BlockMasks:
    """Per region, a bit mask of the blocks written (bit i: block i of the region)."""

    def __init__(self, region_shift: int, known: bool) -> None:
        self.region_shift = region_shift
        # None: not known which blocks, copy whole regions.
        self._written: dict[int, int] | None = {} if known else None
        # The masks of the regions the catch-up run being written copies (taken out of
        # _written, so that writes meanwhile are noted afresh).
        self.in_copy: dict[int, int] = {}

    @property
    def known(self) -> bool:
        return self._written is not None

    def forget(self) -> None:
        """Some write the second medium misses was not noted: whole regions from now on."""
        self._written = None

    def restart(self) -> None:
        """The second medium misses nothing the queue does not hold: nothing noted."""
        self._written = {}

    def note(self, offset: int, length: int) -> None:
        """Remember the blocks of a write the second medium will not get in order."""
        written = self._written
        if written is None:
            return
        per_region = (1 << self.region_shift) // WRITTEN_BLOCK
        first = offset // WRITTEN_BLOCK
        last = (offset + max(length, 1) - 1) // WRITTEN_BLOCK
        while first <= last:
            region, block = divmod(first, per_region)
            upto = min(last, (region + 1) * per_region - 1) - region * per_region
            written[region] = written.get(region, 0) | \
                (((1 << (upto - block + 1)) - 1) << block)
            first = (region + 1) * per_region

    def take(self, regions: Iterable[int]) -> dict[int, int]:
        """The blocks to copy of a run's regions, as noted until now (they become
        ``in_copy``; later writes to them are noted again)."""
        written = self._written
        self.in_copy = {} if written is None else {
            region: written.pop(region) for region in regions if region in written}
        return self.in_copy

    def copied(self) -> None:
        self.in_copy = {}

    def pending(self) -> dict[int, int] | None:
        """Every mask still to copy, in a run or not; None when not known."""
        if self._written is None:
            return None
        return {**self.in_copy, **self._written}

    def noted(self) -> Mapping[int, int]:
        """The masks noted and not yet taken ({} when not known: whole regions)."""
        return self._written or {}

    def copy_bytes(self, region: int, masks: Mapping[int, int]) -> int:
        """Bytes a catch-up copies of a region: its noted blocks, or all of it."""
        mask = masks.get(region)
        whole = 1 << self.region_shift
        return whole if mask is None else min(whole, mask.bit_count() * WRITTEN_BLOCK)

    def chunks(self, work: list[int], chunk_bytes: int) -> tuple[list[list[int]], int]:
        """The regions in runs of about ``chunk_bytes`` to copy each, and the bytes they
        copy in all."""
        chunks: list[list[int]] = []
        chunk: list[int] = []
        size = total = 0
        masks = self.noted()
        for region in work:
            chunk.append(region)
            size += self.copy_bytes(region, masks)
            if size >= chunk_bytes:
                chunks.append(chunk)
                total += size
                chunk, size = [], 0
        if chunk:
            chunks.append(chunk)
        return chunks, total + size


def extents(regions: Iterable[int], region_shift: int, size: int,
            masks: Mapping[int, int] | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of runs of consecutive regions within ``size`` bytes; of a region
    that ``masks`` has, only the runs of its noted blocks."""
    whole = 1 << region_shift
    start = end = 0
    for region in regions:
        base = region << region_shift
        mask = masks.get(region) if masks else None
        runs: Iterable[tuple[int, int]] = ((base, base + whole),) if mask is None \
            else block_runs(base, mask)
        for run_start, run_end in runs:
            if run_start == end:
                end = run_end
                continue
            yield from _clip(start, end, size)
            start, end = run_start, run_end
    yield from _clip(start, end, size)


def block_runs(base: int, mask: int) -> Iterator[tuple[int, int]]:
    """[start, end) byte ranges of the runs of set bits of a written-blocks mask."""
    while mask:
        low = (mask & -mask).bit_length() - 1
        run = ((mask >> low) + 1 & ~(mask >> low)).bit_length() - 1
        yield base + low * WRITTEN_BLOCK, base + (low + run) * WRITTEN_BLOCK
        mask &= ~(((1 << run) - 1) << low)


def _clip(start: int, end: int, size: int) -> Iterator[tuple[int, int]]:
    end = min(end, size)
    if end > start:
        yield start, end - start
