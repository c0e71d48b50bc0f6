"""The asyncio NBD server with a raw client: concurrency, ordering, errors, back-pressure."""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
from collections.abc import Awaitable, Callable

import pytest

import firmware.frontends.nbd.server as nbd_server
from firmware.frontends.nbd.server import NbdServer, nbd_error, serve_nbd
from firmware.volume.target import TargetError
from tests.nbd.nbd_wire import (
    CHUNK_ERROR,
    CHUNK_OFFSET_DATA,
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE_ZEROES,
    EINVAL,
    EIO,
    ENOSPC,
    EPERM,
    ESHUTDOWN,
    FLAG_FUA,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    Reply,
    client_flags,
    go,
    option,
    request,
    write,
)
from tools.sim.memory_target import MemoryTarget

SIZE = 4 << 20
TIMEOUT = 20  # only guards against hangs; no test depends on it


class GatedTarget(MemoryTarget):
    """A MemoryTarget whose requests can be held at a gate, fail, or suspend on every call."""

    def __init__(self, size: int = SIZE, read_only: bool = False) -> None:
        super().__init__(size, read_only)
        self.gates: dict[int, asyncio.Event] = {}  # offset -> gate for reads and writes
        self.flush_gate: asyncio.Event | None = None
        self.failures: dict[int, BaseException] = {}  # offset -> raised after the gate
        self.always_yield = False
        self.waiting = 0
        self.reads = 0
        self.short_reads = False

    async def _pass(self, offset: int) -> None:
        if self.always_yield:
            await asyncio.sleep(0)
        gate = self.gates.get(offset)
        if gate is not None:
            self.waiting += 1
            try:
                await gate.wait()
            finally:
                self.waiting -= 1
        failure = self.failures.get(offset)
        if failure is not None:
            raise failure

    async def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        await self._pass(offset)
        data = await super().read(offset, length)
        return data[:-1] if self.short_reads else data

    async def write(self, offset: int, data: bytes, fua: bool = False) -> None:
        await self._pass(offset)
        await super().write(offset, data, fua)

    async def flush(self) -> None:
        if self.flush_gate is not None:
            await self.flush_gate.wait()
        await super().flush()

    def contents(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset:offset + length])


class RawClient:
    """Speaks NBD byte by byte over a socket, so tests can see each reply as it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.structured = False
        self.read_lengths: dict[int, int] = {}

    @classmethod
    async def connect(cls, port: int, structured: bool = True, export: str = "tandem",
                      handshake: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if handshake:
            await client.handshake(structured, export)
        return client

    async def handshake(self, structured: bool, export: str) -> None:
        greeting = await self.reader.readexactly(18)
        assert greeting[:16] == b"NBDMAGICIHAVEOPT"
        self.writer.write(client_flags())
        if structured:
            self.writer.write(option(OPT_STRUCTURED_REPLY))
            assert (await self.option_reply())[1] == REP_ACK
            self.structured = True
        self.writer.write(go(export))
        while True:
            opt, rtype, _ = await self.option_reply()
            assert opt == OPT_GO
            if rtype == REP_ACK:
                return
            assert rtype < 2**31, f"GO failed with {rtype:#x}"

    async def option_reply(self) -> tuple[int, int, bytes]:
        _, opt, rtype, length = struct.unpack(">QIII", await self.reader.readexactly(20))
        return opt, rtype, await self.reader.readexactly(length)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def read(self, handle: int, offset: int, length: int) -> None:
        self.read_lengths[handle] = length
        self.send(request(CMD_READ, handle, offset, length))

    async def reply(self) -> Reply:
        """The next complete reply (for structured ones: the chunk that ends it)."""
        magic_bytes = await self.reader.readexactly(4)
        (magic,) = struct.unpack(">I", magic_bytes)
        if magic == 0x67446698:
            error, handle = struct.unpack(">IQ", await self.reader.readexactly(12))
            length = self.read_lengths.pop(handle, 0) if error == 0 else 0
            self.read_lengths.pop(handle, None)
            return Reply(handle, error, False, await self.reader.readexactly(length))
        assert magic == 0x668E33EF
        flags, ctype, handle, length = struct.unpack(">HHQI", await self.reader.readexactly(16))
        payload = await self.reader.readexactly(length)
        assert flags & 1, "every reply from this server is a single chunk"
        reply = Reply(handle, 0, True, chunk_type=ctype, flags=flags)
        if ctype == CHUNK_OFFSET_DATA:
            (reply.offset,) = struct.unpack(">Q", payload[:8])
            reply.data = payload[8:]
        elif ctype == CHUNK_ERROR:
            reply.error, mlen = struct.unpack(">IH", payload[:6])
            reply.message = payload[6:6 + mlen]
        self.read_lengths.pop(handle, None)
        return reply

    async def closed_by_server(self) -> bool:
        return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def run(test: Callable[[NbdServer, GatedTarget], Awaitable[None]],
        target: GatedTarget | None = None) -> None:
    """Run ``test`` against a fresh server on a free port, inside a fresh event loop."""

    async def main() -> None:
        server = await serve_nbd(target or GatedTarget(), "127.0.0.1", 0)
        try:
            await asyncio.wait_for(test(server, server.target), TIMEOUT)
        finally:
            for gate in server.target.gates.values():
                gate.set()
            if server.target.flush_gate is not None:
                server.target.flush_gate.set()
            await asyncio.wait_for(server.close(), TIMEOUT)

    asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.005)


# -- ordering and concurrency -------------------------------------------------------------------

@pytest.mark.parametrize("structured", [False, True])
def test_replies_come_out_of_order_and_writes_only_after_the_target(structured):
    async def test(server, target):
        target.gates[0] = asyncio.Event()
        client = await RawClient.connect(server.port, structured)
        client.send(write(1, 0, b"a" * 4096))
        client.send(write(2, 4096, b"b" * 4096))
        assert (await client.reply()).handle == 2
        assert target.contents(0, 1) == b"\0"  # write 1 not done, and not answered
        target.gates[0].set()
        reply = await client.reply()
        assert (reply.handle, reply.error) == (1, 0)
        client.read(3, 0, 8192)
        reply = await client.reply()
        assert reply.data == b"a" * 4096 + b"b" * 4096
        await client.close()

    run(test)


def test_flush_is_answered_after_the_target_flushed():
    async def test(server, target):
        target.flush_gate = asyncio.Event()
        client = await RawClient.connect(server.port)
        client.send(write(1, 0, b"x" * 512))
        assert (await client.reply()).handle == 1
        client.send(request(CMD_FLUSH, 2))
        client.send(write(3, 512, b"y" * 512, FLAG_FUA))
        assert (await client.reply()).handle == 3
        assert target.flushes == 0
        target.flush_gate.set()
        reply = await client.reply()
        assert (reply.handle, reply.error, target.flushes) == (2, 0, 1)
        assert target.fua_writes == 1
        await client.close()

    run(test)


def test_targets_that_always_suspend_still_work():
    async def test(server, target):
        target.always_yield = True
        client = await RawClient.connect(server.port)
        for i in range(64):
            client.send(write(i, i * 4096, bytes([i]) * 4096))
        handles = {(await client.reply()).handle for _ in range(64)}
        assert handles == set(range(64))
        client.read(100, 0, 64 * 4096)
        assert (await client.reply()).data == b"".join(bytes([i]) * 4096 for i in range(64))
        await client.close()

    run(test)


def test_trim_and_write_zeroes_reach_the_target():
    async def test(server, target):
        client = await RawClient.connect(server.port)
        client.send(write(1, 0, b"\xff" * 8192))
        client.send(request(CMD_TRIM, 2, 0, 4096, FLAG_FUA))
        client.send(request(CMD_WRITE_ZEROES, 3, 4096, 2048))
        replies = {(await client.reply()).handle for _ in range(3)}
        assert replies == {1, 2, 3}
        assert target.contents(0, 8192) == bytes(6144) + b"\xff" * 2048
        assert target.flushes == 1  # the FUA trim
        await client.close()

    run(test)


def test_several_connections_at_once():
    async def test(server, target):
        clients = await asyncio.gather(*(RawClient.connect(server.port, s)
                                         for s in (True, False, True)))
        assert server.connections == 3
        for n, client in enumerate(clients):
            client.send(write(n, n * 65536, bytes([n + 1]) * 65536))
        for client in clients:
            assert (await client.reply()).error == 0
        for n, client in enumerate(clients):
            client.read(10, ((n + 1) % 3) * 65536, 65536)
            assert (await client.reply()).data == bytes([(n + 1) % 3 + 1]) * 65536
        for client in clients:
            await client.close()
        await until(lambda: server.connections == 0)

    run(test)


# -- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure, expected", [
    (TargetError(errno.ENOSPC, "full"), ENOSPC),
    (TargetError(errno.EDQUOT, "quota"), ENOSPC),
    (TargetError(errno.EROFS, "frozen"), EPERM),
    (TargetError(errno.EINVAL, "bad"), EINVAL),
    (TargetError(errno.ENOENT, "odd"), EIO),
    (RuntimeError("bug in the volume"), EIO),
])
@pytest.mark.parametrize("suspend", [False, True])
def test_target_failures_become_nbd_errors(failure, expected, suspend, caplog):
    async def test(server, target):
        target.always_yield = suspend
        target.failures[8192] = failure
        client = await RawClient.connect(server.port)
        client.send(write(1, 8192, bytes(512)))
        reply = await client.reply()
        assert (reply.handle, reply.error, reply.chunk_type) == (1, expected, CHUNK_ERROR)
        client.read(2, 8192, 512)
        assert (await client.reply()).error == expected
        client.read(3, 0, 512)  # the connection goes on
        assert (await client.reply()).error == 0
        await client.close()

    with caplog.at_level(logging.ERROR, logger="tandem.nbd"):
        run(test)
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert bool(unexpected) == isinstance(failure, RuntimeError)


def test_nbd_error_mapping():
    assert [nbd_error(e) for e in (errno.EPERM, errno.EIO, errno.ENOMEM, errno.EINVAL,
                                   errno.ENOSPC, errno.EOVERFLOW, errno.ENOTSUP,
                                   errno.ESHUTDOWN, errno.EFBIG, errno.EBADF)] == [
        1, 5, 12, 22, 28, 75, 95, 108, 28, 5]


def test_a_short_read_from_the_target_is_eio():
    async def test(server, target):
        target.short_reads = True
        client = await RawClient.connect(server.port, structured=False)
        client.read(1, 0, 4096)
        assert (await client.reply()).error == EIO
        await client.close()

    run(test)


def test_read_only_target():
    async def test(server, target):
        client = await RawClient.connect(server.port)
        client.send(write(1, 0, bytes(512)))
        assert (await client.reply()).error == EPERM
        client.read(2, 0, 512)
        assert (await client.reply()).error == 0
        await client.close()

    run(test, GatedTarget(read_only=True))


def test_protocol_violation_closes_only_that_connection(caplog):
    async def test(server, target):
        good = await RawClient.connect(server.port)
        bad = await RawClient.connect(server.port)
        bad.send(request(CMD_READ, 1, 0, 512, magic=0xDEADBEEF))
        assert await bad.closed_by_server()
        good.read(1, 0, 512)
        assert (await good.reply()).error == 0
        await good.close()

    with caplog.at_level(logging.WARNING, logger="tandem.nbd"):
        run(test)
    assert any("protocol violation" in r.getMessage() for r in caplog.records)


def test_unknown_export_name_closes_the_connection():
    async def test(server, target):
        client = await RawClient.connect(server.port, handshake=False)
        await client.reader.readexactly(18)
        client.send(client_flags() + option(OPT_EXPORT_NAME, b"nope"))
        assert await client.closed_by_server()

    run(test)


def test_silent_clients_are_dropped_after_the_handshake_timeout(monkeypatch):
    monkeypatch.setattr(nbd_server, "HANDSHAKE_TIMEOUT", 0.1)

    async def test(server, target):
        client = await RawClient.connect(server.port, handshake=False)
        assert await client.reader.readexactly(18)
        assert await client.closed_by_server()
        await until(lambda: server.connections == 0)

    run(test)


# -- back-pressure and shutdown ------------------------------------------------------------------

def test_requests_in_flight_are_bounded(monkeypatch):
    monkeypatch.setattr(nbd_server, "MAX_REQUESTS_IN_FLIGHT", 4)

    async def test(server, target):
        target.gates[0] = asyncio.Event()
        client = await RawClient.connect(server.port)
        for i in range(20):
            client.send(write(i, 0, bytes(512)))
        await until(lambda: target.waiting == 4)
        await asyncio.sleep(0.1)  # give the server every chance to take more
        assert target.waiting == 4
        target.gates[0].set()
        handles = {(await client.reply()).handle for _ in range(20)}
        assert handles == set(range(20))
        await client.close()

    run(test)


def test_a_client_that_does_not_read_replies_stops_being_served(monkeypatch):
    async def test(server, target):
        client = await RawClient.connect(server.port)
        for i in range(200):  # 200 MiB of replies
            client.read(i, 0, 1 << 20)
        await until(lambda: target.reads > 0)
        await asyncio.sleep(0.2)
        assert target.reads < 100  # the rest wait until the client reads
        replies = [await client.reply() for _ in range(200)]
        assert {r.handle for r in replies} == set(range(200))
        assert target.reads == 200
        await client.close()

    run(test, GatedTarget(size=1 << 20))


def test_disconnect_answers_outstanding_requests_first():
    async def test(server, target):
        target.gates[0] = asyncio.Event()
        client = await RawClient.connect(server.port)
        client.send(write(1, 0, b"z" * 512))
        client.send(request(CMD_DISC, 2))
        await until(lambda: target.waiting == 1)
        target.gates[0].set()
        reply = await client.reply()
        assert (reply.handle, reply.error) == (1, 0)
        assert await client.closed_by_server()
        assert target.contents(0, 512) == b"z" * 512

    run(test)


def test_close_lets_requests_in_flight_finish():
    async def test(server, target):
        target.gates[0] = asyncio.Event()
        client = await RawClient.connect(server.port)
        idle = await RawClient.connect(server.port, handshake=False)
        client.send(write(1, 0, b"q" * 512))
        await until(lambda: target.waiting == 1)
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        target.gates[0].set()
        assert (await client.reply()).error == 0
        assert await client.closed_by_server()
        await idle.reader.readexactly(18)
        assert await idle.closed_by_server()
        await closing
        assert server.connections == 0

    run(test)


def test_go_is_required_before_requests():
    async def test(server, target):
        client = await RawClient.connect(server.port, handshake=False)
        await client.reader.readexactly(18)
        client.send(client_flags() + request(CMD_READ, 1, 0, 512))
        assert await client.closed_by_server()  # the request is not an option

    run(test)


def test_close_refuses_requests_not_yet_started_with_eshutdown(monkeypatch):
    monkeypatch.setattr(nbd_server, "MAX_REQUESTS_IN_FLIGHT", 1)

    async def test(server, target):
        target.gates[0] = asyncio.Event()
        client = await RawClient.connect(server.port)
        client.send(write(1, 0, b"q" * 512) + write(2, 512, b"r" * 512))
        await until(lambda: target.waiting == 1)
        await asyncio.sleep(0.05)  # the second request has arrived and waits its turn
        closing = asyncio.create_task(server.close())
        reply = await client.reply()
        assert (reply.handle, reply.error) == (2, ESHUTDOWN)
        target.gates[0].set()
        assert (await client.reply()).handle == 1
        assert await client.closed_by_server()
        await closing

    run(test)
