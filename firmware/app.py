"""`tandem run`: the appliance — board profile → NVRAM, media, record, mirror, frontends.

Start-up decides what must be resynced before anything is served:

- a valid record in NVRAM for this volume: its regions are copied to the second
  medium (in the background, while hosts are already served);
- no valid record, but media that already existed: the whole volume is copied,
  and the log says so loudly;
- a brand-new pair of media (both created now, both zero): nothing to copy.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from board import load_profile
from firmware.environment import Environment
from firmware.mirror.mirror import Mirror, MirrorConfig
from firmware.parsing import parse_host_port, parse_size
from firmware.peer.node import PairNode, PairSettings
from firmware.record.group_commit import GroupCommitStore
from firmware.record.layout import Geometry, LayoutError, new_volume_uuid
from firmware.record.policy import POINTS, RecordPolicy, SequentialLru, make_policy
from firmware.record.record import QUIET_EVICT_S, Record
from firmware.record.store import NvramRecordStore
from firmware.volume.volume import Volume
from hal.media.base import Medium
from hal.media.remote.medium import RemoteMedium
from hal.media.sticky import StickyFailureMedium

log = logging.getLogger("tandem")

# An active-active node's LUN: a command that a dead firmware left in the TCMU ring fails
# after this long, so a host's multipath moves it to the other node's path. Above any
# wait a live node makes a write do (a hand-over, a lease renewal: well under a second).
AA_CMD_TIME_OUT_S = 8

@dataclass
class Settings:
    board: str = "sim"
    data_dir: str = "tandem-data"
    size: int | None = None
    region_size: int | None = None
    resync_budget: int | None = None
    nbd_host: str = "127.0.0.1"
    nbd_port: int = 10809
    export: str = "tandem"
    console_tcp: str | None = None  # None: the profile's; "" or "off": none
    # The board's media paths, overridden (two appliances of a pair share one D and M).
    local_path: str | None = None
    second_path: str | None = None
    console_pty: bool | None = None
    mirror_queue: int = 64 << 20
    idle_evict_s: float | None = 2.0
    point: str = "latency-first"  # record policy: an operating point, or "sequential-lru"
    tidy_interval_s: float | None = 0.5  # None: no tidy task (the caller tidies)
    quiet_evict_s: float = QUIET_EVICT_S
    read_only: bool = False
    tcmu: bool = False
    tcm_loop: bool = False
    iscsi_portal: str | None = None
    iscsi_iqn: str | None = None
    tcmu_name: str = "tandem"
    # The second medium at another site instead of the profile's (issue 6): a
    # `tandem receive` at HOST:PORT (needs key_file) or an NBD URI.
    remote: str | None = None
    key_file: str | None = None
    rate_limit: int | None = None  # bytes/s on the link
    tls: bool = False
    tls_ca: str | None = None
    # The mirror's tuning; None: its defaults with mirror_queue as the queue limit.
    mirror_tuning: MirrorConfig | None = None
    # The frontends start() serves: NBD and the console (TCMU with tcmu).
    serve_nbd: bool = True
    serve_console: bool = True
    # A node of a pair (issue 15): the record lives on the peer (firmware/peer/node.py).
    pair: PairSettings | None = None


@dataclass
class StartupReport:
    resync_regions: int
    reason: str


class Appliance:
    """One running appliance; also the console's backend.

    The life cycle: ``open_storage()`` (NVRAM, media, the record and the resync
    decision; no event loop), ``await start_storage()`` (the mirror, the volume, the
    record's commits), ``await start()`` (that, and the frontends). It ends either with
    ``await stop()`` (flush, evict what is mirrored, persist, close) or, when the power
    went, with ``await halt()`` (nothing more is written) and ``close_devices()``.
    """

    def __init__(self, settings: Settings, env: Environment | None = None) -> None:
        self.settings = settings
        self.env = env or Environment()
        self.profile = load_profile(settings.board, data_dir=settings.data_dir)
        for role, path in (("local", settings.local_path), ("second", settings.second_path)):
            if path is not None:
                self.profile["media"][role]["path"] = path
        self.started_at = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._executors: list[concurrent.futures.Executor] = []
        self.nbd_server: Any = None
        self.tcmu: Any = None
        self.console: Any = None
        self.startup: StartupReport | None = None
        self.pair: PairNode | None = None

    # -- start-up -------------------------------------------------------------------

    def _defaults(self, key: str) -> Any:
        return self.profile.get("defaults", {}).get(key)

    def open_storage(self) -> None:
        """Open NVRAM and media, read the record and decide the resync (no event loop)."""
        s = self.settings
        if self.profile["nvram"].get("kind") == "file" or any(
                m.get("kind", "file") == "file" for m in self.profile["media"].values()):
            Path(s.data_dir).mkdir(parents=True, exist_ok=True)
        size = s.size or parse_size(self._defaults("size") or "1G")
        media_specs = self.profile["media"]
        existed = {role: _exists(spec) for role, spec in media_specs.items()}
        env = self.env
        self.local: Medium = env.open_medium("local", media_specs["local"], size)
        if s.remote:
            from firmware.second_medium import open_second_medium

            # The connect decision says whether a receiver holds our data; an NBD
            # export may hold anything, so it counts as existing (full copy if in doubt).
            existed["second"] = s.remote.startswith("nbd")
            # The link's I/O shares the appliance's loop when start-up runs on one.
            self.second: Medium = open_second_medium(
                s.remote, size=self.local.size, data_dir=s.data_dir,
                volume_created=not existed["local"], key_file=s.key_file, tls=s.tls,
                tls_ca=s.tls_ca, rate_limit=s.rate_limit, loop=_running_loop())
        else:
            self.second = env.open_medium("second", media_specs["second"], self.local.size)
        if self.second.size < self.local.size:
            raise SystemExit(f"tandem: second medium {self.second.name} ({self.second.size} B) "
                             f"is smaller than the local one ({self.local.size} B)")
        self.nvram = env.open_nvram(self.profile["nvram"])
        region_size = s.region_size or parse_size(self._defaults("region_size") or "64K")
        budget = s.resync_budget or parse_size(self._defaults("resync_budget") or "1G")
        fresh = not existed["local"] and not existed["second"]
        self.pair = None
        if s.pair is not None:
            self._open_pair(s.pair, region_size, budget, fresh)
            return
        self.store = NvramRecordStore(self.nvram)
        geometry, regions, report = self._recover_record(region_size, fresh)
        self.geometry = geometry
        self.startup = report
        policy: RecordPolicy
        if s.point == "sequential-lru":
            policy = SequentialLru()
            policy.config.idle_evict_s = s.idle_evict_s
        else:
            policy = make_policy(s.point)
        # A worker thread only pays off where an NVRAM write waits on a host disk: the
        # driver says whether it does.
        inline = not self.nvram.slow_writes
        self.commits = GroupCommitStore(
            self.store, inline=inline, executor=None if inline else self._executor("nvram"))
        self.record = Record(geometry, self.commits, capacity_regions=max(1, budget // region_size),
                             policy=policy, initial_regions=regions, now=env.clock(),
                             quiet_evict_s=s.quiet_evict_s)

    def _open_pair(self, settings: PairSettings, region_size: int, budget: int,
                   fresh: bool) -> None:
        """The record on the peer: the NVRAM holds the pair's tables, both media are
        written only while the pair allows it, the record's store is the pair's."""
        inline = not self.nvram.slow_writes
        self.pair = pair = PairNode(settings, self.nvram, media_existed=not fresh,
                                    clock=self.env.clock,
                                    fram_executor=None if inline else self._executor("nvram"),
                                    open_peer_link=self.env.open_peer_link)
        spec = self.profile.get("watchdog")
        if spec:
            from hal.watchdog import Watchdog

            pair.watchdog = Watchdog(str(spec.get("device", "/dev/watchdog")),
                                     spec.get("timeout_s"))
        self.local = pair.fence(self.local)
        self.second = pair.fence(self.second)
        # Both nodes number regions alike: the same volume and --region-size on both.
        self.geometry = Geometry(self.local.size, region_size, new_volume_uuid())
        self.startup = StartupReport(0, pair.startup)
        self.commits = pair.store  # type: ignore[assignment]  # the RecordStore seam
        # The record must fit the FRAM tables of the pair: what the record lets go sits
        # in the holder's table until its clear is acknowledged, so half of it is the
        # record's (the rest is for clears on their way); beyond, writes would wait on
        # the holder's room with the record unaware of it.
        capacity = max(1, budget // region_size)
        fits = max(1, (pair.fram.capacity - 1) // 2)
        if capacity > fits:
            log.info("pair: the record holds at most %d regions (%d MiB) in %d FRAM entries "
                     "per table, less than the resync budget's %d", fits,
                     (fits * region_size) >> 20, pair.fram.capacity, capacity)
            capacity = fits
        self.record = Record(self.geometry, pair.store, capacity_regions=capacity,
                             policy=make_policy(self.settings.point)
                             if self.settings.point != "sequential-lru" else SequentialLru(),
                             now=self.env.clock(), quiet_evict_s=self.settings.quiet_evict_s)

    def _executor(self, name: str) -> concurrent.futures.Executor:
        executor = self.env.executor(name)
        self._executors.append(executor)
        return executor

    def _recover_record(self, region_size: int, fresh: bool
                        ) -> tuple[Geometry, list[int], StartupReport]:
        volume_size = self.local.size
        try:
            loaded = self.store.load()
        except LayoutError as exc:
            geometry = Geometry(volume_size, region_size, new_volume_uuid())
            if fresh:
                self.store.format(geometry, ())
                return geometry, [], StartupReport(0, "new volume: both media created empty")
            return self._full_resync(
                geometry, f"NO VALID RECORD IN NVRAM ({exc}): FULL RESYNC of {volume_size} "
                          f"bytes to {self.second.name}", f"full resync: {exc}")
        old = loaded.header.geometry
        if old.volume_size != volume_size:
            return self._full_resync(
                Geometry(volume_size, region_size, new_volume_uuid()),
                f"RECORD IS FOR A {old.volume_size}-BYTE VOLUME, LOCAL MEDIUM IS "
                f"{volume_size}: FULL RESYNC", "volume size changed")
        if loaded.damaged_pairs:
            log.warning("record: %d damaged bitmap pairs read as the union of both values",
                        loaded.damaged_pairs)
        if old.region_size == region_size:
            self.store.adopt(loaded)
            return old, loaded.regions, StartupReport(
                len(loaded.regions), f"record names {len(loaded.regions)} regions")
        # New region size: name every new region overlapping an old one (a superset).
        geometry = Geometry(volume_size, region_size, old.volume_uuid)
        regions = sorted({r for old_region in loaded.regions
                          for r in geometry.span(old_region * old.region_size,
                                                 old.region_size)})
        log.warning("record: region size %d → %d; %d old regions map to %d new ones",
                    old.region_size, region_size, len(loaded.regions), len(regions))
        self.store.format(geometry, regions, generation=loaded.header.generation + 1)
        return geometry, regions, StartupReport(len(regions), "region size changed")

    def _full_resync(self, geometry: Geometry, warning: str, reason: str
                     ) -> tuple[Geometry, list[int], StartupReport]:
        """Name every region, persisted first: a crash during the copy starts it again."""
        everything = list(range(geometry.nregions))
        log.warning("*** %s ***", warning)
        self.store.format(geometry, everything)
        return geometry, everything, StartupReport(len(everything), reason)

    async def start_storage(self) -> None:
        """The mirror, the volume and the record's commits, on the running loop."""
        if self.startup is None:
            self.open_storage()
        s = self.settings
        env = self.env
        # The volume and the mirror share one view of the local medium, so that a flush
        # error either of them meets fails every later write and flush of both.
        self.local_io = StickyFailureMedium(self.local)
        tuning = s.mirror_tuning or MirrorConfig(queue_limit_bytes=s.mirror_queue)
        self.mirror = Mirror(self.local_io, self.second, self.record, tuning,
                             on_progress=lambda: self.volume.room_made(), clock=env.clock,
                             executor=self._executor("mirror"))
        self.volume = Volume(self.local_io, self.record, self.mirror, read_only=s.read_only,
                             clock=env.clock, io_executor=self._executor("local"))
        self.commits.start()
        self.mirror.start()
        if s.tidy_interval_s is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._tidy(s.tidy_interval_s), name="tidy"))
        if self.pair is not None:
            await self.pair.start(self.record, self.mirror)

    async def start(self) -> None:

        await self.start_storage()
        if self.settings.serve_console:
            await self._start_console()
        if self.pair is None:
            await self._start_frontends()
            return
        # A node of a pair serves hosts only while the pair says so (a takeover starts
        # them on the record-holder; a primary that turns out stale stops them).
        self._frontends_wanted = False
        self._frontends_change: asyncio.Task[None] | None = None
        self.pair.serve = self._want_frontends
        self._want_frontends(self.pair.core.serving)

    async def _start_frontends(self) -> None:
        from firmware.frontends.nbd.server import serve_nbd

        s = self.settings
        if s.serve_nbd:
            self.nbd_server = await serve_nbd(self.volume, s.nbd_host, s.nbd_port,
                                              export_name=s.export)
        if s.tcmu:
            from firmware.frontends.tcmu.service import start_tcmu_frontend

            pair = self.pair if self.pair is not None and self.pair.active_active \
                else None
            self.tcmu = await start_tcmu_frontend(
                self.volume, s.tcmu_name, tcm_loop=s.tcm_loop, iscsi_portal=s.iscsi_portal,
                iscsi_iqn=s.iscsi_iqn,
                # Active-active: one LUN identity, two port groups, no reservations.
                serial=pair.scsi_serial() if pair else None,
                ports=pair.port_groups() if pair else None,
                cmd_time_out_s=AA_CMD_TIME_OUT_S if pair else None,
                refuse_reservations=pair is not None)

    async def _stop_frontends(self) -> None:
        if self.tcmu is not None:
            await self.tcmu.close()
            self.tcmu = None
        if self.nbd_server is not None:
            await self.nbd_server.close()
            self.nbd_server = None

    def _want_frontends(self, serving: bool) -> None:
        """The pair's word (any number of times): start or stop the frontends, one
        change at a time, in the order asked."""
        if serving == self._frontends_wanted:
            return
        self._frontends_wanted = serving
        before = self._frontends_change

        async def change() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            try:
                if serving:
                    await self._start_frontends()
                    log.info("pair: serving hosts")
                    if self.tcmu is not None:
                        # Scripts and the rig's pair check find the new LUN here.
                        log.info("pair: SCSI disk %s, iSCSI %s", self.tcmu.scsi_disk,
                                 self.tcmu.iscsi_url)
                else:
                    await self._stop_frontends()
                    log.info("pair: not serving hosts (record-holder)")
            except OSError as exc:
                log.error("pair: frontends: %s", exc)

        self._frontends_change = asyncio.get_running_loop().create_task(change(),
                                                                        name="frontends")

    async def _start_console(self) -> None:
        from firmware.console.commands import console_commands
        from firmware.console.server import ConsoleServer

        spec = self.profile.get("console", {})
        tcp_text = self.settings.console_tcp
        if tcp_text is None:
            tcp_text = spec.get("tcp", "")
        tcp = None
        if tcp_text and tcp_text != "off":
            tcp = parse_host_port(tcp_text, default_host="127.0.0.1")
        pty = spec.get("pty", False) if self.settings.console_pty is None \
            else self.settings.console_pty
        from firmware.mirror.commands import register_mirror_commands

        table = console_commands(self)
        register_mirror_commands(table, lambda: self.mirror)  # verify, link
        if self.pair is not None:
            from firmware.peer.commands import register_peer_commands

            register_peer_commands(table, lambda: self.pair)
        self.console = ConsoleServer(table, tcp=tcp, pty=pty,
                                     serial_device=spec.get("device"),
                                     baudrate=int(spec.get("baudrate", 115200)))
        await self.console.start()

    async def _tidy(self, interval_s: float) -> None:
        # The record sheds what its policy names and, after quiet_evict_s without a
        # host write, every mirrored region (the same code the replay runs).
        while True:
            await asyncio.sleep(interval_s)
            try:
                shed = self.record.tidy(self.env.clock())
                if shed:
                    self.volume.room_made()
            except OSError as exc:
                log.error("record tidy failed: %s", exc)

    async def _stop_serving(self) -> None:
        change = getattr(self, "_frontends_change", None)
        if self.pair is not None and change is not None:
            self.pair.serve = lambda serving: None
            await asyncio.gather(change, return_exceptions=True)
        await self._stop_frontends()
        if self.console is not None:
            self.console.close()
            await self.console.wait_closed()
        for task in self._tasks:
            task.cancel()
        await self.mirror.close()

    async def stop(self) -> None:
        await self._stop_serving()
        with contextlib.suppress(OSError):
            self.local_io.flush()  # a failed medium raises: then nothing is evicted
            self.record.evict_clean()  # what is mirrored needs no resync at next start
        await self.commits.close()
        if self.pair is not None:
            await self.pair.stop(graceful=True)
        self._shutdown_executors(wait=True)
        if isinstance(self.second, RemoteMedium):
            await self.second.aclose()  # its link runs on this loop: goodbye, then close
        self.close_devices()

    async def halt(self) -> None:
        """The power went: stop every task and frontend, write nothing more (no flush, no
        eviction, no NVRAM transaction). The devices stay open for whoever inspects them;
        ``close_devices()`` closes them."""
        await self._stop_serving()
        await self.commits.abandon()
        if self.pair is not None:
            await self.pair.stop(graceful=False)
        self._shutdown_executors(wait=False)

    def close_devices(self) -> None:
        """Close the NVRAM and both media (whatever of them start-up opened)."""
        for name in ("local", "second", "nvram"):
            device = getattr(self, name, None)
            if device is not None:
                device.close()

    def _shutdown_executors(self, wait: bool) -> None:
        for executor in self._executors:
            executor.shutdown(wait=wait)
        self._executors.clear()

    # -- console backend ------------------------------------------------------------

    def status(self) -> dict[str, object]:
        record = self.record
        c = record.counters
        writes = c.hits + c.misses
        out: dict[str, object] = {
            "board": self.profile.get("name", self.settings.board),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "volume_size": self.geometry.volume_size,
            "region_size": self.geometry.region_size,
            "record_regions": len(record),
            "record_bytes": len(record) << record.region_shift,
            "record_capacity_regions": record.capacity,
            "hits": c.hits,
            "misses": c.misses,
            # NVRAM transactions as written (group commit: concurrent misses share one)
            "nvram_updates": self.commits.transactions,
            "nvram_bytes_written": self.commits.bytes_written,
            "record_updates": c.nvram_updates,
            "evictions": c.evictions,
            "idle_evictions": c.idle_evictions,
            "waits": c.waits,
            "predicted_added": c.predicted_added,
            "record_point": self.settings.point,
            "upd_per_kw": round(1000 * self.commits.transactions / writes, 2) if writes else 0.0,
        }
        out["resync_volume_bytes"] = out["record_bytes"]  # what a crash now would copy
        out.update(self.mirror.status())
        out["nbd_connections"] = self.nbd_server.connections if self.nbd_server else 0
        out["nvram_error"] = self.volume.nvram_error
        out["local_errors"] = self.volume.local_errors
        failure = self.local_io.failure
        out["local_medium_error"] = None if failure is None else failure.strerror
        if self.startup:
            out["startup"] = self.startup.reason
        if self.pair is not None:
            out.update(self.pair.status_keys())
        return out

    def record_regions(self) -> list[int]:
        return self.record.regions()

    def mirror_pause(self) -> None:
        self.mirror.pause()

    def mirror_resume(self) -> None:
        self.mirror.resume()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _exists(spec: dict[str, Any]) -> bool:
    path = spec.get("path")
    return bool(path) and os.path.exists(str(path)) and (
        spec.get("kind", "file") != "file" or os.path.getsize(str(path)) > 0)


async def _serve(settings: Settings) -> int:
    app = Appliance(settings)
    await app.start()
    s = settings
    print(f"tandem: board {app.profile.get('name')} · volume {app.local.size} bytes · "
          f"region {app.geometry.region_size} · {app.startup.reason if app.startup else ''}",
          flush=True)
    if app.pair is not None:
        node = app.pair
        listen = node.runtime.listener.address if node.runtime.listener else None
        print(f"tandem: pair node {node.config.node} (peer {node.config.peer}) · "
              f"{node.core.role} at epoch {node.core.epoch} · {node.startup}"
              + (f" · peer link listening on {listen[0]}:{listen[1]}" if listen else ""),
              flush=True)
        print(f"tandem: NBD on nbd://{s.nbd_host}:{s.nbd_port}/{s.export} "
              f"{'(serving)' if node.core.serving else '(once the pair allows)'}", flush=True)
    else:
        print(f"tandem: NBD on nbd://{s.nbd_host}:{s.nbd_port}/{s.export}", flush=True)
    if app.console.pty_path:
        print(f"tandem: console on pty {app.console.pty_path}", flush=True)
    if app.console.tcp_address:
        host, port = app.console.tcp_address
        print(f"tandem: console on socket://{host}:{port}", flush=True)
    if app.tcmu is not None:
        if app.tcmu.scsi_disk:
            print(f"tandem: SCSI disk {app.tcmu.scsi_disk} (tcm_loop)", flush=True)
        if app.tcmu.iscsi_url:
            print(f"tandem: iSCSI {app.tcmu.iscsi_url}", flush=True)
        from firmware.frontends.tcmu.service import notify_ready

        notify_ready("serving")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("tandem: stopping", flush=True)
    await app.stop()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="start the appliance (board 'sim' by default)")
    p.add_argument("--board", default="sim", help="board profile name or path (default: sim)")
    p.add_argument("--data-dir", default="tandem-data",
                   help="state of the simulated board: nvram.bin, local.img, second.img")
    p.add_argument("--size", type=parse_size, help="size of media created now (default 1G)")
    p.add_argument("--region-size", type=parse_size, help="record region size (default 64K)")
    p.add_argument("--resync-budget", type=parse_size,
                   help="most bytes the record may name while the mirror is healthy")
    p.add_argument("--nbd", default=("127.0.0.1", 10809), metavar="[HOST:]PORT",
                   type=lambda text: parse_host_port(text, default_host="127.0.0.1"),
                   help="NBD listen address (default 127.0.0.1:10809)")
    p.add_argument("--export", default="tandem", help="NBD export name")
    p.add_argument("--console-tcp", "--console", default=None, dest="console_tcp",
                   metavar="[HOST:]PORT",
                   help="console TCP address, or 'off' (default: the board's)")
    p.add_argument("--local", metavar="PATH", dest="local_path",
                   help="the local medium instead of the board's (a pair shares one)")
    p.add_argument("--second", metavar="PATH", dest="second_path",
                   help="the second medium instead of the board's")
    p.add_argument("--no-console-pty", action="store_true", help="no console pty on sim")
    p.add_argument("--mirror-queue", type=parse_size, default=64 << 20,
                   help="bytes of writes queued for the mirror before it copies by region")
    # latency-first by default: a miss costs the host a record transaction (and the
    # policy's work) before its write; recovery-first trades that for a smaller resync.
    p.add_argument("--point", default=None,
                   choices=[*POINTS, "sequential-lru"],
                   help="record policy: an operating point (docs/record-policy.md), or the "
                        "simple sequential-lru policy (default: latency-first; in a pair "
                        "recovery-first, since every guessed region costs an entry in the "
                        "peer's FRAM and a share of its message)")
    p.add_argument("--idle-evict", type=float, default=2.0,
                   help="sequential-lru: seconds a clean region stays in the record "
                        "unwritten (<0: never)")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--tcmu", action="store_true",
                   help="also export the volume through LIO/TCMU (needs configfs, root)")
    p.add_argument("--tcm-loop", action="store_true", help="with --tcmu: a local SCSI disk")
    p.add_argument("--iscsi-portal", help="with --tcmu: iSCSI portal HOST:PORT")
    p.add_argument("--iscsi-iqn", help="with --tcmu: iSCSI target IQN")
    p.add_argument("--tcmu-name", default="tandem", help="LIO storage object name")
    p.add_argument("--remote", metavar="HOST:PORT|nbd://...",
                   help="mirror to a `tandem receive` at HOST:PORT, or to any NBD export, "
                        "instead of the board's second medium")
    p.add_argument("--key-file", help="with --remote HOST:PORT: the link's shared secret "
                                      "(the file's whole content)")
    p.add_argument("--rate-limit", type=parse_size, metavar="BYTES",
                   help="with --remote: most bytes per second on the link (e.g. 20M)")
    p.add_argument("--tls", action="store_true",
                   help="with --remote HOST:PORT: TLS, verified against the system's CAs")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="with --remote HOST:PORT: TLS, verified against this CA file")
    pair = p.add_argument_group("pair (docs/pair.md): the record held on a peer appliance")
    pair.add_argument("--node", metavar="NAME", help="this appliance's name in the pair")
    pair.add_argument("--peer", metavar="URL", action="append", default=[], dest="peers",
                      help="a link to the peer: tcp://HOST:PORT (its --peer-listen), or a "
                           "serial device / pyserial URL (socket://, rfc2217://); repeat "
                           "for a second, independent link")
    pair.add_argument("--peer-listen", metavar="[HOST:]PORT",
                      help="accept the peer's TCP link here")
    pair.add_argument("--peer-key", metavar="FILE",
                      help="the pair's shared secret (the file's whole content, 16+ bytes)")
    pair.add_argument("--pair-role", choices=["primary", "record-holder"], default="primary",
                      help="the role a node without a pair record starts in (a node that "
                           "has one keeps what its FRAM says)")
    pair.add_argument("--peer-node", metavar="NAME",
                      help="the peer's name (default: a<->b, 1<->2 by the last character, "
                           "else NAME-peer)")
    pair.add_argument("--fence-command", metavar="CMD",
                      help="run before taking over from a silent peer (a power switch, a "
                           "reset line); exit 0: the peer is off")
    pair.add_argument("--fence-timeout", type=float, default=30.0, metavar="S")
    pair.add_argument("--lease", type=float, default=3.0, metavar="S",
                      help="the primary's lease on writing the media (default 3)")
    pair.add_argument("--pair-mode", choices=["primary-backup", "active-active"],
                      default="primary-backup",
                      help="primary-backup (default): one node serves, the other holds its "
                           "record; active-active: both serve the same disk, each holding "
                           "the other's record, regions owned by one at a time (issue 16, "
                           "in progress: no takeover yet, see docs/pair.md)")
    pair.add_argument("--no-auto-takeover", action="store_true",
                      help="the record-holder takes over only on 'peer takeover'")
    pair.add_argument("--no-trust-lease", action="store_true",
                      help="do not take over on the peer's lease running out (a peer "
                           "without a watchdog may be hung, not dead): only the fence "
                           "command or 'peer takeover --force'")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    nbd_host, nbd_port = args.nbd
    settings = Settings(
        board=args.board, data_dir=args.data_dir, size=args.size,
        region_size=args.region_size, resync_budget=args.resync_budget,
        nbd_host=nbd_host, nbd_port=nbd_port, export=args.export,
        console_tcp=args.console_tcp, console_pty=False if args.no_console_pty else None,
        local_path=args.local_path, second_path=args.second_path,
        mirror_queue=args.mirror_queue,
        idle_evict_s=None if args.idle_evict < 0 else args.idle_evict,
        point=args.point or ("recovery-first" if args.node else "latency-first"),
        read_only=args.read_only, tcmu=args.tcmu, tcm_loop=args.tcm_loop,
        iscsi_portal=args.iscsi_portal, iscsi_iqn=args.iscsi_iqn, tcmu_name=args.tcmu_name,
        remote=args.remote, key_file=args.key_file, rate_limit=args.rate_limit,
        tls=args.tls, tls_ca=args.tls_ca)
    if settings.remote and not settings.remote.startswith("nbd") and not settings.key_file:
        print("tandem: --remote HOST:PORT needs --key-file", file=sys.stderr)
        return 2
    if args.node or args.peers:
        if not (args.node and args.peers and args.peer_key):
            print("tandem: a pair node needs --node, --peer and --peer-key", file=sys.stderr)
            return 2
        if settings.remote:
            print("tandem: --remote and a pair do not mix (both nodes reach one second "
                  "medium)", file=sys.stderr)
            return 2
        try:
            settings.pair = PairSettings(
                node=args.node, peers=tuple(args.peers), key_file=args.peer_key,
                role=args.pair_role, peer_node=args.peer_node, listen=args.peer_listen,
                fence_command=args.fence_command, fence_timeout_s=args.fence_timeout,
                lease_s=args.lease, auto_takeover=not args.no_auto_takeover,
                trust_lease=not args.no_trust_lease, mode=args.pair_mode)
        except ValueError as exc:
            print(f"tandem: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_serve(settings))
    except (LayoutError, OSError, ValueError) as exc:
        print(f"tandem: {exc}", file=sys.stderr)
        return 1
