"""The write/read path: record check → local medium → mirror → acknowledge.

This is where ARCHITECTURE.md's invariant is used, not decided: the record's
write-ahead (``begin_write`` → ``await durable`` → ``end_write``, firmware/record)
says when the local medium may be written; a region cannot leave the record
until the write has ended and the mirror has it durably.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from firmware.mirror.mirror import Mirror
from firmware.record.record import Record, RecordFull, WriteTicket
from firmware.volume.target import TargetError, TargetShape, first_mismatch
from hal.media.base import Medium, blocks_the_caller
from hal.nvram.base import NvramError

log = logging.getLogger("tandem.volume")

T = TypeVar("T")


@dataclass(frozen=True)
class _Compared:
    """What a compare and write did on the local medium."""

    mismatch: int | None  # offset of the first differing byte; None: matched, written
    on_medium: bytes  # what the range holds now: the new data, or what was compared


class Volume(TargetShape):
    """A BlockTarget: the appliance's virtual disk."""

    def __init__(self, local: Medium, record: Record, mirror: Mirror, *,
                 read_only: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 io_executor: Executor | None = None) -> None:
        """``io_executor`` runs the local medium's flushes and, for a medium that blocks
        its caller (O_DIRECT, block devices), its reads and writes too. It must run its
        jobs one at a time, in order; None: a worker thread of the volume's own."""
        super().__init__(local.size, read_only)
        self.local = local
        self._io_executor = io_executor or ThreadPoolExecutor(
            1, thread_name_prefix="tandem-local")
        # A page-cache write costs less than the hand-off to a thread: those stay inline.
        self._inline_io = not blocks_the_caller(local)
        self._turn: asyncio.Future[None] | None = None  # the last write handed to the worker
        self.record = record
        self.mirror = mirror
        self._clock = clock
        self._room = asyncio.Event()
        # This node's COMPARE AND WRITEs one at a time, as LIO's caw_sem (see
        # _compare_under_ticket).
        self._compare_and_write_turn = asyncio.Lock()
        self.nvram_error: str | None = None
        self.local_errors = 0

    # -- BlockTarget ----------------------------------------------------------------

    def room_made(self) -> None:
        """The mirror or a finished write may have made regions evictable."""
        self._room.set()

    async def read(self, offset: int, length: int) -> bytes:
        self.check_range(offset, length)
        try:
            if self._inline_io:
                return self.local.pread(offset, length)
            return await asyncio.get_running_loop().run_in_executor(
                self._io_executor, self.local.pread, offset, length)
        except OSError as exc:
            self.local_errors += 1
            log.error("local medium read failed: %s", exc)
            raise TargetError(errno.EIO, f"local medium: {exc}") from exc

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        self.check_writable(offset, len(data))
        ticket = await self._begin(offset, len(data))
        if self._inline_io:
            try:
                self.local.pwrite(offset, data)
            except OSError as exc:
                self._local_write_failed(ticket, exc)
            self.mirror.submit_write(ticket.seq, offset, data)
            self._end(ticket)
        else:
            await asyncio.shield(self._through_worker(
                ticket, functools.partial(self.local.pwrite, offset, data),
                lambda _: self.mirror.submit_write(ticket.seq, offset, data)))
        if fua:
            await self.flush()

    async def write_zeroes(self, offset: int, length: int, fua: bool = False,
                           may_trim: bool = True) -> None:
        self.check_writable(offset, length)
        ticket = await self._begin(offset, length)
        if self._inline_io:
            try:
                self.local.write_zeroes(offset, length, punch=may_trim)
            except OSError as exc:
                self._local_write_failed(ticket, exc)
            self.mirror.submit_zeroes(ticket.seq, offset, length, punch=may_trim)
            self._end(ticket)
        else:
            await asyncio.shield(self._through_worker(
                ticket, functools.partial(self.local.write_zeroes, offset, length, may_trim),
                lambda _: self.mirror.submit_zeroes(ticket.seq, offset, length,
                                                    punch=may_trim)))
        if fua:
            await self.flush()

    async def compare_and_write(self, offset: int, expected: bytes, data: bytes,
                                fua: bool = False) -> int | None:
        """Write ``data`` if the range holds ``expected``, atomically, also across a pair.

        The ticket comes first, before the read: its durability is the record's
        write-ahead and, in an active-active pair, this node's ownership of the regions
        (the peer's MARK for them waits until the ticket ends). So from the read to the
        write no write of the peer's can land in between; a read before the ticket
        could compare against data the peer then overwrites.

        On a mismatch nothing is written, yet the ticket has marked the regions with its
        sequence number, and a ticket that ends with no mirror write behind it leaves
        them dirty: the ordered mirror counts that number as mirrored only when a later
        write's run goes (on a quiet volume not at all: the region stays in the record
        and ``Mirror.drained`` waits for ever). So the bytes compared, which are what the
        local medium holds there, go to the mirror as this ticket's write. The second
        medium gets what the local one has (bytes it holds already, or will once the
        writes before are applied, in order), the region leaves the record as after any
        write, and the mirror stays in ordered mode -- unlike a copy by region
        (``force_region_copy``), which every lost lock race of a host would then force.
        """
        self.check_compare_and_write(offset, expected, data)
        ticket = await self._begin(offset, len(data))
        # From here the ticket must end with its mirror write whatever becomes of the
        # request that asked (as a write once handed to the worker): shielded.
        compared = await asyncio.shield(
            self._compare_under_ticket(ticket, offset, expected, data))
        if compared.mismatch is None and fua:
            await self.flush()
        return compared.mismatch

    async def trim(self, offset: int, length: int) -> None:
        # A trimmed range reads back as zeroes on both media, so they stay identical.
        await self.write_zeroes(offset, length, may_trim=True)

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The record first: on the simulated board it is a file that must not be
            # less durable than the data it describes.
            await self.record.flush()
            await loop.run_in_executor(self._io_executor, self.local.flush)
        except NvramError as exc:
            raise self._nvram_failed(exc) from exc
        except OSError as exc:
            self.local_errors += 1
            log.error("local medium flush failed: %s", exc)
            raise TargetError(errno.EIO, f"local medium flush: {exc}") from exc

    # -- internals ------------------------------------------------------------------

    async def _compare_under_ticket(self, ticket: WriteTicket, offset: int, expected: bytes,
                                    data: bytes) -> _Compared:
        """Read, compare and (on a match) write under ``ticket``, then hand the range's
        bytes to the mirror and end the ticket."""
        compare = functools.partial(self._compare_then_write, offset, expected, data)
        # The read, the compare and the write are one step no other write of this node
        # comes between: inline, with no await in it, or one job on the I/O worker, which
        # runs its jobs one at a time and in order. The lock keeps COMPARE AND WRITEs
        # apart also wherever that step would have to wait, as LIO's caw_sem does. It is
        # taken after the ticket: waiting for ownership (a MARK, the peer's hand-over)
        # holds up no other COMPARE AND WRITE, and the holder waits only for the medium.
        async with self._compare_and_write_turn:
            if not self._inline_io:
                return await self._through_worker(
                    ticket, compare,
                    lambda done: self.mirror.submit_write(ticket.seq, offset, done.on_medium))
            try:
                compared = compare()
            except OSError as exc:
                self._local_write_failed(ticket, exc)
            self.mirror.submit_write(ticket.seq, offset, compared.on_medium)
            self._end(ticket)
            return compared

    def _compare_then_write(self, offset: int, expected: bytes, data: bytes) -> _Compared:
        """(loop or I/O worker) The local medium's half of a compare and write."""
        stored = self.local.pread(offset, len(expected))
        mismatch = first_mismatch(stored, expected)
        if mismatch is not None:
            return _Compared(mismatch, stored)
        self.local.pwrite(offset, data)
        return _Compared(None, data)

    async def _through_worker(self, ticket: WriteTicket, write: Callable[[], T],
                              submit: Callable[[T], None]) -> T:
        """A local write on the I/O worker, then its hand-off to the mirror (``submit``
        gets what ``write`` returned).

        The mirror must get overlapping writes in the order the local medium applied
        them, or the two media would keep different winners of a race: each write waits
        for the one handed to the worker before it to reach the mirror first. Shielded by
        the caller: once the data may be on the medium, the mirror gets it and the ticket
        ends, whatever happens to the request that asked.
        """
        loop = asyncio.get_running_loop()
        before, mine = self._turn, loop.create_future()
        self._turn = mine
        try:
            error: OSError | None = None
            try:
                done = await loop.run_in_executor(self._io_executor, write)
            except OSError as exc:
                error = exc
            if before is not None:
                await before
            if error is not None:
                self._local_write_failed(ticket, error)
            submit(done)
            self._end(ticket)
            return done
        finally:
            mine.set_result(None)

    async def _begin(self, offset: int, length: int) -> WriteTicket:
        while True:
            try:
                ticket = self.record.begin_write(offset, length, self._clock())
                break
            except RecordFull:
                self._room.clear()
                await self._room.wait()
            except NvramError as exc:
                raise self._nvram_failed(exc) from exc
        try:
            await self.record.durable(ticket)  # the write-ahead: NVRAM before the data
        except OSError as exc:
            raise self._nvram_failed(exc) from exc
        return ticket

    def _end(self, ticket: WriteTicket) -> None:
        self.record.end_write(ticket)
        if not self._room.is_set():
            self._room.set()  # an ended write may have made its regions evictable

    def _nvram_failed(self, exc: OSError) -> TargetError:
        # Without a persisted record the invariant cannot be kept: refuse the write.
        self.nvram_error = str(exc)
        log.error("NVRAM update failed, write refused: %s", exc)
        return TargetError(errno.EIO, f"NVRAM: {exc}")

    def _local_write_failed(self, ticket: WriteTicket, exc: OSError) -> NoReturn:
        # The range may hold part of the write: keep its regions in the record and let
        # the mirror copy them by region (it reads the local medium then). The read of a
        # compare and write that fails ends here too: its ticket then has no mirror write
        # behind it, and the copy by region is what cleans such a region.
        self.local_errors += 1
        log.error("local medium write failed: %s", exc)
        self.record.end_write(ticket)
        self.mirror.force_region_copy()
        raise TargetError(errno.EIO, f"local medium: {exc}") from exc
