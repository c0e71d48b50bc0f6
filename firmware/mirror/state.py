"""The mirror's mode as one value, and every change of it in one table (no I/O).

Three states:

- *ordered*: every write is queued (bounded, in the order it was submitted)
  and applied to the second medium in runs; once a run is durable there the
  record learns that every write up to a sequence number is. So the second
  medium always holds the volume as it was at the end of some run: a
  crash-consistent image.
- *catch-up*: when the backlog overflows (DRBD's "pull-ahead"), a write cannot
  be queued, the record names regions at start-up, or a new link session needs
  it, the queue is dropped and the mirror copies whole regions (or only the
  blocks written, when it knows them) from the local medium instead, pass after
  pass. New writes are queued again from the start of each pass; a pass that
  ends with the queue intact hands over to ordered mode.
- *degraded*: the second medium failed; the record keeps every region that may
  differ and the mirror retries, resuming as catch-up.

Beside the state, a handful of flags used to be separate attributes set from a
dozen places, and had to agree: whether writes are queued, whether the blocks
the second medium misses are known, whether the regions came from a crash, and
the remote's resync mark and handover (see ``Mode``). Here they form one frozen
value, and ``TRANSITIONS`` says, for each (state, event), the next state and
which flags change. A pair that is not in the table is a bug in the caller:
``Mode.after`` raises ``RefusedTransition`` rather than guess.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final


class MirrorState(enum.Enum):
    ORDERED = "ordered"
    CATCH_UP = "catch-up"
    DEGRADED = "degraded"


class Event(enum.Enum):
    """What happened to the mirror; the table says what it does to the mode."""

    OVERFLOW = enum.auto()  # the ordered backlog passed its limit
    UNQUEUED = enum.auto()  # a write did not reach the queue intact
    RECONNECTED = enum.auto()  # a run or pass met a link session not yet acted on
    SESSION_IN_SYNC = enum.auto()  # a new session: the remote holds our generation
    SESSION_BEHIND = enum.auto()  # a new session: the remote is consistent but behind
    SESSION_INCONSISTENT = enum.auto()  # a new session: the remote is mid-resync or blank
    FAILED = enum.auto()  # the second medium (or the local flush) failed
    RECOVERED = enum.auto()  # a step succeeded after a failure
    PASS_STARTED = enum.auto()  # a catch-up pass took its list of regions
    RESYNC_MARKED = enum.auto()  # begin_resync: the remote is marked inconsistent
    PASS_ENDED = enum.auto()  # a pass ended without handing over to ordered mode
    CAUGHT_UP = enum.auto()  # the second medium holds the volume; nothing queued behind
    CAUGHT_UP_QUEUED = enum.auto()  # ...up to the writes queued during the pass
    HANDOVER_RUN_SENT = enum.auto()  # the run holding the last write queued in a pass left
    HANDOVER_RUN_DURABLE = enum.auto()  # ...and is durable: the remote is an image again
    HANDED_OVER = enum.auto()  # end_resync: the remote is consistent again
    PAUSE = enum.auto()  # the operator paused the mirror
    RESUME = enum.auto()  # ...and resumed it


# Events that only a second medium with link sessions (``second.LinkedMedium``) causes.
LINK_EVENTS: Final = frozenset({
    Event.RECONNECTED, Event.SESSION_IN_SYNC, Event.SESSION_BEHIND,
    Event.SESSION_INCONSISTENT, Event.RESYNC_MARKED, Event.HANDOVER_RUN_SENT,
    Event.HANDOVER_RUN_DURABLE, Event.HANDED_OVER,
})


@dataclass(frozen=True, slots=True)
class Mode:
    state: MirrorState
    # Host writes are queued in order: always when ordered, and during a catch-up pass
    # that may end straight in ordered mode.
    queueing: bool
    # Every write the second medium misses is noted by 4 KiB block (masks.BlockMasks);
    # otherwise (after a crash, a failure, a new session) catch-up copies whole regions.
    blocks_known: bool
    # The regions to copy were named at start-up: most are probably on the remote
    # already, so their resync compares digests first.
    after_crash: bool
    # The second medium has link sessions (fixed at construction): only then are the
    # remote's resync mark and handover kept; without, the three flags below stay False.
    linked: bool = False
    # begin_resync was done in this link session (the remote is marked inconsistent).
    resync_marked: bool = False
    # end_resync is due before the next ordered run.
    handover_due: bool = False
    # ...once the run holding the last write queued during the pass is durable (the
    # pipeline keeps that write). Both can be set at once: see CAUGHT_UP_QUEUED.
    handover_queued: bool = False
    paused: bool = False

    @classmethod
    def initial(cls, *, regions_named: bool, linked: bool) -> Mode:
        """At start-up: catch-up after a crash (the record names regions), else ordered."""
        if regions_named:
            return cls(MirrorState.CATCH_UP, queueing=False, blocks_known=False,
                       after_crash=True, linked=linked)
        return cls(MirrorState.ORDERED, queueing=True, blocks_known=True, after_crash=False,
                   linked=linked)

    @property
    def label(self) -> str:
        """What the status shows: the state, or that the operator paused the mirror."""
        return "paused" if self.paused else self.state.value

    def after(self, event: Event) -> Mode:
        """The mode once ``event`` happened; RefusedTransition if it cannot happen here."""
        transition = TRANSITIONS.get((self.state, event))
        if transition is None or (event in LINK_EVENTS and not self.linked):
            raise RefusedTransition(self, event)
        new = dataclasses.replace(self, state=transition.target, **dict(transition.changes))
        if not new.linked:
            # CAUGHT_UP says "hand over"; a medium without sessions has nobody to tell.
            new = dataclasses.replace(new, resync_marked=False, handover_due=False,
                                      handover_queued=False)
        return new


class RefusedTransition(RuntimeError):
    """An event the table does not allow in this mode: the caller's bookkeeping is wrong."""

    def __init__(self, mode: Mode, event: Event) -> None:
        super().__init__(f"mirror: {event.name} cannot happen in {mode}")
        self.mode = mode
        self.event = event


@dataclass(frozen=True, slots=True)
class Transition:
    target: MirrorState
    changes: tuple[tuple[str, bool], ...] = ()


_FLAGS: Final = frozenset(f.name for f in dataclasses.fields(Mode)) - {"state", "linked"}


def _to(target: MirrorState, **changes: bool) -> Transition:
    unknown = changes.keys() - _FLAGS
    if unknown:  # a misspelt flag would otherwise be set on the dataclass at run time
        raise ValueError(f"not a mode flag: {sorted(unknown)}")
    return Transition(target, tuple(sorted(changes.items())))


ORDERED, CATCH_UP, DEGRADED = MirrorState.ORDERED, MirrorState.CATCH_UP, MirrorState.DEGRADED

# Writes are no longer queued (the copier drops the queue and the handover write in it).
_STOP: Final = {"queueing": False, "handover_queued": False}
# ...and what the second medium misses is not known by block any more.
_FORGET: Final = {**_STOP, "blocks_known": False}
# The queue carries on in order; the second medium misses nothing else.
_RESUME_ORDERED: Final = {"queueing": True, "blocks_known": True, "after_crash": False}

# (state, event) → next state and the flags it sets. Leaving ordered mode is always
# for catch-up (degraded only by FAILED): ordered mode never carries an unhealed error.
TRANSITIONS: Final[dict[tuple[MirrorState, Event], Transition]] = {
    # The host's writes.
    (ORDERED, Event.OVERFLOW): _to(CATCH_UP, **_STOP),  # the queue was noted by block
    (CATCH_UP, Event.OVERFLOW): _to(CATCH_UP, **_STOP),  # this pass cannot hand over
    (DEGRADED, Event.OVERFLOW): _to(DEGRADED, **_STOP),
    (ORDERED, Event.UNQUEUED): _to(CATCH_UP, **_FORGET),
    (CATCH_UP, Event.UNQUEUED): _to(CATCH_UP, **_FORGET),
    (DEGRADED, Event.UNQUEUED): _to(DEGRADED, **_FORGET),
    # Link sessions. A run that went to an unacted-on session: catch up under the new one.
    (ORDERED, Event.RECONNECTED): _to(CATCH_UP, **_FORGET),
    (CATCH_UP, Event.RECONNECTED): _to(CATCH_UP, **_FORGET),
    (DEGRADED, Event.RECONNECTED): _to(DEGRADED, **_FORGET),
    (ORDERED, Event.SESSION_IN_SYNC): _to(ORDERED, resync_marked=False),
    (CATCH_UP, Event.SESSION_IN_SYNC): _to(CATCH_UP, resync_marked=False),
    (DEGRADED, Event.SESSION_IN_SYNC): _to(DEGRADED, resync_marked=False),
    (ORDERED, Event.SESSION_BEHIND):
        _to(CATCH_UP, **_FORGET, handover_due=False, resync_marked=False),
    (CATCH_UP, Event.SESSION_BEHIND):
        _to(CATCH_UP, **_FORGET, handover_due=False, resync_marked=False),
    (DEGRADED, Event.SESSION_BEHIND):
        _to(DEGRADED, **_FORGET, handover_due=False, resync_marked=False),
    (ORDERED, Event.SESSION_INCONSISTENT):
        _to(CATCH_UP, **_FORGET, handover_due=False, resync_marked=True),
    (CATCH_UP, Event.SESSION_INCONSISTENT):
        _to(CATCH_UP, **_FORGET, handover_due=False, resync_marked=True),
    (DEGRADED, Event.SESSION_INCONSISTENT):
        _to(DEGRADED, **_FORGET, handover_due=False, resync_marked=True),
    # Failure and recovery. A pass run while degraded may reach ordered mode before
    # the step that ran it reports the recovery.
    (ORDERED, Event.FAILED): _to(DEGRADED, **_FORGET),
    (CATCH_UP, Event.FAILED): _to(DEGRADED, **_FORGET),
    (DEGRADED, Event.FAILED): _to(DEGRADED, **_FORGET),
    (DEGRADED, Event.RECOVERED): _to(CATCH_UP),
    (ORDERED, Event.RECOVERED): _to(ORDERED),
    # Catch-up passes (run in catch-up and, retrying, in degraded).
    (CATCH_UP, Event.PASS_STARTED): _to(CATCH_UP, queueing=True, handover_queued=False),
    (DEGRADED, Event.PASS_STARTED): _to(DEGRADED, queueing=True, handover_queued=False),
    (CATCH_UP, Event.RESYNC_MARKED): _to(CATCH_UP, resync_marked=True),
    (DEGRADED, Event.RESYNC_MARKED): _to(DEGRADED, resync_marked=True),
    (CATCH_UP, Event.PASS_ENDED): _to(CATCH_UP, **_STOP),
    (DEGRADED, Event.PASS_ENDED): _to(DEGRADED, **_STOP),
    (CATCH_UP, Event.CAUGHT_UP):
        _to(ORDERED, **_RESUME_ORDERED, handover_due=True, handover_queued=False),
    (DEGRADED, Event.CAUGHT_UP):
        _to(ORDERED, **_RESUME_ORDERED, handover_due=True, handover_queued=False),
    # A handover still due from an earlier catch-up waits for the queued run too: done
    # at the next ordered step, it would mark the remote consistent while the writes
    # queued during this pass are still missing there (a mix, not an image).
    (CATCH_UP, Event.CAUGHT_UP_QUEUED):
        _to(ORDERED, **_RESUME_ORDERED, handover_due=False, handover_queued=True),
    (DEGRADED, Event.CAUGHT_UP_QUEUED):
        _to(ORDERED, **_RESUME_ORDERED, handover_due=False, handover_queued=True),
    # The handover: the remote is marked consistent once it is an image again. The
    # host's writes may overflow the queue while a run or end_resync is on its way.
    (ORDERED, Event.HANDOVER_RUN_SENT): _to(ORDERED, handover_queued=False),
    (ORDERED, Event.HANDOVER_RUN_DURABLE): _to(ORDERED, handover_due=True),
    (CATCH_UP, Event.HANDOVER_RUN_DURABLE): _to(CATCH_UP, handover_due=True),
    (ORDERED, Event.HANDED_OVER): _to(ORDERED, handover_due=False, resync_marked=False),
    (CATCH_UP, Event.HANDED_OVER): _to(CATCH_UP, handover_due=False, resync_marked=False),
    # The operator.
    (ORDERED, Event.PAUSE): _to(ORDERED, paused=True),
    (CATCH_UP, Event.PAUSE): _to(CATCH_UP, paused=True),
    (DEGRADED, Event.PAUSE): _to(DEGRADED, paused=True),
    (ORDERED, Event.RESUME): _to(ORDERED, paused=False),
    (CATCH_UP, Event.RESUME): _to(CATCH_UP, paused=False),
    (DEGRADED, Event.RESUME): _to(DEGRADED, paused=False),
}


# Which appliance copies a region during catch-up. One appliance alone always does;
# a pair (issue 15) will decide per region, and a region this one may not copy stays
# in its record until the other one's copy is reported.
MayCopy = Callable[[int], bool]


def this_appliance_copies(region: int) -> bool:
    return True
