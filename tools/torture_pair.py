"""`tandem torture --pair`: power cuts on both appliances of a pair, thousands of times.

Two real ``Appliance`` objects run in one process as nodes ``a`` and ``b`` of a pair
(issue 15): each has its own file-backed FRAM (byte-granular cuts), both reach the same
local medium D and second medium M — a dual-ported disk with one volatile write cache,
which only a cut of the whole site empties — and they talk over two in-memory links
(the "tcp" and the "serial" one) that drop, duplicate, reorder and corrupt frames at
seeded random. Everything runs on the torture's clock and on seeded step executors (see
torture.py), so a seed replays a run exactly; the runtimes are ticked by the torture.

Each cycle waits until the pair is healthy (one node serving, the other holding its
record), runs rounds of host requests against the serving node's volume, and cuts the
power of a *victim* — the serving node, the record-holder, or both with the site's
disks — at one of these instants (counted by ``victim/phase``):

=======  ==============================================================================
fram     inside one of the victim's FRAM writes, at a random byte (a torn table entry)
media    before or inside the victim's n-th write or flush of D or M
link     right after the victim handed its n-th frame to a link (the frame goes on)
idle     between requests
=======  ==============================================================================

The victims come back after a random while: before or after the survivor's lease-based
takeover, so both a returning primary at the same epoch and a stale one that must hand
over and rejoin as the record-holder happen.

The oracle:

- *lost*: once the pair is quiet again, every block the host was told is durable (an
  acknowledged write followed by a completed FLUSH or FUA, or any acknowledged write while
  D writes through) reads back that write or a later one;
- *unrecorded*: at every cut, each region where D and M differ is named in what the
  FRAMs durably say — the surviving record-holder's HELD alone when its FRAM says the
  record is complete (that is what a takeover trusts), else the union of both nodes'
  HELD and INTENT (what a rejoin hands over);
- *divergent*: when the pair is healthy and the serving node's mirror has drained, D and
  M are equal byte for byte;
- host reads return the last acknowledged write; a round that does not finish in a long
  stretch of simulated time is a *hang*.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware.app import Appliance, Settings
from firmware.environment import Environment, open_profile_medium
from firmware.mirror.mirror import MirrorConfig
from firmware.peer.config import PeerState
from firmware.peer.frames import PRIMARY, RECORD_HOLDER
from firmware.peer.held import PairFram, PairLayoutError, required_bytes
from firmware.peer.links import LinkCounters
from firmware.peer.node import PairSettings
from firmware.record.policy import POINTS
from firmware.volume.target import TargetError
from hal.media.base import Medium
from hal.nvram import open_nvram
from hal.nvram.base import Nvram, NvramError, PowerLost
from hal.nvram.file_fram import FileFram
from tools.sim.faulty import Cut, IoEvent, MediumPowerLost, PowerRail, VolatileCacheMedium
from tools.torture import (
    BLOCK,
    BlockModel,
    MiB,
    Report,
    StepExecutor,
    block_image,
    decode_block,
)

log = logging.getLogger("tandem.torture")

NODES = ("a", "b")
VICTIMS = ("primary", "holder", "both")
PAIR_PHASES = ("fram", "media", "link", "idle")
_VICTIM_WEIGHTS = {"primary": 5, "holder": 3, "both": 3}
_PHASE_WEIGHTS = {"fram": 3, "media": 4, "link": 3, "idle": 1}
LINK_URLS = ("tcp://pair-sim:1", "sim-serial")
STEP_S = 0.05  # simulated time per step: the runtime's own tick
_TURNS_PER_STEP = 8  # loop turns per step: the step executors and links run meanwhile
_HEALTHY_STEPS = 3000  # 150 simulated seconds to become healthy again: else a hang
_ROUND_STEPS = 2000
_TIDY_EVERY_STEPS = 10  # the appliance's tidy task: every half second


# -- the world: shared disks, power per board, links ------------------------------------


class BoardPort:
    """One board's port of a dual-ported disk: the board's power decides whether its I/O
    happens (and where it is cut); the disk and its cache are shared."""

    def __init__(self, disk: VolatileCacheMedium, rail: PowerRail, device: str,
                 rng: random.Random) -> None:
        self.disk = disk
        self.rail = rail
        self.device = device
        self._rng = rng

    @property
    def size(self) -> int:
        return self.disk.size

    @property
    def name(self) -> str:
        return self.disk.name

    def pread(self, offset: int, length: int) -> bytes:
        self._enter("read", offset, length)
        return self.disk.pread(offset, length)

    def pwrite(self, offset: int, data: bytes | memoryview) -> None:
        data = bytes(data)
        if self._enter("write", offset, len(data)) is Cut.DURING:
            # The board died part-way: some of its sectors reached the disk.
            for at in range(0, len(data), BLOCK):
                if self._rng.random() < 0.5:
                    self.disk.pwrite(offset + at, data[at:at + BLOCK])
            self._lost("during write")
        self.disk.pwrite(offset, data)

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        if self._enter("zeroes", offset, length) is Cut.DURING:
            for at in range(0, length, BLOCK):
                if self._rng.random() < 0.5:
                    self.disk.write_zeroes(offset + at, min(BLOCK, length - at))
            self._lost("during zeroes")
        self.disk.write_zeroes(offset, length, punch=punch)

    def flush(self) -> None:
        if self._enter("flush", 0, 0) is Cut.DURING:
            if self._rng.random() < 0.5:
                self.disk.flush()  # the command reached the disk before the board died
            self._lost("during flush")
        self.disk.flush()

    def close(self) -> None:
        pass  # the disk outlives the board

    def _enter(self, op: str, offset: int, length: int) -> Cut | None:
        return self.rail.enter(IoEvent(self.device, op, offset, length))

    def _lost(self, where: str) -> None:
        self.rail.cut(f"{where} {self.device}")
        raise MediumPowerLost(f"{self.device}: power cut {where}")


class SimNetwork:
    """The two links between the nodes, in memory: frames arrive some loop turns later,
    or not at all, twice, out of order, or with a flipped bit (the seal refuses it)."""

    def __init__(self, rng: random.Random, *, lossy: bool = True) -> None:
        self.rng = rng
        self.lossy = lossy
        self.ends: dict[tuple[str, str], SimLink] = {}
        self.sent = self.dropped = self.duplicated = self.corrupted = 0
        # Called after a node handed a frame to a link (the torture's cut point).
        self.on_send: Callable[[str], None] = lambda node: None

    def opener(self, node: str, rail: PowerRail) -> Callable[..., SimLink]:
        def open_link(url: str, on_payload: Callable[[str, bytes], None],
                      on_state: Callable[[str, bool], None]) -> SimLink:
            return SimLink(self, node, url, rail, on_payload, on_state)
        return open_link

    def carry(self, sender: SimLink, payload: bytes) -> None:
        self.sent += 1
        rng = self.rng
        copies = 1
        if self.lossy:
            roll = rng.random()
            if roll < 0.02:
                self.dropped += 1
                return
            if roll < 0.03:
                copies = 2
                self.duplicated += 1
        peer = "b" if sender.node == "a" else "a"
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            data = payload
            if self.lossy and rng.random() < 0.005 and data:
                flipped = bytearray(data)
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                data = bytes(flipped)
                self.corrupted += 1
            self._deliver_later(loop, (sender.url, peer), data, rng.randrange(6))

    def _deliver_later(self, loop: asyncio.AbstractEventLoop, to: tuple[str, str],
                       payload: bytes, turns: int) -> None:
        if turns:
            loop.call_soon(self._deliver_later, loop, to, payload, turns - 1)
            return
        end = self.ends.get(to)
        if end is not None and end.up:
            end.counters.frames_received += 1
            end.counters.bytes_received += len(payload)
            end.on_payload(end.url, payload)


class SimLink:
    """One node's end of one in-memory link (the ``PeerLink`` protocol)."""

    def __init__(self, net: SimNetwork, node: str, url: str, rail: PowerRail,
                 on_payload: Callable[[str, bytes], None],
                 on_state: Callable[[str, bool], None]) -> None:
        self.net = net
        self.node = node
        self.url = self.name = url
        self.kind = "tcp" if url.startswith("tcp://") else "serial"
        self.rail = rail
        self.on_payload = on_payload
        self.on_state = on_state
        self.counters = LinkCounters()
        self.last_error: str | None = None
        self._open = False
        self._enabled = True

    @property
    def up(self) -> bool:
        return self._open and self._enabled and self.rail.on

    @property
    def enabled(self) -> bool:
        return self._enabled

    def start(self) -> None:
        self._open = True
        self.net.ends[(self.url, self.node)] = self
        self.on_state(self.url, True)

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        self.on_state(self.url, self.up)

    def send(self, payload: bytes) -> None:
        if not self.up:
            self.counters.frames_dropped += 1
            return
        self.counters.frames_sent += 1
        self.counters.bytes_sent += len(payload)
        self.net.carry(self, payload)
        self.net.on_send(self.node)

    async def close(self) -> None:
        self._open = False
        if self.net.ends.get((self.url, self.node)) is self:
            del self.net.ends[(self.url, self.node)]


class _FramImage:
    """A copy of a FRAM's bytes, read by the oracle (the node keeps its file locked)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def slow_writes(self) -> bool:
        return False

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        raise NvramError(errno.EROFS, "the oracle's FRAM copy is read-only")

    def flush(self) -> None:
        pass

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


# -- configuration and figures ------------------------------------------------------------


@dataclass
class PairTortureConfig:
    cuts: int = 200
    seed: int = 1
    volume_size: int = 4 * MiB
    region_size: int = 64 << 10
    record_regions: int = 16
    mirror_queue: int = 512 << 10
    rounds: int = 40  # most request rounds per cycle before an idle cut
    victims: tuple[str, ...] = VICTIMS
    phases: tuple[str, ...] = PAIR_PHASES
    commit_modes: tuple[str, ...] = ("group-commit", "inline")
    points: tuple[str, ...] = ("recovery-first", "latency-first", "sequential-lru")
    lossy_links: bool = True
    lease_s: float = 3.0
    mode: str = "primary-backup"  # or "active-active": both nodes serve (issue 16)
    workdir: str | None = None
    keep: bool = False
    stop_on_failure: bool = True
    progress: Callable[[int, Report], None] | None = None


@dataclass
class PairReport(Report):
    cuts_by_victim: dict[str, int] = field(default_factory=dict)
    failovers: int = 0  # the serving node changed between two cycles
    highest_epoch: int = 0
    strict_checks: int = 0  # cuts checked against the surviving holder's HELD alone
    writes_refused: int = 0  # host writes failed while the pair failed over (EIO)
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_duplicated: int = 0
    frames_corrupted: int = 0
    handovers: int = 0  # active-active: regions that moved between the nodes


class PairBlockModel(BlockModel):
    """``BlockModel`` for a host that goes on writing after a failed request: a failed
    write may or may not have landed, so reads of its blocks are not checked until the
    next write to them completes or the next check rebases them."""

    def failed(self, blocks: range) -> None:
        for b in blocks:
            self.settled[b] = False


_PROFILE = """\
name = "torture-pair"
description = "pair power-cut torture: a file FRAM per node, media shared by both"

[nvram]
kind = "file"
path = "{{data_dir}}/nvram.bin"
size = {nvram_size}
sync = {sync}

[media.local]
kind = "file"
path = "{local}"

[media.second]
kind = "file"
path = "{second}"
"""


class _CycleFailed(Exception):
    pass


def _quiet_about_power_cuts(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(context.get("exception"), (PowerLost, MediumPowerLost, OSError)):
        return
    loop.default_exception_handler(context)


@dataclass
class _Node:
    name: str
    data_dir: Path
    app: Appliance | None = None
    rail: PowerRail | None = None
    fram: FileFram | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    media_events: int = 0
    sends: int = 0

    @property
    def up(self) -> bool:
        return self.app is not None and self.rail is not None and self.rail.on


class PairTorture:
    def __init__(self, config: PairTortureConfig) -> None:
        self.cfg = config
        self.rng = random.Random(f"{config.seed}/pair-workload")
        self.plan_rng = random.Random(f"{config.seed}/pair-plan")
        self.device_rng = random.Random(f"{config.seed}/pair-devices")
        self.step_rng = random.Random(f"{config.seed}/pair-steps")
        self.net = SimNetwork(random.Random(f"{config.seed}/pair-net"),
                              lossy=config.lossy_links)
        self.report = PairReport(seed=config.seed)
        self.nblocks = config.volume_size // BLOCK
        self.model = PairBlockModel(self.nblocks)
        self.token = 0
        self.now = 1e9
        self.streams = [self.rng.randrange(self.nblocks) for _ in range(3)]
        self.hot = [self.rng.randrange(self.nblocks) for _ in range(8)]
        self.nodes: dict[str, _Node] = {}
        self._last_serving: str | None = None
        self._steps_taken = 0
        # The cut armed for this cycle: victims, the node whose event trips it, what.
        self._victims: tuple[str, ...] = ()
        self._trigger: str | None = None
        self._phase = "idle"
        self._countdown = 0
        self._fired: str | None = None
        for what, known in (("victims", VICTIMS), ("phases", PAIR_PHASES)):
            chosen = getattr(config, what)
            if not chosen or any(c not in known for c in chosen):
                raise ValueError(f"pair torture {what}: {chosen}; known: {known}")

    # -- top level ------------------------------------------------------------------

    async def run(self) -> PairReport:
        cfg = self.cfg
        if cfg.volume_size % cfg.region_size or cfg.region_size % BLOCK:
            raise ValueError("volume size must be a multiple of the region size, "
                             "and the region size of 4 KiB")
        scratch = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(
            prefix="tandem-torture-pair-",
            dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        scratch.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_about_power_cuts)
        started = time.monotonic()
        try:
            self._build_world(scratch)
            for node in self.nodes.values():
                await self._boot(node)
            for cycle in range(cfg.cuts):
                try:
                    await self._cycle(cycle)
                except _CycleFailed:
                    if cfg.stop_on_failure:
                        break
                if cfg.progress is not None:
                    cfg.progress(cycle + 1, self.report)
            else:
                with contextlib.suppress(_CycleFailed):
                    await self._quiet(cfg.cuts)
                    await self._compare_when_drained(cfg.cuts)
        finally:
            for node in self.nodes.values():
                if node.app is not None:
                    if node.rail is not None:
                        node.rail.cut("end of run")
                    await self._halt(node)
            self.report.seconds = round(time.monotonic() - started, 2)
            boots = max(1, self.report.boots)
            self.report.mean_resync_bytes = round(self.report.resync_bytes / boots, 1)
            net = self.net
            self.report.frames_sent = net.sent
            self.report.frames_dropped = net.dropped
            self.report.frames_duplicated = net.duplicated
            self.report.frames_corrupted = net.corrupted
            for disk in (getattr(self, "d", None), getattr(self, "m", None)):
                if disk is not None:
                    disk.close()
            if not cfg.keep and not cfg.workdir:
                shutil.rmtree(scratch, ignore_errors=True)
        return self.report

    def _build_world(self, scratch: Path) -> None:
        cfg = self.cfg
        local, second = scratch / "d.img", scratch / "m.img"
        # The holder's HELD table holds the record and the clears on their way.
        entries = 2 * cfg.record_regions + 8
        self.boards: dict[str, str] = {}
        for mode, sync in (("group-commit", "false"), ("inline", '"process"')):
            board = scratch / f"board-{mode}.toml"
            board.write_text(_PROFILE.format(nvram_size=required_bytes(entries) + 64,
                                             sync=sync, local=local, second=second))
            self.boards[mode] = str(board)
        key = scratch / "pair.key"
        key.write_bytes(b"pair torture shared key, not a secret")
        self.key_file = str(key)

        def disk(role: str, path: Path) -> VolatileCacheMedium:
            inner = open_profile_medium(role, {"kind": "file", "path": str(path)},
                                        cfg.volume_size)
            return VolatileCacheMedium(inner, rail=None, name=role, cache=True,
                                       rng=self.device_rng)

        self.d = disk("local", local)
        self.m = disk("second", second)
        self.net.on_send = self._sent
        for name in NODES:
            self.nodes[name] = _Node(name, scratch / name)

    def _settings(self, node: _Node) -> Settings:
        cfg = self.cfg
        mode = self.plan_rng.choice(cfg.commit_modes)
        point = self.plan_rng.choice(cfg.points)
        setup = f"{mode}/{point}"
        self.report.cycles_by_setup[setup] = self.report.cycles_by_setup.get(setup, 0) + 1
        pair = PairSettings(node=node.name, peers=LINK_URLS, key_file=self.key_file,
                            role=PRIMARY if node.name == "a" else RECORD_HOLDER,
                            lease_s=cfg.lease_s, anti_entropy_s=30.0, tick_s=None,
                            mode=cfg.mode)
        return Settings(
            board=self.boards[mode], data_dir=str(node.data_dir), size=cfg.volume_size,
            region_size=cfg.region_size,
            resync_budget=cfg.record_regions * cfg.region_size,
            mirror_queue=cfg.mirror_queue, idle_evict_s=0.3, tidy_interval_s=None,
            serve_nbd=False, serve_console=False, point=point, pair=pair,
            mirror_tuning=MirrorConfig(queue_limit_bytes=cfg.mirror_queue,
                                       batch_bytes=256 << 10,
                                       copy_chunk_bytes=4 * cfg.region_size,
                                       retry_initial_s=0.0, retry_max_s=0.0))

    def _fail(self, cycle: int, what: str) -> None:
        message = f"cut {cycle} (seed {self.cfg.seed}): {what}"
        log.error("%s", message)
        if len(self.report.failures) < 20:
            self.report.failures.append(message)

    # -- boards on and off ----------------------------------------------------------

    async def _boot(self, node: _Node) -> None:
        rail = PowerRail()
        node.data_dir.mkdir(parents=True, exist_ok=True)

        def nvram_opener(spec: Mapping[str, Any]) -> Nvram:
            nvram = open_nvram(spec)
            assert isinstance(nvram, FileFram)
            node.fram = nvram
            return nvram

        def medium_opener(role: str, spec: Any, default_size: int) -> Medium:
            return BoardPort(self.d if role == "local" else self.m, rail, role,
                             self.device_rng)

        env = Environment(clock=lambda: self.now,
                          executor=lambda name: StepExecutor(self.step_rng),
                          open_nvram=nvram_opener, open_medium=medium_opener,
                          open_peer_link=self.net.opener(node.name, rail))
        app = Appliance(self._settings(node), env)
        app.open_storage()
        fram = node.fram
        assert fram is not None
        rail.sense("nvram", lambda: fram.powered)
        rail.when_cut(lambda: fram.arm_power_cut(0))  # the FRAM goes down with the board
        rail.when_cut(lambda: self._cut_victims(f"{node.name} lost power"))
        rail.trip = lambda event: self._trip(node, event)
        node.app, node.rail = app, rail
        await app.start_storage()
        self.report.boots += 1

    async def _halt(self, node: _Node) -> None:
        app = node.app
        if app is None:
            return
        if app.pair is not None:
            self.report.handovers += app.pair.core.handovers
        await app.halt()
        for task in list(node.tasks):
            task.cancel()
        for task in list(node.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        node.tasks.clear()
        if node.fram is not None:
            node.fram.power_on()
        app.close_devices()
        node.app = node.rail = node.fram = None

    def _cut_victims(self, cause: str) -> None:
        """One victim lost power: the others of this cut go at the same instant."""
        for name in self._victims:
            rail = self.nodes[name].rail
            if rail is not None and rail.on:
                rail.cut(cause)

    # -- when the power goes --------------------------------------------------------

    def _arm(self, victims: tuple[str, ...], phase: str) -> None:
        self._victims = victims
        self._phase = phase
        self._fired = None
        self._trigger = self.plan_rng.choice(victims)
        serving = self._serving()
        if phase == "media" and serving is not None and serving.name in victims:
            self._trigger = serving.name  # only the serving node writes D and M
        trigger = self.nodes[self._trigger]
        if phase == "fram":
            assert trigger.fram is not None
            trigger.fram.arm_power_cut(self.plan_rng.randrange(0, 64))
        elif phase == "media":
            self._countdown = self.plan_rng.randrange(1, 60)
        elif phase == "link":
            self._countdown = self.plan_rng.randrange(1, 120)

    def _trip(self, node: _Node, event: IoEvent) -> Cut | None:
        if self._phase != "media" or node.name != self._trigger or self._fired:
            return None
        if event.op == "read":
            return None
        self._countdown -= 1
        if self._countdown > 0:
            return None
        self._fired = "media"
        return self.plan_rng.choice((Cut.BEFORE, Cut.DURING))

    def _sent(self, name: str) -> None:
        if self._phase != "link" or name != self._trigger or self._fired:
            return
        self._countdown -= 1
        if self._countdown <= 0:
            self._fired = "link"
            rail = self.nodes[name].rail
            if rail is not None:
                rail.cut("after a frame was sent")

    def _cut_fired(self) -> bool:
        return any(not self.nodes[v].up for v in self._victims)

    # -- one cycle ------------------------------------------------------------------

    async def _cycle(self, cycle: int) -> None:
        failures_before = len(self.report.failures)
        await self._quiet(cycle)
        if cycle == 0 or self.rng.random() < 0.2:
            await self._compare_when_drained(cycle)
        serving = self._serving()
        assert serving is not None
        if self._last_serving is not None and serving.name != self._last_serving:
            self.report.failovers += 1
        self._last_serving = serving.name
        if self.active_active:
            serving = self.plan_rng.choice(self._servers())
        holder = next(n for n in self.nodes.values() if n is not serving)
        kind = self.plan_rng.choice([v for v in self.cfg.victims
                                     for _ in range(_VICTIM_WEIGHTS[v])])
        victims = {"primary": (serving.name,), "holder": (holder.name,),
                   "both": NODES}[kind]
        writes = kind != "holder" or holder in self._servers()
        phases = [p for p in self.cfg.phases if writes or p != "media"] \
            or ["idle"]  # a record-holder writes neither D nor M
        phase = self.plan_rng.choice([p for p in phases for _ in range(_PHASE_WEIGHTS[p])])
        self._arm(victims, phase)
        await self._workload(cycle)
        fired = self._fired or ("fram" if phase == "fram" and self._cut_fired() else None)
        if not self._cut_fired():
            for name in victims:
                rail = self.nodes[name].rail
                assert rail is not None
                rail.cut("idle")
            fired = "idle"
        label = f"{kind}/{fired or phase}"
        self.report.cuts += 1
        self.report.cuts_by_phase[fired or phase] = \
            self.report.cuts_by_phase.get(fired or phase, 0) + 1
        self.report.cuts_by_victim[label] = self.report.cuts_by_victim.get(label, 0) + 1
        await self._power_off(cycle, victims, kind)
        await self._come_back(victims)
        if len(self.report.failures) > failures_before:
            raise _CycleFailed

    async def _power_off(self, cycle: int, victims: tuple[str, ...], kind: str) -> None:
        self._phase = "idle"
        for name in victims:
            await self._halt(self.nodes[name])
        if kind == "both":  # the site went dark: the disks' caches too
            for disk in (self.d, self.m):
                disk.settle(self.device_rng.choice(("random", "random", "lose", "keep")),
                            self.device_rng)
            self.d.cache = self.device_rng.random() < 0.75
        self._check_recorded(cycle, victims)

    async def _come_back(self, victims: tuple[str, ...]) -> None:
        """The victims come back after a while: sooner or later than a takeover."""
        lease = self.cfg.lease_s + 1.0
        steps = int(self.plan_rng.uniform(0, 2.5 * lease) / STEP_S)
        order = list(victims)
        self.plan_rng.shuffle(order)
        for name in order:
            await self._steps(steps // len(order))
            await self._boot(self.nodes[name])

    # -- stepping the world ---------------------------------------------------------

    async def _steps(self, n: int, until: Callable[[], bool] | None = None) -> bool:
        for _ in range(n):
            if until is not None and until():
                return True
            await self._step()
        return until is None or until()

    async def _step(self) -> None:
        self.now += STEP_S
        self._steps_taken += 1
        tidy = self._steps_taken % _TIDY_EVERY_STEPS == 0
        for node in self.nodes.values():
            if node.up:
                assert node.app is not None and node.app.pair is not None
                node.app.pair.runtime.tick()
                if tidy:
                    self._tidy(node)
        for _ in range(_TURNS_PER_STEP):
            await asyncio.sleep(0)

    @property
    def active_active(self) -> bool:
        return self.cfg.mode == "active-active"

    def _servers(self) -> list[_Node]:
        return [n for n in self.nodes.values() if n.up and n.app is not None
                and n.app.pair is not None and n.app.pair.core.role == PRIMARY
                and n.app.pair.core.serving]

    def _serving(self) -> _Node | None:
        """The node the host writes to (active-active: the first of those serving)."""
        servers = self._servers()
        if self.active_active:
            return servers[0] if servers else None
        return servers[0] if len(servers) == 1 else None

    def _healthy(self) -> bool:
        """Both up, one serving (active-active: both, after failback), every core
        connected, nothing being handed over."""
        if not all(n.up for n in self.nodes.values()) or self._serving() is None:
            return False
        if self.active_active and len(self._servers()) < len(self.nodes):
            return False  # a returning node serves again once it took its record back
        for node in self.nodes.values():
            pair = node.app.pair if node.app is not None else None
            assert pair is not None
            cores = [pair.core] + ([pair.holder.core] if pair.holder is not None else [])
            if any(core.state not in (PeerState.CONNECTED, PeerState.DEGRADED_LINK)
                   for core in cores):
                return False
        return True

    def _pending(self) -> bool:
        return any(n.tasks for n in self.nodes.values())

    async def _quiet(self, cycle: int) -> None:
        """Wait for the pair to be healthy and every request to have finished, then check
        what D holds against what the host was promised."""
        if not await self._steps(_HEALTHY_STEPS,
                                 lambda: self._healthy() and not self._pending()):
            self.report.hangs += 1
            self._fail(cycle, f"the pair did not become healthy in "
                              f"{_HEALTHY_STEPS * STEP_S:.0f} simulated seconds: "
                              f"{self._describe()}")
            raise _CycleFailed
        serving = self._serving()
        assert serving is not None and serving.app is not None
        assert serving.app.pair is not None
        self.report.highest_epoch = max(self.report.highest_epoch,
                                        serving.app.pair.core.epoch)
        # The check takes what D holds as each block's only version from now on, so it
        # must be durable: an idle disk destages its cache (a site cut later must not
        # take back what the check already counted). M keeps its cache: what it may
        # lose is the records' business.
        self.d.flush()
        checked, failures = self.model.check_and_rebase(self.d.pread(0, self.d.size))
        self.report.acked_checked += checked
        self.report.lost += len(failures)
        for failure in failures[:5]:
            self._fail(cycle, f"lost write: {failure}")

    def _describe(self) -> str:
        parts = []
        for node in self.nodes.values():
            if not node.up or node.app is None or node.app.pair is None:
                parts.append(f"{node.name}: down")
                continue
            core = node.app.pair.core
            status = core.status()
            parts.append(f"{node.name}: {core.role} {status.state} epoch {core.epoch} "
                         f"serving {core.serving} frozen {core.frozen} "
                         f"tasks {len(node.tasks)}")
            holder = node.app.pair.holder
            if holder is not None:  # active-active: the core holding the peer's record
                h = holder.core.status()
                parts[-1] += (f" (peer's record: {h.role} {h.state} epoch {h.epoch}, "
                              f"{h.held_regions} held, {h.local_copy_regions} owned, "
                              f"{h.resync_regions} to copy, {h.clears_queued} clears, "
                              f"full resync {h.full_resync})")
        return "; ".join(parts)

    # -- the oracle -----------------------------------------------------------------

    def _differing(self) -> list[int]:
        d = self.d.pread(0, self.d.size)
        m = self.m.pread(0, self.d.size)
        if d == m:
            return []
        region = self.cfg.region_size
        return [r for r in range(len(d) // region)
                if d[r * region:(r + 1) * region] != m[r * region:(r + 1) * region]]

    def _fram_says(self, name: str) -> tuple[set[int], bool, bool, str]:
        """What a node's FRAM durably names: (regions, everything?, complete?, role)."""
        path = self.nodes[name].data_dir / "nvram.bin"
        if not path.exists():
            return set(), False, False, ""
        image = _FramImage(path.read_bytes())
        windows = [(0, None)]
        if self.active_active:  # the node's own record, and the peer's held here
            half = image.size // 2
            windows = [(0, half), (half, image.size - half)]
        named: set[int] = set()
        full = complete = False
        role = ""
        for base, size in windows:
            try:
                loaded = PairFram(image, base=base, size=size).load()
            except PairLayoutError:
                continue
            state = loaded.state
            named |= set(loaded.held) | set(loaded.intent)
            full = full or state.full_resync
            complete, role = state.held_complete, state.role
        return named, full, complete, role

    def _check_recorded(self, cycle: int, victims: tuple[str, ...]) -> None:
        differ = self._differing()
        if not differ:
            return
        survivors = [n for n in NODES if n not in victims]
        strict = False
        named: set[int] = set()
        everything = False
        if survivors and not self.active_active:
            held, full, complete, role = self._fram_says(survivors[0])
            if role == RECORD_HOLDER and complete:
                # What a takeover by the survivor would trust, on its own.
                strict, named, everything = True, held, full
        if not strict:
            for name in NODES:
                regions, full, _, _ = self._fram_says(name)
                named |= regions
                everything = everything or full
        self.report.strict_checks += strict
        unrecorded = [] if everything else sorted(set(differ) - named)
        if unrecorded:
            self.report.unrecorded_regions += len(unrecorded)
            whose = f"the surviving holder {survivors[0]}'s HELD" if strict \
                else "both FRAMs"
            self._fail(cycle, f"regions {unrecorded[:10]} differ between D and M but "
                              f"{whose} name only {sorted(named)[:20]}")

    async def _compare_when_drained(self, cycle: int) -> None:
        serving = self._serving()
        if serving is None or serving.app is None:
            return
        mirror = serving.app.mirror
        waits = [asyncio.ensure_future(n.app.mirror.drained()) for n in self._servers()
                 if n.app is not None]
        try:
            ok = await self._steps(_HEALTHY_STEPS, lambda: all(w.done() for w in waits)
                                   and self._healthy())
        finally:
            for wait in waits:
                wait.cancel()
        if not ok:
            self.report.hangs += 1
            self._fail(cycle, f"the mirror did not drain: {mirror.status()}; "
                              f"{self._describe()}")
            raise _CycleFailed
        self.report.compares += 1
        differ = self._differing()
        if differ:
            self.report.divergent_regions += len(differ)
            self._fail(cycle, f"the mirror drained but regions {differ[:10]} differ "
                              f"(record {serving.app.record.regions()[:20]})")

    # -- the workload ---------------------------------------------------------------

    async def _workload(self, cycle: int) -> None:
        rng = self.rng
        for _ in range(self.cfg.rounds):
            if self._cut_fired():
                return
            serving = self._serving()
            if serving is None:
                await self._step()  # a failover or a lease renewal on its way
                continue
            started = self._round(self._servers() if self.active_active else [serving])
            def over(started: list[asyncio.Task[None]] = started) -> bool:
                return self._cut_fired() or all(t.done() for t in started)

            if not await self._steps(_ROUND_STEPS, over):
                self.report.hangs += 1
                self._fail(cycle, f"a round did not finish in {_ROUND_STEPS * STEP_S:.0f} "
                                  f"simulated seconds: {self._describe()}")
                raise _CycleFailed
            for task in started:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self.report.unexpected_errors += 1
                    self._fail(cycle, f"a request raised {task.exception()!r}")
            self.now += rng.expovariate(1 / 0.02)
            if rng.random() < 0.15:
                self._tidy(serving)

    def _tidy(self, node: _Node) -> None:
        """What the appliance's tidy task does (every half second on a board)."""
        if not node.up or node.app is None:
            return
        with contextlib.suppress(OSError):  # the power went during the eviction
            if node.app.record.tidy(self.now):
                node.app.volume.room_made()

    def _round(self, nodes: list[_Node]) -> list[asyncio.Task[None]]:
        """One to four requests on disjoint blocks, issued together (active-active: each
        through either node)."""
        rng = self.rng
        busy: set[int] = set()
        started: list[asyncio.Task[None]] = []
        node = nodes[0]

        def start(coro: Any) -> None:
            task = asyncio.get_running_loop().create_task(coro)
            node.tasks.add(task)
            task.add_done_callback(node.tasks.discard)
            started.append(task)

        for _ in range(1 + min(3, int(rng.expovariate(1.0)))):
            node = rng.choice(nodes) if len(nodes) > 1 else nodes[0]
            kind = rng.choices(("write", "fua", "flush", "trim", "read"),
                               (58, 8, 10, 6, 14))[0]
            if kind == "flush":
                start(self._flush(node))
                continue
            blocks = self._pick_blocks(kind)
            if busy.intersection(blocks):
                continue
            busy.update(blocks)
            if kind == "read":
                start(self._read(node, blocks))
            elif kind == "trim":
                start(self._trim(node, blocks))
            else:
                start(self._write(node, blocks, kind == "fua"))
        return started

    def _pick_blocks(self, kind: str) -> range:
        rng = self.rng
        n = self.nblocks
        how = rng.random()
        if kind == "trim":
            length = rng.choice((1, 2, 4, 16))
            start = rng.randrange(n)
        elif how < 0.4:
            i = rng.randrange(len(self.streams))
            length = rng.choice((1, 2, 4, 8, 16))
            start = self.streams[i]
            if start + length > n:
                start = 0
            self.streams[i] = (start + length) % n
        elif how < 0.7:
            start = rng.choice(self.hot)
            length = rng.choice((1, 1, 2, 4))
        else:
            start = rng.randrange(n)
            length = rng.choice((1, 2, 8, 32))
        length = min(length, n - start)
        return range(start, start + length)

    async def _write(self, node: _Node, blocks: range, fua: bool) -> None:
        assert node.app is not None
        volume = node.app.volume
        self.token += 1
        token = self.token
        data = b"".join(block_image(token, b) for b in blocks)
        await self._changed(node, blocks, token, fua,
                            lambda: volume.write(blocks[0] * BLOCK, data, fua=fua))

    async def _trim(self, node: _Node, blocks: range) -> None:
        assert node.app is not None
        volume = node.app.volume
        await self._changed(node, blocks, 0, False,
                            lambda: volume.trim(blocks[0] * BLOCK, len(blocks) * BLOCK))

    async def _changed(self, node: _Node, blocks: range, token: int, fua: bool,
                       request: Callable[[], Awaitable[None]]) -> None:
        """A host request that changes ``blocks`` to ``token``'s image, in the model."""
        self.model.issue(blocks, token)
        self.report.host_writes += 1
        try:
            await request()
        except (TargetError, OSError) as exc:
            self.model.failed(blocks)
            self._refused(node, exc)
            return
        except asyncio.CancelledError:
            self.model.failed(blocks)
            raise
        self.report.acked_writes += 1
        self.model.acked(blocks, durable=fua or not self.d.cache)

    async def _flush(self, node: _Node) -> None:
        assert node.app is not None
        volume = node.app.volume
        snapshot = self.model.flush_issued()
        try:
            await volume.flush()
        except (TargetError, OSError) as exc:
            self.model.flush_done(snapshot, ok=False)
            self._refused(node, exc)
            return
        except asyncio.CancelledError:
            self.model.flush_done(snapshot, ok=False)
            raise
        self.model.flush_done(snapshot, ok=True)

    async def _read(self, node: _Node, blocks: range) -> None:
        assert node.app is not None
        volume = node.app.volume
        try:
            data = await volume.read(blocks[0] * BLOCK, len(blocks) * BLOCK)
        except (TargetError, OSError) as exc:
            self._refused(node, exc)
            return
        for i, b in enumerate(blocks):
            expected = self.model.expected_now(b)
            if expected is None or expected < 0:
                continue
            self.report.reads_checked += 1
            if data[i * BLOCK:(i + 1) * BLOCK] != block_image(expected, b):
                self.report.read_mismatches += 1
                got = decode_block(data[i * BLOCK:(i + 1) * BLOCK], b)
                if len(self.report.failures) < 20:
                    self.report.failures.append(
                        f"seed {self.cfg.seed}: read of block {b} through {node.name} "
                        f"returned token {got}, last acknowledged write was {expected}")

    def _refused(self, node: _Node, exc: Exception) -> None:
        # With the power on, a request fails only while the pair fails over (a node that
        # turns out stale refuses what waits): the host sees EIO and retries elsewhere.
        if node.up:
            self.report.writes_refused += 1
            log.info("request failed on %s: %s", node.name, exc)


def run_pair_torture(config: PairTortureConfig) -> PairReport:
    """Run the pair torture in a fresh event loop (the CLI and the tests call this)."""
    quiet = logging.getLogger("tandem")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(PairTorture(config).run())
    finally:
        quiet.setLevel(level)


def format_pair_report(report: PairReport, config: PairTortureConfig) -> str:
    victims = " · ".join(f"{k} {v}" for k, v in sorted(report.cuts_by_victim.items(),
                                                        key=lambda kv: -kv[1]))
    mode = "" if config.mode == "primary-backup" else f" --pair-mode {config.mode}"
    lines = [
        f"tandem torture --pair{mode}: {report.cuts} power cuts · seed {report.seed} · "
        f"{config.volume_size // MiB} MiB volume · {config.region_size >> 10} KiB regions · "
        f"{report.seconds:.1f} s",
        f"  cuts by victim/phase:              {victims}",
        "  power-ons by setup:                "
        + " · ".join(f"{k} {v}" for k, v in sorted(report.cycles_by_setup.items())),
        f"  boots: {report.boots} · failovers: {report.failovers} · highest epoch: "
        f"{report.highest_epoch}"
        + (f" · regions handed over: {report.handovers}" if config.mode != "primary-backup"
           else ""),
        f"  host writes issued / acknowledged / refused: {report.host_writes} / "
        f"{report.acked_writes} / {report.writes_refused}",
        f"  acknowledged durable writes checked: {report.acked_checked}",
        f"  lost acknowledged writes:          {report.lost}",
        f"  differing regions not recorded:    {report.unrecorded_regions} "
        f"({report.strict_checks} cuts checked against the surviving holder alone)",
        f"  divergent regions after drain:     {report.divergent_regions}"
        f"  ({report.compares} full compares)",
        f"  host reads checked / wrong:        {report.reads_checked} / "
        f"{report.read_mismatches}",
        f"  frames sent / dropped / duplicated / corrupted: {report.frames_sent} / "
        f"{report.frames_dropped} / {report.frames_duplicated} / {report.frames_corrupted}",
        f"  unexpected errors / hangs:         {report.unexpected_errors} / {report.hangs}",
    ]
    lines += [f"  FAIL {f}" for f in report.failures[:10]]
    lines.append("  PASS" if report.ok else "  FAIL")
    return "\n".join(lines)


def main_pair(args: argparse.Namespace, seed: int) -> int:
    """``tandem torture --pair`` (options parsed by torture.py's ``register``)."""
    phases = tuple(p.strip() for p in (args.phases or ",".join(PAIR_PHASES)).split(",")
                   if p.strip())
    victims = tuple(v.strip() for v in args.victims.split(",") if v.strip())
    for what, chosen, known in (("phases", phases, PAIR_PHASES),
                                ("victims", victims, VICTIMS)):
        if not chosen or any(c not in known for c in chosen):
            print(f"tandem torture --pair: unknown {what} in {list(chosen)}; known: "
                  f"{', '.join(known)}", file=sys.stderr)
            return 2
    points = tuple(p.strip() for p in args.points.split(",") if p.strip())
    known_points = [*POINTS, "sequential-lru"]
    if not points or any(p not in known_points for p in points):
        print(f"tandem torture --pair: unknown points in {list(points)}; known: "
              f"{', '.join(known_points)}", file=sys.stderr)
        return 2
    config = PairTortureConfig(
        cuts=args.cuts, seed=seed, volume_size=args.size, region_size=args.region_size,
        record_regions=args.record_regions, victims=victims, phases=phases, points=points,
        workdir=args.workdir, keep=bool(args.workdir), stop_on_failure=not args.keep_going,
        mode=args.pair_mode)
    if not args.json and sys.stderr.isatty():
        def progress(done: int, report: Report) -> None:
            if done % 100 == 0 or done == config.cuts:
                print(f"\r  {done}/{config.cuts} cuts · lost {report.lost} · divergent "
                      f"{report.divergent_regions}", end="", file=sys.stderr, flush=True)
        config.progress = progress
    report = run_pair_torture(config)
    if config.progress is not None:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        print(format_pair_report(report, config))
    return 0 if report.ok else 1
