"""`tandem bench --pair`: the cost of the record held on a peer appliance.

In one run, every job runs with fio's ``nbd`` engine against three servers on fresh
images in the same work directory:

- *alone*: one appliance, its record in its own (simulated) FRAM;
- *pair*: appliance A (primary) with B (record-holder) as two processes on one local
  medium and one second medium, linked by TCP and, when socat is there, a pty pair as
  the serial line; fio writes through A, so every miss of A's local copy of the record
  costs one MARK to B and B's FRAM commit before A writes its disk;
- the reference NBD server (nbdkit or qemu-nbd), as the plain bench.

Both appliances use the same record policy (a pair's default, recovery-first, unless
``--tandem-arg=--point=...`` says otherwise), so the difference is the record's home.
The table shows each server's IOPS and latency, pair/alone and pair/reference, and for
the pair the misses and hits of A's local copy, the MARK batches B acknowledged during
the job and each link's round-trip time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.benchmark import (
    READY_TIMEOUT_S,
    BenchError,
    BenchSettings,
    FioJob,
    PeerServer,
    Run,
    Server,
    TandemServer,
    _mb,
    _median_run,
    _scratch_dir,
    free_port,
    measure,
)

PAIR_KEY = "bench-pair-key-0123456789abcdef\n"
PAIR_POINT = "recovery-first"


def with_point(args: Sequence[str]) -> list[str]:
    """The bench's extra `tandem run` arguments, with the pair's policy unless one is set:
    alone and pair must run the same policy for the comparison to be about the record."""
    out = list(args)
    if not any(a == "--point" or a.startswith("--point=") for a in out):
        out += ["--point", PAIR_POINT]
    return out


class HolderServer(TandemServer):
    """B: it serves no host until it takes over, so it is ready once its console is."""

    label = "pair holder"

    def _ready(self) -> bool:
        from tools.console_client import ConsoleClient, ConsoleError

        try:
            with ConsoleClient.open(self.console_url, timeout=2.0) as client:
                client.command("peer status --json")
        except ConsoleError:
            return False
        return True


class PairServer(Server):
    """A and B as two `tandem run` processes; the NBD URI and the CPU are A's."""

    label = "pair"

    def __init__(self, scratch: Path, size: int, extra_args: Sequence[str] = ()) -> None:
        self.scratch = scratch
        shared = scratch / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        key = scratch / "pair.key"
        key.write_text(PAIR_KEY)
        self.socat: subprocess.Popen[bytes] | None = None
        self.serial: tuple[str, str] | None = None
        if shutil.which("socat"):
            self.serial = (str(scratch / "ttyA"), str(scratch / "ttyB"))
        listen_a, listen_b = free_port(), free_port()
        self.b = HolderServer(scratch / "b", size, self._pair_args(
            "b", "record-holder", listen_b, listen_a, key, shared, 1, extra_args))
        self.a = TandemServer(scratch / "a", size, self._pair_args(
            "a", "primary", listen_a, listen_b, key, shared, 0, extra_args))
        super().__init__(self.a.command, self.a.uri, self.a.log_path, cwd=self.a.cwd)

    def _pair_args(self, node: str, role: str, listen: int, peer: int, key: Path,
                   shared: Path, end: int, extra: Sequence[str]) -> list[str]:
        serial = ["--peer", self.serial[end]] if self.serial else []
        return ["--node", node, "--pair-role", role, "--peer", f"tcp://127.0.0.1:{peer}",
                *serial, "--peer-listen", f"127.0.0.1:{listen}", "--peer-key", str(key),
                "--local", str(shared / "local.img"), "--second", str(shared / "second.img"),
                *extra]

    @property
    def links(self) -> str:
        return "TCP + serial (socat pty pair)" if self.serial else "TCP only (no socat)"

    def start(self) -> None:
        if self.serial:
            self.socat = subprocess.Popen(
                ["socat", f"pty,raw,echo=0,link={self.serial[0]}",
                 f"pty,raw,echo=0,link={self.serial[1]}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # B first: A serves once B has confirmed it (a primary that restarted might be
        # stale), so A's NBD port is the readiness of the pair.
        self.b.start()
        self.a.start()
        self.process = self.a.process
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.peer_status(self.a).get("state") != "connected":
            if time.monotonic() > deadline:
                raise BenchError("pair: A and B did not connect on every link within "
                                 f"{READY_TIMEOUT_S:g} s:\n{self.a._log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()
        if self.socat is not None:
            self.socat.terminate()
            self.socat.wait()

    @staticmethod
    def peer_status(server: TandemServer) -> dict[str, Any]:
        from tools.console_client import ConsoleClient, ConsoleError

        try:
            with ConsoleClient.open(server.console_url, timeout=10.0) as client:
                answer = client.command("peer status --json")
            status = json.loads(answer)
        except (ConsoleError, ValueError) as exc:
            raise BenchError(f"pair console: {exc}") from exc
        return status if isinstance(status, dict) else {}

    def status(self) -> dict[str, Any]:
        status = self.a.status()
        status["peer"] = self.peer_status(self.a)
        status["holder"] = {k: v for k, v in self.peer_status(self.b).items()
                            if k in ("held_regions", "state", "role", "fram_persists")}
        return status

    def settle(self) -> None:
        self.a.settle()


@dataclass
class PairOutcome:
    job: FioJob
    alone_runs: list[Run] = field(default_factory=list)
    pair_runs: list[Run] = field(default_factory=list)
    peer_runs: list[Run] = field(default_factory=list)
    before: list[dict[str, Any]] = field(default_factory=list)  # A's peer status, pre-job

    @property
    def alone(self) -> Run:
        return _median_run(self.alone_runs)

    @property
    def pair(self) -> Run:
        return _median_run(self.pair_runs)

    @property
    def peer(self) -> Run:
        return _median_run(self.peer_runs)

    def ratio(self, other: Run) -> float:
        theirs = other.result.iops
        return self.pair.result.iops / theirs if theirs else float("nan")

    def pair_figures(self) -> dict[str, Any]:
        """What the peer-held record cost during the median pair run."""
        return pair_figures(self.pair.status or {},
                            self.before[self.pair_runs.index(self.pair)] if self.before else {})


def pair_figures(status: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    peer = status.get("peer") or {}
    counters = peer.get("counters") or {}
    earlier = before.get("counters") or {}

    def delta(key: str) -> int:
        return int(counters.get(key, 0)) - int(earlier.get(key, 0))

    rtt = {link.get("kind", "?"): link.get("rtt_ms") for link in peer.get("links") or []}
    return {"misses": delta("misses"), "hits": delta("hits"),
            "marks_acked": delta("marks_acked"), "clears_acked": delta("clears_acked"),
            "retried": delta("retried"), "rtt_ms": rtt,
            "held_regions": (status.get("holder") or {}).get("held_regions")}


def run_pair_bench(settings: BenchSettings, jobs: Sequence[FioJob], *, keep: bool,
                   progress: bool = True) -> tuple[list[PairOutcome], str]:
    work = Path(settings.work_dir)
    extra = with_point(settings.tandem_args)
    outcomes: list[PairOutcome] = []
    links = ""
    kinds = ("alone", "pair", "peer")
    for job in jobs:
        outcome = PairOutcome(job)
        for round_ in range(settings.repeat):
            # Rotate the order, so drift on a shared machine hits every server alike.
            order = kinds[round_ % 3:] + kinds[:round_ % 3]
            for which in order:
                with _scratch_dir(work, f"{job.name}-{which}-{round_ + 1}", keep) as scratch:
                    server: Server
                    if which == "alone":
                        server = TandemServer(scratch / "data", settings.size, extra)
                    elif which == "pair":
                        server = PairServer(scratch, settings.size, extra)
                        links = server.links
                    else:
                        server = PeerServer(settings.peer, scratch / "peer.img", settings.size)
                    if progress:
                        print(f"bench: {job.name} on {which} ({round_ + 1}/{settings.repeat})…",
                              file=sys.stderr, flush=True)
                    with server:
                        if isinstance(server, PairServer):
                            outcome.before.append(server.peer_status(server.a))
                        run = measure(server, job, settings, scratch)
                    getattr(outcome, f"{which}_runs").append(run)
        outcomes.append(outcome)
    return outcomes, links


def render_pair_table(settings: BenchSettings, outcomes: Sequence[PairOutcome],
                      links: str) -> str:
    peer = settings.peer
    header = ["job", "alone IOPS", "pair IOPS", f"{peer} IOPS", "pair/alone", f"pair/{peer}",
              "pair MB/s", "lat µs alone/pair", "p99 µs pair", "misses", "hits", "MARKs",
              "rtt ms tcp/serial"]
    rows = [header]
    for o in outcomes:
        a, p, r = o.alone.result, o.pair.result, o.peer.result
        f = o.pair_figures()
        rtt = f["rtt_ms"]
        rows.append([
            o.job.name, f"{a.iops:.0f}", f"{p.iops:.0f}", f"{r.iops:.0f}",
            f"{o.ratio(o.alone):.2f}×", f"{o.ratio(o.peer):.2f}×", _mb(p.bw_bytes),
            f"{a.lat_mean_us:.0f}/{p.lat_mean_us:.0f}",
            "-" if p.lat_p99_us is None else f"{p.lat_p99_us:.0f}",
            str(f["misses"]), str(f["hits"]), str(f["marks_acked"]),
            "/".join("-" if rtt.get(k) is None else f"{rtt[k]:.2f}" for k in ("tcp", "serial")),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    point = next((a.split("=", 1)[1] if "=" in a else None for a in settings.tandem_args
                  if a.startswith("--point")), None) or PAIR_POINT
    notes = [
        f"fio --ioengine=nbd, {settings.runtime_s} s time-based per job, export "
        f"{settings.size >> 20} MiB" + (f", median of {settings.repeat} runs"
                                        if settings.repeat > 1 else "") + "; " + settings.images,
        f"alone: one appliance, record in its FRAM; pair: fio through A, A's record in B's "
        f"FRAM, links {links}; both at --point {point}",
        f"work dir {settings.work_dir} ({settings.file_system})",
        "misses/hits: A's local copy of the record during the job; MARKs: batches B "
        "acknowledged (a batch serves one miss, or several concurrent ones); rtt: the links' "
        "heartbeat round trip at the end",
    ]
    return "\n".join(lines + [""] + notes)


def pair_json(settings: BenchSettings, outcomes: Sequence[PairOutcome],
              links: str) -> dict[str, Any]:
    def run_json(run: Run) -> dict[str, Any]:
        out: dict[str, Any] = {**asdict(run.result), "server_cpu_s": round(run.server_cpu_s, 3)}
        if run.status is not None:
            out["status"] = run.status
        return out

    return {
        "settings": {**asdict(settings), "images_note": settings.images, "pair_links": links},
        "jobs": [{"job": asdict(o.job), "alone": run_json(o.alone), "pair": run_json(o.pair),
                  "peer": run_json(o.peer), "pair_vs_alone": round(o.ratio(o.alone), 4),
                  "pair_vs_peer": round(o.ratio(o.peer), 4), "pair_record": o.pair_figures()}
                 for o in outcomes],
    }
