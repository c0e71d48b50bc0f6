"""An NBD server over a MemoryTarget, running in a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Iterator

import pytest

from firmware.frontends.nbd.server import NbdServer, serve_nbd
from tools.sim.memory_target import MemoryTarget


class ThreadedNbdServer:
    """``serve_nbd`` on 127.0.0.1, a free port, in a thread; ``uri`` is what clients use."""

    def __init__(self, target: MemoryTarget) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nbd-server",
                                        daemon=True)
        self._thread.start()
        self.server: NbdServer = self.call(serve_nbd(target, "127.0.0.1", 0))
        self.port = self.server.port
        self.uri = f"nbd://127.0.0.1:{self.port}/tandem"

    def call(self, coro):  # noqa: ANN001, ANN201 - any coroutine, its result
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    @property
    def connections(self) -> int:
        return self.server.connections

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture
def nbd_server_factory() -> Iterator[Callable[..., ThreadedNbdServer]]:
    servers: list[ThreadedNbdServer] = []

    def start(size: int = 64 << 20, read_only: bool = False) -> ThreadedNbdServer:
        server = ThreadedNbdServer(MemoryTarget(size, read_only))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nbd_server(nbd_server_factory) -> ThreadedNbdServer:
    return nbd_server_factory()


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
