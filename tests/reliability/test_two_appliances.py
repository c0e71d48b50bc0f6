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


def test_the_media_paths_can_be_given_instead_of_the_boards(tmp_path):
    from firmware.app import Appliance, Settings

    shared = tmp_path / "shared"
    shared.mkdir()
    names = []
    for node in ("a", "b"):
        app = Appliance(Settings(data_dir=str(tmp_path / node), size=16 << 20,
                                 local_path=str(shared / "d.img"),
                                 second_path=str(shared / "m.img")))
        app.open_storage()
        names.append((app.local.name, app.second.name))
        assert (tmp_path / node / "nvram.bin").exists()  # the FRAM stays per appliance
        app.close_devices()
    assert names == [(str(shared / "d.img"), str(shared / "m.img"))] * 2
