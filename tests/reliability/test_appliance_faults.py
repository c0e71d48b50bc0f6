"""Media faults under the whole appliance: a host on NBD (libnbd), the console watching.

The appliance runs in a thread with its own event loop (``Appliance.start``, NBD on
a free port, no console socket); its media are wrapped in ``FaultyMedium`` between
``open_storage`` and ``start``. The console is driven through its session core.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import firmware.app as app_module
from firmware.app import Appliance, Settings
from firmware.console.commands import console_commands
from firmware.console.grammar import ConsoleSession
from firmware.mirror.mirror import MirrorConfig
from tools.sim.faulty import FaultyMedium

nbd = pytest.importorskip("nbd")

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


def errno_of(error: Any) -> int:
    """libnbd names the errno ("EIO"); older bindings give the number."""
    value = error.errno
    return getattr(errno, value) if isinstance(value, str) else int(value)


class ThreadedAppliance:
    def __init__(self, tmp_path: Path) -> None:
        board = tmp_path / "faults.toml"
        board.write_text(PROFILE)
        self.app = Appliance(Settings(
            board=str(board), data_dir=str(tmp_path / "data"), size=SIZE, region_size=REGION,
            resync_budget=CAPACITY_REGIONS * REGION, nbd_port=0, console_tcp="off",
            console_pty=False, idle_evict_s=0.05, tidy_interval_s=0.05, quiet_evict_s=0.2))
        self.app.open_storage()
        self.local = FaultyMedium(self.app.local)
        self.second = FaultyMedium(self.app.second)
        self.app.local, self.app.second = self.local, self.second
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.app.start())
        self.uri = f"nbd://127.0.0.1:{self.app.nbd_server.port}/tandem"
        self._console = ConsoleSession(console_commands(self.app))

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

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
        return self.local.inner.pread(0, SIZE) == self.second.inner.pread(0, SIZE)

    def stop(self) -> None:
        self.local.clear()
        self.local.reappear()
        self.second.clear()
        self.second.reappear()
        try:
            self.call(self.app.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


@pytest.fixture
def appliance(tmp_path, monkeypatch) -> Iterator[ThreadedAppliance]:
    # Retry the second medium every few tens of milliseconds, not every 0.5..30 s.
    monkeypatch.setattr(app_module, "MirrorConfig", functools.partial(
        MirrorConfig, retry_initial_s=0.02, retry_max_s=0.1))
    running = ThreadedAppliance(tmp_path)
    yield running
    running.stop()


@pytest.fixture
def host(appliance) -> Iterator[Any]:
    handle = nbd.NBD()
    handle.connect_uri(appliance.uri)
    yield handle
    handle.shutdown()


def test_local_write_error_reaches_the_host_and_nothing_unstored_is_acked(appliance, host):
    host.pwrite(b"A" * 4096, 0)
    appliance.local.inject("write", errno.EIO, offset=5 * REGION, length=REGION)
    with pytest.raises(nbd.Error) as failed:
        host.pwrite(b"B" * 8192, 5 * REGION)
    assert errno_of(failed.value) == errno.EIO
    appliance.local.clear()
    # What was acknowledged reads back; the host and the appliance both go on.
    assert host.pread(4096, 0) == b"A" * 4096
    host.pwrite(b"D" * 4096, 5 * REGION)
    host.flush()
    assert host.pread(4096, 5 * REGION) == b"D" * 4096
    status = appliance.status()
    assert status["local_errors"] == 1
    assert status["local_medium_error"] is None
    appliance.wait_for("mirrored", lambda s: s["mirror_state"] == "ordered"
                       and s["mirror_lag_bytes"] == 0)
    assert appliance.media_equal()


def test_a_local_flush_error_the_mirror_takes_fails_every_later_flush_and_write(
        appliance, host):
    host.pwrite(b"A" * 4096, 0)
    host.flush()
    appliance.wait_for("mirrored", lambda s: s["mirror_lag_bytes"] == 0)
    # One failed fdatasync, as Linux reports a writeback error: to one caller only. The
    # host does not flush, the mirror's next run does, so the mirror meets it.
    fault = appliance.local.inject("flush", errno.EIO, times=1)
    host.pwrite(b"B" * 4096, REGION)
    # The failure latches in the mirror's worker; the mirror reports it from the loop
    # a moment later: both show up.
    status = appliance.wait_for("local medium failed",
                                lambda s: s["local_medium_error"] is not None
                                and s["mirror_error"] is not None)
    assert fault.hits == 1 and fault.exhausted
    assert "local medium" in status["local_medium_error"]
    assert status["mirror_error"].startswith("local medium")
    assert "second medium" not in status["mirror_error"]
    # The medium answers flushes again, but what it lost is not back: every later FLUSH,
    # FUA write and write is refused, not acknowledged.
    with pytest.raises(nbd.Error) as flush_failed:
        host.flush()
    assert errno_of(flush_failed.value) == errno.EIO
    with pytest.raises(nbd.Error) as write_failed:
        host.pwrite(b"C" * 4096, 2 * REGION)
    assert errno_of(write_failed.value) == errno.EIO
    with pytest.raises(nbd.Error):
        host.pwrite(b"C" * 4096, 3 * REGION, nbd.CMD_FLAG_FUA)
    with pytest.raises(nbd.Error):
        host.flush()
    assert host.pread(4096, 0) == b"A" * 4096  # reads still work
    assert "local medium" in appliance.console("status")


@pytest.mark.parametrize("how", ["eio", "full", "vanished"])
def test_second_medium_failure_degrades_then_heals(appliance, host, how):
    host.pwrite(b"0" * 4096, 0)
    appliance.wait_for("mirrored", lambda s: s["mirror_lag_bytes"] == 0)
    if how == "eio":
        appliance.second.inject(("write", "zeroes"), errno.EIO)
    elif how == "full":
        appliance.second.fill_up()
    else:
        appliance.second.vanish()
    # The host keeps writing: to three times the regions the record holds when healthy.
    regions = range(2, 2 + 3 * CAPACITY_REGIONS)
    for region in regions:
        host.pwrite(bytes([region]) * 4096, region * REGION)
    host.flush()
    status = appliance.wait_for("degraded", lambda s: s["mirror_state"] == "degraded")
    assert status["mirror_error"] and appliance.second.name in status["mirror_error"]
    assert status["record_regions"] >= len(regions) > status["record_capacity_regions"]
    listed = appliance.console("record --count").splitlines()[0]
    assert int(listed) >= len(regions)
    text = appliance.console("status")
    assert "degraded" in text
    for region in regions:
        assert host.pread(4096, region * REGION) == bytes([region]) * 4096
    # The medium comes back: the mirror copies what the record names and is ordered again.
    appliance.second.clear()
    appliance.second.reappear()
    status = appliance.wait_for("healed", lambda s: s["mirror_state"] == "ordered"
                                and s["mirror_error"] is None and s["mirror_lag_bytes"] == 0)
    assert appliance.media_equal()
    # And the record shrinks back within its budget as regions go quiet.
    appliance.wait_for("record within budget",
                       lambda s: s["record_regions"] <= s["record_capacity_regions"])


def test_a_failed_nvram_update_refuses_the_write_and_nothing_is_acknowledged(appliance, host):
    host.pwrite(b"A" * 4096, 0)  # region 0 is in the record, durably
    fram = appliance.app.nvram
    assert fram.slow_writes  # sync = false: the record commits on the worker
    fram.arm_power_cut(after_bytes=0)  # the next NVRAM write fails, nothing stored
    with pytest.raises(nbd.Error) as failed:
        host.pwrite(b"M" * 4096, 7 * REGION)  # a miss: needs an NVRAM update
    assert errno_of(failed.value) == errno.EIO
    # Write-ahead: the refused write's data never reached the local medium.
    assert appliance.local.inner.pread(7 * REGION, 4096) != b"M" * 4096
    status = appliance.status()
    assert status["nvram_error"]
    # A write that hits the record needs no NVRAM update and goes on.
    host.pwrite(b"H" * 4096, 4096)
    assert host.pread(4096, 4096) == b"H" * 4096
    fram.power_on()
    host.pwrite(b"N" * 4096, 7 * REGION)  # the NVRAM is back: the miss is taken now
    assert host.pread(4096, 7 * REGION) == b"N" * 4096
