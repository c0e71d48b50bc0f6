"""Replaying a block trace against a record with a simulated clock and link.

The link model (the same for every record, so figures compare across them):
writes enter a FIFO replication queue in trace order and drain at the link's
rate; a write is on the second medium once its last byte has drained, and the
record learns it in order (``mirrored_upto``), as from the appliance's ordered
mirror. A record that has no room waits for the next drain (a *stall*); the
writes after it keep their trace times (an open-loop host).

The resync at an instant, R, is what a crash then would have to copy: the bytes
the record names in NVRAM. It is sampled at every write instant, after the
write's own marking.

``TandemModel`` drives the firmware's own :class:`~firmware.record.record.Record`
(with a :class:`~firmware.record.store.NullRecordStore` counting transactions);
the baselines in :mod:`tools.replay.baselines` implement the same ``Model``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from firmware.record.layout import Geometry
from firmware.record.policy import RecordPolicy
from firmware.record.record import QUIET_EVICT_S, Record, RecordFull
from firmware.record.store import NullRecordStore

MIB = 1 << 20


@dataclass
class TraceWrites:
    """The writes of a trace, in issue order: times in seconds from the trace's start."""

    name: str
    times: list[float] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.times)

    def append(self, time: float, offset: int, length: int) -> None:
        self.times.append(time)
        self.offsets.append(offset)
        self.lengths.append(length)

    def extent(self) -> int:
        """One past the highest byte written."""
        return max((o + n for o, n in zip(self.offsets, self.lengths, strict=True)), default=0)


class Model(Protocol):
    """A write record under replay: the Tandem record or a baseline's emulation."""

    name: str
    # Period of the background task (tidy, bitmap daemon); None: it has none.
    tick_s: float | None

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        """Mark a host write (sequence numbers count from 1); False: no room, nothing done."""
        ...

    def mirrored_upto(self, seq: int, now: float) -> None:
        """Every write up to ``seq`` has drained to the second medium at ``now``."""
        ...

    def tick(self, now: float) -> None:
        ...

    def resync_bytes(self) -> int:
        """Bytes a crash now would copy: what the persistent record names."""
        ...

    def updates(self) -> int:
        """Persistent record updates (NVRAM transactions) so far."""
        ...


@dataclass
class Result:
    name: str
    writes: int
    record_updates: int
    upd_per_kw: float
    R_mean_MiB: float  # noqa: N815 - the figure's name in the issue and the JSON output
    R_p99_MiB: float  # noqa: N815
    stalls: int
    detail: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name, "writes": self.writes, "record_updates": self.record_updates,
            "upd_per_kw": round(self.upd_per_kw, 3), "R_mean_MiB": round(self.R_mean_MiB, 3),
            "R_p99_MiB": round(self.R_p99_MiB, 3), "stalls": self.stalls,
        }
        out.update(self.detail)
        return out


def replay(trace: TraceWrites, model: Model, link_mbps: float) -> Result:
    """Run every write of ``trace`` through ``model``; return the figures."""
    if link_mbps <= 0:
        raise ValueError("the link rate must be positive")
    bytes_per_s = link_mbps * 1e6 / 8
    pending: deque[tuple[float, int]] = deque()  # (drained at, seq), in seq order
    link_free = 0.0
    tick_s = model.tick_s
    next_tick = tick_s if tick_s else math.inf
    samples: list[int] = []
    stalls = 0
    now = 0.0

    def advance(until: float) -> None:
        nonlocal next_tick
        while True:
            drain_at = pending[0][0] if pending else math.inf
            if drain_at <= next_tick:
                if drain_at > until:
                    return
                _, seq = pending.popleft()
                model.mirrored_upto(seq, drain_at)
            else:
                if next_tick > until:
                    return
                model.tick(next_tick)
                assert tick_s is not None
                # Nothing happens between here and the next drain or write: one tick
                # stands for the quiet ones in between.
                quiet_until = min(until, drain_at)
                next_tick += tick_s
                if next_tick < quiet_until - tick_s:
                    next_tick += tick_s * math.floor((quiet_until - next_tick) / tick_s)

    times, offsets, lengths = trace.times, trace.offsets, trace.lengths
    for i in range(len(times)):
        seq = i + 1
        offset, length = offsets[i], lengths[i]
        if times[i] > now:
            now = times[i]
        advance(now)
        if not model.write(seq, offset, length, now):
            stalls += 1
            while not model.write(seq, offset, length, now):
                if not pending:
                    raise RuntimeError(f"{model.name}: no room for a write and nothing left "
                                       f"to mirror (capacity too small for one write?)")
                now = max(now, pending[0][0])
                advance(now)
        start = link_free if link_free > now else now
        link_free = start + length / bytes_per_s
        pending.append((link_free, seq))
        samples.append(model.resync_bytes())
    return _result(model, samples, stalls)


def _result(model: Model, samples: list[int], stalls: int) -> Result:
    n = len(samples)
    updates = model.updates()
    mean = sum(samples) / n / MIB if n else 0.0
    return Result(model.name, n, updates, 1000 * updates / n if n else 0.0, mean,
                  percentile(samples, 0.99) / MIB, stalls)


def percentile(values: Sequence[int], q: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return float(ordered[rank - 1])


# -- the Tandem record ---------------------------------------------------------------

def smallest_region(volume_size: int, nvram_bytes: int, floor: int = 4096) -> int:
    """The smallest power-of-two region (>= floor) whose record fits the NVRAM."""
    region = floor
    while Geometry(volume_size, region).nvram_bytes() > nvram_bytes:
        region *= 2
    if region > 1 << 40:
        raise ValueError("NVRAM too small for any record")
    return region


class TandemModel:
    """The firmware's Record and a policy, persisted into a NullRecordStore."""

    def __init__(self, name: str, geometry: Geometry, policy: RecordPolicy,
                 capacity_regions: int, tidy_s: float | None = 0.5,
                 quiet_evict_s: float | None = QUIET_EVICT_S) -> None:
        self.name = name
        self.tick_s = tidy_s
        self.record = Record(geometry, NullRecordStore(geometry),
                             capacity_regions=capacity_regions, policy=policy,
                             quiet_evict_s=quiet_evict_s)
        self._shift = geometry.region_shift

    def write(self, seq: int, offset: int, length: int, now: float) -> bool:
        record = self.record
        try:
            got = record.begin_write(offset, length, now)
        except RecordFull:
            return False
        if got.seq != seq:
            raise AssertionError(f"record sequence {got.seq} != replay sequence {seq}")
        record.end_write(got)
        return True

    def mirrored_upto(self, seq: int, now: float) -> None:
        self.record.mirrored_upto(seq)

    def tick(self, now: float) -> None:
        self.record.tidy(now)

    def resync_bytes(self) -> int:
        return len(self.record) << self._shift

    def updates(self) -> int:
        return self.record.counters.nvram_updates
