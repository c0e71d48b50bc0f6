"""The asynchronous mirror: copies the volume's writes to the second medium.

``Mirror`` is the copier: it takes the volume's writes, decides from the mode
what to do with them, and moves bytes from the local medium to the second one.
What it decides with lives beside it, each part small enough to read alone:

- ``state``: the mode (ordered / catch-up / degraded and the flags that go
  with it) as one value, and every change of it in one table;
- ``masks``: which 4 KiB blocks of each region the second medium misses;
- ``pipeline``: the ordered queue and the runs in flight, with their futures;
- ``second``: the second medium's optional capabilities (pipelined runs,
  digests, connection, link sessions), resolved once;
- ``verify``: online verify.

In ordered mode a run is durable on the second medium before the record learns
that every write up to a sequence number is (``Record.mirrored_upto``; the bound
allows for writes submitted out of sequence order). In catch-up the mirror copies
regions, or their written blocks, from the local medium pass after pass
(``Record.mirrored_region``); a pass that ends with the queue intact hands over to
ordered mode, so a busy volume leaves catch-up without needing a quiet moment. A
copy of the whole volume (a *sweep*) runs the same way when the remote holds
nothing of ours. With ``checksum_resync`` the copy compares block digests first
and sends only the blocks that differ.

Medium I/O runs in one worker thread (or the executor the caller gives) so the
second medium's writes overlap the host's on the other core; all bookkeeping
happens on the event loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from firmware.mirror.masks import WRITTEN_BLOCK, BlockMasks, extents
from firmware.mirror.pipeline import Pipeline, QueuedWrite, Run, Throughput, fill_target
from firmware.mirror.second import (
    Capabilities,
    SecondMedium,
    SessionHandshake,
    block_digests,
    differing_runs,
)
from firmware.mirror.state import Event, MayCopy, MirrorState, Mode, this_appliance_copies
from firmware.mirror.verify import Verifier, VerifyReport
from firmware.record.record import Record, RecordFull
from firmware.tasks import cancel_and_wait
from hal.media.base import Medium
from hal.media.sticky import MediumFailed

__all__ = ["WRITTEN_BLOCK", "Mirror", "MirrorConfig", "MirrorState", "VerifyReport"]

log = logging.getLogger("tandem.mirror")

T = TypeVar("T")


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
        self.record = record
        self.config = config or MirrorConfig()
        self._on_progress = on_progress or (lambda: None)
        self._clock = clock
        self._second = SecondMedium(second)
        self._mode = Mode.initial(regions_named=bool(record.dirty_regions()),
                                  linked=self._second.capabilities.linked)
        self._masks = BlockMasks(record.region_shift, known=self._mode.blocks_known)
        self._pipeline = Pipeline(clock)
        self._wake = asyncio.Event()
        self._resumed = asyncio.Event()  # set unless paused (follows the mode)
        self._resumed.set()
        self._idle = asyncio.Event()
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
        # Link sessions.
        self._session = 0  # the LinkedMedium session whose decision was acted on
        self.decision: str | None = None
        self._sweep: set[int] = set()  # regions to copy that the record does not name
        self._last_probe = float("-inf")
        # Which appliance copies a region in catch-up: the pair (issue 15) sets this.
        self.may_copy: MayCopy = this_appliance_copies
        self._copying: list[int] = []  # the catch-up chunk the worker copies now
        self._verifier = Verifier(record, local, self._second, self.config,
                                  worker=self._in_worker, turn=self._verify_turn,
                                  pending=lambda region: region in self._sweep,
                                  recopy=self._recopy)

    # -- the mode -------------------------------------------------------------------

    @property
    def state(self) -> MirrorState:
        return self._mode.state

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def capabilities(self) -> Capabilities:
        """What the second medium can do beyond a Medium (looked up once, at start)."""
        return self._second.capabilities

    def set_link_rate(self, rate: float | None) -> None:
        """Cap the link's bytes per second (None: no cap); ValueError if not a link."""
        link = self._second.rate_limited
        if link is None:
            raise ValueError(f"{self.second.name} has no rate cap (not a link)")
        link.rate_limit = rate

    def _on(self, event: Event) -> None:
        """Change the mode (state.TRANSITIONS) and bring what follows it along."""
        old = self._mode
        new = self._mode = old.after(event)
        pipeline = self._pipeline
        if not (old.queueing and new.queueing):
            pipeline.drop_queue()  # stopped, or started afresh: nothing queued before counts
        if new.handover_queued and not old.handover_queued:
            pipeline.mark_handover()
        elif not new.handover_queued:
            pipeline.handover_write = None
        if not new.blocks_known:
            self._masks.forget()
        elif new.state is MirrorState.ORDERED and old.state is not MirrorState.ORDERED:
            self._masks.restart()  # what the second medium misses is in the queue again
        if old.state is MirrorState.ORDERED and new.state is not MirrorState.ORDERED:
            self._catch_up_since = self._clock()
        elif new.state is MirrorState.ORDERED:
            self._catch_up_since = None
        if new.paused != old.paused:
            if new.paused:
                self._resumed.clear()
            else:
                self._resumed.set()

    def _leave_ordered(self, event: Event, why: str) -> None:
        """An event that makes an ordered mirror copy by region (see the table)."""
        if self.state is MirrorState.ORDERED:
            log.warning("mirror: %s; copying by region from the local medium", why)
        self._on(event)

    # -- called by the volume on the event loop -------------------------------------

    def submit_write(self, seq: int, offset: int, data: bytes) -> None:
        self._submit(QueuedWrite(seq, offset, len(data), data, False, self._clock()))

    def submit_zeroes(self, seq: int, offset: int, length: int, punch: bool) -> None:
        self._submit(QueuedWrite(seq, offset, length, None, punch, self._clock()))

    def _submit(self, write: QueuedWrite) -> None:
        self._idle.clear()
        mode = self._mode
        ordered = mode.state is MirrorState.ORDERED
        if not ordered:
            self._masks.note(write.offset, write.length)
        if mode.queueing:
            # Past the limit, pull ahead rather than stall the hosts.
            backlog = self._pipeline.backlog(with_inflight=ordered)
            if backlog + write.cost > self.config.queue_limit_bytes:
                if ordered:
                    # What the queue held is all the second medium will miss (runs on
                    # their way land, or fail and make the mirror forget it all).
                    for queued in self._pipeline.queue:
                        self._masks.note(queued.offset, queued.length)
                    self._masks.note(write.offset, write.length)
                    self.overflows += 1
                    self._leave_ordered(Event.OVERFLOW, "queue overflow")
                else:
                    self._on(Event.OVERFLOW)  # this pass cannot end in ordered mode
            else:
                self._pipeline.enqueue(write)
        self._wake.set()

    def force_region_copy(self) -> None:
        """Some write did not reach the queue intact: copy by region from now on."""
        self._leave_ordered(Event.UNQUEUED, "a write could not be queued")
        self._wake.set()

    def look_again(self) -> None:
        """``may_copy`` may say yes now where it said no (a pair's core thawed): a pass
        that left every region to another appliance looks again at once."""
        self._wake.set()

    # -- operator controls ----------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._mode.paused

    def pause(self) -> None:
        self._on(Event.PAUSE)

    def resume(self) -> None:
        self._on(Event.RESUME)
        self._wake.set()

    # -- figures --------------------------------------------------------------------

    @property
    def throughput(self) -> Throughput:
        return self._pipeline.throughput

    def lag_bytes(self) -> int:
        if self.state is MirrorState.ORDERED:
            return self._pipeline.pending_bytes()
        regions = set(self.record.dirty_regions()) | self._sweep
        pending = self._masks.pending()
        if pending is None:
            return len(regions) << self.record.region_shift
        # What the catch-up will copy: the blocks noted for a region, or all of it.
        return sum(self._masks.copy_bytes(region, pending) for region in regions)

    def lag_seconds(self) -> float:
        now = self._clock()
        if self.state is MirrorState.ORDERED:
            oldest = self._pipeline.oldest_pending()
            return max(0.0, now - oldest) if oldest is not None else 0.0
        return max(0.0, now - (self._catch_up_since or now))

    def resync_remaining_bytes(self) -> int:
        if self.state is MirrorState.ORDERED:
            return 0
        return max(self._pass_remaining, self.lag_bytes())

    def fill_target(self, unit: int | None = None) -> int:
        """Bytes the controller lets be in flight (see pipeline.fill_target)."""
        return fill_target(self.throughput.rate(), unit or self.config.batch_bytes,
                           self.config.plan_ahead_s, self.config.max_fill_bytes)

    def status(self) -> dict[str, object]:
        rate = self.throughput.rate()
        out: dict[str, object] = {
            "mirror_state": self._mode.label,
            "mirror_lag_bytes": self.lag_bytes(),
            "mirror_lag_seconds": round(self.lag_seconds(), 3),
            "mirror_queue_bytes": self._pipeline.queued_bytes,
            "mirror_inflight_bytes": self._pipeline.inflight_bytes,
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

    def touches(self, regions: Collection[int]) -> bool:
        """Is a write or copy to the second medium that touches ``regions`` queued or on
        its way? (Active-active: a region is handed to the peer only when none is, so no
        stale copy of ours can land after the peer's.)"""
        if any(region in regions for region in self._copying):
            return True
        return self._pipeline.touches(regions, self.record.region_shift)

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
        pipeline = self._pipeline
        return (self.state is MirrorState.ORDERED and not pipeline.queue
                and not pipeline.batch_bytes and not pipeline.inflight
                and not self._mode.handover_due and not self._sweep
                and self.record.mirrored_seq >= self.record.completed_seq())

    # -- the copier -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mirror")

    async def close(self) -> None:
        await self._verifier.close()
        await cancel_and_wait(self._task)
        if self._own_executor:
            self._executor.shutdown(wait=True)

    def _in_worker(self, job: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, job)

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
                    self._on(Event.RECOVERED)
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
        self._pipeline.batch_written()
        self._second.forget_ahead()
        # Everything unacknowledged is written off (its regions stay in the record), so
        # the medium need not report that loss again to the next run.
        self._second.reset()
        # Hosts keep writing: the record may now exceed its budget (it covers the volume).
        self.record.enforce_capacity = False
        self._on(Event.FAILED)
        self._on_progress()  # writers waiting for room may go on now

    # -- in-flight runs -------------------------------------------------------------

    def _retire_done(self) -> None:
        """Account for acknowledged runs, oldest first; raise a failed run's error."""
        record = self.record
        progressed = False
        for run in self._pipeline.durable():
            if run.seq is not None:
                self.applied_bytes += run.payload_bytes
                record.mirrored_upto(run.seq)
                if run.handover:
                    self._on(Event.HANDOVER_RUN_DURABLE)
            else:
                for region in run.regions:
                    record.mirrored_region(region, run.upto)
                    self._sweep.discard(region)
                self.copied_bytes += len(run.regions) << record.region_shift
                self._pass_remaining = max(0, self._pass_remaining - run.payload_bytes)
            progressed = True
        if progressed:
            self._on_progress()

    async def _retire_all(self) -> None:
        while self._pipeline.inflight:
            await self._pipeline.wait_oldest()
            self._retire_done()

    async def _settle_inflight(self) -> None:
        """After a failure: keep what was acknowledged before it, write off the rest."""
        if self._pipeline.inflight:
            await self._pipeline.settled()
            try:
                self._retire_done()
            except OSError:
                pass
        self._pipeline.write_off()

    # -- link sessions --------------------------------------------------------------

    async def _ensure_session(self) -> None:
        """Connect the second medium if it connects; act on a new link session's decision."""
        second = self._second
        if not second.capabilities.connects:
            return
        handshake = await self._in_worker(second.connect)
        self._last_probe = self._clock()
        linked = second.linked
        if linked is None or handshake is None or linked.sessions == self._session:
            return
        self._session = linked.sessions
        self._act_on(handshake)

    def _act_on(self, handshake: SessionHandshake) -> None:
        value = handshake.decision.value
        self.decision = value
        log.info("mirror: link session %d: %s", self._session, handshake.explanation)
        if value == "full-sync" and not self._sweep:
            self._sweep = set(range(self.record.nregions))
        if value == "in-sync":
            # generations.decide() says in-sync only of a consistent remote.
            self._on(Event.SESSION_IN_SYNC)
            return
        # Behind, blank, or mid-resync: bring it up to date by region, then hand over. A
        # remote still marked inconsistent need not be marked again.
        self._leave_ordered(Event.SESSION_BEHIND if handshake.remote.consistent
                            else Event.SESSION_INCONSISTENT, f"link session: {value}")

    def _session_changed(self) -> bool:
        linked = self._second.linked
        return linked is not None and linked.sessions != self._session

    # -- ordered --------------------------------------------------------------------

    async def _ordered_step(self) -> None:
        self._retire_done()
        pipeline = self._pipeline
        if self._mode.handover_due:
            await self._ensure_session()
            if self.state is not MirrorState.ORDERED:
                return
            await self._retire_all()
            linked = self._second.linked
            assert linked is not None  # the mode hands over only a linked medium
            await self._in_worker(linked.end_resync)
            if self._session_changed():
                return  # the next step sees the new session
            self._on(Event.HANDED_OVER)
            log.info("mirror: remote copy is consistent again")
            return
        if pipeline.queue and pipeline.inflight_bytes < self.fill_target(self.config.batch_bytes):
            await self._send_batch()
            return
        if pipeline.inflight:
            await pipeline.wait_oldest(wake=None if pipeline.queue else self._wake)
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
        pipeline = self._pipeline
        if self.state is not MirrorState.ORDERED or not pipeline.queue:
            return
        batch, size = pipeline.take_batch(self.config.batch_bytes)
        # Writes may reach the queue out of sequence order (one waits for its record
        # transaction while a later one goes ahead). Every write up to completed_seq()
        # has ended, so it was queued before now: this batch or an earlier one has it,
        # unless it is still queued behind this batch. (Not batch[-1].seq: a write that
        # overtook a waiting miss would then never count as mirrored.)
        upto = self.record.completed_seq()
        behind = pipeline.first_queued_seq()
        if behind is not None:
            upto = min(upto, behind - 1)
        handover = pipeline.holds_handover(batch)
        if handover:
            self._on(Event.HANDOVER_RUN_SENT)
        try:
            future = await self._in_worker(functools.partial(self._write_batch, batch))
        finally:
            pipeline.batch_written()
        if self._session_changed():
            # The run reconnected on its way: it went to a session whose decision was not
            # acted on. Its regions stay in the record; catch up under the new session.
            self._leave_ordered(Event.RECONNECTED, "the link reconnected")
            return
        pipeline.track(Run(asyncio.wrap_future(future), size, seq=upto,
                           payload_bytes=sum(write.length for write in batch),
                           oldest=batch[0].queued_at, handover=handover,
                           extents=[(write.offset, write.length) for write in batch]))
        self._retire_done()

    def _write_batch(self, batch: list[QueuedWrite]) -> concurrent.futures.Future[Any]:
        """(worker) Apply a batch to the second medium; the run's future."""
        second = self.second
        for write in batch:
            if write.data is not None:
                second.pwrite(write.offset, write.data)
            else:
                second.write_zeroes(write.offset, write.length, punch=write.punch)
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
        return self._second.capabilities.digests and (self._mode.after_crash
                                                      or bool(self._sweep))

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
        due = set(record.dirty_regions()).union(self._sweep_portion())
        if not due:
            self._finish_catch_up()
            return
        work = sorted(region for region in due if self.may_copy(region))
        if not work:
            await self._others_copy()
            return
        # A pass that left a region to another appliance may not hand over to ordered
        # mode: Record.mirrored_upto() would then count that region as mirrored here.
        complete = len(work) == len(due)
        self._on(Event.PASS_STARTED)  # no await since the list was taken
        linked = self._second.linked
        if linked is not None and not self._mode.resync_marked:
            await self._in_worker(linked.begin_resync)
            self._on(Event.RESYNC_MARKED)
        checksums = self._checksums_now()
        chunks, self._pass_remaining = self._masks.chunks(work, self.config.copy_chunk_bytes)
        pipeline = self._pipeline
        try:
            for index, chunk in enumerate(chunks):
                await self._resumed.wait()
                self._retire_done()
                while pipeline.inflight and \
                        pipeline.inflight_bytes >= self.fill_target(self.config.copy_chunk_bytes):
                    await pipeline.wait_oldest()
                    self._retire_done()
                following = chunks[index + 1] if checksums and index + 1 < len(chunks) \
                    else None
                # Asked again right before the copy: a region may have become another
                # appliance's since the pass began (active-active hands regions over).
                mine = [region for region in chunk if self.may_copy(region)]
                if len(mine) < len(chunk):
                    complete = False
                    chunk = mine
                    if not chunk:
                        continue
                # The blocks to copy, as noted until now (later writes are noted again).
                masks = self._masks.take(chunk)
                self._copying = chunk
                try:
                    future, sent = await self._in_worker(functools.partial(
                        self._copy_regions, chunk, masks, checksums, following))
                finally:
                    self._copying = []
                if self._session_changed():
                    raise _NewSession()
                planned = sum(self._masks.copy_bytes(region, masks) for region in chunk)
                pipeline.track(Run(asyncio.wrap_future(future), sent, regions=chunk,
                                   upto=upto, payload_bytes=planned))
            await self._retire_all()
        except _NewSession:
            self._on(Event.RECONNECTED)  # the new session decides what the remote holds
            await self._settle_inflight()
            return  # the next pass acts on the new session
        except BaseException:
            self._on(Event.PASS_ENDED)
            raise
        finally:
            self._second.forget_ahead()
            self._masks.copied()
        self._pass_remaining = 0
        if self._mode.queueing and not self._sweep and complete:
            self._resume_ordered()
        elif not record.dirty_regions() and not self._sweep:
            self._finish_catch_up()
        else:
            self._on(Event.PASS_ENDED)

    async def _others_copy(self) -> None:
        """Every region left is another appliance's to copy: look again when a write
        comes or after a while, rather than spin."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), self.config.probe_interval_s)
        except TimeoutError:
            pass

    def _resume_ordered(self) -> None:
        """After a pass whose writes were all queued: the queue carries on in order."""
        log.info("mirror: caught up; back to ordered mirroring (%d bytes queued meanwhile)",
                 self._pipeline.queued_bytes)
        # Every write up to ``bound`` ended before it could be queued behind the queue's
        # oldest, so it was submitted before the pass began: it is on the second medium.
        bound = self.record.completed_seq()
        behind = self._pipeline.first_queued_seq()
        if behind is not None:
            bound = min(bound, behind - 1)
        self.record.mirrored_upto(bound)
        # The remote becomes an image of the volume once the writes queued during the
        # pass are on it too (the copies may hold some of them already, out of order).
        self._on(Event.CAUGHT_UP_QUEUED if self._pipeline.queue else Event.CAUGHT_UP)
        self._on_progress()
        self._wake.set()

    def _finish_catch_up(self) -> None:
        # Nothing is dirty and no await separates the check from the switch, so every
        # write so far is on the second medium and every later one will be queued.
        self.record.mirrored_upto(self.record.completed_seq())
        log.info("mirror: caught up; back to ordered mirroring")
        # The remote is now an exact image of the volume: say so before the next run.
        self._on(Event.CAUGHT_UP)
        self._on_progress()

    def _copy_regions(self, regions: list[int], masks: dict[int, int], checksums: bool,
                      following: list[int] | None) -> tuple[concurrent.futures.Future[Any], int]:
        """(worker) Copy regions (of those ``masks`` has, the noted blocks) to the second
        medium; the run's future and the bytes sent."""
        second = self.second
        block = self.config.checksum_block_bytes
        shift = self.record.region_shift
        size = min(self.local.size, second.size)
        if following:
            self._second.ask_ahead(extents(following, shift, size), block)
        sent = 0
        for offset, length in extents(regions, shift, size, masks):
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

    @property
    def verify_report(self) -> VerifyReport:
        return self._verifier.report

    def start_verify(self) -> VerifyReport:
        """Compare both media by digest in the background, region by region, while serving.

        A clean region (the record says the second medium has it) that differs is
        reported and put back in the record, so the mirror copies it again.
        """
        return self._verifier.start()

    def stop_verify(self) -> VerifyReport:
        return self._verifier.stop()

    async def _verify_turn(self) -> None:
        await self._resumed.wait()
        if self.state is MirrorState.DEGRADED:
            raise OSError(f"mirror degraded: {self.last_error}")

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
