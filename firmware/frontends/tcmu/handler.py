"""The asyncio TCMU handler: ring events in, SCSI commands run on the disk, completions out.

One task per command, so a slow write (record update, media) does not hold
up reads behind it; the kernel's queue depth bounds how many run at once.
Completions go back out of order when the kernel allows it (CAP_OOOC), in
ring order otherwise; one notification covers every completion written in
the same turn of the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from firmware.frontends.tcmu import sense as sk
from firmware.frontends.tcmu.ring import (
    Command,
    CommandRing,
    RingError,
    TaskManagement,
    UnknownEntry,
)
from firmware.frontends.tcmu.scsi import ScsiDisk, ScsiResult, wants_data_out

log = logging.getLogger(__name__)


class RingDevice(Protocol):
    """What the handler needs of the UIO device (a fake in tests, UioDevice for real)."""

    fd: int
    mapping: Any

    def read_event(self) -> int | None: ...

    def notify(self) -> None: ...


class TcmuHandler:
    """Serves one TCMU ring with one ScsiDisk."""

    def __init__(self, device: RingDevice, disk: ScsiDisk,
                 ring: CommandRing | None = None) -> None:
        self._device = device
        self._disk = disk
        self._ring = ring or CommandRing(device.mapping)
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_order: deque[int] = deque()     # cmd_ids in ring order (no CAP_OOOC)
        self._finished: dict[int, tuple[ScsiResult, int | None]] = {}
        self._notify_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commands_done = 0
        self.broken: RingError | None = None

    @property
    def in_flight(self) -> int:
        return self._ring.in_flight

    def start(self) -> None:
        """Start watching the device (call from the event loop) and serve anything queued."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._device.fd, self._on_readable)
        self._drain()

    async def close(self) -> None:
        """Stop taking commands and wait for the running ones to complete."""
        if self._loop is not None:
            self._loop.remove_reader(self._device.fd)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._notify_scheduled:
            self._notify()

    def _on_readable(self) -> None:
        self._device.read_event()
        self._drain()

    def _drain(self) -> None:
        tail = self._ring.tail
        try:
            events = self._ring.take()
        except RingError as exc:
            # Nothing sane can be answered from a ring we cannot parse: stop reading it.
            # The kernel times the commands out (cmd_time_out) and a restart resets it.
            log.critical("TCMU ring is broken, no longer serving it: %s", exc)
            self.broken = exc
            if self._loop is not None:
                self._loop.remove_reader(self._device.fd)
            return
        for event in events:
            if isinstance(event, Command):
                if not self._ring.out_of_order:
                    self._in_order.append(event.cmd_id)
                task = asyncio.get_running_loop().create_task(self._run(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(event, TaskManagement):
                # Aborted commands still complete normally; the kernel drops their answers.
                log.info("TCMU task management %d for commands %s", event.tmr_type,
                         event.cmd_ids)
            elif isinstance(event, UnknownEntry):
                log.warning("TCMU ring entry with unknown opcode %d at %d skipped",
                            event.opcode, event.offset)
        if self._ring.tail != tail:     # the tail moved over PAD/TMR entries
            self._schedule_notify()

    async def _run(self, command: Command) -> None:
        try:
            data_out = b""
            if wants_data_out(command.cdb):
                data_out = self._ring.gather(command.iovecs)
            result = await self._disk.execute(command.cdb, data_out, command.buffer_length)
        except Exception:
            log.exception("SCSI command %s failed inside the handler", command.cdb[:1].hex())
            result = ScsiResult.check_condition(
                sk.Sense(sk.HARDWARE_ERROR, sk.INTERNAL_TARGET_FAILURE))
        read_len = None
        if result.status == sk.GOOD and result.data:
            read_len = self._ring.scatter(command.iovecs, result.data)
        self._finish(command.cmd_id, result, read_len)

    def _finish(self, cmd_id: int, result: ScsiResult, read_len: int | None) -> None:
        if self._ring.out_of_order:
            self._ring.complete(cmd_id, result.status, result.sense, read_len)
            self.commands_done += 1
        else:
            self._finished[cmd_id] = (result, read_len)
            while self._in_order and self._in_order[0] in self._finished:
                first = self._in_order.popleft()
                done, length = self._finished.pop(first)
                self._ring.complete(first, done.status, done.sense, length)
                self.commands_done += 1
        self._schedule_notify()

    def _schedule_notify(self) -> None:
        if not self._notify_scheduled:
            self._notify_scheduled = True
            asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_scheduled = False
        try:
            self._device.notify()
        except OSError as exc:
            log.error("TCMU notify failed: %s", exc)
