"""Sequences the model test (test_pair_model.py) failed on while the core was built,
replayed step by step: each found a bug that is fixed, and must stay fixed whatever the
default settings of the model test happen to explore.

Steps are ``(rule, arguments, repeat)``; the invariants are checked after every step and
the teardown's convergence check at the end, as in the model test.
"""

from __future__ import annotations

import pytest

from firmware.peer.config import PeerState
from tests.peer.pair_sim import PairSim
from tests.peer.test_pair_model import PairModel

REGRESSIONS: dict[str, list[tuple[str, dict[str, object], int]]] = {
    "an answer to an earlier boot's MARK taken for this boot's batch": [
        ("begin", dict(start="cold", split_allowed=1), 1),
        ("network_fault", dict(link="serial", op="duplicate", pick=29, src="b"), 1),
        ("advance", dict(dt=0.05), 1),
        ("mirror_start", dict(finish=0, node="a", pick=26, to_primary=0), 1),
        ("advance", dict(dt=0.05), 1),
        ("advance", dict(dt=0.6), 1),
        ("operator", dict(node="a", op="takeover"), 1),
        ("topology", dict(link="tcp", node="a", op="cut"), 1),
        ("power", dict(node="b", op="crash-restart", tear=None), 1),
        ("topology", dict(link="tcp", node="a", op="cut"), 1),
        ("advance", dict(dt=0.05), 1),
        ("power", dict(node="b", op="restart", tear=None), 1),
        ("power", dict(node="b", op="crash-restart", tear=None), 1),
        ("fram_step", dict(node="a"), 1),
        ("operator", dict(node="b", op="rejoin"), 1),
        ("network_fault", dict(link="serial", op="drop-all", pick=42, src="b"), 1),
        ("host_write_one", dict(first=7, node="a", to_primary=3), 1),
        ("power", dict(node="a", op="crash-restart", tear=67), 1),
        ("mirror_finish", dict(node="a", to_primary=4), 1),
        ("mirror_start", dict(finish=0, node="a", pick=27, to_primary=2), 1),
        ("host_write_one", dict(first=0, node="b", to_primary=1), 1),
        ("flush_clears", dict(node="b"), 1),
        ("complete_write", dict(node="b", to_primary=3), 1),
        ("complete_write", dict(node="a", to_primary=1), 1),
        ("mirror_start", dict(finish=0, node="b", pick=34, to_primary=0), 1),
        ("settle", dict(dt=0.2), 1),
    ],
    "a stale node restarting its handover on a late request": [
        ("begin", dict(start="cold", split_allowed=0), 1),
        ("split_brain", dict(), 1),
        ("power", dict(node="a", op="crash-restart", tear=None), 1),
        ("flush_clears", dict(node="a"), 1),
        ("advance", dict(dt=0.05), 2),
        ("settle", dict(dt=0.05), 1),
        ("advance", dict(dt=0.05), 34),
        ("mirror_start", dict(finish=0, node="a", pick=0, to_primary=0), 1),
        ("advance", dict(dt=0.05), 4),
    ],
    "a yield lost in a restart brings back a sole owner": [
        ("begin", dict(start="connected", split_allowed=0), 1),
        ("split_brain", dict(), 1),
        ("advance", dict(dt=0.05), 2),
        ("topology", dict(link="tcp", node="a", op="heal"), 1),
        ("advance", dict(dt=0.05), 1),
        ("host_write", dict(first=0, node="a", predicted=0, span=1, then=0, to_primary=0), 1),
        ("settle", dict(dt=0.05), 1),
        ("operator", dict(node="a", op="rejoin"), 1),
        ("advance", dict(dt=0.05), 9),
        ("settle", dict(dt=0.05), 1),
        ("power", dict(node="a", op="crash-restart", tear=None), 1),
        ("advance", dict(dt=0.05), 2),
        ("host_write", dict(first=0, node="a", predicted=0, span=1, then=0, to_primary=0), 1),
    ],
    "a sole owner's write covered by an entry being removed": [
        ("begin", dict(start="connected", split_allowed=0), 1),
        ("settle", dict(dt=0.05), 1),
        ("split_brain", dict(), 1),
        ("advance", dict(dt=0.05), 2),
        ("host_write_one", dict(first=0, node="a", to_primary=0), 1),
        ("settle", dict(dt=0.05), 1),
        ("advance", dict(dt=0.05), 8),
        ("fram_step", dict(node="b"), 1),
        ("advance", dict(dt=0.05), 7),
        ("settle", dict(dt=0.05), 1),
        ("advance", dict(dt=0.05), 1),
        ("power", dict(node="a", op="crash-restart", tear=None), 1),
        ("host_write_one", dict(first=0, node="a", to_primary=0), 1),
        ("mirror_finish", dict(node="a", to_primary=0), 1),
        ("power", dict(node="b", op="crash-restart", tear=77), 1),
        ("deliver", dict(link="serial", pick=44, src="b"), 1),
        ("mirror_finish", dict(node="a", to_primary=3), 1),
        ("operator", dict(node="b", op="takeover"), 1),
        ("topology", dict(link="serial", node="a", op="cut"), 1),
        ("fram_step", dict(node="a"), 1),
        ("complete_write", dict(node="b", to_primary=4), 1),
        ("complete_write", dict(node="b", to_primary=1), 1),
        ("complete_write", dict(node="a", to_primary=3), 1),
        ("operator", dict(node="b", op="rejoin"), 1),
        ("deliver", dict(link="tcp", pick=0, src="a"), 1),
        ("host_write", dict(first=5, node="a", predicted=0, span=1, then=0, to_primary=0), 1),
        ("settle", dict(dt=0.5), 1),
        ("host_write", dict(first=9, node="a", predicted=0, span=1, then=2, to_primary=0), 1),
        ("topology", dict(link="tcp", node="b", op="cut"), 1),
        ("power", dict(node="b", op="restart", tear=23), 1),
        ("topology", dict(link="serial", node="b", op="link-down"), 1),
        ("complete_write", dict(node="b", to_primary=3), 1),
        ("host_write_one", dict(first=6, node="a", to_primary=4), 1),
        ("deliver", dict(link="tcp", pick=3, src="b"), 1),
        ("mirror_finish", dict(node="a", to_primary=4), 1),
        ("host_write", dict(first=3, node="b", predicted=2, span=1, then=2, to_primary=2), 1),
        ("settle", dict(dt=0.05), 1),
        ("complete_write", dict(node="b", to_primary=1), 1),
        ("complete_write", dict(node="a", to_primary=2), 1),
        ("advance", dict(dt=1.5), 1),
        ("flush_clears", dict(node="b"), 1),
        ("mirror_start", dict(finish=1, node="a", pick=3, to_primary=1), 1),
        ("mirror_start", dict(finish=0, node="a", pick=0, to_primary=4), 1),
        ("mirror_finish", dict(node="b", to_primary=4), 1),
        ("settle", dict(dt=0.2), 1),
        ("operator", dict(node="b", op="fence-ok"), 1),
        ("host_write", dict(first=3, node="a", predicted=1, span=2, then=0, to_primary=2), 1),
        ("flush_clears", dict(node="a"), 1),
        ("advance", dict(dt=1.5), 1),
        ("fram_step", dict(node="a"), 1),
        ("settle", dict(dt=0.2), 1),
        ("mirror_finish", dict(node="b", to_primary=0), 1),
        ("mirror_start", dict(finish=1, node="b", pick=4, to_primary=2), 1),
        ("deliver", dict(link="tcp", pick=54, src="a"), 1),
        ("topology", dict(link="tcp", node="a", op="cut-all"), 1),
        ("network_fault", dict(link="serial", op="drop", pick=0, src="a"), 1),
        ("network_fault", dict(link="serial", op="duplicate", pick=10, src="b"), 1),
        ("host_write_one", dict(first=5, node="a", to_primary=3), 1),
        ("topology", dict(link="serial", node="a", op="cut-all"), 1),
        ("complete_write", dict(node="a", to_primary=3), 1),
        ("network_fault", dict(link="tcp", op="drop-all", pick=54, src="b"), 1),
        ("host_write_one", dict(first=7, node="a", to_primary=2), 1),
        ("flush_clears", dict(node="b"), 1),
        ("mirror_finish", dict(node="b", to_primary=4), 1),
        ("advance", dict(dt=0.05), 1),
        ("mirror_start", dict(finish=0, node="b", pick=1, to_primary=1), 1),
        ("network_fault", dict(link="tcp", op="drop", pick=38, src="a"), 1),
        ("power", dict(node="a", op="crash-restart", tear=21), 1),
    ],
    "a late HELLO from before the takeover undoing a handover": [
        ("begin", dict(start="cold", split_allowed=0), 1),
        ("host_write_one", dict(first=3, node="b", to_primary=4), 1),
        ("host_write_one", dict(first=11, node="b", to_primary=0), 1),
        ("fram_step", dict(node="b"), 1),
        ("host_write_one", dict(first=10, node="b", to_primary=0), 1),
        ("host_write_one", dict(first=6, node="a", to_primary=4), 1),
        ("deliver", dict(link="serial", pick=17, src="b"), 1),
        ("host_write_one", dict(first=10, node="a", to_primary=0), 1),
        ("split_brain", dict(), 1),
        ("power", dict(node="a", op="crash-restart", tear=None), 1),
        ("deliver", dict(link="tcp", pick=34, src="b"), 1),
        ("advance", dict(dt=0.05), 1),
        ("complete_write", dict(node="a", to_primary=4), 1),
        ("mirror_finish", dict(node="b", to_primary=0), 1),
        ("mirror_start", dict(finish=1, node="a", pick=56, to_primary=2), 1),
        ("mirror_finish", dict(node="a", to_primary=0), 1),
        ("mirror_start", dict(finish=0, node="a", pick=37, to_primary=3), 1),
        ("host_write_one", dict(first=9, node="a", to_primary=4), 1),
        ("topology", dict(link="serial", node="b", op="cut"), 1),
        ("operator", dict(node="a", op="takeover-force"), 1),
        ("advance", dict(dt=0.6), 1),
        ("operator", dict(node="a", op="fence-ok"), 1),
        ("mirror_finish", dict(node="b", to_primary=1), 1),
        ("advance", dict(dt=0.2), 1),
        ("mirror_start", dict(finish=0, node="b", pick=10, to_primary=1), 1),
        ("deliver", dict(link="serial", pick=1, src="a"), 1),
        ("topology", dict(link="serial", node="b", op="cut"), 1),
        ("deliver", dict(link="tcp", pick=0, src="a"), 1),
    ],
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_a_sequence_the_model_once_failed_on(name) -> None:
    machine = PairModel()
    for rule, arguments, repeat in REGRESSIONS[name]:
        for _ in range(repeat):
            getattr(machine, rule)(**arguments)
            machine.invariants_hold()
    machine.teardown()


def test_a_handover_larger_than_the_holders_table_goes_in_parts() -> None:
    # Found by `tandem torture --pair` (seed 1, 8 MiB, cut 827): a survivor that took
    # over from its HELD and then wrote alone names more regions than the new holder's
    # table holds. Its handover MARK was refused as "full" and sent again for ever: the
    # pair never left reconciling. It must go in parts, the mirror settling the rest.
    sim = PairSim(regions=64, fence_command=False)  # the lease is the fence

    def settle(steps: int, mirror: str | None = None) -> None:
        for _ in range(steps):
            sim.advance(0.05)
            sim.deliver_all()
            while sim.complete_write("a") or sim.complete_write("b"):
                pass
            if mirror is not None:
                node = sim.nodes[mirror]
                assert node.core is not None
                for region in sorted(node.core.dirty_regions())[:2]:
                    if sim.mirror_start(mirror, region):
                        sim.mirror_finish(mirror)
            sim.check()

    settle(20)
    for region in range(20):  # A's record at B: 20 regions
        sim.host_write("a", (region,))
        settle(2)
    assert len(sim.durable("b").held) == 20
    sim.crash("a")
    settle(120)  # B takes over once A's lease has run out
    b = sim.nodes["b"].core
    assert b is not None and b.role == "primary" and b.persisted_state.sole
    for region in range(30, 45):  # and writes 15 more alone
        sim.host_write("b", (region,))
        settle(1)
    assert len(b.dirty_regions()) == 35 > 24  # the holder's table: 24 entries
    sim.start("a")  # stale: hands over, becomes B's holder; B hands over 35 regions
    settle(400, mirror="b")
    b = sim.nodes["b"].core
    assert b is not None and not b.persisted_state.sole
    assert b.state is PeerState.CONNECTED
    assert not sim.differing()
