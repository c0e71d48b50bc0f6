"""The write record: a volatile copy in RAM, persisted through a RecordStore.

Verbs, in the spirit of Linux's dm-dirty-log:

- ``begin_write`` / ``durable`` / ``end_write`` — the write-ahead of one host
  write, in three steps on one object (DRBD's prepare / commit / complete):
  ``ticket = begin_write(...)`` marks the write's regions (on a miss, adds them
  and the predicted ones in one store transaction); ``await durable(ticket)``
  returns once every region the write touches is durable in the store (the
  transaction it started, or an earlier one still on its way that added a region
  it hits); only then may the caller write the medium; ``end_write(ticket)``
  once the medium has it. The store decides how a change becomes durable
  (inline, group commit on a worker, a peer's acknowledgement): see store.py;
- ``mirrored_upto`` / ``mirrored_region`` — the second medium durably holds every
  write up to a sequence number (ordered mirror), or a region as of one (copy);
- ``is_clean`` / ``dirty_regions`` — what the mirror still has to copy;
- ``tidy`` — evict clean regions in the background: those the policy names, and
  every one once the host has written nothing for ``quiet_evict_s``;
- ``flush`` — make sure earlier transactions are durable (async: it waits for the
  store).

The policy (``RecordPolicy``) names the regions to add and to shed; the record
tells it which entered and which left (``on_admitted`` / ``on_evicted``), including
when a transaction could not be made and the regions it named stay.

A region leaves the record only when it is mirrored and no write to it is in
flight; that and the write-ahead order keep ARCHITECTURE.md's invariant.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass

from firmware.record.layout import Geometry, region_span
from firmware.record.policy import RecordPolicy, SequentialLru
from firmware.record.store import RecordStore

# The appliance's default for Record.quiet_evict_s (and the replay's): the host has
# stopped, not paused. Hosts flush on timers — Linux's writeback every 5 s, dirty data
# at 30 s, ext4's journal every 5 s — so a shorter wait would empty the record
# between one flush and the next and pay for it again with misses.
QUIET_EVICT_S = 30.0


class RecordFull(Exception):
    """No room for the write's regions until the mirror cleans some: wait and retry."""


@dataclass(slots=True)
class WriteTicket:
    """One host write between ``begin_write`` and ``end_write``."""

    seq: int  # the write's sequence number (the mirror's order)
    offset: int
    length: int
    # The store transaction that must be durable before the data is written (0: none).
    transaction: int
    regions: range  # the regions the write touches
    ended: bool = False
    # What the store answered for this write (kept after ``transaction`` is cleared):
    # a store that admits each write, the pair's, hears of its end with it.
    admission: int = 0


@dataclass
class RecordCounters:
    hits: int = 0
    misses: int = 0
    nvram_updates: int = 0
    nvram_bytes_written: int = 0
    evictions: int = 0
    idle_evictions: int = 0
    waits: int = 0
    predicted_added: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Region:
    __slots__ = ("last_seq", "inflight", "synced_seq", "touched")

    def __init__(self, touched: float, last_seq: int = 0) -> None:
        self.last_seq = last_seq  # sequence number of the last write to it (0: none)
        self.inflight = 0  # writes begun and not ended
        self.synced_seq = 0  # copied by region to the second medium as of this seq
        self.touched = touched


class Record:
    """The predictive write record of one volume."""

    def __init__(self, geometry: Geometry, store: RecordStore, *,
                 capacity_regions: int, policy: RecordPolicy | None = None,
                 initial_regions: Iterable[int] = (), now: float = 0.0,
                 quiet_evict_s: float | None = None) -> None:
        if capacity_regions < 1:
            raise ValueError("record capacity must be at least one region")
        self.geometry = geometry
        self.store = store
        self.policy: RecordPolicy = policy or SequentialLru()
        self.capacity = capacity_regions
        # Relaxed while the second medium is unreachable: the bitmap covers the whole
        # volume, and stalling hosts would not make the resync any smaller.
        self.enforce_capacity = True
        self.counters = RecordCounters()
        # Policies may count time in host writes, and then nothing leaves while the
        # host is quiet: after this long without a write (None: never) a tidy sheds
        # every clean region, so that a crash then costs no resync.
        self.quiet_evict_s = quiet_evict_s
        self._last_write_at = now
        self._shift = geometry.region_shift
        self._members: dict[int, _Region] = {}
        self._seq = 0
        self._mirrored_seq = 0
        # Sequence numbers of writes begun and not ended, oldest first.
        self._inflight_seqs: dict[int, None] = {}
        # Regions found at start-up need a copy: they carry a write older than any new one.
        if initial_regions:
            self._seq = 1
            for region in initial_regions:
                self._members[region] = _Region(now, last_seq=1)
        self.policy.attach(self)

    # -- what policies and the status see ------------------------------------------

    @property
    def region_shift(self) -> int:
        return self._shift

    @property
    def nregions(self) -> int:
        return self.geometry.nregions

    @property
    def seq(self) -> int:
        """Sequence number of the newest write begun."""
        return self._seq

    @property
    def mirrored_seq(self) -> int:
        return self._mirrored_seq

    def __len__(self) -> int:
        return len(self._members)

    def contains(self, region: int) -> bool:
        return region in self._members

    def regions(self) -> list[int]:
        return sorted(self._members)

    def lru(self) -> Iterator[tuple[int, float]]:
        for region, state in self._members.items():
            yield region, state.touched

    def is_clean(self, region: int) -> bool:
        """True when the second medium holds the region's latest completed write."""
        state = self._members.get(region)
        return state is None or self._clean(state)

    def last_write_seq(self, region: int) -> int:
        """Sequence number of the latest write to a member region (0: none, or not a member)."""
        state = self._members.get(region)
        return 0 if state is None else state.last_seq

    def evictable(self, region: int) -> bool:
        state = self._members.get(region)
        return state is not None and not state.inflight and self._clean(state)

    def _clean(self, state: _Region) -> bool:
        # Two comparisons rather than max(): policies ask this of thousands of regions.
        return state.last_seq <= self._mirrored_seq or state.last_seq <= state.synced_seq

    def dirty_regions(self) -> list[int]:
        return sorted(r for r, s in self._members.items() if not self._clean(s))

    def span(self, offset: int, length: int) -> range:
        return region_span(offset, length, self._shift)

    # -- the write path ------------------------------------------------------------

    def begin_write(self, offset: int, length: int, now: float) -> WriteTicket:
        """Mark a write's regions; on a miss, commit them (and the predicted ones).

        The data may be written once ``durable(ticket)`` has returned. Raises
        RecordFull (nothing changed) when the regions do not fit yet, and whatever
        the store raises when NVRAM fails (nothing changed in RAM either).
        """
        span = region_span(offset, length, self._shift)
        members = self._members
        missing = [r for r in span if r not in members]
        self.policy.observe(offset, length)
        if missing:
            self._admit(missing, span, offset, length, now)
        self._seq += 1
        seq = self._seq
        self._last_write_at = now
        for region in span:
            state = members.pop(region)
            state.inflight += 1
            state.last_seq = seq
            state.touched = now
            members[region] = state  # most recently written last
        if not missing:
            self.counters.hits += 1
        self._inflight_seqs[seq] = None
        transaction = self.store.must_wait(span)
        return WriteTicket(seq, offset, length, transaction, span, admission=transaction)

    async def durable(self, ticket: WriteTicket) -> None:
        """Return once the write's regions are durable; then its data may be written.

        If the store cannot make them durable the write is ended (its regions stay in
        the record, in RAM) and the store's OSError is raised: refuse the write.
        """
        if not ticket.transaction:
            return
        try:
            await self.store.durable(ticket.transaction)
        except BaseException:
            self.end_write(ticket)
            raise
        ticket.transaction = 0

    def end_write(self, ticket: WriteTicket) -> None:
        """The write is on the medium (or failed): its regions may leave once mirrored."""
        if ticket.ended:
            return
        ticket.ended = True
        members = self._members
        for region in ticket.regions:
            state = members.get(region)
            if state is not None and state.inflight:
                state.inflight -= 1
        self._inflight_seqs.pop(ticket.seq, None)
        if ticket.admission:
            self.store.ended(ticket.admission)

    def completed_seq(self) -> int:
        """Every write with a sequence number up to this one has ended."""
        for oldest in self._inflight_seqs:  # insertion order is sequence order
            return oldest - 1
        return self._seq

    def _admit(self, missing: list[int], span: range, offset: int, length: int,
               now: float) -> None:
        members = self._members
        predicted = self.policy.predict(self, offset, length)
        add = list(dict.fromkeys(missing + [r for r in predicted if r not in members]))
        need = max(0, len(members) + len(add) - self.capacity) if self.enforce_capacity else 0
        protect = set(span)
        # The policy may name more victims than needed: clean regions it wants gone, shed
        # in this same transaction at no extra NVRAM update.
        evict = self._checked_victims(self.policy.victims(self, need, protect), protect)
        if len(evict) < need:
            # Not enough room for the guesses: admit only what the host wrote.
            add = missing
            need = max(0, len(members) + len(add) - self.capacity)
            if len(evict) < need:
                self.counters.waits += 1
                self.policy.on_evicted(())  # the victims it named stay members
                raise RecordFull(f"record holds {len(members)} regions, "
                                 f"capacity {self.capacity}, none evictable")
        try:
            written = self.store.commit(add, evict)
        except BaseException:
            self.policy.on_evicted(())
            raise
        c = self.counters
        c.misses += 1
        c.nvram_updates += 1
        c.nvram_bytes_written += written
        c.evictions += len(evict)
        c.predicted_added += len(add) - len(missing)
        for region in evict:
            del self._members[region]
        for region in add:
            self._members[region] = _Region(now)
        self.policy.on_evicted(evict)
        self.policy.on_admitted(add)

    def name_dirty(self, regions: Iterable[int], now: float) -> int:
        """Regions that may differ between the media though no write here made them so
        (what a peer's record or a handover names): members until the mirror copies
        them by region. The caller makes the mirror copy by region (an ordered mirror
        would count them as mirrored with the next run). Returns how many were new."""
        self._seq += 1
        seq = self._seq
        members = self._members
        new: list[int] = []
        for region in regions:
            state = members.get(region)
            if state is None:
                state = members[region] = _Region(now)
                new.append(region)
            state.last_seq = seq
        if new:
            self.policy.on_admitted(new)
        return len(new)

    def evict(self, regions: Iterable[int]) -> int:
        """Evict these regions now if they may leave (one transaction); how many left."""
        gone = self._checked_victims(regions, ())
        if gone:
            self._shed(gone)
            self.counters.evictions += len(gone)
        return len(gone)

    def _shed(self, gone: list[int]) -> None:
        """One NVRAM transaction that removes ``gone`` (may leave, checked), then RAM."""
        written = self.store.commit((), gone)
        for region in gone:
            del self._members[region]
        c = self.counters
        c.nvram_updates += 1
        c.nvram_bytes_written += written
        self.policy.on_evicted(gone)

    def disown(self, regions: Iterable[int]) -> int:
        """Regions another appliance owns now (active-active): they leave without being
        mirrored here, as their dirty state is in the other's record. A region with a
        write of ours still waiting stays (the write will win it back). Returns how
        many left."""
        members = self._members
        gone = [r for r in dict.fromkeys(regions)
                if r in members and not members[r].inflight]
        for region in gone:
            del members[region]
        if gone:
            self.policy.on_evicted(gone)
        return len(gone)

    # -- the mirror's progress -----------------------------------------------------

    def mirrored_upto(self, seq: int) -> None:
        """The second medium durably holds every write up to ``seq``."""
        if seq > self._mirrored_seq:
            self._mirrored_seq = seq

    def mirrored_region(self, region: int, seq: int) -> None:
        """The second medium durably holds ``region`` as of every write up to ``seq``."""
        state = self._members.get(region)
        if state is not None and seq > state.synced_seq:
            state.synced_seq = seq

    # -- background ----------------------------------------------------------------

    def tidy(self, now: float) -> int:
        """Evict quiet clean regions (one transaction); return how many left."""
        chosen = self.policy.idle(self, now)
        if self.quiet_evict_s is not None and now - self._last_write_at >= self.quiet_evict_s:
            chosen = [*chosen, *self._members]
        quiet = self._checked_victims(chosen, ())
        if not quiet:
            self.policy.on_evicted(())
            return 0
        try:
            self._shed(quiet)
        except BaseException:
            self.policy.on_evicted(())
            raise
        self.counters.idle_evictions += len(quiet)
        return len(quiet)

    def _checked_victims(self, chosen: Iterable[int], protect: Collection[int]) -> list[int]:
        """The policy's choice, keeping only regions that may leave (the invariant's rule)."""
        evictable = self.evictable
        return [r for r in dict.fromkeys(chosen) if r not in protect and evictable(r)]

    def evict_clean(self, limit: int | None = None) -> int:
        """Evict every evictable region now (one transaction), e.g. after a resync."""
        return self.evict([r for r in self._members if self.evictable(r)][:limit])

    async def flush(self) -> None:
        """Every change committed so far is durable (a host FLUSH waits for this)."""
        await self.store.durable()
        self.store.barrier()
