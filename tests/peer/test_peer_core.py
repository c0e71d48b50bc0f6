"""The pair core in chosen situations: the write path, clears, refused frames, links,
leases and takeovers, a returning stale node, split brain, cold start, back-pressure.

Each test drives two cores through pair_sim.PairSim (FRAM writes complete at once) and
asserts on what they do: the actions, the frames on the wire, what the FRAMs hold.
"""

from __future__ import annotations

import pytest

from firmware.peer import events as ev
from firmware.peer import frames as f
from firmware.peer.config import PeerState
from firmware.peer.core import PairCore
from firmware.peer.held import HELD, Entry, PairFram, PairState, TableChange, required_bytes
from tests.peer.pair_sim import KEY, LINKS, NODES, SERIAL, TCP, PairSim, RamFram


def connected(**config: object) -> PairSim:
    sim = PairSim(**config)
    settle(sim, 10)
    assert state(sim, "a") is PeerState.CONNECTED and state(sim, "b") is PeerState.CONNECTED
    return sim


def settle(sim: PairSim, rounds: int = 5, dt: float = 0.1) -> None:
    for _ in range(rounds):
        sim.deliver_all()
        sim.advance(dt)
        sim.check()


def state(sim: PairSim, node: str) -> PeerState:
    core = sim.nodes[node].core
    assert core is not None
    return core.state


def core(sim: PairSim, node: str) -> PairCore:
    c = sim.nodes[node].core
    assert c is not None
    return c


def in_flight(sim: PairSim, link: str, src: str, kind: type) -> list[f.Frame]:
    return [fr for fr in (f.decode(KEY, p) for p in sim.net[(link, src)])
            if isinstance(fr.message, kind)]


def drop_first(sim: PairSim, link: str, src: str, kind: type) -> None:
    queue = sim.net[(link, src)]
    for i, payload in enumerate(queue):
        if isinstance(f.decode(KEY, payload).message, kind):
            del queue[i]
            return
    raise AssertionError(f"no {kind.__name__} in flight")


def partition(sim: PairSim, *cuts: tuple[str, str]) -> None:
    sim.cut.update(cuts or [(lk, n) for lk in LINKS for n in NODES])


def proceeded(actions: list[ev.Action]) -> list[int]:
    return [a.write for a in actions if isinstance(a, ev.WriteProceed)]


# --- the write path -------------------------------------------------------------------------


def test_a_miss_costs_one_batch_with_the_predicted_regions_and_a_hit_costs_none() -> None:
    sim = connected()
    a = core(sim, "a")
    sent_before = dict(a.counters.sent)
    w = sim.host_write("a", (1, 2), (3, 4))
    assert w in sim.nodes["a"].waiting and not sim.nodes["a"].in_flight
    marks = in_flight(sim, TCP, "a", f.Mark)
    assert len(marks) == 1
    assert marks[0].message.runs == ((1, 2, f.KIND_WRITE), (3, 2, f.KIND_PREDICTED))
    sim.deliver_all()
    assert list(sim.nodes["a"].in_flight) == [w]
    assert core(sim, "b").held_regions() == {1, 2, 3, 4} == a.local_copy()
    sim.complete_write("a")
    hit = sim.host_write("a", (3,))
    assert list(sim.nodes["a"].in_flight) == [hit]  # at once
    sent = {k: v - sent_before.get(k, 0) for k, v in a.counters.sent.items()}
    assert sent.get("MARK") == 1 and a.counters.hits == 1 and a.counters.misses == 1


def test_no_write_reaches_d_before_the_mark_ack_even_when_frames_are_lost() -> None:
    sim = connected()
    w = sim.host_write("a", (5,))
    drop_first(sim, TCP, "a", f.Mark)  # the MARK is lost
    settle(sim, 3)
    assert w not in sim.nodes["a"].in_flight
    sim.advance(0.6)  # retransmitted after retransmit_s
    assert in_flight(sim, TCP, "a", f.Mark) and core(sim, "a").counters.retried >= 1
    sim.deliver(TCP, "a", -1, keep=True)  # the retransmission, twice (a duplicate)
    while sim.deliver(TCP, "a"):
        pass
    assert core(sim, "b").held_regions() == {5}
    drop_first(sim, TCP, "b", f.MarkAck)  # the MARK_ACK is lost as well
    assert w not in sim.nodes["a"].in_flight
    sim.advance(0.6)
    settle(sim, 2)
    assert w in sim.nodes["a"].in_flight


def test_writes_wait_for_room_in_the_holders_record_and_nothing_is_dropped() -> None:
    sim = connected()
    a = core(sim, "a")
    capacity = core(sim, "b").status().counters  # noqa: F841  # (the record is 24 slots)
    writes = [sim.host_write("a", (r,)) for r in range(30)]
    settle(sim, 3)
    issued = set(sim.nodes["a"].in_flight)
    assert 0 < len(issued) < 30 and len(core(sim, "b").held_regions()) <= 23
    waiting = [w for w in writes if w not in issued]
    while sim.complete_write("a"):
        pass
    for r in sorted(a.dirty_regions()):
        assert sim.mirror_start("a", r)
        sim.mirror_finish("a")
    sim.handle("a", ev.FlushClears())
    settle(sim, 5)
    assert set(waiting) <= set(sim.nodes["a"].in_flight) | issued


# --- clears ---------------------------------------------------------------------------------


def test_clears_are_batched_and_lazy() -> None:
    sim = connected()
    sim.host_write("a", (1, 2, 3))
    settle(sim, 1)
    sim.complete_write("a")
    a = core(sim, "a")
    for r in (1, 2, 3):
        assert sim.mirror_start("a", r)
        sim.mirror_finish("a")
    assert a.local_copy() == frozenset()  # gone from LC before the holder is asked
    sent = core(sim, "a").counters.sent.get("CLEAR", 0)
    sim.advance(0.5)
    assert core(sim, "a").counters.sent.get("CLEAR", 0) == sent  # lazy: waits a while
    sim.advance(0.6)
    clears = [fr for lk in LINKS for fr in in_flight(sim, lk, "a", f.Clear)]
    assert len(clears) == 1 and [r for r, _ in clears[0].message.entries] == [1, 2, 3]
    settle(sim, 2)
    assert not core(sim, "b").held_regions() and not a.intent_regions()


def test_compare_and_clear_keeps_a_write_that_raced_the_clear() -> None:
    sim = connected()
    sim.host_write("a", (7,))
    settle(sim, 1)
    sim.complete_write("a")
    assert sim.mirror_start("a", 7)
    sim.mirror_finish("a")
    sim.handle("a", ev.FlushClears())
    clear = in_flight(sim, TCP, "a", f.Clear)[0].message
    # The host writes 7 again before the clear arrives: a miss, a new MARK.
    w = sim.host_write("a", (7,))
    mark = in_flight(sim, TCP, "a", f.Mark)[-1].message
    assert mark.gen > dict(clear.entries)[7]
    # The MARK overtakes the CLEAR (the serial link, a retransmission, reordering).
    queue = sim.net[(TCP, "a")]
    queue.sort(key=lambda p: not isinstance(f.decode(KEY, p).message, f.Mark))
    settle(sim, 3)
    assert 7 in core(sim, "b").held_regions() and 7 in core(sim, "a").local_copy()
    assert w in sim.nodes["a"].in_flight
    assert 7 in sim.durable("b").held


def test_a_write_during_the_copy_keeps_the_region() -> None:
    sim = connected()
    sim.host_write("a", (4,))
    settle(sim, 1)
    sim.complete_write("a")
    assert sim.mirror_start("a", 4)  # the copy reads D now
    sim.host_write("a", (4,))  # a hit: D changes under the copy
    sim.complete_write("a")
    sim.mirror_finish("a")  # lands the old bytes on M
    assert 4 in core(sim, "a").local_copy() and sim.differing() == {4}
    sim.check()


# --- what the core refuses ------------------------------------------------------------------


def holder_view(sim: PairSim) -> tuple:
    b = core(sim, "b")
    return (b.held_regions(), b.persisted_state, b.state, b.epoch)


def inject(sim: PairSim, payload: bytes) -> list[ev.Action]:
    return sim.handle("b", ev.FrameIn(TCP, payload))


@pytest.mark.parametrize("how", ["bad-mac", "replay", "stale-epoch", "unknown-type",
                                 "old-boot", "from-itself"])
def test_refused_frames_change_nothing_at_the_holder(how) -> None:
    sim = connected()
    sim.host_write("a", (1,))
    mark_payload = sim.net[(TCP, "a")][-1]
    sim.deliver_all()
    before = holder_view(sim)
    boot = core(sim, "a").persisted_state.boot
    if how == "bad-mac":
        payload = bytearray(mark_payload)
        payload[-1] ^= 1
        actions = inject(sim, bytes(payload))
    elif how == "replay":
        actions = inject(sim, mark_payload)
    elif how == "stale-epoch":
        sealer = f.FrameSealer(KEY, node="a", boot=boot)
        for _ in range(10_000):
            sealer.seal(f.MarkAck(0), epoch=0, ack=0, peer_boot=0)  # a fresh sq
        payload = sealer.seal(f.Mark(99, 1 << 62, ((9, 1, 0),)), epoch=0, ack=0, peer_boot=0)[1]
        refused = core(sim, "b").counters.refused.get("stale-epoch", 0)
        actions = inject(sim, payload)
        assert core(sim, "b").counters.refused["stale-epoch"] == refused + 1
    elif how == "unknown-type":
        import cbor2

        body = cbor2.dumps({"v": 1, "t": 77, "src": "a", "boot": boot, "ep": 1,
                            "sq": 1 << 40, "ack": 0, "pb": 0})
        actions = inject(sim, f.tag(KEY, body) + body)
        naks = [a.frame.message for a in actions if isinstance(a, ev.Send)]
        assert any(isinstance(m, f.Nak) and m.code == "unknown-type" for m in naks)
    elif how == "old-boot":
        payload = f.FrameSealer(KEY, node="a", boot=boot - 1).seal(
            f.Mark(1, 1 << 62, ((9, 1, 0),)), epoch=1, ack=0, peer_boot=0)[1]
        actions = inject(sim, payload)
    else:
        payload = f.FrameSealer(KEY, node="b", boot=1).seal(
            f.Mark(1, 1 << 62, ((9, 1, 0),)), epoch=1, ack=0, peer_boot=0)[1]
        actions = inject(sim, payload)
    assert not [a for a in actions if isinstance(a, ev.Persist)]
    assert holder_view(sim) == before


# --- links and peer loss --------------------------------------------------------------------


@pytest.mark.parametrize("down", [TCP, SERIAL])
def test_one_link_down_is_degraded_writes_continue_and_nobody_takes_over(down) -> None:
    sim = connected()
    partition(sim, (down, "a"), (down, "b"))
    settle(sim, 40, 0.2)
    assert state(sim, "a") is PeerState.DEGRADED_LINK
    assert state(sim, "b") is PeerState.DEGRADED_LINK
    w = sim.host_write("a", (3,))
    settle(sim, 2)
    assert w in sim.nodes["a"].in_flight and core(sim, "b").role == f.RECORD_HOLDER
    assert any(r.kind == "link-degraded" for r in sim.nodes["a"].reports)
    status = core(sim, "a").status()
    assert {lk.name: lk.state for lk in status.links}[down] == "down"


def run_until(sim: PairSim, done, seconds: float, dt: float = 0.1) -> float:
    start = sim.now
    while sim.now - start < seconds:
        sim.deliver_all()
        sim.advance(dt)
        sim.check()
        if done():
            return sim.now
    raise AssertionError("did not happen in time")


def test_both_links_down_the_primary_freezes_before_the_holder_takes_over() -> None:
    sim = connected(fence_command=False)
    sim.host_write("a", (2,))
    settle(sim, 1)
    partition(sim)
    frozen_at = run_until(sim, lambda: core(sim, "a").frozen, 10)
    took_over_at = run_until(sim, lambda: core(sim, "b").role == f.PRIMARY, 10)
    assert took_over_at - frozen_at >= core(sim, "b").config.takeover_margin_s
    b = core(sim, "b")
    assert b.state is PeerState.SOLE_OWNER and b.epoch == 2
    took_over = sim.nodes["b"].took_over[0]
    assert took_over.resync == {2} and took_over.method == "lease"
    w = sim.host_write("b", (9,))
    assert w in sim.nodes["b"].in_flight  # the sole owner's own FRAM covers it
    assert state(sim, "a") is PeerState.PEER_LOST_FROZEN
    assert not proceeded(sim.handle("a", ev.HostWrite(999, (2,))))


def test_a_paused_primary_does_not_write_once_its_lease_has_run_out() -> None:
    sim = connected(fence_command=False)
    a_node = sim.nodes["a"]
    sim.host_write("a", (1,))
    settle(sim, 1)
    # SIGSTOP: a gets no events; b hears nothing and takes over after lease + margin.
    paused, a_node.core = a_node.core, None
    lease_end = paused.status().lease_remaining_s + sim.now
    sim.cut.update({(lk, "a") for lk in LINKS})
    took_over_at = run_until(sim, lambda: core(sim, "b").role == f.PRIMARY, 10)
    assert took_over_at > lease_end
    a_node.core = paused  # SIGCONT: the first thing it sees is the time
    actions = sim.handle("a", ev.HostWrite(500, (1,)))
    assert not proceeded(actions) and core(sim, "a").frozen
    sim.cut.clear()
    settle(sim, 10)
    assert core(sim, "a").role == f.RECORD_HOLDER and 1 in core(sim, "a").held_regions()


def test_loss_in_one_direction_never_gives_two_owners() -> None:
    # b -> a lost: a gets no lease and freezes; b hears a, so it does not take over.
    sim = connected()
    partition(sim, (TCP, "b"), (SERIAL, "b"))
    settle(sim, 60, 0.2)
    assert core(sim, "a").frozen and core(sim, "b").role == f.RECORD_HOLDER
    assert {lk.state for lk in core(sim, "b").status().links} == {"one-way"}
    # a -> b lost: b takes over after the lease; a, frozen, learns it is stale.
    sim = connected(fence_command=False)
    partition(sim, (TCP, "a"), (SERIAL, "a"))
    run_until(sim, lambda: core(sim, "b").role == f.PRIMARY, 10)
    settle(sim, 5)
    assert core(sim, "a").frozen
    assert not proceeded(sim.handle("a", ev.HostWrite(999, (1,))))


def test_without_a_fence_the_holder_stays_frozen_and_says_so() -> None:
    sim = connected(fence_command=False, trust_lease=False)
    partition(sim)
    settle(sim, 100, 0.2)
    b = core(sim, "b")
    assert b.state is PeerState.PEER_LOST_FROZEN and b.role == f.RECORD_HOLDER
    assert any(r.kind == "no-fence" for r in sim.nodes["b"].reports)
    sim.crash("a")
    sim.handle("b", ev.TakeoverCommand(force=True))  # the operator knows a is down
    assert core(sim, "b").state is PeerState.SOLE_OWNER


def test_a_failed_fence_command_keeps_the_holder_frozen_a_good_one_takes_over() -> None:
    sim = connected(fence_command=True, trust_lease=False)
    partition(sim)
    run_until(sim, lambda: sim.nodes["b"].fence_asked, 10)
    assert core(sim, "b").state is PeerState.FENCING
    sim.fence("b", ok=False)
    settle(sim, 30, 0.2)
    assert core(sim, "b").role == f.RECORD_HOLDER
    assert any(r.kind == "fence-failed" for r in sim.nodes["b"].reports)
    sim.handle("b", ev.TakeoverCommand())  # the operator tries the fence again
    assert sim.nodes["b"].fence_asked
    sim.fence("b", ok=True)  # powers a off
    assert core(sim, "b").state is PeerState.SOLE_OWNER
    assert sim.nodes["b"].took_over[0].method == "command"


# --- epochs ---------------------------------------------------------------------------------


def test_a_returning_node_with_a_lower_epoch_hands_over_and_holds_the_new_record() -> None:
    sim = connected(fence_command=False)
    sim.host_write("a", (1, 2))
    settle(sim, 1)
    sim.crash("a")
    run_until(sim, lambda: core(sim, "b").role == f.PRIMARY, 10)
    sim.host_write("b", (6,))
    sim.start("a")  # a comes back at epoch 1
    a = core(sim, "a")
    assert not proceeded(sim.handle("a", ev.HostWrite(900, (1,))))
    run_until(sim, lambda: a.role == f.RECORD_HOLDER and state(sim, "b") is PeerState.CONNECTED,
              20)
    assert a.epoch == core(sim, "b").epoch == 2
    assert {1, 2, 6} <= a.held_regions()  # b's record, in a's FRAM
    assert sim.durable("a").state.held_complete


def test_a_split_brain_is_refused_reported_and_resolved_by_a_rejoin() -> None:
    sim = connected()
    partition(sim)
    sim.advance(4.0)
    sim.note_split_brain()
    for node in NODES:
        sim.handle(node, ev.TakeoverCommand(force=True))
    sim.host_write("a", (1,))
    sim.host_write("b", (2,))
    assert sim.nodes["a"].in_flight and sim.nodes["b"].in_flight  # the operator's doing
    sim.cut.clear()
    settle(sim, 10)
    for node in NODES:
        assert state(sim, node) is PeerState.SPLIT_BRAIN and core(sim, node).frozen
        assert any(r.kind == "split-brain" for r in sim.nodes[node].reports)
        assert not proceeded(sim.handle(node, ev.HostWrite(800, (3,))))
    sim.handle("b", ev.RejoinCommand())
    run_until(sim, lambda: core(sim, "b").role == f.RECORD_HOLDER, 20)
    a = core(sim, "a")
    assert a.epoch == 3 and core(sim, "b").epoch == 3
    assert {1, 2} <= a.dirty_regions()  # b's region is a's to copy now
    # Both copied to M unaware of each other: only a full copy makes M right again.
    assert a.persisted_state.full_resync and state(sim, "a") is PeerState.RECONCILING
    assert not sim.durable("b").state.held_complete  # so b may not take over from a yet
    while sim.complete_write("a") or sim.complete_write("b"):
        pass
    run_until(sim, lambda: not a.frozen, 5)
    assert sim.full_resync("a")
    run_until(sim, lambda: state(sim, "a") is PeerState.CONNECTED
              and state(sim, "b") is PeerState.CONNECTED, 20)
    settle(sim, 3)  # a's next heartbeat says it is covered
    assert sim.durable("b").state.held_complete


def test_rejoin_is_refused_when_there_is_no_split_brain() -> None:
    sim = connected()
    actions = sim.handle("b", ev.RejoinCommand())
    assert any(isinstance(a, ev.Report) and a.kind == "refused" for a in actions)


def test_cold_start_waits_for_the_peer_or_the_operator() -> None:
    sim = PairSim()
    sim.crash("a")  # only b comes up: a never said a word
    for link in LINKS:
        sim.net[(link, "a")].clear()
    settle(sim, 100, 0.3)
    assert state(sim, "b") is PeerState.CONNECTING and core(sim, "b").role == f.RECORD_HOLDER
    actions = sim.handle("b", ev.TakeoverCommand())
    assert any(isinstance(a, ev.Report) and a.kind == "refused" for a in actions)
    sim.handle("b", ev.TakeoverCommand(force=True))
    assert state(sim, "b") is PeerState.SOLE_OWNER
    assert sim.nodes["b"].took_over[0].full_resync  # nothing says its record is complete


def test_a_takeover_is_refused_while_the_peer_is_heard() -> None:
    sim = connected()
    for force in (False, True):
        actions = sim.handle("b", ev.TakeoverCommand(force=force))
        assert any(isinstance(a, ev.Report) and a.kind == "refused" for a in actions)
    assert core(sim, "b").role == f.RECORD_HOLDER


def test_fram_of_another_pair_is_refused() -> None:
    nvram = RamFram(required_bytes(8))
    PairFram(nvram).format(PairState("x", "y", f.PRIMARY), 8)
    sim = PairSim()
    with pytest.raises(ValueError, match="belongs to"):
        PairCore(sim.nodes["a"].config, PairFram(nvram).open_boot(), now=0.0)


def test_a_damaged_record_means_a_full_resync() -> None:
    from firmware.peer.held import TABLES_OFFSET

    nvram = RamFram(required_bytes(8))
    pair = PairFram(nvram)
    pair.format(PairState("b", "a", f.RECORD_HOLDER, held_complete=True), 8)
    pair.apply(TableChange(HELD, (Entry(1, 1, 0),)))
    nvram.data[TABLES_OFFSET + 2] ^= 1  # a bit flip
    sim = PairSim()
    b = PairCore(sim.nodes["b"].config, PairFram(nvram).open_boot(), now=0.0)
    actions = b.handle(0.0, ev.Tick())
    persisted = [a for a in actions if isinstance(a, ev.Persist)]
    assert persisted and persisted[0].changes[-1].state.full_resync  # type: ignore[union-attr]


# --- the status the console shows -----------------------------------------------------------


def test_status_counts_messages_and_measures_links() -> None:
    sim = connected()
    sim.host_write("a", (1,))
    settle(sim, 3)
    status = core(sim, "a").status()
    assert status.state == "connected" and status.role == f.PRIMARY and status.epoch == 1
    assert status.local_copy_regions == 1 and status.intent_regions == 1
    assert core(sim, "b").status().held_regions == 1
    assert status.counters.marks_acked == 1 and status.counters.sent["MARK"] == 1
    assert [lk.name for lk in status.links] == [TCP, SERIAL]
    assert all(lk.state == "up" and lk.rtt_ms is not None and lk.last_heartbeat is not None
               for lk in status.links)
    assert status.lease_remaining_s > 0 and not status.frozen
    shown = status.as_dict()
    for key in ("state", "epoch", "role", "links", "held_regions", "local_copy_regions"):
        assert key in shown
    assert {"url", "state", "rtt_ms"} <= set(shown["links"][0])
    import json

    json.dumps(shown)  # what the console prints
