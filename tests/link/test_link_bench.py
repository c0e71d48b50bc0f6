"""`tandem bench-link` runs end to end on a small volume and reports its figures."""

from __future__ import annotations

import argparse
import json

from tools.bench_link import register


def test_bench_link_reports_utilisation_and_resync_volume(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench-link", "--size", "16M", "--backlog", "8M",
                              "--rate-limit", "16M", "--dirty", "4M", "--json",
                              "--work-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    modes = {run["mode"]: run for run in out["backlog"]}
    assert set(modes) == {"ordered", "pull-ahead"}
    assert modes["ordered"]["overflows"] == 0 and modes["pull-ahead"]["overflows"] >= 1
    for run in modes.values():
        assert run["link_bytes"] >= run["backlog_bytes"] and run["utilisation"] > 0
    with_sums, without = out["resync"]
    assert with_sums["checksums"] and not without["checksums"]
    assert without["written_bytes"] == without["named_bytes"]
    assert with_sums["written_bytes"] == with_sums["differing_bytes"] < without["written_bytes"]
    assert with_sums["link_bytes"] < without["link_bytes"]
