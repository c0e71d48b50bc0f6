"""Issue 16, first steps as processes: two ``tandem run --pair-mode active-active`` nodes
serve one disk; hosts write through both at once.

Each node holds the other's record and a region is owned by one node at a time (a MARK
asks for it: docs/pair.md). Two libnbd hosts, one per node, write and read a few regions
both use — disjoint blocks, the same blocks, multi-block writes that overlap partly —
with a unique payload id in every block; the per-block history must be linearizable
(tests/linearizability.py). Afterwards both mirrors drain and M == D.
"""

from __future__ import annotations

import contextlib
import random
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.linearizability import History, check
from tests.pair.rig import PairRig
from tests.pair.test_pair_failover import qemu_io

pytestmark = pytest.mark.slow

BLOCK = 4096
_STAMP = struct.Struct("<QQ")  # payload id, block


def payload(ident: int, block: int) -> bytes:
    return _STAMP.pack(ident, block) * (BLOCK // _STAMP.size)


def decode(raw: bytes, block: int) -> int:
    if raw == bytes(BLOCK):
        return 0
    ident, where = _STAMP.unpack_from(raw)
    return ident if where == block and raw == payload(ident, block) else -1


@pytest.fixture
def rig(tmp_path: Path):
    need("qemu-io")
    rig = PairRig(tmp_path, size="256M", extra=("--pair-mode", "active-active"))
    yield rig
    rig.close()


def start_active_active(rig: PairRig) -> None:
    rig.a.start()
    rig.b.start()
    for node in (rig.a, rig.b):
        node.wait_peer(lambda s: s["state"] == "connected"
                       and s["holder"]["state"] == "connected", 30, "both directions up")


def test_both_serve_and_a_region_moves_to_its_writer(rig: PairRig) -> None:
    start_active_active(rig)
    a, b = rig.a, rig.b
    qemu_io(a.uri, "write -P 0x11 0 64k")
    qemu_io(b.uri, "write -P 0x22 1M 64k")
    qemu_io(b.uri, "write -P 0x33 0 4k")  # region 0 was A's: B asks for it
    out = qemu_io(a.uri, "read -P 0x33 0 4k", "read -P 0x11 4k 60k", "read -P 0x22 1M 64k")
    assert "Pattern verification failed" not in out
    a_status, b_status = a.peer(), b.peer()
    assert a_status["handovers"]["count"] + b_status["handovers"]["count"] >= 1
    assert a_status["mode"] == "active-active"
    a.stop()
    b.stop()
    assert rig.media_identical(), "M differs from D after both nodes stopped"


def _host(uri: str, history: History, blocks: list[int], ids: range, seed: int,
          until: float, errors: list[str]) -> None:
    import nbd

    rng = random.Random(seed)
    handle = nbd.NBD()
    handle.connect_uri(uri)
    try:
        next_id = iter(ids)
        while time.monotonic() < until:
            first = rng.choice(blocks)
            count = rng.choice((1, 1, 2, 3))
            span = [b for b in range(first, first + count) if b in blocks]
            if rng.random() < 0.6:
                ident = next(next_id)
                data = b"".join(payload(ident, b) for b in span)
                tokens = [history.invoke_write(b, ident) for b in span]
                try:
                    handle.pwrite(data, span[0] * BLOCK)
                except nbd.Error as exc:
                    errors.append(f"write {span}: {exc}")
                    return  # its server went: the write stays indeterminate (ok None)
                for token in tokens:
                    history.complete(token, ok=True)
            else:
                tokens = [history.invoke_read(b) for b in span]
                try:
                    raw = handle.pread(len(span) * BLOCK, span[0] * BLOCK)
                except nbd.Error as exc:
                    errors.append(f"read {span}: {exc}")
                    return
                for i, (b, token) in enumerate(zip(span, tokens, strict=True)):
                    history.complete_read(token, None,
                                          decode(raw[i * BLOCK:(i + 1) * BLOCK], b))
    finally:
        with contextlib.suppress(nbd.Error):
            handle.shutdown()


def test_two_hosts_through_both_nodes_are_linearizable(rig: PairRig) -> None:
    start_active_active(rig)
    # Three regions of 64 KiB: blocks 0-15 mostly A's host, 16-31 both, 32-47 mostly B's.
    a_blocks = list(range(0, 32))
    b_blocks = list(range(16, 48))
    history = History()
    errors: list[str] = []
    until = time.monotonic() + 12
    hosts = [threading.Thread(target=_host, args=(rig.a.uri, history, a_blocks,
                                                  range(1, 1 << 40), 1, until, errors)),
             threading.Thread(target=_host, args=(rig.b.uri, history, b_blocks,
                                                  range(1 << 40, 1 << 41), 2, until, errors))]
    for host in hosts:
        host.start()
    for host in hosts:
        host.join(60)
    assert not errors, errors[:5]
    ops = history.ops()
    result = check(ops)
    assert result.ok, result.summary()
    writes = sum(op.kind == "write" for op in ops)
    reads = sum(op.kind == "read" for op in ops)
    assert writes > 50 and reads > 20, (writes, reads)
    a_status, b_status = rig.a.peer(), rig.b.peer()
    assert a_status["handovers"]["count"] + b_status["handovers"]["count"] >= 5
    rig.a.stop()
    rig.b.stop()
    assert rig.media_identical(), "M differs from D after both nodes stopped"


def _reader(uri: str, history: History, blocks: list[int]) -> None:
    import nbd

    handle = nbd.NBD()
    handle.connect_uri(uri)
    try:
        for b in blocks:
            token = history.invoke_read(b)
            raw = handle.pread(BLOCK, b * BLOCK)
            history.complete_read(token, None, decode(raw, b))
    finally:
        handle.shutdown()


def test_kill_either_node_under_two_sided_load_the_survivor_serves(rig: PairRig) -> None:
    start_active_active(rig)
    a_blocks = list(range(0, 32))
    b_blocks = list(range(16, 48))
    history = History()
    a_errors: list[str] = []
    b_errors: list[str] = []
    now = time.monotonic()
    host_a = threading.Thread(target=_host, args=(rig.a.uri, history, a_blocks,
                                                  range(1, 1 << 40), 3, now + 30, a_errors))
    host_b = threading.Thread(target=_host, args=(rig.b.uri, history, b_blocks,
                                                  range(1 << 40, 1 << 41), 4, now + 14,
                                                  b_errors))
    host_a.start()
    host_b.start()
    time.sleep(4)
    rig.a.kill()  # kill -9 under load: A's host sees its connection go
    host_a.join(60)
    host_b.join(60)
    assert a_errors, "A's host should have seen A go"
    assert not b_errors, b_errors[:5]
    b = rig.b.wait_peer(lambda s: s["holder"]["role"] == "primary", 20, "B took over A's record")
    assert b["role"] == "primary" and b["state"] == "sole-owner"
    # Every acknowledged write reads back through B (A's last ones are indeterminate).
    _reader(rig.b.uri, history, sorted(set(a_blocks) | set(b_blocks)))
    result = check(history.ops())
    assert result.ok, result.summary()
    rig.b.wait_mirrored(60)
    assert rig.media_identical(), "after B's resync M must equal D"
    # A comes back at a lower epoch: it hands over and holds B's records, writing nothing
    # to D; B's copy of A's record is empty (resynced), so B gives that record back
    # (failback) and both nodes serve again.
    d_before = rig.d.read_bytes()
    rig.a.start()
    a = rig.a.wait_peer(lambda s: s["role"] == "primary" and s["state"] == "connected"
                        and s["holder"]["role"] == "record-holder"
                        and s["holder"]["state"] == "connected", 60,
                        "A took its record back")
    assert rig.d.read_bytes() == d_before, "the returning node wrote D"
    b = rig.b.wait_peer(lambda s: s["holder"]["role"] == "record-holder"
                        and s["state"] == "connected", 30, "B gave A's record back")
    assert a["epoch"] == b["holder"]["epoch"] > 1
    # Both serve: writes through A and through B, each read back through the other.
    for uri, other, ids, blocks in ((rig.a.uri, rig.b.uri, range(1 << 41, 1 << 42), a_blocks),
                                    (rig.b.uri, rig.a.uri, range(1 << 42, 1 << 43), b_blocks)):
        errors: list[str] = []
        _host(uri, history, blocks, ids, 5, time.monotonic() + 3, errors)
        assert not errors, errors[:5]
        _reader(other, history, blocks)
    result = check(history.ops())
    assert result.ok, result.summary()
    assert rig.a.peer()["counters"]["marks_acked"] > 0, "A wrote without its record at B"
    rig.b.stop()
    rig.a.stop()
    assert rig.media_identical()
