"""The model-based test of the pair protocol core (PAIR.md §9.2, test 1).

Hypothesis drives two cores in the simulated world of pair_sim.py: host writes, FRAM
writes that complete (or tear when the node crashes during one), frames delivered,
dropped, duplicated and reordered on each link in each direction, partitions of one
link, one direction or everything, heals, mirror copies racing writes, lazy clears,
time passing (leases, heartbeats, retransmissions, takeovers), fences, operator
takeovers (forced only when the peer is really down, or on both sides at once to make
a split brain) and rejoins. After every step the simulation checks PAIR.md's
invariants against what the FRAMs durably hold: I1 (coverage), I2 (subset), I3 (no D
write before the MARK is durable at the peer), I6 (no stale writer), I8 (safe clears)
and I10 (epochs). At the end the links heal, everything settles, and the mirror must
drain the records: D == M.

``TANDEM_PAIR_EXAMPLES`` / ``TANDEM_PAIR_STEPS`` run it longer (CI keeps the defaults).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from firmware.peer import events as ev
from firmware.peer import frames as f
from firmware.peer.config import PairConfig, PeerState
from firmware.peer.core import PairCore
from firmware.peer.frames import PRIMARY
from firmware.peer.held import LoadedPair
from tests.peer.pair_sim import LINKS, NODES, InvariantViolation, PairSim

REGIONS = 12
EXAMPLES = int(os.environ.get("TANDEM_PAIR_EXAMPLES", "150"))
STEPS = int(os.environ.get("TANDEM_PAIR_STEPS", "80"))

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

nodes = st.sampled_from(NODES)
links = st.sampled_from(LINKS)
index = st.integers(0, 60)


def other(node: str) -> str:
    return "b" if node == "a" else "a"


class PairModel(RuleBasedStateMachine):
    """Two appliances; ``a`` starts as the primary, ``b`` as its record-holder."""

    core_factory = staticmethod(lambda config, loaded, now: PairCore(config, loaded, now=now))

    def __init__(self) -> None:
        super().__init__()
        self.sim = PairSim(auto_fram=False, core_factory=self.make_core, regions=REGIONS)
        self.split_allowed = False

    def make_core(self, config: PairConfig, loaded: LoadedPair, now: float) -> PairCore:
        return type(self).core_factory(config, loaded, now)

    @initialize(start=st.sampled_from(["connected"] * 4 + ["cold"]),
                split_allowed=st.integers(0, 4))
    def begin(self, start, split_allowed) -> None:
        """Most runs start from a connected pair (so that writes and clears happen);
        some from a cold start. One in five may make a split brain on purpose."""
        self.split_allowed = split_allowed == 0
        if start == "connected":
            for _ in range(20):
                self._settle_once(0.1)
                if all(n.core.state is PeerState.CONNECTED  # type: ignore[union-attr]
                       for n in self.sim.nodes.values()):
                    break

    # -- hosts and media ---------------------------------------------------------------------

    def _serving(self, node: str, to_primary: bool) -> str:
        """Mostly the node that serves (a write on the other one is only refused)."""
        if to_primary:
            for name, n in self.sim.nodes.items():
                if n.core is not None and n.core.role == PRIMARY:
                    return name
        return node

    @rule(node=nodes, to_primary=st.integers(0, 4), first=st.integers(0, REGIONS - 1),
          span=st.integers(1, 2), predicted=st.integers(0, 2), then=st.integers(0, 2))
    def host_write(self, node, to_primary, first, span, predicted, then) -> None:
        """A host write (mostly on the node that serves); ``then``: and a healthy moment
        after it, or its completion too (so that runs make progress between faults)."""
        regions = tuple(r % REGIONS for r in range(first, first + span))
        guess = tuple((first + span + i) % REGIONS for i in range(predicted))
        writer = self._serving(node, to_primary > 0)
        self.sim.host_write(writer, regions, guess)
        if then:
            self._settle_once(0.05)
        if then == 2:
            while self.sim.complete_write(writer):
                pass

    @rule(node=nodes, to_primary=st.integers(0, 4), first=st.integers(0, REGIONS - 1))
    def host_write_one(self, node, to_primary, first) -> None:
        self.sim.host_write(self._serving(node, to_primary > 0), (first,))

    @rule(node=nodes, to_primary=st.integers(0, 4))
    def complete_write(self, node, to_primary) -> None:
        self.sim.complete_write(self._serving(node, to_primary > 0))

    @rule(node=nodes, to_primary=st.integers(0, 4), pick=index, finish=st.integers(0, 2))
    def mirror_start(self, node, to_primary, pick, finish) -> None:
        """Snapshot and copy a dirty region; finished later, a write may race it.
        ``finish``: at once, and 2: its clear flushed and a healthy moment after."""
        node = self._serving(node, to_primary > 0)
        core = self.sim.nodes[node].core
        if core is not None:
            dirty = [r for r in sorted(core.dirty_regions())
                     if core.mirror_snapshot(r) is not None]
            if dirty and self.sim.mirror_start(node, dirty[pick % len(dirty)]) and finish:
                self.sim.mirror_finish(node)
                if finish == 2:
                    self.sim.handle(node, ev.FlushClears())
                    self._settle_once(0.05)

    @rule(node=nodes, to_primary=st.integers(0, 4))
    def mirror_finish(self, node, to_primary) -> None:
        self.sim.mirror_finish(self._serving(node, to_primary > 0))

    @rule(node=nodes)
    def flush_clears(self, node) -> None:
        self.sim.handle(node, ev.FlushClears())

    @rule(node=nodes)
    def fram_step(self, node) -> None:
        self.sim.fram_step(node)

    # -- the network and time ----------------------------------------------------------------

    @rule(link=links, src=nodes, pick=index)
    def deliver(self, link, src, pick) -> None:
        """Any frame in flight arrives, not only the oldest: reordering."""
        self.sim.deliver(link, src, pick)

    @rule(dt=st.sampled_from([0.05, 0.05, 0.2, 0.6, 1.5, 3.0]))
    def advance(self, dt) -> None:
        self.sim.advance(dt)

    @rule(dt=st.sampled_from([0.05, 0.2, 0.5]))
    def settle(self, dt) -> None:
        """What a healthy moment does: FRAM writes finish, frames arrive, time moves."""
        self._settle_once(dt)

    def _settle_once(self, dt: float) -> None:
        for _ in range(3):
            for node in NODES:
                while self.sim.fram_step(node):
                    pass
            self.sim.deliver_all(rounds=3)
        self.sim.advance(dt)

    # -- faults ------------------------------------------------------------------------------

    @rule(op=st.sampled_from(["duplicate", "drop", "drop-all"]), link=links, src=nodes,
          pick=index)
    def network_fault(self, op, link, src, pick) -> None:
        if op == "duplicate":
            self.sim.deliver(link, src, pick, keep=True)
        elif op == "drop":
            self.sim.drop(link, src, pick)
        else:
            self.sim.net[(link, src)].clear()

    @rule(op=st.sampled_from(["cut", "cut", "cut-all", "heal", "heal", "link-down", "link-up"]),
          link=links, node=nodes)
    def topology(self, op, link, node) -> None:
        """Partitions of one link in one direction (``node`` sending), of everything,
        heals, and the runtime reporting a connection lost or made."""
        if op == "cut":
            self.sim.cut.add((link, node))
        elif op == "cut-all":
            self.sim.cut.update((lk, n) for lk in LINKS for n in NODES)
        elif op == "heal":
            self.sim.cut.clear()
        else:
            self.sim.handle(node, ev.LinkUp(link) if op == "link-up" else ev.LinkDown(link))

    @rule(op=st.sampled_from(["crash-restart", "crash-restart", "crash", "restart"]),
          node=nodes, tear=st.none() | st.integers(0, 80))
    def power(self, op, node, tear) -> None:
        """Power lost: RAM gone, FRAM kept, the FRAM write under way torn after ``tear``
        bytes (or not at all); mostly back at once, sometimes down for a while."""
        if op == "restart":
            if not self.sim.nodes[node].alive:
                self.sim.start(node)
            return
        self.sim.crash(node, tear)
        if op == "crash-restart":
            self.sim.start(node)

    @rule(op=st.sampled_from(["fence-ok", "fence-fails", "takeover", "takeover-force",
                              "rejoin", "full-resync"]), node=nodes)
    def operator(self, op, node) -> None:
        """Fence results, the operator's commands, and a full resync done."""
        if op in ("fence-ok", "fence-fails"):
            self.sim.fence(node, op == "fence-ok")  # ok: the fence powers the peer off
        elif op == "takeover":
            self.sim.handle(node, ev.TakeoverCommand(force=False))
        elif op == "takeover-force":
            # The operator's word that the peer is down is only true when it is.
            if not self.sim.nodes[other(node)].alive:
                self.sim.handle(node, ev.TakeoverCommand(force=True))
        elif op == "rejoin":
            self.sim.handle(node, ev.RejoinCommand())
        else:
            self.sim.full_resync(node)

    @precondition(lambda self: self.split_allowed and not self.sim.split_brain_made
                  and all(n.alive for n in self.sim.nodes.values()))
    @rule()
    def split_brain(self) -> None:
        """Both sides forced during a full partition: the split brain, made on purpose."""
        self.sim.cut.update((lk, n) for lk in LINKS for n in NODES)
        self.sim.advance(4.0)
        self.sim.note_split_brain()
        for node in NODES:
            self.sim.handle(node, ev.TakeoverCommand(force=True))

    # -- the checks --------------------------------------------------------------------------

    @invariant()
    def invariants_hold(self) -> None:
        self.sim.check()

    def teardown(self) -> None:
        """Heal, restart, settle; the records must drain and D must equal M (I4, I9)."""
        sim = self.sim
        sim.cut.clear()
        for node in NODES:
            if not sim.nodes[node].alive:
                sim.start(node)
            for link in LINKS:
                sim.handle(node, ev.LinkUp(link))  # the runtime reconnects
        for step in range(400):
            for node in NODES:
                while sim.fram_step(node):
                    pass
                sim.complete_write(node)
                sim.full_resync(node)
                core = sim.nodes[node].core
                assert core is not None
                if sim.nodes[node].fence_asked:
                    sim.fence(node, False)
                if core.state is PeerState.SPLIT_BRAIN and node == "b":
                    sim.handle(node, ev.RejoinCommand())  # the operator picks a
                sim.mirror_finish(node)  # a copy a rule started
                for r in sorted(core.dirty_regions()):
                    if sim.mirror_start(node, r):
                        sim.mirror_finish(node)
                sim.handle(node, ev.FlushClears())
            sim.deliver_all(rounds=5)
            sim.advance(0.2)
            sim.check()
            if step > 20 and self._quiet():
                break
        assert self._quiet(), self._describe()

    def _quiet(self) -> bool:
        sim = self.sim
        states = {sim.nodes[n].core.state for n in NODES}  # type: ignore[union-attr]
        if states - {PeerState.CONNECTED}:
            return False
        return not sim.differing() and not sim.covering()

    def _describe(self) -> str:
        sim = self.sim
        parts = [f"differ {sorted(sim.differing())} named {sorted(sim.covering())}"]
        for n in NODES:
            core = sim.nodes[n].core
            assert core is not None
            parts.append(f"{n}: {core.state.value} {core.role} ep {core.epoch} "
                         f"dirty {sorted(core.dirty_regions())} lc {sorted(core.local_copy())} "
                         f"frozen {core.frozen} {sim.durable(n).state}")
        return "; ".join(parts)


TestPairModel = PairModel.TestCase
TestPairModel.settings = MODEL_SETTINGS


class FailbackModel(PairModel):
    """Both nodes hand the primary role back (``hands_back``, active-active's failback)
    whenever they are primary with nothing recorded and the peer holds for them: roles
    swap again and again, under the same faults, and every invariant still holds."""

    core_factory = staticmethod(lambda config, loaded, now: PairCore(
        replace(config, hands_back=True), loaded, now=now))


def test_failback_keeps_every_invariant() -> None:
    run_state_machine_as_test(FailbackModel, settings=settings(
        MODEL_SETTINGS, max_examples=max(30, EXAMPLES // 3)))


# --- the checker must catch a broken core --------------------------------------------------


class WritesBeforeMarkAck(PairCore):
    """The bug PAIR.md's first lesson is about: the local write issued before the
    holder's MARK_ACK (the region is taken as covered once it is queued)."""

    def _lc_covers(self, regions) -> bool:  # noqa: ANN001  # the hook the mutant bends
        return True


class MutantModel(PairModel):
    core_factory = staticmethod(
        lambda config, loaded, now: WritesBeforeMarkAck(config, loaded, now=now))


def test_the_model_catches_a_write_before_mark_ack() -> None:
    quick = settings(MODEL_SETTINGS, max_examples=200, phases=[Phase.generate])
    with pytest.raises(InvariantViolation, match="I3"):
        run_state_machine_as_test(MutantModel, settings=quick)


class ClearsWithoutComparing(PairCore):
    """Lesson 3: a plain clear. The holder drops the region whatever gen it holds, so a
    write that raced the clear (its MARK arrived first) loses its entry."""

    def _on_clear(self, link, h, msg) -> None:  # noqa: ANN001  # the handler the mutant bends
        for region, _ in msg.entries:
            self._tables["held"].drop(region)
        batch = msg.batch
        self._when_durable(lambda: self._send_data(f.ClearAck(batch)))


class ClearMutantModel(PairModel):
    core_factory = staticmethod(
        lambda config, loaded, now: ClearsWithoutComparing(config, loaded, now=now))


def test_the_model_catches_a_clear_that_does_not_compare_generations() -> None:
    # The race needs a clear overtaken by a new MARK: more examples than the main run.
    longer = settings(MODEL_SETTINGS, max_examples=1000, phases=[Phase.generate])
    with pytest.raises(InvariantViolation, match=r"I\d"):  # I2, I3 or I8 sees it first
        run_state_machine_as_test(ClearMutantModel, settings=longer)

