"""Active-active in simulation: two nodes, each with its own core (its record, held at
the peer) and the holder core of the peer's record, over a network that drops,
duplicates and reorders; a shared D and M as version numbers per region.

The simulation plays both nodes' runtimes and the coordinator between a node's two cores
(events.py: ``ReleaseAsk`` -> ``ReleaseRequest``, ``ReleaseReady`` -> mirror quiet ->
``ReleaseDone``, ``Covered`` -> ``Handed``), and checks after every step:

- *ownership*: no region is in both nodes' local copies;
- *coherence* (PAIR.md I7): no two in-flight D writes to one region from both nodes, and
  no mirror copy started by a node while the other has a write to the region in flight;
- *coverage* (I1): every region where D and M differ is named in some FRAM;
- *write order* (I3): a write reaches D only with each region in the writer's local copy
  and durable in the peer's HELD.

``mirror_ownership=False`` is the broken build issue 16 asks the suite to catch: a node
lets a region go without its mirror having it — neither waiting for a copy in flight nor
for the region to be on M first.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from firmware.peer import events as ev
from firmware.peer.config import PairConfig, serial_link, tcp_link
from firmware.peer.core import PairCore
from firmware.peer.frames import PRIMARY, RECORD_HOLDER
from firmware.peer.held import LoadedPair, PairFram, PairState, required_bytes
from tests.peer.pair_sim import RamFram, load_image

KEY = b"active-active simulation key"
TCP, SERIAL = "tcp", "serial"
LINKS = (TCP, SERIAL)
NODES = ("a", "b")
OWN, HOLDER = "own", "holder"
CAPACITY = 32
NETWORK_BUFFER = 40


class Violation(AssertionError):
    pass


def record_key(owner: str) -> bytes:
    """The key of one direction: the record of ``owner``, between its own core and the
    peer's holder core (a frame of one direction never passes for the other's)."""
    return hmac.new(KEY, b"tandem-pair-record:" + owner.encode(), hashlib.sha256).digest()


def _config(node: str, owner: str, **overrides: object) -> PairConfig:
    peer = "b" if node == "a" else "a"
    settings: dict[str, object] = dict(
        lease_s=3.0, lease_early_s=0.3, takeover_margin_s=1.0, retransmit_s=0.5,
        mark_batch=8, mark_window=2, clear_batch=8, clear_delay_s=1.0, reconcile_part=8,
        anti_entropy_s=20.0, fence_command=False, trust_lease=True, auto_takeover=False,
        coherent=True,
        dwell_s=0.05)
    settings.update(overrides)
    return PairConfig(node, peer, record_key(owner), (tcp_link(TCP), serial_link(SERIAL)),
                      **settings)  # type: ignore[arg-type]


class _CarelessCore(PairCore):
    """The mutant: a region is handed over dirty, its unmirrored data left behind."""

    def _clean_for_release(self, region: int) -> bool:
        return True


@dataclass
class Core:
    kind: str  # OWN or HOLDER
    core: PairCore
    nvram: RamFram
    fram: PairFram
    fram_queue: list[ev.Persist] = field(default_factory=list)


@dataclass
class Node:
    name: str
    cores: dict[str, Core]
    in_flight: dict[int, tuple[int, ...]] = field(default_factory=dict)
    copies: list[tuple[int, int, int]] = field(default_factory=list)  # region, gen, version
    ready: dict[int, frozenset[int]] = field(default_factory=dict)  # waiting for the mirror

    @property
    def own(self) -> PairCore:
        return self.cores[OWN].core

    @property
    def holder(self) -> PairCore:
        return self.cores[HOLDER].core


class AASim:
    def __init__(self, *, mirror_ownership: bool = True, regions: int = 12,
                 **config: object) -> None:
        self.now = 0.0
        self.mirror_ownership = mirror_ownership
        self.regions = regions
        self.nodes: dict[str, Node] = {}
        for name in NODES:
            peer = "b" if name == "a" else "a"
            cores: dict[str, Core] = {}
            for kind, owner, role in ((OWN, name, PRIMARY), (HOLDER, peer, RECORD_HOLDER)):
                nvram = RamFram(required_bytes(CAPACITY))
                PairFram(nvram).format(PairState(name, peer, role), CAPACITY)
                fram = PairFram(nvram)
                loaded = fram.open_boot()
                factory = PairCore if mirror_ownership else _CarelessCore
                core = factory(_config(name, owner, **config), loaded, now=self.now)
                cores[kind] = Core(kind, core, nvram, fram)
            self.nodes[name] = Node(name, cores)
        # (sending node, sending core kind, link) -> frames on their way
        self.net: dict[tuple[str, str, str], list[bytes]] = {
            (n, k, link): [] for n in NODES for k in (OWN, HOLDER) for link in LINKS}
        self.d: dict[int, int] = {}
        self.m: dict[int, int] = {}
        self.version = 0
        self.next_write = 0
        self.pending: dict[int, tuple[int, ...]] = {}  # write id -> regions, not issued
        self.issued = 0
        self.handed = 0
        for name in NODES:
            for kind in (OWN, HOLDER):
                self.handle(name, kind, ev.Tick())
                for link in LINKS:
                    self.handle(name, kind, ev.LinkUp(link))

    # -- the runtimes and the coordinator ------------------------------------------------

    def handle(self, name: str, kind: str, event: ev.Event) -> None:
        node = self.nodes[name]
        core = node.cores[kind]
        for action in core.core.handle(self.now, event):
            self._carry_out(node, core, action)

    def _carry_out(self, node: Node, core: Core, action: ev.Action) -> None:
        if isinstance(action, ev.Send):
            queue = self.net[(node.name, core.kind, action.link)]
            queue.append(action.payload)
            if len(queue) > NETWORK_BUFFER:
                del queue[0]
        elif isinstance(action, ev.Persist):
            core.fram_queue.append(action)
            if len(core.fram_queue) == 1:
                self._fram_step(node, core)
        elif isinstance(action, ev.WriteProceed):
            self._issue(node, action)
        elif isinstance(action, ev.WriteRefused):
            self.pending.pop(action.write, None)
        elif isinstance(action, ev.ReleaseAsk):
            self.handle(node.name, OWN, ev.ReleaseRequest(action.token, action.regions))
        elif isinstance(action, ev.ReleaseReady):
            busy = {region for region, _, _ in node.copies}
            if self.mirror_ownership and not busy.isdisjoint(action.regions):
                node.ready[action.token] = action.regions  # after the copy lands
            else:
                self.handle(node.name, HOLDER, ev.ReleaseDone(action.token))
        elif isinstance(action, ev.Covered):
            self.handed += len(action.regions)
            self.handle(node.name, OWN, ev.Handed(action.token, action.regions))

    def _fram_step(self, node: Node, core: Core) -> None:
        while core.fram_queue:
            persist = core.fram_queue[0]
            for change in persist.changes:
                core.fram.apply(change)
            core.fram_queue.pop(0)
            self.handle(node.name, core.kind, ev.FramDone(persist.token))

    def _issue(self, node: Node, action: ev.WriteProceed) -> None:
        regions = self.pending.pop(action.write)
        if action.deadline is not None and self.now >= action.deadline:
            self.handle(node.name, OWN, ev.WriteDone(action.write, ok=False))
            return
        other = self.nodes["b" if node.name == "a" else "a"]
        peer_held = self.durable(other.name, HOLDER)
        for r in regions:
            if r not in node.own.local_copy() and not node.own.persisted_state.sole:
                raise Violation(f"{node.name} wrote region {r} outside its local copy")
            if r not in peer_held.held and not node.own.persisted_state.sole:
                raise Violation(f"{node.name} wrote region {r} not durable in the peer's "
                                f"HELD")
            for busy in other.in_flight.values():
                if r in busy:
                    raise Violation(f"both nodes have a write to region {r} in flight")
        self.version += 1
        for r in regions:
            self.d[r] = self.version
        node.in_flight[action.write] = regions
        self.issued += 1

    # -- what the rules do ---------------------------------------------------------------

    def host_write(self, name: str, regions: tuple[int, ...],
                   predicted: tuple[int, ...] = ()) -> int:
        self.next_write += 1
        self.pending[self.next_write] = regions
        self.handle(name, OWN, ev.HostWrite(self.next_write, regions, predicted))
        return self.next_write

    def complete_write(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.in_flight:
            return False
        write = min(node.in_flight)
        del node.in_flight[write]
        self.handle(name, OWN, ev.WriteDone(write))
        return True

    def deliver(self, src: str, kind: str, link: str, index: int = 0, *,
                keep: bool = False) -> bool:
        queue = self.net[(src, kind, link)]
        if not queue:
            return False
        payload = queue[index % len(queue)]
        if not keep:
            del queue[index % len(queue)]
        dst = "b" if src == "a" else "a"
        self.handle(dst, HOLDER if kind == OWN else OWN, ev.FrameIn(link, payload))
        return True

    def drop(self, src: str, kind: str, link: str, index: int = 0) -> bool:
        queue = self.net[(src, kind, link)]
        if not queue:
            return False
        del queue[index % len(queue)]
        return True

    def deliver_all(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            moved = False
            for key in list(self.net):
                while self.deliver(*key):
                    moved = True
            if not moved:
                return

    def advance(self, dt: float) -> None:
        self.now += dt
        for name in NODES:
            for kind in (OWN, HOLDER):
                self.handle(name, kind, ev.Tick())

    def mirror_start(self, name: str, region: int) -> bool:
        node = self.nodes[name]
        gen = node.own.mirror_snapshot(region)
        if gen is None:
            return False
        other = self.nodes["b" if name == "a" else "a"]
        if any(region in busy for busy in other.in_flight.values()):
            raise Violation(f"{name} starts copying region {region} while the peer's write "
                            f"to it is in flight")
        node.copies.append((region, gen, self.d.get(region, 0)))
        return True

    def mirror_finish(self, name: str) -> bool:
        node = self.nodes[name]
        if not node.copies:
            return False
        region, gen, version = node.copies.pop(0)
        if node.own.frozen:
            return True  # the copy did not land: a frozen node stops its mirror too
        self.m[region] = version
        self.handle(name, OWN, ev.Mirrored(region, gen))
        busy = {r for r, _, _ in node.copies}
        for token, regions in list(node.ready.items()):
            if busy.isdisjoint(regions):
                del node.ready[token]
                self.handle(name, HOLDER, ev.ReleaseDone(token))
        return True

    def flush_clears(self, name: str) -> None:
        self.handle(name, OWN, ev.FlushClears())

    # -- what the FRAMs say --------------------------------------------------------------

    def durable(self, name: str, kind: str) -> LoadedPair:
        return load_image(bytes(self.nodes[name].cores[kind].nvram.data))

    def covering(self) -> set[int]:
        out: set[int] = set()
        for name in NODES:
            for kind in (OWN, HOLDER):
                loaded = self.durable(name, kind)
                out |= set(loaded.held) | set(loaded.intent)
        return out

    def differing(self) -> set[int]:
        return {r for r in set(self.d) | set(self.m) if self.d.get(r, 0) != self.m.get(r, 0)}

    # -- invariants ----------------------------------------------------------------------

    def check(self) -> None:
        a, b = (self.nodes[n].own.local_copy() for n in NODES)
        if a & b:
            raise Violation(f"regions {sorted(a & b)} are in both nodes' local copies")
        uncovered = self.differing() - self.covering()
        if uncovered:
            raise Violation(f"regions {sorted(uncovered)} differ between D and M but no FRAM "
                            f"names them")

    def drain(self, rounds: int = 400) -> None:
        """Quiet the pair: every write done, every dirty region copied, clears acked."""
        for _ in range(rounds):
            self.deliver_all()
            for name in NODES:
                while self.complete_write(name):
                    pass
                while self.mirror_finish(name):
                    pass
                for region in sorted(self.nodes[name].own.dirty_regions()):
                    if self.mirror_start(name, region):
                        self.mirror_finish(name)
                self.flush_clears(name)
            self.check()
            self.advance(0.1)
            if not self.pending and not self.differing() and all(
                    not self.nodes[n].own.dirty_regions() for n in NODES):
                return
