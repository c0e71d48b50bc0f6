"""How a node of the pair is configured, and what it reports (the console's ``peer status``).

Plain data, shared by the core (core.py) and the runtime that will build it from
``tandem run --node ... --peer ... --peer-key ... --pair-role ...``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from firmware.peer.frames import MAX_CLEAR_ENTRIES, MAX_MARK_RUNS, MAX_NAME


class PeerState(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED_LINK = "degraded-link"
    PEER_LOST_FROZEN = "peer-lost-frozen"
    FENCING = "fencing"
    SOLE_OWNER = "sole-owner"
    RECONCILING = "reconciling"
    SPLIT_BRAIN = "split-brain"


@dataclass(frozen=True)
class LinkConfig:
    name: str
    kind: str = "tcp"  # "tcp" or "serial": data messages prefer tcp
    heartbeat_s: float = 0.2
    dead_after_s: float = 1.0  # silent this long: the link is down


def tcp_link(name: str) -> LinkConfig:
    return LinkConfig(name, "tcp", heartbeat_s=0.2, dead_after_s=1.0)


def serial_link(name: str) -> LinkConfig:
    return LinkConfig(name, "serial", heartbeat_s=1.0, dead_after_s=3.5)


@dataclass(frozen=True)
class PairConfig:
    node: str
    peer: str
    key: bytes
    links: tuple[LinkConfig, ...]
    lease_s: float = 3.0  # asked for by the primary, the most the holder grants
    lease_early_s: float = 0.3  # the primary's lease ends this much before the holder's
    takeover_margin_s: float = 1.0  # the holder waits this past its last grant
    retransmit_s: float = 0.5
    mark_batch: int = 32  # runs of consecutive regions in one MARK
    mark_regions: int = 2048  # regions in one MARK (the holder's FRAM write per batch)
    mark_window: int = 4  # MARK batches outstanding at once
    clear_batch: int = 32
    clear_delay_s: float = 1.0  # a queued clear waits at most this long for company
    reconcile_part: int = 512  # entries per RECONCILE frame
    anti_entropy_s: float | None = 60.0  # the primary re-reads the held record this often
    fence_command: bool = False  # an operator configured --fence-command
    trust_lease: bool = True  # the peer honours its lease (its core, and a watchdog)
    auto_takeover: bool = True
    fram_retry_s: float = 1.0
    # Active-active (issue 16): both nodes serve; a MARK asks for ownership (events.py).
    coherent: bool = False
    dwell_s: float = 0.05  # a region won is kept this long before the peer may take it
    # Active-active: this core holds the peer's record. Primary of it after a takeover,
    # it gives the role back to the peer (failback) once the peer is back and holds it
    # and the record is empty: every region the peer wrote is on the second medium.
    hands_back: bool = False

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("the pair needs a shared key")
        for name in (self.node, self.peer):
            if not name or len(name.encode()) > MAX_NAME:
                raise ValueError(f"node name {name!r}: 1..{MAX_NAME} bytes")
        if self.node == self.peer:
            raise ValueError("node and peer need different names")
        if not self.links or len({link.name for link in self.links}) != len(self.links):
            raise ValueError("at least one link, each with its own name")
        if not 0 <= self.lease_early_s < self.lease_s or self.takeover_margin_s < 0:
            raise ValueError("lease_early_s must be below lease_s; the margin non-negative")
        if (not 1 <= self.mark_batch <= MAX_MARK_RUNS or self.mark_window < 1
                or self.mark_regions < 1):
            raise ValueError("mark_batch and mark_window out of range")
        if not 1 <= self.clear_batch <= MAX_CLEAR_ENTRIES:
            raise ValueError("clear_batch out of range")


# --- status (what the console shows) --------------------------------------------------------


@dataclass
class MessageCounters:
    sent: dict[str, int] = field(default_factory=dict)  # frames by type
    received: dict[str, int] = field(default_factory=dict)
    marks_acked: int = 0  # MARK batches acknowledged
    clears_acked: int = 0
    retried: int = 0  # MARK/CLEAR/RECONCILE frames sent again
    refused: dict[str, int] = field(default_factory=dict)  # frames refused, by reason
    hits: int = 0
    misses: int = 0

    def snapshot(self) -> MessageCounters:
        return replace(self, sent=dict(self.sent), received=dict(self.received),
                       refused=dict(self.refused))


@dataclass(frozen=True)
class LinkStatus:
    name: str  # the link's URL (tcp://HOST:PORT, a serial device or pyserial URL)
    kind: str
    state: str  # up, one-way (we hear it, it does not answer us), down
    rtt_ms: float | None
    last_heartbeat: float | None  # `now` of the last accepted frame on it


@dataclass(frozen=True)
class PairStatus:
    node: str
    peer: str
    state: str
    role: str
    epoch: int
    epoch_creator: str
    frozen: bool
    lease_remaining_s: float
    links: tuple[LinkStatus, ...]
    held_regions: int
    local_copy_regions: int
    intent_regions: int
    resync_regions: int
    marks_outstanding: int
    clears_queued: int
    held_complete: bool
    full_resync: bool
    counters: MessageCounters

    def as_dict(self) -> dict[str, Any]:
        """The shape of ``peer status --json`` (issue 15's contract: ``state``, ``epoch``,
        ``role``, ``links`` with ``url``/``state``/``rtt_ms``, ``held_regions``,
        ``local_copy_regions``; more keys may be added, none renamed)."""
        out = asdict(self)
        out["links"] = [{"url": link.pop("name"), **link} for link in out["links"]]
        return out
