"""The second medium at a remote site: a Medium that replicates over the link to `tandem receive`.

The mirror calls it from a worker thread: a run of pwrite/write_zeroes, then
flush(). The run is one epoch: flush() closes it with a BARRIER and returns
once the receiver has applied the whole epoch and flushed its medium. So the
remote copy is always the image of the local volume at the end of some run.

Failures are reported once, like Linux reports a write-back error to fsync:
when the link breaks, the writes accepted since the last flush() are lost on
the far side (the receiver drops an epoch without its barrier), and the next
pwrite/write_zeroes/flush raises MediumError. That ends the run; the call after
it reconnects. So a flush() that returns covers every write since the previous
flush() unless an error was raised in between — a caller must treat any error
as the loss of its run (the mirror keeps the run's regions in its record).
pread/digests never consume that report: they raise while it is pending;
reset() drops it (the caller has already written its run off).

Pipelining: flush_async() closes the epoch without waiting and returns a
future for its acknowledgement, so the next run's data can be on the wire
while the receiver applies the previous one. An epoch closed that way and not
yet acknowledged when the link breaks counts as lost writes too: the next
write-path call raises, so a later run can never land on the far side in a new
session after an earlier one was lost (the remote stays a prefix of the local
history). ``sessions`` counts successful connects; a caller that must act on
each new session's Handshake (full sync, resync) compares it between runs.

The link's I/O runs on an asyncio loop: the appliance's own (``loop=``), or,
for a medium used without one (tests, tools), a private loop in a daemon
thread. Callers never touch sockets. The Medium calls block, so they must come
from another thread than the loop's (the mirror's worker); that is why a lock
and a condition remain: they guard what the caller's thread and the loop share.
Outgoing frames queue up to ``max_queued`` bytes (then pwrite
blocks: back-pressure) and leave at most ``rate_limit`` bytes/s.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hal.media.base import MediumError
from hal.media.remote.frames import (
    DEFAULT_DIGEST_ALG,
    MAX_DATA,
    MAX_DIGESTS,
    Connected,
    DataReceived,
    DigestsReceived,
    EpochAcked,
    FrameDecoder,
    PeerClosed,
    ProtocolError,
    Refused,
    RemoteState,
    SenderMachine,
)
from hal.media.remote.generations import (
    Decision,
    MemoryStateStore,
    StateStore,
    SyncState,
)
from hal.media.remote.net import PACE_SLICE, TokenBucket, set_keepalive

log = logging.getLogger("tandem.link")

GOODBYE_DRAIN_S = 2.0  # how long a close waits for the queued frames and the BYE to leave

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Handshake:
    """What the last successful connect learned about the remote copy."""

    decision: Decision
    explanation: str
    remote: SyncState
    remote_size: int


class _Link:
    """One authenticated connection and everything waiting on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 machine: SenderMachine, decoder: FrameDecoder, handshake: Handshake) -> None:
        self.reader = reader
        self.writer = writer
        self.machine = machine
        self.decoder = decoder
        self.handshake = handshake
        self.out: deque[bytes] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.failure: MediumError | None = None
        self.acks: dict[int, concurrent.futures.Future[Any]] = {}
        self.requests: dict[int, concurrent.futures.Future[Any]] = {}
        self.state_waiters: deque[concurrent.futures.Future[Any]] = deque()
        self.progress = 0  # bumped by every slice sent and frame received
        self.tasks: list[asyncio.Task[None]] = []
        self.newest_ack: concurrent.futures.Future[Any] | None = None  # the last barrier's
        self.async_epochs: set[int] = set()  # closed by flush_async(), not yet acknowledged
        self.lost_epochs = False  # the link failed with some of those: a loss to report
        self.watched = -1  # progress at the watchdog's last look


class RemoteMedium:
    """A Medium whose bytes live in a `tandem receive` at ``host:port``."""

    def __init__(self, host: str, port: int, key: bytes, size: int, *,
                 state: StateStore | None = None, tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, rate_limit: float | None = None,
                 timeout: float = 30.0, connect_timeout: float = 10.0,
                 max_queued: int = 32 * 1024 * 1024,
                 on_connect: Callable[[Handshake], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Nothing connects until the first call (or connect()).

        ``state``: where the appliance keeps its volume uuid and generations — pass a
        persistent store (generations.StateFile beside the local image, or NVRAM); the
        default forgets them, so a restarted appliance looks like another volume to the
        receiver and is refused. ``size``: the volume's; the remote medium may be larger.
        ``timeout``: seconds without any progress on the link before it counts as dead.
        ``on_connect``: told each new session's Handshake (its decision: full sync,
        resync...) from inside the call that connected; it must not call the medium.
        ``loop``: the running loop the link's I/O is to share (close with ``aclose()``
        there); None: a private loop in a thread of its own.
        """
        if not key:
            raise ValueError("empty link key")
        self._host = host
        self._port = port
        self._key = key
        self._size = size
        self._store = state if state is not None else MemoryStateStore()
        self._tls = tls
        self._server_hostname = server_hostname
        self._bucket = TokenBucket(rate_limit) if rate_limit else None
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_queued = max_queued
        self._on_connect = on_connect
        self._ops = threading.Lock()  # one public call at a time puts frames on the link
        self._cond = threading.Condition()  # guards link queues and futures (both threads)
        self._link: _Link | None = None
        self._unflushed = False  # writes accepted since the last flush() or error report
        self._closed = False
        self.handshake: Handshake | None = None
        self.sessions = 0  # successful connects so far
        self.acked_epochs = 0
        self.last_ack: float | None = None  # time.monotonic() of the last durable epoch
        self.bytes_sent = 0  # on the wire, every session (frames, headers included)
        self.bytes_received = 0
        self._thread: threading.Thread | None = None
        if loop is not None:
            self._loop = loop
        else:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                            name=f"link {host}:{port}")
            self._thread.start()

    # --- Medium ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return f"tandem://{self._host}:{self._port}"

    def pwrite(self, offset: int, data: bytes) -> None:
        self._check_range(offset, len(data))
        with self._ops:
            link = self._usable_link(report=True)
            self._wait_for_room(link)
            with self._cond:
                self._raise_if_failed(link, report=True)
                link.machine.write(offset, data)
                self._enqueue(link)
                self._unflushed = True

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check_range(offset, length)
        with self._ops:
            link = self._usable_link(report=True)
            with self._cond:
                self._raise_if_failed(link, report=True)
                link.machine.write_zeroes(offset, length, punch)
                self._enqueue(link)
                self._unflushed = True

    def flush(self) -> None:
        """Close the epoch; return once the receiver has it applied and durable."""
        link, ack = self._close_epoch()
        if ack is None:
            return
        try:
            self._wait(link, ack)
        except MediumError:
            with self._cond:
                link.lost_epochs = False  # this raise is the report
            raise

    def flush_async(self) -> concurrent.futures.Future[Any]:
        """Close the epoch now; the future resolves once it is applied and durable remotely.

        It fails with MediumError if the link breaks first; the loss is then also
        reported to the next pwrite/write_zeroes/flush unless reset() is called.
        Acknowledgements come in epoch order.
        """
        link, ack = self._close_epoch(asynchronous=True)
        if ack is None:
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            done.set_result(None)
            return done
        return ack

    def _close_epoch(self, asynchronous: bool = False
                     ) -> tuple[_Link, concurrent.futures.Future[Any] | None]:
        with self._ops:
            if self._closed:
                raise MediumError(errno.EBADF, f"{self.name}: closed")
            link = self._link
            if not self._unflushed:
                # Nothing new: wait for the newest epoch still unacknowledged, if any.
                if link is None:
                    return link, None  # type: ignore[return-value]
                with self._cond:
                    if link.lost_epochs and not asynchronous:
                        link.lost_epochs = False  # reported now
                        self._raise_if_failed(link)
                    ack = link.newest_ack
                return link, (ack if ack is not None and not ack.done() else None)
            self._unflushed = False
            assert link is not None  # _unflushed implies a link that accepted writes
            with self._cond:
                self._raise_if_failed(link, report=True)
                epoch = link.machine.barrier()
                ack = link.acks[epoch] = concurrent.futures.Future()
                link.newest_ack = ack
                if asynchronous:
                    link.async_epochs.add(epoch)
                self._enqueue(link)
        return link, ack

    def reset(self) -> None:
        """Forget a pending loss report: the caller has written off everything unacknowledged."""
        with self._ops:
            self._unflushed = False
            link = self._link
            if link is not None:
                with self._cond:
                    link.lost_epochs = False

    def pread(self, offset: int, length: int) -> bytes:
        """Read the remote copy (as of the last epoch the receiver has applied)."""
        self._check_range(offset, length)
        futures = []
        with self._ops:
            link = self._usable_link()
            with self._cond:
                self._raise_if_failed(link)
                for start in range(offset, offset + length, MAX_DATA):
                    n = min(MAX_DATA, offset + length - start)
                    req = link.machine.request_read(start, n)
                    futures.append(link.requests.setdefault(req, concurrent.futures.Future()))
                self._enqueue(link)
        return b"".join(self._wait(link, f).data for f in futures)

    def close(self) -> None:
        """Say goodbye (up to 2 s for the queue to drain) and close, from a caller's thread.

        On a shared loop, call ``aclose()`` from the loop instead; ``close()`` there only
        aborts the link (the loop cannot wait for itself)."""
        on_loop = self._on_loop_thread()
        with self._ops:
            if self._closed:
                return
            self._closed = True
            link, self._link = self._link, None
            if link is not None and link.failure is None and not on_loop:
                with self._cond:
                    self._say_goodbye(link)
                    deadline = time.monotonic() + GOODBYE_DRAIN_S
                    while link.queued and link.failure is None and time.monotonic() < deadline:
                        self._cond.wait(0.1)
            if link is not None:
                if on_loop:
                    self._abort(link)
                else:
                    asyncio.run_coroutine_threadsafe(self._close_link(link),
                                                     self._loop).result()
            if self._thread is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._loop.close()

    async def aclose(self) -> None:
        """``close()`` from the loop the link runs on: goodbye, drain (2 s at most), close."""
        with self._ops:
            if self._closed:
                return
            self._closed = True
            link, self._link = self._link, None
        if link is None:
            return
        if link.failure is None:
            with self._cond:
                self._say_goodbye(link)
            deadline = time.monotonic() + GOODBYE_DRAIN_S
            while link.queued and link.failure is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await self._close_link(link)

    def _say_goodbye(self, link: _Link) -> None:
        """Queue the BYE that tells the receiver this session ends cleanly (holds _cond)."""
        link.machine.bye("closed by the appliance")
        self._enqueue(link)

    def _on_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    # --- beyond the Medium protocol: resync, verify, status ---------------------------------

    def connect(self) -> Handshake:
        """Connect now if not connected (otherwise the first call does it); the handshake."""
        with self._ops:
            self._usable_link()
            assert self.handshake is not None
            return self.handshake

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.failure is None

    def digests(self, offset: int, length: int, block_size: int = 4096,
                alg: str = DEFAULT_DIGEST_ALG) -> list[bytes]:
        """Digests of the remote copy's blocks (checksum resync, verify)."""
        link, futures = self._request_digests(offset, length, block_size, alg)
        out: list[bytes] = []
        for f in futures:
            out += self._wait(link, f).digests
        return out

    def digests_async(self, offset: int, length: int, block_size: int = 4096,
                      alg: str = DEFAULT_DIGEST_ALG) -> concurrent.futures.Future[list[bytes]]:
        """digests() without waiting: ask now, collect later (overlaps the round trip).

        The receiver answers after applying every epoch closed before the request.
        """
        _link, futures = self._request_digests(offset, length, block_size, alg)
        combined: concurrent.futures.Future[list[bytes]] = concurrent.futures.Future()
        if not futures:
            combined.set_result([])
            return combined
        remaining = [len(futures)]
        lock = threading.Lock()

        def one_done(_: concurrent.futures.Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if not last or combined.done():
                return
            failed = next((f.exception() for f in futures if f.exception() is not None), None)
            if failed is not None:
                combined.set_exception(failed)
            else:
                combined.set_result([d for f in futures for d in f.result().digests])

        for f in futures:
            f.add_done_callback(one_done)
        return combined

    def _request_digests(self, offset: int, length: int, block_size: int, alg: str
                         ) -> tuple[_Link, list[concurrent.futures.Future[Any]]]:
        self._check_range(offset, length)
        futures = []
        step = MAX_DIGESTS * block_size
        with self._ops:
            link = self._usable_link()
            with self._cond:
                self._raise_if_failed(link)
                for start in range(offset, offset + length, step):
                    n = min(step, offset + length - start)
                    req = link.machine.request_digests(start, n, block_size, alg)
                    futures.append(link.requests.setdefault(req, concurrent.futures.Future()))
                self._enqueue(link)
        return link, futures

    def begin_resync(self) -> SyncState:
        """Mark the remote inconsistent before an out-of-order resync (runs its hook first)."""
        self.flush()
        return self._change_remote_state(False)

    def end_resync(self) -> SyncState:
        """After the resync is flushed: the remote is consistent and holds our generation."""
        self.flush()
        return self._change_remote_state(True)

    @property
    def rate_limit(self) -> float | None:
        return self._bucket.rate if self._bucket else None

    @rate_limit.setter
    def rate_limit(self, rate: float | None) -> None:
        self._bucket = TokenBucket(rate) if rate else None

    def status(self) -> dict[str, object]:
        link = self._link
        h = self.handshake
        return {
            "remote": self.name,
            "connected": self.connected,
            "decision": h.decision.value if h else None,
            "remote_consistent": h.remote.consistent if h else None,
            "acked_epochs": self.acked_epochs,
            "seconds_since_ack": (time.monotonic() - self.last_ack) if self.last_ack else None,
            "queued_bytes": link.queued if link else 0,
            "unacked_epochs": len(link.machine.unacked_epochs) if link else 0,
            "rate_limit": self.rate_limit,
            "failure": str(link.failure) if link and link.failure else None,
            "explanation": h.explanation if h else None,
            "sessions": self.sessions,
            "sent_bytes": self.bytes_sent,
            "received_bytes": self.bytes_received,
        }

    # --- caller-thread helpers ----------------------------------------------------------------

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise MediumError(errno.EINVAL, f"{self.name}: {offset}+{length} beyond "
                                            f"{self._size} bytes")

    def _usable_link(self, report: bool = False) -> _Link:
        """The live link; reconnects, unless lost writes are still to be reported.

        ``report``: this call is on the write path and may deliver that report.
        """
        if self._closed:
            raise MediumError(errno.EBADF, f"{self.name}: closed")
        link = self._link
        if link is not None and link.failure is None:
            return link
        if link is not None and (self._unflushed or link.lost_epochs):
            self._raise_if_failed(link, report)
        self._link = None
        future = asyncio.run_coroutine_threadsafe(self._open(), self._loop)
        link = future.result()
        self._link = link
        self.handshake = link.handshake
        self.sessions += 1
        if self._on_connect is not None:
            self._on_connect(link.handshake)
        return link

    def _raise_if_failed(self, link: _Link, report: bool = False) -> None:
        if link.failure is not None:
            if report:
                self._unflushed = False  # reported: the caller knows its run is lost
                link.lost_epochs = False
            raise _copy(link.failure)

    def _enqueue(self, link: _Link) -> None:
        """Move the machine's frames to the send queue (caller holds _cond)."""
        chunks = link.machine.take_outgoing()
        if not chunks:
            return
        was_empty = not link.out
        link.out.extend(chunks)
        link.queued += sum(len(c) for c in chunks)
        if was_empty:
            self._loop.call_soon_threadsafe(link.wake.set)

    def _wait_for_room(self, link: _Link) -> None:
        """Back-pressure: block while too much is queued; a link stuck for a timeout fails."""
        with self._cond:
            seen = link.progress
            while link.queued > self._max_queued and link.failure is None:
                if not self._cond.wait(self._timeout) and link.progress == seen:
                    break
                seen = link.progress
            stuck = link.queued > self._max_queued and link.failure is None
        if stuck:
            self._fail(link, MediumError(errno.ETIMEDOUT, f"{self.name}: link stalled"))

    def _wait(self, link: _Link, future: concurrent.futures.Future[Any]) -> Any:
        """The future's result; fails the link if nothing moves on it for a timeout."""
        seen = link.progress
        while True:
            try:
                return future.result(timeout=self._timeout)
            except concurrent.futures.TimeoutError:
                if link.progress == seen:
                    self._fail(link, MediumError(errno.ETIMEDOUT,
                                                 f"{self.name}: no answer from the receiver"))
                seen = link.progress

    def _change_remote_state(self, consistent: bool) -> SyncState:
        with self._ops:
            link = self._usable_link()
            with self._cond:
                self._raise_if_failed(link)
                link.machine.send_state(consistent)
                waiter: concurrent.futures.Future[Any] = concurrent.futures.Future()
                link.state_waiters.append(waiter)
                self._enqueue(link)
        state = self._wait(link, waiter)
        if self.handshake is not None:
            self.handshake = replace(self.handshake, remote=state)
        return state

    # --- loop-thread side ---------------------------------------------------------------------

    async def _open(self) -> _Link:
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._tls, limit=READ_SIZE,
                    server_hostname=(self._server_hostname or self._host) if self._tls else None)
        except TimeoutError:
            raise MediumError(errno.ETIMEDOUT, f"{self.name}: connect timed out") from None
        except OSError as exc:
            raise MediumError(exc.errno or errno.ECONNREFUSED,
                              f"{self.name}: cannot connect: {exc.strerror or exc}") from None
        set_keepalive(writer)
        machine = SenderMachine(self._key, state=self._store.load(), size=self._size,
                                nonce=os.urandom(32))
        decoder = FrameDecoder()
        try:
            async with asyncio.timeout(self._connect_timeout):
                handshake = await self._handshake(reader, writer, machine, decoder)
        except BaseException as exc:
            writer.transport.abort()
            if isinstance(exc, TimeoutError):
                raise MediumError(errno.ETIMEDOUT, f"{self.name}: handshake timed out") from None
            if isinstance(exc, ProtocolError):
                raise MediumError(errno.EPROTO, f"{self.name}: {exc}") from None
            if isinstance(exc, OSError) and not isinstance(exc, MediumError):
                raise MediumError(errno.ECONNRESET, f"{self.name}: {exc}") from None
            raise
        link = _Link(reader, writer, machine, decoder, handshake)
        link.tasks = [asyncio.create_task(self._pump(link)),
                      asyncio.create_task(self._read(link)),
                      asyncio.create_task(self._watch(link))]
        return link

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         machine: SenderMachine, decoder: FrameDecoder) -> Handshake:
        machine.start()
        while True:
            writer.writelines(machine.take_outgoing())
            await writer.drain()
            data = await reader.read(READ_SIZE)
            if not data:
                raise MediumError(errno.ECONNRESET,
                                  f"{self.name}: receiver hung up during the handshake")
            decoder.feed(data)
            while (frame := decoder.next_frame()) is not None:
                for event in machine.receive_frame(frame):
                    if isinstance(event, Connected):
                        writer.writelines(machine.take_outgoing())
                        return Handshake(event.decision, event.explanation, event.remote,
                                         event.remote_size)
                    if isinstance(event, Refused):
                        writer.writelines(machine.take_outgoing())
                        await _drain_quietly(writer)
                        code = {"auth": errno.EACCES, "size": errno.ENOSPC}.get(event.code,
                                                                               errno.EPERM)
                        raise MediumError(code, f"{self.name}: {event.message}")
                    if isinstance(event, PeerClosed):
                        raise MediumError(errno.ECONNRESET,
                                          f"{self.name}: receiver: {event.code}: {event.message}")

    async def _pump(self, link: _Link) -> None:
        """Send queued frames in order, paced by the rate cap."""
        try:
            while True:
                with self._cond:
                    chunk = link.out.popleft() if link.out else None
                    if chunk is None:
                        link.wake.clear()
                if chunk is None:
                    await link.wake.wait()
                    continue
                bucket = self._bucket
                if bucket is None:
                    link.writer.write(chunk)
                    await link.writer.drain()
                    link.progress += 1
                    self.bytes_sent += len(chunk)
                else:
                    view = memoryview(chunk)
                    for start in range(0, len(chunk), PACE_SLICE):
                        piece = view[start:start + PACE_SLICE]
                        delay = bucket.delay(len(piece), time.monotonic())
                        if delay > 0:
                            await asyncio.sleep(delay)
                        link.writer.write(piece)
                        await link.writer.drain()
                        link.progress += 1
                        self.bytes_sent += len(piece)
                with self._cond:
                    link.queued -= len(chunk)
                    self._cond.notify_all()
        except (OSError, RuntimeError) as exc:
            self._fail(link, MediumError(errno.ECONNRESET, f"{self.name}: link lost: {exc}"))

    async def _watch(self, link: _Link) -> None:
        """Fail a link on which something is awaited and nothing has moved for a timeout.

        Callers of flush()/digests() also watch while they wait; this covers the
        futures of flush_async(), which nobody waits on in this class.
        """
        while link.failure is None:
            await asyncio.sleep(self._timeout)
            with self._cond:
                waiting = bool(link.acks or link.requests or link.state_waiters or link.queued)
                stuck = waiting and link.progress == link.watched
                link.watched = link.progress
            if stuck:
                self._fail(link, MediumError(errno.ETIMEDOUT,
                                             f"{self.name}: no answer from the receiver"))

    async def _read(self, link: _Link) -> None:
        """Digest the receiver's frames: acks and answers resolve the callers' futures."""
        try:
            while True:
                while (frame := link.decoder.next_frame()) is not None:
                    with self._cond:
                        events = link.machine.receive_frame(frame)
                        link.progress += 1
                    for event in events:
                        self._dispatch(link, event)
                data = await link.reader.read(READ_SIZE)
                if not data:
                    raise MediumError(errno.ECONNRESET, f"{self.name}: receiver closed the link")
                link.decoder.feed(data)
                self.bytes_received += len(data)
        except MediumError as exc:
            self._fail(link, exc)
        except ProtocolError as exc:
            self._fail(link, MediumError(errno.EPROTO, f"{self.name}: bad frame: {exc}"))
        except OSError as exc:
            self._fail(link, MediumError(errno.ECONNRESET, f"{self.name}: link lost: {exc}"))

    def _dispatch(self, link: _Link, event: object) -> None:
        with self._cond:
            if isinstance(event, EpochAcked):
                if not event.durable:
                    return
                future = link.acks.pop(event.epoch, None)
                link.async_epochs.discard(event.epoch)
                self.acked_epochs += 1
                self.last_ack = time.monotonic()
            elif isinstance(event, DigestsReceived | DataReceived):
                future = link.requests.pop(event.req_id, None)
            elif isinstance(event, RemoteState):
                future = link.state_waiters.popleft() if link.state_waiters else None
                event = event.state
            elif isinstance(event, PeerClosed):
                future = None
            else:
                return
        if isinstance(event, PeerClosed):
            what = f"{event.code}: {event.message}" if event.code else f"bye {event.message}"
            self._fail(link, MediumError(errno.ECONNRESET, f"{self.name}: receiver: {what}"))
        elif future is not None and not future.done():
            future.set_result(event)

    def _fail(self, link: _Link, error: MediumError) -> None:
        """Mark the link broken (either thread); everyone waiting on it gets the error."""
        with self._cond:
            if link.failure is not None:
                return
            link.failure = error
            link.lost_epochs = bool(link.async_epochs)
            waiting = [*link.acks.values(), *link.requests.values(), *link.state_waiters]
            link.acks.clear()
            link.requests.clear()
            link.state_waiters.clear()
            self._cond.notify_all()
        for future in waiting:
            if not future.done():
                future.set_exception(_copy(error))
        self._diverge()
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._abort, link)

    def _diverge(self) -> None:
        """Our data may now move ahead of the remote copy: start a new generation, once.

        Only if the remote held our current generation; if it was already behind, the
        generation it holds is in our history either way.
        """
        state = self._store.load()
        if self.handshake is not None and self.handshake.remote.current == state.current:
            self._store.save(state.rotated())

    def _abort(self, link: _Link) -> None:
        link.writer.transport.abort()
        for task in link.tasks:
            task.cancel()

    async def _close_link(self, link: _Link) -> None:
        self._abort(link)
        await asyncio.gather(*link.tasks, return_exceptions=True)


def _copy(error: MediumError | None) -> MediumError:
    """A fresh exception per raise (one instance raised in two threads garbles tracebacks)."""
    if error is None:
        return MediumError(errno.ENOTCONN, "link not connected")
    return MediumError(error.errno, error.strerror)


async def _drain_quietly(writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(1.0):
            await writer.drain()
    except (TimeoutError, OSError):
        pass
