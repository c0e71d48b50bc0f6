"""`tandem bench`: the same fio jobs over NBD against Tandem and a reference server.

In one run, every job is run with fio's ``nbd`` engine against (a) the
appliance on the simulated board, mirroring on, and (b) a plain NBD server
(``nbdkit file`` by default, or ``qemu-nbd``) serving an image file of the
same size in the same work directory, so both sit on the same file system.
Each job and server starts from fresh sparse image files (and, for Tandem, a
fresh NVRAM and record), unless ``--precondition`` asks for the images to be
written in full first. Prints one table (or, with ``--json``, one JSON object):
IOPS and MB/s of both, their ratio, and Tandem's record counters and mirror lag
at the end of each job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
EXPORT = "tandem"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
DRAIN_TIMEOUT_S = 300.0


# --- what is measured ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FioJob:
    name: str
    rw: str  # fio's --rw
    block_size: str  # fio's --bs
    iodepth: int

    def fio_options(self) -> list[str]:
        return [f"--rw={self.rw}", f"--bs={self.block_size}", f"--iodepth={self.iodepth}"]


JOBS: tuple[FioJob, ...] = (
    FioJob("4k-randwrite-qd1", "randwrite", "4k", 1),
    FioJob("4k-randwrite-qd32", "randwrite", "4k", 32),
    FioJob("1m-seqwrite-qd8", "write", "1M", 8),
)
JOBS_BY_NAME = {job.name: job for job in JOBS}

# Issue 2's goals: Tandem's throughput as a fraction of the reference server's.
GOALS: dict[str, float] = {"4k-randwrite-qd32": 0.3, "1m-seqwrite-qd8": 0.7}


def fio_command(job: FioJob, uri: str, *, runtime_s: int, size: int,
                output: Path) -> list[str]:
    """The fio command line of one measured job against one NBD URI."""
    return [
        "fio", f"--name={job.name}", "--ioengine=nbd", f"--uri={uri}",
        *job.fio_options(),
        f"--size={size}", f"--runtime={runtime_s}", "--time_based",
        # The same seed on every server: both see the same offsets in the same order.
        "--randrepeat=1",
        "--output-format=json", f"--output={output}", "--eta=never",
    ]


def precondition_command(uri: str, size: int, output: Path) -> list[str]:
    """Write the whole export once, sequentially, so measured writes overwrite data."""
    return [
        "fio", "--name=precondition", "--ioengine=nbd", f"--uri={uri}",
        "--rw=write", "--bs=1M", "--iodepth=8", f"--size={size}",
        "--output-format=json", f"--output={output}", "--eta=never",
    ]


@dataclass
class FioResult:
    iops: float
    bw_bytes: float  # bytes per second
    io_bytes: int
    runtime_ms: int
    lat_mean_us: float
    lat_p99_us: float | None


def parse_fio_json(text: str) -> FioResult:
    """fio's JSON report of one write job. fio (or its engine) may print lines of its own
    before the JSON document (``fio: connected to NBD server``): they are skipped."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON object in fio's output")
    report = json.JSONDecoder().raw_decode(text[start:])[0]
    jobs = report.get("jobs") or []
    if not jobs:
        raise ValueError("fio's report has no job")
    job = jobs[0]
    if job.get("error"):
        raise ValueError(f"fio job failed with error {job['error']}")
    write = job["write"]
    lat = write.get("clat_ns") or write.get("lat_ns") or {}
    p99 = (lat.get("percentile") or {}).get("99.000000")
    return FioResult(
        iops=float(write["iops"]),
        bw_bytes=float(write["bw_bytes"]),
        io_bytes=int(write["io_bytes"]),
        runtime_ms=int(write["runtime"]),
        lat_mean_us=float(lat.get("mean", 0.0)) / 1000,
        lat_p99_us=float(p99) / 1000 if p99 is not None else None,
    )


def median_result(results: Sequence[FioResult]) -> FioResult:
    """The run of median IOPS (an actual run, so its figures belong together)."""
    ordered = sorted(results, key=lambda r: r.iops)
    return ordered[(len(ordered) - 1) // 2]


# Tandem's console status fields shown per job (the JSON output keeps the whole status).
STATUS_FIELDS = ("hits", "misses", "nvram_updates", "waits", "mirror_lag_bytes",
                 "mirror_state", "mirror_overflows", "record_regions")


@dataclass
class Run:
    """One fio run against one server."""

    result: FioResult
    server_cpu_s: float  # user+system CPU seconds the server used during the job
    status: dict[str, Any] | None = None  # Tandem's `status --json` right after the job


@dataclass
class JobOutcome:
    job: FioJob
    tandem_runs: list[Run] = field(default_factory=list)
    peer_runs: list[Run] = field(default_factory=list)

    @property
    def tandem(self) -> Run:
        return _median_run(self.tandem_runs)

    @property
    def peer(self) -> Run:
        return _median_run(self.peer_runs)

    @property
    def ratio(self) -> float:
        peer = self.peer.result.iops
        return self.tandem.result.iops / peer if peer else float("nan")

    @property
    def goal(self) -> float | None:
        return GOALS.get(self.job.name)

    @property
    def meets_goal(self) -> bool | None:
        goal = self.goal
        return None if goal is None else self.ratio >= goal


def _median_run(runs: list[Run]) -> Run:
    chosen = median_result([r.result for r in runs])
    return next(r for r in runs if r.result is chosen)


@dataclass
class BenchSettings:
    peer: str  # "nbdkit" or "qemu-nbd"
    runtime_s: int
    size: int
    repeat: int
    precondition: bool
    work_dir: str
    file_system: str
    tandem_args: list[str]
    nvram_dir: str | None = None  # where the simulated FRAM file goes (None: the data dir)

    @property
    def images(self) -> str:
        if self.precondition:
            return ("fresh image files per job and server, each written in full once "
                    "(1M sequential) before the measured job; Tandem's mirror drained first")
        return "fresh sparse image files per job and server (no preconditioning)"


# --- presenting results -------------------------------------------------------------------------

def _mb(bw_bytes: float) -> str:
    return f"{bw_bytes / 1e6:.1f}"


def render_table(settings: BenchSettings, outcomes: Sequence[JobOutcome]) -> str:
    peer = settings.peer
    header = ["job", "Tandem IOPS", "MB/s", f"{peer} IOPS", "MB/s", "ratio", "goal",
              "hits", "misses", "nvram upd", "waits", "lag MB", "mirror"]
    rows = [header]
    for o in outcomes:
        t, p = o.tandem, o.peer
        status = t.status or {}
        goal = o.goal
        goal_text = "" if goal is None else f"≥{goal:g} {'ok' if o.meets_goal else 'MISS'}"
        rows.append([
            o.job.name,
            f"{t.result.iops:.0f}", _mb(t.result.bw_bytes),
            f"{p.result.iops:.0f}", _mb(p.result.bw_bytes),
            f"{o.ratio:.2f}×", goal_text,
            str(status.get("hits", "?")), str(status.get("misses", "?")),
            str(status.get("nvram_updates", "?")), str(status.get("waits", "?")),
            f"{int(status.get('mirror_lag_bytes', 0)) / 1e6:.1f}" if status else "?",
            str(status.get("mirror_state", "?")),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    cpu = ", ".join(f"{o.job.name} {_cpu_share(o.tandem, settings)}/"
                    f"{_cpu_share(o.peer, settings)}" for o in outcomes)
    notes = [
        f"fio --ioengine=nbd, {settings.runtime_s} s time-based per job, export "
        f"{settings.size >> 20} MiB, " + (f"median of {settings.repeat} runs; "
                                          if settings.repeat > 1 else "") + settings.images,
        f"work dir {settings.work_dir} ({settings.file_system}); Tandem mirroring on "
        f"(local.img and second.img there too)" + (
            f"; simulated FRAM in {settings.nvram_dir} ({file_system_of(Path(settings.nvram_dir))})"
            if settings.nvram_dir else ", nvram.bin too (the sim profile's FRAM sync mode)"),
        f"server CPU, Tandem/{peer} (1.00 = one core busy): {cpu}",
        "hits … mirror: Tandem's record counters and mirror state just after each job",
    ]
    return "\n".join(lines + [""] + notes)


def _cpu_share(run: Run, settings: BenchSettings) -> str:
    seconds = run.result.runtime_ms / 1000 or settings.runtime_s
    return f"{run.server_cpu_s / seconds:.2f}"


def to_json(settings: BenchSettings, outcomes: Sequence[JobOutcome]) -> dict[str, Any]:
    def run_json(run: Run) -> dict[str, Any]:
        out: dict[str, Any] = {**asdict(run.result), "server_cpu_s": round(run.server_cpu_s, 3)}
        if run.status is not None:
            out["status"] = run.status
        return out

    return {
        "settings": {**asdict(settings), "images_note": settings.images},
        "jobs": [
            {
                "job": asdict(o.job),
                "tandem": run_json(o.tandem),
                "peer": run_json(o.peer),
                "ratio": round(o.ratio, 4),
                "goal": o.goal,
                "meets_goal": o.meets_goal,
                "runs": {"tandem": [run_json(r) for r in o.tandem_runs],
                         "peer": [run_json(r) for r in o.peer_runs]},
            }
            for o in outcomes
        ],
    }


# --- servers ------------------------------------------------------------------------------------

class BenchError(Exception):
    """A server or fio could not be run; the message says which and why."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process, from /proc (0.0 where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # Field 2 (comm) may hold spaces: split after its closing parenthesis.
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _probe_nbd(uri: str) -> bool:
    """True when an NBD handshake with ``uri`` succeeds (a clean connect and disconnect)."""
    try:
        import nbd  # python3-libnbd
    except ImportError:
        host, port = uri.removeprefix("nbd://").split("/", 1)[0].rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return True
        except OSError:
            return False
    handle = nbd.NBD()
    try:
        handle.connect_uri(uri)
        handle.shutdown()
        return True
    except nbd.Error:
        return False


class Server:
    """An NBD server in a child process, started and stopped around one fio job."""

    label = "server"

    def __init__(self, command: list[str], uri: str, log_path: Path,
                 cwd: Path | None = None) -> None:
        self.command = command
        self.uri = uri
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            try:
                self.process = subprocess.Popen(self.command, stdout=log,
                                                stderr=subprocess.STDOUT, cwd=self.cwd)
            except FileNotFoundError as exc:
                raise BenchError(f"{self.label}: cannot run {self.command[0]}: {exc}") from exc
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None:
                raise BenchError(f"{self.label} exited with status {self.process.returncode} "
                                 f"while starting:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.label} not serving {self.uri} after "
                                 f"{READY_TIMEOUT_S:g} s:\n{self._log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        return _probe_nbd(self.uri)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def status(self) -> dict[str, Any] | None:
        return None

    def settle(self) -> None:
        """Wait until the server has nothing left over from an earlier write pass."""

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class TandemServer(Server):
    label = "tandem"

    def __init__(self, data_dir: Path, size: int, extra_args: Sequence[str] = (),
                 nvram_dir: Path | None = None) -> None:
        if nvram_dir is not None:
            # The sim board keeps its FRAM at DATA_DIR/nvram.bin: point that name elsewhere
            # (e.g. tmpfs, where a synchronous write costs what a real FRAM's does: µs).
            data_dir.mkdir(parents=True, exist_ok=True)
            fram_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-fram-", dir=nvram_dir))
            (data_dir / "nvram.bin").symlink_to(fram_dir / "nvram.bin")
        self._fram_dir = fram_dir if nvram_dir is not None else None
        nbd_port, console_port = free_port(), free_port()
        self.console_url = f"socket://127.0.0.1:{console_port}"
        command = [
            sys.executable, "-m", "firmware.cli", "run", "--board", "sim",
            "--data-dir", str(data_dir), "--size", str(size),
            "--nbd", f"127.0.0.1:{nbd_port}", "--console-tcp", f"127.0.0.1:{console_port}",
            "--no-console-pty", "--log-level", "WARNING", *extra_args,
        ]
        super().__init__(command, f"nbd://127.0.0.1:{nbd_port}/{EXPORT}",
                         data_dir.parent / f"{data_dir.name}.log", cwd=REPO_ROOT)

    def stop(self) -> None:
        super().stop()
        if self._fram_dir is not None:
            shutil.rmtree(self._fram_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        from tools.console_client import ConsoleClient, ConsoleError

        try:
            with ConsoleClient.open(self.console_url, timeout=10.0) as client:
                answer = client.command("status --json")
        except ConsoleError as exc:
            raise BenchError(f"tandem console: {exc}") from exc
        try:
            status = json.loads(answer)
        except ValueError as exc:
            raise BenchError(f"tandem console: not JSON: {answer[:200]!r}") from exc
        if not isinstance(status, dict):
            raise BenchError(f"tandem console: not a JSON object: {answer[:200]!r}")
        return status

    def settle(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            status = self.status()
            if status.get("mirror_lag_bytes") == 0 and status.get("mirror_state") == "ordered":
                return
            if time.monotonic() > deadline:
                raise BenchError(f"tandem: mirror not drained after {DRAIN_TIMEOUT_S:g} s "
                                 f"({status.get('mirror_lag_bytes')} bytes behind)")
            time.sleep(0.5)


class PeerServer(Server):
    """The reference: a plain NBD server over one image file."""

    def __init__(self, kind: str, image: Path, size: int) -> None:
        with open(image, "wb") as f:
            f.truncate(size)
        port = free_port()
        if kind == "nbdkit":
            command = ["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1",
                       "-p", str(port), "file", str(image)]
        elif kind == "qemu-nbd":
            # --persistent: the readiness probe's connection must not end the server.
            command = ["qemu-nbd", "--format=raw", "--bind=127.0.0.1", f"--port={port}",
                       f"--export-name={EXPORT}", "--persistent", str(image)]
        else:
            raise ValueError(f"unknown peer {kind!r}")
        self.label = kind
        super().__init__(command, f"nbd://127.0.0.1:{port}/{EXPORT}",
                         image.parent / f"{image.stem}.log")


# --- one run ------------------------------------------------------------------------------------

def run_fio(command: list[str], output: Path, what: str) -> FioResult:
    try:
        completed = subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError as exc:
        raise BenchError(f"cannot run fio: {exc}") from exc
    try:
        text = output.read_text()
    except OSError:
        text = ""
    if completed.returncode != 0 or not text.strip():
        stderr = completed.stderr.decode(errors="replace").strip()
        raise BenchError(f"fio ({what}) failed with status {completed.returncode}: {stderr}")
    try:
        return parse_fio_json(text)
    except (ValueError, KeyError) as exc:
        raise BenchError(f"fio ({what}): unreadable report: {exc}") from exc


def measure(server: Server, job: FioJob, settings: BenchSettings, scratch: Path) -> Run:
    if settings.precondition:
        run_fio(precondition_command(server.uri, settings.size, scratch / "precondition.json"),
                scratch / "precondition.json", f"precondition for {server.label}")
        server.settle()
    output = scratch / f"{job.name}.json"
    cpu_before = process_cpu_seconds(server.pid)
    result = run_fio(fio_command(job, server.uri, runtime_s=settings.runtime_s,
                                 size=settings.size, output=output),
                     output, f"{job.name} on {server.label}")
    cpu = process_cpu_seconds(server.pid) - cpu_before
    return Run(result, cpu, server.status())


@contextmanager
def _scratch_dir(parent: Path, name: str, keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def run_bench(settings: BenchSettings, jobs: Sequence[FioJob], *, keep: bool,
              progress: bool = True) -> list[JobOutcome]:
    work = Path(settings.work_dir)
    outcomes = []
    for job in jobs:
        outcome = JobOutcome(job)
        for round_ in range(settings.repeat):
            # Alternate which server goes first, so drift on a shared machine hits both.
            order = ("tandem", "peer") if round_ % 2 == 0 else ("peer", "tandem")
            for which in order:
                name = f"{job.name}-{which}-{round_ + 1}"
                with _scratch_dir(work, name, keep) as scratch:
                    if which == "tandem":
                        nvram_dir = Path(settings.nvram_dir) if settings.nvram_dir else None
                        server: Server = TandemServer(scratch / "data", settings.size,
                                                      settings.tandem_args, nvram_dir)
                    else:
                        server = PeerServer(settings.peer, scratch / "peer.img", settings.size)
                    if progress:
                        print(f"bench: {job.name} on {server.label} "
                              f"({round_ + 1}/{settings.repeat})…", file=sys.stderr, flush=True)
                    with server:
                        run = measure(server, job, settings, scratch)
                    (outcome.tandem_runs if which == "tandem" else outcome.peer_runs).append(run)
        outcomes.append(outcome)
    return outcomes


def file_system_of(path: Path) -> str:
    """The type and device of the file system holding ``path`` (from /proc/mounts)."""
    target = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                prefix = mount_point.rstrip("/") + "/"
                if (target == mount_point or target.startswith(prefix)) \
                        and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type, device)
    except OSError:
        pass
    return f"{best[1]} on {best[2]}"


# --- the subcommand -----------------------------------------------------------------------------

def register(subparsers: argparse._SubParsersAction) -> None:
    from firmware.parsing import parse_size

    parser = subparsers.add_parser(
        "bench", help="fio over NBD: Tandem (mirroring on) against nbdkit or qemu-nbd",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", type=int, default=20, metavar="SECONDS",
                        help="time-based runtime of each job (default 20)")
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="size of the export and of the peer's image (default 1G)")
    parser.add_argument("--peer", choices=("nbdkit", "qemu-nbd"), default="nbdkit",
                        help="the reference NBD server (default nbdkit's file plugin)")
    parser.add_argument("--job", action="append", choices=[j.name for j in JOBS],
                        dest="jobs", metavar="JOB",
                        help="run only this job (repeatable): " + ", ".join(JOBS_BY_NAME))
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="runs per job and server; the median (by IOPS) is shown")
    parser.add_argument("--precondition", action="store_true",
                        help="write each fresh image in full before the measured job")
    parser.add_argument("--work-dir", metavar="DIR",
                        help="where images and data dirs go (default: a new temporary "
                             "directory); pick the file system you want to measure")
    parser.add_argument("--nvram-dir", metavar="DIR",
                        help="put Tandem's simulated FRAM file there instead of in its data "
                             "dir, e.g. /dev/shm to approximate a real FRAM's write time")
    parser.add_argument("--keep", action="store_true",
                        help="keep images, logs and fio reports in the work dir")
    parser.add_argument("--tandem-arg", action="append", default=[], dest="tandem_args",
                        metavar="ARG", help="extra argument for `tandem run` (repeatable), "
                                            "e.g. --tandem-arg=--region-size=1M")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--pair", action="store_true",
                        help="also run a pair (A primary, B holding A's record, two "
                             "processes) and show it against one appliance alone and the "
                             "reference, with the record's misses and the link RTT "
                             "(tools/bench_pair.py)")
    parser.add_argument("--fail-below-goal", action="store_true",
                        help="exit 1 when a job misses its goal")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.runtime < 1 or args.repeat < 1:
        print("tandem bench: --runtime and --repeat must be at least 1", file=sys.stderr)
        return 2
    jobs = [JOBS_BY_NAME[name] for name in args.jobs] if args.jobs else list(JOBS)
    made_work_dir = args.work_dir is None
    if made_work_dir:
        work_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    else:
        work_dir = Path(args.work_dir).resolve()
        work_dir.mkdir(parents=True, exist_ok=True)
    settings = BenchSettings(
        peer=args.peer, runtime_s=args.runtime, size=args.size, repeat=args.repeat,
        precondition=args.precondition, work_dir=str(work_dir),
        file_system=file_system_of(work_dir), tandem_args=list(args.tandem_args),
        nvram_dir=str(Path(args.nvram_dir).resolve()) if args.nvram_dir else None)
    if args.pair:
        return _run_pair(args, settings, jobs, work_dir if made_work_dir else None)
    try:
        outcomes = run_bench(settings, jobs, keep=args.keep)
    except BenchError as exc:
        print(f"tandem bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if made_work_dir and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(to_json(settings, outcomes), indent=2))
    else:
        print(render_table(settings, outcomes))
    if args.fail_below_goal and any(o.meets_goal is False for o in outcomes):
        return 1
    return 0


def _run_pair(args: argparse.Namespace, settings: BenchSettings, jobs: list[FioJob],
              made_work_dir: Path | None) -> int:
    from tools.bench_pair import pair_json, render_pair_table, run_pair_bench

    try:
        outcomes, links = run_pair_bench(settings, jobs, keep=args.keep)
    except BenchError as exc:
        print(f"tandem bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if made_work_dir is not None and not args.keep:
            shutil.rmtree(made_work_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(pair_json(settings, outcomes, links), indent=2))
    else:
        print(render_pair_table(settings, outcomes, links))
    return 0
