"""The cost-aware policy: prediction and eviction priced by one exchange rate.

``hold_cost`` bytes x writes of resync exposure are worth one NVRAM update. Time
is counted in host writes, the instants at which a crash's resync is measured.
Every region the policy holds has an expiry (``expiry.ExpiryLedger``); past it,
the region is shed with the next miss's transaction (free) or, once holding it
since the last miss has cost ``tidy_after_updates`` updates' worth, by ``idle``.
The times follow from the rate:

- a region the host wrote: kept ``hold_cost / region_size`` writes after its last
  write if it has been rewritten (it has shown reuse), a fraction of that if
  written once — most once-written regions are never written again;
- look-ahead of a sequential stream (``streams``): for about the time the stream
  takes to write it;
- a random miss guesses the nested areas around it (``areas``), held while the
  areas are written, and what followed the missed region's previous write
  (``followers``), for one update's worth.

docs/record-policy.md describes each part with what the traces showed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

from firmware.record.layout import region_span
from firmware.record.policy.areas import AreaGuesser
from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.expiry import ExpiryLedger
from firmware.record.policy.followers import FollowerGuesser
from firmware.record.policy.protocol import RecordView
from firmware.record.policy.streams import Run, StreamFollower


class CostAwarePolicy:
    """Prediction and eviction priced by one exchange rate (see CostAwareConfig)."""

    def __init__(self, config: CostAwareConfig | None = None) -> None:
        self.config = config or CostAwareConfig()
        self._clock = 0  # host writes observed
        self._shift = 16
        self._nregions = 0
        self._view: RecordView | None = None
        self._ledger = ExpiryLedger(self._forget_gone)
        self._areas = AreaGuesser(self.config)
        self._followers = FollowerGuesser(self.config)
        self._streams = StreamFollower(self.config)
        self._fresh: set[int] = set()  # members added by prediction, not written yet
        self._reused: set[int] = set()  # members that were written twice or more
        # Written regions shed at their time, remembered (oldest first) so that a
        # rewrite soon after counts as reuse.
        self._ghosts: OrderedDict[int, None] = OrderedDict()
        # Holding paid (bytes x writes) on regions past their time since the last miss,
        # counted at each tidy from what was ready at the one before.
        self._rent = 0.0
        self._rent_clock = 0
        self._rent_bytes = 0
        # The guesses of the miss being admitted (from predict to on_admitted): not in
        # the record yet, and not to be mistaken for guesses it refused earlier.
        self._predicted: set[int] = set()

    # -- RecordPolicy ----------------------------------------------------------------

    def attach(self, view: RecordView) -> None:
        self._view = view
        self._shift = view.region_shift
        self._nregions = view.nregions
        self._areas.attach(self._shift, self._nregions)
        self._followers.attach()
        self._ledger.attach(view)

    def observe(self, offset: int, length: int) -> None:
        self._clock += 1
        clock = self._clock
        end = offset + max(length, 1) - 1
        span = region_span(offset, length, self._shift)
        view = self._view
        self._areas.observe(view, offset, end, span, clock)
        self._followers.observe(span, clock)
        run = self._streams.follow(offset, length, clock)
        self._keep_written(view, span, run, clock)
        self._fresh.difference_update(span)
        self._ledger.compact_if_bloated()

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        clock = self._clock
        shift = self._shift
        run = self._streams.latest
        if run is None:
            # The write's own regions are the record's to add; guesses are the rest.
            own = region_span(offset, length, shift)
            added = self._areas.guess(view, offset, length, own, clock)
            self._ledger.hold(added)  # they live by their areas
            self._fresh.update(added)
            followers, expiry = self._followers.guess(view, set(added).union(own), clock,
                                                      shift)
            if followers:
                self._ledger.schedule_each(followers, expiry)
                self._fresh.update(followers)
                added += followers
            self._predicted = set(added)
            return added
        ahead, expiry = self._streams.look_ahead(run, offset, length, clock, shift,
                                                 self._nregions)
        added = [r for r in ahead if not view.contains(r)]
        if added:
            expiry_map = self._ledger.expiry
            for region in added:
                expiry_map[region] = expiry
            self._fresh.update(added)
            self._ledger.push(expiry, ahead.start, len(ahead))
        self._predicted = set(added)
        return added

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        self._rent, self._rent_clock, self._rent_bytes = 0.0, self._clock, 0
        chosen = self._take_due(view, protect)
        if len(chosen) < need:
            chosen += self._ledger.take_earliest(view, need - len(chosen), protect,
                                                 set(chosen), self._predicted,
                                                 self._areas.guessed)
        return chosen

    def idle(self, view: RecordView, now: float) -> list[int]:
        cfg = self.config
        if not cfg.background_shed:
            return []
        # Rent already paid, not rent expected: a guess of the wait until the next miss
        # was wrong in the bursts where it mattered (docs/record-policy.md, "Shedding
        # and the expiry ledger").
        clock = self._clock
        self._rent += self._rent_bytes * (clock - self._rent_clock)
        self._rent_clock = clock
        self._collect_due()
        ready = self._ledger.ready
        self._rent_bytes = len(ready) << self._shift
        if not ready or self._rent < cfg.tidy_after_updates * cfg.hold_cost:
            return []
        self._rent, self._rent_bytes = 0.0, 0
        return self._take_due(view, ())

    def on_admitted(self, regions: Sequence[int]) -> None:
        self._predicted = set()  # the miss's guesses are members now, or refused

    def on_evicted(self, regions: Sequence[int]) -> None:
        # Of the regions named as victims, those that left are forgotten and those that
        # stayed are looked at again. Regions the record shed without being asked (a
        # quiet tidy, evict_clean) are left for the ledger to meet and forget: forgetting
        # them here would change which later rewrites count as reuse, a change of
        # behaviour to measure on the traces first.
        gone, ghosts = self._ledger.settle(regions, self._clock)
        if gone:
            self._forget_all(gone, ghosts)

    # -- internals ---------------------------------------------------------------------

    def _keep_written(self, view: RecordView | None, span: range, run: Run | None,
                      clock: int) -> None:
        """How long a write's own regions are kept: a stream's for hold_cost / its
        look-ahead (if stream_written_short), others by whether they have shown reuse."""
        first = span.start
        cfg = self.config
        size = 1 << self._shift
        ledger = self._ledger
        expiry_map = ledger.expiry
        if run is not None and cfg.stream_written_short:
            ahead = self._streams.ahead(run, clock)
            expiry = clock + max(1, int(cfg.hold_cost / max(size, ahead)))
            for region in span:
                expiry_map[region] = expiry
            ledger.push(expiry, first, len(span))
        else:
            keep = cfg.hold_cost * cfg.written_hold_factor / size
            expiry_once = clock + max(1, int(keep * cfg.once_written_share))
            expiry_reused = clock + max(1, int(keep))
            reused, ghosts, fresh = self._reused, self._ghosts, self._fresh
            once = again = False
            for region in span:
                # Written again while recorded, or soon after it was shed: reuse.
                if region in reused or region in ghosts or (
                        view is not None and region not in fresh and view.contains(region)):
                    reused.add(region)
                    expiry_map[region] = expiry_reused
                    again = True
                else:
                    expiry_map[region] = expiry_once
                    once = True
            if once:
                ledger.push(expiry_once, first, len(span))
            if again:
                ledger.push(expiry_reused, first, len(span))

    def _collect_due(self) -> None:
        clock = self._clock
        self._ledger.release(self._areas.collect_quiet(clock), clock)
        self._ledger.collect_due(clock)

    def _take_due(self, view: RecordView, protect: Collection[int]) -> list[int]:
        self._collect_due()
        return self._ledger.take_due(view, protect, self._clock)

    def _forget_gone(self, regions: list[int]) -> None:
        self._forget_all(regions, [])

    def _forget_all(self, regions: list[int], ghosts: list[int]) -> None:
        """The regions left the record (a miss may shed thousands); those of ``ghosts``
        that the host wrote are remembered a while as ghosts, in order."""
        self._ledger.forget(regions)
        self._reused.difference_update(regions)
        self._areas.forget(regions)
        self._followers.forget(regions)
        fresh = self._fresh
        written = [r for r in ghosts if r not in fresh]
        fresh.difference_update(regions)
        if written:
            ghost_map = self._ghosts
            for region in written:
                ghost_map[region] = None  # a ghost already known keeps its place
            while len(ghost_map) > self.config.ghost_regions:
                ghost_map.popitem(last=False)
