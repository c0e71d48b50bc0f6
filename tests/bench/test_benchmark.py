"""`tandem bench` / tools/bench: fio's report read right, the table and JSON say what ran,
and one short real run against Tandem and each reference server."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from firmware.cli import main
from tools.benchmark import (
    JOBS,
    JOBS_BY_NAME,
    BenchSettings,
    FioResult,
    JobOutcome,
    Run,
    fio_command,
    median_result,
    parse_fio_json,
    render_table,
    to_json,
)

REPO = Path(__file__).resolve().parents[2]


def fio_report(iops: float, bw_bytes: float, error: int = 0) -> dict:
    return {
        "fio version": "fio-3.33",
        "jobs": [{
            "jobname": "x", "error": error,
            "write": {
                "iops": iops, "bw_bytes": bw_bytes, "io_bytes": int(bw_bytes * 10),
                "runtime": 10000,
                "clat_ns": {"mean": 250000.0, "percentile": {"99.000000": 900000}},
            },
        }],
    }


def settings(**overrides: object) -> BenchSettings:
    values: dict = dict(peer="nbdkit", runtime_s=10, size=1 << 30, repeat=1,
                        precondition=False, work_dir="/tmp/w", file_system="ext4 on /dev/x",
                        tandem_args=[])
    values.update(overrides)
    return BenchSettings(**values)


def run(iops: float, bw: float, status: dict | None = None) -> Run:
    return Run(FioResult(iops, bw, int(bw * 10), 10000, 250.0, 900.0), 5.0, status)


def test_fio_report_is_read_after_lines_fio_prints_before_it():
    text = "fio: connected to NBD server\n" + json.dumps(fio_report(1234.5, 5_000_000))
    result = parse_fio_json(text)
    assert result.iops == 1234.5
    assert result.bw_bytes == 5_000_000
    assert result.lat_mean_us == 250.0
    assert result.lat_p99_us == 900.0


def test_a_failed_fio_job_is_an_error():
    with pytest.raises(ValueError, match="error 5"):
        parse_fio_json(json.dumps(fio_report(0, 0, error=5)))
    with pytest.raises(ValueError):
        parse_fio_json("fio: no JSON here")


def test_both_servers_get_the_same_job_but_the_uri():
    job = JOBS_BY_NAME["4k-randwrite-qd32"]
    a = fio_command(job, "nbd://127.0.0.1:1/tandem", runtime_s=10, size=1 << 30,
                    output=Path("o.json"))
    b = fio_command(job, "nbd://127.0.0.1:2/tandem", runtime_s=10, size=1 << 30,
                    output=Path("o.json"))
    assert [x for x in a if not x.startswith("--uri=")] == \
        [x for x in b if not x.startswith("--uri=")]
    assert {"--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=32", "--time_based",
            "--runtime=10", "--output-format=json"} <= set(a)


def test_the_jobs_are_the_issues_three():
    assert [(j.rw, j.block_size, j.iodepth) for j in JOBS] == [
        ("randwrite", "4k", 1), ("randwrite", "4k", 32), ("write", "1M", 8)]


def test_median_is_an_actual_run():
    runs = [FioResult(i, i, 0, 0, 0.0, None) for i in (30.0, 10.0, 20.0)]
    assert median_result(runs).iops == 20.0


def test_table_shows_both_servers_the_ratio_the_goal_and_the_counters():
    status = {"hits": 7, "misses": 3, "nvram_updates": 4, "waits": 0,
              "mirror_lag_bytes": 2_000_000, "mirror_state": "ordered"}
    qd32 = JobOutcome(JOBS_BY_NAME["4k-randwrite-qd32"], [run(4000, 16e6, status)],
                      [run(10000, 40e6)])
    seq = JobOutcome(JOBS_BY_NAME["1m-seqwrite-qd8"], [run(300, 300e6, status)],
                     [run(1000, 1000e6)])
    table = render_table(settings(), [qd32, seq])
    qd32_line = next(line for line in table.splitlines() if line.startswith("4k-randwrite-qd32"))
    assert "4000" in qd32_line and "10000" in qd32_line
    assert "0.40×" in qd32_line and "ok" in qd32_line
    assert "ordered" in qd32_line and "2.0" in qd32_line  # mirror lag in MB
    seq_line = next(line for line in table.splitlines() if line.startswith("1m-seqwrite-qd8"))
    assert "0.30×" in seq_line and "MISS" in seq_line
    assert "fresh sparse image files per job" in table
    assert "nbdkit" in table


def test_json_is_one_object_with_the_goals():
    qd32 = JobOutcome(JOBS_BY_NAME["4k-randwrite-qd32"], [run(2000, 8e6, {"hits": 1})],
                      [run(10000, 40e6)])
    out = json.loads(json.dumps(to_json(settings(precondition=True), [qd32])))
    job = out["jobs"][0]
    assert job["ratio"] == 0.2 and job["goal"] == 0.3 and job["meets_goal"] is False
    assert job["tandem"]["status"] == {"hits": 1}
    assert "written in full" in out["settings"]["images_note"]


def test_wrapper_script_runs_the_subcommand():
    result = subprocess.run([str(REPO / "tools" / "bench"), "--help"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "--peer" in result.stdout


@pytest.mark.parametrize(("peer", "fram_elsewhere"), [("nbdkit", False), ("qemu-nbd", True)])
def test_a_short_real_run_measures_both_servers(peer, fram_elsewhere, tmp_path, capsys):
    missing = [t for t in ("fio", peer) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (tools/setup.sh installs them)")
    work, fram = tmp_path / "work", tmp_path / "fram"
    fram.mkdir()
    status = main(["bench", "--json", "--runtime", "1", "--size", "64M", "--peer", peer,
                   "--job", "4k-randwrite-qd1", "--work-dir", str(work),
                   *(["--nvram-dir", str(fram)] if fram_elsewhere else [])])
    out = json.loads(capsys.readouterr().out)
    assert status == 0
    (job,) = out["jobs"]
    assert job["job"]["name"] == "4k-randwrite-qd1"
    assert job["tandem"]["iops"] > 0 and job["peer"]["iops"] > 0
    counters = job["tandem"]["status"]
    assert counters["hits"] + counters["misses"] > 0
    # Nothing is left behind without --keep.
    assert list(work.iterdir()) == [] and list(fram.iterdir()) == []
