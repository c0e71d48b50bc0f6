"""Media that misbehave on purpose, for fault-injection tests and the torture harness.

- :class:`FaultyMedium` fails on demand: EIO on read or write, ENOSPC (a full
  disk), a failing flush, a write that lands in part before it fails; or it
  vanishes (every operation fails, ENODEV) until it comes back.
- :class:`VolatileCacheMedium` has a volatile write cache, as most disks do: a
  completed write sits in the cache until ``flush``. At a power cut each 4 KiB
  sector written since the last flush keeps its flushed content or *any* version
  written since (a cache destages in whatever order it likes); a write cut in the
  middle reaches only some of its sectors. Sectors are all-or-nothing: that is the
  best a disk promises. With ``cache=False`` writes go through at once and only the
  write in progress at the cut is torn.
- :class:`PowerRail` is the power of one emulated board. Every medium on the rail
  asks it before each I/O; a ``trip`` hook sees the I/O first and may cut the power
  before it or in the middle of it, and ``senses`` let another device (an FRAM
  emulation with its own cut) take the rail down with it.

All three are thread-safe: the mirror does its medium I/O in a worker thread.
"""

from __future__ import annotations

import enum
import errno
import os
import random
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hal.media.base import Medium, MediumError

SECTOR = 4096

OPS = ("read", "write", "zeroes", "flush")


class MediumPowerLost(MediumError):
    """The board lost power (injected): the medium does nothing until it is back."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


# -- the power rail ---------------------------------------------------------------------


class Cut(enum.Enum):
    """What a trip hook decides for one I/O."""

    BEFORE = "before"  # the I/O has no effect at all
    DURING = "during"  # a write reaches some of its sectors, then the power goes


@dataclass(frozen=True)
class IoEvent:
    device: str
    op: str  # one of OPS
    offset: int
    length: int


class PowerRail:
    """Power shared by the devices of one emulated board."""

    def __init__(self) -> None:
        self._on = True
        self.cause: str | None = None
        # Sees every I/O of every medium on the rail before it happens.
        self.trip: Callable[[IoEvent], Cut | None] | None = None
        self._senses: list[tuple[str, Callable[[], bool]]] = []
        self._on_cut: list[Callable[[], None]] = []
        self._lock = threading.RLock()

    @property
    def on(self) -> bool:
        with self._lock:
            for name, powered in self._senses:
                if self._on and not powered():
                    self._cut(f"{name} lost power")
            return self._on

    def sense(self, name: str, powered: Callable[[], bool]) -> None:
        """Another device on the board: when it reports no power, the rail is off too."""
        self._senses.append((name, powered))

    def when_cut(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once per cut) when the power goes: stop other devices."""
        self._on_cut.append(callback)

    def cut(self, cause: str) -> None:
        with self._lock:
            self._cut(cause)

    def _cut(self, cause: str) -> None:
        if not self._on:
            return
        self._on = False
        self.cause = cause
        for callback in self._on_cut:
            callback()

    def restore(self) -> None:
        with self._lock:
            self._on = True
            self.cause = None

    def enter(self, event: IoEvent) -> Cut | None:
        """Called by a medium before an I/O: raises when the power is (or goes) off.

        Returns ``Cut.DURING`` when the I/O is to be cut in the middle: the medium
        applies part of it, calls :meth:`cut` and raises :class:`MediumPowerLost`.
        """
        with self._lock:
            if not self.on:
                raise MediumPowerLost(f"{event.device}: no power ({self.cause})")
            decision = self.trip(event) if self.trip is not None else None
            if decision is Cut.BEFORE:
                self._cut(f"before {event.op} {event.device}@{event.offset}+{event.length}")
                raise MediumPowerLost(f"{event.device}: power cut before {event.op}")
            return decision


# -- a disk with a volatile write cache -------------------------------------------------


_ZERO_SECTOR = bytes(SECTOR)


class VolatileCacheMedium:
    """A medium whose unflushed writes may be lost, in part, at a power cut."""

    def __init__(self, inner: Medium, *, rail: PowerRail | None = None,
                 name: str | None = None, cache: bool = True,
                 rng: random.Random | None = None) -> None:
        self.inner = inner
        self.rail = rail
        self._name = name or inner.name
        self.cache = cache
        self._rng = rng or random.Random()
        self._size = inner.size
        # Sector -> versions written since the last flush, oldest first.
        self._versions: dict[int, list[bytes]] = {}
        self._lock = threading.RLock()

    # -- Medium ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    @property
    def unflushed_sectors(self) -> int:
        return len(self._versions)

    def pread(self, offset: int, length: int) -> bytes:
        with self._lock:
            if self._enter("read", offset, length) is Cut.DURING:
                self._power_lost("during read")
            return self._read(offset, length)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        data = bytes(data)
        with self._lock:
            decision = self._enter("write", offset, len(data))
            if not self.cache and decision is None:
                self.inner.pwrite(offset, data)
                return
            self._land(self._images(offset, data), decision)

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        with self._lock:
            decision = self._enter("zeroes", offset, length)
            if not self.cache and decision is None:
                self.inner.write_zeroes(offset, length, punch=punch)
                return
            self._land(self._images(offset, None, length), decision)

    def flush(self) -> None:
        with self._lock:
            decision = self._enter("flush", 0, 0)
            if decision is Cut.DURING:
                # The cache was part-way through destaging; settle() picks what stayed.
                self._power_lost("during flush")
            self._destage({s: v[-1] for s, v in self._versions.items()})
            self.inner.flush()
            self._versions.clear()

    def close(self) -> None:
        self.inner.close()

    # -- the power cut --------------------------------------------------------------

    def settle(self, mode: str = "random", rng: random.Random | None = None) -> tuple[int, int]:
        """What a power cut leaves: destage a choice of cached versions, drop the rest.

        ``mode`` is ``"random"`` (each sector keeps its flushed content or any version
        written since), ``"lose"`` (nothing unflushed survives) or ``"keep"`` (the newest
        version of every sector survives). Returns (sectors changed, sectors lost).
        The medium works again afterwards, as after power comes back.
        """
        rng = rng or self._rng
        with self._lock:
            chosen: dict[int, bytes] = {}
            lost = 0
            for sector, versions in self._versions.items():
                if mode == "keep":
                    pick = len(versions) - 1
                elif mode == "lose":
                    pick = -1
                elif mode == "random":
                    pick = rng.randrange(-1, len(versions))
                else:
                    raise ValueError(f"unknown settle mode {mode!r}")
                if pick >= 0:
                    chosen[sector] = versions[pick]
                if pick != len(versions) - 1:
                    lost += 1
            self._destage(chosen)
            self.inner.flush()
            self._versions.clear()
            return len(chosen), lost

    # -- internals ------------------------------------------------------------------

    def _enter(self, op: str, offset: int, length: int) -> Cut | None:
        if op != "flush" and (offset < 0 or length < 0 or offset + length > self._size):
            raise MediumError(errno.EINVAL, f"{self._name}: range {offset}+{length} "
                                            f"outside 0..{self._size}")
        if self.rail is None:
            return None
        return self.rail.enter(IoEvent(self._name, op, offset, length))

    def _power_lost(self, where: str) -> None:
        if self.rail is not None:
            self.rail.cut(f"{where} {self._name}")
        raise MediumPowerLost(f"{self._name}: power cut {where}")

    def _sector_span(self, sector: int) -> tuple[int, int]:
        start = sector * SECTOR
        return start, min(SECTOR, self._size - start)

    def _current(self, sector: int) -> bytes:
        versions = self._versions.get(sector)
        if versions:
            return versions[-1]
        start, length = self._sector_span(sector)
        return self.inner.pread(start, length)

    def _read(self, offset: int, length: int) -> bytes:
        data = self.inner.pread(offset, length)
        if not self._versions or length == 0:
            return data
        out = bytearray(data)
        first, last = offset // SECTOR, (offset + length - 1) // SECTOR
        if last - first + 1 > len(self._versions):
            cached = [s for s in self._versions if first <= s <= last]
        else:
            cached = [s for s in range(first, last + 1) if s in self._versions]
        for sector in cached:
            image = self._versions[sector][-1]
            start = sector * SECTOR
            lo, hi = max(start, offset), min(start + len(image), offset + length)
            out[lo - offset:hi - offset] = image[lo - start:hi - start]
        return bytes(out)

    def _images(self, offset: int, data: bytes | None, length: int | None = None
                ) -> dict[int, bytes]:
        """The full content of every sector the write touches, after the write."""
        length = len(data) if data is not None else int(length or 0)
        images: dict[int, bytes] = {}
        if length == 0:
            return images
        for sector in range(offset // SECTOR, (offset + length - 1) // SECTOR + 1):
            start, size = self._sector_span(sector)
            lo, hi = max(start, offset), min(start + size, offset + length)
            if lo == start and hi == start + size:
                if data is None:
                    images[sector] = _ZERO_SECTOR if size == SECTOR else bytes(size)
                else:
                    images[sector] = data[lo - offset:hi - offset]
                continue
            image = bytearray(self._current(sector))
            image[lo - start:hi - start] = (bytes(hi - lo) if data is None
                                           else data[lo - offset:hi - offset])
            images[sector] = bytes(image)
        return images

    def _land(self, images: dict[int, bytes], decision: Cut | None) -> None:
        if decision is Cut.DURING:
            # Some sectors of the write made it (into the cache, or to the platter).
            images = {s: img for s, img in images.items() if self._rng.random() < 0.5}
        if self.cache:
            for sector, image in images.items():
                self._versions.setdefault(sector, []).append(image)
        else:
            self._destage(images)
        if decision is Cut.DURING:
            self._power_lost("during write")

    def _destage(self, images: dict[int, bytes]) -> None:
        """Write sector images to the inner medium, adjacent sectors as one write."""
        run_start: int | None = None
        run: list[bytes] = []
        for sector in sorted(images):
            if run_start is not None and sector == run_start + len(run):
                run.append(images[sector])
                continue
            if run_start is not None:
                self.inner.pwrite(run_start * SECTOR, b"".join(run))
            run_start, run = sector, [images[sector]]
        if run_start is not None:
            self.inner.pwrite(run_start * SECTOR, b"".join(run))


# -- errors on demand -------------------------------------------------------------------


@dataclass
class Fault:
    """One injected failure: which operations, where, how often, with which errno."""

    ops: frozenset[str]
    err: int = errno.EIO
    offset: int = 0
    length: int | None = None  # None: to the end of the medium
    skip: int = 0  # let this many matching operations succeed first
    times: int | None = None  # fail this many times, then pass (None: for ever)
    partial: bool = False  # a failing write lands in its first half before failing
    seen: int = field(default=0, init=False)
    hits: int = field(default=0, init=False)

    def matches(self, op: str, offset: int, length: int) -> bool:
        if op not in self.ops:
            return False
        if op == "flush":
            return True
        end = None if self.length is None else self.offset + self.length
        return offset + max(length, 1) > self.offset and (end is None or offset < end)

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultyMedium:
    """Wraps a medium and fails the operations the test asks for."""

    def __init__(self, inner: Medium, name: str | None = None) -> None:
        self.inner = inner
        self._name = name or inner.name
        self._faults: list[Fault] = []
        self._gone: int | None = None
        self._lock = threading.Lock()
        self.errors_raised = 0

    # -- the test's controls --------------------------------------------------------

    def inject(self, ops: str | Iterable[str] = "write", err: int = errno.EIO, *,
               offset: int = 0, length: int | None = None, skip: int = 0,
               times: int | None = None, partial: bool = False) -> Fault:
        """Fail matching operations (``"read"``, ``"write"``, ``"zeroes"``, ``"flush"``)."""
        names = frozenset([ops] if isinstance(ops, str) else ops)
        unknown = names - set(OPS)
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}; known: {OPS}")
        fault = Fault(names, err, offset, length, skip, times, partial)
        with self._lock:
            self._faults.append(fault)
        return fault

    def fill_up(self) -> Fault:
        """The medium is full: every write fails with ENOSPC until cleared."""
        return self.inject(("write", "zeroes"), errno.ENOSPC)

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults.remove(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def vanish(self, err: int = errno.ENODEV) -> None:
        """The device is gone (unplugged, link down): every operation fails."""
        self._gone = err

    def reappear(self) -> None:
        self._gone = None

    @property
    def gone(self) -> bool:
        return self._gone is not None

    # -- Medium ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def name(self) -> str:
        return self._name

    def pread(self, offset: int, length: int) -> bytes:
        self._check("read", offset, length)
        return self.inner.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        fault = self._check("write", offset, len(data), raise_now=False)
        if fault is not None:
            if fault.partial and len(data) > 1:
                half = max(SECTOR, len(data) // 2 // SECTOR * SECTOR)
                self.inner.pwrite(offset, bytes(data[:min(half, len(data) - 1)]))
            raise self._error(fault.err, "write", offset, len(data))
        self.inner.pwrite(offset, bytes(data) if isinstance(data, memoryview) else data)

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._check("zeroes", offset, length)
        self.inner.write_zeroes(offset, length, punch=punch)

    def flush(self) -> None:
        self._check("flush", 0, 0)
        self.inner.flush()

    def close(self) -> None:
        self.inner.close()

    # -- internals ------------------------------------------------------------------

    def _check(self, op: str, offset: int, length: int, raise_now: bool = True
               ) -> Fault | None:
        with self._lock:
            if self._gone is not None:
                self.errors_raised += 1
                raise self._error(self._gone, op, offset, length)
            for fault in self._faults:
                if fault.exhausted or not fault.matches(op, offset, length):
                    continue
                fault.seen += 1
                if fault.seen <= fault.skip:
                    continue
                fault.hits += 1
                self.errors_raised += 1
                if raise_now:
                    raise self._error(fault.err, op, offset, length)
                return fault
        return None

    def _error(self, err: int, op: str, offset: int, length: int) -> MediumError:
        where = "" if op == "flush" else f" at {offset}+{length}"
        return MediumError(err, f"{self._name}: {os.strerror(err)} on {op}{where} (injected)")
