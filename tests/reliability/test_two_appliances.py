"""Two appliances in one process, on one event loop: what the pair's tests build on.

Each has its own data directory (FRAM, media) and NBD port; a host writes to each
through libnbd. Nothing of one may show in the other: not data, not counters.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.threaded import REGION, LoopThread, ThreadedAppliance

nbd = pytest.importorskip("nbd")


@pytest.fixture
def pair(tmp_path) -> Iterator[tuple[ThreadedAppliance, ThreadedAppliance]]:
    loop = LoopThread()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = ThreadedAppliance(tmp_path / "a", loop=loop)
    b = ThreadedAppliance(tmp_path / "b", loop=loop)
    try:
        yield a, b
    finally:
        try:
            a.stop()
            b.stop()
        finally:
            loop.close()


def test_two_appliances_in_one_loop_serve_their_own_volumes(pair):
    a, b = pair
    assert a.uri != b.uri
    hosts = []
    for appliance, byte in ((a, b"A"), (b, b"B")):
        host = nbd.NBD()
        host.connect_uri(appliance.uri)
        host.pwrite(byte * 4096, 3 * REGION)
        host.flush()
        hosts.append(host)
    try:
        assert hosts[0].pread(4096, 3 * REGION) == b"A" * 4096
        assert hosts[1].pread(4096, 3 * REGION) == b"B" * 4096
        for appliance in (a, b):
            status = appliance.wait_for("mirrored", lambda s: s["mirror_lag_bytes"] == 0)
            assert status["misses"] + status["hits"] == 1
            assert appliance.media_equal()
    finally:
        for host in hosts:
            host.shutdown()
