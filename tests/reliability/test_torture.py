"""The power-cut torture: a short run passes, a seed replays, and the oracle has teeth.

The mutant tests put a known bug into the appliance and check that the torture
reports it: an oracle that never fails would prove nothing.
"""

from __future__ import annotations

import json

import pytest

from firmware.cli import main as tandem
from firmware.mirror.mirror import Mirror
from firmware.record.record import Record, WriteTicket
from firmware.record.store import NvramRecordStore
from firmware.volume.volume import Volume
from hal.media.base import Medium
from tools.torture import (
    BLOCK,
    BlockModel,
    Report,
    TortureConfig,
    block_image,
    decode_block,
    run_torture,
)


def test_short_torture_passes() -> None:
    report = run_torture(TortureConfig(cuts=40, seed=3))
    assert report.ok, report.failures
    assert report.cuts == 40 and report.boots >= 30
    assert report.acked_checked > 0 and report.compares > 0 and report.reads_checked > 0
    assert (report.lost, report.divergent_regions, report.unrecorded_regions) == (0, 0, 0)
    assert len(report.cuts_by_phase) >= 5


def test_a_seed_replays_exactly() -> None:
    def figures(report: Report) -> dict[str, object]:
        out = report.as_dict()
        out.pop("seconds")
        return out

    first = run_torture(TortureConfig(cuts=15, seed=12))
    assert figures(run_torture(TortureConfig(cuts=15, seed=12))) == figures(first)
    assert figures(run_torture(TortureConfig(cuts=15, seed=13))) != figures(first)


def test_only_recovery_cuts() -> None:
    # Crashes while recovering from a crash, again and again: the record stays usable.
    report = run_torture(TortureConfig(cuts=20, seed=4, phases=("recovery",)))
    assert report.ok, report.failures
    assert report.cuts_by_phase.get("recovery", 0) >= 5
    assert report.full_resyncs == 0


def test_command_line_json(capsys) -> None:
    status = tandem(["torture", "--cuts", "5", "--seed", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert status == 0 and out["ok"]
    assert out["cuts"] == 5
    for key in ("acked_checked", "lost", "divergent_regions", "cuts_by_phase",
                "mean_resync_bytes"):
        assert key in out
    assert out["lost"] == 0 and out["divergent_regions"] == 0


def test_command_line_text(capsys) -> None:
    assert tandem(["torture", "--cuts", "3", "--seed", "5"]) == 0
    text = capsys.readouterr().out
    assert "lost acknowledged writes:         0" in text and "PASS" in text


@pytest.mark.slow
def test_ci_torture_500_cuts() -> None:
    report = run_torture(TortureConfig(cuts=500, seed=2024))
    assert report.ok, report.failures
    assert report.lost == 0 and report.divergent_regions == 0


# -- the oracle itself --------------------------------------------------------------------


def test_block_images_are_recognised_whole_only() -> None:
    image = block_image(77, 5)
    assert decode_block(image, 5) == 77
    assert decode_block(image, 6) is None  # a write that landed in the wrong place
    assert decode_block(image[:2048] + block_image(78, 5)[2048:], 5) is None  # torn
    assert decode_block(bytes(BLOCK), 5) == 0


def test_model_promises_only_what_a_flush_covered() -> None:
    model = BlockModel(4)
    blocks = range(0, 2)
    model.issue(blocks, 1)
    model.acked(blocks, durable=False)
    snapshot = model.flush_issued()
    model.issue(range(1, 2), 2)  # issued after the flush began: not covered
    model.acked(range(1, 2), durable=False)
    model.flush_done(snapshot, ok=True)
    image = block_image(1, 0) + block_image(1, 1) + bytes(2 * BLOCK)
    assert model.check_and_rebase(image) == (2, [])
    # Now block 0 must hold 1: zeroes there is a lost write.
    model.issue(range(0, 1), 3)
    checked, failures = model.check_and_rebase(bytes(BLOCK) + block_image(1, 1)
                                               + bytes(2 * BLOCK))
    assert checked == 0 and len(failures) == 1 and "block 0" in failures[0]


def _mutant_finds(monkeypatch, **config: object) -> Report:
    # One policy and commit mode: the planted bug is what the run must find.
    report = run_torture(TortureConfig(seed=1, points=("sequential-lru",),
                                       **config))  # type: ignore[arg-type]
    assert not report.ok, "the torture missed a planted bug"
    return report


def test_oracle_catches_a_flush_that_does_not_flush(monkeypatch) -> None:
    async def flush_record_only(self: Volume) -> None:
        await self.record.flush()

    monkeypatch.setattr(Volume, "flush", flush_record_only)
    report = _mutant_finds(monkeypatch, cuts=200, local_cache="on")
    assert report.lost > 0


def test_oracle_catches_a_record_that_forgets_new_regions(monkeypatch) -> None:
    real_commit = NvramRecordStore.commit

    def commit_evictions_only(self: NvramRecordStore, add, remove) -> int:
        return real_commit(self, (), remove)

    monkeypatch.setattr(NvramRecordStore, "commit", commit_evictions_only)
    report = _mutant_finds(monkeypatch, cuts=200)
    assert report.unrecorded_regions > 0 or report.divergent_regions > 0


def test_oracle_catches_a_write_that_does_not_wait_for_its_record(monkeypatch) -> None:
    # The write-ahead broken where only the group-commit worker can show it: the data
    # goes to the medium while the record transaction naming its region is still staged.
    async def durable_at_once(self: Record, ticket: WriteTicket) -> None:
        ticket.transaction = 0

    monkeypatch.setattr(Record, "durable", durable_at_once)
    report = _mutant_finds(monkeypatch, cuts=300, commit_modes=("group-commit",))
    assert report.unrecorded_regions > 0


class _FlushIgnored:
    """A view of a medium whose flush does nothing: what trusting its cache amounts to."""

    def __init__(self, inner: Medium) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def flush(self) -> None:
        pass


def test_oracle_catches_a_mirror_that_trusts_the_local_cache(monkeypatch) -> None:
    # The mirror as it was before it flushed the local medium too (docs/reliability.md,
    # bug 1): it tells the record a region is mirrored while the local disk may hold the
    # data only in its volatile cache.
    real_init = Mirror.__init__

    def trusting_init(self: Mirror, local: Medium, *args: object, **kwargs: object) -> None:
        real_init(self, _FlushIgnored(local), *args, **kwargs)

    monkeypatch.setattr(Mirror, "__init__", trusting_init)
    report = _mutant_finds(monkeypatch, cuts=300, local_cache="on")
    assert report.unrecorded_regions > 0
