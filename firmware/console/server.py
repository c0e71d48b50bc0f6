"""The console's I/O: serve :class:`ConsoleSession`\\ s on a pty, TCP and a serial device.

* **pty** (the simulated board's serial port): a pseudo-terminal pair in raw
  mode; the server keeps the master and reports the slave's path
  (``/dev/pts/N``) for clients such as ``tandem console /dev/pts/N``. The server
  also keeps the slave open, so that a client closing it does not hang up the
  master. One session, which outlives clients: they sync with ^C.
* **TCP**: one session per connection, usable as a pyserial ``socket://HOST:PORT``
  URL. Listens on 127.0.0.1:10810 unless told otherwise.
* **serial device** (a real board): opened with pyserial; one session.

Commands run on the event loop: the backend's methods are synchronous and quick.
Each session is isolated: garbage or a disconnect on one never reaches another
session or the appliance, and output to a peer that does not read is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tty

import serial

from firmware.console.grammar import CommandTable, ConsoleSession

log = logging.getLogger(__name__)

DEFAULT_TCP_ADDRESS = ("127.0.0.1", 10810)
DEFAULT_BAUDRATE = 115200
# Output kept for a pty or serial line nobody reads; older output is dropped beyond it.
MAX_PENDING_OUTPUT = 64 * 1024
_READ_SIZE = 4096


class ConsoleServer:
    """Serves the console on any of a pty, a TCP listener and a serial device.

    Usage::

        server = ConsoleServer(console_commands(appliance), pty=True)
        await server.start()
        print(server.pty_path, server.tcp_address)
        ...
        server.close()
        await server.wait_closed()
    """

    def __init__(self, commands: CommandTable, *,
                 tcp: tuple[str, int] | None = DEFAULT_TCP_ADDRESS,
                 pty: bool = False,
                 serial_device: str | None = None,
                 baudrate: int = DEFAULT_BAUDRATE,
                 echo: bool = False) -> None:
        self._commands = commands
        self._tcp_request = tcp
        self._want_pty = pty
        self._serial_device = serial_device
        self._baudrate = baudrate
        self._echo = echo
        self._tcp_server: asyncio.Server | None = None
        self._tcp_sessions: set[asyncio.Task[None]] = set()
        self._fd_channels: list[_FdChannel] = []
        self._pty_slave_fd: int | None = None
        self._serial_port: serial.Serial | None = None
        self.pty_path: str | None = None
        self.tcp_address: tuple[str, int] | None = None

    async def start(self) -> None:
        try:
            if self._tcp_request is not None:
                host, port = self._tcp_request
                self._tcp_server = await asyncio.start_server(self._serve_tcp, host, port)
                address = self._tcp_server.sockets[0].getsockname()
                self.tcp_address = (address[0], address[1])
            if self._want_pty:
                self._start_pty()
            if self._serial_device is not None:
                self._start_serial(self._serial_device)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop listening and end every session."""
        if self._tcp_server is not None:
            self._tcp_server.close()
        for task in self._tcp_sessions:
            task.cancel()
        for channel in self._fd_channels:
            channel.close()
        self._fd_channels.clear()
        if self._pty_slave_fd is not None:
            os.close(self._pty_slave_fd)
            self._pty_slave_fd = None
        if self._serial_port is not None:
            with contextlib.suppress(Exception):
                self._serial_port.close()
            self._serial_port = None

    async def wait_closed(self) -> None:
        if self._tcp_server is not None:
            await self._tcp_server.wait_closed()
        if self._tcp_sessions:
            await asyncio.gather(*self._tcp_sessions, return_exceptions=True)

    async def __aenter__(self) -> ConsoleServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # --- TCP ---

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tcp_sessions.add(task)
        peer = writer.get_extra_info("peername")
        session = ConsoleSession(self._commands, echo=self._echo)
        try:
            writer.write(session.greeting())
            while data := await reader.read(_READ_SIZE):
                writer.write(session.receive(data))
                # A client that writes without reading waits here, and only it does.
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("console session %s failed; closing it", peer)
        finally:
            self._tcp_sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # --- pty and serial: one session on a file descriptor ---

    def _start_pty(self) -> None:
        master, slave = os.openpty()
        # Raw: no echo, no line editing, no CR/LF translation by the kernel; the session does it.
        tty.setraw(slave)
        self._pty_slave_fd = slave
        self.pty_path = os.ttyname(slave)
        self._start_channel(master, self.pty_path, owns_fd=True)

    def _start_serial(self, device: str) -> None:
        port = serial.Serial(device, self._baudrate, timeout=0)
        self._serial_port = port
        self._start_channel(port.fileno(), device, owns_fd=False)

    def _start_channel(self, fd: int, name: str, owns_fd: bool) -> None:
        session = ConsoleSession(self._commands, echo=self._echo)
        channel = _FdChannel(asyncio.get_running_loop(), fd, name, session, owns_fd)
        self._fd_channels.append(channel)
        channel.start()


class _FdChannel:
    """A session on a character device: non-blocking reads and bounded, buffered writes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, name: str,
                 session: ConsoleSession, owns_fd: bool) -> None:
        self._loop = loop
        self._fd = fd
        self._name = name
        self._session = session
        self._owns_fd = owns_fd
        self._pending = bytearray()
        self._writing = False
        self._closed = False

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._on_readable)
        self._send(self._session.greeting())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        if self._owns_fd:
            os.close(self._fd)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("console on %s: read failed (%s); closing it", self._name, exc)
            self.close()
            return
        if not data:
            # A serial adapter that went away reads as ready and empty, forever.
            log.error("console on %s: device gone; closing it", self._name)
            self.close()
            return
        try:
            answer = self._session.receive(data)
        except Exception:
            log.exception("console on %s: session failed on input; input dropped", self._name)
            return
        self._send(answer)

    def _send(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._pending += data
        if len(self._pending) > MAX_PENDING_OUTPUT:
            # Nobody reads this line: keep the newest output, which ends with a prompt.
            del self._pending[:len(self._pending) - MAX_PENDING_OUTPUT]
        self._flush()

    def _flush(self) -> None:
        while self._pending and not self._closed:
            try:
                written = os.write(self._fd, self._pending)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EIO:  # a pty with nobody on the other side
                    self._pending.clear()
                    break
                log.error("console on %s: write failed (%s); closing it", self._name, exc)
                self.close()
                return
            del self._pending[:written]
        wants_writer = bool(self._pending) and not self._closed
        if wants_writer and not self._writing:
            self._loop.add_writer(self._fd, self._flush)
        elif not wants_writer and self._writing:
            self._loop.remove_writer(self._fd)
        self._writing = wants_writer
