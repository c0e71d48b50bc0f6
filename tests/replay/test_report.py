"""`tandem replay-report`: the acceptance verdicts, the docs block, and the docs' own figures."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from firmware.cli import main
from tools.replay.report import BEGIN_MARK, END_MARK, acceptance
from tools.replay.sim import Result

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "traces"
DOC = REPO / "docs" / "record-policy.md"


def _msr_trace(path: Path, seed: int, writes: int = 1500) -> None:
    rng = random.Random(seed)
    tick = 128166372000000000
    lines = []
    for i in range(writes):
        tick += rng.randrange(1000, 20000)
        if i % 2:
            offset = (1 << 28) + i * 65536  # a sequential stream
        else:
            offset = rng.randrange(1 << 16) * 4096  # random over 256 MiB
        lines.append(f"{tick},h,0,Write,{offset},{65536 if i % 2 else 4096},0")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def traces(tmp_path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    _msr_trace(folder / "a.csv", 1)
    _msr_trace(folder / "b.csv", 2, writes=900)
    (folder / "notes.md").write_text("not a trace, not picked up\n")
    return folder


def test_json_verdicts_follow_the_rows(traces, capsys) -> None:
    assert main(["replay-report", str(traces), "--links", "100,1000", "--jobs", "1",
                 "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(r["trace"], r["link_mbps"]) for r in runs] == [
        ("a", 100.0), ("a", 1000.0), ("b", 100.0), ("b", 1000.0)]
    for run in runs:
        rows = {row["name"]: row for row in run["rows"]}
        floor = rows["lower-bound-4K"]["R_mean_MiB"]
        lat_upd, lat_excess = run["acceptance"]["latency-first"]
        rec_excess, rec_upd = run["acceptance"]["recovery-first"]
        assert lat_upd["value"] == rows["tandem-latency-first"]["upd_per_kw"]
        assert lat_upd["bound"] == rows["DRBD-AL-1237"]["upd_per_kw"]
        drbd_excess = rows["DRBD-AL-1237"]["R_mean_MiB"] - floor
        assert lat_excess["bound"] == pytest.approx(drbd_excess / 2, abs=2e-3)
        assert rec_excess["bound"] == pytest.approx(rows["dm-log-512K"]["excess_MiB"],
                                                    abs=2e-3)
        assert rec_upd["bound"] == pytest.approx(rows["dm-log-512K"]["upd_per_kw"] / 4,
                                                 abs=2e-3)
        for check in (lat_upd, lat_excess, rec_excess, rec_upd):
            assert check["met"] == (check["value"] <= check["bound"])


def _result(name: str, upd: float, r_mean: float) -> Result:
    return Result(name, 1000, int(upd), upd, r_mean, r_mean, 0)


def test_bounds_are_inclusive_and_both_conditions_count() -> None:
    rows = [
        _result("tandem-latency-first", 10.0, 60.0),  # excess 50 = half of DRBD's 100
        _result("tandem-recovery-first", 25.0, 21.0),  # excess 11 > dm-log's 10
        _result("DRBD-AL-1237", 10.0, 110.0),
        _result("dm-log-512K", 100.0, 20.0),
        _result("lower-bound-4K", 900.0, 10.0),
    ]
    checks = acceptance(rows)
    assert [c.met for c in checks["latency-first"]] == [True, True]
    assert [c.met for c in checks["recovery-first"]] == [False, True]


def test_docs_block_is_replaced_between_the_markers(traces, tmp_path, capsys) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(f"# Page\n\nbefore\n\n{BEGIN_MARK}\nstale\n{END_MARK}\n\nafter\n")
    assert main(["replay-report", str(traces), "--links", "100", "--jobs", "1",
                 "--docs", str(doc)]) == 0
    text = doc.read_text()
    assert "stale" not in text
    assert text.startswith("# Page\n\nbefore\n\n") and text.endswith(f"{END_MARK}\n\nafter\n")
    block = text[text.index(BEGIN_MARK):text.index(END_MARK)]
    assert "| a | 100 |" in block and "| b | 100 |" in block
    assert "#### a, 100 Mbit/s (1500 writes)" in block and "DRBD-AL-1237" in block
    assert "| a | 100 |" in capsys.readouterr().out  # the verdicts are printed too


def test_errors_are_reported_and_change_nothing(traces, tmp_path, capsys) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("no markers here\n")
    assert main(["replay-report", str(traces), "--links", "100", "--jobs", "1",
                 "--docs", str(doc)]) == 2
    assert doc.read_text() == "no markers here\n"
    assert "markers" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["replay-report", str(empty)]) == 2
    assert "no traces" in capsys.readouterr().err
    assert main(["replay-report", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["replay-report", str(traces), "--links", "fast"])


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/traces not beside the repo")
def test_the_docs_figures_are_what_the_code_prints(tmp_path) -> None:
    """docs/record-policy.md's verdicts and tables, made again from the shared traces."""
    copy = tmp_path / "record-policy.md"
    shutil.copy(DOC, copy)
    assert main(["replay-report", str(SHARED), "--docs", str(copy)]) == 0
    assert copy.read_text() == DOC.read_text(), (
        "docs/record-policy.md is stale: run `tandem replay-report ../shared/traces "
        "--docs docs/record-policy.md`")
