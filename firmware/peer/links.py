"""The pair's two kinds of link: TCP (dialled and accepted) and a serial line (pyserial).

A link moves opaque payloads; framing.py frames them and the core (core.py) decides what
a payload means and whether the peer is alive, from its heartbeats. A link only says
which payloads arrived (``on_payload``) and whether it can carry frames now
(``on_state``), and it never blocks the event loop: a frame it cannot send right away
is dropped and counted, the core sends again what matters.

TCP: each node dials the peer's ``--peer-listen`` address and accepts the peer's own
dial, so there may be two connections per link. A frame goes out on the connection that
last delivered one (answers travel the path that works), else on the dialled one. A
connection that delivers nothing for ``stale_after_s`` is closed and dialled again: a
peer that lost power leaves a half-open socket that no error would ever close.

Serial: a device path or any pyserial URL (``socket://``, ``rfc2217://``, ``loop://``).
A reader thread feeds bytes to the loop; a writer thread drains a bounded queue, so a
line that stalls (a pty nobody reads) costs dropped frames, never a stuck loop. A device
that goes away is opened again every ``reopen_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from firmware.parsing import parse_host_port
from firmware.peer.framing import (
    SerialFrameDecoder,
    TcpFrameDecoder,
    encode_serial,
    encode_tcp,
)
from firmware.tasks import cancel_and_wait

log = logging.getLogger("tandem.peer.links")

PayloadSink = Callable[[str, bytes], None]  # (link name, payload)
StateSink = Callable[[str, bool], None]  # (link name, can carry frames)

TCP_SEND_BUFFER = 256 << 10  # bytes queued on a connection before frames are dropped
SERIAL_QUEUE_FRAMES = 64


def link_kind(url: str) -> str:
    """``tcp`` for ``tcp://HOST:PORT``; anything else is a serial device or pyserial URL."""
    return "tcp" if url.startswith("tcp://") else "serial"


@dataclass
class LinkCounters:
    frames_sent: int = 0
    frames_received: int = 0
    frames_dropped: int = 0  # not sent: no connection, a full buffer, a stalled line
    bytes_sent: int = 0
    bytes_received: int = 0
    connects: int = 0
    errors: int = 0
    decoder_dropped: int = 0  # bytes or frames the framing threw away (CRC, garbage)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class PeerLink(Protocol):
    name: str
    kind: str
    counters: LinkCounters

    @property
    def last_error(self) -> str | None: ...

    @property
    def up(self) -> bool: ...

    @property
    def enabled(self) -> bool: ...

    def start(self) -> None: ...

    def send(self, payload: bytes) -> None: ...

    def set_enabled(self, enabled: bool) -> None:
        """The operator's ``peer link up|down URL``: down closes the link and keeps it
        closed; up opens it again."""
        ...

    async def close(self) -> None: ...


class _Connection:
    """One TCP connection of a link, with its own decoder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 dialled: bool) -> None:
        self.reader = reader
        self.writer = writer
        self.dialled = dialled
        self.decoder = TcpFrameDecoder()
        self.last_rx = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class TcpPeerLink:
    kind = "tcp"

    def __init__(self, url: str, on_payload: PayloadSink, on_state: StateSink, *,
                 reconnect_s: float = 0.5, connect_timeout_s: float = 1.0,
                 stale_after_s: float = 3.0) -> None:
        if not url.startswith("tcp://"):
            raise ValueError(f"{url!r}: a TCP peer link is tcp://HOST:PORT")
        self.name = url
        self.host, self.port = parse_host_port(url[len("tcp://"):].rstrip("/"))
        self._on_payload = on_payload
        self._on_state = on_state
        self.reconnect_s = reconnect_s
        self.connect_timeout_s = connect_timeout_s
        self.stale_after_s = stale_after_s
        self.counters = LinkCounters()
        self.last_error: str | None = None
        self._connections: list[_Connection] = []
        self._preferred: _Connection | None = None
        self._dialler: asyncio.Task[None] | None = None
        self._enabled = True
        self._reported_up = False

    @property
    def up(self) -> bool:
        return bool(self._connections)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def start(self) -> None:
        if self._dialler is None and self._enabled:
            self._dialler = asyncio.get_running_loop().create_task(
                self._dial_forever(), name=f"peer-dial {self.name}")

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self._enabled:
            return
        self._enabled = enabled
        if enabled:
            self.start()
            return
        if self._dialler is not None:
            self._dialler.cancel()
            self._dialler = None
        for connection in list(self._connections):
            self._drop(connection)

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection the peer dialled to our ``--peer-listen``."""
        if not self._enabled:
            writer.close()
            return
        self._add(_Connection(reader, writer, dialled=False))

    def send(self, payload: bytes) -> None:
        connection = self._choose()
        if connection is None:
            self.counters.frames_dropped += 1
            return
        transport = connection.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > TCP_SEND_BUFFER:
            # The peer does not read (a partition that black-holes the path): losing
            # a frame is allowed, buffering without bound is not.
            self.counters.frames_dropped += 1
            return
        data = encode_tcp(payload)
        connection.writer.write(data)
        self.counters.frames_sent += 1
        self.counters.bytes_sent += len(data)

    def _choose(self) -> _Connection | None:
        preferred = self._preferred
        now = time.monotonic()
        if preferred is not None and preferred in self._connections \
                and now - preferred.last_rx < 1.0:
            return preferred
        for connection in self._connections:
            if connection.dialled:
                return connection
        return self._connections[-1] if self._connections else None

    async def _dial_forever(self) -> None:
        while self._enabled:
            if not any(c.dialled for c in self._connections):
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), self.connect_timeout_s)
                except (OSError, TimeoutError) as exc:
                    self._error(f"connect {self.host}:{self.port}: {exc or 'timed out'}")
                else:
                    self._add(_Connection(reader, writer, dialled=True))
            self._close_stale()
            await asyncio.sleep(self.reconnect_s)

    def _close_stale(self) -> None:
        # Only when the whole link is silent: while one connection delivers, the other
        # one may rightly carry nothing (both directions use the one that works).
        now = time.monotonic()
        if not self._connections or any(now - c.last_rx <= self.stale_after_s
                                        for c in self._connections):
            return
        self._error(f"no frame for {self.stale_after_s:.1f} s: reconnecting")
        for connection in list(self._connections):
            self._drop(connection)

    def _add(self, connection: _Connection) -> None:
        self.counters.connects += 1
        self.last_error = None
        with contextlib.suppress(OSError, AttributeError):
            import socket

            sock = connection.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.append(connection)
        connection.task = asyncio.get_running_loop().create_task(
            self._read(connection), name=f"peer-read {self.name}")
        self._report()

    async def _read(self, connection: _Connection) -> None:
        try:
            while True:
                data = await connection.reader.read(65536)
                if not data:
                    break
                self.counters.bytes_received += len(data)
                payloads = connection.decoder.feed(data)
                if payloads:
                    connection.last_rx = time.monotonic()
                    self._preferred = connection
                for payload in payloads:
                    self.counters.frames_received += 1
                    self._on_payload(self.name, payload)
                if connection.decoder.broken:
                    # The stream lost its frame boundaries: only a new connection resyncs.
                    self.counters.decoder_dropped += 1
                    self._error("framing broken: reconnecting")
                    break
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._error(f"read: {exc}")
        finally:
            self._drop(connection, from_reader=True)

    def _drop(self, connection: _Connection, *, from_reader: bool = False) -> None:
        if connection in self._connections:
            self._connections.remove(connection)
        if self._preferred is connection:
            self._preferred = None
        connection.close()
        if not from_reader and connection.task is not None:
            connection.task.cancel()
        self._report()

    def _report(self) -> None:
        if self.up != self._reported_up:
            self._reported_up = self.up
            self._on_state(self.name, self.up)

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.info("peer link %s: %s", self.name, message)
        self.last_error = message
        self.counters.errors += 1

    async def close(self) -> None:
        self._enabled = False
        await cancel_and_wait(self._dialler)
        self._dialler = None
        tasks = [c.task for c in self._connections if c.task is not None]
        for connection in list(self._connections):
            connection.close()
        for task in tasks:
            await cancel_and_wait(task)
        self._connections.clear()


class SerialPeerLink:
    kind = "serial"

    def __init__(self, url: str, on_payload: PayloadSink, on_state: StateSink, *,
                 baudrate: int = 115200, reopen_s: float = 1.0) -> None:
        self.name = url
        self.baudrate = baudrate
        self.reopen_s = reopen_s
        self._on_payload = on_payload
        self._on_state = on_state
        self.counters = LinkCounters()
        self.last_error: str | None = None
        self._decoder = SerialFrameDecoder()
        self._decoded_dropped = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port: Any = None
        self._queue: queue.Queue[bytes | None] = queue.Queue(SERIAL_QUEUE_FRAMES)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._enabled = True
        self._open = False

    @property
    def up(self) -> bool:
        return self._open

    @property
    def enabled(self) -> bool:
        return self._enabled

    def start(self) -> None:
        if self._threads or not self._enabled:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._queue = queue.Queue(SERIAL_QUEUE_FRAMES)
        self._threads = [
            threading.Thread(target=self._reader, name=f"peer-serial-rx {self.name}",
                             daemon=True),
            threading.Thread(target=self._writer, name=f"peer-serial-tx {self.name}",
                             daemon=True)]
        for thread in self._threads:
            thread.start()

    def set_enabled(self, enabled: bool) -> None:
        if enabled == self._enabled:
            return
        self._enabled = enabled
        if enabled:
            self.start()
        else:
            self._halt_threads()
            self._set_open(False)

    def send(self, payload: bytes) -> None:
        if not self._open:
            self.counters.frames_dropped += 1
            return
        try:
            self._queue.put_nowait(encode_serial(payload))
        except queue.Full:
            self.counters.frames_dropped += 1

    # -- threads ---------------------------------------------------------------------

    def _reader(self) -> None:
        import serial

        while not self._stop.is_set():
            try:
                port = serial.serial_for_url(self.name, baudrate=self.baudrate, timeout=0.2,
                                             write_timeout=1.0)
            except (OSError, ValueError, serial.SerialException) as exc:
                self._thread_error(f"open: {exc}")
                self._stop.wait(self.reopen_s)
                continue
            self._port = port
            self._call(self._opened)
            try:
                while not self._stop.is_set():
                    # One byte or the timeout, then whatever else is waiting: a frame
                    # is handed on as it arrives, not when 4 KiB have piled up.
                    data = port.read(1)
                    if data:
                        waiting = port.in_waiting
                        if waiting:
                            data += port.read(waiting)
                        self._call(self._received, bytes(data))
            except (OSError, serial.SerialException) as exc:
                self._thread_error(f"read: {exc}")
            finally:
                self._port = None
                self._call(self._set_open, False)
                with contextlib.suppress(Exception):
                    port.close()
            self._stop.wait(self.reopen_s)

    def _writer(self) -> None:
        import serial

        while not self._stop.is_set():
            data = self._queue.get()
            if data is None:
                return
            port = self._port
            if port is None:
                self._call(self._count_dropped)
                continue
            try:
                port.write(data)
            except (OSError, serial.SerialException) as exc:
                # serial.SerialTimeoutException included: a stalled line drops the frame.
                self._thread_error(f"write: {exc}")
                self._call(self._count_dropped)
            else:
                self._call(self._count_sent, len(data))

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _thread_error(self, message: str) -> None:
        self._call(self._error, message)

    # -- on the loop -----------------------------------------------------------------

    def _opened(self) -> None:
        self.counters.connects += 1
        self.last_error = None
        # Noise a reset line or an earlier session left behind must not glue itself to
        # the first frame: a fresh decoder, and every frame starts with a delimiter.
        self._decoder = SerialFrameDecoder()
        self._decoded_dropped = 0
        self._set_open(True)

    def _received(self, data: bytes) -> None:
        self.counters.bytes_received += len(data)
        payloads = self._decoder.feed(data)
        dropped = self._decoder.counters.dropped
        self.counters.decoder_dropped += dropped - self._decoded_dropped
        self._decoded_dropped = dropped
        for payload in payloads:
            self.counters.frames_received += 1
            self._on_payload(self.name, payload)

    def _count_sent(self, size: int) -> None:
        self.counters.frames_sent += 1
        self.counters.bytes_sent += size

    def _count_dropped(self) -> None:
        self.counters.frames_dropped += 1

    def _set_open(self, is_open: bool) -> None:
        if is_open != self._open:
            self._open = is_open
            self._on_state(self.name, is_open)

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.info("peer link %s: %s", self.name, message)
        self.last_error = message
        self.counters.errors += 1

    def _halt_threads(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        port = self._port
        if port is not None:
            with contextlib.suppress(Exception):
                port.cancel_read()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._threads = []

    async def close(self) -> None:
        self._enabled = False
        await asyncio.get_running_loop().run_in_executor(None, self._halt_threads)
        self._open = False


def open_link(url: str, on_payload: PayloadSink,
              on_state: StateSink) -> TcpPeerLink | SerialPeerLink:
    if link_kind(url) == "tcp":
        return TcpPeerLink(url, on_payload, on_state)
    return SerialPeerLink(url, on_payload, on_state)


class PeerListener:
    """``--peer-listen HOST:PORT``: connections the peer dials join our TCP link."""

    def __init__(self, host: str, port: int, link: TcpPeerLink | None) -> None:
        self.host = host
        self.port = port
        self._link = link
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, self.host, self.port)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._link is None:
            log.warning("peer connection from %s refused: no tcp:// peer link configured",
                        writer.get_extra_info("peername"))
            writer.close()
            return
        self._link.attach(reader, writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
