"""`tandem replay` end to end: table, JSON keys, plot; the shared traces when present."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from firmware.cli import main

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
KEYS = {"writes", "record_updates", "upd_per_kw", "R_mean_MiB", "R_p99_MiB", "stalls"}


@pytest.fixture()
def trace(tmp_path) -> Path:
    """A small MSR trace: a sequential stream, a hot set and random writes, reads mixed in."""
    rng = random.Random(5)
    lines = []
    tick = 128166372000000000
    for i in range(3000):
        tick += rng.randrange(1000, 20000)
        kind = "Read" if i % 4 == 0 else "Write"
        pick = i % 3
        if pick == 0:
            offset = (1 << 30) + i * 8192
        elif pick == 1:
            offset = rng.randrange(64) * 65536
        else:
            offset = rng.randrange(1 << 18) * 4096
        lines.append(f"{tick},h,0,{kind},{offset},8192,0")
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_has_the_figures_for_every_row(trace, capsys) -> None:
    assert main(["replay", str(trace), "--baselines", "--point", "all", "--json",
                 "--region-size", "64K"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert KEYS <= set(out)
    names = [row["name"] for row in out["rows"]]
    assert names[:2] == ["tandem-latency-first", "tandem-recovery-first"]
    assert {"DRBD-AL-1237", "DRBD-AL-6433", "md-bitmap-64M", "dm-log-512K",
            "lower-bound-4K"} <= set(names)
    for row in out["rows"]:
        assert KEYS <= set(row)
        assert row["writes"] == out["writes"] == 2250
        assert row["excess_MiB"] >= -1e-9  # nothing resyncs less than the exact dirty set
    lat, rec = out["rows"][0], out["rows"][1]
    assert lat["upd_per_kw"] <= rec["upd_per_kw"] and lat["R_mean_MiB"] >= rec["R_mean_MiB"]


def test_table(trace, capsys) -> None:
    assert main(["replay", str(trace), "--link-mbps", "1000", "--region-size", "64K"]) == 0
    out = capsys.readouterr().out
    assert "tandem-recovery-first" in out and "upd/kw" in out


def test_plot(trace, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "plane.png"
    assert main(["replay", str(trace), "--plot", str(png), "--json",
                 "--region-size", "256K"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads(capsys.readouterr().out)["frontier"]) >= 5


def test_the_plot_sweep_is_the_same_run_at_once_or_one_by_one(trace, tmp_path,
                                                               capsys) -> None:
    pytest.importorskip("matplotlib")
    frontiers = []
    for jobs in ("1", "2"):
        assert main(["replay", str(trace), "--plot", str(tmp_path / f"{jobs}.png"), "--json",
                     "--point", "all", "--region-size", "256K", "--jobs", jobs]) == 0
        frontiers.append(json.loads(capsys.readouterr().out)["frontiers"])
    assert frontiers[0] == frontiers[1]
    assert set(frontiers[0]) == {"latency-first", "recovery-first"}


def test_bad_trace(tmp_path, capsys) -> None:
    path = tmp_path / "junk.txt"
    path.write_text("this is not a trace\n")
    assert main(["replay", str(path)]) == 2
    assert "trace format" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces not beside the repo")
def test_a_shared_trace(capsys) -> None:
    trace = SHARED / "msr-rw_40_60-1370.csv.gz"
    assert main(["replay", str(trace), "--point", "recovery-first", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["writes"] == 5946 and KEYS <= set(out)
