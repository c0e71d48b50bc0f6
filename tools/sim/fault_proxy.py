"""Links that fail on purpose, for the pair's tests (netem does not exist on this kernel).

:class:`FaultyTcpProxy` forwards TCP connections from its own port to a target and,
per direction, passes, blackholes (bytes vanish, connections stay up: a partition
the endpoints only notice by silence) or cuts (connections closed, new ones refused).

:class:`FaultySerialPair` is a null-modem cable between two ptys: what is written
on one end is read on the other, unless the cable is down (bytes vanish), or it
injects garbage, flips bits or drops bytes at the rates it is given (seeded).

Both run on an asyncio loop; the tests change their mode while traffic flows.
"""

from __future__ import annotations

import asyncio
import enum
import os
import random
import termios
import tty
from dataclasses import dataclass


class Mode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"  # bytes are discarded, the connection stays open
    CUT = "cut"  # connections are closed and new ones refused


class FaultyTcpProxy:
    """``listen`` → ``target``; ``forward`` is the client→target direction."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)
                 ) -> None:
        self.target = target
        self._listen = listen
        self.forward = Mode.PASS
        self.backward = Mode.PASS
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0
        self.bytes_dropped = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def start(self) -> FaultyTcpProxy:
        self._server = await asyncio.start_server(self._accept, *self._listen)
        return self

    def set(self, mode: Mode, direction: str = "both") -> None:
        """``direction``: "forward", "backward" or "both"."""
        if direction in ("forward", "both"):
            self.forward = mode
        if direction in ("backward", "both"):
            self.backward = mode
        if mode is Mode.CUT:
            for writer in list(self._writers):
                writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if Mode.CUT in (self.forward, self.backward):
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        pipes = [asyncio.ensure_future(self._pipe(reader, up_writer, "forward")),
                 asyncio.ensure_future(self._pipe(up_reader, writer, "backward"))]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    direction: str) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            mode = self.forward if direction == "forward" else self.backward
            if mode is not Mode.PASS:
                self.bytes_dropped += len(data)
                continue
            writer.write(data)
            await writer.drain()


@dataclass
class LineNoise:
    """Per byte on the cable: the chance it is dropped, has a bit flipped, or is
    followed by a burst of garbage (1..32 random bytes)."""

    drop: float = 0.0
    flip: float = 0.0
    garbage: float = 0.0


class FaultySerialPair:
    """Two ptys joined like a null-modem cable; ``.a`` and ``.b`` are the device paths."""

    def __init__(self, seed: int = 0) -> None:
        self._ends = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(slave)  # a line discipline would eat or translate bytes
            attrs = termios.tcgetattr(slave)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            os.set_blocking(master, False)
            self._ends.append((master, slave, os.ttyname(slave)))
        self.a = self._ends[0][2]
        self.b = self._ends[1][2]
        # Per direction: what the end ``a`` writes reaches ``b`` (and the reverse).
        self.a_to_b = True
        self.b_to_a = True
        self.noise = LineNoise()
        self._rng = random.Random(seed)
        self.bytes_carried = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def up(self) -> bool:
        return self.a_to_b and self.b_to_a

    @up.setter
    def up(self, up: bool) -> None:
        self.a_to_b = self.b_to_a = up

    def start(self) -> FaultySerialPair:
        self._loop = asyncio.get_running_loop()
        (ma, _, _), (mb, _, _) = self._ends
        self._loop.add_reader(ma, self._carry, ma, mb)
        self._loop.add_reader(mb, self._carry, mb, ma)
        return self

    def _carry(self, source: int, sink: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, OSError):
            return
        carries = self.a_to_b if source == self._ends[0][0] else self.b_to_a
        if not carries or not data:
            return
        out = bytearray()
        noise, rng = self.noise, self._rng
        for byte in data:
            if noise.drop and rng.random() < noise.drop:
                continue
            if noise.flip and rng.random() < noise.flip:
                byte ^= 1 << rng.randrange(8)
            out.append(byte)
            if noise.garbage and rng.random() < noise.garbage:
                out += rng.randbytes(rng.randrange(1, 33))
        self.bytes_carried += len(out)
        try:
            os.write(sink, out)
        except (BlockingIOError, OSError):
            pass  # a full pty buffer loses bytes, as an overrun UART does

    def close(self) -> None:
        if self._loop is not None:
            for master, _, _ in self._ends:
                self._loop.remove_reader(master)
        for master, slave, _ in self._ends:
            os.close(master)
            os.close(slave)
