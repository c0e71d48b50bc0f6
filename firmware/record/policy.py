"""Record policies: which regions to add ahead of the host, which to let go.

The record asks a policy two things and decides nothing else itself:
``predict`` on a miss (regions to add beside the missing ones, so that the
host's next writes hit) and ``victims``/``idle`` (which clean regions to
evict). Policies see the record only through ``RecordView``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol


class RecordView(Protocol):
    """What a policy may look at."""

    @property
    def region_shift(self) -> int:
        ...

    @property
    def nregions(self) -> int:
        ...

    def contains(self, region: int) -> bool:
        ...

    def lru(self) -> Iterator[tuple[int, float]]:
        """Member regions from least to most recently written, with that time."""
        ...

    def evictable(self, region: int) -> bool:
        """Mirrored, and no write to it in flight."""
        ...

    @property
    def mirrored_seq(self) -> int:
        """Every write up to this sequence number is on the second medium."""
        ...

    def last_write_seq(self, region: int) -> int:
        """Sequence number of the latest write to a member region (0: none)."""
        ...


class RecordPolicy(Protocol):
    """Asked on every write and miss; told what the record did with its answers.

    On a miss the record calls ``predict`` then ``victims``; if the transaction
    commits it calls ``on_evicted`` with the regions that left and ``on_admitted``
    with those that entered. Whatever happens, every ``victims`` and ``idle`` is
    answered by exactly one ``on_evicted``: with none of them when the record could
    not make the transaction (no room for the write, the store failed), so that the
    policy knows which of the regions it named are still members.
    """

    def attach(self, view: RecordView) -> None:
        """The record this policy serves (called once, when the record is built)."""
        ...

    def observe(self, offset: int, length: int) -> None:
        """Every write, hit or miss, in the order the host issued them."""
        ...

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        """On a miss: regions to add besides the write's own (not yet in the record)."""
        ...

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        """On a miss: evictable regions to drop in the same transaction.

        At least ``need`` if it can (to make room within the capacity); more are
        welcome — shedding clean regions with a miss's update costs nothing extra.
        The record drops only regions that are evictable and not in ``protect``.
        """
        ...

    def idle(self, view: RecordView, now: float) -> list[int]:
        """Evictable regions to drop in the background because they went quiet."""
        ...

    def on_admitted(self, regions: Sequence[int]) -> None:
        """A miss's transaction committed: these regions entered the record (the
        write's own missing regions, then the predicted ones it took, if any)."""
        ...

    def on_evicted(self, regions: Sequence[int]) -> None:
        """These regions left the record (possibly none: see the class's docstring).

        Besides answering ``victims`` and ``idle``, the record calls it when it sheds
        regions by a rule of its own (a tidy once the host is quiet, ``evict_clean``);
        those may include regions the policy never named.
        """
        ...


@dataclass
class _Stream:
    next_offset: int
    run_bytes: int


@dataclass
class SequentialLruConfig:
    # Streams tracked at once (interleaved sequential writers, e.g. a file copy and a log).
    max_streams: int = 32
    # A write starting up to this far past a stream's end still continues it (small holes).
    max_gap: int = 128 * 1024
    # Bytes of a stream seen before it counts as sequential.
    min_run: int = 64 * 1024
    # Look-ahead grows with the stream's length, up to this many bytes past the write.
    max_ahead: int = 8 * 1024 * 1024
    # Clean regions untouched for this long are evicted in the background (None: never).
    idle_evict_s: float | None = 2.0


class SequentialLru:
    """Predict ahead of sequential streams; evict clean regions least recently written first."""

    def __init__(self, config: SequentialLruConfig | None = None) -> None:
        self.config = config or SequentialLruConfig()
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._last_stream: _Stream | None = None

    def attach(self, view: RecordView) -> None:
        pass

    def observe(self, offset: int, length: int) -> None:
        cfg = self.config
        for key, stream in self._streams.items():
            if stream.next_offset <= offset <= stream.next_offset + cfg.max_gap:
                del self._streams[key]
                stream.run_bytes += length
                stream.next_offset = offset + length
                self._streams[stream.next_offset] = stream
                self._last_stream = stream
                return
        stream = _Stream(offset + length, length)
        self._streams[stream.next_offset] = stream
        if len(self._streams) > cfg.max_streams:
            self._streams.popitem(last=False)
        self._last_stream = stream

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        stream = self._last_stream
        if stream is None or stream.run_bytes < self.config.min_run:
            return []
        ahead_bytes = min(stream.run_bytes, self.config.max_ahead)
        shift = view.region_shift
        last = (offset + length - 1) >> shift
        ahead = max(1, ahead_bytes >> shift)
        stop = min(view.nregions, last + 1 + ahead)
        return [r for r in range(last + 1, stop) if not view.contains(r)]

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        chosen: list[int] = []
        for region, _touched in view.lru():
            if len(chosen) >= need:
                break
            if region not in protect and view.evictable(region):
                chosen.append(region)
        return chosen

    def idle(self, view: RecordView, now: float) -> list[int]:
        if self.config.idle_evict_s is None:
            return []
        horizon = now - self.config.idle_evict_s
        quiet: list[int] = []
        for region, touched in view.lru():
            if touched > horizon:
                break
            if view.evictable(region):
                quiet.append(region)
        return quiet

    def on_admitted(self, regions: Sequence[int]) -> None:
        pass  # it reads what it needs from the record: lru() and evictable()

    def on_evicted(self, regions: Sequence[int]) -> None:
        pass


# -- the cost-aware policy ------------------------------------------------------------
#
# One exchange rate prices everything: ``hold_cost`` bytes x writes of resync
# exposure are worth one NVRAM update. Time is counted in host writes, the
# instants at which a crash's resync is measured. Past its time a region is shed
# with the next miss's transaction (free) or, once holding it since the last miss
# has cost ``tidy_after_updates`` updates' worth, by ``idle``. The times follow from
# the rate:
#
# - a region the host wrote: kept ``hold_cost / region_size`` writes after its
#   last write if it has been rewritten (it has shown reuse), a fraction of that
#   if written once — most once-written regions are never written again;
# - look-ahead of a sequential stream: ``sqrt(2 * hold_cost * rate)`` bytes, where
#   the rate is the stream's bytes per host write: holding L bytes ahead costs
#   about L/2 x L/rate, which balances one update saved per L bytes;
# - a random miss admits the nested areas around it — 64 MiB, 16 MiB, 4 MiB, … down
#   to four regions — and a guessed region stays while any of its areas has been
#   written within ``hold_cost / area size`` writes. First writes come in bursts
#   near earlier ones (on CloudPhysics, 1 100 of the writes to a never-written
#   region come while its 4 MiB extent is being written, 555 more while its 64 MiB
#   area is); a coarse area pays for itself only briefly, a fine one for longer,
#   so guesses thin out from the edges of a quiet area towards where it was written;
# - a random miss on a region written before also guesses what the host wrote in the
#   ``follow_writes`` writes after that earlier write ("what followed it last time":
#   hosts repeat sequences — a flush of the same metadata, a checkpoint), for one
#   update's worth of holding: hold_cost / (guessed bytes) writes.


@dataclass
class CostAwareConfig:
    # Bytes x host writes of resync worth one NVRAM update: the operating point.
    hold_cost: float = float(128 << 20)
    # Written regions are kept this many times hold_cost / region_size writes (a
    # written region costs only its own bytes, a guessed area many regions' worth);
    # once-written ones for a fraction of that time.
    written_hold_factor: float = 1.0
    once_written_share: float = 1 / 8
    # Regions a stream wrote are kept hold_cost / look-ahead writes (a later pass is
    # predicted again for a share of one update) rather than as other written regions.
    stream_written_short: bool = True
    # Coarsest area guessed around a random miss (0: guess nothing), and the fewest
    # writes an area must be worth keeping (hold_cost / size) to be guessed at all.
    max_admit_bytes: int = 64 << 20
    min_area_writes: int = 16
    # A level whose admissions have lately caught fewer host writes than this, per
    # admission (each holds at least one update's worth), adds no guesses (0: never
    # gated); while it is gated, its admissions are only noted (shadow admissions) and
    # the writes that land in them are counted as what its guesses would have caught,
    # so it reopens when they would pay again. Where guesses do not pay — uniformly
    # random writes over a volume many times hold_cost — a 64 MiB admission is
    # thousands of regions added and shed with every miss, for nothing; a probe that
    # really admitted one now and then cost the same (16 regions per miss at 8 GiB).
    min_guess_yield: float = 0.25
    # Streams tracked at once, the hole a stream may skip, and how far ahead of its
    # own length a young stream may predict.
    max_streams: int = 32
    max_gap: int = 128 * 1024
    ahead_per_stream_byte: int = 16
    # Writes remembered in order (0: none) and how many of those that followed a
    # missed region's previous write are guessed with the miss.
    history_writes: int = 65536
    follow_writes: int = 16
    # Followers are gated as area levels are (min_guess_yield), but a follower guess is
    # a few regions, so while gated one admission in follower_probe_every is made for
    # real to see whether they would pay again.
    follower_probe_every: int = 16
    # Regions shed recently, remembered so that a rewrite of one counts as reuse.
    ghost_regions: int = 65536
    # Spend background updates (tidy) on shedding regions past their time once holding
    # them since the last miss has cost this many updates' worth; False: shed only with
    # misses. A tidy's update buys nothing the next miss would not do for free, so it
    # is a guard for a host that stops missing, not a rival to that free ride (a tidy
    # that guessed the wait for the next miss cost more than it saved on every shared
    # trace; at 1 — plain rent or buy — CloudPhysics paid 2 % more updates than at 8
    # for the same resync).
    background_shed: bool = True
    tidy_after_updates: float = 8.0


class _Run:
    """A sequential stream: where it goes next, how much and how fast it wrote."""

    __slots__ = ("next_offset", "bytes", "first_write")

    def __init__(self, next_offset: int, length: int, first_write: int) -> None:
        self.next_offset = next_offset
        self.bytes = length
        self.first_write = first_write


_RETRY_WRITES = 16  # a region due but still dirty is looked at again this much later
_DUE_SLACK = 4096  # outdated due entries tolerated beyond twice the live ones
_PARKED_LOOK = 64  # parked regions looked at per miss, over capacity, when short
_YIELD_DECAY = 1 - 1 / 64  # per admission: a level's yield is over its last ~64
_YIELD_EVIDENCE = 16.0  # admissions (decayed) before a level's yield is judged
_NEVER = 1 << 62  # expiry of guesses that live by their areas, not by a clock


def _one_more_admission(admissions: float, hits: float) -> tuple[float, float]:
    """A guesser's decayed counts after one more admission."""
    return admissions * _YIELD_DECAY + 1, hits * _YIELD_DECAY


def _yields_too_little(hits: float, admissions: float, floor: float) -> bool:
    """Judged (enough admissions seen) and catching fewer writes per admission than floor."""
    return admissions >= _YIELD_EVIDENCE and hits < floor * admissions


class CostAwarePolicy:
    """Prediction and eviction priced by one exchange rate (see CostAwareConfig)."""

    def __init__(self, config: CostAwareConfig | None = None) -> None:
        self.config = config or CostAwareConfig()
        self._clock = 0  # host writes observed
        self._shift = 16
        self._nregions = 0
        self._expiry: dict[int, int] = {}  # region -> write clock past which it may go
        # (expiry, first region, count): regions sharing an expiry; stale entries are
        # skipped by comparing with _expiry.
        self._due: list[tuple[int, int, int]] = []
        # Past their expiry, to shed at the next chance (an ordered set: a region may
        # fall due twice before it is looked at).
        self._ready: dict[int, None] = {}
        # Past their expiry but not yet mirrored: (sequence number of the region's latest
        # write, region), ready once the mirror has passed it.
        self._awaiting_mirror: list[tuple[int, int]] = []
        # Over capacity, regions that could not leave yet: (sequence number of the
        # region's latest write, region), back to the due heap once the mirror has
        # passed it; and where the last look among them for copied ones stopped.
        self._parked: list[tuple[int, int]] = []
        self._parked_cursor = 0
        self._fresh: set[int] = set()  # members added by prediction, not written yet
        self._reused: set[int] = set()  # members that were written twice or more
        self._ghosts: OrderedDict[int, None] = OrderedDict()
        self._runs: OrderedDict[int, _Run] = OrderedDict()  # by next offset
        self._run: _Run | None = None  # the stream of the latest write, if any
        # Holding paid (bytes x writes) on regions past their time since the last miss,
        # counted at each tidy from what was ready at the one before.
        self._rent = 0.0
        self._rent_clock = 0
        self._rent_bytes = 0
        self._view: RecordView | None = None
        # The nested areas a random miss guesses, coarsest first (byte shifts); per
        # area level, the admitted areas with the clock of their latest write; and
        # (expiry, level, area) entries, checked lazily against that latest write.
        self._area_shifts: list[int] = []
        self._admitted: list[dict[int, int]] = []
        self._area_due: list[tuple[int, int, int]] = []
        self._guessed: set[int] = set()  # fresh members that live by their areas
        # Per area level, decayed counts of its admissions (real or, while it is gated,
        # shadow) and of the host writes they caught: writes that landed on a guess with
        # that level's area the coarsest around it, or that missed or landed on a finer
        # level's guess in a live shadow area. Shadow admissions: per level, area ->
        # clock of its latest write, and (expiry, level, area) entries checked lazily as
        # for real ones.
        self._level_admissions: list[float] = []
        self._level_hits: list[float] = []
        self._shadow: list[dict[int, int]] = []
        self._shadow_due: list[tuple[int, int, int]] = []
        self._area_keeps: list[int] = []  # per level, _area_keep's answer
        # The same for followers: guesses not written yet, decayed admissions and
        # catches, and the admissions skipped while gated.
        self._followed: set[int] = set()
        self._follower_admissions = 0.0
        self._follower_hits = 0.0
        self._follower_skipped = 0
        # The host's recent writes as (first region, count), slot = clock % size (sized
        # in attach); the clock of each region's latest write (as many regions as writes
        # kept); the previous write of the latest write's first region (None: unknown).
        self._history: list[tuple[int, int]] = []
        self._written_at: OrderedDict[int, int] = OrderedDict()
        self._previous_write: int | None = None
        # Regions named as victims until the record says which left: True for those
        # shed at their time (remembered as ghosts once gone), False for those taken
        # early to make room.
        self._leaving: dict[int, bool] = {}
        # The guesses of the miss being admitted (from predict to on_admitted): not in
        # the record yet, and not to be mistaken for guesses it refused earlier (those
        # are forgotten when met).
        self._predicted: set[int] = set()

    # -- RecordPolicy ----------------------------------------------------------------

    def attach(self, view: RecordView) -> None:
        self._view = view
        self._shift = view.region_shift
        self._nregions = view.nregions
        area = self.config.max_admit_bytes
        self._area_shifts = []
        while area >= 4 << self._shift:
            self._area_shifts.append(area.bit_length() - 1)
            area //= 4
        self._admitted = [{} for _ in self._area_shifts]
        self._level_admissions = [0.0] * len(self._area_shifts)
        self._level_hits = [0.0] * len(self._area_shifts)
        self._shadow = [{} for _ in self._area_shifts]
        self._area_keeps = [int(self.config.hold_cost / (1 << ashift))
                            for ashift in self._area_shifts]
        self._history = [(0, 0)] * max(0, self.config.history_writes)
        regions = [region for region, _touched in view.lru()]
        for region in regions:  # found at start-up: treat as written once, just now
            self._expiry[region] = 0
        if regions:
            self._ready.update(dict.fromkeys(regions))

    def observe(self, offset: int, length: int) -> None:
        self._clock += 1
        clock = self._clock
        end = offset + max(length, 1) - 1
        shift = self._shift
        first, last_region = offset >> shift, end >> shift
        span = range(first, last_region + 1)
        on_guess = bool(self._guessed) and not self._guessed.isdisjoint(span)
        if on_guess:
            self._credit_hit(offset)
        if self._followed and not self._followed.isdisjoint(span):
            self._follower_hits += 1
        for ashift, admitted in zip(self._area_shifts, self._admitted, strict=True):
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area in admitted:
                    admitted[area] = clock
        if self._shadow_due:
            self._observe_shadows(offset, end, clock, on_guess)
        run = self._follow(offset, length, clock)
        cfg = self.config
        size = 1 << shift
        expiry_map, due = self._expiry, self._due
        if run is not None and cfg.stream_written_short:
            expiry = clock + max(1, int(cfg.hold_cost / max(size, self._ahead(run, clock))))
            for region in span:
                expiry_map[region] = expiry
            heapq.heappush(due, (expiry, first, len(span)))
        else:
            keep = cfg.hold_cost * cfg.written_hold_factor / size
            expiry_once = clock + max(1, int(keep * cfg.once_written_share))
            expiry_reused = clock + max(1, int(keep))
            reused, ghosts, fresh = self._reused, self._ghosts, self._fresh
            view = self._view
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
                heapq.heappush(due, (expiry_once, first, len(span)))
            if again:
                heapq.heappush(due, (expiry_reused, first, len(span)))
        self._fresh.difference_update(span)
        self._guessed.difference_update(span)
        self._followed.difference_update(span)
        self._remember(first, len(span), clock)
        if len(due) > 2 * len(expiry_map) + _DUE_SLACK:
            self._compact_due()

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        clock = self._clock
        shift = self._shift
        run = self._run
        if run is None:
            # The write's own regions are the record's to add; guesses are the rest.
            own = range(offset >> shift, ((offset + max(length, 1) - 1) >> shift) + 1)
            added = self._guess_areas(view, offset, length, own)
            added += self._guess_followers(view, set(added).union(own))
            self._predicted = set(added)
            return added
        ahead = self._ahead(run, clock)
        rate = self._rate(run, clock)
        start = ((offset + length - 1) >> shift) + 1
        stop = min(self._nregions, start + max(1, ahead >> shift))
        expiry = clock + int(2 * ahead / rate) + _RETRY_WRITES
        added = [r for r in range(start, stop) if not view.contains(r)]
        if added:
            expiry_map = self._expiry
            for region in added:
                expiry_map[region] = expiry
            self._fresh.update(added)
            heapq.heappush(self._due, (expiry, start, stop - start))
        self._predicted = set(added)
        return added

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        self._rent, self._rent_clock, self._rent_bytes = 0.0, self._clock, 0
        chosen = self._take_due(view, protect)
        if len(chosen) < need:
            chosen += self._take_earliest(view, need - len(chosen), protect, set(chosen))
        return chosen

    def idle(self, view: RecordView, now: float) -> list[int]:
        cfg = self.config
        if not cfg.background_shed:
            return []
        # Rent already paid, not rent expected: a guess of the wait until the next miss
        # (a smoothed gap between misses) was wrong in the bursts where it mattered.
        clock = self._clock
        self._rent += self._rent_bytes * (clock - self._rent_clock)
        self._rent_clock = clock
        self._collect_due()
        self._rent_bytes = len(self._ready) << self._shift
        if not self._ready or self._rent < cfg.tidy_after_updates * cfg.hold_cost:
            return []
        self._rent, self._rent_bytes = 0.0, 0
        return self._take_due(view, ())

    def on_admitted(self, regions: Sequence[int]) -> None:
        self._predicted = set()  # the miss's guesses are members now, or refused

    def on_evicted(self, regions: Sequence[int]) -> None:
        """Of the regions named as victims, those that left are forgotten and those that
        stayed are looked at again (their due entries were taken)."""
        # Regions the record shed without being asked (a quiet tidy, evict_clean) are
        # left for the due heap to meet and forget: forgetting them here would change
        # which later rewrites count as reuse, a change of behaviour to measure on the
        # traces first.
        leaving = self._leaving
        if not leaving:
            return
        self._leaving = {}
        left = set(regions)
        gone: list[int] = []
        ghosts: list[int] = []
        expiry_map, due = self._expiry, self._due
        for region, at_its_time in leaving.items():
            if region in left:
                gone.append(region)
                if at_its_time:
                    ghosts.append(region)
            else:
                heapq.heappush(due, (expiry_map.setdefault(region, self._clock), region, 1))
        if gone:
            self._forget_all(gone, ghosts)

    # -- internals ---------------------------------------------------------------------

    def _area_keep(self, level: int) -> int:
        """Writes an area of this level is kept after its latest write."""
        return self._area_keeps[level]

    def _guess_areas(self, view: RecordView, offset: int, length: int,
                     own: range) -> list[int]:
        """Admit the areas around a random miss; return the coarsest one's new regions."""
        clock, shift = self._clock, self._shift
        end = offset + max(length, 1) - 1
        coarsest = None
        for level, ashift in enumerate(self._area_shifts):
            keep = self._area_keep(level)
            if keep < self.config.min_area_writes:
                continue
            if coarsest is None:
                self._level_admissions[level], self._level_hits[level] = _one_more_admission(
                    self._level_admissions[level], self._level_hits[level])
                if self._gated(level):
                    self._admit_shadow(level, offset >> ashift, end >> ashift, clock + keep)
                    continue
                coarsest = ashift
            admitted = self._admitted[level]
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area not in admitted:
                    heapq.heappush(self._area_due, (clock + keep, level, area))
                admitted[area] = clock
        if coarsest is None:
            return []
        start = (offset >> coarsest) << (coarsest - shift)
        stop = min(self._nregions, ((end >> coarsest) + 1) << (coarsest - shift))
        contains = view.contains
        added = [r for r in range(start, stop) if r not in own and not contains(r)]
        self._expiry.update(dict.fromkeys(added, _NEVER))
        self._fresh.update(added)
        self._guessed.update(added)
        return added

    def _gated(self, level: int) -> bool:
        """The level has lately caught too few writes per admission to add guesses."""
        return _yields_too_little(self._level_hits[level], self._level_admissions[level],
                                  self.config.min_guess_yield)

    def _admit_shadow(self, level: int, first: int, last: int, expiry: int) -> None:
        """Note the areas a gated level would have admitted (no region is added)."""
        shadow, clock = self._shadow[level], self._clock
        for area in range(first, last + 1):
            if area not in shadow:
                heapq.heappush(self._shadow_due, (expiry, level, area))
            shadow[area] = clock

    def _observe_shadows(self, offset: int, end: int, clock: int, on_guess: bool) -> None:
        """Count a write in a live shadow area that misses, or lands on a finer level's
        guess, as one that level would have caught; let quiet shadow areas go."""
        due, shadows, keeps = self._shadow_due, self._shadow, self._area_keeps
        while due and due[0][0] <= clock:
            _expiry, level, area = heapq.heappop(due)
            last = shadows[level].get(area)
            if last is None:
                continue
            if last + keeps[level] > clock:
                heapq.heappush(due, (last + keeps[level], level, area))
            else:
                del shadows[level][area]
        view = self._view
        caught = on_guess or (view is not None and not view.contains(offset >> self._shift))
        hits = self._level_hits
        for level, ashift in enumerate(self._area_shifts):
            shadow = shadows[level]
            if not shadow:
                continue
            inside = False
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area in shadow:
                    shadow[area] = clock
                    inside = True
            if inside and caught:
                hits[level] += 1

    def _credit_hit(self, offset: int) -> None:
        """A write landed on a guess: credit the coarsest admitted area around it."""
        for level, (ashift, admitted) in enumerate(zip(self._area_shifts, self._admitted,
                                                       strict=True)):
            if offset >> ashift in admitted:
                self._level_hits[level] += 1
                return

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

    def _guess_followers(self, view: RecordView, seen: set[int]) -> list[int]:
        """Regions written just after the missed region's previous write, for one update's
        worth; none of ``seen`` (the write's own and those already guessed), which grows."""
        cfg, clock = self.config, self._clock
        before = self._previous_write
        size = cfg.history_writes
        if before is None or clock - before >= size or cfg.follow_writes <= 0:
            return []
        if _yields_too_little(self._follower_hits, self._follower_admissions,
                              cfg.min_guess_yield):
            self._follower_skipped += 1
            if self._follower_skipped % cfg.follower_probe_every:
                return []
        region_size = 1 << self._shift
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
            return []
        expiry = clock + max(1, int(cfg.hold_cost / (len(guesses) * region_size)))
        expiry_map, due = self._expiry, self._due
        for region in guesses:
            expiry_map[region] = expiry
            heapq.heappush(due, (expiry, region, 1))
        self._fresh.update(guesses)
        self._followed.update(guesses)
        self._follower_admissions, self._follower_hits = _one_more_admission(
            self._follower_admissions, self._follower_hits)
        return guesses

    def _uncovered(self, level: int, area: int, regions: set[int]) -> set[int]:
        """Of ``regions`` (in a quiet area of ``level``), those no live area covers: an
        area is live while written within its keep. Works on whole areas, not regions —
        a 64 MiB area is thousands of regions, and a miss may retire one."""
        clock, shift, shifts = self._clock, self._shift, self._area_shifts
        ashift = shifts[level]
        base = area << ashift  # first byte of the quiet area
        for coarser in range(level):  # coarsest first: at most one area each holds it
            last = self._admitted[coarser].get(base >> shifts[coarser])
            if last is not None and last + self._area_keep(coarser) > clock:
                return set()
        for finer in range(level + 1, len(shifts)):
            admitted = self._admitted[finer]
            if not admitted:
                continue
            fshift, keep = shifts[finer], self._area_keep(finer)
            first = base >> fshift
            stop = first + (1 << (ashift - fshift))
            inside = (range(first, stop) if stop - first <= len(admitted)
                      else [a for a in admitted if first <= a < stop])
            per = fshift - shift
            for sub in inside:
                last = admitted.get(sub)
                if last is not None and last + keep > clock:
                    regions.difference_update(range(sub << per, (sub + 1) << per))
            if not regions:
                break
        return regions

    def _collect_quiet_areas(self) -> None:
        """Admitted areas gone quiet leave; their guesses that no other area covers fall due."""
        clock, area_due, guessed = self._clock, self._area_due, self._guessed
        while area_due and area_due[0][0] <= clock:
            _expiry, level, area = heapq.heappop(area_due)
            last = self._admitted[level].get(area)
            if last is None:
                continue
            later = last + self._area_keep(level)
            if later > clock:
                heapq.heappush(area_due, (later, level, area))
                continue
            del self._admitted[level][area]
            per = self._area_shifts[level] - self._shift
            inside = guessed.intersection(range(area << per,
                                                min(self._nregions, (area + 1) << per)))
            if not inside:
                continue
            released = sorted(self._uncovered(level, area, inside))
            guessed.difference_update(released)
            self._expiry.update(dict.fromkeys(released, clock))
            self._ready.update(dict.fromkeys(released))

    def _follow(self, offset: int, length: int, clock: int) -> _Run | None:
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
            self._run = run
            return run
        runs[offset + length] = _Run(offset + length, length, clock)
        if len(runs) > self.config.max_streams:
            runs.popitem(last=False)
        self._run = None
        return None

    @staticmethod
    def _rate(run: _Run, clock: int) -> float:
        return run.bytes / max(1, clock - run.first_write + 1)

    def _ahead(self, run: _Run, clock: int) -> int:
        return int(min(math.sqrt(2 * self.config.hold_cost * self._rate(run, clock)),
                       self.config.ahead_per_stream_byte * run.bytes))

    def _compact_due(self) -> None:
        """Rebuild the due heap from the live expiries: a region written on every write
        leaves an outdated entry each time, and they would stay until their expiry
        (a million writes away at latency-first)."""
        self._due = [(expiry, region, 1) for region, expiry in self._expiry.items()
                     if expiry != _NEVER]
        heapq.heapify(self._due)

    def _collect_due(self) -> None:
        self._collect_quiet_areas()
        clock, due, expiry_map, ready = self._clock, self._due, self._expiry, self._ready
        while due and due[0][0] <= clock:
            expiry, first, count = heapq.heappop(due)
            for region in range(first, first + count):
                if expiry_map.get(region) == expiry:
                    ready[region] = None
        awaiting, view = self._awaiting_mirror, self._view
        if awaiting and view is not None:
            mirrored = view.mirrored_seq
            while awaiting and awaiting[0][0] <= mirrored:
                ready[heapq.heappop(awaiting)[1]] = None

    def _take_due(self, view: RecordView, protect: Collection[int]) -> list[int]:
        self._collect_due()
        chosen: list[int] = []
        later: list[int] = []
        expiry_map, leaving = self._expiry, self._leaving
        clock = self._clock
        contains, evictable = view.contains, view.evictable
        gone: list[int] = []
        for region in self._ready:
            expiry = expiry_map.get(region)
            if expiry is None or expiry > clock:
                continue  # written again since it fell due
            if not contains(region):
                gone.append(region)  # left the record some other way
            elif region in protect or not evictable(region):
                written = view.last_write_seq(region)
                if region not in protect and written > view.mirrored_seq:
                    # Due, but its data is still on the way to the second medium: it
                    # leaves as soon as the mirror passes its latest write. (Looking
                    # again after a fixed number of writes would keep it, clean, for as
                    # long as the backlog takes to be looked through.)
                    heapq.heappush(self._awaiting_mirror, (written, region))
                else:
                    later.append(region)
            else:
                chosen.append(region)
                leaving[region] = True
        self._ready = {}
        if gone:
            self._forget_all(gone, [])
        if later:
            # Spread the next look over as many writes as there are regions to look at
            # again, so a mirror that lags costs O(1) per write, not O(backlog).
            retry = clock + max(_RETRY_WRITES, len(later))
            for region in later:
                expiry_map[region] = retry
                heapq.heappush(self._due, (retry, region, 1))
        return chosen

    def _take_earliest(self, view: RecordView, need: int, protect: Collection[int],
                       taken: set[int]) -> list[int]:
        """Over capacity: the earliest expiries go first, due or not. Walks the due heap
        from its front (a full record is the appliance's steady state: sorting every
        expiry on every miss was most of its time on random writes). A region met on
        the way that may not leave yet is parked until the mirror has passed its latest
        write, not put back at the front: while the mirror catches up by region copies
        the record is full of such regions, and walking over all of them again on every
        miss cost milliseconds a write."""
        due, expiry_map, leaving, parked = self._due, self._expiry, self._leaving, self._parked
        mirrored = view.mirrored_seq
        while parked and parked[0][0] <= mirrored:
            region = heapq.heappop(parked)[1]
            expiry = expiry_map.get(region)
            if expiry is not None:
                heapq.heappush(due, (expiry, region, 1))
        contains, evictable = view.contains, view.evictable
        chosen: list[int] = []
        walked: list[tuple[int, int, int]] = []
        waiting: list[int] = []
        gone: list[int] = []
        while due and len(chosen) < need:
            expiry, first, count = heapq.heappop(due)
            for region in range(first, first + count):
                if expiry_map.get(region) != expiry or region in taken:
                    continue  # stale entry, or chosen already
                if region in protect or len(chosen) >= need:
                    walked.append((expiry, region, 1))  # put back
                elif evictable(region):
                    chosen.append(region)
                    taken.add(region)
                    leaving[region] = False
                elif not contains(region):
                    if region in self._predicted:
                        walked.append((expiry, region, 1))  # guessed by this very miss
                    else:
                        gone.append(region)  # a guess the record did not take, or shed
                else:
                    waiting.append(region)
        for entry in walked:
            heapq.heappush(due, entry)
        if gone:
            self._forget_all(gone, [])
        for region in waiting:
            heapq.heappush(parked, (view.last_write_seq(region), region))
        if len(chosen) < need:
            # Guesses that live by their areas have no due entry (never written: all
            # alike, and all may leave unless a write is landing on one); then parked
            # regions that a region copy has cleaned since, a few per miss from where
            # the last look stopped, so that a record full of regions that may not leave
            # costs each miss a bounded look, not all of it.
            look = min(len(parked), _PARKED_LOOK + need)
            start = self._parked_cursor % len(parked) if parked else 0
            self._parked_cursor = start + look
            behind = (parked[(start + i) % len(parked)][1] for i in range(look))
            for region in itertools.chain(self._guessed, behind):
                if len(chosen) >= need:
                    break
                if region not in taken and region not in protect and evictable(region):
                    chosen.append(region)
                    taken.add(region)
                    leaving[region] = False
        return chosen

    def _forget_all(self, regions: list[int], ghosts: list[int]) -> None:
        """The regions left the record (a miss may shed thousands); those of ``ghosts``
        that the host wrote are remembered a while as ghosts, in order."""
        expiry_map = self._expiry
        for region in regions:
            expiry_map.pop(region, None)
        self._reused.difference_update(regions)
        self._guessed.difference_update(regions)
        self._followed.difference_update(regions)
        fresh = self._fresh
        written = [r for r in ghosts if r not in fresh]
        fresh.difference_update(regions)
        if written:
            ghost_map = self._ghosts
            for region in written:
                ghost_map[region] = None  # a ghost already known keeps its place
            while len(ghost_map) > self.config.ghost_regions:
                ghost_map.popitem(last=False)


# -- the appliance's operating points -----------------------------------------------

POINTS: dict[str, CostAwareConfig] = {
    # Few updates: written regions stay (64 x 1 GiB / region: millions of writes), a
    # random miss guesses its 64 MiB area for 16 writes after the area's latest write,
    # its 16 MiB area for 64, 4 MiB for 256, 1 MiB for 1024…; regions leave only with
    # a miss's transaction, never by an update of their own. A level that has lately
    # caught less than a quarter of a write per admission stops guessing
    # (min_guess_yield, the same at both points).
    "latency-first": CostAwareConfig(
        hold_cost=float(1 << 30), written_hold_factor=64.0, stream_written_short=False,
        background_shed=False),
    # Little resync: a rewritten 32 KiB region stays 1280 writes, a once-written one
    # 160; guesses in areas of 1 MiB (40 writes) and 256 KiB (160 writes), and what
    # followed a region last time for 1280 region-writes (at most 80 regions); a tidy
    # sheds what is due once it has waited 8 updates' worth for a miss. Guesses are
    # gated as at latency-first. The rate is the middle (geometric) of the range where,
    # over the shared traces, the point enters both CloudPhysics bounds at 100 Mbit/s
    # (32 to 49 MiB·writes; docs/record-policy.md has the sweep).
    "recovery-first": CostAwareConfig(hold_cost=float(40 << 20)),
}
DEFAULT_POINT = "recovery-first"


def make_policy(point: str = DEFAULT_POINT) -> CostAwarePolicy:
    """The policy of a named operating point ("latency-first" or "recovery-first")."""
    try:
        config = POINTS[point]
    except KeyError:
        raise ValueError(f"unknown operating point {point!r} "
                         f"(one of {', '.join(POINTS)})") from None
    return CostAwarePolicy(replace(config))
