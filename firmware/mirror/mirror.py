"""The asynchronous mirror: copies the volume's writes to the second medium.

Two modes:

- *ordered*: every write is queued (bounded, in write order) and applied to the
  second medium in batches; after a batch the second medium is flushed and the
  record learns that every write up to the batch's last sequence number is
  durable there (``Record.mirrored_upto``).
- *catch-up*: when the queue overflows, the second medium fails, or the record
  names regions at start-up, the queue is dropped and the mirror copies whole
  regions from the local medium instead (``Record.mirrored_region``), pass
  after pass, until no region is dirty; then it returns to ordered mode.

Medium I/O runs in one worker thread so the second medium's writes overlap the
host's on the other core; all bookkeeping happens on the event loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from firmware.record.record import Record
from hal.media.base import Medium

log = logging.getLogger("tandem.mirror")


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


@dataclass
class MirrorConfig:
    queue_limit_bytes: int = 64 << 20
    batch_bytes: int = 8 << 20
    copy_chunk_bytes: int = 4 << 20
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


class Mirror:
    def __init__(self, local: Medium, second: Medium, record: Record,
                 config: MirrorConfig | None = None,
                 on_progress: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.local = local
        self.second = second
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
        self.last_error: str | None = None
        self._catch_up_since: float | None = clock() if self.state is MirrorState.CATCH_UP \
            else None
        self._pass_remaining = 0  # bytes left in the running catch-up pass
        self.copied_bytes = 0  # by region, since start
        self.applied_bytes = 0  # in order, since start
        self.overflows = 0
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tandem-mirror")
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()

    # -- called by the volume on the event loop -------------------------------------

    def submit_write(self, seq: int, offset: int, data: bytes) -> None:
        self._submit(_Op(seq, offset, len(data), data, False, self._clock()))

    def submit_zeroes(self, seq: int, offset: int, length: int, punch: bool) -> None:
        self._submit(_Op(seq, offset, length, None, punch, self._clock()))

    def _submit(self, op: _Op) -> None:
        self._idle.clear()
        if self.state is MirrorState.ORDERED:
            cost = len(op.data) if op.data is not None else 64
            if self._queued_bytes + cost > self.config.queue_limit_bytes:
                self._enter_catch_up("queue overflow")
            else:
                self._queue.append(op)
                self._queued_bytes += cost
        self._wake.set()

    def force_region_copy(self) -> None:
        """Some write did not reach the queue intact: copy by region from now on."""
        if self.state is MirrorState.ORDERED:
            self._enter_catch_up("a write could not be queued")
        self._wake.set()

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
            return self._queued_bytes + self._batch_bytes
        return len(self.record.dirty_regions()) << self.record.region_shift

    def lag_seconds(self) -> float:
        now = self._clock()
        if self.state is MirrorState.ORDERED:
            oldest = self._batch_oldest if self._batch_oldest is not None else (
                self._queue[0].queued_at if self._queue else None)
            return max(0.0, now - oldest) if oldest is not None else 0.0
        return max(0.0, now - (self._catch_up_since or now))

    def resync_remaining_bytes(self) -> int:
        if self.state is MirrorState.ORDERED:
            return 0
        return max(self._pass_remaining, self.lag_bytes())

    def status(self) -> dict[str, object]:
        return {
            "mirror_state": "paused" if self._paused else self.state.value,
            "mirror_lag_bytes": self.lag_bytes(),
            "mirror_lag_seconds": round(self.lag_seconds(), 3),
            "mirror_queue_bytes": self._queued_bytes,
            "mirror_applied_bytes": self.applied_bytes,
            "mirror_copied_bytes": self.copied_bytes,
            "mirror_overflows": self.overflows,
            "mirror_error": self.last_error,
            "resync_remaining_bytes": self.resync_remaining_bytes(),
        }

    async def drained(self) -> None:
        """Wait until the second medium holds every write submitted so far."""
        while True:
            if self._is_drained():
                return
            self._idle.clear()
            self._wake.set()
            await self._idle.wait()

    def _is_drained(self) -> bool:
        return (self.state is MirrorState.ORDERED and not self._queue and not self._batch_bytes
                and self.record.mirrored_seq >= self.record.completed_seq())

    # -- the copier -----------------------------------------------------------------

    _batch_bytes = 0
    _batch_oldest: float | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="mirror")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def _enter_catch_up(self, why: str) -> None:
        if self.state is MirrorState.ORDERED:
            log.warning("mirror: %s; copying by region from the local medium", why)
            self.overflows += why == "queue overflow"
            self._catch_up_since = self._clock()
        self.state = MirrorState.CATCH_UP if self.last_error is None else MirrorState.DEGRADED
        self._queue.clear()
        self._queued_bytes = 0

    async def _run(self) -> None:
        delay = self.config.retry_initial_s
        while True:
            await self._resumed.wait()
            try:
                if self.state is MirrorState.ORDERED:
                    if not self._queue:
                        self._signal_idle()
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                    await self._apply_batch()
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
                self._fail(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)

    def _signal_idle(self) -> None:
        if self._is_drained():
            self._idle.set()

    def _fail(self, exc: OSError) -> None:
        message = f"second medium {self.second.name}: {exc}"
        if message != self.last_error:
            log.error("mirror degraded: %s; regions stay in the record", message)
        self.last_error = message
        self._batch_bytes = 0
        self._batch_oldest = None
        # Hosts keep writing: the record may now exceed its budget (it covers the volume).
        self.record.enforce_capacity = False
        if self.state is MirrorState.ORDERED:
            self._catch_up_since = self._clock()
        self.state = MirrorState.DEGRADED
        self._queue.clear()
        self._queued_bytes = 0
        self._on_progress()  # writers waiting for room may go on now

    async def _apply_batch(self) -> None:
        batch: list[_Op] = []
        size = 0
        while self._queue and size < self.config.batch_bytes:
            op = self._queue.popleft()
            batch.append(op)
            size += op.length if op.data is not None else 64
        self._queued_bytes -= size
        self._batch_bytes = size
        self._batch_oldest = batch[0].queued_at
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write_batch, batch)
        finally:
            self._batch_bytes = 0
            self._batch_oldest = None
        self.applied_bytes += sum(op.length for op in batch)
        self.record.mirrored_upto(batch[-1].seq)
        self._on_progress()

    def _write_batch(self, batch: list[_Op]) -> None:
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
        second.flush()

    async def _catch_up_pass(self) -> None:
        """Copy every dirty region from the local medium; return to ordered when none is."""
        record = self.record
        upto = record.completed_seq()
        dirty = record.dirty_regions()
        if not dirty:
            self._finish_catch_up()
            return
        shift = record.region_shift
        self._pass_remaining = len(dirty) << shift
        loop = asyncio.get_running_loop()
        per_chunk = max(1, self.config.copy_chunk_bytes >> shift)
        for start in range(0, len(dirty), per_chunk):
            await self._resumed.wait()
            chunk = dirty[start:start + per_chunk]
            await loop.run_in_executor(self._executor, self._copy_regions, chunk)
            for region in chunk:
                record.mirrored_region(region, upto)
            copied = len(chunk) << shift
            self.copied_bytes += copied
            self._pass_remaining -= copied
            self._on_progress()
        self._pass_remaining = 0
        if not record.dirty_regions():
            self._finish_catch_up()

    def _finish_catch_up(self) -> None:
        # Nothing is dirty and no await separates the check from the switch, so every
        # write so far is on the second medium and every later one will be queued.
        self.record.mirrored_upto(self.record.completed_seq())
        if self.state is not MirrorState.ORDERED:
            log.info("mirror: caught up; back to ordered mirroring")
        self.state = MirrorState.ORDERED
        self._catch_up_since = None
        self._on_progress()

    def _copy_regions(self, regions: list[int]) -> None:
        shift = self.record.region_shift
        size = min(self.local.size, self.second.size)
        for region in regions:
            offset = region << shift
            length = min(1 << shift, size - offset)
            if length > 0:
                self.second.pwrite(offset, self.local.pread(offset, length))
        self.local.flush()  # what was copied must be durable locally too (see _write_batch)
        self.second.flush()
