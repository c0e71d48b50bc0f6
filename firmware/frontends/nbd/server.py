"""The asyncio side of the NBD frontend: sockets in, a BlockTarget behind.

:class:`NbdServer` listens on TCP and runs one :class:`NbdConnection` (an
``asyncio.Protocol``) per client. Each connection feeds the bytes it receives to the
protocol core (:mod:`.protocol`) and hands the requests to the target concurrently:
replies may go out in any order, a write is answered only after ``target.write``
returned, and a flush only after ``target.flush`` returned (the target makes a flush
cover every write completed before it, which is every write already answered).

Speed matters more here than anywhere else in the frontend, so:

* a target coroutine is first driven by hand (``coro.send(None)``); only if it really
  suspends does it get an asyncio Task, which resumes it where it stopped;
* replies are gathered and written with one ``transport.write`` per batch (one per
  ``data_received``, one per loop iteration for requests that finished later);
* reading stops while a connection has too many requests or bytes outstanding, or
  while its transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from firmware.frontends.nbd.protocol import (
    Disconnect,
    Export,
    FlushRequest,
    InvalidRequest,
    NbdError,
    ProtocolViolation,
    ReadRequest,
    Ready,
    ServerConnection,
    TrimRequest,
    WriteRequest,
    WriteZeroesRequest,
)
from firmware.volume.target import BlockTarget, TargetError

log = logging.getLogger("tandem.nbd")

DEFAULT_DESCRIPTION = "Tandem mirrored volume"

# Per-connection back-pressure: stop reading from the client beyond these.
MAX_REQUESTS_IN_FLIGHT = 256
MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
# Transport write buffer: above HIGH the transport asks us to pause; replies queued by us
# beyond OUTPUT_BATCH are written out at once rather than batched further.
WRITE_BUFFER_HIGH = 8 * 1024 * 1024
WRITE_BUFFER_LOW = 1024 * 1024
OUTPUT_BATCH = 256 * 1024
HANDSHAKE_TIMEOUT = 60.0
# Once a target coroutine suspends, this many requests go straight to Tasks before
# driving by hand is tried again (it costs a little on every step of a suspended request).
SKIP_HAND_DRIVING_AFTER_SUSPENSION = 32

_NBD_ERROR_FOR_ERRNO: dict[int, int] = {
    errno.EPERM: NbdError.EPERM,
    errno.EACCES: NbdError.EPERM,
    errno.EROFS: NbdError.EPERM,
    errno.EIO: NbdError.EIO,
    errno.ENOMEM: NbdError.ENOMEM,
    errno.EINVAL: NbdError.EINVAL,
    errno.ENOSPC: NbdError.ENOSPC,
    errno.EDQUOT: NbdError.ENOSPC,  # proto.md: map EDQUOT and EFBIG to ENOSPC
    errno.EFBIG: NbdError.ENOSPC,
    errno.EOVERFLOW: NbdError.EOVERFLOW,
    errno.ENOTSUP: NbdError.ENOTSUP,
    errno.EOPNOTSUPP: NbdError.ENOTSUP,
    errno.ESHUTDOWN: NbdError.ESHUTDOWN,
}


def nbd_error(err: int) -> int:
    """The NBD error value for an errno; anything unknown is an I/O error."""
    return int(_NBD_ERROR_FOR_ERRNO.get(err, NbdError.EIO))


class _Resume:
    """Awaiting this carries on a coroutine that suspended while driven by hand.

    ``yielded`` is what the coroutine yielded to its driver (a future, or ``None`` for a
    bare yield); yielding it again from inside a Task makes the Task wait on it exactly
    as if it had driven the coroutine from the start.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        yielded = self._yielded
        while True:
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation and the like go to the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration as stop:
                    return stop.value


async def _trim_then_flush(target: BlockTarget, offset: int, length: int) -> None:
    # BlockTarget.trim has no FUA flag: make a FUA trim durable with a flush.
    await target.trim(offset, length)
    await target.flush()


_Completion = Callable[[Any, Any], None]


class NbdConnection(asyncio.Protocol):
    """One client: the protocol core plus the glue to the transport and the target."""

    def __init__(self, server: NbdServer) -> None:
        self._server = server
        self._target = server.target
        self._loop = asyncio.get_running_loop()
        self._core = ServerConnection(server.exports)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._out: list[bytes] = []
        self._out_size = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests_in_flight = 0
        self._bytes_in_flight = 0
        self._handshaking = True
        self._write_paused = False  # the transport's write buffer is full
        self._finishing = False  # no more requests: the client disconnected or we shut down
        self._lost = False
        self._hold = False  # stop taking events from the core (any of the above)
        self._reading_paused = False
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._straight_to_task = 0
        self._reply_ok_bound: _Completion = self._reply_ok  # bound once, used per request
        self._reply_read_bound: _Completion = self._reply_read
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._handlers: dict[type, Callable[[Any], None]] = {
            WriteRequest: self._on_write,
            ReadRequest: self._on_read,
            FlushRequest: self._on_flush,
            TrimRequest: self._on_trim,
            WriteZeroesRequest: self._on_write_zeroes,
            InvalidRequest: self._on_invalid,
            Ready: self._on_ready,
            Disconnect: self._on_disconnect,
            ProtocolViolation: self._on_violation,
        }

    # -- transport callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        log.info("connection from %s", self._peer)
        self._server._connections.add(self)
        self._handshake_timer = self._loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_expired)
        self._queue(self._core.data_to_send())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._core.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self._core.receive_data(b"")
        self._process()
        return True  # keep our half open until outstanding replies are out

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("connection from %s lost: %s", self._peer, exc)
        else:
            log.info("connection from %s closed", self._peer)
        self._lost = True
        self._hold = True
        self._out.clear()
        self._out_size = 0
        self._cancel_handshake_timer()
        self._server._connections.discard(self)
        if not self._requests_in_flight and not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_hold()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_hold()
        self._process()

    # -- event processing ----------------------------------------------------------

    def _process(self) -> None:
        core = self._core
        handlers = self._handlers
        while not self._hold:
            event = core.next_event()
            if event is None:
                break
            handlers[type(event)](event)
            if self._out_size > OUTPUT_BATCH:
                self._flush()  # may pause writing, which sets _hold
        if self._handshaking:
            self._queue(core.data_to_send())
        self._flush()

    def _update_hold(self) -> None:
        hold = (self._write_paused or self._finishing or self._lost
                or self._requests_in_flight >= MAX_REQUESTS_IN_FLIGHT
                or self._bytes_in_flight >= MAX_BYTES_IN_FLIGHT)
        self._hold = hold
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            return
        if hold and not self._reading_paused:
            transport.pause_reading()
            self._reading_paused = True
        elif not hold and self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False

    def _on_ready(self, event: Ready) -> None:
        self._handshaking = False
        self._cancel_handshake_timer()
        self._queue(self._core.data_to_send())
        log.info("%s: transmission on export %r (%d bytes, structured replies %s)",
                 self._peer, event.export.name, event.export.size,
                 "on" if event.structured_replies else "off")

    def _on_write(self, event: WriteRequest) -> None:
        self._run(event, self._target.write(event.offset, event.data, event.fua),
                  self._reply_ok_bound, len(event.data))

    def _on_read(self, event: ReadRequest) -> None:
        self._run(event, self._target.read(event.offset, event.length),
                  self._reply_read_bound, event.length)

    def _on_flush(self, event: FlushRequest) -> None:
        self._run(event, self._target.flush(), self._reply_ok_bound, 0)

    def _on_trim(self, event: TrimRequest) -> None:
        if event.fua:
            coro = _trim_then_flush(self._target, event.offset, event.length)
        else:
            coro = self._target.trim(event.offset, event.length)
        self._run(event, coro, self._reply_ok_bound, 0)

    def _on_write_zeroes(self, event: WriteZeroesRequest) -> None:
        coro = self._target.write_zeroes(event.offset, event.length, fua=event.fua,
                                         may_trim=not event.no_hole)
        self._run(event, coro, self._reply_ok_bound, 0)

    def _on_invalid(self, event: InvalidRequest) -> None:
        log.debug("%s: refused request %#x: %s", self._peer, event.handle, event.reason)
        self._queue(self._core.send_error(event.handle, event.error, event.reason))

    def _on_disconnect(self, event: Disconnect) -> None:
        log.info("%s: %s", self._peer, event.reason)
        self._queue(self._core.data_to_send())  # the ACK to NBD_OPT_ABORT, if that was it
        self._finish()

    def _on_violation(self, event: ProtocolViolation) -> None:
        log.warning("%s: protocol violation, disconnecting: %s", self._peer, event.reason)
        self._hold = True
        self._queue(self._core.data_to_send())  # option replies that came before it
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshaking and self._transport is not None:
            log.warning("%s: no handshake within %.0f s, disconnecting",
                        self._peer, HANDSHAKE_TIMEOUT)
            self._transport.close()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _finish(self) -> None:
        """Take no more requests; close once the outstanding ones are answered."""
        self._finishing = True
        self._update_hold()
        self._flush()
        if not self._requests_in_flight and self._transport is not None:
            self._transport.close()

    # -- running requests on the target --------------------------------------------

    def _run(self, event: Any, coro: Coroutine[Any, Any, Any], complete: _Completion,
             cost: int) -> None:
        if self._straight_to_task:
            # The target has been suspending lately: trying it by hand would only add a
            # layer to every step of the Task.
            self._straight_to_task -= 1
            self._start_task(event, coro, complete, cost)
            return
        # Drive the coroutine by hand first: if it completes without suspending, no Task
        # (and no extra trip round the event loop) is needed.
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            complete(event, stop.value)
            return
        except Exception as exc:  # every failure becomes an NBD error
            self._reply_failure(event, exc)
            return
        self._straight_to_task = SKIP_HAND_DRIVING_AFTER_SUSPENSION
        self._start_task(event, _Resume(coro, yielded), complete, cost)

    def _start_task(self, event: Any, awaitable: Awaitable[Any], complete: _Completion,
                    cost: int) -> None:
        self._requests_in_flight += 1
        self._bytes_in_flight += cost
        task = self._loop.create_task(self._finish_later(event, awaitable, complete, cost))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if (self._requests_in_flight >= MAX_REQUESTS_IN_FLIGHT
                or self._bytes_in_flight >= MAX_BYTES_IN_FLIGHT):
            self._update_hold()

    async def _finish_later(self, event: Any, awaitable: Awaitable[Any], complete: _Completion,
                            cost: int) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._reply_failure(event, exc)
        else:
            complete(event, result)
        finally:
            self._requests_in_flight -= 1
            self._bytes_in_flight -= cost
            self._after_completion()

    def _after_completion(self) -> None:
        if self._lost:
            if not self._requests_in_flight and not self.closed.done():
                self.closed.set_result(None)
            return
        if self._finishing:
            self._flush()
            if not self._requests_in_flight and self._transport is not None:
                self._transport.close()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)
        if self._hold and not self._write_paused:
            self._update_hold()
            if not self._hold:
                self._process()

    def _reply_ok(self, event: Any, _result: object) -> None:
        reply = self._core.send_ok(event.handle)
        self._out.append(reply)
        self._out_size += len(reply)

    def _reply_read(self, event: ReadRequest, data: bytes) -> None:
        if len(data) != event.length:
            log.error("%s: target returned %d bytes for a read of %d at %d", self._peer,
                      len(data), event.length, event.offset)
            self._queue(self._core.send_error(event.handle, NbdError.EIO, "short read"))
            return
        header, payload = self._core.send_read_reply(event.handle, event.offset, data)
        self._out.append(header)
        self._out.append(payload)
        self._out_size += len(header) + len(payload)

    def _reply_failure(self, event: Any, exc: Exception) -> None:
        if isinstance(exc, TargetError):
            error = nbd_error(exc.errno)
            log.debug("%s: request %#x failed: %s", self._peer, event.handle, exc)
        else:
            error = NbdError.EIO
            log.error("%s: request %r failed unexpectedly", self._peer, event, exc_info=exc)
        self._queue(self._core.send_error(event.handle, error, str(exc)))

    # -- output --------------------------------------------------------------------

    def _queue(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self._out_size += len(data)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        transport = self._transport
        if transport is None or self._lost or transport.is_closing():
            out.clear()
            self._out_size = 0
            return
        if len(out) == 1:
            transport.write(out[0])
        elif self._out_size <= OUTPUT_BATCH:
            transport.write(b"".join(out))
        else:
            for part in out:  # large reads: skip the copy a join would make
                transport.write(part)
        out.clear()
        self._out_size = 0

    # -- server shutdown -----------------------------------------------------------

    def shut_down(self) -> None:
        """Stop taking requests, answer the outstanding ones, then close.

        Requests received but not yet started are refused with ESHUTDOWN, which tells
        the client to disconnect (proto.md, "Terminating the transmission phase").
        """
        if self._lost:
            return
        if self._handshaking:
            if self._transport is not None:
                self._transport.close()
            return
        self._finishing = True
        core = self._core
        while (event := core.next_event()) is not None:
            handle = getattr(event, "handle", None)
            if handle is None:
                break  # the client's end of the session: nothing more to answer
            self._queue(core.send_error(handle, NbdError.ESHUTDOWN, "server is shutting down"))
        self._finish()


class NbdServer:
    """An NBD server exporting one BlockTarget under one name (also the default export)."""

    def __init__(self, target: BlockTarget, host: str = "127.0.0.1", port: int = 10809,
                 export_name: str = "tandem", description: str = DEFAULT_DESCRIPTION,
                 minimum_block_size: int | None = None) -> None:
        self.target = target
        self.host = host
        self.requested_port = port
        minimum = target.logical_block_size if minimum_block_size is None else minimum_block_size
        self.export = Export(
            name=export_name, size=target.size, read_only=target.read_only,
            description=description, minimum_block_size=minimum,
            preferred_block_size=max(target.preferred_block_size, minimum, 512))
        self.exports = (self.export,)
        self._server: asyncio.Server | None = None
        self._connections: set[NbdConnection] = set()

    @property
    def connections(self) -> int:
        """How many clients are connected now."""
        return len(self._connections)

    @property
    def port(self) -> int:
        """The port actually listened on (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: NbdConnection(self), self.host,
                                                self.requested_port)
        log.info("NBD export %r (%d bytes%s) on %s:%d", self.export.name, self.export.size,
                 ", read-only" if self.export.read_only else "", self.host, self.port)

    async def close(self) -> None:
        """Stop listening, let every connection answer what it has in flight, then close."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        connections = list(self._connections)
        for connection in connections:
            connection.shut_down()
        if connections:
            await asyncio.gather(*(c.closed for c in connections))

    async def __aenter__(self) -> NbdServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def serve_nbd(target: BlockTarget, host: str, port: int, export_name: str = "tandem",
                    description: str = DEFAULT_DESCRIPTION) -> NbdServer:
    """Start an NBD server for ``target``; ``await server.close()`` to stop it."""
    server = NbdServer(target, host, port, export_name, description)
    await server.start()
    return server


__all__ = ["NbdConnection", "NbdServer", "nbd_error", "serve_nbd"]
