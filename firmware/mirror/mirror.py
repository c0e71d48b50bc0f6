"""The asynchronous mirror: copies the volume's writes to the second medium.

Three states:

- *ordered*: every write is queued (bounded, in the order it was submitted)
  and applied to the second medium in runs; once a run is durable there the
  record learns that every write up to a sequence number is
  (``Record.mirrored_upto``; the bound allows for writes submitted out of
  sequence order). So the second medium always holds the volume as it was at
  the end of some run: a crash-consistent image.
- *catch-up*: when the backlog overflows (the link cannot keep up: DRBD's
  "pull-ahead"), the second medium fails, the record names regions at start-up,
  or a new link session needs it, the queue is dropped and the mirror copies
  whole regions from the local medium instead (``Record.mirrored_region``),
  pass after pass. When the mirror pulled ahead from ordered mode it knows every
  write the second medium is missing (the dropped queue, and each write since), so
  it copies only the 4 KiB blocks written in each region, not whole regions: small
  random writes would otherwise cost a region each (16 × the data at 64 KiB) just
  when the link is already behind. After a crash, a failure of the second medium or
  a new link session it knows nothing of the sort, and copies whole regions.
  New writes are queued again from the start of each pass;
  a pass that ends with the queue intact hands over to ordered mode, so a
  busy volume leaves catch-up without needing a quiet moment. A copy of the
  whole volume (a *sweep*) runs the same way when the remote holds nothing of
  ours. With ``checksum_resync`` the copy compares block digests first and
  sends only the blocks that differ.
- *degraded*: the second medium failed; the record keeps every region that may
  differ and the mirror retries (with back-off), resuming as catch-up.

Pipelining and rate control: a run is closed with ``flush_async()`` where the
second medium has it (the remote link), so several runs can be in flight. The
controller keeps about ``plan_ahead_s`` seconds of the measured acknowledged
throughput in flight (at least three runs, at most ``max_fill_bytes``) — DRBD's
c-plan-ahead/c-fill-target idea: enough to keep the link busy across the
round trip and the receiver's commit, little enough that a congested link
shows up as a growing queue, which past ``queue_limit_bytes`` switches to
catch-up instead of stalling the hosts (their writes never wait for the link).

The second medium's optional capabilities (pipelined runs, digests computed at
the far end, a connection, link sessions with their resync marks) are declared
in ``second.py`` and looked up once, when the mirror is built.

Medium I/O runs in one worker thread (or the executor the caller gives) so the
second medium's writes overlap the host's on the other core; all bookkeeping
happens on the event loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import enum
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from firmware.mirror.second import (
    Capabilities,
    SecondMedium,
    SessionHandshake,
    block_digests,
    differing_runs,
)
from firmware.record.record import Record, RecordFull
from hal.media.base import Medium
from hal.media.sticky import MediumFailed

log = logging.getLogger("tandem.mirror")

# The unit of the blocks written since the mirror pulled ahead (the bitmap granularity
# of DRBD's, and the page size of the hosts' file systems).
WRITTEN_BLOCK = 4096


class MirrorState(enum.Enum):
    ORDERED = "ordered"
    CATCH_UP = "catch-up"
    DEGRADED = "degraded"


@dataclass(slots=True)
class _Op:
    seq: int
    offset: int
    length: int
    data: bytes | None  # None: zeroes
    punch: bool
    queued_at: float


@dataclass(slots=True)
class _Epoch:
    """A run sent to the second medium and not yet acknowledged as durable."""

    future: asyncio.Future[Any]
    wire_bytes: int  # what it put on the link (fill target, throughput)
    seq: int | None = None  # ordered: every write up to this one
    payload_bytes: int = 0  # ordered: the writes' bytes; catch-up: the bytes it copies
    oldest: float | None = None  # ordered: when its first write was queued
    regions: list[int] = field(default_factory=list)  # catch-up: these regions...
    upto: int = 0  # ...as of every write up to this one
    handover: bool = False  # ordered: once durable, the remote is an image of the volume


@dataclass
class MirrorConfig:
    queue_limit_bytes: int = 64 << 20  # ordered backlog (queued + in flight) → pull ahead
    batch_bytes: int = 8 << 20  # one ordered run (one epoch on the link)
    copy_chunk_bytes: int = 4 << 20  # one catch-up run
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    plan_ahead_s: float = 2.0  # seconds of throughput kept in flight
    max_fill_bytes: int = 64 << 20  # never more than this in flight
    checksum_resync: str = "after-crash"  # "never" | "after-crash" | "always"
    checksum_block_bytes: int = 4096
    sweep_step_bytes: int = 64 << 20  # a full sync goes this far per pass, then dirty regions
    probe_interval_s: float = 1.0  # an idle mirror re-checks a disconnected link this often


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


@dataclass
class VerifyReport:
    state: str = "idle"  # running | done | stopped | failed
    total_bytes: int = 0
    checked_bytes: int = 0
    compared_bytes: int = 0  # clean regions actually compared
    differing: list[int] = field(default_factory=list)
    error: str | None = None
    started: float | None = None
    finished: float | None = None


class Mirror:
    def __init__(self, local: Medium, second: Medium, record: Record,
                 config: MirrorConfig | None = None,
                 on_progress: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, *,
                 executor: concurrent.futures.Executor | None = None) -> None:
        """``executor``: where medium I/O runs (the caller's, which it shuts down itself);
        by default one worker thread of the mirror's own."""
        self.local = local
        self.second = second
        self._second = SecondMedium(second)  # its capabilities, resolved once
        self.record = record
        self.config = config or MirrorConfig()
        self._on_progress = on_progress or (lambda: None)
        self._clock = clock
        self._queue: collections.deque[_Op] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._paused = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.state = MirrorState.CATCH_UP if record.dirty_regions() else MirrorState.ORDERED
        # Writes are queued in order: always when ordered, and during a catch-up pass
        # that may end straight in ordered mode (see _catch_up_pass).
        self._queueing = self.state is MirrorState.ORDERED
        # Regions named at start-up: a crash (or a stop mid-resync) left them; most are
        # probably on the remote already, so their resync compares digests first.
        self._after_crash = self.state is MirrorState.CATCH_UP
        # The blocks the second medium misses, per region (bit i: block i written),
        # for every region the catch-up must copy; None: not known (start-up after a
        # crash, a failure, a new session), copy whole regions.
        self._written: dict[int, int] | None = None if self._after_crash else {}
        # The masks of the regions the catch-up run being written copies.
        self._in_copy: dict[int, int] = {}
        self.last_error: str | None = None
        self._catch_up_since: float | None = clock() if self.state is MirrorState.CATCH_UP \
            else None
        self._pass_remaining = 0  # bytes left in the running catch-up pass
        self.copied_bytes = 0  # by region, since start
        self.applied_bytes = 0  # in order, since start
        self.resync_sent_bytes = 0  # by region: what was actually written to the second medium
        self.resync_skipped_bytes = 0  # by region: found equal by digest, not sent
        self.overflows = 0
        self._own_executor = executor is None
        self._executor: concurrent.futures.Executor = executor or ThreadPoolExecutor(
            1, thread_name_prefix="tandem-mirror")
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        # Pipelining.
        self._inflight: collections.deque[_Epoch] = collections.deque()
        self._inflight_bytes = 0
        self.throughput = Throughput()
        # Link sessions.
        self._session = 0  # the LinkedMedium session whose decision was acted on
        self.decision: str | None = None
        self._resync_marked = False  # begin_resync done in this session
        self._handover = False  # end_resync due before the next ordered run
        self._handover_op: _Op | None = None  # ...once the run holding this write is durable
        self._sweep: set[int] = set()  # regions to copy that the record does not name
        self._last_probe = float("-inf")
        # Online verify.
        self.verify_report = VerifyReport()
        self._verify_task: asyncio.Task[None] | None = None

    # -- called by the volume on the event loop -------------------------------------

    def submit_write(self, seq: int, offset: int, data: bytes) -> None:
        self._submit(_Op(seq, offset, len(data), data, False, self._clock()))

    def submit_zeroes(self, seq: int, offset: int, length: int, punch: bool) -> None:
        self._submit(_Op(seq, offset, length, None, punch, self._clock()))

    def _submit(self, op: _Op) -> None:
        self._idle.clear()
        if self.state is not MirrorState.ORDERED:
            self._note_written(op.offset, op.length)
        if self._queueing:
            cost = len(op.data) if op.data is not None else 64
            # The backlog is what waits here and what is on its way (DRBD's congestion-fill
            # counts data in flight too): past the limit, pull ahead rather than stall.
            backlog = self._queued_bytes + self._batch_bytes + (
                self._inflight_bytes if self.state is MirrorState.ORDERED else 0)
            if backlog + cost > self.config.queue_limit_bytes:
                if self.state is MirrorState.ORDERED:
                    # What the queue held is all the second medium will miss (runs on
                    # their way land, or fail and make the mirror forget it all).
                    for queued in self._queue:
                        self._note_written(queued.offset, queued.length)
                    self._note_written(op.offset, op.length)
                    self._enter_catch_up("queue overflow", known=True)
                else:
                    self._stop_queueing()  # this pass cannot end in ordered mode
            else:
                self._queue.append(op)
                self._queued_bytes += cost
        self._wake.set()

    def force_region_copy(self) -> None:
        """Some write did not reach the queue intact: copy by region from now on."""
        if self.state is MirrorState.ORDERED:
            self._enter_catch_up("a write could not be queued")
        self._written = None
        self._stop_queueing()
        self._wake.set()

    def _note_written(self, offset: int, length: int) -> None:
        """Remember the blocks of a write the second medium will not get in order."""
        written = self._written
        if written is None:
            return
        shift = self.record.region_shift
        per_region = (1 << shift) // WRITTEN_BLOCK
        first = offset // WRITTEN_BLOCK
        last = (offset + max(length, 1) - 1) // WRITTEN_BLOCK
        while first <= last:
            region, block = divmod(first, per_region)
            upto = min(last, (region + 1) * per_region - 1) - region * per_region
            written[region] = written.get(region, 0) | \
                (((1 << (upto - block + 1)) - 1) << block)
            first = (region + 1) * per_region

    def _stop_queueing(self) -> None:
        self._queueing = False
        self._handover_op = None
        self._queue.clear()
        self._queued_bytes = 0

    @property
    def capabilities(self) -> Capabilities:
        """What the second medium can do beyond a Medium (looked up once, at start)."""
        return self._second.capabilities

    # -- operator controls ----------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()
        self._wake.set()

    # -- figures --------------------------------------------------------------------

    def lag_bytes(self) -> int:
        if self.state is MirrorState.ORDERED:
            return (self._queued_bytes + self._batch_bytes
                    + sum(e.payload_bytes for e in self._inflight))
        regions = set(self.record.dirty_regions()) | self._sweep
        shift = self.record.region_shift
        written = self._written
        if written is None:
            return len(regions) << shift
        # What the catch-up will copy: the blocks noted for a region, or all of it.
        noted = {**self._in_copy, **written}
        return sum(self._copy_bytes(region, noted) for region in regions)

    def lag_seconds(self) -> float:
        now = self._clock()
        if self.state is MirrorState.ORDERED:
            candidates = [e.oldest for e in self._inflight if e.oldest is not None]
            if self._batch_oldest is not None:
                candidates.append(self._batch_oldest)
            if self._queue:
                candidates.append(self._queue[0].queued_at)
            return max(0.0, now - min(candidates)) if candidates else 0.0
        return max(0.0, now - (self._catch_up_since or now))

    def resync_remaining_bytes(self) -> int:
        if self.state is MirrorState.ORDERED:
            return 0
        return max(self._pass_remaining, self.lag_bytes())

    def fill_target(self, unit: int | None = None) -> int:
        """Bytes the controller lets be in flight: plan_ahead_s of throughput, ≥ 3 runs.

        Three runs: one on the wire, one being committed at the far end, one queued.
        """
        unit = unit or self.config.batch_bytes
        rate = self.throughput.rate()
        target = rate * self.config.plan_ahead_s if rate else 0.0
        return int(min(max(target, 3 * unit), max(self.config.max_fill_bytes, 3 * unit)))

    def status(self) -> dict[str, object]:
        rate = self.throughput.rate()
        out: dict[str, object] = {
            "mirror_state": "paused" if self._paused else self.state.value,
            "mirror_lag_bytes": self.lag_bytes(),
            "mirror_lag_seconds": round(self.lag_seconds(), 3),
            "mirror_queue_bytes": self._queued_bytes,
            "mirror_inflight_bytes": self._inflight_bytes,
            "mirror_fill_target_bytes": self.fill_target(),
            "mirror_throughput_bytes": int(rate) if rate else 0,
            "mirror_replicated_write": self.record.mirrored_seq,
            "mirror_applied_bytes": self.applied_bytes,
            "mirror_copied_bytes": self.copied_bytes,
            "mirror_overflows": self.overflows,
            "mirror_error": self.last_error,
            "resync_remaining_bytes": self.resync_remaining_bytes(),
            "resync_sent_bytes": self.resync_sent_bytes,
            "resync_skipped_bytes": self.resync_skipped_bytes,
            "resync_checksums": self._checksums_now() if self.state is not MirrorState.ORDERED
            else None,
        }
        for key, value in self._second.status().items():
            out[f"link_{key}"] = value
        v = self.verify_report
        out.update({
            "verify_state": v.state,
            "verify_checked_bytes": v.checked_bytes,
            "verify_differing_regions": len(v.differing),
            "verify_error": v.error,
        })
        return out

    async def drained(self) -> None:
        """Wait until the second medium holds every write submitted so far."""
        while True:
            if self._is_drained():
                return
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()

    def _is_drained(self) -> bool:
        linked = self._second.linked
        if linked is not None and not (self._session == linked.sessions
                                       and self._second.connected):
            return False  # what the remote holds is known only in a session acted on
        return (self.state is MirrorState.ORDERED and not self._queue and not self._batch_bytes
                and not self._inflight and not self._handover and not self._sweep
                and self.record.mirrored_seq >= self.record.completed_seq())

    # -- the copier -----------------------------------------------------------------

    _batch_bytes = 0
    _batch_oldest: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mirror")

    async def close(self) -> None:
        for task in (self._verify_task, self._task):
            if task:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def _enter_catch_up(self, why: str, known: bool = False) -> None:
        """``known``: every write the second medium misses has been noted (an overflow)."""
        if not known:
            self._written = None
        if self.state is MirrorState.ORDERED:
            log.warning("mirror: %s; copying by region from the local medium", why)
            self.overflows += why == "queue overflow"
            self._catch_up_since = self._clock()
        self.state = MirrorState.CATCH_UP if self.last_error is None else MirrorState.DEGRADED
        self._stop_queueing()

    async def _run(self) -> None:
        delay = self.config.retry_initial_s
        while True:
            await self._resumed.wait()
            try:
                if self.state is MirrorState.ORDERED:
                    await self._ordered_step()
                else:
                    await self._catch_up_pass()
                if self.last_error is not None:
                    log.warning("mirror: second medium %s is back", self.second.name)
                    self.last_error = None
                    self.record.enforce_capacity = True
                    if self.state is MirrorState.DEGRADED:
                        self.state = MirrorState.CATCH_UP
                delay = self.config.retry_initial_s
            except OSError as exc:
                await self._settle_inflight()
                self._fail(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)

    def _signal_idle(self) -> None:
        if self._is_drained():
            self._idle.set()

    def _fail(self, exc: OSError) -> None:
        # A failed local medium (its flush failed under the mirror's copy) says so itself.
        message = str(exc.strerror) if isinstance(exc, MediumFailed) \
            else f"second medium {self.second.name}: {exc}"
        if message != self.last_error:
            log.error("mirror degraded: %s; regions stay in the record", message)
        self.last_error = message
        self._batch_bytes = 0
        self._batch_oldest = None
        self._second.forget_ahead()
        # Everything unacknowledged is written off (its regions stay in the record), so
        # the medium need not report that loss again to the next run.
        self._second.reset()
        # Hosts keep writing: the record may now exceed its budget (it covers the volume).
        self.record.enforce_capacity = False
        self._written = None  # what the second medium lost is not known
        if self.state is MirrorState.ORDERED:
            self._catch_up_since = self._clock()
        self.state = MirrorState.DEGRADED
        self._stop_queueing()
        self._on_progress()  # writers waiting for room may go on now

    # -- in-flight runs -------------------------------------------------------------

    def _track(self, epoch: _Epoch) -> None:
        self._inflight.append(epoch)
        self._inflight_bytes += epoch.wire_bytes

    def _retire_done(self) -> None:
        """Account for acknowledged runs, oldest first; raise a failed run's error."""
        record = self.record
        progressed = False
        while self._inflight and self._inflight[0].future.done():
            epoch = self._inflight.popleft()
            self._inflight_bytes -= epoch.wire_bytes
            epoch.future.result()  # raises if the run was lost
            self.throughput.add(self._clock(), epoch.wire_bytes)
            if epoch.seq is not None:
                self.applied_bytes += epoch.payload_bytes
                record.mirrored_upto(epoch.seq)
                if epoch.handover:
                    self._handover = True
            else:
                shift = record.region_shift
                for region in epoch.regions:
                    record.mirrored_region(region, epoch.upto)
                    self._sweep.discard(region)
                copied = len(epoch.regions) << shift
                self.copied_bytes += copied
                self._pass_remaining = max(0, self._pass_remaining - epoch.payload_bytes)
            progressed = True
        if progressed:
            self._on_progress()

    async def _wait_oldest(self, also_wake: bool = False) -> None:
        """Until the oldest run in flight is settled (or, with also_wake, new writes came)."""
        oldest = self._inflight[0].future
        if not also_wake:
            await asyncio.wait([oldest])
            return
        self._wake.clear()
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait([oldest, waker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waker.cancel()

    async def _retire_all(self) -> None:
        while self._inflight:
            await self._wait_oldest()
            self._retire_done()

    async def _settle_inflight(self) -> None:
        """After a failure: keep what was acknowledged before it, write off the rest."""
        if self._inflight:
            await asyncio.wait([e.future for e in self._inflight])
            try:
                self._retire_done()
            except OSError:
                pass
        self._inflight.clear()
        self._inflight_bytes = 0

    # -- link sessions --------------------------------------------------------------

    async def _ensure_session(self) -> None:
        """Connect the second medium if it connects; act on a new link session's decision."""
        second = self._second
        if not second.capabilities.connects:
            return
        loop = asyncio.get_running_loop()
        handshake = await loop.run_in_executor(self._executor, second.connect)
        self._last_probe = self._clock()
        linked = second.linked
        if linked is None or handshake is None or linked.sessions == self._session:
            return
        self._session = linked.sessions
        self._act_on(handshake)

    def _act_on(self, handshake: SessionHandshake) -> None:
        value = handshake.decision.value
        self.decision = value
        # generations.decide() says in-sync only of a consistent remote.
        self._resync_marked = not handshake.remote.consistent
        log.info("mirror: link session %d: %s", self._session, handshake.explanation)
        if value == "full-sync" and not self._sweep:
            self._sweep = set(range(self.record.nregions))
        if value != "in-sync":
            # Behind, blank, or mid-resync: bring it up to date by region, then hand over.
            self._handover = False
            self._enter_catch_up(f"link session: {value}")

    def _session_changed(self) -> bool:
        linked = self._second.linked
        return linked is not None and linked.sessions != self._session

    # -- ordered --------------------------------------------------------------------

    async def _ordered_step(self) -> None:
        self._retire_done()
        loop = asyncio.get_running_loop()
        if self._handover:
            await self._ensure_session()
            if self.state is not MirrorState.ORDERED:
                return
            await self._retire_all()
            linked = self._second.linked
            assert linked is not None  # only a linked medium is handed over
            await loop.run_in_executor(self._executor, linked.end_resync)
            if self._session_changed():
                return  # the next step sees the new session
            self._handover = False
            self._resync_marked = False
            log.info("mirror: remote copy is consistent again")
            return
        if self._queue and self._inflight_bytes < self.fill_target(self.config.batch_bytes):
            await self._send_batch()
            return
        if self._inflight:
            await self._wait_oldest(also_wake=not self._queue)
            return
        if not self._second.connected \
                and self._clock() - self._last_probe >= self.config.probe_interval_s:
            await self._ensure_session()  # show a refused or unreachable link in the status
            return
        self._signal_idle()
        self._wake.clear()
        timeout = self.config.probe_interval_s if not self._second.connected else None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _send_batch(self) -> None:
        await self._ensure_session()
        if self.state is not MirrorState.ORDERED or not self._queue:
            return
        batch: list[_Op] = []
        size = 0
        while self._queue and size < self.config.batch_bytes:
            op = self._queue.popleft()
            batch.append(op)
            size += op.length if op.data is not None else 64
        self._queued_bytes -= size
        self._batch_bytes = size
        self._batch_oldest = batch[0].queued_at
        # Writes may reach the queue out of sequence order (one waits for its record
        # transaction while a later one goes ahead). Every write up to completed_seq()
        # has ended, so it was queued before now: this batch or an earlier one has it,
        # unless it is still queued behind this batch. (Not batch[-1].seq: a write that
        # overtook a waiting miss would then never count as mirrored.)
        upto = self.record.completed_seq()
        if self._queue:
            upto = min(upto, min(op.seq for op in self._queue) - 1)
        handover = self._handover_op is not None and any(op is self._handover_op
                                                         for op in batch)
        if handover:
            self._handover_op = None
        loop = asyncio.get_running_loop()
        try:
            future = await loop.run_in_executor(self._executor, self._write_batch, batch)
        finally:
            self._batch_bytes = 0
            self._batch_oldest = None
        if self._session_changed():
            # The run reconnected on its way: it went to a session whose decision was not
            # acted on. Its regions stay in the record; catch up under the new session.
            self._enter_catch_up("the link reconnected")
            return
        self._track(_Epoch(asyncio.wrap_future(future), size, seq=upto,
                           payload_bytes=sum(op.length for op in batch),
                           oldest=batch[0].queued_at, handover=handover))
        self._retire_done()

    def _write_batch(self, batch: list[_Op]) -> concurrent.futures.Future[Any]:
        second = self.second
        for op in batch:
            if op.data is not None:
                second.pwrite(op.offset, op.data)
            else:
                second.write_zeroes(op.offset, op.length, punch=op.punch)
        # Durable on both sides before the record may let the regions go: a local disk
        # with a volatile cache could otherwise lose, at a power cut, data the second
        # medium keeps -- in a region the record no longer names.
        self.local.flush()
        return self._second.close_run()

    # -- catch-up -------------------------------------------------------------------

    def _checksums_now(self) -> bool:
        mode = self.config.checksum_resync
        if mode == "always":
            return True
        if mode == "never":
            return False
        # after-crash: where the remote computes digests itself (no read-back over the link)
        return self._second.capabilities.digests and (self._after_crash or bool(self._sweep))

    def _sweep_portion(self) -> list[int]:
        if not self._sweep:
            return []
        count = max(1, self.config.sweep_step_bytes >> self.record.region_shift)
        return sorted(self._sweep)[:count]

    async def _catch_up_pass(self) -> None:
        """Copy every dirty region from the local medium, then return to ordered mode.

        From the moment the pass takes its list of dirty regions, new writes are also
        queued in order. If the queue holds out until the pass is done, every write
        submitted before the list was taken is on the second medium (its region was
        clean, or has been copied since) and every later one is in the queue: ordered
        mode takes over from there. So a busy volume does not need an instant without
        writes to leave catch-up. If the queue overflows, the next pass starts over.
        """
        await self._retire_all()  # ordered runs still in flight land first
        await self._ensure_session()
        record = self.record
        upto = record.completed_seq()
        work = sorted(set(record.dirty_regions()).union(self._sweep_portion()))
        if not work:
            self._finish_catch_up()
            return
        self._stop_queueing()
        self._queueing = True  # no await since the list was taken
        loop = asyncio.get_running_loop()
        linked = self._second.linked
        if linked is not None and not self._resync_marked:
            await loop.run_in_executor(self._executor, linked.begin_resync)
            self._resync_marked = True
        checksums = self._checksums_now()
        chunks, self._pass_remaining = self._chunks(work)
        try:
            for index, chunk in enumerate(chunks):
                await self._resumed.wait()
                self._retire_done()
                while self._inflight and \
                        self._inflight_bytes >= self.fill_target(self.config.copy_chunk_bytes):
                    await self._wait_oldest()
                    self._retire_done()
                if checksums:
                    following = chunks[index + 1] if index + 1 < len(chunks) else None
                    job = functools.partial(self._copy_regions, chunk, checksums=True,
                                            following=following)
                else:
                    job = functools.partial(self._copy_regions, chunk)
                # The blocks to copy, as noted until now (later writes are noted again).
                written = self._written
                self._in_copy = {} if written is None else {
                    region: written.pop(region) for region in chunk if region in written}
                future, sent = await loop.run_in_executor(self._executor, job)
                if self._session_changed():
                    raise _NewSession()
                planned = sum(self._copy_bytes(region, self._in_copy) for region in chunk)
                self._track(_Epoch(asyncio.wrap_future(future), sent, regions=chunk,
                                   upto=upto, payload_bytes=planned))
            await self._retire_all()
        except _NewSession:
            self._stop_queueing()
            self._written = None  # the new session decides what the remote holds
            await self._settle_inflight()
            return  # the next pass acts on the new session
        except BaseException:
            self._stop_queueing()
            raise
        finally:
            self._second.forget_ahead()
            self._in_copy = {}
        self._pass_remaining = 0
        if self._queueing and not self._sweep:
            self._resume_ordered()
        elif not record.dirty_regions() and not self._sweep:
            self._finish_catch_up()
        else:
            self._stop_queueing()

    def _resume_ordered(self) -> None:
        """After a pass whose writes were all queued: the queue carries on in order."""
        log.info("mirror: caught up; back to ordered mirroring (%d bytes queued meanwhile)",
                 self._queued_bytes)
        # Every write up to ``bound`` ended before it could be queued behind the queue's
        # oldest, so it was submitted before the pass began: it is on the second medium.
        bound = self.record.completed_seq()
        if self._queue:
            bound = min(bound, min(op.seq for op in self._queue) - 1)
        self.record.mirrored_upto(bound)
        self.state = MirrorState.ORDERED
        self._catch_up_since = None
        self._after_crash = False
        self._written = {}  # what the second medium misses is in the queue again
        # The remote becomes an image of the volume once the writes queued during the
        # pass are on it too (the copies may hold some of them already, out of order).
        linked = self._second.linked is not None
        if linked and self._queue:
            self._handover_op = self._queue[-1]
        else:
            self._handover = linked
        self._on_progress()
        self._wake.set()

    def _finish_catch_up(self) -> None:
        # Nothing is dirty and no await separates the check from the switch, so every
        # write so far is on the second medium and every later one will be queued.
        self.record.mirrored_upto(self.record.completed_seq())
        if self.state is not MirrorState.ORDERED:
            log.info("mirror: caught up; back to ordered mirroring")
        self.state = MirrorState.ORDERED
        self._stop_queueing()
        self._queueing = True
        self._catch_up_since = None
        self._after_crash = False
        self._written = {}
        # The remote is now an exact image of the volume: say so before the next run.
        self._handover = self._second.linked is not None
        self._on_progress()

    def _extents(self, regions: list[int], masks: dict[int, int] | None = None
                 ) -> Iterator[tuple[int, int]]:
        """Byte ranges of runs of consecutive regions, within both media; of a region
        that ``masks`` has, only the runs of its noted blocks."""
        shift = self.record.region_shift
        whole = 1 << shift
        size = min(self.local.size, self.second.size)
        start = end = 0
        for region in regions:
            base = region << shift
            mask = masks.get(region) if masks else None
            runs: Iterable[tuple[int, int]] = ((base, base + whole),) if mask is None \
                else _block_runs(base, mask)
            for run_start, run_end in runs:
                if run_start == end:
                    end = run_end
                    continue
                yield from _clip(start, end, size)
                start, end = run_start, run_end
        yield from _clip(start, end, size)

    def _copy_bytes(self, region: int, masks: dict[int, int]) -> int:
        """Bytes a catch-up copies of a region: its noted blocks, or all of it."""
        mask = masks.get(region)
        whole = 1 << self.record.region_shift
        return whole if mask is None else min(whole, mask.bit_count() * WRITTEN_BLOCK)

    def _chunks(self, work: list[int]) -> tuple[list[list[int]], int]:
        """The pass's regions in runs of about copy_chunk_bytes to copy each, and the
        bytes they copy in all."""
        chunks: list[list[int]] = []
        chunk: list[int] = []
        size = total = 0
        masks = self._written or {}
        for region in work:
            chunk.append(region)
            size += self._copy_bytes(region, masks)
            if size >= self.config.copy_chunk_bytes:
                chunks.append(chunk)
                total += size
                chunk, size = [], 0
        if chunk:
            chunks.append(chunk)
        return chunks, total + size

    def _copy_regions(self, regions: list[int], checksums: bool = False,
                      following: list[int] | None = None
                      ) -> tuple[concurrent.futures.Future[Any], int]:
        """(worker) Copy regions to the second medium; the run's future and bytes sent."""
        second = self.second
        block = self.config.checksum_block_bytes
        if following:
            self._second.ask_ahead(self._extents(following), block)
        sent = 0
        for offset, length in self._extents(regions, self._in_copy):
            data = self.local.pread(offset, length)
            if checksums:
                theirs = self._second.digests(offset, length, block)
                ours = block_digests(data, block)
                differs = 0
                for start, end in differing_runs(ours, theirs, block, length):
                    second.pwrite(offset + start, data[start:end])
                    differs += end - start
                sent += differs
                self.resync_skipped_bytes += length - differs
            elif data.count(0) == length:
                second.write_zeroes(offset, length)
                sent += 64
            else:
                second.pwrite(offset, data)
                sent += length
        self.local.flush()  # what was copied must be durable locally too (see _write_batch)
        self.resync_sent_bytes += sent
        return self._second.close_run(), sent

    # -- online verify --------------------------------------------------------------

    def start_verify(self) -> VerifyReport:
        """Compare both media by digest in the background, region by region, while serving.

        A clean region (the record says the second medium has it) that differs is
        reported and put back in the record, so the mirror copies it again.
        """
        if self._verify_task is not None and not self._verify_task.done():
            return self.verify_report
        record = self.record
        self.verify_report = VerifyReport("running", total_bytes=record.geometry.volume_size,
                                          started=time.time())
        self._verify_task = asyncio.get_running_loop().create_task(
            self._verify(self.verify_report), name="verify")
        return self.verify_report

    def stop_verify(self) -> VerifyReport:
        if self._verify_task is not None and not self._verify_task.done():
            self._verify_task.cancel()
            self.verify_report.state = "stopped"
            self.verify_report.finished = time.time()
        return self.verify_report

    async def _verify(self, report: VerifyReport) -> None:
        record = self.record
        shift = record.region_shift
        per_chunk = max(1, self.config.copy_chunk_bytes >> shift)
        loop = asyncio.get_running_loop()
        try:
            for first in range(0, record.nregions, per_chunk):
                await self._resumed.wait()
                if self.state is MirrorState.DEGRADED:
                    raise OSError(f"mirror degraded: {self.last_error}")
                chunk = range(first, min(first + per_chunk, record.nregions))
                clean = [r for r in chunk if record.is_clean(r) and r not in self._sweep]
                if clean:
                    differing = await loop.run_in_executor(self._executor,
                                                           self._compare_regions, clean)
                    # A region written meanwhile is dirty now: the mirror copies it anyway.
                    confirmed = [r for r in differing
                                 if record.is_clean(r) and r not in self._sweep]
                    for region in confirmed:
                        await self._recopy(region)
                    report.differing += confirmed
                    report.compared_bytes += len(clean) << shift
                report.checked_bytes = min(report.total_bytes, chunk.stop << shift)
            report.state = "done"
        except asyncio.CancelledError:
            report.state = "stopped"
            raise
        except Exception as exc:  # noqa: BLE001 - reported on the console, not lost
            report.state = "failed"
            report.error = str(exc)
            log.error("verify failed: %s", exc)
        finally:
            report.finished = time.time()
        if report.differing:
            log.warning("verify: %d regions differed; copying them again", len(report.differing))

    def _compare_regions(self, regions: list[int]) -> list[int]:
        """(worker) Regions whose bytes differ between the two media."""
        shift = self.record.region_shift
        block = self.config.checksum_block_bytes
        differing: list[int] = []
        for offset, length in self._extents(regions):
            ours = block_digests(self.local.pread(offset, length), block)
            theirs = self._second.digests(offset, length, block)
            # A run of differing blocks may span regions: name each one it touches.
            for start, end in differing_runs(ours, theirs, block, length):
                differing += range((offset + start) >> shift, ((offset + end - 1) >> shift) + 1)
        return sorted(set(differing))

    async def _recopy(self, region: int) -> None:
        """Put a region back in the record (persisted, as a host write would) to copy it.

        Durable before the copy: a power cut after it must still find the region named.
        """
        record = self.record
        shift = record.region_shift
        offset = region << shift
        length = min(1 << shift, record.geometry.volume_size - offset)
        try:
            ticket = record.begin_write(offset, length, self._clock())
        except RecordFull:
            self._sweep.add(region)  # no room now: copy it without naming it
        else:
            try:
                await record.durable(ticket)
            finally:
                record.end_write(ticket)
        self.force_region_copy()


class _NewSession(Exception):
    """The link reconnected during a pass: act on the new session first."""


def _block_runs(base: int, mask: int) -> Iterator[tuple[int, int]]:
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
