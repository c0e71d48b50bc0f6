"""The Mirror with a RemoteMedium as second medium, against a real `tandem receive`.

Link cut → degraded → catch-up; checksum resync after a crash; full sync of a
blank receiver; online verify; pull-ahead on a slow link; a refused link.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from link_support import KEY, SIZE, wait_for

from firmware.mirror.mirror import Mirror, MirrorConfig, MirrorState
from firmware.record.layout import Geometry
from firmware.record.record import Record
from firmware.record.store import NullRecordStore
from firmware.volume.volume import Volume
from hal.media.file import FileMedium
from hal.media.remote.generations import MemoryStateStore, StateFile
from hal.media.remote.medium import RemoteMedium

REGION = 64 * 1024
BLOCK = 4096


def remote(port: int, store: MemoryStateStore, **kwargs) -> RemoteMedium:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("connect_timeout", 5.0)
    return RemoteMedium("127.0.0.1", port, KEY, SIZE, state=store, **kwargs)


class Site:
    """One appliance's storage stack in this process: local file, record, mirror, volume."""

    def __init__(self, tmp_path: Path, second: RemoteMedium, *, initial: tuple[int, ...] = (),
                 config: MirrorConfig | None = None, fill: bytes | None = None) -> None:
        self.local = FileMedium(str(tmp_path / "local.img"), SIZE, create=True)
        if fill is not None:
            self.local.pwrite(0, fill)
        geometry = Geometry(SIZE, REGION)
        self.record = Record(geometry, NullRecordStore(geometry), capacity_regions=128,
                             initial_regions=initial)
        holder: list[Volume] = []
        self.mirror = Mirror(self.local, second, self.record,
                             config or MirrorConfig(retry_initial_s=0.05, retry_max_s=0.5),
                             on_progress=lambda: holder[0].room_made() if holder else None)
        self.volume = Volume(self.local, self.record, self.mirror)
        holder.append(self.volume)
        self.second = second

    async def drained(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.mirror.drained(), timeout)

    async def close(self) -> None:
        await self.mirror.close()
        self.local.close()


def run(tmp_path: Path, second: RemoteMedium, body: Callable[[Site], Awaitable[None]],
        **site_args) -> None:
    async def main() -> None:
        site = Site(tmp_path, second, **site_args)
        site.mirror.start()
        try:
            await body(site)
        finally:
            await site.close()

    try:
        asyncio.run(main())
    finally:
        second.close()


def image_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_mirror_over_the_link_survives_a_cut(tmp_path: Path, receiver, image, proxy_factory):
    proxy = proxy_factory(receiver.port)

    async def body(site: Site) -> None:
        for i in range(40):
            await site.volume.write((i * 7919 % 2000) * 4096, os.urandom(4096))
        await site.drained()
        proxy.cut()
        for i in range(40):  # writes go on locally while the link is down or coming back
            await site.volume.write((i * 104729 % 2000) * 4096, os.urandom(4096))
        await site.drained(60)
        assert site.mirror.state is MirrorState.ORDERED
        assert site.local.pread(0, SIZE) == image_bytes(image)

    run(tmp_path, remote(proxy.port, MemoryStateStore()), body)
    assert proxy.connections >= 2
    assert StateFile(f"{image}.tandem-state").load().consistent


def test_a_blank_receiver_gets_a_full_sync(tmp_path: Path, receiver, image):
    data = random.Random(1).randbytes(SIZE)

    async def body(site: Site) -> None:
        await site.drained()
        assert site.mirror.decision == "full-sync"
        assert site.local.pread(0, SIZE) == image_bytes(image)
        assert site.mirror.status()["link_remote_consistent"] is True

    run(tmp_path, remote(receiver.port, MemoryStateStore()), body, fill=data)


def _in_sync_pair(port: int, store: MemoryStateStore, data: bytes) -> None:
    """The receiver holds ``data`` as this appliance's current generation, consistent."""
    m = remote(port, store)
    m.begin_resync()
    m.pwrite(0, data)
    m.end_resync()
    m.close()


def test_checksum_resync_after_a_crash_sends_only_the_differing_blocks(
        tmp_path: Path, receiver, image):
    rnd = random.Random(2)
    data = bytearray(rnd.randbytes(SIZE))
    store = MemoryStateStore()
    _in_sync_pair(receiver.port, store, bytes(data))
    changed = [3, 700, 1500]  # blocks written locally and never mirrored before the "crash"
    for block in changed:
        data[block * BLOCK:(block + 1) * BLOCK] = rnd.randbytes(BLOCK)
    everything = tuple(range(SIZE // REGION))  # the record read back names every region

    async def body(site: Site) -> None:
        assert site.mirror.state is MirrorState.CATCH_UP
        await site.drained()
        assert site.local.pread(0, SIZE) == image_bytes(image)
        status = site.mirror.status()
        assert status["resync_sent_bytes"] == len(changed) * BLOCK
        assert status["resync_skipped_bytes"] == SIZE - len(changed) * BLOCK
        assert status["link_decision"] == "in-sync"

    run(tmp_path, remote(receiver.port, store), body, initial=everything, fill=bytes(data))


def test_without_checksums_the_resync_copies_every_named_region(tmp_path: Path, receiver, image):
    data = random.Random(3).randbytes(SIZE)
    store = MemoryStateStore()
    _in_sync_pair(receiver.port, store, data)

    async def body(site: Site) -> None:
        await site.drained()
        assert site.mirror.status()["resync_sent_bytes"] == SIZE
        assert site.local.pread(0, SIZE) == image_bytes(image)

    run(tmp_path, remote(receiver.port, store), body, initial=tuple(range(SIZE // REGION)),
        fill=data, config=MirrorConfig(checksum_resync="never", retry_initial_s=0.05))


def test_verify_finds_and_repairs_a_damaged_remote(tmp_path: Path, receiver, image):
    data = random.Random(4).randbytes(SIZE)
    store = MemoryStateStore()
    _in_sync_pair(receiver.port, store, data)
    with open(image, "r+b") as f:  # the remote disk rots behind everyone's back
        for offset in (5 * REGION + 100, 77 * REGION):
            f.seek(offset)
            f.write(b"bit rot")

    async def body(site: Site) -> None:
        await site.volume.write(0, data[:BLOCK])  # serving while verifying
        report = site.mirror.start_verify()
        deadline = asyncio.get_running_loop().time() + 30
        while report.state == "running":
            assert asyncio.get_running_loop().time() < deadline, "verify did not finish"
            await asyncio.sleep(0.05)
        assert report.state == "done", report.error
        assert sorted(report.differing) == [5, 77]
        await site.drained()
        assert site.local.pread(0, SIZE) == image_bytes(image)
        again = site.mirror.start_verify()
        while again.state == "running":
            await asyncio.sleep(0.05)
        assert again.state == "done" and again.differing == []

    run(tmp_path, remote(receiver.port, store), body, fill=data)


def test_a_slow_link_pulls_ahead_instead_of_stalling_writes_then_returns(
        tmp_path: Path, receiver, image):
    rnd = random.Random(5)
    config = MirrorConfig(queue_limit_bytes=512 * 1024, batch_bytes=128 * 1024,
                          copy_chunk_bytes=256 * 1024, retry_initial_s=0.05)

    async def body(site: Site) -> None:
        for _ in range(256):  # 4 MiB at once on a 2 MiB/s link: the queue overflows
            await site.volume.write(rnd.randrange(SIZE // 16384) * 16384, rnd.randbytes(16384))
        assert site.mirror.overflows >= 1
        assert site.mirror.state is not MirrorState.ORDERED
        await site.drained(60)
        assert site.mirror.state is MirrorState.ORDERED
        assert site.local.pread(0, SIZE) == image_bytes(image)

    run(tmp_path, remote(receiver.port, MemoryStateStore(), rate_limit=2 << 20), body,
        config=config)


def test_a_refused_link_leaves_the_mirror_degraded_with_the_reason(tmp_path: Path, receiver,
                                                                   image):
    _in_sync_pair(receiver.port, MemoryStateStore(), bytes(SIZE))  # a copy of another volume
    before = image_bytes(image)

    async def body(site: Site) -> None:
        await site.volume.write(0, b"x" * BLOCK)
        wait = asyncio.get_running_loop().time() + 20
        while site.mirror.state is not MirrorState.DEGRADED:
            assert asyncio.get_running_loop().time() < wait, "the mirror did not degrade"
            await asyncio.sleep(0.05)
        assert "another volume" in str(site.mirror.status()["mirror_error"])

    run(tmp_path, remote(receiver.port, MemoryStateStore()), body)
    assert image_bytes(image) == before
    wait_for(lambda: receiver.alive, what="the receiver to be running")
