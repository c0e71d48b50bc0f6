"""Block trace readers: MSR Cambridge CSV, SPC, blkparse text (plain or gzip).

Each yields the trace's writes in issue order as a
:class:`~tools.replay.sim.TraceWrites` (reads are dropped: they never touch
the record). Traces naming several disks (MSR ``DiskNumber``, SPC ``ASU``,
blkparse ``major,minor``) are laid side by side in one address space, each disk
starting on a GiB boundary after the previous one, unless ``disk`` picks one.

- MSR Cambridge: ``Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime``,
  Timestamp in Windows FILETIME ticks (100 ns), Type ``Read``/``Write``,
  Offset and Size in bytes. A first line naming these columns (or SPC's) is
  skipped.
- SPC (UMass/Storage Performance Council): ``ASU,LBA,Size,Opcode,Timestamp``,
  LBA in 512-byte sectors, Size in bytes, Opcode ``r``/``w``, Timestamp in
  seconds.
- blkparse's default text output: ``dev cpu seq time pid action rwbs sector + n``;
  one action is kept per request (Q if the trace has any, else D, else C),
  and writes are the ones whose RWBS field has a ``W``.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from tools.replay.sim import TraceWrites

FORMATS = ("auto", "msr", "spc", "blkparse")
_SECTOR = 512
_GIB = 1 << 30
_FILETIME_TICKS_PER_S = 10_000_000


class TraceError(ValueError):
    """The file is not a trace in the expected format."""


# A parsed request: (time, disk, is_write, offset, length); time in seconds or ticks.
_Request = tuple[float, str, bool, int, int]


def read_trace(path: str | Path, fmt: str = "auto", disk: str | None = None) -> TraceWrites:
    path = Path(path)
    name = path.name
    for suffix in (".gz", ".csv", ".txt", ".trace", ".spc", ".blktrace"):
        name = name.removesuffix(suffix)
    with _open_text(path) as lines:
        return parse_trace(lines, fmt=fmt, disk=disk, name=name)


def parse_trace(lines: Iterable[str], fmt: str = "auto", disk: str | None = None,
                name: str = "trace") -> TraceWrites:
    """The writes of a trace given as text lines."""
    if fmt not in FORMATS:
        raise TraceError(f"unknown trace format {fmt!r} (one of {', '.join(FORMATS)})")
    it = iter(lines)
    head: list[str] = []
    for line in it:
        if line.strip() and not line.lstrip().startswith("#"):
            head.append(line)
            break
    if not head:
        return TraceWrites(name)
    named = header_format(head[0])
    if named is not None:
        # A column-name line (as the formats' documentation and CSV exports write
        # them) names the format and is not a record.
        if fmt == "auto":
            fmt = named
        head = []
    elif fmt == "auto":
        fmt = detect_format(head[0])
    allines = _chain(head, it)
    if fmt == "msr":
        return _lay_out(list(_parse_msr(allines)), disk, name, _FILETIME_TICKS_PER_S)
    if fmt == "spc":
        return _lay_out(list(_parse_spc(allines)), disk, name)
    return _lay_out(_parse_blkparse(allines), disk, name)


_HEADERS = {
    ("timestamp", "hostname", "disknumber", "type", "offset", "size", "responsetime"): "msr",
    ("asu", "lba", "size", "opcode", "timestamp"): "spc",
}


def header_format(line: str) -> str | None:
    """The format whose column names the line lists (None: not a header line)."""
    return _HEADERS.get(tuple(f.strip().lower() for f in line.split(",")))


def detect_format(line: str) -> str:
    fields = [f.strip() for f in line.split(",")]
    if len(fields) >= 7 and fields[3].lower() in ("read", "write"):
        return "msr"
    if len(fields) == 5 and fields[3].lower() in ("r", "w"):
        return "spc"
    words = line.split()
    if len(words) >= 10 and words[8] == "+":
        return "blkparse"
    raise TraceError(f"cannot tell the trace format from its first line: {line.strip()[:80]!r}")


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _open_text(path: Path) -> io.TextIOBase:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - returned open


def _parse_msr(lines: Iterable[str]) -> Iterator[_Request]:
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(",")
        try:
            ticks = int(fields[0])
            kind = fields[3].strip().lower()
            offset = int(fields[4])
            size = int(fields[5])
        except (IndexError, ValueError) as exc:
            raise TraceError(f"line {number}: not an MSR record: {line.strip()[:80]!r}") from exc
        # Ticks stay integers until the start is subtracted: FILETIME values are too
        # large for a float to keep their 100 ns resolution.
        yield ticks, fields[2].strip(), kind == "write", offset, size


def _parse_spc(lines: Iterable[str]) -> Iterator[_Request]:
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(",")
        try:
            asu = fields[0].strip()
            lba = int(fields[1])
            size = int(fields[2])
            kind = fields[3].strip().lower()
            time = float(fields[4])
        except (IndexError, ValueError) as exc:
            raise TraceError(f"line {number}: not an SPC record: {line.strip()[:80]!r}") from exc
        yield time, asu, kind == "w", lba * _SECTOR, size


def _parse_blkparse(lines: Iterable[str]) -> list[_Request]:
    by_action: dict[str, list[_Request]] = {"Q": [], "D": [], "C": []}
    for line in lines:
        words = line.split()
        # dev cpu seq time pid action rwbs sector + count [process]
        if len(words) < 10 or words[8] != "+" or words[5] not in by_action:
            continue  # summaries, plug/unplug, messages
        try:
            time = float(words[3])
            sector = int(words[7])
            count = int(words[9])
        except ValueError:
            continue
        if count == 0:
            continue
        rwbs = words[6]
        by_action[words[5]].append((time, words[0], "W" in rwbs, sector * _SECTOR,
                                    count * _SECTOR))
    for action in ("Q", "D", "C"):
        if by_action[action]:
            return by_action[action]
    return []


def _lay_out(requests: list[_Request], disk: str | None, name: str,
             ticks_per_s: float = 1.0) -> TraceWrites:
    if disk is not None:
        requests = [r for r in requests if r[1] == disk]
        if not requests:
            raise TraceError(f"the trace has no requests for disk {disk!r}")
    ends: dict[str, int] = {}
    for _t, d, _w, offset, size in requests:
        ends[d] = max(ends.get(d, 0), offset + size)
    base: dict[str, int] = {}
    at = 0
    for d in sorted(ends, key=_disk_order):
        base[d] = at
        at += -(-ends[d] // _GIB) * _GIB
    out = TraceWrites(name)
    start = min((r[0] for r in requests), default=0.0)
    for time, d, is_write, offset, size in requests:
        if is_write:
            out.append((time - start) / ticks_per_s, base[d] + offset, size)
    return out


def _disk_order(disk: str) -> tuple[int, str]:
    return (int(disk), "") if disk.isdigit() else (1 << 62, disk)
