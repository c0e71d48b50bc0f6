"""The real appliance in a test: ``Appliance`` started on an event loop in a thread (NBD
on a free port, no console socket), so that blocking clients (libnbd) can drive it.

Several appliances may share one loop thread: the pair's tests run two in a process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from firmware.app import Appliance, Settings
from firmware.console.commands import console_commands
from firmware.console.grammar import ConsoleSession
from firmware.environment import Environment, open_profile_medium
from firmware.mirror.mirror import MirrorConfig
from hal.media.base import Medium
from tools.sim.faulty import FaultyMedium

MiB = 1 << 20
REGION = 64 << 10
SIZE = 16 * MiB
CAPACITY_REGIONS = 8

PROFILE = """\
name = "faults"
[nvram]
kind = "file"
path = "{data_dir}/nvram.bin"
size = 8192
sync = false
[media.local]
kind = "file"
path = "{data_dir}/local.img"
[media.second]
kind = "file"
path = "{data_dir}/second.img"
"""


class LoopThread:
    """One event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class ThreadedAppliance:
    """``faulty``: both media are opened wrapped in ``FaultyMedium`` (``.local``,
    ``.second``), through the appliance's environment."""

    def __init__(self, tmp_path: Path, *, faulty: bool = False,
                 loop: LoopThread | None = None) -> None:
        board = tmp_path / "faults.toml"
        board.write_text(PROFILE)
        self.media: dict[str, Medium] = {}

        def open_medium(role: str, spec: Mapping[str, Any], default_size: int) -> Medium:
            medium = open_profile_medium(role, spec, default_size)
            self.media[role] = FaultyMedium(medium) if faulty else medium
            return self.media[role]

        # The second medium is retried every few tens of milliseconds, not 0.5..30 s.
        settings = Settings(
            board=str(board), data_dir=str(tmp_path / "data"), size=SIZE, region_size=REGION,
            resync_budget=CAPACITY_REGIONS * REGION, nbd_port=0, console_tcp="off",
            console_pty=False, idle_evict_s=0.05, tidy_interval_s=0.05, quiet_evict_s=0.2,
            mirror_tuning=MirrorConfig(retry_initial_s=0.02, retry_max_s=0.1))
        self.app = Appliance(settings, Environment(open_medium=open_medium))
        self._owns_loop = loop is None
        self.runner = loop or LoopThread()
        self.runner.call(self.app.start())
        self.uri = f"nbd://127.0.0.1:{self.app.nbd_server.port}/tandem"
        self._console = ConsoleSession(console_commands(self.app))

    @property
    def local(self) -> Any:
        return self.media["local"]

    @property
    def second(self) -> Any:
        return self.media["second"]

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.runner.call(coro)

    def console(self, line: str) -> str:
        async def ask() -> bytes:
            return self._console.receive(line.encode() + b"\r\n")

        return self.call(ask()).decode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.console("status --json").splitlines()[0])

    def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], bool],
                 limit_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"never happened: {what}; status {status}")
            time.sleep(0.02)

    def media_equal(self) -> bool:
        local = getattr(self.local, "inner", self.local)
        second = getattr(self.second, "inner", self.second)
        return bool(local.pread(0, SIZE) == second.pread(0, SIZE))

    def stop(self) -> None:
        for medium in self.media.values():
            if isinstance(medium, FaultyMedium):
                medium.clear()
                medium.reappear()
        try:
            self.call(self.app.stop())
        finally:
            if self._owns_loop:
                self.runner.close()
