"""One appliance as a node of the pair: its settings, FRAM, runtime, store and hooks.

``tandem run --node NAME --peer URL... --peer-listen HOST:PORT --peer-key FILE
--pair-role primary|record-holder`` builds a ``PairNode`` in the appliance's
``open_storage``. The node owns the pair's half of the appliance:

- the FRAM: in pair mode the whole NVRAM holds the pair's superblock, HELD and INTENT
  tables (held.py), not the single appliance's bitmap;
- both media behind one ``MediaGate``: D and M are written only while the core says so
  (the lease, or sole ownership), checked right before each write;
- the record's store (store.py), so that the volume's write path is unchanged;
- what the core's actions mean for the appliance: regions to resync go into the record
  and the mirror copies them by region; a takeover starts the frontends; becoming the
  record-holder stops them; a freeze pauses the mirror.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firmware.mirror.state import MirrorState
from firmware.parsing import parse_host_port
from firmware.peer.channels import HOLDER, OWN, LinkMux, record_key
from firmware.peer.config import LinkConfig, PairConfig, serial_link, tcp_link
from firmware.peer.events import (
    Action,
    Covered,
    FlushClears,
    FullResyncDone,
    Handed,
    Mirrored,
    ReleaseAsk,
    ReleaseDone,
    ReleaseReady,
    ReleaseRequest,
    RoleChanged,
    TakeOver,
    TakeoverCommand,
)
from firmware.peer.frames import PRIMARY, RECORD_HOLDER
from firmware.peer.held import LoadedPair, PairFram, PairLayoutError, PairState
from firmware.peer.links import PeerListener, link_kind, open_link
from firmware.peer.runtime import PairHooks, PairRuntime
from firmware.peer.store import PeerRecordStore
from hal.media.base import Medium
from hal.media.fenced import FencedMedium
from hal.nvram.base import Nvram
from hal.watchdog import Watchdog

if TYPE_CHECKING:
    from firmware.frontends.tcmu.alua import PortGroups
    from firmware.mirror.mirror import Mirror
    from firmware.record.record import Record

log = logging.getLogger("tandem.peer")

ROLES = (PRIMARY, RECORD_HOLDER)
ACTIVE_ACTIVE = "active-active"
MODES = ("primary-backup", ACTIVE_ACTIVE)


@dataclass
class PairSettings:
    node: str
    peers: tuple[str, ...]  # tcp://HOST:PORT, serial devices, pyserial URLs
    key_file: str
    role: str = PRIMARY  # the role a blank FRAM starts in
    peer_node: str | None = None  # the peer's name (default: "b" for "a", ...)
    listen: str | None = None  # HOST:PORT for the peer's TCP dial
    fence_command: str | None = None
    fence_timeout_s: float = 30.0
    lease_s: float = 3.0
    auto_takeover: bool = True
    trust_lease: bool = True
    anti_entropy_s: float | None = 60.0
    mode: str = "primary-backup"  # or "active-active" (issue 16: both serve)
    extra: dict[str, float] = field(default_factory=dict)  # more PairConfig tuning
    tick_s: float | None = 0.05  # None: the caller calls runtime.tick() (a simulation)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"--pair-role: one of {', '.join(ROLES)}, not {self.role!r}")
        if not self.peers:
            raise ValueError("a pair needs at least one --peer link")
        if self.mode not in MODES:
            raise ValueError(f"--pair-mode: one of {', '.join(MODES)}, not {self.mode!r}")


def default_peer_name(node: str) -> str:
    """The peer's name when ``--peer-node`` is not given: nodes named by a trailing
    letter or digit pair up (a/b, A/B, tandem-1/tandem-2); else ``NODE-peer``."""
    if node:
        last = node[-1]
        pairs = {"a": "b", "b": "a", "A": "B", "B": "A", "1": "2", "2": "1"}
        if last in pairs:
            return node[:-1] + pairs[last]
    return f"{node}-peer"


def read_key(path: str) -> bytes:
    key = Path(path).read_bytes().strip()
    if len(key) < 16:
        raise ValueError(f"--peer-key {path}: the shared key needs at least 16 bytes")
    return key


def pair_config(s: PairSettings, peer: str, *, key: bytes | None = None,
                **more: object) -> PairConfig:
    links: list[LinkConfig] = [tcp_link(url) if link_kind(url) == "tcp" else serial_link(url)
                               for url in s.peers]
    settings: dict[str, object] = dict(
        lease_s=s.lease_s, fence_command=bool(s.fence_command), trust_lease=s.trust_lease,
        auto_takeover=s.auto_takeover, anti_entropy_s=s.anti_entropy_s)
    settings.update(s.extra)
    settings.update(more)
    return PairConfig(node=s.node, peer=peer, key=key or read_key(s.key_file),
                      links=tuple(links), **settings)  # type: ignore[arg-type]


def open_pair_fram(nvram: Nvram, s: PairSettings, peer: str, *,
                   media_existed: bool, base: int = 0, size: int | None = None,
                   role: str | None = None) -> tuple[PairFram, LoadedPair, str]:
    """Load the pair's FRAM (or the window ``[base, base + size)`` of it), or format it
    for a node that never paired; why, in words."""
    role = role or s.role
    fram = PairFram(nvram, base=base, size=size)
    try:
        loaded = fram.open_boot()
    except PairLayoutError as exc:
        if base == 0 and size is not None and size < nvram.size:
            # The first window unreadable but the whole FRAM a pair record: one that
            # spans it all, written in primary-backup mode. Never format over it.
            try:
                PairFram(nvram).load()
            except PairLayoutError:
                pass
            else:
                raise PairLayoutError(
                    "the FRAM holds a primary-backup pair record: start this node without "
                    "--pair-mode active-active (or let it hand over and wipe first)"
                ) from exc
        # A primary that finds media with data but no pair record cannot know what may
        # differ: everything. A blank record-holder holds nothing yet (incomplete).
        full = role == PRIMARY and media_existed
        fram.format(PairState(s.node, peer, role, full_resync=full))
        loaded = fram.open_boot()
        why = f"new pair record ({exc}); " + ("FULL RESYNC" if full else "nothing to resync")
        if full:
            log.warning("*** pair: no pair record in NVRAM and the media hold data: "
                        "FULL RESYNC ***")
        return fram, loaded, why
    state = loaded.state
    damaged = sum(loaded.damaged.values())
    why = (f"pair record: {state.role} at epoch {state.epoch}, {len(loaded.held)} held, "
           f"{len(loaded.intent)} intent" + (f", {damaged} DAMAGED entries" if damaged else ""))
    return fram, loaded, why


class PairNode:
    """The pair's half of one appliance (see the module's docstring)."""

    def __init__(self, settings: PairSettings, nvram: Nvram, *, media_existed: bool,
                 clock: Callable[[], float] = time.monotonic,
                 fram_executor: concurrent.futures.Executor | None = None,
                 open_peer_link: Callable[..., Any] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        peer = settings.peer_node
        if peer is None:
            try:
                peer = PairFram(nvram).load().state.peer
            except PairLayoutError:
                peer = default_peer_name(settings.node)
        listen = parse_host_port(settings.listen, default_host="0.0.0.0") \
            if settings.listen else None
        self.active_active = settings.mode == ACTIVE_ACTIVE
        self.holder: PairRuntime | None = None  # active-active: the peer's record, here
        self.mux: LinkMux | None = None
        self.listener: PeerListener | None = None
        runtime_options: dict[str, Any] = dict(
            peer_urls=settings.peers, clock=clock, fence_command=settings.fence_command,
            fence_timeout_s=settings.fence_timeout_s, fram_executor=fram_executor,
            tick_s=settings.tick_s)
        if not self.active_active:
            self.config = pair_config(settings, peer)
            self.fram, loaded, self.startup = open_pair_fram(nvram, settings, peer,
                                                             media_existed=media_existed)
            self.runtime = PairRuntime(self.config, self.fram, loaded, listen=listen,
                                       open_peer_link=open_peer_link, **runtime_options)
        else:
            # Two directions (channels.py): this node's record, held at the peer, in the
            # FRAM's first half; the peer's record, held here, in the second.
            key = read_key(settings.key_file)
            half = nvram.size // 2
            self.config = pair_config(settings, peer, key=record_key(key, settings.node),
                                      coherent=True)
            holder_config = pair_config(settings, peer, key=record_key(key, peer),
                                        coherent=True, hands_back=True)
            # A blank record is not read as "anything may differ" here: the peer's writes
            # are in the peer's record, and the node that came up first made the media
            # the other one finds. Media with an unknown past must be in sync before an
            # active-active pair starts on them (docs/pair.md).
            self.fram, loaded, own_why = open_pair_fram(
                nvram, settings, peer, media_existed=False, size=half, role=PRIMARY)
            holder_fram, holder_loaded, holder_why = open_pair_fram(
                nvram, settings, peer, media_existed=False, base=half,
                size=nvram.size - half, role=RECORD_HOLDER)
            self.startup = f"active-active: own record {own_why}; peer's {holder_why}"
            self.mux = LinkMux(settings.peers, open_peer_link or open_link)
            self.runtime = PairRuntime(self.config, self.fram, loaded,
                                       open_peer_link=self.mux.channel(OWN),
                                       **runtime_options)
            self.holder = PairRuntime(holder_config, holder_fram, holder_loaded,
                                      open_peer_link=self.mux.channel(HOLDER),
                                      **runtime_options)
            if listen is not None:
                self.listener = PeerListener(*listen, self.mux.tcp_link())
            self._ready: dict[int, frozenset[int]] = {}  # released, mirror not quiet yet
            # MARK token -> (the core that took the MARK, the core that lets go)
            self._asked: dict[int, tuple[PairRuntime, PairRuntime | None]] = {}
        self.store = PeerRecordStore(self.runtime, clock=clock)
        self.record: Record | None = None
        self.mirror: Mirror | None = None
        self._full_pending = False
        self._last_full_check = 0.0
        self._mirror_paused_by_us = False
        self.watchdog: Watchdog | None = None  # the board's, armed by the app
        # What the appliance does when hosts may or may no longer be served.
        self.serve: Callable[[bool], None] = lambda serving: None

    @property
    def core(self):  # noqa: ANN201 - PairCore, kept short for the console
        return self.runtime.core

    def fence(self, medium: Medium) -> FencedMedium:
        gate = self.runtime.gate
        if self.holder is None:
            return FencedMedium(medium, gate.may_write, gate.refusal)
        holder_gate = self.holder.gate
        return FencedMedium(medium, lambda: gate.may_write() or holder_gate.may_write(),
                            gate.refusal)

    async def start(self, record: Record, mirror: Mirror) -> None:
        self.record = record
        self.mirror = mirror
        self.store.member = record.contains
        self.runtime.hooks = PairHooks(on_role=self._on_role, on_takeover=self._on_takeover,
                                       on_resync=self._on_resync, on_freeze=self._on_freeze,
                                       on_tick=self._on_tick)
        # The core starts frozen (no lease before the peer is heard) and says Thaw only:
        # the mirror waits from the start, rather than fail against the fenced media.
        self._on_freeze(self.core.frozen, "starting")
        if self.holder is not None:
            holder = self.holder
            # Active-active: only regions this node owns are copied by its mirror (the
            # holder core owns the peer's regions once it took over from the peer).
            mirror.may_copy = lambda region: (
                self.core.mirror_snapshot(region) is not None
                or holder.core.mirror_snapshot(region) is not None)
            self.store.peer_owns = holder.core.holds
            self.store.also = [holder]
            self.runtime.hooks.on_coherence = lambda action: self._coherence(self.runtime,
                                                                            action)
            holder.hooks = PairHooks(on_coherence=lambda action: self._coherence(holder,
                                                                                 action),
                                     on_takeover=self._holder_took_over,
                                     on_resync=self._on_resync,
                                     on_freeze=self._on_holder_freeze)
            if self.listener is not None:
                await self.listener.start()
            await self.holder.start()
        await self.runtime.start()

    async def stop(self, *, graceful: bool) -> None:
        if graceful:
            import asyncio

            # Clears that are due go now, so a restart resyncs less; a moment for acks.
            self.store.offer_clears()
            self.runtime.submit(FlushClears())
            for _ in range(20):
                if not self.core.status().clears_queued:
                    break
                await asyncio.sleep(0.05)
        await self.runtime.close()
        if self.holder is not None:
            await self.holder.close()
        if self.listener is not None:
            await self.listener.close()
        if self.watchdog is not None:
            if graceful:
                self.watchdog.disarm()
            else:
                self.watchdog.abandon()

    # -- hooks -----------------------------------------------------------------------

    def _on_role(self, action: RoleChanged) -> None:
        if action.role == RECORD_HOLDER:
            self.serve(False)
        elif action.serving or self.core.serving:
            self.serve(True)

    def _on_takeover(self, action: TakeOver) -> None:
        self._on_resync(action.resync, action.full_resync)
        self.serve(True)

    def _on_resync(self, regions: frozenset[int], full: bool) -> None:
        record, mirror = self.record, self.mirror
        if record is None or mirror is None:
            return
        named = range(record.nregions) if full else sorted(regions)
        if full:
            self._full_pending = True
        if not named:
            return
        record.name_dirty(named, self.clock())
        mirror.force_region_copy()
        log.info("pair: %s to copy to the second medium",
                 "the whole volume" if full else f"{len(regions)} regions")

    def _on_freeze(self, frozen: bool, reason: str) -> None:
        mirror = self.mirror
        if mirror is None:
            return
        if frozen and not mirror.paused:
            mirror.pause()
            self._mirror_paused_by_us = True
        elif not frozen and self._mirror_paused_by_us:
            self._mirror_paused_by_us = False
            mirror.resume()
        elif not frozen:
            mirror.look_again()

    def _on_holder_freeze(self, frozen: bool, reason: str) -> None:
        # Active-active: the core holding the peer's record, primary of it after a
        # takeover, may copy its regions again (the mirror asks ``may_copy``).
        if not frozen and self.mirror is not None:
            self.mirror.look_again()

    # -- active-active: the two cores of this node (events.py, ReleaseAsk...) ---------

    def _coherence(self, source: PairRuntime, action: Action) -> None:
        """Join the node's two cores. A MARK taken by a record-holding core asks the
        node's writing core (its own, or after a takeover the other) to let go; a node
        with no writing core has nothing to let go of."""
        if isinstance(action, ReleaseAsk):
            writer = self._writer(besides=source)
            self._asked[action.token] = (source, writer)
            if writer is None:
                self._ready[action.token] = action.regions
                self._hand_over_quiet()
            else:
                writer.submit(ReleaseRequest(action.token, action.regions))
        elif isinstance(action, ReleaseReady):
            if self.record is not None:
                self.record.disown(action.regions)
            self._ready[action.token] = action.regions
            self._hand_over_quiet()
        elif isinstance(action, Covered):
            _, writer = self._asked.pop(action.token, (None, None))
            if writer is not None:
                writer.submit(Handed(action.token, action.regions))

    def _writer(self, besides: PairRuntime) -> PairRuntime | None:
        for runtime in (self.runtime, self.holder):
            if runtime is not None and runtime is not besides \
                    and runtime.core.role == PRIMARY:
                return runtime
        return None

    def _hand_over_quiet(self) -> None:
        """Regions this node let go of go to the peer once no copy of ours to the
        second medium touches them (a stale copy must not land after the peer's)."""
        mirror = self.mirror
        if mirror is None:
            return
        for token, regions in list(self._ready.items()):
            if not mirror.touches(regions):
                del self._ready[token]
                asker, _ = self._asked.get(token, (None, None))
                if asker is not None:
                    asker.submit(ReleaseDone(token))

    def _holder_took_over(self, action: TakeOver) -> None:
        """Active-active: the peer is fenced (its lease ran out, the fence command, the
        operator) and the core holding its record took over: this node copies the
        peer's regions and writes everything alone — its own core goes sole too."""
        self._on_resync(action.resync, action.full_resync)
        core = self.core
        log.warning("pair: took over the peer's record; this node's own record goes sole "
                    "too (%s, epoch %d, sole %s)", core.role, core.epoch,
                    core.persisted_state.sole)
        if core.role == PRIMARY and not core.persisted_state.sole:
            self.runtime.submit(TakeoverCommand(force=True, fenced=True))

    def _drop_strays(self) -> None:
        """Active-active: a region the record names that neither core of this node is to
        copy is not this node's (a write of ours to it waited while it was handed over,
        then gave up or was refused): the mirror would wait for it for ever."""
        record, holder = self.record, self.holder
        if record is None or holder is None:
            return
        own, held = self.core, holder.core
        stray = [r for r in record.dirty_regions()
                 if not own.is_dirty(r) and not held.is_dirty(r)]
        if stray:
            record.disown(stray)

    def _clean_wanted(self) -> None:
        """Regions the peer asked for leave our record as soon as the mirror has them,
        not at the next tidy: the hand-over waits for that."""
        record, writer = self.record, self._writer(besides=self.holder) \
            if self.holder is not None else None
        if record is None or writer is None:
            return
        wanted = writer.core.wanted_regions()
        if not wanted:
            return
        record.evict(wanted)
        self.store.offer_clears(wanted)
        mirror = self.mirror
        if mirror is None or mirror.state is not MirrorState.ORDERED:
            return
        # In ordered mode the second medium holds every write issued so far but those
        # queued or on their way: a region none of them touches is on M as far as our
        # writes go (a write of ours still waiting keeps the record from saying so).
        for region in sorted(wanted):
            if not mirror.touches((region,)):
                gen = writer.core.mirror_snapshot(region)
                if gen is not None:
                    writer.submit(Mirrored(region, gen))

    def _on_tick(self) -> None:
        if self.holder is not None:
            self.holder.tick()
            self._clean_wanted()
            self._hand_over_quiet()
            self._drop_strays()
        if self.watchdog is not None:
            self.watchdog.pet()  # the loop runs: the lease means something
        self.store.offer_clears()
        if self.core.role == PRIMARY and self.core.serving:
            self.serve(True)
        now = self.clock()
        if self._full_pending and now - self._last_full_check >= 1.0:
            self._last_full_check = now
            record = self.record
            if record is not None and not record.dirty_regions():
                self._full_pending = False
                log.info("pair: full resync done")
                self.runtime.submit(FullResyncDone())

    # -- the SCSI identity of an active-active pair (frontends/tcmu/alua.py) -----------

    def scsi_serial(self) -> str:
        """One unit serial (and so one NAA name) for the LUN on both nodes: a host's
        multipath takes the two exports for one disk."""
        from firmware.frontends.tcmu.service import default_serial

        return default_serial("pair:" + "+".join(sorted((self.config.node,
                                                         self.config.peer))))

    def _group_ids(self) -> tuple[int, int]:
        """(this node's target port group, the peer's): 1 for the name that sorts
        first, 2 for the other, so both nodes number them alike."""
        first = min(self.config.node, self.config.peer)
        return (1, 2) if self.config.node == first else (2, 1)

    def port_groups(self) -> PortGroups:
        """This node's export of the LUN: its own group, and the peer's as this node
        knows it. A node serves its group active/optimized; the peer's group is
        unavailable only once this node took over the peer's record (the peer is
        fenced) — never on a mere silence: a host asking us must not fail a path that
        still works."""
        from firmware.frontends.tcmu import alua

        mine, theirs = self._group_ids()

        def states() -> list[alua.PortGroup]:
            own = alua.ACTIVE_OPTIMIZED if self.core.role == PRIMARY and self.core.serving \
                else alua.TRANSITIONING
            holder = self.holder
            peer = alua.UNAVAILABLE if holder is not None \
                and holder.core.role == PRIMARY else alua.ACTIVE_OPTIMIZED
            groups = {mine: alua.PortGroup(mine, mine, own),
                      theirs: alua.PortGroup(theirs, theirs, peer)}
            return [groups[1], groups[2]]

        return alua.PortGroups(mine, states)

    def alua_status(self) -> list[dict[str, object]]:
        from firmware.frontends.tcmu.alua import STATE_NAMES

        mine, _ = self._group_ids()
        return [{"group": g.group_id, "node": self.config.node if g.group_id == mine
                 else self.config.peer, "relative_port": g.relative_port,
                 "state": STATE_NAMES[g.state]} for g in self.port_groups().states()]

    # -- what the console shows ------------------------------------------------------

    def status_keys(self) -> dict[str, object]:
        core = self.core
        holder = core.role == RECORD_HOLDER
        return {
            "peer_state": core.state.value,
            "peer_epoch": core.epoch,
            "peer_role": core.role,
            "peer_node": self.config.node,
            "peer_name": self.config.peer,
            # The record of the pair as this node keeps it: held for the peer on the
            # record-holder, the local copy of what the holder acknowledged on a primary.
            "peer_record_regions": len(core.held_regions()) if holder
            else len(core.local_copy()),
            "peer_frozen": core.frozen,
            # Regions the record let go that the core could not take as mirrored yet.
            "peer_clears_pending": self.store.uncleared,
        } | ({} if self.holder is None else {
            "peer_mode": ACTIVE_ACTIVE,
            "peer_holder_state": self.holder.core.state.value,
            "peer_held_regions": len(self.holder.core.held_regions()),
            "peer_handovers": core.handovers,
        })
