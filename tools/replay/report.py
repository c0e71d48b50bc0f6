"""`tandem replay-report DIR`: the record policy's acceptance figures over a folder of traces.

For every trace in DIR and every link rate, replays both operating points of the
firmware's policy and the baselines (the same runs as `tandem replay --point all
--baselines`), then checks the two operating points against the baselines:

- latency-first: upd/kw <= DRBD-AL-1237's, and excess <= half of DRBD-AL-1237's;
- recovery-first: excess <= dm-log-512K's, and upd/kw <= a quarter of dm-log-512K's;

where excess is R_mean_MiB minus the exact lower bound's on the same trace and link.
Prints the verdicts as a Markdown table; ``--docs FILE`` rewrites the part of FILE
between the report's markers with the verdicts and the full tables, so the figures
in the docs are the code's; ``--json`` prints everything as one object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from firmware.record.policy import POINTS
from firmware.record.record import QUIET_EVICT_S
from tools.replay.baselines import all_baselines
from tools.replay.command import add_excess, bounds, format_table, map_jobs, tandem_model
from tools.replay.sim import Model, Result, replay
from tools.replay.traces import TraceError, read_trace

BEGIN_MARK = "<!-- replay-report: begin (made by `tandem replay-report`; do not edit) -->"
END_MARK = "<!-- replay-report: end -->"
TRACE_SUFFIXES = (".csv", ".csv.gz", ".spc", ".spc.gz", ".blktrace", ".blktrace.gz")


@dataclass
class Check:
    """One condition of an operating point: a figure and the bound it must not pass."""

    figure: str
    value: float
    bound: float

    @property
    def met(self) -> bool:
        return self.value <= self.bound

    def as_dict(self) -> dict[str, object]:
        return {"figure": self.figure, "value": round(self.value, 3),
                "bound": round(self.bound, 3), "met": self.met}


def acceptance(rows: list[Result]) -> dict[str, list[Check]]:
    """The two operating points' conditions, from the rows of one trace and link."""
    by_name = {row.name: row for row in rows}
    target = bounds(rows)
    if target is None:
        raise ValueError("the baselines were not run: no bounds to check against")
    floor = target.floor_MiB
    lat, rec = by_name["tandem-latency-first"], by_name["tandem-recovery-first"]
    return {
        "latency-first": [
            Check("upd_per_kw", lat.upd_per_kw, target.latency_upd_per_kw),
            Check("excess_MiB", lat.R_mean_MiB - floor, target.latency_excess_MiB),
        ],
        "recovery-first": [
            Check("excess_MiB", rec.R_mean_MiB - floor, target.recovery_excess_MiB),
            Check("upd_per_kw", rec.upd_per_kw, target.recovery_upd_per_kw),
        ],
    }


@dataclass
class Run:
    trace: str
    writes: int
    link_mbps: float
    rows: list[Result]

    def checks(self) -> dict[str, list[Check]]:
        return acceptance(self.rows)


def trace_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name.endswith(TRACE_SUFFIXES))


def _replay_options(args: argparse.Namespace) -> argparse.Namespace:
    """What tools.replay.tandem_model reads, at `tandem replay`'s defaults."""
    return argparse.Namespace(volume_size=None, region_size=None, nvram_bytes=args.nvram_bytes,
                              hold_cost=None, resync_budget=None, tidy_interval=0.5,
                              quiet_evict=QUIET_EVICT_S)


def run_one(path: Path, link_mbps: float, options: argparse.Namespace) -> Run:
    """Both operating points and the baselines over one trace at one link rate."""
    trace = read_trace(path)
    models: list[Model] = [tandem_model(trace, options, point) for point in POINTS]
    models += all_baselines()  # type: ignore[arg-type]
    rows = [replay(trace, model, link_mbps) for model in models]
    add_excess(rows)
    return Run(trace.name, len(trace), link_mbps, rows)


def _mark(check: Check) -> str:
    return f"{check.value:.2f} / {check.bound:.2f} {'✓' if check.met else '✗'}"


def verdict_table(runs: list[Run]) -> str:
    lines = [
        "| trace | Mbit/s | latency-first upd/kw (≤ DRBD-1237) "
        "| latency-first excess MiB (≤ ½ DRBD-1237's) "
        "| recovery-first excess MiB (≤ dm-log-512K's) "
        "| recovery-first upd/kw (≤ ¼ dm-log-512K's) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        checks = run.checks()
        cells = [_mark(c) for point in ("latency-first", "recovery-first") for c in checks[point]]
        lines.append(f"| {run.trace} | {run.link_mbps:g} | " + " | ".join(cells) + " |")
    met = {point: sum(all(c.met for c in run.checks()[point]) for run in runs)
           for point in ("latency-first", "recovery-first")}
    lines.append("")
    lines.append(f"Operating points met (both conditions): latency-first {met['latency-first']} "
                 f"of {len(runs)}, recovery-first {met['recovery-first']} of {len(runs)}.")
    return "\n".join(lines)


def full_tables(runs: list[Run]) -> str:
    out: list[str] = []
    for run in runs:
        out.append(f"#### {run.trace}, {run.link_mbps:g} Mbit/s ({run.writes} writes)")
        out.append("")
        out.append("```")
        out.append(format_table(run.rows))
        out.append("```")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def report_markdown(runs: list[Run]) -> str:
    return (verdict_table(runs) + "\n\n### Full tables\n\n" + full_tables(runs))


def replace_marked(text: str, block: str) -> str:
    """``text`` with the part between the report's markers replaced by ``block``."""
    start, end = text.find(BEGIN_MARK), text.find(END_MARK)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN_MARK!r} and {END_MARK!r} are not in the file")
    return text[:start + len(BEGIN_MARK)] + "\n" + block.rstrip("\n") + "\n" + text[end:]


def run_all(paths: list[Path], links: list[float], options: argparse.Namespace,
            jobs: int) -> list[Run]:
    work = [(path, link) for path in paths for link in links]
    return map_jobs(run_one, jobs, [path for path, _link in work],
                    [link for _path, link in work], itertools.repeat(options))


def _links(text: str) -> list[float]:
    try:
        links = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of link rates: {text!r}") from None
    if not links or any(link <= 0 for link in links):
        raise argparse.ArgumentTypeError("link rates must be positive Mbit/s")
    return links


def run(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"tandem replay-report: {folder} is not a folder", file=sys.stderr)
        return 2
    paths = trace_files(folder)
    if not paths:
        print(f"tandem replay-report: no traces ({', '.join(TRACE_SUFFIXES)}) in {folder}",
              file=sys.stderr)
        return 2
    try:
        runs = run_all(paths, args.links, _replay_options(args), args.jobs)
    except (OSError, TraceError) as exc:
        print(f"tandem replay-report: {exc}", file=sys.stderr)
        return 2
    if args.docs:
        doc = Path(args.docs)
        try:
            doc.write_text(replace_marked(doc.read_text(), report_markdown(runs)))
        except (OSError, ValueError) as exc:
            print(f"tandem replay-report: {doc}: {exc}", file=sys.stderr)
            return 2
    if args.json:
        json.dump([{"trace": run.trace, "writes": run.writes, "link_mbps": run.link_mbps,
                    "acceptance": {point: [c.as_dict() for c in checks]
                                   for point, checks in run.checks().items()},
                    "rows": [row.as_dict() for row in run.rows]} for run in runs],
                  sys.stdout, indent=1)
        print()
    else:
        print(verdict_table(runs))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay-report", help="the record policy's acceptance figures over a folder of traces",
        description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder of traces (MSR, SPC or blkparse; .gz is fine)")
    p.add_argument("--links", type=_links, default=[100.0, 1000.0],
                   help="comma-separated link rates in Mbit/s (default 100,1000)")
    p.add_argument("--nvram-bytes", type=int, default=262144,
                   help="FRAM size; sets the smallest region (default 262144)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="traces replayed at once (default: one per CPU)")
    p.add_argument("--docs", metavar="FILE.md",
                   help="rewrite the part of FILE.md between the report's markers")
    p.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    p.set_defaults(func=run)
