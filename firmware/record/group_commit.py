"""Group commit of record transactions, off the event loop.

A miss must be persisted before its data write is issued, but it need not block
every other request while the NVRAM (or, on the simulated board, an O_DSYNC
file) does its write. ``GroupCommitStore`` is the RecordStore the volume gives
its Record: ``commit`` only stages the change in the shadow bitmap; one worker
writes everything staged so far as one NVRAM transaction, and every write whose
regions were in it proceeds once it is durable. Under concurrency several
misses share one transaction; alone, each miss is one transaction.

Whether transactions go to the worker is the NVRAM driver's word
(``Nvram.slow_writes``): on FRAM the hand-off would cost more than the write, and
each commit is persisted inline.

A region added by a staged transaction is *pending* until that transaction is
durable: a later write that hits it must wait for the same transaction, or its
data could reach the medium before the record names the region.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor

from firmware.record.store import NvramRecordStore
from firmware.tasks import cancel_and_wait


class GroupCommitStore:
    """``inline``: the NVRAM is fast (FRAM on SPI/I2C, or the simulated board's page
    cache): persist each transaction at once on the event loop, where a worker
    thread's hand-off would cost more than the write."""

    def __init__(self, inner: NvramRecordStore, *, inline: bool = False,
                 executor: Executor | None = None) -> None:
        """``executor`` (one job at a time) writes the transactions; the caller's to shut
        down. None: the store starts and stops its own worker thread."""
        self.inner = inner
        self.inline = inline
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            1, thread_name_prefix="tandem-nvram")
        self._batch = 0  # number of the batch now being staged
        self._durable = 0  # every batch up to this one is in NVRAM
        self._pending: dict[int, int] = {}  # region → batch that added it
        self._staged_any = False
        self._writing = 0  # batch whose transaction is being written now
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    # -- RecordStore ------------------------------------------------------------------

    def commit(self, add: Iterable[int], remove: Iterable[int]) -> int:
        if self.inline:
            self.inner.commit(add, remove)
            return 0
        add = list(add)
        remove = list(remove)
        self.inner.stage(add, remove)
        batch = self._batch + 1
        for region in add:
            self._pending[region] = batch
        for region in remove:
            self._pending.pop(region, None)
        self._staged_any = True
        if self._wake is not None:
            self._wake.set()
        return 0  # bytes are counted when the transaction happens

    def barrier(self) -> None:
        self.inner.barrier()

    # -- the volume's side ------------------------------------------------------------

    @property
    def transactions(self) -> int:
        return self.inner.transactions

    @property
    def bytes_written(self) -> int:
        return self.inner.bytes_written

    def start(self) -> None:
        if self.inline:
            return
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="nvram-commit")

    def must_wait(self, regions: range) -> int:
        """The batch that must be durable before writing ``regions`` (0: none; always
        so inline, where nothing is ever pending)."""
        if not self._pending:
            return 0
        pending = self._pending
        return max((pending.get(r, 0) for r in regions), default=0)

    def ended(self, transaction: int) -> None:
        pass  # a batch belongs to no single write

    async def durable(self, batch: int | None = None) -> None:
        """Wait until ``batch`` (default: everything staged so far) is in NVRAM (at
        once inline: nothing is ever staged there)."""
        if batch is None:
            batch = self._batch + 1 if self._staged_any else self._batch
        if batch <= self._durable:
            return
        if batch <= self._batch and batch != self._writing and self._wake is not None:
            # Taken by a transaction that failed: the retry (a full rewrite) covers it.
            self._staged_any = True
            self._wake.set()
            batch = self._batch + 1
        if self._task is None:  # not started: persist inline (start-up, shutdown)
            self._persist_inline()
            return
        waiter = self._waiters.get(batch)
        if waiter is None:
            waiter = self._waiters[batch] = asyncio.get_running_loop().create_future()
        await asyncio.shield(waiter)

    def _persist_inline(self) -> None:
        self._batch += 1
        self._staged_any = False
        self.inner.write_staged(self.inner.take_staged())
        self._done(self._batch, None)

    async def close(self) -> None:
        if self._task is not None:
            await self.durable()
            await cancel_and_wait(self._task)
            self._task = None
        if self._staged_any:
            self._persist_inline()
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def abandon(self) -> None:
        """The power went: stop the worker without writing what is staged (there is no
        NVRAM to write it to; what was not durable was not acknowledged either)."""
        await cancel_and_wait(self._task)
        self._task = None
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._staged_any:
                continue
            self._batch += 1
            batch = self._batch
            self._staged_any = False
            writes = self.inner.take_staged()
            error: BaseException | None = None
            self._writing = batch
            try:
                await loop.run_in_executor(self._executor, self.inner.write_staged, writes)
            except OSError as exc:
                error = exc
                self.failure = exc
            finally:
                self._writing = 0
            self._done(batch, error)
            if error is not None:
                await asyncio.sleep(0.5)  # a failing NVRAM: retry when someone waits

    def _done(self, batch: int, error: BaseException | None) -> None:
        if error is None:
            self._durable = batch
            if self._pending:
                self._pending = {r: b for r, b in self._pending.items() if b > batch}
        for number in [n for n in self._waiters if n <= batch]:
            future = self._waiters.pop(number)
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
                    # Its waiter may have been cancelled: the error is reported to the
                    # writes that wait, and logged by the volume, not as "never retrieved".
                    future.add_done_callback(lambda f: f.exception())
