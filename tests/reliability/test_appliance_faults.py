"""Media faults under the whole appliance: a host on NBD (libnbd), the console watching.

The appliance runs in a thread with its own event loop (``Appliance.start``, NBD on
a free port, no console socket); its environment opens its media wrapped in
``FaultyMedium``. The console is driven through its session core.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability.threaded import CAPACITY_REGIONS, REGION, ThreadedAppliance

nbd = pytest.importorskip("nbd")

def errno_of(error: Any) -> int:
    """libnbd names the errno ("EIO"); older bindings give the number."""
    value = error.errno
    return getattr(errno, value) if isinstance(value, str) else int(value)


@pytest.fixture
def appliance(tmp_path) -> Iterator[ThreadedAppliance]:
    running = ThreadedAppliance(tmp_path, faulty=True)
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
