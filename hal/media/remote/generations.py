"""Generation identifiers: which past of the volume each side holds, and what to do on connect.

Each side names the data it holds with a *generation id* (DRBD calls them data
generation UUIDs). The sending appliance starts a new generation when its data
starts to diverge from what the receiver holds (the link failed while the
receiver held the sender's current generation); a receiver adopts the sender's
generation when a resync completes, and starts a generation of its own only
when it is written independently (``tandem receive --promote``). Comparing the
two on connect tells apart "remote behind", "remote ahead" and "both written"
(split brain) — the last two are refused: no automatic resync may destroy data
that exists on one side only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

MAX_HISTORY = 16


def new_generation_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class SyncState:
    """What one side knows about its copy of the volume."""

    volume_uuid: str | None = None  # which volume this is a copy of; None: nothing yet
    current: str | None = None  # generation of the data held; None: no complete copy ever
    history: tuple[str, ...] = ()  # earlier generations, newest first
    consistent: bool = False  # False while a resync is under way (data is a mix)

    @classmethod
    def new_primary(cls) -> SyncState:
        """The state of a freshly created volume on the appliance that owns it."""
        return cls(uuid.uuid4().hex, new_generation_id(), (), True)

    def rotated(self) -> SyncState:
        """A new current generation; the old one moves into the history."""
        history = ((self.current,) if self.current else ()) + self.history
        return dataclasses.replace(
            self, current=new_generation_id(), history=history[:MAX_HISTORY]
        )

    def adopting(self, sender: SyncState) -> SyncState:
        """The receiver's state once it holds a complete copy of ``sender``'s current data."""
        return SyncState(sender.volume_uuid, sender.current, sender.history[:MAX_HISTORY], True)

    def to_json(self) -> dict[str, object]:
        return {
            "volume_uuid": self.volume_uuid,
            "current": self.current,
            "history": list(self.history),
            "consistent": self.consistent,
        }

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> SyncState:
        history = obj.get("history", [])
        volume_uuid = obj.get("volume_uuid")
        current = obj.get("current")
        consistent = obj.get("consistent", False)
        if (
            not isinstance(history, list)
            or not all(isinstance(h, str) for h in history)
            or not isinstance(volume_uuid, str | None)
            or not isinstance(current, str | None)
            or not isinstance(consistent, bool)
        ):
            raise ValueError("malformed sync state")
        return cls(volume_uuid, current, tuple(history), consistent)


class Decision(Enum):
    """What the two sides do about each other when they connect."""

    IN_SYNC = "in-sync"  # same generation: copy only what the sender's record names
    RESYNC = "resync"  # the receiver holds an older generation of ours: copy the record
    FULL_SYNC = "full-sync"  # the receiver holds nothing of ours: copy everything
    REMOTE_AHEAD = "remote-ahead"  # the receiver was written after our data: refuse
    SPLIT_BRAIN = "split-brain"  # both were written independently: refuse
    UNRELATED = "unrelated"  # a copy of another volume: refuse

    @property
    def refused(self) -> bool:
        return self in (Decision.REMOTE_AHEAD, Decision.SPLIT_BRAIN, Decision.UNRELATED)


def decide(sender: SyncState, receiver: SyncState) -> Decision:
    """The one place that compares generations; both ends run it and must agree."""
    if receiver.volume_uuid is not None and receiver.volume_uuid != sender.volume_uuid:
        return Decision.UNRELATED
    if receiver.current is None:
        return Decision.FULL_SYNC
    if receiver.current == sender.current:
        return Decision.IN_SYNC if receiver.consistent else Decision.RESYNC
    if receiver.current in sender.history:
        return Decision.RESYNC
    if sender.current is not None and sender.current in receiver.history:
        return Decision.REMOTE_AHEAD
    return Decision.SPLIT_BRAIN


def explain(decision: Decision, sender: SyncState, receiver: SyncState) -> str:
    """A sentence for the admin."""
    short = {
        Decision.IN_SYNC: "the remote holds this appliance's current generation",
        Decision.RESYNC: "the remote is behind; a resync by region brings it up to date",
        Decision.FULL_SYNC: "the remote holds no copy of this volume yet; a full sync is needed",
        Decision.REMOTE_AHEAD: (
            "the remote copy was written after it was last in sync with this appliance "
            "(promoted at the remote site?); refusing automatic resync"
        ),
        Decision.SPLIT_BRAIN: (
            "split brain: both copies were written independently since they were last in "
            "sync; refusing automatic resync — pick the copy to discard "
            "(tandem receive --discard-my-data on the remote)"
        ),
        Decision.UNRELATED: (
            f"the remote holds a copy of another volume ({receiver.volume_uuid}, "
            f"this is {sender.volume_uuid}); refusing"
        ),
    }[decision]
    return f"{decision.value}: {short}"


class StateStore(Protocol):
    """Where a side keeps its SyncState (a file beside the medium, or NVRAM)."""

    def load(self) -> SyncState: ...

    def save(self, state: SyncState) -> None: ...


class MemoryStateStore:
    """A StateStore that forgets on restart (tests; senders without persistent state)."""

    def __init__(self, state: SyncState | None = None) -> None:
        self._state = state if state is not None else SyncState.new_primary()

    def load(self) -> SyncState:
        return self._state

    def save(self, state: SyncState) -> None:
        self._state = state


class StateFile:
    """A SyncState in a small JSON file, replaced atomically (write, fsync, rename, fsync dir)."""

    def __init__(self, path: str, default: SyncState | None = None) -> None:
        self.path = path
        self._default = default if default is not None else SyncState()

    def load(self) -> SyncState:
        try:
            with open(self.path, encoding="utf-8") as f:
                obj = json.load(f)
        except FileNotFoundError:
            return self._default
        if not isinstance(obj, dict):
            raise ValueError(f"{self.path}: malformed sync state")
        return SyncState.from_json(obj)

    def save(self, state: SyncState) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".tandem-state.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state.to_json(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
