"""Per-block linearizability checking for tests in which several hosts share a virtual disk.

Two hosts write and read the same disk through two appliances at once.  Every 4 KiB block
that a test writes carries a payload id that is unique per block (id 0, or the block's given
initial id, stands for "never written"), so reading a block back tells which write, if any,
the reader saw.  A test records a history of operations (``Op``, or the ``History`` recorder
for concurrent asyncio or threaded code) and ``check`` decides, block by block, whether that
history could have come from a single atomic read/write register.

Model
-----
* Each block is an independent register (linearizability is compositional, so checking the
  blocks one by one is exact).  Its initial value is 0 unless ``initial`` says otherwise.
* Operation A *precedes* B when ``A.end < B.start`` (strictly: operations whose times only
  touch are concurrent).  All times must come from one clock.
* An acknowledged write (``ok is True`` with an end time) took effect at one instant within
  ``[start, end]``.
* A write that failed (``ok is False``), is indeterminate (``ok is None``) or never completed
  (``end is None``) may take effect at any instant after its start -- possibly after its
  error was reported, as a retried or replayed request might -- or never.
* A read that failed, is indeterminate or never completed constrains nothing and is ignored.
  An acknowledged read returned the value of the last write linearized before it.
* Ids are unique per block: writing one id twice to a block, or writing the block's initial
  id, is a malformed history (``ValueError``), not an anomaly.  A block whose contents decode
  to no payload at all should be recorded with an id that is never written (say -1): the
  checker then reports it as "never written".

Fast algorithm (``check``), O(n log n) per block
------------------------------------------------
Because ids are unique, each read names the write it saw.  Group the write of id v together
with the reads that returned v into the *cluster* of v; the initial contents form a cluster
whose write is a virtual one that precedes everything.  In any linearization a cluster is a
contiguous run (its write, then its reads, before the next write), so if some operation of
cluster X precedes some operation of cluster Y, all of X is linearized before all of Y.  An
anomaly is therefore any of:

1. a read of an id that was never written to the block ("never written");
2. a read that completed before the write of its id was invoked ("read before write");
3. two clusters that must each come before the other: some operation of Y precedes some
   operation of X, and some operation of X precedes some operation of Y.  With
   ``f(C)`` = earliest completion and ``s(C)`` = latest invocation among C's operations this
   is ``f(Y) < s(X) and f(X) < s(Y)`` -- the "stale read" and "reads went backwards" cases.

For a register whose writes are unique, these conditions are also sufficient: a history
without them is linearizable.  That is the "zone" characterisation of Gibbons and Korach
(Testing Shared Memories, 1997), restated by Golab, Li and Shah (PODC 2011) as "no two
forward zones overlap and no backward zone lies inside a forward zone".  Condition 3
written with strict inequalities covers both clauses and handles equal time stamps.  The
tests cross-check this against the exhaustive search of ``check_exact`` on random small
histories.

Indeterminate writes: one that no read returned is dropped.  It may never have taken
effect, and dropping an unread write never removes a linearization.  One that some read
returned did take effect; it joins its cluster with an end time of +infinity, so it
precedes nothing.

Which read to blame: conditions 1-3 decide whether a block is linearizable, but an
inconsistency between two reads could be pinned on either of them.  ``check`` blames the
read that *revealed* it.  It goes through the acknowledged reads in order of completion and
accepts each one that is consistent with all the writes and the reads accepted before it.
A read that is not consistent is reported, with a witness, and left out of what follows.
So a block is reported iff it is not linearizable, and in "9 was seen, then 5 again" the
read of 5 is blamed, not the read of 9.  Adding read r to cluster X can only create a
type-3 conflict in which r completes the cycle: some operation of another cluster Y
completed before r started, and Y must come after X.  A Fenwick tree over cluster
completion times answers "which other cluster has f(Y) < r.start and the largest s(Y)?" in
O(log n).  Clusters only grow, so f only falls and s only rises.  An outdated entry of a
cluster is therefore dominated by its current state and can stay in the tree.

Exact algorithm (``check_exact``), exponential, for at most ``max_ops`` ops per block
-------------------------------------------------------------------------------------
A Wing-Gong / Lowe style backtracking search: repeatedly linearize an operation that no
remaining operation precedes (a read only if it returns the current value), with memoised
(set of linearized operations, current value) states.  Indeterminate writes are optional
and precede nothing.  It blames reads by the same greedy rule, so on every history both
checkers must report exactly the same reads -- which is what the property tests assert.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Anomaly",
    "AnomalyKind",
    "History",
    "Op",
    "OpKind",
    "Result",
    "Token",
    "check",
    "check_exact",
]

OpKind = Literal["write", "read"]
AnomalyKind = Literal[
    "never-written",  # a read returned an id nobody wrote to that block
    "read-before-write",  # a read completed before the write of its id was invoked
    "stale-read",  # a newer write had completed before the read started
    "reads-backwards",  # an earlier read already returned a newer id
    "not-linearizable",  # check_exact: no linearization admits this read
]

_INF = math.inf


@dataclass(frozen=True)
class Op:
    """One operation on one block, as the test observed it.

    ``value``: for a write the id written; for a read the id read back, or None if the read
    failed.  ``end`` None: the operation never completed (timed out, host crashed).
    ``ok``: True acknowledged, False failed with an error, None indeterminate.
    """

    kind: OpKind
    block: int
    value: int | None
    start: float
    end: float | None = None
    ok: bool | None = None

    @classmethod
    def write(
        cls, block: int, value: int, start: float, end: float | None, ok: bool | None = True
    ) -> Op:
        """A write; by default acknowledged (``ok=True``) if it has an end time."""
        return cls("write", block, value, start, end, ok if end is not None else None)

    @classmethod
    def read(cls, block: int, value: int | None, start: float, end: float | None) -> Op:
        """A read that returned ``value`` (None: it failed)."""
        return cls("read", block, value, start, end, value is not None and end is not None)

    @property
    def definite(self) -> bool:
        """Whether this operation certainly took effect within ``[start, end]``."""
        return self.ok is True and self.end is not None and self.value is not None


@dataclass(frozen=True)
class Anomaly:
    """One read that no linearization of the block's history can explain."""

    block: int
    op: Op
    kind: AnomalyKind
    reason: str

    def __str__(self) -> str:
        return f"block {self.block}: {self.kind}: {self.reason}"


@dataclass
class Result:
    """What ``check`` or ``check_exact`` found."""

    anomalies: list[Anomaly] = field(default_factory=list)
    blocks_checked: int = 0
    ops_checked: int = 0  # writes (of any outcome) and acknowledged reads
    ops_ignored: int = 0  # failed, indeterminate and unfinished reads

    @property
    def ok(self) -> bool:
        return not self.anomalies

    @property
    def anomalous_blocks(self) -> set[int]:
        return {a.block for a in self.anomalies}

    def summary(self, limit: int = 10) -> str:
        """A few lines for an assertion message."""
        head = (
            f"{self.blocks_checked} blocks, {self.ops_checked} ops checked "
            f"({self.ops_ignored} failed reads ignored): "
        )
        if self.ok:
            return head + "linearizable"
        lines = [head + f"{len(self.anomalies)} anomalies"]
        lines += [f"  {a}" for a in self.anomalies[:limit]]
        if len(self.anomalies) > limit:
            lines.append(f"  ... and {len(self.anomalies) - limit} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------- preparation


@dataclass(frozen=True, eq=False)  # eq=False: compared and hashed by identity
class _Event:
    """An operation as the checkers see it: effective times, and the Op it came from."""

    kind: OpKind
    value: int
    start: float  # -inf only for the virtual write of the initial contents
    end: float  # +inf for a write that may take effect at any time after its start
    op: Op | None  # None only for the virtual initial write
    seq: int  # position in the history, to order ties deterministically

    @property
    def required(self) -> bool:
        # Reads that are checked at all were acknowledged; only writes can be optional.
        return self.kind == "read" or self.end < _INF

    def source(self) -> Op:
        assert self.op is not None, "the virtual initial write has no Op"
        return self.op


@dataclass
class _Block:
    block: int
    initial: int
    writes: dict[int, _Event]  # id -> its write
    reads: list[_Event]  # acknowledged reads, in the order blame is assigned


def _validate(op: Op) -> None:
    if op.kind not in ("write", "read"):
        raise ValueError(f"unknown operation kind {op.kind!r}: {op}")
    if not math.isfinite(op.start):
        raise ValueError(f"start time must be finite: {op}")
    if op.end is not None and (not math.isfinite(op.end) or op.end < op.start):
        raise ValueError(f"end time must be finite and not before the start: {op}")
    if op.kind == "write" and op.value is None:
        raise ValueError(f"a write needs the id it writes: {op}")


def _prepare(history: Iterable[Op], initial: dict[int, int] | None) -> tuple[list[_Block], int]:
    """Split the history by block, validate it, and give every operation effective times."""
    start_values = initial or {}
    blocks: dict[int, _Block] = {}
    ignored = 0
    for seq, op in enumerate(history):
        _validate(op)
        blk = blocks.get(op.block)
        if blk is None:
            blk = blocks[op.block] = _Block(op.block, start_values.get(op.block, 0), {}, [])
        if op.kind == "write":
            assert op.value is not None  # _validate
            if op.value == blk.initial:
                raise ValueError(
                    f"write of id {op.value} to block {op.block}, which is the block's initial "
                    "id; ids must be unique"
                )
            if op.value in blk.writes:
                raise ValueError(
                    f"id {op.value} written twice to block {op.block}; ids must be unique"
                )
            # A write that was not acknowledged may take effect at any time after its start.
            end = op.end if op.ok is True and op.end is not None else _INF
            blk.writes[op.value] = _Event("write", op.value, op.start, end, op, seq)
        elif op.ok is True and op.end is not None and op.value is not None:
            blk.reads.append(_Event("read", op.value, op.start, op.end, op, seq))
        else:
            ignored += 1  # a failed or unfinished read tells nothing about the register
    for blk in blocks.values():
        # Blame goes to the read that revealed an inconsistency: process in completion order.
        blk.reads.sort(key=lambda r: (r.end, r.start, r.seq))
    return [blocks[b] for b in sorted(blocks)], ignored


def _result(blocks: list[_Block], ignored: int) -> Result:
    return Result(
        blocks_checked=len(blocks),
        ops_checked=sum(len(b.writes) + len(b.reads) for b in blocks),
        ops_ignored=ignored,
    )


# --------------------------------------------------------------------------- wording


def _t(t: float) -> str:
    return f"{t:g}"


def _span(ev: _Event) -> str:
    op = ev.op
    if op is None:
        return "[initial]"
    if op.end is None:
        return f"[{_t(op.start)}, never completed]"
    suffix = ""
    if op.kind == "write" and op.ok is False:
        suffix = " failed"
    elif op.kind == "write" and op.ok is None:
        suffix = " indeterminate"
    return f"[{_t(op.start)}, {_t(op.end)}{suffix}]"


def _describe(ev: _Event) -> str:
    if ev.op is None:
        return f"the initial contents (id {ev.value})"
    if ev.kind == "write":
        return f"write {ev.value} {_span(ev)}"
    return f"a read {_span(ev)} that returned id {ev.value}"


# --------------------------------------------------------------------------- fast checker


@dataclass
class _Cluster:
    """The write of one id and the accepted reads that returned it."""

    write: _Event
    first_done: _Event  # the operation that completed first: f = first_done.end
    last_started: _Event  # the operation invoked last: s = last_started.start

    def add(self, ev: _Event) -> None:
        if ev.end < self.first_done.end:
            self.first_done = ev
        if ev.start > self.last_started.start:
            self.last_started = ev


class _TopTwoPrefixMax:
    """Fenwick tree over completion-time slots that answers "largest s among the clusters
    with f in the first k slots", keeping the best two *distinct* clusters per node so that
    a query can leave out the reader's own cluster.  Values only ever grow, which is all a
    prefix-maximum Fenwick tree supports."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._nodes: list[list[tuple[float, int]]] = [[] for _ in range(size + 1)]

    @staticmethod
    def _merge(best: list[tuple[float, int]], s: float, cluster: int) -> None:
        # ``best`` holds at most two (s, cluster) pairs of distinct clusters, best first.  A
        # cluster pushed out is beaten by two others, so whichever one a query excludes, a
        # kept entry is at least as good.
        for i, (s_old, c_old) in enumerate(best):
            if c_old == cluster:
                if s <= s_old:
                    return
                del best[i]
                break
        best.append((s, cluster))
        best.sort(reverse=True)
        del best[2:]

    def add(self, slot: int, s: float, cluster: int) -> None:
        i = slot + 1
        while i <= self._size:
            self._merge(self._nodes[i], s, cluster)
            i += i & -i

    def best_other(self, count: int, exclude: int) -> tuple[float, int] | None:
        """The best (s, cluster) among the first ``count`` slots, other than ``exclude``."""
        acc: list[tuple[float, int]] = []
        i = count
        while i > 0:
            for s, c in self._nodes[i]:
                self._merge(acc, s, c)
            i -= i & -i
        for s, c in acc:
            if c != exclude:
                return s, c
        return None


def _conflict(blk: _Block, r: _Event, own: _Cluster, other: _Cluster) -> Anomaly:
    """Explain why read ``r`` cannot see its id: ``other`` was in place before ``r`` began,
    and ``other`` comes after ``own``.  Prefer witnesses that are writes, for the clearest
    message."""
    f_own = own.first_done.end
    # b: an operation of the other cluster invoked after one of ours completed.
    b = other.write if other.write.start > f_own else other.last_started
    # a: an operation of our cluster that completed before b was invoked.
    a = own.write if own.write.end < b.start else own.first_done
    # e: an operation of the other cluster that completed before this read was invoked.
    e = other.write if other.write.end < r.start else other.first_done
    v, y = r.value, other.write.value
    returned = f"returned id {v}" + (" (the initial contents)" if own.write.op is None else "")
    # Every write comes after the initial contents; saying so would add nothing.
    order_known = a.op is not None
    kind: AnomalyKind
    if e.kind == "read":
        kind = "reads-backwards"
        text = (
            f"reads went backwards: read {_span(r)} {returned} after an earlier read "
            f"{_span(e)}, which completed before this one started, returned id {y}"
        )
        if order_known:
            text += (
                f", and {_describe(b)} started after {_describe(a)} completed, "
                f"so id {y} is newer than id {v}"
            )
    else:
        kind = "stale-read"
        text = f"stale read: read {_span(r)} {returned}, but {_describe(e)} completed before "
        text += "the read started"
        if order_known:
            if b is e:
                text += f" and had started after {_describe(a)} completed"
            else:
                text += f", and {_describe(b)} started after {_describe(a)} completed"
            text += f", so id {v} had already been overwritten"
    return Anomaly(blk.block, r.source(), kind, text)


def _check_block(blk: _Block) -> list[Anomaly]:
    virtual = _Event("write", blk.initial, -_INF, -_INF, None, -1)
    # Completion times a cluster can have: acknowledged write ends, read ends, and -inf for
    # the initial contents.  A Fenwick slot per distinct time.
    times = sorted(
        {-_INF} | {w.end for w in blk.writes.values() if w.end < _INF} | {r.end for r in blk.reads}
    )
    slot = {t: i for i, t in enumerate(times)}
    tree = _TopTwoPrefixMax(len(times))
    clusters: dict[int, _Cluster] = {blk.initial: _Cluster(virtual, virtual, virtual)}
    for w in blk.writes.values():
        if w.end < _INF:  # acknowledged, so it certainly took effect: its cluster exists
            clusters[w.value] = _Cluster(w, w, w)
            tree.add(slot[w.end], w.start, w.value)
        # An unacknowledged write joins only once a read shows it took effect.

    anomalies: list[Anomaly] = []
    for r in blk.reads:
        write = virtual if r.value == blk.initial else blk.writes.get(r.value)
        if write is None:
            anomalies.append(
                Anomaly(
                    blk.block,
                    r.source(),
                    "never-written",
                    f"read {_span(r)} returned id {r.value}, which was never written to "
                    f"block {blk.block}",
                )
            )
            continue
        if r.end < write.start:
            anomalies.append(
                Anomaly(
                    blk.block,
                    r.source(),
                    "read-before-write",
                    f"read {_span(r)} returned id {r.value}, but {_describe(write)} was "
                    "invoked only after the read completed",
                )
            )
            continue
        own = clusters.get(r.value)
        # A not-yet-seen unacknowledged write has f = +inf: nothing can come after its
        # cluster yet, so the read cannot be stale.
        if own is not None:
            count = bisect.bisect_left(times, r.start)  # clusters with f < r.start
            found = tree.best_other(count, r.value)
            if found is not None and found[0] > own.first_done.end:
                anomalies.append(_conflict(blk, r, own, clusters[found[1]]))
                continue  # a rejected read does not constrain later ones
        if own is None:
            own = clusters[r.value] = _Cluster(write, write, write)
        own.add(r)
        if own.last_started.start > -_INF:  # s = -inf can never satisfy s > f
            tree.add(slot[own.first_done.end], own.last_started.start, r.value)
    return anomalies


def check(history: Iterable[Op], initial: dict[int, int] | None = None) -> Result:
    """Check every block's history as a read/write register with unique write ids.

    ``initial`` maps a block to its id before the history (default 0).  The result lists
    one anomaly per read that cannot be explained, blamed as the module docstring says.
    Raises ValueError for a malformed history (duplicate ids, bad times).
    """
    blocks, ignored = _prepare(history, initial)
    result = _result(blocks, ignored)
    for blk in blocks:
        result.anomalies.extend(_check_block(blk))
    return result


# --------------------------------------------------------------------------- exact checker


def _linearizable(events: Sequence[_Event], initial: int) -> bool:
    """Wing-Gong/Lowe search: is there an order of ``events`` that respects real time and
    register semantics?  Optional (unacknowledged) writes may be left out."""
    n = len(events)
    # preds[i]: the operations that completed before operation i was invoked.
    preds = [sum(1 << j for j, other in enumerate(events) if other.end < ev.start) for ev in events]
    required = sum(1 << i for i, ev in enumerate(events) if ev.required)
    failed: set[tuple[int, int]] = set()

    def search(done: int, value: int) -> bool:
        if done & required == required:
            return True  # unlinearized optional writes simply never took effect
        if (done, value) in failed:
            return False
        for i in range(n):
            bit = 1 << i
            if done & bit or preds[i] & ~done:
                continue  # already placed, or something that precedes it is not yet placed
            ev = events[i]
            if ev.kind == "read":
                if ev.value == value and search(done | bit, value):
                    return True
            elif search(done | bit, ev.value):
                return True
        failed.add((done, value))
        return False

    return search(0, initial)


def check_exact(
    history: Iterable[Op], initial: dict[int, int] | None = None, *, max_ops: int = 12
) -> Result:
    """Like ``check``, but by exhaustive search; for cross-checking on small histories.

    Raises ValueError if a block has more than ``max_ops`` checked operations (the search
    is exponential).  Blame is assigned by the same greedy rule as ``check``, so both
    report the same reads; anomalies here all have kind "not-linearizable".
    """
    blocks, ignored = _prepare(history, initial)
    result = _result(blocks, ignored)
    for blk in blocks:
        n = len(blk.writes) + len(blk.reads)
        if n > max_ops:
            raise ValueError(f"block {blk.block} has {n} operations, more than {max_ops}")
        writes = list(blk.writes.values())
        accepted: list[_Event] = []
        for r in blk.reads:
            if _linearizable([*writes, *accepted, r], blk.initial):
                accepted.append(r)
                continue
            result.anomalies.append(
                Anomaly(
                    blk.block,
                    r.source(),
                    "not-linearizable",
                    f"read {_span(r)} returned id {r.value}, which no linearization of the "
                    f"{len(writes)} writes and the {len(accepted)} reads accepted before it "
                    "allows",
                )
            )
    return result


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Token:
    """Handle of an operation in flight, returned by ``History.invoke_*``."""

    serial: int
    kind: OpKind


@dataclass
class _Record:
    kind: OpKind
    first_block: int
    nblocks: int
    start: float
    value: int | None = None  # the id a write writes
    end: float | None = None
    ok: bool | None = None
    values: tuple[int, ...] | None = None  # the ids a read returned, one per block
    completed: bool = False


class History:
    """Records operations as a test issues them, for ``check``.

    Safe to use from asyncio tasks and from threads.  Times default to ``clock()``
    (``time.monotonic``); all hosts' operations must use the same clock.  A multi-block
    operation becomes one ``Op`` per block with the same id and times.  Operations still
    in flight when ``ops()`` is called appear as never completed: such writes are
    indeterminate and such reads are ignored.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: list[_Record] = []

    def now(self) -> float:
        return self._clock()

    def _time(self, t: float | None) -> float:
        return self._clock() if t is None else float(t)

    def _invoke(self, record: _Record) -> Token:
        if record.nblocks < 1:
            raise ValueError(f"an operation touches at least one block, not {record.nblocks}")
        with self._lock:
            self._records.append(record)
            return Token(len(self._records) - 1, record.kind)

    def _finish(self, token: Token, kind: OpKind, t: float | None) -> _Record:
        if token.kind != kind:
            other = "complete_read" if token.kind == "read" else "complete"
            raise TypeError(f"{token} is a {token.kind}; use History.{other}")
        record = self._records[token.serial]
        if record.completed:
            raise ValueError(f"{token} was already completed")
        end = self._time(t)
        if end < record.start:
            raise ValueError(f"{token} completes at {end}, before its start {record.start}")
        record.end = end
        record.completed = True
        return record

    def invoke_write(
        self, block: int, value: int, t: float | None = None, *, nblocks: int = 1
    ) -> Token:
        """A write of id ``value`` to blocks ``block .. block+nblocks-1`` is issued."""
        return self._invoke(_Record("write", block, nblocks, self._time(t), value=value))

    def complete(self, token: Token, t: float | None = None, ok: bool | None = True) -> None:
        """The write answered: ``ok`` True acknowledged, False error, None indeterminate."""
        with self._lock:
            self._finish(token, "write", t).ok = ok

    def invoke_read(self, block: int, t: float | None = None, *, nblocks: int = 1) -> Token:
        """A read of blocks ``block .. block+nblocks-1`` is issued."""
        return self._invoke(_Record("read", block, nblocks, self._time(t)))

    def complete_read(
        self, token: Token, t: float | None, value: int | Sequence[int] | None
    ) -> None:
        """The read answered with the id read back (a sequence, one per block, for a
        multi-block read), or None if it failed."""
        with self._lock:
            record = self._records[token.serial]
            values: tuple[int, ...] | None
            if value is None:
                values = None
            elif isinstance(value, int):
                values = (value,)
            else:
                values = tuple(value)
            if values is not None and len(values) != record.nblocks:
                raise ValueError(f"{token} read {record.nblocks} blocks but got {len(values)} ids")
            record = self._finish(token, "read", t)
            record.values = values
            record.ok = values is not None

    def ops(self) -> list[Op]:
        """A snapshot of everything recorded so far, one Op per block touched."""
        with self._lock:
            records = list(self._records)
        out: list[Op] = []
        for rec in records:
            for i in range(rec.nblocks):
                value = rec.value if rec.kind == "write" else None
                if rec.kind == "read" and rec.values is not None:
                    value = rec.values[i]
                out.append(Op(rec.kind, rec.first_block + i, value, rec.start, rec.end, rec.ok))
        return out

    def __len__(self) -> int:
        return len(self._records)
