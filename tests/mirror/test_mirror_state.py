"""The mirror's mode table (firmware/mirror/state.py): every transition, and the refused ones."""

from __future__ import annotations

import dataclasses

import pytest

from firmware.mirror.state import (
    LINK_EVENTS,
    TRANSITIONS,
    Event,
    MirrorState,
    Mode,
    RefusedTransition,
    _to,
)

ORDERED, CATCH_UP, DEGRADED = MirrorState.ORDERED, MirrorState.CATCH_UP, MirrorState.DEGRADED

# The whole table, by state: where each event leaves the mirror ("-": refused).
GRID = """
event                  ordered   catch-up  degraded
OVERFLOW               catch-up  catch-up  degraded
UNQUEUED               catch-up  catch-up  degraded
RECONNECTED            catch-up  catch-up  degraded
SESSION_IN_SYNC        ordered   catch-up  degraded
SESSION_BEHIND         catch-up  catch-up  degraded
SESSION_INCONSISTENT   catch-up  catch-up  degraded
FAILED                 degraded  degraded  degraded
RECOVERED              ordered   -         catch-up
PASS_STARTED           -         catch-up  degraded
RESYNC_MARKED          -         catch-up  degraded
PASS_ENDED             -         catch-up  degraded
CAUGHT_UP              -         ordered   ordered
CAUGHT_UP_QUEUED       -         ordered   ordered
HANDOVER_RUN_SENT      ordered   -         -
HANDOVER_RUN_DURABLE   ordered   catch-up  -
HANDED_OVER            ordered   catch-up  -
PAUSE                  ordered   catch-up  degraded
RESUME                 ordered   catch-up  degraded
"""


def _grid() -> dict[tuple[MirrorState, Event], MirrorState | None]:
    lines = GRID.strip().splitlines()
    states = [MirrorState(name) for name in lines[0].split()[1:]]
    out: dict[tuple[MirrorState, Event], MirrorState | None] = {}
    for line in lines[1:]:
        name, *targets = line.split()
        for state, target in zip(states, targets, strict=True):
            out[(state, Event[name])] = None if target == "-" else MirrorState(target)
    return out


def mode(state: MirrorState, **flags: bool) -> Mode:
    """A mode of a linked mirror in ``state``, with ordered mode's usual flags."""
    ordered = state is ORDERED
    base = Mode(state, queueing=ordered, blocks_known=ordered, after_crash=False, linked=True)
    return dataclasses.replace(base, **flags)


def test_the_grid_is_the_table() -> None:
    grid = _grid()
    assert set(grid) == {(s, e) for s in MirrorState for e in Event}  # every pair written down
    allowed = {pair: target for pair, target in grid.items() if target is not None}
    assert {pair: t.target for pair, t in TRANSITIONS.items()} == allowed


@pytest.mark.parametrize("state", list(MirrorState))
@pytest.mark.parametrize("event", list(Event))
def test_each_pair_moves_as_the_grid_says_or_is_refused(state: MirrorState,
                                                        event: Event) -> None:
    target = _grid()[(state, event)]
    before = mode(state)
    if target is None:
        with pytest.raises(RefusedTransition) as refused:
            before.after(event)
        assert refused.value.mode is before and refused.value.event is event
    else:
        assert before.after(event).state is target
    assert before == mode(state)  # a mode is a value: after() leaves it as it was


@pytest.mark.parametrize("event", sorted(LINK_EVENTS, key=lambda e: e.name))
def test_link_events_are_refused_without_link_sessions(event: Event) -> None:
    for state in MirrorState:
        unlinked = dataclasses.replace(mode(state), linked=False)
        with pytest.raises(RefusedTransition):
            unlinked.after(event)


def test_the_start_up_modes() -> None:
    after_crash = Mode.initial(regions_named=True, linked=False)
    assert (after_crash.state, after_crash.queueing, after_crash.blocks_known,
            after_crash.after_crash) == (CATCH_UP, False, False, True)
    clean = Mode.initial(regions_named=False, linked=True)
    assert (clean.state, clean.queueing, clean.blocks_known, clean.after_crash) \
        == (ORDERED, True, True, False)
    assert clean.linked and not (clean.resync_marked or clean.handover_due)


def test_an_overflow_keeps_the_blocks_known_other_reasons_forget_them() -> None:
    overflowed = mode(ORDERED).after(Event.OVERFLOW)
    assert overflowed.state is CATCH_UP and overflowed.blocks_known and not overflowed.queueing
    for event in (Event.UNQUEUED, Event.RECONNECTED, Event.SESSION_BEHIND,
                  Event.SESSION_INCONSISTENT, Event.FAILED):
        after = mode(ORDERED).after(event)
        assert not after.blocks_known and not after.queueing, event


def test_a_pass_queues_again_and_hands_over_to_ordered_mode() -> None:
    crashed = Mode.initial(regions_named=True, linked=True)
    passing = crashed.after(Event.PASS_STARTED).after(Event.RESYNC_MARKED)
    assert passing.queueing and passing.resync_marked and not passing.blocks_known
    caught_up = passing.after(Event.CAUGHT_UP)
    assert (caught_up.state, caught_up.queueing, caught_up.blocks_known,
            caught_up.after_crash) == (ORDERED, True, True, False)
    assert caught_up.handover_due and not caught_up.handover_queued
    assert passing.after(Event.PASS_ENDED).queueing is False


def test_the_handover_waits_for_the_run_holding_the_queued_writes() -> None:
    caught_up = mode(CATCH_UP, queueing=True, resync_marked=True).after(Event.CAUGHT_UP_QUEUED)
    assert caught_up.handover_queued and not caught_up.handover_due
    sent = caught_up.after(Event.HANDOVER_RUN_SENT)
    assert not sent.handover_queued and not sent.handover_due
    durable = sent.after(Event.HANDOVER_RUN_DURABLE)
    assert durable.handover_due
    done = durable.after(Event.HANDED_OVER)
    assert not (done.handover_due or done.resync_marked)


def test_a_handover_still_due_waits_for_the_writes_queued_during_the_next_pass() -> None:
    # The remote is an image again only once the run holding those writes is durable;
    # marking it consistent at the next ordered step would name a mix consistent.
    due = mode(CATCH_UP, queueing=True, resync_marked=True, handover_due=True)
    after = due.after(Event.CAUGHT_UP_QUEUED)
    assert after.handover_queued and not after.handover_due
    durable = after.after(Event.HANDOVER_RUN_SENT).after(Event.HANDOVER_RUN_DURABLE)
    assert durable.handover_due


def test_a_mirror_without_link_sessions_never_hands_over() -> None:
    unlinked = Mode.initial(regions_named=True, linked=False)
    assert not unlinked.after(Event.PASS_STARTED).after(Event.CAUGHT_UP).handover_due


def test_new_sessions() -> None:
    assert mode(ORDERED, resync_marked=True).after(Event.SESSION_IN_SYNC) \
        == mode(ORDERED, resync_marked=False)
    behind = mode(ORDERED, handover_due=True).after(Event.SESSION_BEHIND)
    assert behind.state is CATCH_UP and not behind.resync_marked and not behind.handover_due
    marked = mode(ORDERED).after(Event.SESSION_INCONSISTENT)
    assert marked.state is CATCH_UP and marked.resync_marked  # already marked: no begin_resync
    # Degraded stays so until it heals.
    assert mode(DEGRADED).after(Event.SESSION_BEHIND).state is DEGRADED


def test_failure_and_recovery() -> None:
    failed = mode(ORDERED, handover_due=True).after(Event.FAILED)
    assert failed.state is DEGRADED and not failed.queueing and not failed.blocks_known
    assert failed.handover_due  # the remote still has to be told, once it is back
    assert failed.after(Event.RECOVERED).state is CATCH_UP


def test_pause_is_shown_and_keeps_the_state() -> None:
    for state in MirrorState:
        paused = mode(state).after(Event.PAUSE)
        assert paused.paused and paused.state is state and paused.label == "paused"
        assert paused.after(Event.RESUME) == mode(state)
        assert mode(state).label == state.value


def _reachable() -> set[Mode]:
    seen: set[Mode] = set()
    todo = [Mode.initial(regions_named=named, linked=linked)
            for named in (False, True) for linked in (False, True)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for event in Event:
            try:
                todo.append(current.after(event))
            except RefusedTransition:
                pass
    return seen


def test_what_holds_in_every_reachable_mode() -> None:
    modes = _reachable()
    assert {m.state for m in modes} == set(MirrorState)
    for m in modes:
        if m.state is ORDERED:
            # Ordered mode queues every write and notes none by block (the queue has it).
            assert m.queueing and m.blocks_known and not m.after_crash, m
        if not m.linked:
            assert not (m.resync_marked or m.handover_due or m.handover_queued), m
        if m.handover_queued:
            assert m.queueing, m  # the write that marks the handover is in the queue


def test_a_misspelt_flag_is_caught_when_the_table_is_built() -> None:
    with pytest.raises(ValueError, match="queuing"):
        _to(CATCH_UP, queuing=False)
