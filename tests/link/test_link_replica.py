"""The receiving copy: an epoch reaches the medium whole or not at all, even across a crash."""

from __future__ import annotations

import errno
import os
import random

import pytest

from firmware.receiver.journal import EpochJournal
from firmware.receiver.replica import Replica, StaleSession
from hal.media.base import MediumError
from hal.media.file import FileMedium
from hal.media.remote.frames import Write, Zero
from hal.media.remote.generations import StateFile, SyncState

SIZE = 1 << 20


class CrashingMedium(FileMedium):
    """Dies (like a power cut) after ``writes_left`` writes have reached the file."""

    def __init__(self, path: str, writes_left: int) -> None:
        super().__init__(path)
        self.writes_left = writes_left

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.writes_left == 0:
            raise MediumError(errno.EIO, "power cut")
        self.writes_left -= 1
        super().pwrite(offset, data)


def random_epoch(rnd: random.Random, n: int) -> list[Write | Zero]:
    ops: list[Write | Zero] = []
    for seq in range(n):
        offset = rnd.randrange(0, SIZE - 8192, 512)
        if rnd.random() < 0.2:
            ops.append(Zero(1, seq, offset, rnd.choice([512, 4096]), False))
        else:
            ops.append(Write(1, seq, offset, rnd.randbytes(rnd.choice([512, 4096, 8192]))))
    return ops


def apply(image: bytearray, ops: list[Write | Zero]) -> None:
    for op in ops:
        if isinstance(op, Write):
            image[op.offset:op.offset + len(op.data)] = op.data
        else:
            image[op.offset:op.offset + op.length] = bytes(op.length)


@pytest.fixture
def paths(tmp_path):
    img = tmp_path / "copy.img"
    img.write_bytes(bytes(SIZE))
    return str(img), str(tmp_path / "copy.state"), str(tmp_path / "copy.journal")


def open_replica(paths, medium=None, **kwargs) -> Replica:
    img, state, journal = paths
    return Replica(medium or FileMedium(img), StateFile(state), EpochJournal(journal),
                   **kwargs)


@pytest.mark.parametrize("stage_memory", [64 << 20, 1024])  # in memory; spilled to the journal
def test_epochs_apply_in_order(paths, stage_memory):
    replica = open_replica(paths, stage_memory=stage_memory)
    rnd = random.Random(1)
    expected = bytearray(SIZE)
    token = replica.open_session()
    for epoch in range(1, 6):
        ops = random_epoch(rnd, 20)
        replica.stage(token, ops[:7])
        replica.stage(token, ops[7:])
        replica.commit(token, epoch)
        apply(expected, ops)
    assert replica.read(0, SIZE) == expected
    replica.close()


def test_an_epoch_without_its_barrier_never_reaches_the_medium(paths):
    replica = open_replica(paths)
    rnd = random.Random(2)
    first = random_epoch(rnd, 10)
    token = replica.open_session()
    replica.stage(token, first)
    replica.commit(token, 1)
    replica.stage(token, random_epoch(rnd, 10))  # epoch 2: the link dies before its barrier
    replica.discard(token)
    replica.close()
    expected = bytearray(SIZE)
    apply(expected, first)
    reopened = open_replica(paths)
    reopened.recover()
    assert reopened.read(0, SIZE) == expected


@pytest.mark.parametrize("crash_after", [0, 1, 5, 11])
def test_crash_while_applying_is_repaired_from_the_journal(paths, crash_after):
    img = paths[0]
    rnd = random.Random(crash_after)
    first, second = random_epoch(rnd, 12), random_epoch(rnd, 12)
    replica = open_replica(paths)
    token = replica.open_session()
    replica.stage(token, first)
    replica.commit(token, 1)
    replica.close()
    writes = sum(isinstance(op, Write) for op in second)
    crashing = open_replica(paths, medium=CrashingMedium(img, min(crash_after, writes - 1)))
    token = crashing.open_session()
    crashing.stage(token, second)
    with pytest.raises(MediumError):
        crashing.commit(token, 2)  # journalled, then the medium dies halfway through
    crashing.close()
    expected = bytearray(SIZE)
    apply(expected, first)
    apply(expected, second)
    restarted = open_replica(paths)
    assert restarted.recover() == 2
    assert restarted.read(0, SIZE) == expected
    assert restarted.recover() is None  # the journal is cleared once replayed


def test_torn_or_corrupt_journal_is_not_replayed(paths):
    journal_path = paths[2]
    ops = random_epoch(random.Random(3), 6)
    journal = EpochJournal(journal_path)
    journal.begin()
    for op in ops:
        journal.append(op)
    journal.commit(9)
    assert journal.committed().epoch == 9
    journal.close()
    whole = open(journal_path, "rb").read()
    for cut in (len(whole) - 1, len(whole) // 2, 3):
        with open(journal_path, "wb") as f:
            f.write(whole[:cut])
        assert EpochJournal(journal_path).committed() is None
    corrupt = bytearray(whole)
    corrupt[len(corrupt) // 3] ^= 0x55
    with open(journal_path, "wb") as f:
        f.write(corrupt)
    assert EpochJournal(journal_path).committed() is None


def test_a_taken_over_session_cannot_stage(paths):
    replica = open_replica(paths)
    old = replica.open_session()
    new = replica.open_session()
    with pytest.raises(StaleSession):
        replica.stage(old, [Write(1, 0, 0, b"x")])
    replica.stage(new, [Write(1, 0, 0, b"y")])
    replica.commit(new, 1)
    assert replica.read(0, 1) == b"y"


def test_state_file_round_trip(tmp_path):
    path = str(tmp_path / "s")
    store = StateFile(path)
    assert store.load() == SyncState()
    state = SyncState.new_primary().rotated()
    store.save(state)
    assert StateFile(path).load() == state
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tandem-state")]
