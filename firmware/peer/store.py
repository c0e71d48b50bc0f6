"""The record's store when the record lives on the peer: ``RecordStore`` over the pair.

The volume's ``Record`` (firmware/record/record.py) keeps deciding what a write adds —
the written regions and the policy's predicted ones — and when a mirrored region may
leave. This store carries those decisions to the pair core instead of the local NVRAM:

- ``commit(add, remove)``: the regions to add ride with the next write (one MARK batch
  for a miss, at most); removed regions are reported to the core as mirrored, with the
  generation the core snapshots then (``mirror_snapshot``): a region leaves the record
  only once it is clean and no write to it is in flight, so every write the core issued
  to it is on the second medium. The core may not be able to take one yet (a MARK still
  unacknowledged, frozen): the regions are offered on every tick (clears are lazy
  anyway), until the core no longer names them or the record takes them back;
- ``must_wait(regions)``: every write, hit or miss, asks the core (``HostWrite``); the
  answer is the write's id;
- ``durable(id)``: waits for the core's ``WriteProceed`` (the holder's FRAM has every
  region, the lease runs) and checks its deadline once more; a refusal raises OSError;
- ``ended(id)``: the write is on the local medium, or gave up (``WriteDone`` or
  ``WriteCancel``).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable

from firmware.peer.events import Mirrored
from firmware.peer.runtime import PairRuntime


class PeerRecordStore:
    def __init__(self, runtime: PairRuntime, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self._clock = clock
        self._next = 0
        self._predicted: list[int] = []
        self._issued: set[int] = set()  # core write ids the core let proceed
        self._current: dict[int, int] = {}  # the record's id -> the core's id now
        self._regions: dict[int, tuple[int, ...]] = {}
        self._uncleared: set[int] = set()
        # Set by the app once the record exists: is the region named there again?
        self.member: Callable[[int], bool] = lambda region: False
        # Active-active: does the peer own the region now? A prediction never asks the
        # peer for a region it owns (that would make regions ping-pong for nothing).
        self.peer_owns: Callable[[int], bool] = lambda region: False
        # Active-active: the core holding the peer's record, which names the peer's
        # regions to copy once it took over; it hears of mirrored regions too.
        self.also: list[PairRuntime] = []

    # -- what the appliance asks of its commits (as of GroupCommitStore) --------------

    @property
    def transactions(self) -> int:
        """MARK batches the holder acknowledged (the status' ``nvram_updates``)."""
        return self.runtime.core.counters.marks_acked

    @property
    def bytes_written(self) -> int:
        return 0  # written in the peer's FRAM; ``peer status`` counts its messages

    def start(self) -> None:
        pass  # the runtime is started by the pair node

    async def close(self) -> None:
        pass

    async def abandon(self) -> None:
        pass

    # -- RecordStore ------------------------------------------------------------------

    def commit(self, add: Iterable[int], remove: Iterable[int]) -> int:
        added = list(add)
        if added:
            self._predicted = added
        # Offered on the next tick: the record drops the regions only after this returns.
        self._uncleared.update(remove)
        return 0

    def must_wait(self, regions: range) -> int:
        peer_owns = self.peer_owns
        write = self._ask(tuple(regions), tuple(r for r in self._predicted
                                                if r not in regions and not peer_owns(r)))
        self._predicted = []
        self._current[write] = write
        return write

    def _ask(self, regions: tuple[int, ...], predicted: tuple[int, ...] = ()) -> int:
        self._next += 1
        self._regions[self._next] = regions
        self.runtime.host_write(self._next, regions, predicted)
        return self._next

    async def durable(self, transaction: int | None = None) -> None:
        if transaction is None:
            return  # every write acknowledged so far had its regions durable first
        while True:
            write = self._current[transaction]
            future = self.runtime.pending_write(write)
            if future is None:
                raise OSError(errno.EIO, "pair: write unknown to the pair runtime")
            deadline = await future
            self._issued.add(write)
            if deadline is None or self._clock() < deadline:
                return
            # The lease ended between the core's word and now (a stall, a lapse while a
            # link flaps): the write was not issued. Give it back and ask again: it
            # waits for the next lease, or is refused if this node turns out stale.
            self._finish(write, ok=False)
            self._current[transaction] = self._ask(self._regions.get(write, ()))

    def ended(self, transaction: int) -> None:
        self._finish(self._current.pop(transaction, transaction), ok=True)

    def _finish(self, write: int, *, ok: bool) -> None:
        issued = write in self._issued
        self._issued.discard(write)
        self._regions.pop(write, None)
        self.runtime.write_finished(write, issued=issued, ok=ok)

    def barrier(self) -> None:
        pass

    # -- clears -----------------------------------------------------------------------

    def offer_clears(self, regions: Iterable[int] | None = None) -> None:
        """Tell the core which left regions are mirrored; keep those it cannot take."""
        runtimes = [self.runtime, *self.also]
        for region in list(self._uncleared if regions is None else regions):
            if region not in self._uncleared:
                continue
            if self.member(region):
                self._uncleared.discard(region)  # the record named it again: its turn
                continue
            dirty = False
            for runtime in runtimes:
                core = runtime.core
                gen = core.mirror_snapshot(region)
                if gen is not None:
                    runtime.submit(Mirrored(region, gen))
                # A MARK still out keeps the region here until its ack: then the copy
                # made meanwhile can clear it (else it stays named, copied, for ever).
                dirty = dirty or core.will_be_dirty(region)
            if not dirty:
                self._uncleared.discard(region)

    @property
    def uncleared(self) -> int:
        return len(self._uncleared)
