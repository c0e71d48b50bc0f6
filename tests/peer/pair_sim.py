"""Two pair cores in a simulated world: FRAM that can tear, a network that drops,
duplicates and reorders, a shared local medium D and a second medium M — and the
invariants of PAIR.md §9.1, checked against what the FRAMs durably say.

The simulation plays the runtime: it carries out the cores' actions (a write issued to
D is a new version number in ``d``; a mirror copy sets ``m`` from ``d``) and records
what the invariants need. Nothing here looks inside a core except through its public
queries (``local_copy``, ``dirty_regions``, ``mirror_snapshot``, ``persisted_state``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware.peer import events as ev
from firmware.peer.config import PairConfig, serial_link, tcp_link
from firmware.peer.core import PairCore
from firmware.peer.frames import PRIMARY, RECORD_HOLDER, Clear, decode
from firmware.peer.held import LoadedPair, PairFram, PairState, required_bytes
from hal.nvram.base import PowerLost

KEY = b"pair-simulation-key"
TCP, SERIAL = "tcp", "serial"
LINKS = (TCP, SERIAL)
NODES = ("a", "b")
CAPACITY = 24
NETWORK_BUFFER = 40  # frames in flight per link and direction; more are lost


class RamFram:
    """An FRAM image in RAM; ``cut_after`` bytes into the next writes, power fails."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.cut_after: int | None = None
        self.powered = True

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def slow_writes(self) -> bool:
        return False

    def read(self, offset: int, length: int) -> bytes:
        if not self.powered:
            raise PowerLost(errno.EIO, "FRAM is off")
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if not self.powered:
            raise PowerLost(errno.EIO, "FRAM is off")
        if self.cut_after is not None and len(data) > self.cut_after:
            self.data[offset:offset + self.cut_after] = data[:self.cut_after]
            self.cut_after = None
            self.powered = False
            raise PowerLost(errno.EIO, "power cut")
        self.data[offset:offset + len(data)] = data
        if self.cut_after is not None:
            self.cut_after -= len(data)

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def load_image(image: bytes | bytearray) -> LoadedPair:
    return PairFram(RamFram_from(image)).load()


def RamFram_from(image: bytes | bytearray) -> RamFram:  # noqa: N802  # a constructor
    fram = RamFram(len(image))
    fram.data[:] = image
    return fram


class InvariantViolation(AssertionError):
    pass


def config_for(node: str, **overrides: object) -> PairConfig:
    peer = "b" if node == "a" else "a"
    settings: dict[str, object] = dict(
        lease_s=3.0, lease_early_s=0.3, takeover_margin_s=1.0, retransmit_s=0.5,
        mark_batch=8, mark_window=2, clear_batch=8, clear_delay_s=1.0, reconcile_part=8,
        anti_entropy_s=20.0, fence_command=True, trust_lease=True)
    settings.update(overrides)
    return PairConfig(node, peer, KEY, (tcp_link(TCP), serial_link(SERIAL)),
                      **settings)  # type: ignore[arg-type]


@dataclass
class Node:
    name: str
    config: PairConfig
    nvram: RamFram
    core: PairCore | None = None
    fram: PairFram | None = None
    fram_queue: list[ev.Persist] = field(default_factory=list)
    in_flight: dict[int, tuple[int, ...]] = field(default_factory=dict)  # issued writes
    waiting: set[int] = field(default_factory=set)
    fence_asked: bool = False
    mirror: tuple[int, int, int] | None = None  # region, gen, the version copied
    full_resync: bool = False
    took_over: list[ev.TakeOver] = field(default_factory=list)
    reports: list[ev.Report] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.core is not None


@dataclass
class DWrite:
    node: str
    epoch: int
    regions: tuple[int, ...]
    at: float


class PairSim:
    """The world of two nodes. ``auto_fram``: FRAM writes complete at once (otherwise a
    test completes them with ``fram_step``)."""

    def __init__(self, *, auto_fram: bool = True,
                 core_factory: Callable[[PairConfig, LoadedPair, float], PairCore] | None = None,
                 regions: int = 16, **config: object) -> None:
        self.now = 0.0
        self.auto_fram = auto_fram
        self.core_factory = core_factory or (lambda c, lp, now: PairCore(c, lp, now=now))
        self.regions = regions
        self.nodes: dict[str, Node] = {}
        size = required_bytes(CAPACITY)
        for name, role in zip(NODES, (PRIMARY, RECORD_HOLDER), strict=True):
            node = Node(name, config_for(name, **config), RamFram(size))
            PairFram(node.nvram).format(PairState(name, node.config.peer, role), CAPACITY)
            self.nodes[name] = node
        self.net: dict[tuple[str, str], list[bytes]] = {
            (link, src): [] for link in LINKS for src in NODES}
        self.cut: set[tuple[str, str]] = set()  # (link, sending node) that lose frames
        self.d: dict[int, int] = {}
        self.m: dict[int, int] = {}
        self.version = 0
        self.next_write = 0
        self.pending_regions: dict[int, tuple[int, ...]] = {}  # host writes not issued
        self.d_writes: list[DWrite] = []
        self.clears_delivered: dict[str, dict[int, int]] = {n: {} for n in NODES}
        self.max_epoch = {n: 1 for n in NODES}
        self.split_brain_made = False
        self._loaded: dict[str, tuple[bytes, LoadedPair]] = {}
        self.events: list[str] = []
        for name in NODES:
            self.start(name)

    # -- the runtime -------------------------------------------------------------------------

    def start(self, name: str) -> None:
        node = self.nodes[name]
        node.nvram.powered = True
        node.nvram.cut_after = None
        node.fram = PairFram(node.nvram)
        loaded = node.fram.open_boot()
        node.core = self.core_factory(node.config, loaded, self.now)
        node.fram_queue.clear()
        node.in_flight.clear()
        node.waiting.clear()
        node.fence_asked = False
        node.mirror = None
        self.handle(name, ev.Tick())
        for link in LINKS:
            self.handle(name, ev.LinkUp(link))

    def crash(self, name: str, tear_at: int | None = None) -> None:
        """Power off: RAM is lost; a pending FRAM write lands torn after ``tear_at``
        bytes (None: not at all)."""
        node = self.nodes[name]
        if node.core is None:
            return
        if tear_at is not None and node.fram_queue:
            assert node.fram is not None
            before = self.durable(name)
            node.nvram.cut_after = tear_at
            try:
                for change in node.fram_queue[0].changes:
                    node.fram.apply(change)
            except PowerLost:
                pass
            self.check_fram(name, before)
        node.core = None
        node.fram = None
        node.fram_queue.clear()
        node.in_flight.clear()
        node.waiting.clear()
        node.mirror = None
        node.fence_asked = False

    def handle(self, name: str, event: ev.Event) -> list[ev.Action]:
        node = self.nodes[name]
        if node.core is None:
            return []
        actions = node.core.handle(self.now, event)
        for action in actions:
            self._carry_out(node, action)
        self.max_epoch[name] = max(self.max_epoch[name], node.core.epoch)
        return actions

    def _carry_out(self, node: Node, action: ev.Action) -> None:
        if isinstance(action, ev.Send):
            queue = self.net[(action.link, node.name)]
            if (action.link, node.name) not in self.cut:
                queue.append(action.payload)
                if len(queue) > NETWORK_BUFFER:
                    del queue[0]
        elif isinstance(action, ev.Persist):
            node.fram_queue.append(action)
            if self.auto_fram and len(node.fram_queue) == 1:
                self.fram_step(node.name)
        elif isinstance(action, ev.WriteProceed):
            node.waiting.discard(action.write)
            self._issue(node, action)
        elif isinstance(action, ev.WriteWait):
            node.waiting.add(action.write)
        elif isinstance(action, ev.WriteRefused):
            node.waiting.discard(action.write)
            self.pending_regions.pop(action.write, None)
        elif isinstance(action, ev.RunFence):
            node.fence_asked = True
        elif isinstance(action, ev.TakeOver):
            node.took_over.append(action)
            if action.full_resync:
                node.full_resync = True
        elif isinstance(action, ev.Report):
            node.reports.append(action)

    def fram_step(self, name: str) -> bool:
        node = self.nodes[name]
        if node.core is None or not node.fram_queue:
            return False
        assert node.fram is not None
        persist = node.fram_queue[0]
        before = self.durable(name)
        for change in persist.changes:
            node.fram.apply(change)
        self.check_fram(name, before)
        node.fram_queue.pop(0)
        self.handle(name, ev.FramDone(persist.token))
        return True

    def _issue(self, node: Node, action: ev.WriteProceed) -> None:
        regions = self.pending_regions.pop(action.write)
        if action.deadline is not None and self.now >= action.deadline:
            self.handle(node.name, ev.WriteDone(action.write, ok=False))
            return
        self.check_write(node.name, action.epoch, regions)
        self.version += 1
        for r in regions:
            self.d[r] = self.version
        self.d_writes.append(DWrite(node.name, action.epoch, regions, self.now))
        node.in_flight[action.write] = regions

    # -- what the rules do -------------------------------------------------------------------

    def host_write(self, name: str, regions: tuple[int, ...],
                   predicted: tuple[int, ...] = ()) -> int:
        self.next_write += 1
        self.pending_regions[self.next_write] = regions
        self.handle(name, ev.HostWrite(self.next_write, regions, predicted))
        return self.next_write

    def complete_write(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.in_flight:
            return False
        write = min(node.in_flight)
        del node.in_flight[write]
        self.handle(name, ev.WriteDone(write))
        return True

    def deliver(self, link: str, src: str, index: int = 0, *, keep: bool = False) -> bool:
        queue = self.net[(link, src)]
        if not queue:
            return False
        payload = queue[index % len(queue)]
        if not keep:
            del queue[index % len(queue)]
        dst = "b" if src == "a" else "a"
        self._note_clear(dst, payload)
        self.handle(dst, ev.FrameIn(link, payload))
        return True

    def _note_clear(self, dst: str, payload: bytes) -> None:
        try:
            frame = decode(KEY, payload)
        except Exception:
            return
        if isinstance(frame.message, Clear):
            seen = self.clears_delivered[dst]
            for r, g in frame.message.entries:
                seen[r] = max(seen.get(r, 0), g)

    def drop(self, link: str, src: str, index: int = 0) -> bool:
        queue = self.net[(link, src)]
        if not queue:
            return False
        del queue[index % len(queue)]
        return True

    def deliver_all(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for link in LINKS:
                for src in NODES:
                    while self.deliver(link, src):
                        moved = True
            if not moved:
                return

    def advance(self, dt: float) -> None:
        self.now += dt
        for name in NODES:
            self.handle(name, ev.Tick())

    def mirror_start(self, name: str, region: int) -> bool:
        node = self.nodes[name]
        if node.core is None or node.mirror is not None:
            return False
        gen = node.core.mirror_snapshot(region)
        if gen is None:
            return False
        node.mirror = (region, gen, self.d.get(region, 0))
        return True

    def mirror_finish(self, name: str) -> bool:
        node = self.nodes[name]
        if node.core is None or node.mirror is None:
            return False
        region, gen, version = node.mirror
        node.mirror = None
        if node.core.frozen:
            return False  # the copy did not land: a frozen node stops its mirror too
        self.m[region] = version
        self.handle(name, ev.Mirrored(region, gen))
        return True

    def full_resync(self, name: str) -> bool:
        node = self.nodes[name]
        if node.core is None or node.core.frozen or not node.core.persisted_state.full_resync:
            return False
        busy = {r for regions in node.in_flight.values() for r in regions}
        if busy:
            return False
        self.m.update(self.d)
        node.full_resync = False
        self.handle(name, ev.FullResyncDone())
        return True

    def fence(self, name: str, ok: bool) -> bool:
        node = self.nodes[name]
        if node.core is None or not node.fence_asked:
            return False
        node.fence_asked = False
        if ok:
            self.crash(node.config.peer)  # the fence powers the peer off
        self.handle(name, ev.FenceResult(ok, "simulated"))
        return True

    # -- what the FRAMs say ------------------------------------------------------------------

    def durable(self, name: str) -> LoadedPair:
        image = bytes(self.nodes[name].nvram.data)
        cached = self._loaded.get(name)
        if cached is None or cached[0] != image:
            cached = (image, load_image(image))
            self._loaded[name] = cached
        return cached[1]

    def covering(self) -> set[int]:
        """Every region any FRAM names (HELD or INTENT): I1's union."""
        out: set[int] = set()
        for name in NODES:
            loaded = self.durable(name)
            out |= set(loaded.held) | set(loaded.intent)
        return out

    def differing(self) -> set[int]:
        return {r for r in set(self.d) | set(self.m) if self.d.get(r, 0) != self.m.get(r, 0)}

    # -- invariants --------------------------------------------------------------------------

    def check_write(self, name: str, epoch: int, regions: tuple[int, ...]) -> None:
        """I3 and I6, at the moment a write reaches D."""
        node = self.nodes[name]
        assert node.core is not None
        own = self.durable(name)
        peer = self.durable(node.config.peer)
        top = max(self.durable(n).state.epoch for n in NODES)
        if epoch < top:
            raise InvariantViolation(f"I6: {name} writes {regions} at epoch {epoch}, "
                                     f"the pair is at {top}")
        if own.state.sole and own.state.role == PRIMARY and peer.state.epoch != own.state.epoch:
            covered = set(own.intent) | set(own.held)
            where = "its own FRAM (sole owner)"
        else:
            # A primary's own FRAM names a region in INTENT, or in the HELD it took over
            # (or took back) with: its restart resyncs both (PairCore._own_dirty).
            covered = set(peer.held) & (set(own.intent) | set(own.held))
            where = f"{node.config.peer}'s HELD and its own FRAM"
            if own.state.sole and peer.state.epoch == own.state.epoch:
                covered |= set(own.intent) | set(own.held)
        missing = set(regions) - covered
        if missing:
            raise InvariantViolation(f"I3: {name} writes {sorted(missing)} to D before they "
                                     f"are durable in {where}")

    def check_fram(self, name: str, before: LoadedPair) -> None:
        """I8: an entry leaves a record-holder's HELD only by a CLEAR not older than it.
        (A stale node's handover wipes its tables in the change that adopts the new
        epoch, and a sole owner clears its inherited HELD itself: both are exempt.)"""
        after = self.durable(name)
        if before.state.role != RECORD_HOLDER or after.state.epoch != before.state.epoch:
            return
        cleared = self.clears_delivered[name]
        for r, e in before.held.items():
            if r not in after.held and cleared.get(r, -1) < e.gen:
                raise InvariantViolation(f"I8: {name} dropped ({r}, gen {e.gen}) without a "
                                         f"CLEAR at that gen (highest {cleared.get(r)})")

    def check(self) -> None:
        """I1, I2 and I10 after a step."""
        differ = self.differing()
        named = self.covering()
        lost = differ - named
        # Two sole owners (a split brain made on purpose) may each land a stale copy on
        # M over the other's newer one: only the full resync its resolution starts puts
        # M right, and the teardown checks that it does.
        if lost and not self.split_brain_made and not any(
                self.durable(n).state.full_resync for n in NODES):
            raise InvariantViolation(f"I1: regions {sorted(lost)} differ between D and M "
                                     "and no FRAM names them")
        for name in NODES:
            node = self.nodes[name]
            if node.core is None:
                continue
            state = self.durable(name).state
            if state.epoch < self.max_epoch[name]:
                raise InvariantViolation(f"I10: {name}'s epoch went back to {state.epoch}")
        self._check_subset()
        self._check_failover_ready(differ)

    def _check_subset(self) -> None:
        """I2: a primary's local copy is in the holder's durable HELD (same epoch)."""
        for name in NODES:
            node = self.nodes[name]
            if node.core is None or node.core.role != PRIMARY:
                continue
            peer = self.durable(node.config.peer)
            mine = self.durable(name)
            if peer.state.epoch != mine.state.epoch or peer.state.role != RECORD_HOLDER:
                continue
            extra = node.core.local_copy() - set(peer.held)
            if extra:
                raise InvariantViolation(f"I2: {name}'s local copy has {sorted(extra)}, "
                                         f"not durable at {node.config.peer}")

    def _check_failover_ready(self, differ: set[int]) -> None:
        """I1 for a takeover: when the holder's FRAM says its record is complete, that
        record alone names every region that differs."""
        if self.split_brain_made:
            return
        for name in NODES:
            holder = self.durable(name)
            peer = self.durable(self.nodes[name].config.peer)
            if (holder.state.role != RECORD_HOLDER or not holder.state.held_complete
                    or peer.state.role != PRIMARY or peer.state.epoch != holder.state.epoch):
                continue
            lost = differ - set(holder.held)
            if lost:
                raise InvariantViolation(f"I1: {name} says its record is complete, but "
                                         f"{sorted(lost)} differ and it does not hold them")

    def note_split_brain(self) -> None:
        self.split_brain_made = True


