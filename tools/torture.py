"""`tandem torture`: cut the appliance's power thousands of times and check what survives.

In the spirit of CrashMonkey/ALICE: drive the appliance with a logged workload,
cut the power at a chosen kind of instant, bring it back up through the real
start-up path (``Appliance.open_storage`` over the surviving NVRAM and media
images) and check the result with an oracle. Everything runs in one process on
small volumes in tmpfs, so ten thousand cuts take minutes.

The board under test (see ``tools/sim/faulty.py``):

- NVRAM: the simulated board's file-backed FRAM, whose cuts are byte-granular;
- local and second media: image files behind :class:`VolatileCacheMedium`, so a
  cut loses, per 4 KiB sector, what was not flushed (or keeps any version of it);
  in some cycles the local medium writes through instead;
- each power-on picks a record policy (``--points``) and an NVRAM commit mode
  (group commit in a worker, or inline as on SPI FRAM);
- the real ``Appliance`` runs on them through an injected ``Environment``: the
  torture's clock, its NVRAM and media openers, and instead of worker threads a
  seeded step executor for the mirror, group commit and local flushes, so their
  I/O interleaves with the host's at random but reproducible points and a seed
  replays a failure exactly.

Where the power goes (``--phases`` to choose; cuts are counted by phase):

==============  ===========================================================
nvram           inside an NVRAM write, at a random byte (a torn record update)
after-record    after a record update, before the media write it protects
media-write     inside a local write (a random subset of its sectors lands)
media-flush     inside a local flush
mirror          inside a second-medium write or flush while the mirror copies
resync          inside the resync that start-up began (a crash while catching up)
recovery        inside start-up's own NVRAM writes (a crash while recovering)
random          before or inside the n-th media I/O of any kind
idle            none of the above came up: the power goes between requests
==============  ===========================================================

The oracle, after every restart:

- every block the host was told is durable (its write was acknowledged and then a
  FLUSH or FUA completed; or any acknowledged write when the local medium writes
  through) reads back that write or a later one; otherwise it is *lost*;
- every region where the local and the second medium differ is named in the
  record read back from NVRAM (else it is *unrecorded*: the resync would miss it);
- once the resync is done (and at random quiet points later) the two media are
  compared in full: any region that differs is *divergent*;
- host reads during the run return the last acknowledged write.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from firmware.app import Appliance, Settings
from firmware.environment import Environment, open_profile_medium
from firmware.mirror.mirror import Mirror, MirrorConfig, MirrorState
from firmware.parsing import parse_size
from firmware.record.policy import POINTS
from firmware.volume.target import TargetError
from firmware.volume.volume import Volume
from hal.media.base import Medium
from hal.nvram import open_nvram
from hal.nvram.base import Nvram, PowerLost
from hal.nvram.file_fram import FileFram
from tools.sim.faulty import Cut, IoEvent, MediumPowerLost, PowerRail, VolatileCacheMedium

log = logging.getLogger("tandem.torture")

BLOCK = 4096
_MAGIC = b"TTRT"
_HEADER = struct.Struct("<4sQI")  # magic, token, block
_ZERO_BLOCK = bytes(BLOCK)
MiB = 1 << 20

PHASES = ("nvram", "after-record", "media-write", "media-flush", "mirror", "resync",
          "recovery", "random")
_WEIGHTS = {"nvram": 3, "after-record": 2, "media-write": 3, "media-flush": 1, "mirror": 2,
            "resync": 2, "recovery": 1, "random": 2}
_ROUND_TIMEOUT_S = 10.0  # wall clock: a round takes milliseconds; this long is a hang


# -- block contents the oracle can recognise -------------------------------------------


def block_image(token: int, block: int) -> bytes:
    """What write ``token`` puts in ``block``: a 16-byte stamp repeated over 4 KiB."""
    if token == 0:
        return _ZERO_BLOCK
    return _HEADER.pack(_MAGIC, token, block) * (BLOCK // _HEADER.size)


def decode_block(raw: bytes, block: int) -> int | None:
    """The token a block holds (0: zeroes), or None when it is no whole write's image."""
    if raw == _ZERO_BLOCK:
        return 0
    magic, token, where = _HEADER.unpack_from(raw)
    if magic != _MAGIC or where != block or raw != block_image(token, block):
        return None
    return token


# -- the oracle's model ------------------------------------------------------------------


class BlockModel:
    """For each 4 KiB block: the versions it may hold after a cut, oldest first.

    ``history[b][floor[b]:]`` is what block ``b`` may read back: the newest write
    the host was told is durable, or anything written after it (acknowledged or
    not). The workload never has two writes to one block in flight, so each
    block's writes are ordered.
    """

    def __init__(self, nblocks: int) -> None:
        self.history: list[list[int]] = [[0] for _ in range(nblocks)]
        self.floor = [0] * nblocks
        self.promised = [False] * nblocks  # floor set by an acknowledged write this cycle
        self.settled = [True] * nblocks  # last write to the block has completed
        self._acked_unflushed: dict[int, int] = {}

    def issue(self, blocks: range, token: int) -> int:
        for b in blocks:
            self.history[b].append(token)
            self.settled[b] = False
        return len(self.history[blocks[0]]) - 1 if len(blocks) else 0

    def acked(self, blocks: range, durable: bool) -> None:
        for b in blocks:
            index = len(self.history[b]) - 1
            self.settled[b] = True
            if durable:
                self._promise(b, index)
            else:
                self._acked_unflushed[b] = index

    def failed(self, blocks: range) -> None:
        # A failed write may or may not have landed: it stays a candidate, nothing more.
        for b in blocks:
            self.settled[b] = True

    def flush_issued(self) -> dict[int, int]:
        snapshot, self._acked_unflushed = self._acked_unflushed, {}
        return snapshot

    def flush_done(self, snapshot: dict[int, int], ok: bool) -> None:
        if ok:
            for b, index in snapshot.items():
                self._promise(b, index)
        else:
            for b, index in snapshot.items():
                if self._acked_unflushed.get(b, -1) < index:
                    self._acked_unflushed[b] = index

    def _promise(self, b: int, index: int) -> None:
        if index >= self.floor[b]:
            self.floor[b] = index
            self.promised[b] = True

    def expected_now(self, b: int) -> int | None:
        """What a host read must return now (None: the last write did not complete)."""
        return self.history[b][-1] if self.settled[b] else None

    def check_and_rebase(self, image: bytes) -> tuple[int, list[str]]:
        """Check a local-medium image after a cut; return (promises checked, failures).

        Then what each block holds is its only version from here on.
        """
        checked = 0
        failures: list[str] = []
        for b, history in enumerate(self.history):
            raw = image[b * BLOCK:(b + 1) * BLOCK]
            token = decode_block(raw, b)
            floor = self.floor[b]
            checked += self.promised[b]
            if token is None:
                if -1 not in history[floor:]:  # else: garbage reported at an earlier boot
                    failures.append(f"block {b}: garbage (neither zeroes nor a whole write); "
                                    f"allowed tokens {history[floor:floor + 6]}")
            elif token != history[floor] and token not in history[floor + 1:]:
                older = token in history[:floor]
                failures.append(f"block {b}: holds token {token}"
                                f"{' (an older write)' if older else ''}; the host was "
                                f"promised token {history[floor]} or later "
                                f"{history[floor + 1:floor + 6]}")
            self.history[b] = [token if token is not None else -1]
        nblocks = len(self.history)
        self.floor = [0] * nblocks
        self.promised = [False] * nblocks
        self.settled = [True] * nblocks
        self._acked_unflushed = {}
        return checked, failures


# -- a deterministic stand-in for the mirror's worker thread ----------------------------


class StepExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each job on the event loop thread a seeded number of loop turns later.

    The mirror's medium I/O then interleaves with the host's requests at random
    but reproducible points (a real thread would make a seed unreplayable).
    """

    def __init__(self, rng: random.Random, max_turns: int = 3) -> None:
        super().__init__(max_workers=1)
        self._rng = rng
        self._max_turns = max_turns

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
               ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        loop = asyncio.get_running_loop()

        def run(turns: int) -> None:
            if turns:
                loop.call_soon(run, turns - 1)
                return
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 — handed to the awaiting task
                future.set_exception(exc)

        loop.call_soon(run, self._rng.randrange(self._max_turns + 1))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


# -- configuration and figures -----------------------------------------------------------


@dataclass
class TortureConfig:
    cuts: int = 500
    seed: int = 1
    volume_size: int = 8 * MiB
    region_size: int = 64 << 10
    record_regions: int = 16  # the record's capacity while the mirror is healthy
    mirror_queue: int = 512 << 10  # small, so that the mirror overflows into catch-up
    rounds: int = 120  # most request rounds per cycle before an idle cut
    phases: tuple[str, ...] = PHASES
    local_cache: str = "mixed"  # "on": always a volatile write cache, "off": write-through
    commit_modes: tuple[str, ...] = ("group-commit", "inline")
    points: tuple[str, ...] = ("recovery-first", "latency-first", "sequential-lru")
    workdir: str | None = None
    keep: bool = False
    stop_on_failure: bool = True
    progress: Callable[[int, Report], None] | None = None


@dataclass
class Report:
    seed: int = 0
    cuts: int = 0
    cuts_by_phase: dict[str, int] = field(default_factory=dict)
    cycles_by_setup: dict[str, int] = field(default_factory=dict)
    boots: int = 0
    host_writes: int = 0
    acked_writes: int = 0
    acked_checked: int = 0
    lost: int = 0
    divergent_regions: int = 0
    unrecorded_regions: int = 0
    compares: int = 0
    reads_checked: int = 0
    read_mismatches: int = 0
    resync_bytes: int = 0
    mean_resync_bytes: float = 0.0
    full_resyncs: int = 0
    unexpected_errors: int = 0
    hangs: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.divergent_regions or self.unrecorded_regions
                    or self.read_mismatches or self.unexpected_errors or self.hangs)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


# -- the harness -------------------------------------------------------------------------


_PROFILE = """\
name = "torture"
description = "power-cut torture: file FRAM and media images in a scratch directory"

[nvram]
kind = "file"
path = "{{data_dir}}/nvram.bin"
size = {nvram_size}
# The page cache survives our cuts: only the emulated power goes. false: the appliance
# persists misses by group commit in a worker; "process": inline, as on SPI FRAM.
sync = {sync}

[media.local]
kind = "file"
path = "{{data_dir}}/local.img"

[media.second]
kind = "file"
path = "{{data_dir}}/second.img"
"""


class _CycleFailed(Exception):
    pass


def _quiet_about_power_cuts(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A request dropped at a cut leaves its NVRAM transaction's failure unretrieved.
    if isinstance(context.get("exception"), (PowerLost, MediumPowerLost)):
        return
    loop.default_exception_handler(context)


class _Run:
    """What one power-on period needs: devices, mirror, volume, the cut plan."""

    def __init__(self, app: Appliance, rail: PowerRail, local: VolatileCacheMedium,
                 second: VolatileCacheMedium, phase: str) -> None:
        self.app = app
        self.rail = rail
        self.local = local
        self.second = second
        self.mirror: Mirror = app.mirror
        self.volume: Volume = app.volume
        self.phase = phase
        self.fired: str | None = None
        self.boot_resync = True  # until the mirror first reaches ordered mode
        self.arm_round = 0  # the round from which the phase's trip may fire
        self.nvram_arm_round = -1  # the round at which the FRAM is armed (phase nvram)
        self.nvram_cut_after = 0  # bytes the FRAM still takes then
        self.cut_seen = asyncio.Event()
        self.arm: Callable[[], None] = lambda: None


class Torture:
    def __init__(self, config: TortureConfig) -> None:
        self.cfg = config
        # Separate streams, so that a change in one kind of choice leaves the others be.
        self.rng = random.Random(f"{config.seed}/workload")
        self.plan_rng = random.Random(f"{config.seed}/plan")
        self.device_rng = random.Random(f"{config.seed}/devices")
        self.step_rng = random.Random(f"{config.seed}/steps")
        self.report = Report(seed=config.seed)
        self.nblocks = config.volume_size // BLOCK
        self._local_image = bytearray(config.volume_size)
        self._second_image = bytearray(config.volume_size)
        self.model = BlockModel(self.nblocks)
        self.token = 0
        self.now = 1e9  # the record's clock: well past time.monotonic() of start-up
        self.streams = [self.rng.randrange(self.nblocks) for _ in range(3)]
        self.hot = [self.rng.randrange(self.nblocks) for _ in range(8)]
        self.phases = [p for p in PHASES if p in config.phases]
        if not self.phases:
            raise ValueError(f"no known phase in {config.phases}; known: {PHASES}")

    # -- top level ------------------------------------------------------------------

    async def run(self) -> Report:
        cfg = self.cfg
        if cfg.volume_size % cfg.region_size or cfg.region_size % BLOCK:
            raise ValueError("volume size must be a multiple of the region size, "
                             "and the region size of 4 KiB")
        scratch = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(
            prefix="tandem-torture-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        scratch.mkdir(parents=True, exist_ok=True)
        nregions = cfg.volume_size // cfg.region_size
        self.boards: dict[str, str] = {}
        for mode, sync in (("group-commit", "false"), ("inline", '"process"')):
            board = scratch / f"board-{mode}.toml"
            board.write_text(_PROFILE.format(nvram_size=max(4096, 128 + 2 * -(-nregions // 8)),
                                             sync=sync))
            self.boards[mode] = str(board)
        # The appliance as `tandem run` builds it, less the frontends (the torture is its
        # host) and the tidy task (the torture tidies at seeded points on its own clock).
        self.settings = Settings(
            board=self.boards["group-commit"], data_dir=str(scratch),
            size=cfg.volume_size, region_size=cfg.region_size,
            resync_budget=cfg.record_regions * cfg.region_size,
            mirror_queue=cfg.mirror_queue, idle_evict_s=0.3, tidy_interval_s=None,
            serve_nbd=False, serve_console=False,
            mirror_tuning=MirrorConfig(queue_limit_bytes=cfg.mirror_queue,
                                       batch_bytes=256 << 10,
                                       copy_chunk_bytes=4 * cfg.region_size,
                                       retry_initial_s=0.0, retry_max_s=0.0))
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_about_power_cuts)
        started = time.monotonic()
        try:
            for cycle in range(cfg.cuts):
                try:
                    await self._cycle(cycle)
                except _CycleFailed:
                    if cfg.stop_on_failure:
                        break
                if cfg.progress is not None:
                    cfg.progress(cycle + 1, self.report)
            else:
                # A last boot checks what the last cut left.
                app = self._boot(first=False)
                if app is not None:
                    with contextlib.suppress(_CycleFailed):
                        self._check_boot(cfg.cuts, app)
                    self._shutdown_devices(app)
        finally:
            self.report.seconds = round(time.monotonic() - started, 2)
            boots = max(1, self.report.boots)
            self.report.mean_resync_bytes = round(self.report.resync_bytes / boots, 1)
            if not cfg.keep and not cfg.workdir:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.report

    def _fail(self, cycle: int, what: str) -> None:
        message = f"cut {cycle} (seed {self.cfg.seed}): {what}"
        log.error("%s", message)
        if len(self.report.failures) < 20:
            self.report.failures.append(message)

    # -- one cycle: boot, check, run, cut -------------------------------------------

    async def _cycle(self, cycle: int) -> None:
        phase = self.plan_rng.choice([p for p in self.phases for _ in range(_WEIGHTS[p])])
        first = cycle == 0
        # Each power-on may come up with another record policy and NVRAM commit mode.
        commit_mode = self.plan_rng.choice(self.cfg.commit_modes)
        point = self.plan_rng.choice(self.cfg.points)
        self.settings = dataclasses.replace(self.settings, board=self.boards[commit_mode],
                                            point=point)
        setup = f"{commit_mode}/{point}"
        self.report.cycles_by_setup[setup] = self.report.cycles_by_setup.get(setup, 0) + 1
        if phase == "recovery" and not first:
            app = self._boot(first, cut_after=self.plan_rng.randrange(0, 96))
            if app is None:
                self._count_cut("recovery")
                return
            phase = "nvram"  # the armed cut did not come up in start-up: it will come later
        else:
            app = self._boot(first)
            if app is None:  # cannot happen without an armed cut
                raise RuntimeError("start-up lost power without a cut armed")
        failures_before = len(self.report.failures)
        self._check_boot(cycle, app)
        if phase == "resync" and not app.record.dirty_regions():
            phase = "mirror"
        run = await self._start(app, phase)
        try:
            await self._workload(cycle, run)
        finally:
            await self._power_off(run)
        if len(self.report.failures) > failures_before:
            raise _CycleFailed

    def _boot(self, first: bool, cut_after: int | None = None) -> Appliance | None:
        """Start-up through the appliance's own path; None if the armed cut came."""
        rail = self._rail = PowerRail()
        cached = self.plan_rng.random() < 0.75
        if self.cfg.local_cache != "mixed":
            cached = self.cfg.local_cache == "on"
        self._media: dict[str, VolatileCacheMedium] = {}

        def nvram_opener(spec: Any) -> Nvram:
            nvram = open_nvram(spec)
            if cut_after is not None:  # start-up's own NVRAM writes may be cut
                assert isinstance(nvram, FileFram)
                nvram.arm_power_cut(cut_after)
            return nvram

        def medium_opener(role: str, spec: Any, default_size: int) -> Medium:
            # Every medium keeps a volatile cache that the power cut settles; the local
            # one writes through in some power-ons.
            medium = self._media[role] = VolatileCacheMedium(
                open_profile_medium(role, spec, default_size), rail=rail, name=role,
                cache=cached or role != "local", rng=self.device_rng)
            return medium

        env = Environment(clock=lambda: self.now,
                          executor=lambda name: StepExecutor(self.step_rng),
                          open_nvram=nvram_opener, open_medium=medium_opener)
        app = Appliance(self.settings, env)
        try:
            app.open_storage()
        except PowerLost:
            self._shutdown_devices(app)
            return None
        if not first:
            self.report.boots += 1
        return app

    def _check_boot(self, cycle: int, app: Appliance) -> None:
        local = self._read_image(app.local, self._local_image)
        second = self._read_image(app.second, self._second_image)
        checked, failures = self.model.check_and_rebase(local)
        self.report.acked_checked += checked
        self.report.lost += len(failures)
        for failure in failures[:5]:
            self._fail(cycle, f"lost write at start-up: {failure}")
        named = set(app.record.regions())
        region = self.cfg.region_size
        differ = self._differing(local, second)
        unrecorded = sorted(set(differ) - named)
        if unrecorded:
            self.report.unrecorded_regions += len(unrecorded)
            self._fail(cycle, f"regions {unrecorded[:10]} differ between the media but the "
                              f"record read back names only {sorted(named)[:20]}")
        if cycle:
            self.report.resync_bytes += len(named) * region
            if app.startup is not None and app.startup.reason.startswith("full resync"):
                self.report.full_resyncs += 1

    def _read_image(self, medium: Any, buffer: bytearray) -> bytearray:
        """A whole medium into a buffer kept for the run: 8 MiB a time in fresh bytes
        objects would cost more in page faults than everything else together."""
        if isinstance(medium, VolatileCacheMedium) and medium.unflushed_sectors == 0:
            medium = medium.inner  # nothing cached: the file is the content
        if hasattr(medium, "fileno"):
            if os.preadv(medium.fileno(), [buffer], 0) == len(buffer):
                return buffer
        buffer[:] = medium.pread(0, len(buffer))
        return buffer

    def _differing(self, a: bytes | bytearray, b: bytes | bytearray) -> list[int]:
        if a == b:
            return []
        region = self.cfg.region_size
        return [r for r in range(len(a) // region)
                if a[r * region:(r + 1) * region] != b[r * region:(r + 1) * region]]

    async def _start(self, app: Appliance, phase: str) -> _Run:
        rail = self._rail
        fram = app.nvram
        assert isinstance(fram, FileFram)
        rail.sense("nvram", lambda: fram.powered)
        rail.when_cut(lambda: fram.arm_power_cut(0))  # the FRAM goes down with the board
        await app.start_storage()
        run = _Run(app, rail, self._media["local"], self._media["second"], phase)
        rail.when_cut(run.cut_seen.set)
        rail.trip = self._trip_for(run)
        run.arm_round = self.plan_rng.randrange(0, 30)
        if phase == "nvram":
            run.nvram_arm_round = self.plan_rng.randrange(0, 40)
            run.nvram_cut_after = self.plan_rng.randrange(0, 48)
        return run

    # -- when the power goes --------------------------------------------------------

    def _trip_for(self, run: _Run) -> Callable[[IoEvent], Cut | None]:
        rng = self.plan_rng
        phase = run.phase
        fram = run.app.nvram
        assert isinstance(fram, FileFram)
        state = {"armed": False, "countdown": rng.randrange(1, 400),
                 "fram_writes": fram.stats.write_calls}

        def fire(label: str, how: Cut) -> Cut:
            run.fired = label
            return how

        def trip(event: IoEvent) -> Cut | None:
            mirror = run.mirror
            if mirror.state is MirrorState.ORDERED:
                run.boot_resync = False
            if phase == "random":
                state["countdown"] -= 1
                if state["countdown"] <= 0:
                    return fire("random", rng.choice((Cut.BEFORE, Cut.DURING)))
                return None
            if not state["armed"]:
                return None
            writes = event.op in ("write", "zeroes")
            if phase == "after-record" and event.device == "local" and writes:
                now = fram.stats.write_calls
                updated, state["fram_writes"] = now != state["fram_writes"], now
                if updated and rng.random() < 0.5:
                    return fire("after-record", Cut.BEFORE)
            elif phase == "media-write" and event.device == "local" and writes:
                if rng.random() < 0.4:
                    return fire("media-write", Cut.DURING)
            elif phase == "media-flush" and event.device == "local" and event.op == "flush":
                if rng.random() < 0.5:
                    return fire("media-flush", Cut.DURING)
            elif phase in ("mirror", "resync") and event.device == "second" \
                    and event.op != "read":
                resync = run.boot_resync and mirror.state is not MirrorState.ORDERED
                if (phase == "resync") == resync and rng.random() < 0.2:
                    return fire(phase, rng.choice((Cut.BEFORE, Cut.DURING)))
            return None

        run.arm = lambda: state.__setitem__("armed", True)
        if phase == "resync":
            state["armed"] = True
        return trip

    async def _power_off(self, run: _Run) -> None:
        rail = run.rail
        rail.trip = None
        if rail.on:
            rail.cut("idle")
            run.fired = run.fired or "idle"
        elif run.fired is None:
            run.fired = "nvram" if rail.cause and rail.cause.startswith("nvram") else "random"
        self._count_cut(run.fired)
        await run.app.halt()
        for medium in (run.local, run.second):
            medium.settle(self.device_rng.choice(("random", "random", "lose", "keep")),
                          self.device_rng)
        self._shutdown_devices(run.app)

    def _count_cut(self, phase: str) -> None:
        self.report.cuts += 1
        by_phase = self.report.cuts_by_phase
        by_phase[phase] = by_phase.get(phase, 0) + 1

    @staticmethod
    def _shutdown_devices(app: Appliance) -> None:
        nvram = getattr(app, "nvram", None)
        if isinstance(nvram, FileFram):
            nvram.power_on()
        app.close_devices()

    # -- the workload ---------------------------------------------------------------

    async def _workload(self, cycle: int, run: _Run) -> None:
        rng = self.rng
        for round_no in range(self.cfg.rounds):
            if not run.rail.on:
                return
            if round_no == run.nvram_arm_round:
                fram = run.app.nvram
                assert isinstance(fram, FileFram)
                fram.arm_power_cut(run.nvram_cut_after)
            if round_no == 0 or rng.random() < 0.01:
                if round_no == 0 and rng.random() < 0.3:
                    pass  # let the host write while start-up's resync runs
                else:
                    await self._compare_when_drained(cycle, run)
                    if not run.rail.on:
                        return
            if round_no == run.arm_round:
                run.arm()
            if not await self._requests(cycle, run, self._round(run)):
                return
            self.now += rng.expovariate(1 / 0.05)
            if rng.random() < 0.15:  # what the appliance's tidy task does now and then
                try:
                    shed = run.app.record.tidy(self.now)
                    if rng.random() < 0.1:  # the host went quiet: shed every clean region
                        shed += run.app.record.evict_clean()
                    if shed:
                        run.volume.room_made()
                except OSError:
                    return  # the power went during the eviction

    async def _requests(self, cycle: int, run: _Run, requests: list[Any]) -> bool:
        """Run one round; False when the power went (requests still waiting are dropped:
        the host went down with the board) or the round hung."""
        together = asyncio.gather(*requests)
        try:
            if not await self._until(run, together):
                if run.rail.on:
                    self.report.hangs += 1
                    self._fail(cycle, f"a round of requests did not finish in "
                                      f"{_ROUND_TIMEOUT_S}s (mirror {run.mirror.status()})")
                return False
            exc = together.exception()
            if exc is not None:  # the volume may only ever fail a request with TargetError
                self.report.unexpected_errors += 1
                self._fail(cycle, f"a request raised {exc!r}")
                return False
        finally:
            if not together.done():
                together.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await together
        return True

    async def _until(self, run: _Run, work: asyncio.Future[Any]) -> bool:
        """Wait for ``work`` or a power cut (no polling: a seed must replay exactly)."""
        cut = asyncio.ensure_future(run.cut_seen.wait())
        try:
            await asyncio.wait({work, cut}, timeout=_ROUND_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            cut.cancel()
        return work.done() and run.rail.on

    async def _compare_when_drained(self, cycle: int, run: _Run) -> None:
        drained = asyncio.ensure_future(run.mirror.drained())
        try:
            if not await self._until(run, drained):
                if run.rail.on:
                    self.report.hangs += 1
                    self._fail(cycle, f"the mirror did not drain in {_ROUND_TIMEOUT_S}s "
                                      f"(mirror {run.mirror.status()})")
                return
        finally:
            drained.cancel()
        trip, run.rail.trip = run.rail.trip, None
        try:
            local = self._read_image(run.local, self._local_image)
            second = self._read_image(run.second, self._second_image)
        finally:
            run.rail.trip = trip
        differ = self._differing(local, second)
        self.report.compares += 1
        if differ:
            self.report.divergent_regions += len(differ)
            self._fail(cycle, f"mirror drained but regions {differ[:10]} differ "
                              f"(record {run.app.record.regions()[:20]})")

    def _round(self, run: _Run) -> list[Any]:
        """One to four requests on disjoint blocks, issued together."""
        rng = self.rng
        busy: set[int] = set()
        requests = []
        for _ in range(1 + min(3, int(rng.expovariate(1.0)))):
            kind = rng.choices(("write", "fua", "flush", "trim", "zeroes", "read"),
                               (55, 8, 10, 7, 3, 12))[0]
            if kind == "flush":
                requests.append(self._flush(run))
                continue
            blocks = self._pick_blocks(kind)
            if busy.intersection(blocks):
                continue
            busy.update(blocks)
            if kind == "read":
                requests.append(self._read(run, blocks))
            elif kind in ("trim", "zeroes"):
                requests.append(self._zeroes(run, blocks, kind == "trim"))
            else:
                requests.append(self._write(run, blocks, kind == "fua"))
        return requests

    def _pick_blocks(self, kind: str) -> range:
        rng = self.rng
        n = self.nblocks
        how = rng.random()
        if kind in ("trim", "zeroes"):
            length = rng.choice((1, 2, 4, 16, 32))
            start = rng.randrange(n)
        elif how < 0.4:  # a sequential stream
            i = rng.randrange(len(self.streams))
            length = rng.choice((1, 2, 4, 8, 16))
            start = self.streams[i]
            if start + length > n:
                start = 0
            self.streams[i] = (start + length) % n
        elif how < 0.7:  # a small hot set, overwritten again and again
            start = rng.choice(self.hot)
            length = rng.choice((1, 1, 2, 4))
        else:
            start = rng.randrange(n)
            length = rng.choice((1, 2, 8, 64)) if rng.random() < 0.9 else 48
        length = min(length, n - start)
        return range(start, start + length)

    async def _write(self, run: _Run, blocks: range, fua: bool) -> None:
        self.token += 1
        token = self.token
        data = b"".join(block_image(token, b) for b in blocks)
        self.model.issue(blocks, token)
        self.report.host_writes += 1
        try:
            await run.volume.write(blocks[0] * BLOCK, data, fua=fua)
        except TargetError as exc:
            self.model.failed(blocks)
            self._unexpected(run, exc)
            return
        self.report.acked_writes += 1
        self.model.acked(blocks, durable=fua or not run.local.cache)

    async def _zeroes(self, run: _Run, blocks: range, trim: bool) -> None:
        self.model.issue(blocks, 0)
        self.report.host_writes += 1
        offset, length = blocks[0] * BLOCK, len(blocks) * BLOCK
        try:
            if trim:
                await run.volume.trim(offset, length)
            else:
                await run.volume.write_zeroes(offset, length, may_trim=False)
        except TargetError as exc:
            self.model.failed(blocks)
            self._unexpected(run, exc)
            return
        self.report.acked_writes += 1
        self.model.acked(blocks, durable=not run.local.cache)

    async def _flush(self, run: _Run) -> None:
        snapshot = self.model.flush_issued()
        try:
            await run.volume.flush()
        except TargetError as exc:
            self.model.flush_done(snapshot, ok=False)
            self._unexpected(run, exc)
            return
        self.model.flush_done(snapshot, ok=True)

    async def _read(self, run: _Run, blocks: range) -> None:
        try:
            data = await run.volume.read(blocks[0] * BLOCK, len(blocks) * BLOCK)
        except TargetError as exc:
            self._unexpected(run, exc)
            return
        for i, b in enumerate(blocks):
            expected = self.model.expected_now(b)
            if expected is None or expected < 0:
                continue
            self.report.reads_checked += 1
            if data[i * BLOCK:(i + 1) * BLOCK] != block_image(expected, b):
                self.report.read_mismatches += 1
                got = decode_block(data[i * BLOCK:(i + 1) * BLOCK], b)
                self.report.failures.append(
                    f"seed {self.cfg.seed}: host read of block {b} returned token {got}, "
                    f"last acknowledged write was {expected}")

    def _unexpected(self, run: _Run, exc: TargetError) -> None:
        if run.rail.on:  # an error with the power on: the appliance failed a request
            self.report.unexpected_errors += 1
            if len(self.report.failures) < 20:
                self.report.failures.append(f"seed {self.cfg.seed}: request failed with "
                                            f"power on: {exc}")


def run_torture(config: TortureConfig) -> Report:
    """Run the torture in a fresh event loop (the CLI and the tests call this)."""
    quiet = logging.getLogger("tandem")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # every cut makes the mirror and start-up complain
    try:
        return asyncio.run(Torture(config).run())
    finally:
        quiet.setLevel(level)


# -- the command line ---------------------------------------------------------------------


def format_report(report: Report, config: TortureConfig) -> str:
    phases = " · ".join(f"{k} {v}" for k, v in sorted(report.cuts_by_phase.items(),
                                                        key=lambda kv: -kv[1]))
    region = config.region_size
    lines = [
        f"tandem torture: {report.cuts} power cuts · seed {report.seed} · "
        f"{config.volume_size // MiB} MiB volume · {region >> 10} KiB regions · "
        f"{report.seconds:.1f} s",
        f"  cuts by phase:                    {phases}",
        "  power-ons by setup:               "
        + " · ".join(f"{k} {v}" for k, v in sorted(report.cycles_by_setup.items())),
        f"  boots (recoveries):               {report.boots}",
        f"  host writes issued / acknowledged: {report.host_writes} / {report.acked_writes}",
        f"  acknowledged durable writes checked: {report.acked_checked}",
        f"  lost acknowledged writes:         {report.lost}",
        f"  divergent regions after resync:   {report.divergent_regions}"
        f"  ({report.compares} full compares)",
        f"  differing regions not in record:  {report.unrecorded_regions}",
        f"  host reads checked / wrong:       {report.reads_checked} / "
        f"{report.read_mismatches}",
        f"  mean resync volume per boot:      {report.mean_resync_bytes / 1024:.1f} KiB "
        f"({report.mean_resync_bytes / region:.2f} regions); full resyncs: "
        f"{report.full_resyncs}",
        f"  unexpected errors / hangs:        {report.unexpected_errors} / {report.hangs}",
    ]
    lines += [f"  FAIL {f}" for f in report.failures[:10]]
    lines.append("  PASS" if report.ok else "  FAIL")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "torture", help="power-cut torture: crash the appliance N times, check every restart")
    p.add_argument("--cuts", type=int, default=500, help="power cuts to inject (default 500)")
    p.add_argument("--seed", type=int, default=None,
                   help="random seed (default: random, printed); a seed replays a run exactly")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--size", type=parse_size, default=8 * MiB,
                   help="volume size (default 8M)")
    p.add_argument("--region-size", type=parse_size, default=64 << 10,
                   help="record region size (default 64K)")
    p.add_argument("--record-regions", type=int, default=16,
                   help="record capacity in regions (default 16)")
    p.add_argument("--phases", default=None,
                   help=f"comma-separated cut phases (default all: {','.join(PHASES)}; "
                        f"with --pair: fram,media,link,idle)")
    p.add_argument("--points", default="recovery-first,latency-first,sequential-lru",
                   help="record policies to pick from at each power-on (comma-separated)")
    p.add_argument("--local-cache", choices=("mixed", "on", "off"), default="mixed",
                   help="local medium: a volatile write cache, write-through, or a mix "
                        "(default: 3 cycles in 4 cached)")
    p.add_argument("--pair", action="store_true",
                   help="torture a pair (issue 15): two appliances sharing D and M, the "
                        "record held on the peer, power cuts on either or both "
                        "(tools/torture_pair.py)")
    p.add_argument("--pair-mode", choices=("primary-backup", "active-active"),
                   default="primary-backup",
                   help="--pair: one node serves (default), or both (issue 16)")
    p.add_argument("--victims", default="primary,holder,both",
                   help="--pair: whose power goes, picked per cut (comma-separated)")
    p.add_argument("--workdir", help="scratch directory (default: a new one in /dev/shm)")
    p.add_argument("--keep-going", action="store_true",
                   help="go on after a failed check (default: stop at the first)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    if args.pair:
        from tools.torture_pair import main_pair

        return main_pair(args, seed)
    phases = tuple(p.strip() for p in (args.phases or ",".join(PHASES)).split(",")
                   if p.strip())
    points = tuple(p.strip() for p in args.points.split(",") if p.strip())
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        print(f"tandem torture: unknown phases {unknown}; known: {', '.join(PHASES)}",
              file=sys.stderr)
        return 2
    known_points = [*POINTS, "sequential-lru"]
    if not points or any(p not in known_points for p in points):
        print(f"tandem torture: unknown points in {list(points)}; known: "
              f"{', '.join(known_points)}", file=sys.stderr)
        return 2
    config = TortureConfig(
        cuts=args.cuts, seed=seed, volume_size=args.size, region_size=args.region_size,
        record_regions=args.record_regions,
        phases=phases, points=points, local_cache=args.local_cache,
        workdir=args.workdir, keep=bool(args.workdir), stop_on_failure=not args.keep_going)
    if not args.json and sys.stderr.isatty():
        def progress(done: int, report: Report) -> None:
            if done % 100 == 0 or done == config.cuts:
                print(f"\r  {done}/{config.cuts} cuts · lost {report.lost} · divergent "
                      f"{report.divergent_regions}", end="", file=sys.stderr, flush=True)
        config.progress = progress
    report = run_torture(config)
    if config.progress is not None:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        print(format_report(report, config))
    return 0 if report.ok else 1
