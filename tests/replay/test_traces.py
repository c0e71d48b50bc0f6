"""Trace readers: the three formats, gzip, several disks side by side."""

from __future__ import annotations

import gzip

import pytest

from tools.replay.traces import TraceError, detect_format, parse_trace, read_trace

GIB = 1 << 30

MSR = """\
128166372000000000,host,0,Write,4096,512,0
128166372000100000,host,0,Read,8192,4096,0
128166372000200000,host,0,Write,12288,8192,0
"""


def test_msr_keeps_writes_with_seconds_from_the_start() -> None:
    trace = parse_trace(MSR.splitlines())
    assert trace.offsets == [4096, 12288]
    assert trace.lengths == [512, 8192]
    assert trace.times == pytest.approx([0.0, 0.02])


def test_spc_sectors_and_opcodes() -> None:
    lines = ["0,100,4096,w,0.5", "0,8,4096,r,0.6", "0,16,1024,W,0.75"]
    trace = parse_trace(lines)
    assert trace.offsets == [100 * 512, 16 * 512]
    assert trace.times == pytest.approx([0.0, 0.25])


def test_blkparse_uses_queue_events_only() -> None:
    lines = [
        "  8,0    1        1     0.000000000  4242  Q  WS 2048 + 8 [kworker]",
        "  8,0    1        2     0.000010000  4242  G  WS 2048 + 8 [kworker]",
        "  8,0    1        3     0.000020000  4242  D  WS 2048 + 8 [kworker]",
        "  8,0    1        4     0.000500000  4242  C  WS 2048 + 8 [0]",
        "  8,0    1        5     0.001000000  4242  Q   R 4096 + 16 [cat]",
        "  8,0    1        6     0.002000000  4242  Q   W 9000 + 16 [dd]",
        "CPU1 (8,0):",
    ]
    trace = parse_trace(lines)
    assert trace.offsets == [2048 * 512, 9000 * 512]
    assert trace.lengths == [4096, 8192]


def test_disks_are_laid_side_by_side_or_picked() -> None:
    lines = ["128166372000000000,h,1,Write,0,4096,0",
             "128166372000000000,h,0,Write,3221225472,4096,0",  # 3 GiB into disk 0
             "128166372000000001,h,1,Write,8192,4096,0"]
    both = parse_trace(lines)
    # disk 0 spans 4 GiB (rounded up), so disk 1 starts there
    assert both.offsets == [4 * GIB, 3 * GIB, 4 * GIB + 8192]
    only = parse_trace(lines, disk="1")
    assert only.offsets == [0, 8192]


def test_gzip_file(tmp_path) -> None:
    path = tmp_path / "t.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(MSR)
    trace = read_trace(path)
    assert trace.name == "t" and len(trace) == 2


def test_unknown_format_is_refused() -> None:
    with pytest.raises(TraceError):
        detect_format("hello world")
    with pytest.raises(TraceError):
        parse_trace(["128166372000000000,host,0,Write,notanumber,512,0"], fmt="msr")


def test_a_column_name_line_names_the_format_and_is_skipped() -> None:
    msr = parse_trace(["Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime",
                       *MSR.splitlines()])
    assert msr.offsets == [4096, 12288]
    spc = parse_trace(["ASU, LBA, Size, Opcode, Timestamp", "0,100,4096,w,0.5"])
    assert spc.offsets == [100 * 512]
    assert len(parse_trace(["Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime"])) == 0
    with pytest.raises(TraceError):  # a header does not excuse a record in the wrong format
        parse_trace(["ASU,LBA,Size,Opcode,Timestamp", MSR.splitlines()[0]])
