"""The pair's power-cut torture (`tandem torture --pair`): a run passes, a seed replays,
and the oracle catches the broken build issue 15 names (D written before the holder's
acknowledgement)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from firmware.cli import main as tandem
from firmware.peer import store as peer_store
from tools.torture_pair import PairReport, PairTortureConfig, run_pair_torture


def test_short_pair_torture_passes() -> None:
    report = run_pair_torture(PairTortureConfig(cuts=60, seed=3))
    assert report.ok, report.failures
    assert report.cuts == 60 and report.boots >= 60
    assert (report.lost, report.unrecorded_regions, report.divergent_regions) == (0, 0, 0)
    # Every kind of victim lost power, the roles moved, and the checks had work to do.
    assert {label.split("/")[0] for label in report.cuts_by_victim} == \
        {"primary", "holder", "both"}
    assert report.failovers >= 3 and report.highest_epoch >= 4
    assert report.acked_checked > 0 and report.reads_checked > 0 and report.compares > 0
    assert report.strict_checks > 0
    assert report.frames_dropped > 0 and report.frames_corrupted > 0


def test_a_pair_seed_replays_exactly() -> None:
    def figures(report: PairReport) -> dict[str, object]:
        out = report.as_dict()
        out.pop("seconds")
        return out

    first = run_pair_torture(PairTortureConfig(cuts=12, seed=12))
    assert figures(run_pair_torture(PairTortureConfig(cuts=12, seed=12))) == figures(first)
    assert figures(run_pair_torture(PairTortureConfig(cuts=12, seed=13))) != figures(first)


def test_ci_pair_torture_1000_cuts() -> None:
    report = run_pair_torture(PairTortureConfig(cuts=1000, seed=2026))
    assert report.ok, report.failures
    assert report.cuts == 1000
    assert report.failovers >= 100


def test_pair_oracle_catches_d_written_before_the_holders_ack(monkeypatch) -> None:
    # The broken build: the local medium is written without waiting for the holder to
    # have the write's regions in its FRAM (the same mutant the kill -9 tests keep).
    async def durable_at_once(self: Any, transaction: int | None = None) -> None:
        if transaction is not None:
            self._issued.add(self._current[transaction])

    monkeypatch.setattr(peer_store.PeerRecordStore, "durable", durable_at_once)
    caught = 0
    for seed in (1, 2, 3):
        report = run_pair_torture(PairTortureConfig(cuts=200, seed=seed))
        caught += report.unrecorded_regions + report.lost + report.divergent_regions > 0
    assert caught == 3


def test_command_line_pair_json(capsys) -> None:
    status = tandem(["torture", "--pair", "--cuts", "6", "--seed", "2", "--size", "2M",
                     "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["ok"] and out["cuts"] == 6 and out["seed"] == 2
    assert sum(out["cuts_by_victim"].values()) == 6


def test_command_line_pair_text_and_bad_victims(capsys) -> None:
    assert tandem(["torture", "--pair", "--cuts", "3", "--seed", "4", "--size", "2M",
                   "--victims", "primary"]) == 0
    out = capsys.readouterr().out
    assert "tandem torture --pair: 3 power cuts" in out and "PASS" in out
    assert "primary/" in out and "holder/" not in out
    assert tandem(["torture", "--pair", "--victims", "nobody"]) == 2
    assert "unknown victims" in capsys.readouterr().err


@pytest.mark.parametrize("phase", ["fram", "media", "link"])
def test_each_pair_phase_alone(phase: str) -> None:
    report = run_pair_torture(PairTortureConfig(cuts=15, seed=8, phases=(phase,)))
    assert report.ok, report.failures
    assert report.cuts_by_phase.get(phase, 0) >= 5


def test_ci_active_active_torture_1000_cuts() -> None:
    # Issue 16: both nodes serve (requests go through either), regions move between
    # them, and the power of both goes at random points of the write path.
    report = run_pair_torture(PairTortureConfig(cuts=1000, seed=2027, mode="active-active",
                                                victims=("both",)))
    assert report.ok, report.failures
    assert report.cuts == 1000 and report.handovers > 1000
    assert report.acked_checked > 10000 and report.compares > 100

