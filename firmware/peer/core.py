"""The pair protocol core: one node's state machine — no sockets, no threads, no clock.

Two appliances share the local medium D and the second medium M. The *primary* serves
hosts; the *record-holder* holds the primary's write record in its own FRAM (HELD). The
primary keeps in RAM a *local copy* (LC) of what the holder holds durably, and in its
own FRAM an INTENT list of the regions it may have written. The rules (docs/pair.md):

- LC ⊆ HELD, always: a region enters LC only after the holder's MARK_ACK (sent once the
  batch is durable in the holder's FRAM) and after its INTENT entry is durable; it
  leaves LC before the CLEAR that asks the holder to drop it is sent.
- A write is issued to D only when every region it touches is in LC and the lease the
  holder granted is running; a hit costs no message. The written and the predicted
  regions of a miss go in one MARK batch.
- Clears are lazy, batched and compare-and-clear on a per-region generation: the holder
  drops an entry only if its stored gen is not newer than the CLEAR's, and every MARK
  carries a gen newer than any CLEAR sent before it, so a racing write is never lost.
- Unacknowledged MARK and CLEAR batches are sent again (new sequence number, same batch
  id) until acknowledged; every handler is idempotent.
- The lease: the primary asks for one in every heartbeat and counts it from the send
  time of the heartbeat that got it, ``lease_early_s`` short; without one it issues no
  write and no mirror copy. The holder counts from the receive time and takes over
  without another fence only ``takeover_margin_s`` after the last lease it granted ran
  out, so the primary has stopped before the holder starts.
- A takeover bumps the epoch in the survivor's FRAM before it serves. A node that sees
  a higher epoch stops, hands what its FRAM names to the survivor (union, never
  intersection), waits for that to be durable there, wipes, adopts the epoch and
  becomes the survivor's record-holder. Epochs that diverged (both took over) are a
  split brain: both freeze until an operator's ``rejoin`` makes one side yield.

The runtime feeds events (events.py) to :meth:`PairCore.handle` and carries out the
actions in order. FRAM changes come out as ``Persist`` actions, one outstanding at a
time; the core counts a change as durable only when ``FramDone`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import Enum

from firmware.peer.config import (
    LinkConfig,
    LinkStatus,
    MessageCounters,
    PairConfig,
    PairStatus,
    PeerState,
)
from firmware.peer.events import (
    Action,
    Covered,
    Event,
    FenceResult,
    FlushClears,
    FramDone,
    FrameIn,
    FramFailed,
    Freeze,
    FullResyncDone,
    Handed,
    HostWrite,
    LinkDown,
    LinkUp,
    Mirrored,
    Persist,
    RejoinCommand,
    ReleaseAsk,
    ReleaseDone,
    ReleaseReady,
    ReleaseRequest,
    Report,
    Resync,
    RoleChanged,
    RunFence,
    Send,
    TakeOver,
    TakeoverCommand,
    Thaw,
    Tick,
    WriteCancel,
    WriteDone,
    WriteProceed,
    WriteRefused,
    WriteWait,
)
from firmware.peer.frames import (
    KIND_PREDICTED,
    KIND_RESYNC,
    KIND_WRITE,
    MAX_RUN,
    PRIMARY,
    PROTOCOL_VERSION,
    RECORD_HOLDER,
    Clear,
    ClearAck,
    FenceNotice,
    FrameGate,
    FrameSealer,
    Header,
    Heartbeat,
    HeartbeatAck,
    Hello,
    HelloAck,
    Mark,
    MarkAck,
    Message,
    Nak,
    Reconcile,
    ReconcileAck,
    ReconcileReq,
    Refusal,
)
from firmware.peer.held import (
    HELD,
    INTENT,
    Entry,
    FramChange,
    LoadedPair,
    PairState,
    StateChange,
    TableChange,
)

FEATURES = ("mark-runs",)


class Relation(Enum):
    """What the handshake found between this node's epoch and role and the peer's."""

    NORMAL = "normal"  # same epoch, one primary and one record-holder
    STALE = "stale"  # this node is behind: hand over, adopt the peer's epoch
    PEER_STALE = "peer-stale"  # the peer is behind: take what it hands over
    SPLIT_BRAIN = "split-brain"  # both took over
    CONFLICT = "role-conflict"  # same epoch, same role: a configuration error
    # Failback (active-active): the primary of the peer's record gave the role back.
    HANDING_BACK = "handing-back"  # this node did: it waits for the owner to take it
    TAKING_BACK = "taking-back"  # the peer did: this node, the owner, is primary again


# --- internal bookkeeping -------------------------------------------------------------------


class _Shadow:
    """One FRAM table as the core sees it: what it should name (``want``), what FRAM is
    known to name (``durable``, never more than the FRAM holds), regions whose FRAM
    state a failed write left unknown, and the regions changed since the last
    ``Persist`` (so that finding the next change costs what changed, not the table)."""

    def __init__(self, entries: dict[int, Entry]) -> None:
        self.want: dict[int, Entry] = dict(entries)
        self.durable: dict[int, Entry] = dict(entries)
        self.suspect: set[int] = set()
        self._touched: set[int] = set()

    def put(self, entry: Entry) -> None:
        cur = self.want.get(entry.region)
        if cur is None or cur.gen < entry.gen:
            self.want[entry.region] = entry
            self._touched.add(entry.region)

    def drop(self, region: int) -> None:
        if self.want.pop(region, None) is not None:
            self._touched.add(region)

    def drop_all(self) -> None:
        self._touched |= self.want.keys() | self.durable.keys()
        self.want.clear()

    def has(self, region: int) -> bool:
        """Named, and durably so, by the entry wanted now: what a write may rely on. (A
        durable entry of a lower gen may be one a change in flight is removing.)"""
        wanted = self.want.get(region)
        durable = self.durable.get(region)
        return wanted is not None and durable is not None and durable.gen >= wanted.gen

    def named(self) -> set[int]:
        """Every region the FRAM may name, now or once the change in flight lands."""
        return self.want.keys() | self.durable.keys() | self.suspect

    def take(self, name: str) -> TableChange | None:
        """The change that makes FRAM say ``want``, for the regions changed since the
        last one (None: nothing to write)."""
        regions = sorted(self._touched | self.suspect)
        self._touched.clear()
        add = tuple(self.want[r] for r in regions if r in self.want
                    and (r not in self.durable or self.durable[r].gen < self.want[r].gen))
        remove = tuple(r for r in regions if r not in self.want
                       and (r in self.durable or r in self.suspect))
        return TableChange(name, add, remove) if add or remove else None

    def clean(self) -> bool:
        return not self._touched and not self.suspect

    def persisted(self, change: TableChange) -> None:
        for e in change.add:
            self.durable[e.region] = e
        for r in change.remove:
            self.durable.pop(r, None)
        self.suspect -= {e.region for e in change.add} | set(change.remove)

    def failed(self, change: TableChange) -> None:
        touched = {e.region for e in change.add} | set(change.remove)
        for r in touched:
            self.durable.pop(r, None)
        self.suspect |= touched


@dataclass
class _Link:
    config: LinkConfig
    connected: bool = False
    last_rx: float | None = None
    last_answer: float | None = None  # an HB_ACK to one of our heartbeats
    last_hb: float = float("-inf")
    rtt: float | None = None
    hb_sent: dict[int, float] = field(default_factory=dict)

    def hears(self, now: float) -> bool:
        return (self.connected and self.last_rx is not None
                and now - self.last_rx < self.config.dead_after_s)

    def state(self, now: float) -> str:
        if not self.hears(now):
            return "down"
        if self.last_answer is None or now - self.last_answer >= self.config.dead_after_s:
            return "one-way"
        return "up"


@dataclass
class _PeerView:
    boot: int
    epoch: int
    creator: str
    parent: tuple[int, str]
    role: str
    sole: bool
    capacity: int
    yielding: bool
    handing_back: bool = False


@dataclass
class _Write:
    regions: tuple[int, ...]
    predicted: tuple[int, ...]
    issued: bool = False
    reason: str = ""


@dataclass
class _Batch:
    """A MARK (``regions``: region -> kind) or CLEAR (``regions``: region -> gen)."""

    gen: int
    regions: dict[int, int]
    last_sent: float


@dataclass
class _Request:
    """A RECONCILE_REQ this node sent, and the parts received."""

    request: int
    sent_at: float
    parts: int | None = None
    got: set[int] = field(default_factory=set)
    done: bool = False


@dataclass
class _Release:
    """The peer's request for regions (active-active), as the own core tracks it."""

    regions: frozenset[int]
    allowed: frozenset[int]  # our writes that were waiting when it came (ties won)
    asked_at: float
    ready: bool = False


@dataclass
class _Handover:
    """A stale node's answer to the survivor's RECONCILE_REQ, part by part."""

    request: int
    parts: list[tuple[tuple[int, int, int], ...]]
    acked: set[int] = field(default_factory=set)
    last_sent: float = float("-inf")


def mark_runs(regions: dict[int, int]) -> tuple[tuple[int, int, int], ...]:
    """``(first, count, kind)`` runs of consecutive regions of one kind."""
    runs: list[list[int]] = []
    for r in sorted(regions):
        kind = regions[r]
        last = runs[-1] if runs else None
        if (last is not None and last[0] + last[1] == r and last[2] == kind
                and last[1] < MAX_RUN):
            last[1] += 1
        else:
            runs.append([r, 1, kind])
    return tuple((a, b, c) for a, b, c in runs)


def _count(counts: dict[int, int], regions: Iterable[int], delta: int) -> None:
    for r in regions:
        left = counts.get(r, 0) + delta
        if left > 0:
            counts[r] = left
        else:
            counts.pop(r, None)


def _epoch_id(state: PairState) -> tuple[int, str]:
    return (state.epoch, state.epoch_creator)


# --- the core -------------------------------------------------------------------------------


class PairCore:
    """One node of the pair. Build it from what ``PairFram.open_boot()`` loaded."""

    def __init__(self, config: PairConfig, loaded: LoadedPair, *, now: float) -> None:
        state = loaded.state
        if (state.node, state.peer) != (config.node, config.peer):
            raise ValueError(f"FRAM belongs to {state.node!r} paired with {state.peer!r}, "
                             f"not {config.node!r} with {config.peer!r}")
        self.config = config
        self._capacity = loaded.capacity
        self._boot = state.boot
        self._gate = FrameGate(config.key, node=config.node, peer=config.peer)
        self._sealer = FrameSealer(config.key, node=config.node, boot=state.boot)
        self._links = {link.name: _Link(link) for link in config.links}
        self.counters = MessageCounters()
        self._out: list[Action] = []
        self._now = now

        # What the FRAM says, and what it should say.
        self._durable_state = state
        self._want_state = state
        self._tables = {HELD: _Shadow(loaded.held), INTENT: _Shadow(loaded.intent)}
        self._issued = 0  # last Persist token
        self._inflight: tuple[int, tuple[FramChange, ...]] | None = None
        self._waiters: list[tuple[int, Callable[[], object]]] = []
        self._fram_retry_at: float | None = None
        damaged = sum(loaded.damaged.values())
        if damaged:
            # A bit flip took an entry we cannot name: the record is not to be trusted.
            self._want_state = replace(self._want_state, full_resync=True,
                                       held_complete=False)

        # The session with the peer.
        self._peer: _PeerView | None = None
        self._relation: Relation | None = None
        self._had_session = False
        self._peer_lost = False
        self._behind = False  # a frame showed a higher epoch: stop until the handshake
        self._last_hello = float("-inf")
        self._hello_sqs: set[int] = set()  # our latest HELLO, as sent on each link
        self._hello_due = False  # the latest HELLO is not answered yet
        self._last_hello_args: dict[str, object] = {}

        # As primary.
        self._pair_mode = False
        self._lc: dict[int, int] = {}  # region -> gen of the MARK the holder acked
        self._acked: dict[int, int] = {}  # acked, its INTENT entry not durable yet
        self._marking: dict[int, int] = {}  # region -> batch id (0: queued, not sent)
        self._mark_queue: dict[int, int] = {}  # region -> kind, the open batch
        self._marks_out: dict[int, _Batch] = {}
        self._gen: dict[int, int] = {}
        self._next_gen = state.boot << 32  # a boot's gens exceed every earlier boot's
        self._pending: dict[int, int] = {}  # region -> writes issued, not done
        self._waited_on: dict[int, int] = {}  # region -> writes waiting to be issued
        self._resync: set[int] = set()
        self._clearing: dict[int, tuple[int, int]] = {}  # region -> (gen, batch; 0: queued)
        self._clear_queue: dict[int, int] = {}  # region -> gen
        self._clear_queued_at = 0.0
        self._clears_out: dict[int, _Batch] = {}
        self._writes: dict[int, _Write] = {}
        # MARK/CLEAR batch and RECONCILE_REQ ids; from boot << 32 like sequence numbers,
        # so that a late answer to an earlier boot's batch names no batch of this one.
        self._next_id = state.boot << 32
        self._lease_until = float("-inf")
        self._reconcile: _Request | None = None
        self._reconciled = False
        self._last_reconcile = float("-inf")
        self._handover_marks: set[int] = set()

        # Active-active, as the own core: the peer's requests for regions (its MARK
        # tokens) not answered yet or answered and not yet handed; regions given away
        # while this node's own MARK for them was out; when each region was won.
        self._releases: dict[int, _Release] = {}
        self._surrendered: dict[int, int] = {}  # region -> batch id whose ack is void
        self._won_at: dict[int, float] = {}
        self.handover_waits: list[float] = []  # request to ready, seconds (last 1000)
        self.handovers = 0

        # As record-holder.
        self._cleared_upto: dict[int, int] = {}  # region -> highest gen cleared
        # Active-active: the peer's MARKs waiting for this node to let go of regions.
        self._release_wait: dict[int, tuple[str, Header, Mark]] = {}
        self._granted: dict[int, None] = {}  # MARK batches made durable (the latest)
        # A grant made just before this boot may still run at the peer.
        self._promised_until = now + config.lease_s
        self._fencing = False
        self._fence_failed = False
        self._takeover_asked = False
        self._taking_over: str | None = None
        # Failback: the peer's HELD count (heartbeat acks); taking the role back.
        self._peer_held: int | None = None
        self._taking_back = False
        self._owed_marks: set[int] = set()

        # Stale node, handing over; survivor, taking over.
        self._stale = False
        self._handover_out: _Handover | None = None
        self._handover_in: _Request | None = None
        self._split = False

        self._reported: set[str] = set()
        self._frozen = True
        self._last_link_states = {name: "down" for name in self._links}
        self._started = False

    # -- the entry point ---------------------------------------------------------------------

    def handle(self, now: float, event: Event) -> list[Action]:
        """Digest one event; the actions to carry out, in order."""
        self._now = now
        self._out = []
        if not self._started:
            self._start()
        if isinstance(event, HostWrite):
            self._on_host_write(event)
        elif isinstance(event, WriteDone):
            self._on_write_done(event)
        elif isinstance(event, WriteCancel):
            self._on_write_cancel(event)
        elif isinstance(event, FrameIn):
            self._on_frame(event)
        elif isinstance(event, LinkUp):
            self._on_link(event.link, True)
        elif isinstance(event, LinkDown):
            self._on_link(event.link, False)
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, FramDone):
            self._on_fram_done(event.token)
        elif isinstance(event, FramFailed):
            self._on_fram_failed(event)
        elif isinstance(event, Mirrored):
            self._on_mirrored(event)
        elif isinstance(event, FlushClears):
            self._flush_clears(force=True)
        elif isinstance(event, FenceResult):
            self._on_fence_result(event)
        elif isinstance(event, TakeoverCommand):
            self._on_takeover_command(event)
        elif isinstance(event, RejoinCommand):
            self._on_rejoin()
        elif isinstance(event, FullResyncDone):
            self._on_full_resync_done()
        elif isinstance(event, ReleaseRequest):
            self._on_release_request(event)
        elif isinstance(event, ReleaseDone):
            self._on_release_done(event)
        elif isinstance(event, Handed):
            self._on_handed(event)
        self._settle()
        out, self._out = self._out, []
        return out

    def _start(self) -> None:
        """What the FRAM said at boot becomes the first actions."""
        self._started = True
        own = self._own_dirty()
        for r in own:
            self._gen[r] = self._fresh_gen()
        self._resync |= own
        if self.role == PRIMARY:
            self._out.append(RoleChanged(PRIMARY, self.epoch, serving=self._sole_mode))
            if own or self._want_state.full_resync:
                self._out.append(Resync(frozenset(own)))
        else:
            self._out.append(RoleChanged(RECORD_HOLDER, self.epoch, serving=False))

    def _settle(self) -> None:
        """After every event: send what is due, persist what changed, report changes."""
        self._send_marks()
        self._flush_clears(force=False)
        self._check_releases()
        self._release_writes()
        self._pump_fram()
        self._update_freeze()
        self._update_reports()

    # -- queries -----------------------------------------------------------------------------

    @property
    def role(self) -> str:
        return self._durable_state.role

    @property
    def epoch(self) -> int:
        return self._durable_state.epoch

    @property
    def persisted_state(self) -> PairState:
        return self._durable_state

    @property
    def frozen(self) -> bool:
        """No write and no mirror copy may be issued now."""
        return self._frozen

    @property
    def state(self) -> PeerState:
        return self._compute_state()

    def local_copy(self) -> frozenset[int]:
        """LC: the regions this primary knows to be durable in the holder's FRAM."""
        return frozenset(self._lc)

    def held_regions(self) -> frozenset[int]:
        """The regions this node's FRAM holds for its peer (durably)."""
        return frozenset(self._tables[HELD].durable)

    def holds(self, region: int) -> bool:
        """Does this node's FRAM hold ``region`` for the peer (now, or once the change on
        its way lands)? Active-active: the peer owns it."""
        return region in self._tables[HELD].want

    def intent_regions(self) -> frozenset[int]:
        return frozenset(self._tables[INTENT].durable)

    def dirty_regions(self) -> frozenset[int]:
        """Regions that may differ between D and M and that this node is to copy."""
        if self.role != PRIMARY or self._stale:
            return frozenset()
        if self._sole_mode:
            return frozenset(self._tables[INTENT].want.keys() | self._tables[HELD].want.keys()
                             | self._resync)
        return frozenset(self._lc.keys() | self._acked.keys() | self._resync)

    def _is_dirty(self, region: int) -> bool:
        if self.role != PRIMARY or self._stale:
            return False
        if self._sole_mode:
            return (region in self._tables[INTENT].want or region in self._tables[HELD].want
                    or region in self._resync)
        return region in self._lc or region in self._acked or region in self._resync

    def is_dirty(self, region: int) -> bool:
        """``region in dirty_regions()``, without building the set."""
        return self._is_dirty(region)

    def will_be_dirty(self, region: int) -> bool:
        """Dirty now, or once a MARK for it that is on its way is acknowledged: a copy
        made meanwhile cannot clear it yet, the clear has to wait for the ack."""
        return self._is_dirty(region) or (self.role == PRIMARY and region in self._marking)

    @property
    def io_deadline(self) -> float | None:
        """Until when media writes (D, and the mirror's to M) may be issued: None for no
        limit (a sole owner), else the monotonic time the lease ends (-inf: not now).
        The runtime checks this again right before each write (a pause in between)."""
        if not self._io_allowed():
            return float("-inf")
        return None if self._sole_mode else self._lease_until

    @property
    def serving(self) -> bool:
        """This node may serve hosts: a sole owner, or a primary that the peer has
        confirmed as such this boot (a restarted node might be stale: it waits to hear
        the peer), neither stale nor in a split brain. Writes still wait for a lease."""
        if self._io_allowed():
            return True
        return (self.role == PRIMARY and self._relation is Relation.NORMAL
                and not (self._stale or self._split or self._yielding or self._behind))

    def mirror_snapshot(self, region: int) -> int | None:
        """The gen to pass to ``Mirrored`` once ``region`` is copied, or None if it may
        not be copied now (frozen, a write to it in flight or waiting, nothing to copy)."""
        if self._frozen or self._busy(region) or not self._is_dirty(region):
            return None
        return self._gen.get(region, 0)

    def status(self) -> PairStatus:
        now = self._now
        links = tuple(LinkStatus(name, link.config.kind, link.state(now),
                                 None if link.rtt is None else round(link.rtt * 1000, 3),
                                 link.last_rx)
                      for name, link in self._links.items())
        held = self._tables[HELD].durable
        return PairStatus(
            node=self.config.node, peer=self.config.peer, state=self.state.value,
            role=self.role, epoch=self.epoch,
            epoch_creator=self._durable_state.epoch_creator, frozen=self._frozen,
            lease_remaining_s=max(0.0, self._lease_until - now) if self._pair_mode else 0.0,
            links=links, held_regions=len(held), local_copy_regions=len(self._lc),
            intent_regions=len(self._tables[INTENT].durable),
            resync_regions=len(self._resync), marks_outstanding=len(self._marks_out),
            clears_queued=len(self._clear_queue) + len(self._clears_out),
            held_complete=self._durable_state.held_complete,
            full_resync=self._durable_state.full_resync, counters=self.counters.snapshot())

    # -- modes and states --------------------------------------------------------------------

    @property
    def _sole_mode(self) -> bool:
        """Serving alone: writes are covered by this node's own FRAM, no lease needed."""
        return (self.role == PRIMARY and self._durable_state.sole and not self._pair_mode
                and self._taking_over is None)

    @property
    def _yielding(self) -> bool:
        return self._durable_state.yielding

    def _io_allowed(self) -> bool:
        if (self.role != PRIMARY or self._stale or self._split or self._behind
                or self._yielding or self._taking_over is not None
                or self._want_state.handing_back):
            return False
        if self._sole_mode:
            return True
        return self._pair_mode and self._now < self._lease_until

    def _compute_state(self) -> PeerState:
        if self._split:
            return PeerState.SPLIT_BRAIN
        if self._fencing or self._taking_over is not None:
            return PeerState.FENCING
        if self._stale or (self._relation is Relation.PEER_STALE
                           and self._handover_in is not None and not self._handover_in.done):
            return PeerState.RECONCILING
        if self._sole_mode:
            return PeerState.SOLE_OWNER
        if self._peer_lost:
            return PeerState.PEER_LOST_FROZEN
        if self._relation is not Relation.NORMAL:
            return PeerState.CONNECTING
        if self.role == PRIMARY and (not self._reconciled or self._handover_marks
                                     or self._durable_state.sole):
            return PeerState.RECONCILING
        if all(link.state(self._now) == "up" for link in self._links.values()):
            return PeerState.CONNECTED
        return PeerState.DEGRADED_LINK

    def _update_freeze(self) -> None:
        allowed = self._io_allowed()
        if allowed and self._frozen:
            self._frozen = False
            self._out.append(Thaw())
        elif not allowed and not self._frozen:
            self._frozen = True
            self._out.append(Freeze(self._freeze_reason()))

    def _freeze_reason(self) -> str:
        if self.role != PRIMARY:
            return "record-holder"
        if self._split:
            return "split brain"
        if self._stale or self._behind:
            return "stale epoch"
        if self._taking_over is not None:
            return "taking over"
        return "no lease"

    def _update_reports(self) -> None:
        now = self._now
        for name, link in self._links.items():
            state = link.state(now)
            before = self._last_link_states[name]
            if state != before:
                self._last_link_states[name] = state
                if self._had_session and before == "up":
                    self._report("link-degraded", f"{name}: {state}")
                elif state == "up" and self._had_session:
                    self._report("link-restored", name)

    def _report(self, kind: str, detail: str) -> None:
        self._out.append(Report(kind, detail))

    def _report_once(self, kind: str, detail: str) -> None:
        if kind not in self._reported:
            self._reported.add(kind)
            self._report(kind, detail)

    # -- FRAM --------------------------------------------------------------------------------

    def _fresh_gen(self) -> int:
        self._next_gen += 1
        return self._next_gen

    def _when_durable(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once everything wanted so far is durable in FRAM."""
        if self._inflight is None and self._fram_clean():
            callback()
        else:
            self._waiters.append((self._issued + 1, callback))

    def _fram_clean(self) -> bool:
        return (self._want_state == self._durable_state
                and all(t.clean() for t in self._tables.values()))

    def _pump_fram(self) -> None:
        if self._inflight is not None:
            return
        if self._fram_retry_at is not None:
            if self._now < self._fram_retry_at:
                return
            self._fram_retry_at = None
        changes: list[FramChange] = []
        for name in (HELD, INTENT):
            change = self._tables[name].take(name)
            if change is not None:
                changes.append(change)
        if self._want_state != self._durable_state:
            changes.append(StateChange(self._want_state))
        if not changes:
            waiters, self._waiters = self._waiters, []
            for _, callback in waiters:
                callback()
            if self._waiters or not self._fram_clean():
                self._pump_fram()
            return
        self._issued += 1
        self._inflight = (self._issued, tuple(changes))
        self._out.append(Persist(self._issued, tuple(changes)))

    def _on_fram_done(self, token: int) -> None:
        if self._inflight is None or self._inflight[0] != token:
            return
        _, changes = self._inflight
        self._inflight = None
        for change in changes:
            if isinstance(change, StateChange):
                self._durable_state = change.state
            else:
                self._tables[change.table].persisted(change)
        ready = [cb for needed, cb in self._waiters if needed <= token]
        self._waiters = [(n, cb) for n, cb in self._waiters if n > token]
        for callback in ready:
            callback()
        self._admit_acked()

    def _on_fram_failed(self, event: FramFailed) -> None:
        if self._inflight is None or self._inflight[0] != event.token:
            return
        _, changes = self._inflight
        self._inflight = None
        for change in changes:
            if isinstance(change, TableChange):
                self._tables[change.table].failed(change)
            # A failed superblock write may or may not have landed: it is written again.
        self._waiters = [(self._issued + 1, cb) for _, cb in self._waiters]
        self._fram_retry_at = self._now + self.config.fram_retry_s
        self._report("fram-failed", event.error or "FRAM write failed")

    # -- host writes (primary) ---------------------------------------------------------------

    def _on_host_write(self, event: HostWrite) -> None:
        if event.write in self._writes:
            self._out.append(WriteRefused(event.write, "duplicate write id"))
            return
        refusal = self._write_refusal()
        if refusal:
            self._out.append(WriteRefused(event.write, refusal))
            return
        write = _Write(tuple(dict.fromkeys(event.regions)),
                       tuple(r for r in dict.fromkeys(event.predicted)
                             if r not in event.regions))
        self._writes[event.write] = write
        _count(self._waited_on, write.regions, +1)
        self._try_write(event.write, write, first=True)

    def _write_refusal(self) -> str:
        if self.role != PRIMARY:
            return "this node is the record-holder"
        if self._split:
            return "split brain"
        if self._stale or self._yielding:
            return "stale epoch: reconciling with the peer"
        if self._want_state.handing_back:
            return "handing the primary role back to the peer"
        return ""

    def _busy(self, region: int) -> bool:
        """A write to it is in flight or waiting: it must not leave the record (a waiting
        write would otherwise chase its regions out of LC as fast as they come in). Not
        so a region the peer asked for (active-active): our waiting writes wait for it
        to come back, and it must be copied to leave."""
        if self._pending.get(region):
            return True
        return bool(self._waited_on.get(region)) and not (
            self._releases and self._peer_wants(region))

    def _lc_covers(self, regions: Iterable[int]) -> bool:
        """Every region is durable in the holder's FRAM (a MARK_ACK) and in INTENT."""
        lc = self._lc
        return all(r in lc for r in regions)

    def _try_write(self, write_id: int, write: _Write, *, first: bool = False) -> bool:
        """Let the write proceed if it may; otherwise queue what it needs. True: issued."""
        regions = write.regions
        if self._releases and self._held_off(write_id, regions):
            return self._wait(write_id, write, "hand-over", first)
        if self._sole_mode:
            intent = self._tables[INTENT]
            held = self._tables[HELD]
            missing = [r for r in regions if not (intent.has(r) or held.has(r))]
            if first:
                setattr(self.counters, "misses" if missing else "hits",
                        getattr(self.counters, "misses" if missing else "hits") + 1)
            if missing:
                if not self._room_in_intent(missing):
                    return self._wait(write_id, write, "record full", first)
                for r in missing:
                    if r not in intent.want:
                        intent.put(Entry(r, self._fresh_gen(), KIND_WRITE))
                return self._wait(write_id, write, "intent", first)
            return self._issue(write_id, write, None)
        if not self._lc_covers(regions):
            if first:
                self.counters.misses += 1
            missing = [r for r in regions
                       if r not in self._lc and r not in self._acked and r not in self._marking]
            if missing or first:
                if not self._queue_marks(missing, write.predicted if first else ()):
                    return self._wait(write_id, write, "record full", first)
            return self._wait(write_id, write, "mark", first)
        if first:
            self.counters.hits += 1
        if not self._io_allowed():
            return self._wait(write_id, write, "lease" if self._pair_mode else "peer", first)
        return self._issue(write_id, write, self._lease_until)

    def _wait(self, write_id: int, write: _Write, reason: str, first: bool) -> bool:
        if first or write.reason != reason:
            write.reason = reason
            self._out.append(WriteWait(write_id, reason))
        return False

    def _issue(self, write_id: int, write: _Write, deadline: float | None) -> bool:
        gen = self._fresh_gen()
        for r in write.regions:
            self._gen[r] = gen
        _count(self._pending, write.regions, +1)
        write.issued = True
        _count(self._waited_on, write.regions, -1)
        self._out.append(WriteProceed(write_id, self.epoch, deadline))
        return True

    def _release_writes(self) -> None:
        if self.role != PRIMARY:
            return
        for write_id, write in list(self._writes.items()):
            if not write.issued:
                self._try_write(write_id, write)

    def _on_write_done(self, event: WriteDone) -> None:
        write = self._writes.get(event.write)
        if write is None or not write.issued:
            return
        del self._writes[event.write]
        _count(self._pending, write.regions, -1)

    def _on_write_cancel(self, event: WriteCancel) -> None:
        write = self._writes.get(event.write)
        if write is not None and not write.issued:
            del self._writes[event.write]
            _count(self._waited_on, write.regions, -1)

    def _refuse_waiting(self, reason: str) -> None:
        for write_id, write in list(self._writes.items()):
            if not write.issued:
                del self._writes[write_id]
                _count(self._waited_on, write.regions, -1)
                self._out.append(WriteRefused(write_id, reason))

    # -- marks (primary) ---------------------------------------------------------------------

    def _tracked_at_holder(self) -> int:
        """An upper bound of the entries the holder's FRAM may hold for us."""
        return len(self._lc.keys() | self._acked.keys() | self._marking.keys()
                   | self._clearing.keys() | self._resync)

    def _holder_capacity(self) -> int:
        # One slot stays free: raising an entry's gen writes the new slot first.
        cap = self._peer.capacity if self._peer is not None else 0
        return min(cap, self._capacity) - 1

    def _room_in_intent(self, new: list[int]) -> bool:
        intent = self._tables[INTENT].want
        return len(intent.keys() | set(new)) <= self._capacity - 1

    def _queue_marks(self, written: list[int], predicted: Iterable[int]) -> bool:
        """Queue the written regions (all or none) and as many predicted ones as fit.
        False when the written ones do not fit in the holder's record or in INTENT."""
        tracked = self._tracked_at_holder()
        room = self._holder_capacity() - tracked if self._peer is not None else None
        fresh = [r for r in written if r not in self._resync and r not in self._clearing]
        if room is not None and len(fresh) > room:
            return False
        if not self._room_in_intent(written):
            return False
        for r in written:
            self._queue_mark(r, KIND_WRITE)
        if room is not None:
            room -= len(fresh)
        for r in predicted:
            if r in self._lc or r in self._acked or r in self._marking:
                continue
            if room is not None and room <= 0 or not self._room_in_intent([r]):
                break
            self._queue_mark(r, KIND_PREDICTED)
            if room is not None and r not in self._resync and r not in self._clearing:
                room -= 1
        return True

    def _queue_mark(self, region: int, kind: int) -> None:
        if region in self._lc or region in self._acked:
            return
        if region in self._marking:
            if self._marking[region] == 0 and kind < self._mark_queue.get(region, kind):
                self._mark_queue[region] = kind  # a write outranks a prediction
            return
        self._marking[region] = 0
        self._mark_queue[region] = kind
        # Named in this node's FRAM already (INTENT, or the HELD it took over from): no
        # FRAM write. A handover out of sole ownership names its HELD regions again,
        # and INTENT may not have room for them.
        if region not in self._tables[INTENT].want and region not in self._tables[HELD].want:
            self._tables[INTENT].put(Entry(region, self._fresh_gen(), kind))

    def _mark_for_handover(self, region: int) -> None:
        if region not in self._lc:
            self._queue_mark(region, KIND_RESYNC)
            self._handover_marks.add(region)

    def _send_marks(self) -> None:
        if (self.role != PRIMARY or self._relation is not Relation.NORMAL
                or not self._pair_mode or self._stale or self._split):
            return
        while self._mark_queue and len(self._marks_out) < self.config.mark_window:
            # A batch the holder cannot fit would be refused ("full") and sent again for
            # ever: a handover out of sole ownership may name more regions than the
            # holder's table holds. Send what fits; clears make room for the rest.
            room = self._room_to_send()
            if room is not None and room <= 0:
                break
            regions, full = self._next_batch(room)
            if self._marks_out and not full:
                break  # group commit: wait for the outstanding batch or a full one
            for r in regions:
                del self._mark_queue[r]
            gen = self._fresh_gen()
            batch_id = self._new_id()
            self._send_data(Mark(batch_id, gen, mark_runs(regions)))
            for r in regions:
                self._marking[r] = batch_id
                self._gen[r] = gen
            self._marks_out[batch_id] = _Batch(gen, regions, self._now)

    def _room_to_send(self) -> int | None:
        """Entries the holder's table has left for a new MARK batch (None: unknown)."""
        if self._peer is None:
            return None
        sent = {r for r, batch in self._marking.items() if batch}
        held = self._lc.keys() | self._acked.keys() | sent | self._clearing.keys()
        return self._holder_capacity() - len(held)

    def _next_batch(self, limit: int | None = None) -> tuple[dict[int, int], bool]:
        """The next MARK's regions (region -> kind): the queue's lowest, at most
        ``mark_batch`` runs and ``mark_regions`` regions (and ``limit``); and whether
        it is full. A sequential write's regions and its predicted ones are two runs:
        one MARK."""
        cfg = self.config
        most = cfg.mark_regions if limit is None else min(cfg.mark_regions, limit)
        batch: dict[int, int] = {}
        runs = 0
        previous: tuple[int, int] | None = None
        for r, kind in sorted(self._mark_queue.items()):
            if previous is None or previous != (r - 1, kind):
                if runs == cfg.mark_batch:
                    return batch, True
                runs += 1
            batch[r] = kind
            previous = (r, kind)
            if len(batch) == most:
                return batch, True
        return batch, False

    def _on_mark_ack(self, msg: MarkAck) -> None:
        batch = self._marks_out.pop(msg.batch, None)
        if batch is None:
            return
        self.counters.marks_acked += 1
        for r in batch.regions:
            if self._marking.get(r) == msg.batch:
                del self._marking[r]
                if self._surrendered.get(r) == msg.batch:
                    # Given to the peer while this MARK was out: the ack came after the
                    # peer took the region back, so it is not ours. Our entry goes.
                    del self._surrendered[r]
                    self._queue_clear(r, batch.gen)
                    continue
                self._acked[r] = batch.gen
        self._admit_acked()

    def _admit_acked(self) -> None:
        """Acked regions named durably in this node's FRAM (INTENT, or the HELD it took
        over from) enter the local copy."""
        intent, held = self._tables[INTENT], self._tables[HELD]
        for r in [r for r in self._acked if intent.has(r) or held.has(r)]:
            self._lc[r] = self._acked.pop(r)
            self._won_at[r] = self._now
            self._handover_marks.discard(r)
        self._leave_sole()

    def _handover_only(self, r: int) -> bool:
        """Queued for the new holder only because this node named it while sole, with no
        MARK sent for it and no write waiting on it."""
        return (r in self._handover_marks and self._marking.get(r) == 0
                and self._mark_queue.get(r) == KIND_RESYNC and self._want_state.sole)

    def _leave_sole(self) -> None:
        """Once every region this node may have written alone is in the new holder's
        record, it is a primary like any other (and says so: ``covered``). Not while a
        full resync is owed: then nobody knows which regions those are."""
        if (not self._handover_marks and self._pair_mode and self._reconciled
                and self._want_state.sole and not self._want_state.full_resync):
            self._want_state = replace(self._want_state, sole=False)

    # -- clears (primary) --------------------------------------------------------------------

    def _on_mirrored(self, event: Mirrored) -> None:
        r, g = event.region, event.gen
        if self._busy(r) or self._gen.get(r, 0) != g or not self._is_dirty(r):
            return  # written since the snapshot, or about to be: it stays
        if self._sole_mode or self._handover_only(r):
            # Copied while this node's own FRAM is still the authority for it (sole, or
            # leaving sole with the region's handover MARK not sent yet): the copy
            # settles it, the new holder need not hear of it.
            if r in self._handover_marks:
                self._handover_marks.discard(r)
                self._mark_queue.pop(r, None)
                self._marking.pop(r, None)
            self._resync.discard(r)
            self._tables[INTENT].drop(r)
            self._tables[HELD].drop(r)
            self._leave_sole()
            return
        if r in self._marking or r in self._acked:
            # A MARK of ours for it is out (its gen is the one snapshot): no clear now,
            # it would take the new entry. The copy still settles what a restart named
            # (the entries stay: a superset), so the region may go to the peer.
            self._resync.discard(r)
            return
        self._lc.pop(r, None)  # removed locally before the holder is asked to
        self._resync.discard(r)
        self._queue_clear(r, g)

    def _queue_clear(self, r: int, g: int) -> None:
        if not self._clear_queue:
            self._clear_queued_at = self._now
        self._clear_queue[r] = g
        self._clearing[r] = (g, 0)

    def _flush_clears(self, *, force: bool) -> None:
        if (not self._clear_queue or self._relation is not Relation.NORMAL
                or self.role != PRIMARY or not self._pair_mode):
            return
        due = (force or len(self._clear_queue) >= self.config.clear_batch
               or self._now - self._clear_queued_at >= self.config.clear_delay_s)
        while due and self._clear_queue:
            entries = sorted(self._clear_queue.items())[:self.config.clear_batch]
            for r, _ in entries:
                del self._clear_queue[r]
            batch_id = self._new_id()
            self._send_data(Clear(batch_id, tuple(entries)))
            for r, g in entries:
                self._clearing[r] = (g, batch_id)
            self._clears_out[batch_id] = _Batch(0, dict(entries), self._now)
            self._clear_queued_at = self._now

    def _on_clear_ack(self, msg: ClearAck) -> None:
        batch = self._clears_out.pop(msg.batch, None)
        if batch is None:
            return
        self.counters.clears_acked += 1
        for r, g in batch.regions.items():
            if self._clearing.get(r) == (g, msg.batch):
                del self._clearing[r]
                if not (r in self._lc or r in self._acked or r in self._marking
                        or r in self._resync):
                    # The holder dropped it: the INTENT entry may go too.
                    self._tables[INTENT].drop(r)
                    self._tables[HELD].drop(r)

    # -- the wire ----------------------------------------------------------------------------

    def _seal_and_send(self, link: str, message: Message) -> Send:
        frame, payload = self._sealer.seal(message, epoch=self.epoch,
                                           ack=self._gate.highest_sq,
                                           peer_boot=self._gate.peer_boot)
        send = Send(link, frame, payload)
        self._out.append(send)
        self.counters.sent[message.NAME] = self.counters.sent.get(message.NAME, 0) + 1
        return send

    def _data_link(self) -> str | None:
        """TCP when it works, else serial, else any connected link."""
        usable = [link for link in self._links.values() if link.connected]
        for want in (lambda link: link.config.kind == "tcp" and link.hears(self._now),
                     lambda link: link.hears(self._now), lambda link: True):
            for link in usable:
                if want(link):
                    return link.config.name
        return None

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send_data(self, message: Message) -> Send | None:
        """Send on the preferred link; with none, the retransmission sends it later."""
        link = self._data_link()
        if link is None:
            return None
        return self._seal_and_send(link, message)

    def _broadcast(self, message: Message) -> None:
        for name, link in self._links.items():
            if link.connected:
                self._seal_and_send(name, message)

    def _hello(self, answers: int | None = None, link: str | None = None) -> None:
        s = self._durable_state
        args: dict[str, object] = dict(
                    role=s.role, sole=s.sole, epoch_creator=s.epoch_creator, parent=s.parent,
                    capacity=self._capacity, held=len(self._tables[HELD].durable),
                    intent=len(self._tables[INTENT].durable),
                    versions=(PROTOCOL_VERSION, PROTOCOL_VERSION), features=FEATURES,
                    yielding=self._yielding, handing_back=s.handing_back)
        if answers is None:
            # Sent again (Tick) until a HELLO_ACK answers it: the peer must learn every
            # change of epoch, role or yielding. The same HELLO twice in quick succession
            # (several frames asking for it at once) goes out once.
            if (args == self._last_hello_args
                    and self._now - self._last_hello < self.config.retransmit_s / 2):
                return
            self._last_hello_args = args
            self._last_hello = self._now
            self._hello_due = True
            self._hello_sqs = {self._sealer.last_sq + 1 + i
                               for i in range(sum(lk.connected for lk in self._links.values()))}
            self._broadcast(Hello(**args))  # type: ignore[arg-type]  # checked fields
        elif link is not None:
            self._seal_and_send(link, HelloAck(answers, **args))  # type: ignore[arg-type]

    def _nak(self, link: str, header: Header, code: str, detail: str = "") -> None:
        self._seal_and_send(link, Nak(header.sq, code, detail[:200]))

    def _on_link(self, name: str, up: bool) -> None:
        link = self._links.get(name)
        if link is None:
            return
        link.connected = up
        if not up:
            link.last_rx = None
            link.last_answer = None
            return
        # A (re)connection: introduce ourselves, and resend what waits for an answer.
        if self._relation is None or self._peer is None or self._hello_due:
            self._last_hello = float("-inf")
            self._hello()
        self._retransmit(force=True)

    def _on_frame(self, event: FrameIn) -> None:
        link = self._links.get(event.link)
        if link is None:
            return
        try:
            frame = self._gate.open(event.payload)
        except Refusal as refusal:
            self.counters.refused[refusal.reason] = (
                self.counters.refused.get(refusal.reason, 0) + 1)
            h = refusal.header
            if (h is not None and h.src == self.config.peer and link.connected
                    and refusal.reason in ("unknown-type", "malformed", "version")):
                self._nak(event.link, h, refusal.reason, refusal.detail)
            return
        h, msg = frame.header, frame.message
        self.counters.received[msg.NAME] = self.counters.received.get(msg.NAME, 0) + 1
        link.last_rx = self._now
        link.connected = True
        if self._peer_lost and self._taking_over is None and not self._fencing:
            self._peer_lost = False
            self._reported.clear()
            self._report("peer-back", event.link)
        if self._peer is not None and h.boot != self._peer.boot:
            self._peer_restarted()
        if isinstance(msg, Hello | HelloAck):
            self._on_hello(event.link, h, msg)
            return
        if isinstance(msg, Nak):
            self._on_nak(h, msg)
            return
        handover = isinstance(msg, ReconcileReq | Reconcile | ReconcileAck)
        if self._peer is not None and h.ep < self._peer.epoch:
            self._count_refused("stale-epoch")  # older than the peer's own HELLO: late
            return
        if self._peer is not None and h.ep > self._peer.epoch:
            # The peer's epoch moved since its HELLO: what we concluded from it is void.
            self._relation = None
            self._peer = None
            self._hello()
        known = self._peer is not None and self._peer.epoch == h.ep
        if h.ep > self.epoch:
            if known and self._relation in (Relation.STALE, Relation.SPLIT_BRAIN):
                if not (handover and self._relation is Relation.STALE):
                    return  # we know; the handover is under way
            else:
                self._epoch_ahead()
                return
        if isinstance(msg, FenceNotice):
            return
        if h.ep < self.epoch and not handover:
            self._count_refused("stale-epoch")
            if known and self._relation in (Relation.PEER_STALE, Relation.SPLIT_BRAIN):
                return  # the peer knows from the handshake
            self._nak(event.link, h, "stale-epoch", f"epoch {self.epoch}")
            if self.role == PRIMARY and self._durable_state.sole:
                s = self._durable_state
                self._seal_and_send(event.link, FenceNotice("epoch", "took over",
                                                            s.epoch_creator, s.parent))
            return
        if isinstance(msg, Heartbeat):
            self._on_heartbeat(event.link, h, msg)
        elif isinstance(msg, HeartbeatAck):
            self._on_heartbeat_ack(event.link, h, msg)
        elif self._peer is None or self._relation is None:
            if not isinstance(msg, MarkAck | ClearAck | ReconcileAck):
                self._nak(event.link, h, "hello-first")
            self._hello()
        elif isinstance(msg, Mark):
            self._on_mark(event.link, h, msg)
        elif isinstance(msg, MarkAck):
            if h.pb == self._boot:
                self._on_mark_ack(msg)
        elif isinstance(msg, Clear):
            self._on_clear(event.link, h, msg)
        elif isinstance(msg, ClearAck):
            if h.pb == self._boot:
                self._on_clear_ack(msg)
        elif isinstance(msg, ReconcileReq):
            self._on_reconcile_req(event.link, h, msg)
        elif isinstance(msg, Reconcile):
            if h.pb == self._boot:
                self._on_reconcile(event.link, h, msg)
        elif isinstance(msg, ReconcileAck):
            if h.pb == self._boot:
                self._on_reconcile_ack(h, msg)

    def _count_refused(self, reason: str) -> None:
        self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1

    def _peer_restarted(self) -> None:
        """A frame from a new boot of the peer: what we knew of its session is gone."""
        self._peer = None
        self._relation = None
        self._reconciled = False
        self._reconcile = None
        self._handover_in = None
        if self._handover_out is not None:
            self._handover_out = None

    def _epoch_ahead(self) -> None:
        """The peer is at a higher epoch: it took over. Stop until the handshake says
        what we are."""
        if not self._behind:
            self._behind = True
            self._report("stale", "the peer is at a higher epoch")
        self._relation = None
        self._hello()

    def _on_nak(self, h: Header, msg: Nak) -> None:
        if h.ep > self.epoch:
            self._epoch_ahead()
            return
        if msg.code == "hello-first":
            self._hello()
        elif msg.code == "full":
            pass  # the batch stays outstanding and is sent again later
        else:
            self._count_refused(f"nak-{msg.code}")

    # -- handshake ---------------------------------------------------------------------------

    def _on_hello(self, link: str, h: Header, msg: Hello | HelloAck) -> None:
        if isinstance(msg, HelloAck) and h.pb != self._boot:
            return
        peer = self._peer
        if peer is not None and h.boot == peer.boot and h.ep < peer.epoch:
            self._count_refused("stale-epoch")  # a late HELLO: a node's epoch only grows
            return
        if msg.versions[0] > PROTOCOL_VERSION or msg.versions[1] < PROTOCOL_VERSION:
            self._count_refused("version")
            self._nak(link, h, "version", f"this node speaks {PROTOCOL_VERSION}")
            return
        self._peer = _PeerView(h.boot, h.ep, msg.epoch_creator, msg.parent, msg.role,
                               msg.sole, msg.capacity, msg.yielding, msg.handing_back)
        if isinstance(msg, HelloAck) and msg.answers in self._hello_sqs:
            self._hello_due = False
        if isinstance(msg, Hello):
            self._hello(answers=h.sq, link=link)
        self._evaluate()

    def _relation_to(self, peer: _PeerView) -> Relation:
        mine = _epoch_id(self._durable_state)
        theirs = (peer.epoch, peer.creator)
        i_am_sole = self._durable_state.sole
        if self._yielding and peer.yielding:
            return Relation.CONFLICT
        if self._yielding:
            return Relation.STALE if peer.role == PRIMARY else Relation.CONFLICT
        if peer.yielding:
            return Relation.PEER_STALE if self.role == PRIMARY else Relation.CONFLICT
        parent = self._durable_state.parent
        if self.role == RECORD_HOLDER and peer.role == RECORD_HOLDER:
            if self._durable_state.handing_back and theirs == parent:
                return Relation.HANDING_BACK
            if peer.handing_back and peer.parent == mine:
                return Relation.TAKING_BACK
        # The owner took over (the lease ran out) while this node handed the role back:
        # both left the same epoch, and the owner is the primary either way.
        if (self.role == RECORD_HOLDER and self._durable_state.handing_back
                and peer.role == PRIMARY and peer.parent == parent and theirs != mine):
            return Relation.STALE
        if (self.role == PRIMARY and peer.role == RECORD_HOLDER and peer.handing_back
                and peer.parent == parent and theirs != mine):
            return Relation.PEER_STALE
        if mine == theirs:
            if {self.role, peer.role} == {PRIMARY, RECORD_HOLDER}:
                return Relation.NORMAL
            return Relation.CONFLICT
        if peer.epoch > mine[0]:
            if not i_am_sole or peer.parent == mine:
                return Relation.STALE if peer.role == PRIMARY else Relation.CONFLICT
            return Relation.SPLIT_BRAIN
        if peer.epoch < mine[0]:
            if not peer.sole or self._durable_state.parent == theirs:
                return Relation.PEER_STALE if self.role == PRIMARY else Relation.CONFLICT
            return Relation.SPLIT_BRAIN
        return Relation.SPLIT_BRAIN  # one number, two creators: both took over

    def _evaluate(self) -> None:
        assert self._peer is not None
        relation = self._relation_to(self._peer)
        before = self._relation
        self._relation = relation
        self._behind = False
        self._had_session = True
        if relation is not Relation.SPLIT_BRAIN and self._split:
            self._split = False
        if relation is not Relation.STALE and self._stale:
            # No longer behind (both were told to rejoin and neither yields, or the peer
            # now yields to us): whatever was being handed over is moot.
            self._stale = False
            self._handover_out = None
        if relation is Relation.NORMAL:
            if self._want_state.handing_back:
                # The owner took its role back at our epoch: the failback is done.
                self._want_state = replace(self._want_state, handing_back=False)
                self._report("failback", f"{self.config.peer} is primary of its record "
                             f"again (epoch {self.epoch})")
            if self.role == PRIMARY:
                self._enter_pair_mode()
        elif relation is Relation.TAKING_BACK:
            self._take_back()
        elif relation is Relation.HANDING_BACK:
            self._report_once("handing-back", f"waiting for {self.config.peer} to take "
                              f"its record back (epoch {self.epoch})")
        elif relation is Relation.STALE:
            if not self._stale:
                self._stale = True
                self._refuse_waiting("stale epoch: reconciling with the peer")
                self._report("stale", f"peer {self.config.peer} is at epoch "
                             f"{self._peer.epoch}; handing over")
        elif relation is Relation.PEER_STALE:
            if before is not relation:
                self._report("peer-stale", f"peer at epoch {self._peer.epoch}; "
                             "taking what it hands over")
            if self._peer.yielding and not self._want_state.full_resync:
                # The end of a split brain: both wrote D and copied to M, each unaware of
                # the other, so a stale copy may have landed over a newer one in a region
                # neither record names any more. Only a full copy makes M right again.
                self._want_state = replace(self._want_state, full_resync=True)
                self._report("split-brain", "resolved: the peer yields; full resync")
            if self._peer.epoch >= self.epoch:
                # A yielding peer at our epoch number or above: move past it first, so
                # that the epoch it adopts is above every one it had (epochs only grow).
                if self._want_state.epoch <= self._peer.epoch:
                    s = self._durable_state
                    self._want_state = replace(self._want_state, epoch=self._peer.epoch + 1,
                                               epoch_creator=self.config.node,
                                               parent=_epoch_id(s))
                    self._when_durable(self._hello)
            elif self._handover_in is None or self._handover_in.done:
                # Asked again while the peer still says it is behind: it has not let go
                # yet (a lost answer, a restart); the merge is a union, asking is safe.
                self._handover_in = self._request_reconcile()
        elif relation is Relation.SPLIT_BRAIN:
            if not self._split:
                self._split = True
                self._refuse_waiting("split brain")
                self._report("split-brain", f"this node at epoch {self.epoch} "
                             f"({self._durable_state.epoch_creator}), peer at "
                             f"{self._peer.epoch} ({self._peer.creator}); "
                             "run 'peer rejoin' on the node whose writes are to yield")
        elif self._yielding and self._peer.yielding:
            # 'peer rejoin' on both nodes: neither yields; the operator picks one again.
            if self._want_state.yielding:
                self._want_state = replace(self._want_state, yielding=False)
                self._report("role-conflict", "both nodes were told to rejoin; neither yields")
                self._when_durable(self._hello)
        else:
            self._report_once("role-conflict", f"both nodes are {self.role} at one epoch")

    def _enter_pair_mode(self) -> None:
        if not self._pair_mode:
            self._pair_mode = True
            if self._durable_state.sole or self._owed_marks:
                # Coming out of sole ownership: the new holder must hold everything this
                # node may have written alone before it may take over from us. (A node
                # that took its record back holds what its FRAM named the same way.)
                self._owed_marks.clear()
                for r in sorted(self._own_dirty() | self._resync):
                    self._mark_for_handover(r)
        if self._reconcile is None and not self._reconciled:
            self._reconcile = self._request_reconcile()

    def _request_reconcile(self) -> _Request:
        request = self._new_id()
        self._send_data(ReconcileReq(request))
        self._last_reconcile = self._now
        return _Request(request, self._now)

    def _own_dirty(self) -> set[int]:
        """What this node's FRAM names as possibly different, when it is the writer."""
        own = self._tables[INTENT].named()
        if self.role == PRIMARY:
            own |= self._tables[HELD].named()
        return own

    # -- the record-holder's side ------------------------------------------------------------

    def _serving_peer(self) -> bool:
        return (self.role == RECORD_HOLDER and self._relation is Relation.NORMAL
                and self._peer is not None and self._peer.role == PRIMARY
                and not self._stale and self._taking_over is None)

    def _on_heartbeat(self, link: str, h: Header, msg: Heartbeat) -> None:
        grant = 0
        if msg.lease_request_ms and self._serving_peer() and not self._peer_lost \
                and not self._fencing:
            grant = min(msg.lease_request_ms, int(self.config.lease_s * 1000))
            self._promised_until = max(self._promised_until, self._now + grant / 1000)
        if (msg.covered and self._serving_peer() and not self._want_state.held_complete
                and not self._want_state.full_resync):  # a damaged HELD stays incomplete
            self._want_state = replace(self._want_state, held_complete=True)
        self._seal_and_send(link, HeartbeatAck(h.sq, grant, len(self._tables[HELD].want)))
        if self._peer is None or self._relation is None:
            if self._now - self._last_hello >= self.config.retransmit_s:
                self._hello()

    def _on_mark(self, link: str, h: Header, msg: Mark) -> None:
        if not self._serving_peer():
            self._nak(link, h, "not-holder")
            return
        held = self._tables[HELD]
        entries = [Entry(start + i, msg.gen, kind) for start, count, kind in msg.runs
                   for i in range(count)]
        new = {e.region for e in entries if e.region not in held.want}
        if len(held.want) + len(new) > self._capacity - 1:
            self._count_refused("full")
            self._nak(link, h, "full", f"{self._capacity - 1} entries")
            return
        if self.config.coherent:
            if msg.batch in self._granted:
                # Sent again before our ack arrived: the regions were given then, and
                # may have come back to us since. Only the ack is owed again.
                self._send_data(MarkAck(msg.batch))
                return
            # The MARK asks for the regions: this node lets go of them first.
            if msg.batch not in self._release_wait:
                self._release_wait[msg.batch] = (link, h, msg)
                self._out.append(ReleaseAsk(msg.batch, frozenset(e.region for e in entries)))
            return
        self._hold_marked(msg)

    def _hold_marked(self, msg: Mark) -> None:
        held = self._tables[HELD]
        entries = [Entry(start + i, msg.gen, kind) for start, count, kind in msg.runs
                   for i in range(count)]
        put: set[int] = set()
        for e in entries:
            if self._cleared_upto.get(e.region, -1) >= e.gen:
                continue  # a late copy of a MARK whose region was cleared since
            held.put(e)
            put.add(e.region)
        batch = msg.batch
        regions = frozenset(put)
        if self.config.coherent:
            self._granted[batch] = None
            while len(self._granted) > 4096:
                del self._granted[next(iter(self._granted))]

        def durable() -> None:
            if self.config.coherent:
                self._out.append(Covered(batch, regions))
            self._send_data(MarkAck(batch))

        self._when_durable(durable)

    def _on_release_done(self, event: ReleaseDone) -> None:
        waiting = self._release_wait.pop(event.token, None)
        if waiting is None:
            return
        link, h, msg = waiting
        held = self._tables[HELD].want
        new = {start + i for start, count, _ in msg.runs for i in range(count)} - held.keys()
        if not self._serving_peer() or len(held) + len(new) > self._capacity - 1:
            # The session ended, or the table filled meanwhile: the peer sends the MARK
            # again if it still wants the regions; until then they are this node's again.
            if self._serving_peer():
                self._count_refused("full")
                self._nak(link, h, "full", f"{self._capacity - 1} entries")
            self._out.append(Covered(event.token, frozenset()))
            return
        self._hold_marked(msg)

    # -- active-active: letting the peer have regions (the own core) ---------------------

    def _peer_wants(self, region: int) -> bool:
        return any(region in rel.regions for rel in self._releases.values())

    def _held_off(self, write_id: int, regions: Iterable[int]) -> bool:
        """A write waits while the peer asks for one of its regions, unless it was
        already waiting when the peer asked and this node wins ties (then it goes first
        and the peer's MARK waits for it)."""
        for rel in self._releases.values():
            if write_id not in rel.allowed and not rel.regions.isdisjoint(regions):
                return True
        return False

    def _clean_for_release(self, region: int) -> bool:
        """A region leaves only once the second medium has what we wrote to it: the peer
        will mirror only its own writes, so a dirty region handed over as it is would
        keep our unmirrored data off M for ever (found by the pair torture)."""
        return not self._is_dirty(region)

    def wanted_regions(self) -> set[int]:
        """Active-active: regions the peer asked for that wait for our mirror."""
        return {r for rel in self._releases.values() if not rel.ready for r in rel.regions}

    def _wins_ties(self) -> bool:
        return self.config.node < self.config.peer

    def _on_release_request(self, event: ReleaseRequest) -> None:
        if event.token in self._releases:
            return  # the MARK sent again while we let go
        allowed: frozenset[int] = frozenset()
        if self._wins_ties():
            allowed = frozenset(w for w, write in self._writes.items()
                                if not write.issued and not event.regions.isdisjoint(
                                    write.regions))
        self._releases[event.token] = _Release(event.regions, allowed, self._now)

    def _check_releases(self) -> None:
        for token, rel in self._releases.items():
            if rel.ready:
                continue
            if any(self._pending.get(r) for r in rel.regions):
                continue  # a write of ours to it is on its way to D
            if any(w in self._writes and not self._writes[w].issued for w in rel.allowed):
                continue  # ours go first (ties), and they still wait
            if any(self._now < self._won_at.get(r, float("-inf")) + self.config.dwell_s
                   for r in rel.regions):
                continue  # just won: keep it a moment (no ping-pong)
            if not all(self._clean_for_release(r) for r in rel.regions):
                continue  # our mirror copies it first (Mirrored takes it out of LC)
            rel.ready = True
            self.handover_waits.append(self._now - rel.asked_at)
            del self.handover_waits[:-1000]
            self._out.append(ReleaseReady(token, rel.regions))

    def _on_handed(self, event: Handed) -> None:
        rel = self._releases.pop(event.token, None)
        self.handovers += len(event.regions)
        for r in event.regions:
            self._won_at.pop(r, None)
            owned = r in self._lc or r in self._acked or r in self._resync
            if owned:
                g = self._lc.pop(r, None)
                g2 = self._acked.pop(r, None)
                self._resync.discard(r)
                # Out of our record: it is in the peer's now (compare-and-clear as ever).
                self._queue_clear(r, max(self._gen.get(r, 0), g or 0, g2 or 0))
            batch = self._marking.get(r)
            if batch:
                self._surrendered[r] = batch  # its ack, if it comes, is void
        if rel is not None:
            self._release_writes()

    def _on_clear(self, link: str, h: Header, msg: Clear) -> None:
        if not self._serving_peer():
            self._nak(link, h, "not-holder")
            return
        held = self._tables[HELD]
        intent = self._tables[INTENT]
        for r, g in msg.entries:
            cur = held.want.get(r)
            if cur is not None and cur.gen <= g:  # compare-and-clear
                held.drop(r)
            if self._cleared_upto.get(r, -1) < g:
                self._cleared_upto[r] = g
            leftover = intent.want.get(r)
            if leftover is not None and leftover.gen <= g:
                intent.drop(r)
        batch = msg.batch
        self._when_durable(lambda: self._send_data(ClearAck(batch)))

    def _on_reconcile_req(self, link: str, h: Header, msg: ReconcileReq) -> None:
        """The primary wants the record we hold for it, or the survivor wants what a
        stale node's FRAM names."""
        if self._stale or self._relation is Relation.STALE:
            out = self._handover_out
            if out is not None and msg.request < out.request:
                return  # a late copy of a request the survivor has since replaced
            if out is None or out.request != msg.request:
                self._handover_out = _Handover(msg.request, self._parts(self._everything_named()))
            self._send_handover(force=True)
            return
        if h.ep < self.epoch or not self._serving_peer():
            return
        held = self._tables[HELD]
        entries = {r: (e.gen, e.kind) for r, e in (held.durable | held.want).items()}
        for r, e in self._tables[INTENT].want.items():  # a takeover that did not finish
            entries.setdefault(r, (e.gen, KIND_RESYNC))
        parts = self._parts(entries)
        for i, part in enumerate(parts):
            self._send_data(Reconcile(msg.request, i, len(parts), part))

    def _everything_named(self) -> dict[int, tuple[int, int]]:
        entries: dict[int, tuple[int, int]] = {}
        for table in self._tables.values():
            for r, e in (table.durable | table.want).items():
                entries[r] = (e.gen, KIND_RESYNC)
            for r in table.suspect:
                entries.setdefault(r, (0, KIND_RESYNC))
        for r in self._lc.keys() | self._acked.keys() | self._resync | self._marking.keys():
            entries.setdefault(r, (self._gen.get(r, 0), KIND_RESYNC))
        return entries

    def _parts(self, entries: dict[int, tuple[int, int]]
               ) -> list[tuple[tuple[int, int, int], ...]]:
        items = sorted((r, g, k) for r, (g, k) in entries.items())
        size = self.config.reconcile_part
        parts = [tuple(items[i:i + size]) for i in range(0, len(items), size)]
        return parts or [()]

    def _send_handover(self, *, force: bool = False) -> None:
        out = self._handover_out
        if out is None:
            return
        if not force and self._now - out.last_sent < self.config.retransmit_s:
            return
        if out.last_sent > float("-inf"):
            self.counters.retried += 1
        out.last_sent = self._now
        for i, part in enumerate(out.parts):
            if i not in out.acked:
                self._send_data(Reconcile(out.request, i, len(out.parts), part))

    # -- reconcile (both sides) --------------------------------------------------------------

    def _on_reconcile(self, link: str, h: Header, msg: Reconcile) -> None:
        request = self._handover_in if self._relation is Relation.PEER_STALE else self._reconcile
        if request is None or msg.request != request.request or msg.part >= msg.parts:
            return
        if request.parts is None:
            request.parts = msg.parts
        if self._relation is Relation.PEER_STALE:
            self._merge_handover(msg)
            part = msg.part
            req = msg.request
            self._when_durable(lambda: self._send_data(ReconcileAck(req, part)))
        else:
            self._merge_held(msg.entries)
        request.got.add(msg.part)
        if request.parts is not None and len(request.got) >= request.parts:
            if request is self._reconcile:
                self._reconcile = None
                self._reconciled = True
                self._admit_acked()
            else:
                request.done = True  # kept: a part sent again is acked again

    def _merge_held(self, entries: Iterable[tuple[int, int, int]]) -> None:
        """The holder's record, as the primary learns it: what is not tracked already
        may differ (the primary restarted) and is copied, then cleared."""
        new: set[int] = set()
        for r, g, _ in entries:
            if r in self._lc or r in self._acked or r in self._marking:
                continue
            clearing = self._clearing.get(r)
            if clearing is not None and clearing[0] >= g:
                continue  # our clear of it is on its way
            if r not in self._resync:
                new.add(r)
            self._resync.add(r)
            if self._gen.get(r, 0) < g:
                self._gen[r] = g
        if new:
            self._out.append(Resync(frozenset(new)))

    def _merge_handover(self, msg: Reconcile) -> None:
        """A stale peer's regions become ours: into INTENT, durably, then the ack."""
        intent = self._tables[INTENT]
        new = [r for r, _, _ in msg.entries
               if r not in intent.want and r not in self._tables[HELD].want]
        if new and not self._room_in_intent(new):
            # No room to name them: copy the whole volume instead (never drop a region).
            self._want_state = replace(self._want_state, full_resync=True)
            self._report("record-full", "handover does not fit: full resync")
        else:
            for r in new:
                intent.put(Entry(r, self._fresh_gen(), KIND_RESYNC))
        regions = {r for r, _, _ in msg.entries}
        for r in regions:
            if not self._pending.get(r):
                self._gen[r] = self._fresh_gen()
        fresh = regions - self._resync
        self._resync |= regions
        if self._pair_mode:
            for r in sorted(regions):
                self._mark_for_handover(r)
        if fresh:
            self._out.append(Resync(frozenset(fresh)))

    def _on_reconcile_ack(self, h: Header, msg: ReconcileAck) -> None:
        out = self._handover_out
        if out is None or msg.request != out.request:
            return
        peer = self._peer
        if peer is None or h.ep != peer.epoch:
            self._hello()  # the survivor's epoch moved: learn it before adopting it
            return
        out.acked.add(msg.part)
        if len(out.acked) < len(out.parts) or not self._stale:
            return
        # The survivor holds all of it durably: let go, adopt its epoch, hold its record.
        self._handover_out = None
        for table in self._tables.values():
            table.drop_all()
        adopted = replace(self._durable_state, role=RECORD_HOLDER, epoch=peer.epoch,
                          epoch_creator=peer.creator, parent=peer.parent, sole=False,
                          held_complete=False, full_resync=False, yielding=False,
                          handing_back=False)
        self._want_state = adopted
        self._when_durable(self._adopted)

    def _adopted(self) -> None:
        self._stale = False
        self._fencing = False
        self._drop_primary_state()
        self._cleared_upto.clear()  # gens of another writer
        self._relation = None
        self._out.append(RoleChanged(RECORD_HOLDER, self.epoch, serving=False))
        self._hello()

    def _keeps_waiting_writes(self) -> bool:
        """Active-active: a primary that goes sole (its peer is fenced) keeps the host
        writes that wait; they are issued alone once its own FRAM names them."""
        return self.config.coherent and self.role == PRIMARY

    def _drop_primary_state(self) -> None:
        if not self._keeps_waiting_writes():
            self._refuse_waiting("this node is the record-holder now")
        self._releases.clear()  # the peer that asked is gone
        self._surrendered.clear()
        self._won_at.clear()
        self._pair_mode = False
        self._lc.clear()
        self._acked.clear()
        self._marking.clear()
        self._mark_queue.clear()
        self._marks_out.clear()
        self._resync.clear()
        self._clearing.clear()
        self._clear_queue.clear()
        self._clears_out.clear()
        self._handover_marks.clear()
        self._reconciled = False
        self._reconcile = None
        self._lease_until = float("-inf")
        self._peer_held = None

    # -- heartbeats and the lease (primary) --------------------------------------------------

    def _on_heartbeat_ack(self, name: str, h: Header, msg: HeartbeatAck) -> None:
        if h.pb != self._boot:
            return
        link = self._links[name]
        sent_at = link.hb_sent.pop(msg.answers, None)
        if sent_at is None:
            return
        link.last_answer = self._now
        link.rtt = self._now - sent_at
        self._peer_held = msg.held
        if msg.lease_grant_ms and self.role == PRIMARY and self._pair_mode:
            until = sent_at + msg.lease_grant_ms / 1000 - self.config.lease_early_s
            self._lease_until = max(self._lease_until, until)

    def _send_heartbeats(self) -> None:
        lease_ms = (int(self.config.lease_s * 1000)
                    if self.role == PRIMARY and self._pair_mode and not self._stale else 0)
        covered = (self.role == PRIMARY and self._pair_mode and self._reconciled
                   and not self._durable_state.sole and not self._handover_marks)
        for name, link in self._links.items():
            if not link.connected or self._now - link.last_hb < link.config.heartbeat_s:
                continue
            link.last_hb = self._now
            send = self._seal_and_send(name, Heartbeat(lease_ms,
                                                       len(self._tables[HELD].want), covered))
            link.hb_sent[send.frame.header.sq] = self._now
            if len(link.hb_sent) > 64:
                del link.hb_sent[min(link.hb_sent)]

    # -- timers ------------------------------------------------------------------------------

    def _on_tick(self) -> None:
        now = self._now
        if (self._had_session and not self._peer_lost
                and not any(link.hears(now) for link in self._links.values())):
            self._peer_lost = True
            self._report("peer-lost", "no link hears the peer")
        if self._peer is None or self._relation is None or self._hello_due:
            if now - self._last_hello >= self.config.retransmit_s:
                self._hello()
        self._send_heartbeats()
        self._retransmit(force=False)
        if (self._pair_mode and self.config.anti_entropy_s is not None and self._reconciled
                and self._reconcile is None
                and now - self._last_reconcile >= self.config.anti_entropy_s):
            self._reconcile = self._request_reconcile()
        if self._peer_lost:
            self._consider_takeover()
        self._consider_hand_back()

    def _retransmit(self, *, force: bool) -> None:
        now = self._now
        wait = self.config.retransmit_s
        for batches, make in ((self._marks_out, self._mark_frame),
                              (self._clears_out, self._clear_frame)):
            for batch_id, batch in batches.items():
                if force or now - batch.last_sent >= wait:
                    if self._relation is Relation.NORMAL:
                        batch.last_sent = now
                        self.counters.retried += 1
                        self._send_data(make(batch_id, batch))
        for request in (self._reconcile, self._handover_in):
            if (request is not None and not request.done
                    and (force or now - request.sent_at >= wait)):
                request.sent_at = now
                self.counters.retried += 1
                self._send_data(ReconcileReq(request.request))
        self._send_handover(force=force)

    @staticmethod
    def _mark_frame(batch_id: int, batch: _Batch) -> Message:
        return Mark(batch_id, batch.gen, mark_runs(batch.regions))

    @staticmethod
    def _clear_frame(batch_id: int, batch: _Batch) -> Message:
        return Clear(batch_id, tuple(sorted(batch.regions.items())))

    # -- fencing and takeover ----------------------------------------------------------------

    def _consider_takeover(self) -> None:
        """The holder with the peer silent on every link: fence, then take over."""
        if self.role != RECORD_HOLDER or self._taking_over is not None or self._fencing:
            return
        if not (self.config.auto_takeover or self._takeover_asked):
            self._report_once("no-fence", "automatic takeover is off: 'peer takeover'")
            return
        if not self._durable_state.held_complete:
            self._report_once("record-incomplete", "the record held for the peer may be "
                              "incomplete: 'peer takeover --force' copies the whole volume")
            return
        if self.config.fence_command and not self._fence_failed:
            self._fencing = True
            self._out.append(RunFence("command"))
            return
        if self.config.trust_lease:
            if self._now >= self._promised_until + self.config.takeover_margin_s:
                self._start_takeover("lease", full=False)
            return
        self._report_once("no-fence", "no fence method succeeded: staying frozen "
                          "('peer takeover --force' if the peer is down)")

    def _on_fence_result(self, event: FenceResult) -> None:
        if not self._fencing:
            return
        self._fencing = False
        if event.ok:
            self._start_takeover("command", full=not self._durable_state.held_complete
                                 if self.role == RECORD_HOLDER else False)
        else:
            self._fence_failed = True
            self._report("fence-failed", event.detail or "the fence command failed")

    def _on_takeover_command(self, event: TakeoverCommand) -> None:
        if self._taking_over is not None or self._sole_mode:
            return
        if not event.fenced and any(link.hears(self._now) for link in self._links.values()):
            self._report("refused", "takeover: the peer is alive; stop it first")
            return
        if event.force:
            full = self.role == RECORD_HOLDER and not self._durable_state.held_complete
            self._start_takeover("operator", full=full)
            return
        if self.role == PRIMARY:
            if not self.config.fence_command:
                self._report("refused", "takeover: no fence command; use --force")
                return
            self._fencing = True
            self._out.append(RunFence("command"))
            return
        if not self._had_session:
            self._report("refused", "takeover: the peer was never seen; use --force")
            return
        self._takeover_asked = True
        self._fence_failed = False
        self._consider_takeover()

    def _start_takeover(self, method: str, *, full: bool) -> None:
        s = self._durable_state
        self._taking_over = method
        self._fencing = False  # a fence still running reports to nobody now
        if not self._keeps_waiting_writes():
            self._refuse_waiting("taking over")
        self._want_state = replace(self._want_state, role=PRIMARY, epoch=s.epoch + 1,
                                   epoch_creator=self.config.node, parent=_epoch_id(s),
                                   sole=True, held_complete=False, handing_back=False,
                                   full_resync=full or self._want_state.full_resync)
        self._when_durable(self._took_over)

    def _took_over(self) -> None:
        method = self._taking_over or "operator"
        self._taking_over = None
        self._drop_primary_state()
        self._peer = None
        self._relation = None
        self._had_session = False  # a new session, with the peer at our old epoch
        self._peer_lost = False
        self._stale = False
        self._behind = False
        self._split = False
        self._fence_failed = False
        self._takeover_asked = False
        own = self._own_dirty()
        for r in own:
            self._gen[r] = self._fresh_gen()
        self._resync = set(own)
        s = self._durable_state
        self._out.append(TakeOver(s.epoch, frozenset(own), s.full_resync, method))
        self._out.append(RoleChanged(PRIMARY, s.epoch, serving=True))
        self._broadcast(FenceNotice(method, "took over", s.epoch_creator, s.parent))
        self._hello()

    def _on_rejoin(self) -> None:
        if self._peer is None or self._relation not in (Relation.SPLIT_BRAIN,
                                                        Relation.CONFLICT):
            self._report("refused", "rejoin: only a node in split brain yields")
            return
        if not self._want_state.yielding:
            # Durable first: a restart must not bring back a sole owner that yielded.
            self._want_state = replace(self._want_state, yielding=True)
            self._refuse_waiting("yielding to the peer")
            self._when_durable(self._hello)

    # -- failback (active-active) ------------------------------------------------------------

    def _empty_as_primary(self) -> bool:
        """Nothing this primary may have written differs, nor is on its way anywhere."""
        return not (self._lc or self._acked or self._marking or self._mark_queue
                    or self._marks_out or self._resync or self._clearing
                    or self._clear_queue or self._clears_out or self._handover_marks
                    or any(self._pending.values()) or self._writes
                    or self._tables[INTENT].named() or self._tables[HELD].named())

    def _consider_hand_back(self) -> None:
        """The core holding the peer's record took over from it; the peer is back and
        holds the record again, and every region of it is copied: the role goes back.

        This node stops being primary first (durably, at a new epoch whose parent is
        the current one, ``handing_back``); the owner, seeing that in the HELLO, becomes
        primary at that epoch. In between neither writes the record's regions — it is
        empty, so neither needs to. A crash on either side in between leaves the marks
        to finish it: the HELLO says it again; if the owner dies instead, this node, the
        record-holder now, takes over as from any primary."""
        s = self._want_state
        if not (self.config.hands_back and self.role == PRIMARY and s.role == PRIMARY
                and self._relation is Relation.NORMAL and self._pair_mode
                and self._reconciled and not s.sole and not s.full_resync
                and not s.handing_back and self._peer_held == 0
                and self._empty_as_primary() and self._fram_clean()):
            return
        d = self._durable_state
        # Not complete: the owner may write alone (below) until it has marked here
        # what its FRAM names; its ``covered`` says when it has.
        self._want_state = replace(d, role=RECORD_HOLDER, epoch=d.epoch + 1,
                                   epoch_creator=self.config.node, parent=_epoch_id(d),
                                   sole=False, held_complete=False, handing_back=True)
        self._report("failback", f"record copied: handing the primary role back to "
                     f"{self.config.peer} (epoch {d.epoch + 1})")
        self._when_durable(self._handed_back)

    def _handed_back(self) -> None:
        self._drop_primary_state()
        self._cleared_upto.clear()  # our own gens, as the writer we no longer are
        self._promised_until = self._now + self.config.lease_s
        self._relation = None
        self._out.append(RoleChanged(RECORD_HOLDER, self.epoch, serving=False))
        self._hello()

    def _take_back(self) -> None:
        """The peer gave back the primary role of this node's record: adopt its epoch as
        primary. What this node's FRAM still names (it held the peer's writes) is copied
        and, as after a takeover, marked at the peer before this node is covered: until
        then it is the sole authority for those regions (``sole``), as a survivor is."""
        peer = self._peer
        if self._taking_back or peer is None:
            return
        self._taking_back = True
        named = bool(self._tables[HELD].named() or self._tables[INTENT].named())
        self._want_state = replace(self._want_state, role=PRIMARY, epoch=peer.epoch,
                                   epoch_creator=peer.creator, parent=peer.parent,
                                   sole=named, held_complete=False, yielding=False,
                                   handing_back=False)
        self._when_durable(self._took_back)

    def _took_back(self) -> None:
        self._taking_back = False
        self._cleared_upto.clear()  # gens of another writer
        self._release_wait.clear()
        self._granted.clear()
        self._relation = None
        own = self._own_dirty()
        for r in own:
            self._gen[r] = self._fresh_gen()
        self._resync = set(own)
        self._owed_marks = set(own)
        self._report("failback", f"primary of this node's record again (epoch {self.epoch})")
        self._out.append(RoleChanged(PRIMARY, self.epoch, serving=False))
        if own:
            self._out.append(Resync(frozenset(own)))
        self._hello()

    def _on_full_resync_done(self) -> None:
        if self._want_state.full_resync and self.role == PRIMARY:
            self._want_state = replace(self._want_state, full_resync=False)
            self._leave_sole()
