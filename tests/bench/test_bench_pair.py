"""The pure parts of `tandem bench --pair`: the policy both appliances run, the record's
figures taken from `peer status`, the table and the JSON shape."""

from __future__ import annotations

from tools.bench_pair import PairOutcome, pair_figures, pair_json, render_pair_table, with_point
from tools.benchmark import JOBS, BenchSettings, FioResult, Run


def settings() -> BenchSettings:
    return BenchSettings(peer="nbdkit", runtime_s=10, size=1 << 30, repeat=1,
                         precondition=False, work_dir="/tmp/w", file_system="ext4 on x",
                         tandem_args=[])


def peer_status(misses: int, hits: int, marks: int) -> dict:
    return {"counters": {"misses": misses, "hits": hits, "marks_acked": marks,
                         "clears_acked": 0, "retried": 0},
            "links": [{"kind": "tcp", "rtt_ms": 0.5}, {"kind": "serial", "rtt_ms": None}]}


def test_alone_and_pair_run_the_same_policy() -> None:
    assert with_point([]) == ["--point", "recovery-first"]
    assert with_point(["--point=latency-first"]) == ["--point=latency-first"]
    assert with_point(["--point", "sequential-lru"]) == ["--point", "sequential-lru"]


def test_the_record_figures_are_the_jobs_own() -> None:
    status = {"peer": peer_status(120, 30, 100), "holder": {"held_regions": 77}}
    figures = pair_figures(status, peer_status(20, 10, 15))
    assert figures["misses"] == 100 and figures["hits"] == 20
    assert figures["marks_acked"] == 85 and figures["held_regions"] == 77
    assert figures["rtt_ms"] == {"tcp": 0.5, "serial": None}


def test_table_and_json() -> None:
    def run(iops: float, status: dict | None = None) -> Run:
        return Run(FioResult(iops, iops * 4096, 1, 10_000, 100.0, 900.0), 1.0, status)

    outcome = PairOutcome(JOBS[0], [run(4000)], [run(1000, {"peer": peer_status(50, 5, 50)})],
                          [run(20000)], [peer_status(0, 0, 0)])
    table = render_pair_table(settings(), [outcome], "TCP only (no socat)")
    line = table.splitlines()[2]
    assert "0.25×" in line and "0.05×" in line and "0.50/-" in line
    assert "TCP only" in table and "recovery-first" in table
    data = pair_json(settings(), [outcome], "TCP only")
    job = data["jobs"][0]
    assert job["pair_vs_alone"] == 0.25 and job["pair_record"]["misses"] == 50
    assert {"alone", "pair", "peer"} <= set(job)
