"""Issue 15, acceptance 1 and 2: the record on the peer, and failover, as processes.

A and B are real ``tandem run`` processes on one D and one M, linked by TCP (through a
proxy) and a serial line (a pty pair). Hosts are qemu-io and a libnbd writer that logs
what was acknowledged. A is killed with SIGKILL at each point of the write path
(tests/pair/launch.py); B must take over, serve every acknowledged write on its own
NBD port, and after its resync M must equal D byte for byte. A's mirror is paused where
the point allows, so that M lags and only the record B holds can say what to copy.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import need
from tests.e2e.pattern_checker import check, write_until_error
from tests.pair.rig import PairRig, start_pair

pytestmark = pytest.mark.slow


def qemu_io(uri: str, *commands: str) -> str:
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = subprocess.run([*args, uri], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "error" not in out.stdout.lower(), out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def rig(tmp_path: Path):
    need("qemu-io")
    rig = PairRig(tmp_path, size="1G")  # sparse: room for writes the policy won't predict
    yield rig
    rig.close()


def sole_owner(status: dict) -> bool:
    return status["state"] == "sole-owner" and status["role"] == "primary"


def test_a_miss_costs_one_batch_a_hit_none_and_b_takes_over(rig: PairRig) -> None:
    start_pair(rig)
    a = rig.a
    before = a.peer()["counters"]
    # One request at a time (qemu-io): each miss is one MARK batch, acknowledged.
    qemu_io(a.uri, "write -P 0x11 0 64k", "write -P 0x22 300M 4k", "write -P 0x33 0 4k",
            "write -P 0x44 600M 1M", "write -P 0x55 600M 64k")
    after = a.peer()
    c = after["counters"]
    misses = c["misses"] - before["misses"]
    hits = c["hits"] - before["hits"]
    batches = c["marks_acked"] - before["marks_acked"]
    marks_sent = c["sent"].get("MARK", 0) - before["sent"].get("MARK", 0)
    assert misses == 3 and hits == 2  # the rewrites of 0 and 600M hit
    assert batches == misses == marks_sent
    assert c["retried"] == before["retried"]
    held = rig.b.peer()["held_regions"]
    assert after["local_copy_regions"] <= held
    assert {link["state"] for link in after["links"]} == {"up"}
    assert {"url", "state", "rtt_ms"} <= set(after["links"][0])

    a.console("mirror", "pause")  # M lags: only B's record says what to copy
    qemu_io(a.uri, "write -P 0x66 900M 256k")
    a.kill()
    b = rig.b.wait_peer(sole_owner, 30, "takeover")
    assert b["epoch"] == after["epoch"] + 1
    qemu_io(rig.b.uri, "read -P 0x66 900M 256k", "read -P 0x55 600M 64k",
            "read -P 0x44 629211136 960k", "read -P 0x33 0 4k", "read -P 0x11 4k 60k",
            "read -P 0x22 300M 4k")
    rig.b.wait_mirrored()
    assert rig.media_identical()
    status = rig.b.status()
    assert status["peer_state"] == "sole-owner" and status["peer_role"] == "primary"
    assert status["peer_epoch"] == b["epoch"]


def run_writer(uri: str, log: Path, seed: int) -> threading.Thread:
    # 4 KiB blocks anywhere in the 1 GiB volume: misses keep coming.
    thread = threading.Thread(target=write_until_error, args=(uri, log, seed, 262144, 16),
                              daemon=True)
    thread.start()
    return thread


def acked(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.startswith("A"))


# (crash point, occurrence, whether A's mirror may run)
POINTS = [
    ("mark-sent", 5, False),
    ("holder-committed", 5, False),
    ("proceed-before-d", 40, False),
    ("during-d", 40, False),
    ("d-written", 40, False),
    ("after-host-ack", 0, False),
    ("during-mirror", 30, True),
    ("clear-sent", 2, True),
]


@pytest.mark.parametrize(("point", "after", "mirror"), POINTS, ids=[p[0] for p in POINTS])
def test_kill_a_at_each_point_of_the_write_path(tmp_path: Path, point: str, after: int,
                                                 mirror: bool) -> None:
    need("qemu-io")
    # Clears need regions to leave A's record soon: the simple policy, a short idle.
    extra = ("--point", "sequential-lru", "--idle-evict", "0.3") if point == "clear-sent" \
        else ()
    rig = PairRig(tmp_path, size="1G", extra=extra)
    try:
        crash = {} if point == "after-host-ack" else {"crash_at": point,
                                                      "crash_after": after}
        start_pair(rig, **crash)
        if not mirror:
            rig.a.console("mirror", "pause")
        log = tmp_path / "writes.log"
        log.touch()
        writer = run_writer(rig.a.uri, log, seed=15)
        if point == "after-host-ack":
            deadline = time.monotonic() + 30
            while acked(log) < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            rig.a.kill()
        elif point == "clear-sent":
            # Writes for a while, then quiet: the mirror copies, regions go idle, clears go.
            deadline = time.monotonic() + 30
            while acked(log) < 300 and time.monotonic() < deadline:
                time.sleep(0.05)
        code = rig.a.wait_exit(60)
        assert code == -9, f"A ended with {code}, not at its crash point: {rig.a.log()[-2000:]}"
        writer.join(30)
        rig.b.wait_peer(sole_owner, 30, "takeover")
        checked, problems = check(rig.b.uri, log)
        assert problems == [], problems[:5]
        if point != "mark-sent":
            assert checked > 0 or point in ("holder-committed",)
        rig.b.wait_mirrored()
        assert rig.media_identical(), "M differs from D after B's resync"
    finally:
        rig.close()


def partitioned_writes_then_kill(tmp_path: Path, mutant: str | None) -> tuple[int, bool]:
    """A keeps writing while no link reaches B, then dies; B takes over after the lease.
    Returns (problems reading acknowledged writes through B, M == D after B's resync)."""
    from tools.sim.fault_proxy import Mode

    rig = PairRig(tmp_path, size="1G")
    try:
        start_pair(rig, mutant=mutant)
        rig.a.console("mirror", "pause")
        rig.tcp(Mode.BLACKHOLE)
        rig.serial_up(False)
        log = tmp_path / "writes.log"
        log.touch()
        writer = run_writer(rig.a.uri, log, seed=7)
        time.sleep(1.0)  # within A's lease
        rig.a.kill()
        writer.join(30)
        rig.b.wait_peer(sole_owner, 30, "takeover")
        _, problems = check(rig.b.uri, log)
        rig.b.wait_mirrored()
        return len(problems), rig.media_identical()
    finally:
        rig.close()


def test_writes_cut_off_from_b_are_never_acknowledged_and_m_ends_equal(tmp_path: Path) -> None:
    need("qemu-io")
    problems, identical = partitioned_writes_then_kill(tmp_path, None)
    assert problems == 0 and identical
    log = (tmp_path / "writes.log").read_text().splitlines()
    assert not any(line.startswith("A") for line in log)  # nothing acknowledged unmarked


def test_a_build_that_writes_d_before_the_ack_fails_this_check(tmp_path: Path) -> None:
    need("qemu-io")
    problems, identical = partitioned_writes_then_kill(tmp_path, "d-before-ack")
    # The mutant acknowledged writes B's record never named: M keeps the old data there.
    assert problems > 0 or not identical


def fio_nbd(uri: str, *options: str) -> dict:
    import json

    out = subprocess.run(
        ["fio", "--name=pair", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
         "--bs=4k", "--iodepth=16", "--size=32m", "--randseed=15", "--verify=crc32c",
         "--verify_fatal=1", "--verify_state_save=0", "--output-format=json", *options],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    job = json.loads(out.stdout[out.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0
    return dict(job)


def test_fio_verify_through_a_then_verify_only_through_b(rig: PairRig) -> None:
    need("fio")
    start_pair(rig)
    written = fio_nbd(rig.a.uri, "--do_verify=1")
    assert written["write"]["total_ios"] == 32 * 256
    a = rig.a.peer()
    # QD16: concurrent misses share a batch (group commit), never the other way round.
    assert 0 < a["counters"]["marks_acked"] <= a["counters"]["misses"]
    rig.a.console("mirror", "pause")
    rig.a.kill()
    rig.b.wait_peer(sole_owner, 30, "takeover")
    fio_nbd(rig.b.uri, "--verify_only")
    rig.b.wait_mirrored()
    assert rig.media_identical()


@pytest.mark.parametrize("cycles", [3])
def test_both_lose_power_at_once_and_come_back_with_nothing_lost(tmp_path: Path,
                                                                 cycles: int) -> None:
    """A double failure (PAIR.md's test 13): both processes killed at the same moment
    under load, several times; after each restart the pair resumes (A primary, B its
    holder), every acknowledged write reads back, and once the mirror drains M == D:
    A's INTENT and B's HELD named every region either may have left different."""
    need("qemu-io")
    rig = PairRig(tmp_path, size="1G")
    try:
        log = tmp_path / "writes.log"
        log.touch()
        for cycle in range(cycles):
            start_pair(rig)
            if cycle == 0:
                rig.a.console("mirror", "pause")  # the first cut leaves M far behind
            writer = run_writer(rig.a.uri, log, seed=100 + cycle)
            goal = acked(log) + 150
            deadline = time.monotonic() + 30
            while acked(log) < goal and time.monotonic() < deadline:
                time.sleep(0.02)
            for node in (rig.a, rig.b):
                node.signal(9)
            for node in (rig.a, rig.b):
                node.wait_exit()
            writer.join(30)
        start_pair(rig)
        _, problems = check(rig.a.uri, log)
        assert problems == [], problems[:5]
        rig.a.wait_mirrored()
        assert rig.media_identical()
        assert rig.a.peer()["role"] == "primary" and rig.b.peer()["role"] == "record-holder"
    finally:
        rig.close()
