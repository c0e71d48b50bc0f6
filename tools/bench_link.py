"""`tandem bench-link`: how well the mirror uses a throttled link, and what checksums save.

Runs the appliance's storage stack in this process (a local image, the record,
the mirror) against a real `tandem receive` started for the run, over
127.0.0.1, with the link capped by the built-in rate limit (or, with
``--link nbdkit-rate``, mirroring into ``nbdkit --filter=rate file``).

1. Backlog: the host writes ``--backlog`` bytes at once, far faster than the
   link; while the mirror has a backlog, the bytes put on the link each
   quarter second are compared with the cap: the *link utilisation* (goal
   ≥ 90%). Once with a queue large enough to stay in ordered mode (epochs
   pipelined), once with a small one, so the mirror pulls ahead and catches up
   by region.
2. Resync after a crash: the remote holds the volume, the record names
   ``--dirty`` bytes of it, and only ``--differ`` of those blocks really
   differ. The resync runs with block checksums (the default after a crash)
   and without; the bytes each puts on the link are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY = b"bench-link key\n"
SAMPLE_S = 0.25
REGION = 64 * 1024
BLOCK = 4096
MiB = 1 << 20


@dataclass
class BacklogResult:
    mode: str
    backlog_bytes: int
    host_seconds: float  # the host's writes took this long (they never wait for the link)
    drain_seconds: float  # until the second medium held everything
    link_bytes: int  # put on the link while the backlog existed
    utilisation: float  # link_bytes / (cap × time with a backlog)
    overflows: int
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # t, bytes/s, lag


@dataclass
class ResyncResult:
    checksums: bool
    named_bytes: int
    differing_bytes: int
    link_bytes: int
    written_bytes: int
    seconds: float


class Receiver:
    """A `tandem receive` on a free port, for the length of the benchmark."""

    def __init__(self, work: Path, size: int) -> None:
        self.image = work / "remote.img"
        self.key = work / "link.key"
        self.key.write_bytes(KEY)
        self.log = open(work / "receiver.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware.receive_app", "--listen", "127.0.0.1:0",
             "--medium", str(self.image), "--size", str(size), "--key-file", str(self.key)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"tandem receive did not start: {line!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class NbdkitRate:
    """``nbdkit --filter=rate file`` on a Unix socket: an NBD target behind a slow link."""

    def __init__(self, work: Path, size: int, rate: int) -> None:
        self.image = work / "export.img"
        with open(self.image, "wb") as f:
            f.truncate(size)
        self.sock = work / "export.sock"
        pidfile = work / "export.pid"
        self.proc = subprocess.Popen(
            ["nbdkit", "-f", "-U", str(self.sock), "-P", str(pidfile), "--filter=rate",
             "file", str(self.image), f"rate={rate * 8}",  # the filter counts bits
             "burstiness=0.2"],  # a steady link, not a 2 s burst after each pause
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not pidfile.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("nbdkit did not start")
            time.sleep(0.05)
        self.uri = f"nbd+unix:///?socket={self.sock}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Stack:
    """Local image, record, mirror and volume, as the appliance builds them."""

    def __init__(self, work: Path, size: int, second: Any, *, queue: int,
                 initial: list[int] | None = None, checksums: str = "after-crash",
                 local: Any = None) -> None:
        from firmware.mirror.mirror import Mirror, MirrorConfig
        from firmware.record.layout import Geometry
        from firmware.record.record import Record
        from firmware.record.store import NullRecordStore
        from firmware.volume.volume import Volume
        from hal.media.file import FileMedium

        self.local = local or FileMedium(str(work / "local.img"), size, create=True)
        geometry = Geometry(size, REGION)
        self.record = Record(geometry, NullRecordStore(geometry),
                             capacity_regions=size // REGION, initial_regions=initial or ())
        self.second = second
        holder: list[Volume] = []
        self.mirror = Mirror(self.local, second, self.record,
                             MirrorConfig(queue_limit_bytes=queue, checksum_resync=checksums,
                                          retry_initial_s=0.1, retry_max_s=1.0),
                             on_progress=lambda: holder[0].room_made() if holder else None)
        self.volume = Volume(self.local, self.record, self.mirror)
        holder.append(self.volume)


def _link_bytes(second: Any) -> int:
    return int(getattr(second, "bytes_sent", 0))


async def _backlog(stack: Stack, mode: str, backlog: int, cap: int, seed: int
                   ) -> BacklogResult:
    mirror = stack.mirror
    mirror.start()
    await mirror.drained()  # the initial sync, or nothing: the remote holds the volume
    rnd = random.Random(seed)
    write = 256 * 1024
    slots = stack.local.size // write
    payload = rnd.randbytes(write + 64)
    start_bytes = _link_bytes(stack.second)
    samples: list[tuple[float, int, int]] = []  # t, link bytes so far, lag
    busy_until: tuple[float, int] | None = None  # when the last of the backlog went out
    t0 = time.monotonic()

    async def sample() -> None:
        nonlocal busy_until
        while True:
            await asyncio.sleep(SAMPLE_S / 5)
            now, sent = time.monotonic() - t0, _link_bytes(stack.second) - start_bytes
            # Data flowed: the backlog was still going out (an ack or a state frame
            # after the last data is no backlog: the link has nothing left to carry).
            if sent - (samples[-1][1] if samples else 0) > 4096:
                busy_until = (now, sent)
            samples.append((now, sent, mirror.lag_bytes()))

    sampler = asyncio.ensure_future(sample())
    for i in range(backlog // write):
        # Mostly new places (a backlog, not the same blocks again and again).
        offset = ((i * 7919 + seed) % slots) * write
        await stack.volume.write(offset, payload[i % 64:i % 64 + write])
        await asyncio.sleep(0)  # as requests from a socket would, let the mirror run
    host_seconds = time.monotonic() - t0
    await mirror.drained()
    drained = time.monotonic() - t0
    sampler.cancel()
    link_bytes = _link_bytes(stack.second) - start_bytes
    if busy_until is None:
        busy_until = (drained, link_bytes)
    busy_t, busy_bytes = busy_until
    shown: list[tuple[float, float, int]] = []
    for (t1, b1, _), (t2, b2, lag) in zip(samples[::5], samples[5::5], strict=False):
        shown.append((round(t2, 2), (b2 - b1) / (t2 - t1), lag))
    result = BacklogResult(mode, backlog, round(host_seconds, 3), round(drained, 3),
                           link_bytes, busy_bytes / (cap * busy_t) if busy_t else 0.0,
                           mirror.overflows, shown)
    await mirror.close()
    return result


def _remote(port: int, size: int, store: Any, cap: int | None) -> Any:
    from hal.media.remote.medium import RemoteMedium

    return RemoteMedium("127.0.0.1", port, KEY, size, state=store, rate_limit=cap)


def run_backlog(size: int, backlog: int, cap: int, link: str, receiver: Any, queue: int,
                mode: str, local: Any, store: Any) -> BacklogResult:
    """One backlog over one link session; the remote holds the volume before and after."""
    if link == "nbdkit-rate":
        from hal.media.nbd import NbdMedium

        second: Any = NbdMedium(receiver.uri, size=size)
    else:
        second = _remote(receiver.port, size, store, cap)
    stack = Stack(Path(), size, second, queue=queue, local=local)
    try:
        return asyncio.run(_backlog(stack, mode, backlog, cap, seed=len(mode)))
    finally:
        second.close()


def run_resync(work: Path, size: int, dirty: int, differ: float, port: int,
               checksums: bool, seed: int, store: Any, cap: int | None) -> ResyncResult:
    """The remote holds the volume; a crash leaves ``dirty`` bytes named; resync them."""
    from hal.media.file import FileMedium

    rnd = random.Random(seed)
    local_path = work / "local-resync.img"
    data = bytearray(rnd.randbytes(size))
    local = FileMedium(str(local_path), size, create=True)
    local.pwrite(0, bytes(data))
    # In sync: the remote holds exactly this, as our current generation.
    seed_link = _remote(port, size, store, None)
    seed_link.begin_resync()
    for offset in range(0, size, 4 * MiB):
        seed_link.pwrite(offset, bytes(data[offset:offset + 4 * MiB]))
    seed_link.end_resync()
    seed_link.close()
    # The crash: the record names `dirty` bytes; a fraction of their blocks never left.
    regions = sorted(rnd.sample(range(size // REGION), max(1, dirty // REGION)))
    differing = 0
    for region in regions:
        for block in range(REGION // BLOCK):
            if rnd.random() < differ:
                offset = region * REGION + block * BLOCK
                local.pwrite(offset, rnd.randbytes(BLOCK))
                differing += BLOCK
    second = _remote(port, size, store, cap)
    stack = Stack(work, size, second, queue=64 * MiB, initial=regions,
                  checksums="after-crash" if checksums else "never", local=local)

    async def resync() -> float:
        t0 = time.monotonic()
        stack.mirror.start()
        await stack.mirror.drained()
        seconds = time.monotonic() - t0
        await stack.mirror.close()
        return seconds

    try:
        before = _link_bytes(second)
        seconds = asyncio.run(resync())
        result = ResyncResult(checksums, len(regions) * REGION, differing,
                              _link_bytes(second) - before, stack.mirror.resync_sent_bytes,
                              round(seconds, 3))
    finally:
        second.close()
        local.close()
    return result


def _mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


def _say_backlog(say: Any, result: BacklogResult, cap: int, verbose: bool) -> None:
    say(f"\nbacklog, {result.mode}: the host wrote {_mib(result.backlog_bytes)} in "
        f"{result.host_seconds:.2f} s; the mirror held it all after "
        f"{result.drain_seconds:.2f} s ({result.overflows} pull-ahead)")
    if verbose:
        for t, rate, lag in result.samples:
            say(f"  t={t:6.2f}s  link {_mib(rate)}/s ({100 * rate / cap:5.1f}%)  lag {_mib(lag)}")
    say(f"  link utilisation while a backlog existed: {100 * result.utilisation:.1f}% "
        f"of the cap ({_mib(result.link_bytes)} on the link; goal ≥ 90%)")


def main(args: argparse.Namespace) -> int:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-link-"))
    work.mkdir(parents=True, exist_ok=True)
    size, cap = args.size, args.rate_limit
    out: dict[str, Any] = {"size": size, "rate_limit": cap, "link": args.link,
                           "backlog": [], "resync": []}
    say = (lambda *a: None) if args.json else print
    logging.getLogger("tandem").setLevel(logging.INFO if args.verbose else logging.ERROR)
    from hal.media.file import FileMedium
    from hal.media.remote.generations import MemoryStateStore

    store = MemoryStateStore()
    receiver = Receiver(work, size)
    target: Any = receiver
    try:
        if args.link == "nbdkit-rate":
            if not shutil.which("nbdkit"):
                print("bench-link: nbdkit is not installed", file=sys.stderr)
                return 2
            target = NbdkitRate(work, size, cap)
        say(f"bench-link: volume {_mib(size)}, link cap {_mib(cap)}/s "
            f"({'tandem receive' if args.link == 'tandem' else 'nbdkit rate filter'}), "
            f"backlog {_mib(args.backlog)}")
        # One volume, one identity: each run starts with the remote holding it all.
        store = MemoryStateStore()
        local = FileMedium(str(work / "local.img"), size, create=True)
        try:
            for mode, queue in (("ordered", max(args.backlog * 2, 64 * MiB)),
                                ("pull-ahead", 4 * MiB)):
                result = run_backlog(size, args.backlog, cap, args.link, target, queue, mode,
                                     local, store)
                out["backlog"].append(asdict(result))
                _say_backlog(say, result, cap, args.verbose)
        finally:
            local.close()
        if args.link == "tandem":
            say(f"\nresync after a crash over the same link: the record names "
                f"{_mib(args.dirty)}, {100 * args.differ:.0f}% of its blocks differ")
            for checksums in (True, False):
                r = run_resync(work, size, args.dirty, args.differ, receiver.port, checksums,
                               seed=5, store=store, cap=cap)
                out["resync"].append(asdict(r))
                say(f"  {'with checksums:   ' if checksums else 'without checksums:'} "
                    f"{_mib(r.link_bytes)} on the link, {_mib(r.written_bytes)} written, "
                    f"{r.seconds:.2f} s")
    finally:
        if target is not receiver:
            target.stop()
        receiver.stop()
        if not args.work_dir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from firmware.parsing import parse_size

    p = subparsers.add_parser(
        "bench-link", help="link utilisation under a backlog, resync with and without checksums",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=parse_size("128M"),
                   help="volume size (default 128M)")
    p.add_argument("--rate-limit", type=parse_size, default=parse_size("20M"),
                   help="the link's cap in bytes/s (default 20M)")
    p.add_argument("--backlog", type=parse_size, default=parse_size("64M"),
                   help="bytes the host writes at once (default 64M)")
    p.add_argument("--dirty", type=parse_size, default=parse_size("32M"),
                   help="bytes the record names after the crash (default 32M)")
    p.add_argument("--differ", type=float, default=0.1,
                   help="share of those blocks that really differ (default 0.1)")
    p.add_argument("--link", choices=("tandem", "nbdkit-rate"), default="tandem",
                   help="the built-in cap to a tandem receive (default), or an NBD target "
                        "behind nbdkit's rate filter")
    p.add_argument("--work-dir", help="where the images go (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="tandem")
    register(parser.add_subparsers(dest="command", required=True))
    parsed = parser.parse_args(["bench-link", *sys.argv[1:]])
    sys.exit(parsed.func(parsed))
