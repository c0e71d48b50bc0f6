"""The simple policy: look ahead of sequential streams, evict least recently written."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from firmware.record.policy.protocol import RecordView


@dataclass
class _Stream:
    next_offset: int
    run_bytes: int


@dataclass
class SequentialLruConfig:
    # Streams tracked at once (interleaved sequential writers, e.g. a file copy and a log).
    max_streams: int = 32
    # A write starting up to this far past a stream's end still continues it (small holes).
    max_gap: int = 128 * 1024
    # Bytes of a stream seen before it counts as sequential.
    min_run: int = 64 * 1024
    # Look-ahead grows with the stream's length, up to this many bytes past the write.
    max_ahead: int = 8 * 1024 * 1024
    # Clean regions untouched for this long are evicted in the background (None: never).
    idle_evict_s: float | None = 2.0


class SequentialLru:
    """Predict ahead of sequential streams; evict clean regions least recently written first."""

    def __init__(self, config: SequentialLruConfig | None = None) -> None:
        self.config = config or SequentialLruConfig()
        self._streams: OrderedDict[int, _Stream] = OrderedDict()
        self._last_stream: _Stream | None = None

    def attach(self, view: RecordView) -> None:
        pass

    def observe(self, offset: int, length: int) -> None:
        cfg = self.config
        for key, stream in self._streams.items():
            if stream.next_offset <= offset <= stream.next_offset + cfg.max_gap:
                del self._streams[key]
                stream.run_bytes += length
                stream.next_offset = offset + length
                self._streams[stream.next_offset] = stream
                self._last_stream = stream
                return
        stream = _Stream(offset + length, length)
        self._streams[stream.next_offset] = stream
        if len(self._streams) > cfg.max_streams:
            self._streams.popitem(last=False)
        self._last_stream = stream

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        stream = self._last_stream
        if stream is None or stream.run_bytes < self.config.min_run:
            return []
        ahead_bytes = min(stream.run_bytes, self.config.max_ahead)
        shift = view.region_shift
        last = (offset + length - 1) >> shift
        ahead = max(1, ahead_bytes >> shift)
        stop = min(view.nregions, last + 1 + ahead)
        return [r for r in range(last + 1, stop) if not view.contains(r)]

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        chosen: list[int] = []
        for region, _touched in view.lru():
            if len(chosen) >= need:
                break
            if region not in protect and view.evictable(region):
                chosen.append(region)
        return chosen

    def idle(self, view: RecordView, now: float) -> list[int]:
        if self.config.idle_evict_s is None:
            return []
        horizon = now - self.config.idle_evict_s
        quiet: list[int] = []
        for region, touched in view.lru():
            if touched > horizon:
                break
            if view.evictable(region):
                quiet.append(region)
        return quiet

    def on_admitted(self, regions: Sequence[int]) -> None:
        pass  # it reads what it needs from the record: lru() and evictable()

    def on_evicted(self, regions: Sequence[int]) -> None:
        pass
