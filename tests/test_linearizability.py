"""Tests of the per-block linearizability checker (tests/linearizability.py)."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.linearizability import History, Op, Result, check, check_exact


def w(value: int, start: float, end: float | None, ok: bool | None = True, block: int = 0) -> Op:
    return Op.write(block, value, start, end, ok)


def r(value: int | None, start: float, end: float | None, block: int = 0) -> Op:
    return Op.read(block, value, start, end)


def both(ops: list[Op], initial: dict[int, int] | None = None) -> Result:
    """Run both checkers, insist that they blame the same reads, return the fast result."""
    fast = check(ops, initial)
    exact = check_exact(ops, initial)
    assert [a.op for a in fast.anomalies] == [a.op for a in exact.anomalies], (
        f"fast: {fast.summary()}\nexact: {exact.summary()}"
    )
    return fast


def blamed(result: Result) -> list[Op]:
    return [a.op for a in result.anomalies]


# --------------------------------------------------------------------------- examples


def test_sequential_history_is_ok() -> None:
    ops = [
        r(0, 0, 1),
        w(5, 2, 3),
        r(5, 4, 5),
        w(9, 6, 7),
        r(9, 8, 9),
        r(9, 10, 11),
    ]
    result = both(ops)
    assert result.ok, result.summary()
    assert (result.blocks_checked, result.ops_checked, result.ops_ignored) == (1, 6, 0)


def test_concurrent_writes_may_be_seen_in_either_order() -> None:
    # w5 and w9 overlap each other and every read: any order of the two is allowed.
    for first, second in [(5, 9), (9, 5)]:
        ops = [w(5, 0, 10), w(9, 1, 11), r(first, 2, 3), r(second, 4, 5), r(second, 12, 13)]
        assert both(ops).ok
    # A read overlapping a completed write may still see the old value, or the new one.
    assert both([w(5, 0, 1), w(9, 2, 6), r(5, 3, 4), r(9, 5, 7)]).ok
    assert both([w(5, 0, 1), w(9, 2, 6), r(9, 3, 4)]).ok


def test_touching_times_are_concurrent() -> None:
    # w9 ends exactly when the read starts: they are concurrent, so reading 5 is fine.
    assert both([w(5, 0, 1), w(9, 2, 3), r(5, 3, 4)]).ok
    assert not both([w(5, 0, 1), w(9, 2, 3), r(5, 3.5, 4)]).ok


def test_stale_read_is_detected() -> None:
    stale = r(5, 4, 5)
    ops = [w(5, 0, 1), w(9, 2, 3), stale, r(9, 6, 7)]
    result = both(ops)
    assert blamed(result) == [stale]
    (anomaly,) = result.anomalies
    assert anomaly.kind == "stale-read"
    assert anomaly.block == 0
    assert "write 9 [2, 3]" in anomaly.reason and "write 5 [0, 1]" in anomaly.reason


def test_stale_read_of_initial_contents_is_detected() -> None:
    stale = r(0, 2, 3)
    result = both([w(5, 0, 1), stale])
    assert blamed(result) == [stale]
    assert result.anomalies[0].kind == "stale-read"
    assert "initial contents" in result.anomalies[0].reason


def test_read_of_never_written_id_is_detected() -> None:
    bogus = r(7, 2, 3)
    result = both([w(5, 0, 1), bogus, r(5, 4, 5)])
    assert blamed(result) == [bogus]
    assert result.anomalies[0].kind == "never-written"
    assert "id 7, which was never written" in result.anomalies[0].reason


def test_ids_are_per_block() -> None:
    # Id 5 was written to block 1, not to block 0.
    result = both([w(5, 0, 1, block=1), r(5, 2, 3, block=0)])
    assert result.anomalous_blocks == {0}
    assert result.blocks_checked == 2


def test_read_before_its_write_is_detected() -> None:
    early = r(5, 0, 1)
    result = both([early, w(5, 2, 3)])
    assert blamed(result) == [early]
    assert result.anomalies[0].kind == "read-before-write"


def test_reads_going_backwards_are_detected() -> None:
    # w9 is still in flight, so neither read alone is stale; together they are impossible.
    later = r(5, 5, 6)
    result = both([w(5, 0, 1), w(9, 2, 10), r(9, 3, 4), later])
    assert blamed(result) == [later]  # the read that revealed it, not the read of 9
    (anomaly,) = result.anomalies
    assert anomaly.kind == "reads-backwards"
    assert "earlier read [3, 4]" in anomaly.reason


def test_overlapping_reads_may_disagree() -> None:
    # The reads overlap, so the read of 5 may be linearized before the read of 9.
    assert both([w(5, 0, 1), w(9, 2, 10), r(9, 3, 8), r(5, 4, 6)]).ok


@pytest.mark.parametrize("outcome", ["timeout", "failed", "indeterminate"])
def test_unacknowledged_write_may_appear_late_or_never(outcome: str) -> None:
    def lost(value: int, start: float) -> Op:
        if outcome == "timeout":
            return w(value, start, None)
        return w(value, start, start + 1, ok=False if outcome == "failed" else None)

    # Visible long after it was reported (even after its error), then stays.
    assert both([w(5, 0, 1), lost(9, 2), r(5, 10, 11), r(9, 20, 21), r(9, 22, 23)]).ok
    # Never visible at all.
    assert both([w(5, 0, 1), lost(9, 2), r(5, 10, 11), r(5, 20, 21)]).ok
    # Overwritten by a later acknowledged write.
    assert both([lost(9, 0), w(5, 10, 11), r(9, 5, 6), r(5, 12, 13)]).ok
    # Not before its start.
    assert not both([w(5, 0, 1), r(9, 1.5, 1.8), lost(9, 2)]).ok


def test_unacknowledged_write_visible_then_gone_is_detected() -> None:
    again = r(5, 30, 31)
    ops = [w(5, 0, 1), w(9, 2, None), r(5, 10, 11), r(9, 20, 21), again]
    result = both(ops)
    assert blamed(result) == [again]
    assert result.anomalies[0].kind == "reads-backwards"
    assert "never completed" in result.anomalies[0].reason


def test_failed_reads_are_ignored() -> None:
    ops = [
        w(5, 0, 1),
        w(9, 2, 3),
        r(None, 4, 5),  # failed
        r(None, 4, None),  # never completed
        Op("read", 0, 5, 4, 5, ok=False),  # stale value, but the read failed
        Op("read", 0, 77, 4, 5, ok=None),  # indeterminate
        Op("read", 0, 5, 4, None, ok=True),  # no completion time: timed out
        r(9, 6, 7),
    ]
    result = both(ops)
    assert result.ok, result.summary()
    assert (result.ops_checked, result.ops_ignored) == (3, 5)


def test_initial_values() -> None:
    initial = {3: 42}
    assert both([r(42, 0, 1, block=3), w(5, 2, 3, block=3), r(5, 4, 5, block=3)], initial).ok
    result = both([r(0, 0, 1, block=3)], initial)
    assert result.anomalies[0].kind == "never-written"
    # Blocks not named keep the default of 0.
    assert both([r(0, 0, 1, block=4)], initial).ok


def test_a_rejected_read_does_not_poison_later_reads() -> None:
    bad = r(5, 4, 5)
    result = both([w(5, 0, 1), w(9, 2, 3), bad, r(9, 6, 7), r(9, 8, 9)])
    assert blamed(result) == [bad]


def test_several_anomalies_across_blocks() -> None:
    ops = [
        w(5, 0, 1, block=1),
        w(9, 2, 3, block=1),
        r(5, 4, 5, block=1),
        r(8, 0, 1, block=2),
        w(1, 0, 1, block=3),
        r(1, 2, 3, block=3),
    ]
    result = check(ops)
    assert result.anomalous_blocks == {1, 2}
    assert [a.kind for a in result.anomalies] == ["stale-read", "never-written"]
    text = result.summary()
    assert "3 blocks, 6 ops checked" in text and "2 anomalies" in text


def test_malformed_histories_are_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        check([w(5, 0, 1), w(5, 2, 3)])
    with pytest.raises(ValueError, match="initial"):
        check([w(0, 0, 1)])
    with pytest.raises(ValueError, match="end time"):
        check([w(5, 2, 1)])
    with pytest.raises(ValueError, match="needs the id"):
        check([Op("write", 0, None, 0, 1, True)])
    with pytest.raises(ValueError, match="more than 3"):
        check_exact([w(1, 0, 1), w(2, 0, 1), r(1, 2, 3), r(2, 2, 3)], max_ops=3)


# --------------------------------------------------------------------------- History


def test_history_records_multi_block_operations() -> None:
    h = History()
    t = h.invoke_write(3, 7, 0.0, nblocks=4)
    h.complete(t, 1.0, True)
    t = h.invoke_read(4, 2.0, nblocks=2)
    h.complete_read(t, 3.0, [7, 7])
    t = h.invoke_read(6, 2.5)
    h.complete_read(t, 3.5, 7)
    t = h.invoke_read(3, 4.0)
    h.complete_read(t, 5.0, None)  # failed
    h.invoke_write(5, 8, 6.0)  # still in flight: indeterminate
    h.invoke_read(5, 6.0)  # still in flight: ignored
    ops = h.ops()
    assert [o for o in ops if o.kind == "write" and o.value == 7] == [
        Op("write", b, 7, 0.0, 1.0, True) for b in range(3, 7)
    ]
    assert Op("read", 5, 7, 2.0, 3.0, True) in ops
    assert Op("write", 5, 8, 6.0, None, None) in ops
    result = check(ops)
    assert result.ok, result.summary()
    assert (result.blocks_checked, result.ops_checked, result.ops_ignored) == (4, 8, 2)


def test_history_rejects_misuse() -> None:
    h = History()
    t = h.invoke_write(0, 1, 0.0)
    with pytest.raises(TypeError):
        h.complete_read(t, 1.0, 1)
    h.complete(t, 1.0, True)
    with pytest.raises(ValueError, match="already"):
        h.complete(t, 2.0, True)
    t = h.invoke_read(0, 5.0, nblocks=2)
    with pytest.raises(ValueError, match="2 blocks"):
        h.complete_read(t, 6.0, 1)
    with pytest.raises(ValueError, match="before its start"):
        h.complete_read(t, 4.0, [1, 1])


def run_hosts(stale_host: bool) -> Result:
    """Two asyncio 'hosts' share an in-memory disk, recording into one History.  With
    ``stale_host`` the second host reads through a cache that is never invalidated."""
    ticks = itertools.count()
    h = History(clock=lambda: float(next(ticks)))
    disk: dict[int, int] = {}
    ids = itertools.count(1)

    async def host(seed: int, cached: bool) -> None:
        rng = random.Random(seed)
        cache: dict[int, int] = {}
        for _ in range(60):
            block, n = rng.randrange(6), rng.randint(1, 3)
            blocks = range(block, block + n)
            if rng.random() < 0.4:
                value = next(ids)
                token = h.invoke_write(block, value, None, nblocks=n)
                await asyncio.sleep(0)
                for b in blocks:  # the write takes effect atomically while in flight
                    disk[b] = value
                await asyncio.sleep(0)
                h.complete(token, None, True)
            else:
                token = h.invoke_read(block, None, nblocks=n)
                await asyncio.sleep(0)
                if cached:
                    values = [cache.setdefault(b, disk.get(b, 0)) for b in blocks]
                else:
                    values = [disk.get(b, 0) for b in blocks]
                await asyncio.sleep(0)
                h.complete_read(token, None, values)

    async def main() -> None:
        await asyncio.gather(host(1, False), host(2, stale_host))

    asyncio.run(main())
    return check(h.ops())


def test_history_from_concurrent_asyncio_hosts() -> None:
    good = run_hosts(stale_host=False)
    assert good.ok, good.summary()
    assert good.blocks_checked == 8
    bad = run_hosts(stale_host=True)
    assert not bad.ok
    assert {a.kind for a in bad.anomalies} <= {"stale-read", "reads-backwards"}


def test_large_correct_history_is_fast() -> None:
    rng = random.Random(7)
    ops: list[Op] = []
    for block in range(4):
        ops += simulate_register(rng, block, 3000)
    result = check(ops)  # O(n log n): well under a second
    assert result.ok, result.summary()
    assert result.blocks_checked == 4


def simulate_register(rng: random.Random, block: int, n: int) -> list[Op]:
    """A correct register: each op takes effect at a random instant in its interval."""
    spans = []
    for _ in range(n):
        start = rng.uniform(0, n)
        spans.append((start, start + rng.expovariate(0.5)))
    effects = sorted((rng.uniform(s, e), i) for i, (s, e) in enumerate(spans))
    value, out = 0, []
    for _, i in effects:
        s, e = spans[i]
        if rng.random() < 0.3:
            value = i + 1
            out.append(Op.write(block, value, s, e))
        else:
            out.append(Op.read(block, value, s, e))
    return out


# --------------------------------------------------------------------------- properties

# Small integer times make ties (ops that only touch) common, which is where the
# precedence rule is easiest to get wrong.
times = st.integers(0, 12)
durations = st.integers(0, 5)


@st.composite
def correct_block(draw: st.DrawFn, block: int, max_ops: int = 9) -> list[Op]:
    """A history of one block produced by simulating an atomic register: every operation
    takes effect at some instant of its interval (an unacknowledged write: at any instant
    after its start, or never)."""
    n = draw(st.integers(1, max_ops))
    effects: list[tuple[float, int, int]] = []
    specs: list[tuple[str, float, float, str]] = []
    for i in range(n):
        kind = draw(st.sampled_from(["write", "read"]))
        start: float = draw(times)
        end: float = start + draw(durations)
        if kind == "write":
            outcome = draw(st.sampled_from(["ok", "ok", "failed", "indeterminate", "timeout"]))
        else:
            outcome = draw(st.sampled_from(["ok", "ok", "ok", "failed"]))
        at: float | None
        if kind == "write" and outcome != "ok":
            later = draw(st.none() | st.integers(0, 30))
            at = None if later is None else start + later / 2
        else:
            at = start + (end - start) * draw(st.integers(0, 4)) / 4
        if at is not None:
            effects.append((at, draw(st.integers(0, 3)), i))  # random order among ties
        specs.append((kind, start, end, outcome))
    seen: dict[int, int | None] = {i: None for i in range(n)}
    value = 0
    for _, _, i in sorted(effects):
        if specs[i][0] == "write":
            value = 100 * block + i + 1
        else:
            seen[i] = value
    ops = []
    for i, (kind, start, end, outcome) in enumerate(specs):
        if kind == "write":
            ok = {"ok": True, "failed": False}.get(outcome)
            ops.append(Op("write", block, 100 * block + i + 1, start, end, ok))
        elif outcome == "ok":
            ops.append(Op.read(block, seen[i], start, end))
        else:
            ops.append(Op("read", block, None, start, end, False))
    return ops


@st.composite
def correct_history(draw: st.DrawFn) -> list[Op]:
    ops = draw(correct_block(0)) + draw(correct_block(1))
    return draw(st.permutations(ops))


@st.composite
def arbitrary_block(draw: st.DrawFn, max_ops: int = 9) -> list[Op]:
    """Any history at all: random intervals, reads returning random ids."""
    n = draw(st.integers(1, max_ops))
    ids = [0]  # the initial id
    ops = []
    for i in range(n):
        start = draw(times)
        end: float | None = start + draw(durations)
        if draw(st.sampled_from(["write", "read"])) == "write":
            ok = draw(st.sampled_from([True, True, False, None]))
            if ok is None and draw(st.booleans()):
                end = None
            ops.append(Op("write", 0, i + 1, start, end, ok))
            ids.append(i + 1)
        else:
            # A never-written id rarely: it is an easy anomaly that would hide the others.
            value = 99 if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(ids))
            ops.append(Op.read(0, value, start, end))
    return ops


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(correct_history())
def test_simulated_register_is_linearizable(ops: list[Op]) -> None:
    fast, exact = check(ops), check_exact(ops)
    assert fast.ok, fast.summary()
    assert exact.ok, exact.summary()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(correct_block(0), st.data())
def test_checkers_agree_on_mutated_reads(ops: list[Op], data: st.DataObject) -> None:
    reads = [i for i, op in enumerate(ops) if op.kind == "read" and op.ok]
    if reads:
        i = data.draw(st.sampled_from(reads))
        ids = [0, 99] + [op.value for op in ops if op.kind == "write" and op.value is not None]
        ops[i] = Op.read(0, data.draw(st.sampled_from(ids)), ops[i].start, ops[i].end)
    both(ops)  # asserts that both blame exactly the same reads


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_block())
def test_checkers_agree_on_arbitrary_histories(ops: list[Op]) -> None:
    both(ops)


@settings(max_examples=100, deadline=None)
@given(arbitrary_block(), st.sampled_from([0, 1, 7]))
def test_checkers_agree_with_initial_value(ops: list[Op], initial: int) -> None:
    # Drop a write of the initial id: that would be a malformed history.
    ops = [op for op in ops if not (op.kind == "write" and op.value == initial)]
    both(ops, {0: initial})
