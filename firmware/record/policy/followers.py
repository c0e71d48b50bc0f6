"""The followers guesser: on a miss, guess what the host wrote after it last time.

Hosts repeat sequences — the same metadata flushed again, a checkpoint, a second
pass over scattered files — so a random miss on a region written before also
guesses the regions of the writes that followed that earlier write, held for one
update's worth (docs/record-policy.md, "What followed last time").
"""

from __future__ import annotations

from collections import OrderedDict

from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.guess_yield import GuessYield
from firmware.record.policy.protocol import RecordView


class FollowerGuesser:
    """The host's recent writes in order, and the follower guesses not written yet."""

    def __init__(self, config: CostAwareConfig) -> None:
        self.config = config
        # The recent writes as (first region, count), slot = clock % size (sized in
        # attach); the clock of each region's latest write (as many regions as writes
        # kept); the previous write of the latest write's first region (None: unknown).
        self._history: list[tuple[int, int]] = []
        self._written_at: OrderedDict[int, int] = OrderedDict()
        self._previous_write: int | None = None
        # Guesses not written yet; decayed admissions and the writes they caught, and
        # the admissions skipped while gated.
        self.followed: set[int] = set()
        self._yield = GuessYield()
        self._skipped = 0

    def attach(self) -> None:
        self._history = [(0, 0)] * max(0, self.config.history_writes)

    def observe(self, span: range, clock: int) -> None:
        """A host write over the regions of ``span``: credit the guesses it lands on (it
        is no guess any more), and log it."""
        followed = self.followed
        if followed and not followed.isdisjoint(span):
            self._yield.hits += 1
        followed.difference_update(span)
        self._remember(span.start, len(span), clock)

    def guess(self, view: RecordView, seen: set[int], clock: int,
              region_shift: int) -> tuple[list[int], int]:
        """Regions written just after the missed region's previous write, and the clock
        until which they are held (one update's worth); none of ``seen`` (the write's
        own and those already guessed), which grows."""
        cfg = self.config
        before = self._previous_write
        size = cfg.history_writes
        if before is None or clock - before >= size or cfg.follow_writes <= 0:
            return [], 0
        if self._yield.too_little(cfg.min_guess_yield):
            # A follower guess is a few regions: while gated, one admission in
            # follower_probe_every is made for real to see whether they pay again.
            self._skipped += 1
            if self._skipped % cfg.follower_probe_every:
                return [], 0
        region_size = 1 << region_shift
        # A set worth fewer than min_area_writes of holding is not guessed (as areas).
        most = int(cfg.hold_cost / (region_size * cfg.min_area_writes))
        history = self._history
        guesses: list[int] = []
        for then in range(before + 1, min(before + 1 + cfg.follow_writes, clock)):
            first, count = history[then % size]
            for region in range(first, first + count):
                if region not in seen and not view.contains(region):
                    seen.add(region)
                    guesses.append(region)
            if len(guesses) >= most:
                del guesses[most:]
                break
        if not guesses:
            return [], 0
        expiry = clock + max(1, int(cfg.hold_cost / (len(guesses) * region_size)))
        self.followed.update(guesses)
        self._yield.admitted()
        return guesses, expiry

    def forget(self, regions: list[int]) -> None:
        self.followed.difference_update(regions)

    def _remember(self, first: int, count: int, clock: int) -> None:
        """Log the write in the history; note when its first region was written before."""
        size = self.config.history_writes
        if size <= 0:
            return
        written_at = self._written_at
        self._previous_write = written_at.get(first)
        self._history[clock % size] = (first, count)
        for region in range(first, first + count):
            written_at[region] = clock
            written_at.move_to_end(region)
        while len(written_at) > size:
            written_at.popitem(last=False)
