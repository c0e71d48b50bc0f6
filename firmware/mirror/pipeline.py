"""The ordered queue and the runs in flight to the second medium, with their futures.

Pipelining and rate control: a run is closed with ``flush_async()`` where the
second medium has it (the remote link), so several runs can be in flight. The
controller keeps about ``plan_ahead_s`` seconds of the measured acknowledged
throughput in flight (at least three runs, at most ``max_fill_bytes``) — DRBD's
c-plan-ahead/c-fill-target idea: enough to keep the link busy across the
round trip and the receiver's commit, little enough that a congested link
shows up as a growing queue, which past ``queue_limit_bytes`` switches to
catch-up instead of stalling the hosts (their writes never wait for the link).

This module only keeps the figures and the order; what a write or a durable
run means for the record is the copier's (``mirror.py``).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

# What a write of zeroes costs on the link (a header, no data).
ZEROES_COST = 64


@dataclass(slots=True)
class QueuedWrite:
    seq: int
    offset: int
    length: int
    data: bytes | None  # None: zeroes
    punch: bool
    queued_at: float

    @property
    def cost(self) -> int:
        return len(self.data) if self.data is not None else ZEROES_COST


@dataclass(slots=True)
class Run:
    """A run sent to the second medium and not yet acknowledged as durable."""

    future: asyncio.Future[Any]
    wire_bytes: int  # what it put on the link (fill target, throughput)
    seq: int | None = None  # ordered: every write up to this one
    payload_bytes: int = 0  # ordered: the writes' bytes; catch-up: the bytes it copies
    oldest: float | None = None  # ordered: when its first write was queued
    regions: list[int] = field(default_factory=list)  # catch-up: these regions...
    upto: int = 0  # ...as of every write up to this one
    extents: list[tuple[int, int]] = field(default_factory=list)  # ordered: (offset, length)
    handover: bool = False  # ordered: once durable, the remote is an image of the volume


class Throughput:
    """Bytes per second acknowledged over the last few seconds (the controller's input)."""

    def __init__(self, window_s: float = 3.0) -> None:
        self.window_s = window_s
        self._events: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, now: float, nbytes: int) -> None:
        self._events.append((now, nbytes))
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()

    def rate(self) -> float | None:
        if len(self._events) < 2:
            return None
        span = self._events[-1][0] - self._events[0][0]
        if span < 0.05:
            return None
        return sum(n for _, n in list(self._events)[1:]) / span


def fill_target(rate: float | None, unit: int, plan_ahead_s: float, max_fill_bytes: int) -> int:
    """Bytes to keep in flight: plan_ahead_s of throughput, ≥ 3 runs of ``unit``.

    Three runs: one on the wire, one being committed at the far end, one queued.
    """
    target = rate * plan_ahead_s if rate else 0.0
    return int(min(max(target, 3 * unit), max(max_fill_bytes, 3 * unit)))


class Pipeline:
    """Writes waiting in order, the batch being written, and the runs in flight."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.queue: collections.deque[QueuedWrite] = collections.deque()
        self.queued_bytes = 0
        self.batch_bytes = 0  # the batch a worker is writing now
        self.batch: list[QueuedWrite] = []
        self.batch_oldest: float | None = None
        self.inflight: collections.deque[Run] = collections.deque()
        self.inflight_bytes = 0
        self.throughput = Throughput()
        # The last write queued during a catch-up pass that ended in ordered mode: the
        # remote is an image of the volume once the run holding it is durable.
        self.handover_write: QueuedWrite | None = None

    # -- the queue ------------------------------------------------------------------

    def backlog(self, with_inflight: bool) -> int:
        """What waits here and (ordered: DRBD's congestion-fill counts data in flight
        too) what is on its way."""
        return self.queued_bytes + self.batch_bytes + (self.inflight_bytes if with_inflight
                                                       else 0)

    def enqueue(self, write: QueuedWrite) -> None:
        self.queue.append(write)
        self.queued_bytes += write.cost

    def drop_queue(self) -> None:
        self.handover_write = None
        self.queue.clear()
        self.queued_bytes = 0

    def mark_handover(self) -> None:
        self.handover_write = self.queue[-1]

    def first_queued_seq(self) -> int | None:
        """The lowest sequence number still queued (writes may be queued out of order)."""
        return min(write.seq for write in self.queue) if self.queue else None

    def take_batch(self, limit: int) -> tuple[list[QueuedWrite], int]:
        """Up to about ``limit`` bytes from the head of the queue, now being written."""
        batch: list[QueuedWrite] = []
        size = 0
        while self.queue and size < limit:
            write = self.queue.popleft()
            batch.append(write)
            size += write.cost
        self.queued_bytes -= size
        self.batch_bytes = size
        self.batch = batch
        self.batch_oldest = batch[0].queued_at if batch else None
        return batch, size

    def batch_written(self) -> None:
        self.batch = []
        self.batch_bytes = 0
        self.batch_oldest = None

    def holds_handover(self, batch: list[QueuedWrite]) -> bool:
        marked = self.handover_write
        return marked is not None and any(write is marked for write in batch)

    def touches(self, regions: Collection[int], shift: int) -> bool:
        """Does a queued write, the batch being written or a run in flight touch one of
        ``regions`` (of ``1 << shift`` bytes)?"""
        def hit(offset: int, length: int) -> bool:
            first, last = offset >> shift, (offset + max(length, 1) - 1) >> shift
            return any(first <= r <= last for r in regions)

        for write in (*self.queue, *self.batch):
            if hit(write.offset, write.length):
                return True
        for run in self.inflight:
            if any(r in regions for r in run.regions):
                return True
            if any(hit(offset, length) for offset, length in run.extents):
                return True
        return False

    # -- runs in flight -------------------------------------------------------------

    def track(self, run: Run) -> None:
        self.inflight.append(run)
        self.inflight_bytes += run.wire_bytes

    def durable(self) -> Iterator[Run]:
        """The acknowledged runs, oldest first; raises a lost run's error (the runs
        after it stay in flight, for ``settled``)."""
        while self.inflight and self.inflight[0].future.done():
            run = self.inflight.popleft()
            self.inflight_bytes -= run.wire_bytes
            run.future.result()  # raises if the run was lost
            self.throughput.add(self._clock(), run.wire_bytes)
            yield run

    async def wait_oldest(self, wake: asyncio.Event | None = None) -> None:
        """Until the oldest run in flight is settled (or, given ``wake``, it is set)."""
        oldest = self.inflight[0].future
        if wake is None:
            await asyncio.wait([oldest])
            return
        wake.clear()
        waker = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([oldest, waker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    async def settled(self) -> None:
        """Until every run in flight is acknowledged or lost."""
        if self.inflight:
            await asyncio.wait([run.future for run in self.inflight])

    def write_off(self) -> None:
        """Forget the runs in flight (a failure: their regions stay in the record)."""
        self.inflight.clear()
        self.inflight_bytes = 0

    # -- figures --------------------------------------------------------------------

    def pending_bytes(self) -> int:
        """Ordered lag: the writes queued, being written and in flight."""
        return (self.queued_bytes + self.batch_bytes
                + sum(run.payload_bytes for run in self.inflight))

    def oldest_pending(self) -> float | None:
        """When the oldest write not yet durable on the second medium was queued."""
        candidates = [run.oldest for run in self.inflight if run.oldest is not None]
        if self.batch_oldest is not None:
            candidates.append(self.batch_oldest)
        if self.queue:
            candidates.append(self.queue[0].queued_at)
        return min(candidates) if candidates else None
