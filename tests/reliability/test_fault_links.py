"""The failing links the pair's tests use: a TCP proxy and a pty null-modem cable."""

from __future__ import annotations

import asyncio

import serial

from tools.sim.fault_proxy import FaultySerialPair, FaultyTcpProxy, LineNoise, Mode


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_the_proxy_passes_blackholes_and_cuts():
    async def main() -> None:
        server = await _echo_server()
        proxy = await FaultyTcpProxy(server.sockets[0].getsockname()).start()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        proxy.set(Mode.BLACKHOLE, "backward")  # the answer vanishes, the socket stays up
        writer.write(b"lost")
        try:
            await asyncio.wait_for(reader.read(4), 0.3)
            raise AssertionError("a blackholed answer arrived")
        except TimeoutError:
            pass
        proxy.set(Mode.CUT)
        assert await asyncio.wait_for(reader.read(4), 5) == b""  # closed
        writer.close()
        refused_reader, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(refused_reader.read(4), 5) == b""
        proxy.set(Mode.PASS)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"back")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"back"
        writer.close()
        await proxy.close()
        server.close()

    asyncio.run(main())


def test_the_serial_pair_carries_bytes_and_fails_on_command():
    async def main() -> None:
        cable = FaultySerialPair(seed=3).start()
        a = serial.Serial(cable.a, timeout=0)
        b = serial.Serial(cable.b, timeout=0)

        async def read(port: serial.Serial, n: int, limit: float = 2.0) -> bytes:
            got = b""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + limit
            while len(got) < n and loop.time() < deadline:
                got += port.read(n - len(got))
                await asyncio.sleep(0.01)
            return got

        a.write(b"\x00hello\x00")
        assert await read(b, 7) == b"\x00hello\x00"  # raw: no line discipline
        cable.up = False
        a.write(b"gone")
        assert await read(b, 4, limit=0.3) == b""
        cable.up = True
        cable.noise = LineNoise(flip=1.0)
        b.write(b"\x0f")
        got = await read(a, 1)
        assert len(got) == 1 and bin(got[0] ^ 0x0F).count("1") == 1
        a.close()
        b.close()
        cable.close()

    asyncio.run(main())
