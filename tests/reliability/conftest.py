"""A volume, record and mirror over media the test can break (see tools/sim/faulty.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from firmware.mirror.mirror import Mirror, MirrorConfig
from firmware.record.layout import Geometry
from firmware.record.policy import SequentialLru, SequentialLruConfig
from firmware.record.record import Record
from firmware.record.store import NvramRecordStore
from firmware.volume.volume import Volume
from hal.media.base import Medium
from hal.nvram.file_fram import FileFram
from tools.sim.media import MemoryMedium

REGION = 64 * 1024
SIZE = 4 << 20


class RamNvram:
    """A copy of an NVRAM image, to read the record back while the rig still runs."""

    def __init__(self, image: bytes) -> None:
        self._data = bytearray(image)

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self._data[offset:offset + len(data)] = data

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Rig:
    nvram_path: Path
    nvram: FileFram
    record: Record
    local: Medium
    second: Medium
    mirror: Mirror
    volume: Volume

    def record_in_nvram(self) -> set[int]:
        """The regions a restart would read back from NVRAM now."""
        image = self.nvram_path.read_bytes()
        return set(NvramRecordStore(RamNvram(image)).load().regions)

    def differing_regions(self) -> set[int]:
        a, b = self.local.pread(0, SIZE), self.second.pread(0, SIZE)
        return {r for r in range(SIZE // REGION)
                if a[r * REGION:(r + 1) * REGION] != b[r * REGION:(r + 1) * REGION]}


def make_rig(tmp_path: Path, *, local: Medium | None = None, second: Medium | None = None,
             capacity: int = 16, queue: int = 1 << 20, idle_evict_s: float | None = None,
             io_executor: Executor | None = None) -> Rig:
    path = tmp_path / "nvram.bin"
    nvram = FileFram(path, 4096, sync=False)
    store = NvramRecordStore(nvram)
    geometry = Geometry(SIZE, REGION, b"reliability-test")
    store.format(geometry, ())
    record = Record(geometry, store, capacity_regions=capacity,
                    policy=SequentialLru(SequentialLruConfig(idle_evict_s=idle_evict_s)))
    local = local or MemoryMedium(SIZE, "local")
    second = second or MemoryMedium(SIZE, "second")
    holder: list[Volume] = []
    mirror = Mirror(local, second, record,
                    MirrorConfig(queue_limit_bytes=queue, retry_initial_s=0.01,
                                 retry_max_s=0.05),
                    on_progress=lambda: holder[0].room_made() if holder else None)
    volume = Volume(local, record, mirror, io_executor=io_executor)
    holder.append(volume)
    return Rig(path, nvram, record, local, second, mirror, volume)


async def wait_until(predicate: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    """Poll until ``predicate()`` holds; the limit only turns a hang into a failure."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


def pattern(tag: int, length: int = 4096) -> bytes:
    return bytes([tag & 0xFF]) * length
