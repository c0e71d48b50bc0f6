"""`tandem replay TRACE`: the record policy against a block trace, with a simulated clock.

Runs the firmware's own Record and policy (firmware/record) over the trace's
writes; the link model and figures are described in tools/replay/sim.py,
the comparison records in tools/replay/baselines.py. Prints a table, or with
--json one object: the first Tandem row's figures at top level, every row
under "rows".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from firmware.record.layout import Geometry
from firmware.record.policy import (
    DEFAULT_POINT,
    POINTS,
    CostAwareConfig,
    CostAwarePolicy,
)
from firmware.record.record import QUIET_EVICT_S
from tools.replay.baselines import all_baselines
from tools.replay.sim import (
    MIB,
    Model,
    Result,
    TandemModel,
    TraceWrites,
    replay,
    smallest_region,
)
from tools.replay.traces import FORMATS, TraceError, read_trace

T = TypeVar("T")

# hold_cost values swept for the frontier of --plot (bytes x writes per update).
FRONTIER_HOLD_COSTS = tuple(float(1 << shift) for shift in range(21, 40, 2))


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def volume_size_for(trace: TraceWrites, given: int | None) -> int:
    if given:
        if given < trace.extent():
            raise SystemExit(f"tandem replay: the trace writes up to byte {trace.extent()}, "
                             f"past --volume-size {given}")
        return given
    return max(MIB, -(-trace.extent() // MIB) * MIB)


def tandem_model(trace: TraceWrites, args: argparse.Namespace, point: str,
                 hold_cost: float | None = None) -> TandemModel:
    volume = volume_size_for(trace, args.volume_size)
    region = args.region_size or smallest_region(volume, args.nvram_bytes)
    geometry = Geometry(volume, region)
    if geometry.nvram_bytes() > args.nvram_bytes:
        fits = smallest_region(volume, args.nvram_bytes)
        raise SystemExit(f"tandem replay: regions of {region} bytes over {volume} bytes need "
                         f"{geometry.nvram_bytes()} bytes of NVRAM (--nvram-bytes "
                         f"{args.nvram_bytes}); use regions of at least {fits} bytes")
    config: CostAwareConfig = replace(POINTS[point])
    if args.hold_cost is not None:
        config.hold_cost = args.hold_cost
    if hold_cost is not None:
        config.hold_cost = hold_cost
    capacity = max(1, args.resync_budget // region) if args.resync_budget else geometry.nregions
    tidy = None if args.tidy_interval <= 0 else args.tidy_interval
    quiet = None if args.quiet_evict <= 0 else args.quiet_evict
    name = f"tandem-{point}" if hold_cost is None else f"tandem@{hold_cost:.3g}"
    return TandemModel(name, geometry, CostAwarePolicy(config), capacity, tidy, quiet)


def run(args: argparse.Namespace) -> int:
    try:
        trace = read_trace(args.trace, fmt=args.format, disk=args.disk)
    except (OSError, TraceError) as exc:
        print(f"tandem replay: {exc}", file=sys.stderr)
        return 2
    if not len(trace):
        print(f"tandem replay: {args.trace} has no writes", file=sys.stderr)
        return 2
    points = list(POINTS) if args.point == "all" else [args.point]
    models: list[Model] = [tandem_model(trace, args, p) for p in points]
    if args.baselines or args.plot:
        models += all_baselines()  # type: ignore[arg-type]
    rows = [replay(trace, model, args.link_mbps) for model in models]
    for row, model in zip(rows, models, strict=True):
        if isinstance(model, TandemModel):
            row.detail["region_size"] = model.record.geometry.region_size
            row.detail["hold_cost"] = model.record.policy.config.hold_cost  # type: ignore[attr-defined]
    add_excess(rows)
    # Per operating point, its settings with hold_cost swept.
    frontiers: dict[str, list[Result]] = {}
    if args.plot:
        frontiers = sweep(trace, args, points, args.jobs)
        for frontier in frontiers.values():
            add_excess(frontier, _lower_bound(rows))
        plot(Path(args.plot), trace.name, args.link_mbps, rows, frontiers)
    if args.json:
        top = rows[0].as_dict()
        top.update(trace=trace.name, link_mbps=args.link_mbps, point=points[0],
                   rows=[r.as_dict() for r in rows])
        if frontiers:
            top["frontier"] = [r.as_dict() for r in frontiers[points[0]]]
            top["frontiers"] = {point: [r.as_dict() for r in sweep]
                                for point, sweep in frontiers.items()}
        json.dump(top, sys.stdout, indent=1)
        print()
    else:
        print(f"{trace.name}: {len(trace)} writes, link {args.link_mbps:g} Mbit/s")
        print(format_table(rows))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def _lower_bound(rows: list[Result]) -> float | None:
    for row in rows:
        if row.name.startswith("lower-bound"):
            return row.R_mean_MiB
    return None


@dataclass
class Bounds:
    """What the operating points must reach on one trace and link (issue 5), from the
    baselines: latency-first at most DRBD-AL-1237's updates and half its excess,
    recovery-first at most dm-log-512K's excess and a quarter of its updates."""

    floor_MiB: float  # noqa: N815 - the lower bound's R_mean_MiB, from which excess counts
    latency_upd_per_kw: float
    latency_excess_MiB: float  # noqa: N815
    recovery_excess_MiB: float  # noqa: N815
    recovery_upd_per_kw: float


def bounds(rows: list[Result]) -> Bounds | None:
    """The operating points' bounds, or None when the baselines were not run."""
    by_name = {row.name: row for row in rows}
    try:
        floor = by_name["lower-bound-4K"].R_mean_MiB
        drbd, dm = by_name["DRBD-AL-1237"], by_name["dm-log-512K"]
    except KeyError:
        return None
    return Bounds(floor, drbd.upd_per_kw, (drbd.R_mean_MiB - floor) / 2,
                  dm.R_mean_MiB - floor, dm.upd_per_kw / 4)


def add_excess(rows: list[Result], bound: float | None = None) -> None:
    """excess_MiB: the resync above the exact lower bound's (when it was run)."""
    bound = _lower_bound(rows) if bound is None else bound
    if bound is None:
        return
    for row in rows:
        row.detail["excess_MiB"] = round(row.R_mean_MiB - bound, 3)


def format_table(rows: list[Result]) -> str:
    header = ("record", "writes", "updates", "upd/kw", "R_mean MiB", "R_p99 MiB",
              "excess MiB", "stalls")
    lines = [header]
    for r in rows:
        excess = r.detail.get("excess_MiB")
        lines.append((r.name, str(r.writes), str(r.record_updates), f"{r.upd_per_kw:.2f}",
                      f"{r.R_mean_MiB:.2f}", f"{r.R_p99_MiB:.2f}",
                      "" if excess is None else f"{excess:.2f}", str(r.stalls)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:],
                                                                          strict=True)]
        out.append("  ".join(cells))
    return "\n".join(out)


def sweep(trace: TraceWrites, args: argparse.Namespace, points: list[str],
          jobs: int) -> dict[str, list[Result]]:
    """Per point, its replays with hold_cost swept over FRONTIER_HOLD_COSTS, ``jobs`` at
    once (the settings are independent; the coarse end of the sweep guesses large areas
    and takes most of the time)."""
    settings = [(point, h) for point in points for h in FRONTIER_HOLD_COSTS]
    results = map_jobs(_replay_setting, jobs, itertools.repeat(trace), itertools.repeat(args),
                       [point for point, _h in settings], [h for _point, h in settings])
    n = len(FRONTIER_HOLD_COSTS)
    return {point: results[i * n:(i + 1) * n] for i, point in enumerate(points)}


def map_jobs(func: Callable[..., T], jobs: int, *iterables: Iterable[Any]) -> list[T]:
    """``list(map(func, *iterables))``, ``jobs`` processes at once (1: in this one)."""
    if jobs <= 1:
        return list(map(func, *iterables))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(func, *iterables))


def _replay_setting(trace: TraceWrites, args: argparse.Namespace, point: str,
                    hold_cost: float) -> Result:
    return replay(trace, tandem_model(trace, args, point, hold_cost), args.link_mbps)


def plot(path: Path, title: str, link_mbps: float, rows: list[Result],
         frontiers: dict[str, list[Result]]) -> None:
    """The (updates, resync) plane: each point's frontier over hold_cost, rows as points."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("tandem replay: --plot needs matplotlib (pip install matplotlib)") \
            from exc
    fig, ax = plt.subplots(figsize=(7, 5))
    floor = 1e-3
    for (point, frontier), color in zip(frontiers.items(), ("tab:blue", "tab:cyan"),
                                        strict=False):
        ax.plot([max(r.upd_per_kw, floor) for r in frontier],
                [max(r.R_mean_MiB, floor) for r in frontier], "-o", color=color, ms=3,
                label=f"Tandem, {point} settings, hold_cost swept")
    for r in rows:
        tandem = r.name.startswith("tandem")
        ax.plot(max(r.upd_per_kw, floor), max(r.R_mean_MiB, floor),
                "*" if tandem else "s", ms=12 if tandem else 7, label=r.name,
                linestyle="none")
    target = bounds(rows)
    if target is not None:
        # The corners each operating point must reach (below and left of them).
        ax.plot(target.latency_upd_per_kw, target.floor_MiB + target.latency_excess_MiB,
                "x", ms=10, color="black", linestyle="none", label="latency-first target")
        ax.plot(target.recovery_upd_per_kw, target.floor_MiB + target.recovery_excess_MiB,
                "+", ms=12, color="black", linestyle="none", label="recovery-first target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("record updates per 1000 writes")
    ax.set_ylabel("mean resync at a crash (MiB)")
    ax.set_title(f"{title}, link {link_mbps:g} Mbit/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a block trace against the record policy (simulated clock)",
        description=__doc__.splitlines()[0])
    p.add_argument("trace", help="MSR Cambridge CSV, SPC or blkparse text; .gz is fine")
    p.add_argument("--format", choices=FORMATS, default="auto")
    p.add_argument("--disk", help="replay only this disk/ASU/device of the trace")
    p.add_argument("--link-mbps", type=float, default=100.0,
                   help="replication link rate in Mbit/s (default 100)")
    p.add_argument("--point", choices=(*POINTS, "all"), default=DEFAULT_POINT,
                   help=f"operating point of the policy (default {DEFAULT_POINT})")
    p.add_argument("--hold-cost", type=_size,
                   help="override the point's exchange rate: bytes x writes worth one update")
    p.add_argument("--nvram-bytes", type=_size, default=262144,
                   help="FRAM size; sets the smallest region (default 262144)")
    p.add_argument("--region-size", type=_size, help="record region (default: smallest fitting)")
    p.add_argument("--volume-size", type=_size,
                   help="volume size (default: the trace's extent, rounded up to a MiB)")
    p.add_argument("--resync-budget", type=_size,
                   help="hard cap on the bytes the record names (default: none)")
    p.add_argument("--tidy-interval", type=float, default=0.5,
                   help="seconds between background tidies (<=0: none; default 0.5)")
    p.add_argument("--quiet-evict", type=float, default=QUIET_EVICT_S,
                   help="a tidy sheds every clean region after this many seconds without a "
                        f"write, as the appliance does (<=0: never; default {QUIET_EVICT_S:g})")
    p.add_argument("--baselines", action="store_true",
                   help="also DRBD AL 1237/6433, md bitmap 64M, dm-log 512K, lower bound")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw the (updates, resync) plane (implies --baselines; matplotlib)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="replays of the plot's sweep run at once (default: one per CPU)")
    p.set_defaults(func=run)
