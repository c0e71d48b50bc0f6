"""The expiry ledger: when each region the policy holds may go, and which may go now.

Time is the policy's write clock (host writes observed). A region's expiry is the
clock past which it may leave; an entry in the due heap makes sure it is looked at
then. Entries are never removed when an expiry changes: each is checked against the
map when it comes up, and the heap is rebuilt when outdated ones pile up. A region
past its expiry is *ready*; it leaves with the next transaction that may take it —
or waits for the mirror first, if its data is still on the way.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Collection, Iterable, Sequence

from firmware.record.policy.protocol import RecordView

RETRY_WRITES = 16  # a region due but still dirty is looked at again this much later
NEVER = 1 << 62  # expiry of regions that have no clock (they leave when released)
_DUE_SLACK = 4096  # outdated due entries tolerated beyond twice the live ones
_PARKED_LOOK = 64  # parked regions looked at per miss, over capacity, when short


class ExpiryLedger:
    """Expiries, the heap of their due entries, and the regions ready to leave."""

    def __init__(self, forget_gone: Callable[[list[int]], None]) -> None:
        # Called with regions met here that have left the record without being named
        # (guesses it refused, regions it shed by a rule of its own): the owner forgets
        # them everywhere, here included (``forget``).
        self._forget_gone = forget_gone
        self._view: RecordView | None = None
        # region -> write clock past which it may go. Set it and push an entry covering
        # the region (``push``), unless it has no clock (``hold``).
        self.expiry: dict[int, int] = {}
        # (expiry, first region, count): regions sharing an expiry; an entry is live
        # for the regions whose expiry it still matches.
        self._due: list[tuple[int, int, int]] = []
        # Past their expiry, to shed at the next chance (an ordered set: a region may
        # fall due twice before it is looked at).
        self.ready: dict[int, None] = {}
        # Past their expiry but not yet mirrored: (sequence number of the region's latest
        # write, region), ready once the mirror has passed it.
        self._awaiting_mirror: list[tuple[int, int]] = []
        # Over capacity, regions that could not leave yet: (sequence number of the
        # region's latest write, region), back to the due heap once the mirror has
        # passed it; and where the last look among them for copied ones stopped.
        self._parked: list[tuple[int, int]] = []
        self._parked_cursor = 0
        # Regions named as victims until the record says which left: True for those
        # shed at their time (remembered as ghosts once gone), False for those taken
        # early to make room.
        self._leaving: dict[int, bool] = {}

    def attach(self, view: RecordView) -> None:
        """The record served; regions already in it (found at start-up) are due now."""
        self._view = view
        regions = [region for region, _touched in view.lru()]
        for region in regions:
            self.expiry[region] = 0
        if regions:
            self.ready.update(dict.fromkeys(regions))

    # -- scheduling ------------------------------------------------------------------

    def push(self, expiry: int, first: int, count: int = 1) -> None:
        """Look at regions first..first+count-1 once the clock passes ``expiry``
        (those whose expiry is still that then)."""
        heapq.heappush(self._due, (expiry, first, count))

    def schedule_each(self, regions: Iterable[int], expiry: int) -> None:
        """Give each region ``expiry``, with an entry of its own."""
        expiry_map, due = self.expiry, self._due
        for region in regions:
            expiry_map[region] = expiry
            heapq.heappush(due, (expiry, region, 1))

    def hold(self, regions: Iterable[int]) -> None:
        """No clock for these regions: they stay until released (or taken to make room)."""
        self.expiry.update(dict.fromkeys(regions, NEVER))

    def release(self, regions: Sequence[int], clock: int) -> None:
        """These regions are due now."""
        if regions:
            self.expiry.update(dict.fromkeys(regions, clock))
            self.ready.update(dict.fromkeys(regions))

    def forget(self, regions: Iterable[int]) -> None:
        """The regions left the record: no expiry (their entries go stale)."""
        expiry_map = self.expiry
        for region in regions:
            expiry_map.pop(region, None)

    def compact_if_bloated(self) -> None:
        """Rebuild the due heap from the live expiries once outdated entries dominate: a
        region written on every write leaves an outdated entry each time, and they would
        stay until their expiry (a million writes away at latency-first)."""
        if len(self._due) > 2 * len(self.expiry) + _DUE_SLACK:
            self._due = [(expiry, region, 1) for region, expiry in self.expiry.items()
                         if expiry != NEVER]
            heapq.heapify(self._due)

    # -- what may go -------------------------------------------------------------------

    def collect_due(self, clock: int) -> None:
        """Regions whose expiry the clock has passed, and due regions the mirror has
        passed since, become ready."""
        due, expiry_map, ready = self._due, self.expiry, self.ready
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

    def take_due(self, view: RecordView, protect: Collection[int], clock: int) -> list[int]:
        """The ready regions that may leave now (call ``collect_due`` first); the others
        are looked at again later."""
        chosen: list[int] = []
        later: list[int] = []
        expiry_map, leaving = self.expiry, self._leaving
        contains, evictable = view.contains, view.evictable
        gone: list[int] = []
        for region in self.ready:
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
        self.ready = {}
        if gone:
            self._forget_gone(gone)
        if later:
            # Spread the next look over as many writes as there are regions to look at
            # again, so a mirror that lags costs O(1) per write, not O(backlog).
            retry = clock + max(RETRY_WRITES, len(later))
            for region in later:
                expiry_map[region] = retry
                heapq.heappush(self._due, (retry, region, 1))
        return chosen

    def take_earliest(self, view: RecordView, need: int, protect: Collection[int],
                      taken: set[int], predicted: Collection[int],
                      unscheduled: Iterable[int]) -> list[int]:
        """Over capacity: ``need`` regions, the earliest expiries first, due or not.

        ``taken``: chosen already (grows); ``predicted``: not in the record yet,
        guessed by the miss being admitted; ``unscheduled``: regions that have no due
        entry (their expiry is NEVER), looked at once the heap runs short.

        Walks the due heap from its front (a full record is the appliance's steady
        state: sorting every expiry on every miss was most of its time on random
        writes). A region met on the way that may not leave yet is parked until the
        mirror has passed its latest write, not put back at the front: while the mirror
        catches up by region copies the record is full of such regions, and walking
        over all of them again on every miss cost milliseconds a write.
        """
        due, expiry_map, leaving, parked = self._due, self.expiry, self._leaving, self._parked
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
                    if region in predicted:
                        walked.append((expiry, region, 1))  # guessed by this very miss
                    else:
                        gone.append(region)  # a guess the record did not take, or shed
                else:
                    waiting.append(region)
        for entry in walked:
            heapq.heappush(due, entry)
        if gone:
            self._forget_gone(gone)
        for region in waiting:
            heapq.heappush(parked, (view.last_write_seq(region), region))
        if len(chosen) < need:
            # Regions without a due entry (all alike, and all may leave unless a write
            # is landing on one); then parked regions that a region copy has cleaned
            # since, a few per miss from where the last look stopped, so that a record
            # full of regions that may not leave costs each miss a bounded look, not
            # all of it.
            look = min(len(parked), _PARKED_LOOK + need)
            start = self._parked_cursor % len(parked) if parked else 0
            self._parked_cursor = start + look
            behind = (parked[(start + i) % len(parked)][1] for i in range(look))
            for region in itertools.chain(unscheduled, behind):
                if len(chosen) >= need:
                    break
                if region not in taken and region not in protect and evictable(region):
                    chosen.append(region)
                    taken.add(region)
                    leaving[region] = False
        return chosen

    def settle(self, left: Collection[int], clock: int) -> tuple[list[int], list[int]]:
        """The record's answer to the regions named since the last one: ``left`` are
        gone. Returns those of the named that left, and of them those shed at their
        time; the named that stayed are looked at again (their entries were taken)."""
        leaving = self._leaving
        if not leaving:
            return [], []
        self._leaving = {}
        left = set(left)
        gone: list[int] = []
        ghosts: list[int] = []
        expiry_map, due = self.expiry, self._due
        for region, at_its_time in leaving.items():
            if region in left:
                gone.append(region)
                if at_its_time:
                    ghosts.append(region)
            else:
                heapq.heappush(due, (expiry_map.setdefault(region, clock), region, 1))
        return gone, ghosts
