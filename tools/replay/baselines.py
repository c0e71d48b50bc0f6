"""Emulations of the records real systems keep, for comparison under the same replay.

Each is a :class:`tools.replay.sim.Model`; the rule that a region may leave
the record only once every write to it has drained to the second medium holds
for all of them, as for Tandem's record.

- ``DrbdActivityLog``: DRBD's activity log — 4 MiB extents, a fixed number of
  slots (1237 by default, 6433 the largest), least recently used extent
  replaced, one AL transaction for every write that touches an extent not in
  the log. Extents never leave the log while it has free slots.
- ``MdBitmap``: md's write-intent bitmap — 64 MiB chunks; a write to a chunk
  whose bit is clear sets it first (one bitmap write); the bitmap daemon, every
  5 s, clears bits of chunks that have been in sync for 10 s (one write per
  pass that clears any).
- ``DmLog``: dm-raid1's disk dirty log — 512 KiB regions, a write marks its
  regions; a region is cleared in memory once in sync, and the log is written
  on the flush that follows the next batch of writes (here: the next write)
  whenever any bit changed — marks and pending clears in one update.
- ``LowerBound``: the exact dirty set at 4 KiB — a block is in it exactly while
  its latest write has not drained; one update per write touching a clean
  block. No record that persists before the data write can resync less.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from firmware.record.layout import region_span

KIB = 1 << 10
MIB = 1 << 20


class DrbdActivityLog:
    tick_s: float | None = None

    def __init__(self, slots: int = 1237, extent_size: int = 4 * MIB) -> None:
        self.name = f"DRBD-AL-{slots}"
        self.slots = slots
        self._shift = extent_size.bit_length() - 1
        self._extents: OrderedDict[int, int] = OrderedDict()  # extent -> last seq; LRU first
        self._mirrored = 0
        self._updates = 0

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        span = region_span(offset, length, self._shift)
        extents = self._extents
        missing = [e for e in span if e not in extents]
        if missing:
            over = len(extents) + len(missing) - self.slots
            if over > 0:
                victims: list[int] = []
                for extent, last in extents.items():
                    if len(victims) == over:
                        break
                    if last <= self._mirrored and extent not in span:
                        victims.append(extent)
                if len(victims) < over:
                    return False
                for extent in victims:
                    del extents[extent]
            self._updates += 1
        for extent in span:
            extents.pop(extent, None)
            extents[extent] = seq
        return True

    def mirrored_upto(self, seq: int, now: float) -> None:
        self._mirrored = seq

    def tick(self, now: float) -> None:
        pass

    def resync_bytes(self) -> int:
        return len(self._extents) << self._shift

    def updates(self) -> int:
        return self._updates


class _DrainTracker:
    """Which units a write touched, to learn in order which became clean."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}  # unit -> seq of its latest write
        self._writes: deque[tuple[int, range]] = deque()

    def wrote(self, seq: int, units: range) -> None:
        for unit in units:
            self.last[unit] = seq
        self._writes.append((seq, units))

    def drained(self, seq: int) -> list[int]:
        """Units whose latest write is among those up to ``seq`` (now clean)."""
        clean: list[int] = []
        writes, last = self._writes, self.last
        while writes and writes[0][0] <= seq:
            wseq, units = writes.popleft()
            for unit in units:
                if last.get(unit) == wseq:
                    del last[unit]
                    clean.append(unit)
        return clean


class MdBitmap:
    def __init__(self, chunk_size: int = 64 * MIB, daemon_s: float = 5.0,
                 clear_after_s: float = 10.0) -> None:
        self.name = f"md-bitmap-{chunk_size // MIB}M"
        self.tick_s: float | None = daemon_s
        self._shift = chunk_size.bit_length() - 1
        self._clear_after = clear_after_s
        self._bits: set[int] = set()
        self._clean_since: dict[int, float] = {}
        self._dirty = _DrainTracker()
        self._updates = 0

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        span = region_span(offset, length, self._shift)
        if any(c not in self._bits for c in span):
            self._updates += 1
            self._bits.update(span)
        for chunk in span:
            self._clean_since.pop(chunk, None)
        self._dirty.wrote(seq, span)
        return True

    def mirrored_upto(self, seq: int, now: float) -> None:
        for chunk in self._dirty.drained(seq):
            self._clean_since[chunk] = now

    def tick(self, now: float) -> None:
        horizon = now - self._clear_after
        gone = [c for c, since in self._clean_since.items() if since <= horizon]
        if gone:
            self._updates += 1
            for chunk in gone:
                del self._clean_since[chunk]
                self._bits.discard(chunk)

    def resync_bytes(self) -> int:
        return len(self._bits) << self._shift

    def updates(self) -> int:
        return self._updates


class DmLog:
    tick_s: float | None = None

    def __init__(self, region_size: int = 512 * KIB) -> None:
        self.name = f"dm-log-{region_size // KIB}K"
        self._shift = region_size.bit_length() - 1
        self._marked: set[int] = set()  # as persisted
        self._to_clear: set[int] = set()  # in sync, cleared at the next flush
        self._dirty = _DrainTracker()
        self._updates = 0

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        span = region_span(offset, length, self._shift)
        marked, to_clear = self._marked, self._to_clear
        for region in span:
            to_clear.discard(region)  # written again before its clear was flushed
        new = [r for r in span if r not in marked]
        if new or to_clear:
            self._updates += 1
            marked.difference_update(to_clear)
            to_clear.clear()
            marked.update(new)
        self._dirty.wrote(seq, span)
        return True

    def mirrored_upto(self, seq: int, now: float) -> None:
        self._to_clear.update(self._dirty.drained(seq))

    def tick(self, now: float) -> None:
        pass

    def resync_bytes(self) -> int:
        return len(self._marked) << self._shift

    def updates(self) -> int:
        return self._updates


class LowerBound:
    tick_s: float | None = None

    def __init__(self, block_size: int = 4 * KIB) -> None:
        self.name = "lower-bound-4K"
        self._shift = block_size.bit_length() - 1
        self._dirty = _DrainTracker()
        self._updates = 0

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        span = region_span(offset, length, self._shift)
        last = self._dirty.last
        if any(b not in last for b in span):
            self._updates += 1
        self._dirty.wrote(seq, span)
        return True

    def mirrored_upto(self, seq: int, now: float) -> None:
        self._dirty.drained(seq)

    def tick(self, now: float) -> None:
        pass

    def resync_bytes(self) -> int:
        return len(self._dirty.last) << self._shift

    def updates(self) -> int:
        return self._updates


def all_baselines() -> list[object]:
    """The comparison rows of ``tandem replay --baselines``, in table order."""
    return [DrbdActivityLog(1237), DrbdActivityLog(6433), MdBitmap(), DmLog(), LowerBound()]
