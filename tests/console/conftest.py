"""A fake appliance behind the console, and a console server running in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from firmware.console.commands import console_commands
from firmware.console.server import ConsoleServer

MiB = 1 << 20


class FakeBackend:
    """A ConsoleBackend with fixed counters that records what the console asked of it."""

    def __init__(self, regions: list[int] | None = None, region_size: int = MiB,
                 volume_size: int = 64 * MiB) -> None:
        self.regions = list(regions if regions is not None else [0, 1, 2, 3, 10, 12, 13])
        self.region_size = region_size
        self.volume_size = volume_size
        self.mirror_paused = False
        self.calls: list[str] = []
        self.failure: Exception | None = None  # raised by every call when set

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failure is not None:
            raise self.failure

    def status(self) -> dict[str, object]:
        self._call("status")
        return {
            "board": "sim",
            "uptime_s": 42.5,
            "region_size": self.region_size,
            "volume_size": self.volume_size,
            "record_regions": len(set(self.regions)),
            "record_bytes": len(set(self.regions)) * self.region_size,
            "hits": 1000,
            "misses": 7,
            "evictions": 3,
            "waits": 0,
            "nvram_updates": 7,
            "nvram_bytes_written": 448,
            "mirror_state": "paused" if self.mirror_paused else "running",
            "mirror_lag_bytes": 3 * MiB,
            "mirror_lag_seconds": 0.125,
            "resync_remaining_bytes": 0,
        }

    def record_regions(self) -> list[int]:
        self._call("record_regions")
        return list(self.regions)

    def mirror_pause(self) -> None:
        self._call("mirror_pause")
        self.mirror_paused = True

    def mirror_resume(self) -> None:
        self._call("mirror_resume")
        self.mirror_paused = False


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def backend_factory() -> type[FakeBackend]:
    """For tests that need a fresh backend per example (hypothesis)."""
    return FakeBackend


@pytest.fixture
def start_server(backend: FakeBackend) -> Iterator[Callable[..., ConsoleServer]]:
    """Start a ConsoleServer over ``backend`` on an event loop in a thread.

    The tests then talk to it with blocking clients (pyserial), as users do.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="console-server", daemon=True)
    thread.start()
    servers: list[ConsoleServer] = []

    def start(**options: object) -> ConsoleServer:
        options.setdefault("tcp", ("127.0.0.1", 0))
        server = ConsoleServer(console_commands(backend), **options)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
        servers.append(server)
        return server

    yield start

    async def stop_all() -> None:
        for server in servers:
            server.close()
            await server.wait_closed()

    asyncio.run_coroutine_threadsafe(stop_all(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()
