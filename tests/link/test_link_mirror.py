"""The lead's Mirror with a RemoteMedium as second medium: a link cut degrades, then converges."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from link_support import KEY, SIZE

from firmware.mirror.link.generations import MemoryStateStore
from firmware.mirror.link.remote_medium import RemoteMedium
from firmware.mirror.mirror import Mirror, MirrorConfig, MirrorState
from firmware.record.layout import Geometry
from firmware.record.record import Record
from firmware.record.store import NullRecordStore
from firmware.volume.volume import Volume
from hal.media.file import FileMedium

REGION = 64 * 1024


def test_mirror_over_the_link_survives_a_cut(tmp_path: Path, receiver, image, proxy_factory):
    proxy = proxy_factory(receiver.port)
    second = RemoteMedium("127.0.0.1", proxy.port, KEY, SIZE, state=MemoryStateStore(),
                          timeout=10.0, connect_timeout=5.0)

    async def main() -> None:
        local = FileMedium(str(tmp_path / "local.img"), SIZE, create=True)
        geometry = Geometry(SIZE, REGION)
        record = Record(geometry, NullRecordStore(geometry), capacity_regions=64)
        holder: list[Volume] = []
        mirror = Mirror(local, second, record, MirrorConfig(retry_initial_s=0.05),
                        on_progress=lambda: holder[0].room_made())
        volume = Volume(local, record, mirror)
        holder.append(volume)
        mirror.start()
        for i in range(40):
            await volume.write((i * 7919 % 2000) * 4096, os.urandom(4096))
        await mirror.drained()
        proxy.cut()
        for i in range(40):  # writes go on locally while the link is down or coming back
            await volume.write((i * 104729 % 2000) * 4096, os.urandom(4096))
        await asyncio.wait_for(mirror.drained(), 60)
        assert mirror.state is MirrorState.ORDERED
        assert local.pread(0, SIZE) == open(image, "rb").read()
        await mirror.close()
        local.close()

    try:
        asyncio.run(main())
    finally:
        second.close()
    assert proxy.connections >= 2
