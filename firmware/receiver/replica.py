"""The receiving side's copy: its medium, epoch journal and sync state, behind one lock.

Everything here blocks (disk I/O); the receiver calls it from worker threads.
One sender session at a time owns the staging area: a session that is taken
over by a newer one holds a stale token and can no longer stage or commit.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable

from firmware.receiver.journal import EpochJournal, JournalOp, JournalWrite, JournalZero
from hal.media.base import Medium, MediumError
from hal.media.remote.frames import DIGEST_ALGS, MAX_DATA, Write, Zero, block_digests
from hal.media.remote.generations import StateStore, SyncState

log = logging.getLogger("tandem.link.replica")

STAGE_MEMORY = 64 * 1024 * 1024  # an epoch larger than this is applied from the journal file


class StaleSession(Exception):
    """A newer sender session has taken over the replica."""


class Replica:
    def __init__(self, medium: Medium, state: StateStore, journal: EpochJournal,
                 stage_memory: int = STAGE_MEMORY) -> None:
        self.medium = medium
        self._store = state
        self._journal = journal
        self._stage_memory = stage_memory
        self._lock = threading.Lock()
        self._token = 0
        self._staged: list[Write | Zero] = []
        self._staged_bytes = 0
        self._spilled = False
        self._state = state.load()
        self.applied_epochs = 0  # epochs applied since start (for status and tests)

    @property
    def size(self) -> int:
        return self.medium.size

    @property
    def state(self) -> SyncState:
        return self._state

    def recover(self) -> int | None:
        """Apply an epoch that was committed to the journal before a crash; its number."""
        with self._lock:
            committed = self._journal.committed()
            if committed is None:
                return None
            log.info("replaying epoch %d (%d writes) from %s", committed.epoch,
                     committed.count, self._journal.path)
            self._apply(self._journal.ops(committed))
            self._journal.clear()
            return committed.epoch

    def open_session(self) -> int:
        """Take the staging area for a new session; waits for an epoch being applied."""
        with self._lock:
            self._token += 1
            self._reset_staging()
            return self._token

    def _check(self, token: int) -> None:
        if token != self._token:
            raise StaleSession("taken over by a newer session")

    def _reset_staging(self) -> None:
        self._staged = []
        self._staged_bytes = 0
        self._spilled = False
        self._journal.begin()

    def stage(self, token: int, ops: list[Write | Zero]) -> None:
        """Keep writes of the open epoch: in the journal file, and in memory while they fit."""
        with self._lock:
            self._check(token)
            for op in ops:
                self._journal.append(op)
                if not self._spilled:
                    self._staged.append(op)
                    self._staged_bytes += 64 + (len(op.data) if isinstance(op, Write) else 0)
                    if self._staged_bytes > self._stage_memory:
                        self._spilled = True
                        self._staged = []

    def commit(self, token: int, epoch: int) -> None:
        """Journal the whole epoch durably, apply it, flush the medium."""
        with self._lock:
            self._check(token)
            self._journal.commit(epoch)
            if self._spilled:
                committed = self._journal.committed()
                if committed is None or committed.epoch != epoch:
                    raise MediumError(errno.EIO, f"{self._journal.path}: journal unreadable")
                self._apply(self._journal.ops(committed))
            else:
                self._apply(_as_journal_ops(self._staged))
            self.applied_epochs += 1
            self._reset_staging()

    def discard(self, token: int) -> None:
        """Drop the open epoch (the session ended without its barrier)."""
        with self._lock:
            if token == self._token:
                self._reset_staging()

    def _apply(self, ops: Iterable[JournalOp]) -> None:
        for op in ops:
            if isinstance(op, JournalWrite):
                self.medium.pwrite(op.offset, op.data)
            else:
                self.medium.write_zeroes(op.offset, op.length, op.punch)
        self.medium.flush()

    def digests(self, offset: int, length: int, block_size: int, alg: str) -> list[bytes]:
        if alg not in DIGEST_ALGS:
            raise MediumError(errno.EINVAL, f"digest {alg!r} not supported")
        out: list[bytes] = []
        step = max(block_size, (MAX_DATA // block_size) * block_size)
        with self._lock:
            for start in range(offset, offset + length, step):
                n = min(step, offset + length - start)
                out += block_digests(self.medium.pread(start, n), block_size, alg)
        return out

    def read(self, offset: int, length: int) -> bytes:
        with self._lock:
            return self.medium.pread(offset, length)

    def set_state(self, token: int | None, state: SyncState) -> None:
        """Persist a new sync state (``token`` None: an admin action, no session)."""
        with self._lock:
            if token is not None:
                self._check(token)
            self._store.save(state)
            self._state = state

    def forget_journal(self) -> None:
        with self._lock:
            self._journal.clear()

    def close(self) -> None:
        with self._lock:
            self._journal.close()
            self.medium.close()


def _as_journal_ops(ops: list[Write | Zero]) -> list[JournalOp]:
    return [JournalWrite(op.offset, op.data) if isinstance(op, Write)
            else JournalZero(op.offset, op.length, op.punch) for op in ops]
