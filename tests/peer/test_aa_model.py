"""Active-active coherence in the pure cores (issue 16): ownership moves with a MARK.

Two nodes, each with its own core and the holder core of the peer's record
(tests/peer/aa_sim.py), write the same few regions from both sides while the network
drops, duplicates and reorders frames and each side's mirror copies regions at its own
pace. After every step: no region in both local copies, no overlapping in-flight D writes
from both nodes, no copy started while the other side writes the region, every region
where D and M differ named in some FRAM; at the end the pair drains and D == M.

The scripted tests pin down what the model explores: the mirror race (a copy in flight
when the region is asked for) with the mutant that must fail it (random sequences rarely
line up a stale copy landing after the other side's fresh copy and clear, so the mutant
is checked on the script), a hand-over in each
direction, both nodes asking for one region at once (ties), and an acknowledgement that
arrives after the region was taken back.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests.peer.aa_sim import HOLDER, LINKS, NODES, OWN, AASim, Violation

REGIONS = 6
EXAMPLES = int(os.environ.get("TANDEM_AA_EXAMPLES", "120"))
STEPS = int(os.environ.get("TANDEM_AA_STEPS", "80"))

MODEL_SETTINGS = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=True,
    database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

nodes = st.sampled_from(NODES)
kinds = st.sampled_from((OWN, HOLDER))
links = st.sampled_from(LINKS)
index = st.integers(0, 40)


def connected(sim: AASim) -> None:
    for _ in range(10):
        sim.advance(0.05)
        sim.deliver_all()


def settle(sim: AASim, steps: int = 20, dt: float = 0.02) -> None:
    """Time passes with each node's mirror at work (a node with a copy of its own still
    in flight is left alone: the test decides when that copy lands)."""
    for _ in range(steps):
        sim.deliver_all()
        for name in NODES:
            node = sim.nodes[name]
            if node.copies:
                continue
            for region in sorted(node.own.dirty_regions()):
                if sim.mirror_start(name, region):
                    sim.mirror_finish(name)
        sim.advance(dt)
        sim.check()


class ActiveActiveModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.sim = AASim(regions=REGIONS)

    @initialize()
    def begin(self) -> None:
        connected(self.sim)

    @rule(node=nodes, first=st.integers(0, REGIONS - 1), count=st.integers(1, 3),
          predict=st.booleans())
    def host_write(self, node, first, count, predict) -> None:
        regions = tuple(range(first, min(REGIONS, first + count)))
        predicted = (min(REGIONS - 1, regions[-1] + 1),) if predict else ()
        self.sim.host_write(node, regions, tuple(r for r in predicted if r not in regions))

    @rule(node=nodes)
    def complete_write(self, node) -> None:
        self.sim.complete_write(node)

    @rule(src=nodes, kind=kinds, link=links, pick=index)
    def deliver(self, src, kind, link, pick) -> None:
        self.sim.deliver(src, kind, link, pick)

    @rule(src=nodes, kind=kinds, link=links, pick=index)
    def duplicate(self, src, kind, link, pick) -> None:
        self.sim.deliver(src, kind, link, pick, keep=True)

    @rule(src=nodes, kind=kinds, link=links, pick=index)
    def drop(self, src, kind, link, pick) -> None:
        self.sim.drop(src, kind, link, pick)

    @rule(dt=st.sampled_from([0.01, 0.05, 0.2, 0.6]))
    def advance(self, dt) -> None:
        self.sim.advance(dt)

    @rule(node=nodes, pick=index)
    def mirror_start(self, node, pick) -> None:
        dirty = sorted(self.sim.nodes[node].own.dirty_regions())
        if dirty:
            self.sim.mirror_start(node, dirty[pick % len(dirty)])

    @rule(node=nodes)
    def mirror_finish(self, node) -> None:
        self.sim.mirror_finish(node)

    @rule(node=nodes)
    def flush_clears(self, node) -> None:
        self.sim.flush_clears(node)

    @invariant()
    def invariants_hold(self) -> None:
        self.sim.check()

    def teardown(self) -> None:
        sim = self.sim
        sim.drain()
        assert not sim.pending, f"writes never issued: {sim.pending}"
        assert not sim.differing(), f"D and M differ in {sorted(sim.differing())}"


def test_active_active_model() -> None:
    run_state_machine_as_test(ActiveActiveModel, settings=MODEL_SETTINGS)


# -- scripted cases -----------------------------------------------------------------------


def _written(sim: AASim, node: str, regions: tuple[int, ...]) -> None:
    sim.host_write(node, regions)
    settle(sim, 10)
    assert sim.complete_write(node), f"{node}'s write to {regions} was not issued"


@pytest.mark.parametrize("mirror_ownership", [True, False])
def test_the_mirror_race(mirror_ownership: bool) -> None:
    """A copies region 5 (old data in flight to M) when B asks for it and writes it. The
    honest pair makes B wait for A's copy; the broken one lets A's stale copy land after
    B's fresh one, and the region differs with no record naming it."""
    sim = AASim(mirror_ownership=mirror_ownership)
    connected(sim)
    _written(sim, "a", (5,))
    assert sim.mirror_start("a", 5)  # A reads D(5): version 1, on its way to M
    sim.advance(0.1)  # past A's dwell
    sim.host_write("b", (5,))
    settle(sim, 10)
    if mirror_ownership:
        assert not sim.nodes["b"].in_flight, "B wrote while A's copy was in flight"
    try:
        while sim.complete_write("b"):
            pass
        for _ in range(5):
            for r in sorted(sim.nodes["b"].own.dirty_regions()):
                if sim.mirror_start("b", r):
                    sim.mirror_finish("b")
            settle(sim, 5, 0.3)
        sim.mirror_finish("a")  # A's copy lands now
        sim.check()
        sim.drain()
        sim.check()
        assert not sim.differing()
    except Violation:
        assert not mirror_ownership, "the honest pair broke coherence"
        return
    assert mirror_ownership, "the broken build went unnoticed"
    assert 5 in sim.nodes["b"].own.local_copy() or not sim.nodes["b"].own.dirty_regions()


def test_a_region_moves_each_way_and_back() -> None:
    sim = AASim()
    connected(sim)
    for node in ["a", "b", "a", "b"]:
        _written(sim, node, (3, 4))
        assert {3, 4} <= sim.nodes[node].own.local_copy()
        other = sim.nodes["b" if node == "a" else "a"].own
        assert not {3, 4} & other.local_copy()
        sim.advance(0.1)  # dwell
    assert sim.nodes["a"].own.handovers + sim.nodes["b"].own.handovers >= 3
    waits = sim.nodes["a"].own.handover_waits + sim.nodes["b"].own.handover_waits
    assert waits and max(waits) < 1.0
    sim.drain()
    assert not sim.differing()


def test_both_ask_for_one_region_at_once() -> None:
    # Both MARKs cross: the node that wins ties ("a") writes first, the other waits for
    # it, and both writes are done in the end — no deadlock.
    sim = AASim()
    connected(sim)
    sim.host_write("a", (7,))
    sim.host_write("b", (7,))
    done = {"a": 0, "b": 0}
    for _ in range(60):
        settle(sim, 1)
        for node in NODES:
            while sim.complete_write(node):
                done[node] += 1
    assert done == {"a": 1, "b": 1}
    sim.drain()
    assert not sim.differing()


def test_an_acknowledgement_that_comes_after_the_region_was_taken_back() -> None:
    # B asks for 2 while A's own MARK for 2 is still out; B's ack of A's MARK is held
    # back on the link until B has taken 2 back: the late ack must not make A an owner.
    sim = AASim()
    connected(sim)
    _written(sim, "b", (2,))
    sim.advance(0.1)
    sim.host_write("a", (2,))  # A's MARK for 2 goes to B's holder core
    sim.host_write("b", (2,))  # and B wants 2 again before A's write
    for _ in range(40):
        settle(sim, 1)
        for node in NODES:
            while sim.complete_write(node):
                pass
    sim.drain()
    assert not sim.pending
    assert not sim.differing()
