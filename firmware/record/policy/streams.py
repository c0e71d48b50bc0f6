"""The stream follower: sequential runs of writes, and how far ahead of one to guess.

Holding L bytes ahead of a stream that writes ``rate`` bytes per host write costs
about L/2 x L/rate of resync; that balances one update saved per L bytes at
L = sqrt(2 x hold_cost x rate). A young stream may not predict more than a
multiple of what it has written (docs/record-policy.md, "Streams and look-ahead").
"""

from __future__ import annotations

import math
from collections import OrderedDict

from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.expiry import RETRY_WRITES


class Run:
    """A sequential stream: where it goes next, how much and how fast it wrote."""

    __slots__ = ("next_offset", "bytes", "first_write")

    def __init__(self, next_offset: int, length: int, first_write: int) -> None:
        self.next_offset = next_offset
        self.bytes = length
        self.first_write = first_write


class StreamFollower:
    """The streams tracked at once, by where each goes next."""

    def __init__(self, config: CostAwareConfig) -> None:
        self.config = config
        self._runs: OrderedDict[int, Run] = OrderedDict()  # by next offset
        self.latest: Run | None = None  # the stream of the latest write, if any

    def follow(self, offset: int, length: int, clock: int) -> Run | None:
        """Track streams; the stream this write continues (None: not sequential)."""
        runs = self._runs
        run = runs.pop(offset, None)
        if run is None:
            gap = self.config.max_gap
            for key, candidate in runs.items():
                if key <= offset <= key + gap:
                    run = candidate
                    del runs[key]
                    break
        if run is not None:
            run.bytes += length
            run.next_offset = offset + length
            runs[run.next_offset] = run
            self.latest = run
            return run
        runs[offset + length] = Run(offset + length, length, clock)
        if len(runs) > self.config.max_streams:
            runs.popitem(last=False)
        self.latest = None
        return None

    @staticmethod
    def rate(run: Run, clock: int) -> float:
        """The stream's bytes per host write since it began."""
        return run.bytes / max(1, clock - run.first_write + 1)

    def ahead(self, run: Run, clock: int) -> int:
        """Bytes to hold ahead of the stream."""
        return int(min(math.sqrt(2 * self.config.hold_cost * self.rate(run, clock)),
                       self.config.ahead_per_stream_byte * run.bytes))

    def look_ahead(self, run: Run, offset: int, length: int, clock: int, region_shift: int,
                   nregions: int) -> tuple[range, int]:
        """The regions ahead of the stream's write (bytes offset..offset+length-1) and
        the clock until which they are held: twice the writes the stream takes to cover
        them, and a little slack."""
        ahead = self.ahead(run, clock)
        start = ((offset + length - 1) >> region_shift) + 1
        stop = min(nregions, start + max(1, ahead >> region_shift))
        return range(start, stop), clock + int(2 * ahead / self.rate(run, clock)) + RETRY_WRITES
