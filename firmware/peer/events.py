"""What goes into the pair core (events) and what comes out of it (actions).

The runtime turns the world into events, calls ``PairCore.handle(now, event)`` and carries
out the actions it gets back, in order. ``now`` is the runtime's monotonic clock in
seconds; the core never reads a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware.peer.frames import Frame
from firmware.peer.held import FramChange

# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostWrite:
    """A host write that touches ``regions`` wants to be issued to the local medium;
    ``predicted`` are regions the policy expects next (marked in the same batch)."""

    write: int
    regions: tuple[int, ...]
    predicted: tuple[int, ...] = ()


@dataclass(frozen=True)
class WriteDone:
    """The local medium finished (``ok``) or failed the write; its regions stay named."""

    write: int
    ok: bool = True


@dataclass(frozen=True)
class WriteCancel:
    """The host gave up on a write that has not been allowed to proceed yet."""

    write: int


@dataclass(frozen=True)
class FrameIn:
    """A payload the byte framing delivered on ``link``."""

    link: str
    payload: bytes


@dataclass(frozen=True)
class LinkUp:
    """The link can carry frames (TCP connected, serial device open)."""

    link: str


@dataclass(frozen=True)
class LinkDown:
    link: str


@dataclass(frozen=True)
class Tick:
    """Time passed: heartbeats, retransmissions, leases, lazy clears, takeover waits."""


@dataclass(frozen=True)
class FramDone:
    """The runtime applied ``Persist(token)`` to this node's FRAM."""

    token: int


@dataclass(frozen=True)
class FramFailed:
    token: int
    error: str = ""


@dataclass(frozen=True)
class Mirrored:
    """The second medium holds ``region`` as it was at the snapshot ``gen``
    (``PairCore.mirror_snapshot``), flushed."""

    region: int
    gen: int


@dataclass(frozen=True)
class FlushClears:
    """Send the queued clears now (an idle volume, the console) instead of lazily."""


@dataclass(frozen=True)
class FenceResult:
    """What the configured fence command (``RunFence``) reported."""

    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class TakeoverCommand:
    """The operator's ``peer takeover`` (``force``: the operator vouches that the peer is
    down; no fence is waited for)."""

    force: bool = False
    # Active-active: the node's other core has fenced the peer (taken over its record):
    # go sole without asking whether a link still hears the peer's other core.
    fenced: bool = False


@dataclass(frozen=True)
class RejoinCommand:
    """The operator's ``peer rejoin``: this node gives up its epoch, hands what its FRAM
    names to the peer and becomes the peer's record-holder (resolves a split brain)."""


@dataclass(frozen=True)
class FullResyncDone:
    """The runtime copied the whole volume to the second medium after a ``TakeOver`` or
    start-up that asked for a full resync."""


# Active-active (``PairConfig.coherent``): a node runs two cores, its *own* (primary: its
# record, held at the peer) and the *holder* of the peer's record. A MARK from the peer is
# the peer asking for the regions: the holder core asks the own core to let them go
# (``ReleaseAsk`` -> ``ReleaseRequest``), the own core answers once its writes to them are
# done (``ReleaseReady``), the node makes sure its mirror is quiet on them and says so
# (``ReleaseDone``), the holder core makes the MARK durable and, just before its ack, says
# the regions are covered by the peer's record (``Covered`` -> ``Handed``): the own core
# then takes them out of its local copy and clears them from its own record.


@dataclass(frozen=True)
class ReleaseRequest:
    """To the own core: the peer asks for ``regions`` (its MARK ``token`` waits)."""

    token: int
    regions: frozenset[int]


@dataclass(frozen=True)
class ReleaseDone:
    """To the holder core: this node let go of the MARK's regions and its mirror is quiet
    on them: make the MARK durable and acknowledge it."""

    token: int


@dataclass(frozen=True)
class Handed:
    """To the own core: the MARK ``token``'s ``regions`` are durable in the peer's record
    held here (none: the MARK was dropped, the regions are this node's again)."""

    token: int
    regions: frozenset[int]


Event = (HostWrite | WriteDone | WriteCancel | FrameIn | LinkUp | LinkDown | Tick | FramDone
         | FramFailed | Mirrored | FlushClears | FenceResult | TakeoverCommand | RejoinCommand
         | FullResyncDone | ReleaseRequest | ReleaseDone | Handed)


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Frame ``payload`` for ``link`` (framing.py) and send it; losing it is allowed."""

    link: str
    frame: Frame
    payload: bytes


@dataclass(frozen=True)
class Persist:
    """Apply the changes to this node's FRAM (``PairFram.apply``, in order), then report
    ``FramDone(token)`` or ``FramFailed(token)``. At most one is outstanding."""

    token: int
    changes: tuple[FramChange, ...]


@dataclass(frozen=True)
class WriteProceed:
    """Issue the write to the local medium. ``deadline``: do not issue it once the
    monotonic clock has reached this (the lease ends); None: no lease needed (sole)."""

    write: int
    epoch: int
    deadline: float | None


@dataclass(frozen=True)
class WriteWait:
    """The write waits (for a MARK_ACK, a lease, room in the record, the peer)."""

    write: int
    reason: str


@dataclass(frozen=True)
class WriteRefused:
    """This node must not write (record-holder, stale, split brain): fail the write."""

    write: int
    reason: str


@dataclass(frozen=True)
class Freeze:
    """Stop issuing writes and mirror copies to the media (the lease ran out, stale)."""

    reason: str


@dataclass(frozen=True)
class Thaw:
    """Writes and mirror copies may be issued again."""


@dataclass(frozen=True)
class TakeOver:
    """This node is now the sole owner at ``epoch``: serve hosts on its own frontends and
    copy every region in ``resync`` (the whole volume if ``full_resync``) to the second
    medium."""

    epoch: int
    resync: frozenset[int]
    full_resync: bool
    method: str


@dataclass(frozen=True)
class Resync:
    """These regions may differ between the media: queue them for the mirror."""

    regions: frozenset[int]


@dataclass(frozen=True)
class RunFence:
    """Run the configured fence command against the peer; report ``FenceResult``."""

    method: str


@dataclass(frozen=True)
class RoleChanged:
    """The node's role or epoch changed; ``serving``: it may serve hosts."""

    role: str
    epoch: int
    serving: bool


@dataclass(frozen=True)
class Report:
    """Something the operator should see (console, log): ``kind`` is one of
    link-degraded, link-restored, peer-lost, peer-back, stale, peer-stale, split-brain,
    role-conflict, no-fence, fence-failed, record-incomplete, record-full, fram-failed,
    refused."""

    kind: str
    detail: str


@dataclass(frozen=True)
class ReleaseAsk:
    """From the holder core: the peer's MARK ``token`` asks for ``regions``; pass them
    to this node's own core as ``ReleaseRequest``."""

    token: int
    regions: frozenset[int]


@dataclass(frozen=True)
class ReleaseReady:
    """From the own core: no write of this node to ``regions`` is in flight and none
    will be issued; once the mirror is quiet on them, ``ReleaseDone(token)`` to the
    holder core."""

    token: int
    regions: frozenset[int]


@dataclass(frozen=True)
class Covered:
    """From the holder core: the MARK ``token``'s regions are durable here, in the
    peer's record; ``Handed(regions)`` to the own core (the ack follows)."""

    token: int
    regions: frozenset[int]


Action = (Send | Persist | WriteProceed | WriteWait | WriteRefused | Freeze | Thaw | TakeOver
          | Resync | RunFence | RoleChanged | Report | ReleaseAsk | ReleaseReady | Covered)
