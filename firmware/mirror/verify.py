"""Online verify: compare both media by digest in the background while serving.

A clean region (the record says the second medium has it) that differs is
reported and handed back to the copier, which puts it in the record again and
copies it (DRBD's ``drbdadm verify``). Only digests cross a link: the receiver
computes its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from firmware.mirror.masks import extents
from firmware.mirror.second import SecondMedium, block_digests, differing_runs
from firmware.record.layout import region_span
from firmware.record.record import Record
from firmware.tasks import cancel_and_wait
from hal.media.base import Medium

log = logging.getLogger("tandem.mirror")


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


class VerifySettings(Protocol):
    copy_chunk_bytes: int  # the regions compared per step
    checksum_block_bytes: int  # the digest's block


class Verifier:
    """One verify at a time, beside the copier whose worker and record it shares.

    ``worker(fn)`` runs ``fn`` in the copier's worker; ``turn()`` waits while the
    mirror is paused and raises OSError while it is degraded (the second medium
    cannot answer); ``pending(region)`` says the copier will copy a region the
    record calls clean (a sweep); ``recopy(region)`` hands a differing one back.
    """

    def __init__(self, record: Record, local: Medium, second: SecondMedium,
                 settings: VerifySettings, *,
                 worker: Callable[[Callable[[], list[int]]], Awaitable[list[int]]],
                 turn: Callable[[], Awaitable[None]], pending: Callable[[int], bool],
                 recopy: Callable[[int], Awaitable[None]]) -> None:
        self.record = record
        self.local = local
        self.second = second
        self.settings = settings
        self._worker = worker
        self._turn = turn
        self._pending = pending
        self._recopy = recopy
        self.report = VerifyReport()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> VerifyReport:
        if self._task is not None and not self._task.done():
            return self.report
        self.report = VerifyReport("running", total_bytes=self.record.geometry.volume_size,
                                   started=time.time())
        self._task = asyncio.get_running_loop().create_task(self._verify(self.report),
                                                            name="verify")
        return self.report

    def stop(self) -> VerifyReport:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self.report.state = "stopped"
            self.report.finished = time.time()
        return self.report

    async def close(self) -> None:
        await cancel_and_wait(self._task)

    async def _verify(self, report: VerifyReport) -> None:
        record = self.record
        shift = record.region_shift
        per_chunk = max(1, self.settings.copy_chunk_bytes >> shift)
        try:
            for first in range(0, record.nregions, per_chunk):
                await self._turn()
                chunk = range(first, min(first + per_chunk, record.nregions))
                clean = [r for r in chunk if record.is_clean(r) and not self._pending(r)]
                if clean:
                    differing = await self._worker(functools.partial(self._compare, clean))
                    # A region written meanwhile is dirty now: the mirror copies it anyway.
                    confirmed = [r for r in differing
                                 if record.is_clean(r) and not self._pending(r)]
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

    def _compare(self, regions: list[int]) -> list[int]:
        """(worker) Regions whose bytes differ between the two media."""
        shift = self.record.region_shift
        block = self.settings.checksum_block_bytes
        size = min(self.local.size, self.second.medium.size)
        differing: list[int] = []
        for offset, length in extents(regions, shift, size):
            ours = block_digests(self.local.pread(offset, length), block)
            theirs = self.second.digests(offset, length, block)
            # A run of differing blocks may span regions: name each one it touches.
            for start, end in differing_runs(ours, theirs, block, length):
                differing += region_span(offset + start, end - start, shift)
        return sorted(set(differing))
