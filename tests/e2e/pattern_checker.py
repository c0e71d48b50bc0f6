"""A host that logs what the appliance acknowledged, to check it after a crash.

Writer: writes 4 KiB pattern blocks (block number and sequence number in every
block) over libnbd, one at a time, logging "I blk seq" before each write is
issued and "A blk seq" once it is acknowledged; stops at the first error (the
appliance was killed). Checker: every block whose write was acknowledged must
read back as that write or as a later one that was issued.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections import defaultdict
from pathlib import Path

import nbd

BLOCK = 4096


def pattern(block: int, seq: int) -> bytes:
    head = f"TANDEM blk={block} seq={seq}\n".encode()
    fill = hashlib.sha256(head).digest() * (BLOCK // 32)
    return (head + fill)[:BLOCK]


def write_until_error(uri: str, log_path: Path, seed: int, blocks: int, flush_every: int) -> int:
    rng = random.Random(seed)
    h = nbd.NBD()
    h.connect_uri(uri)
    done = 0
    with open(log_path, "a", buffering=1) as log:
        seq = seed * 1_000_000
        while True:
            seq += 1
            block = rng.randrange(blocks)
            log.write(f"I {block} {seq}\n")
            try:
                h.pwrite(pattern(block, seq), block * BLOCK)
                if flush_every and seq % flush_every == 0:
                    h.flush()
            except nbd.Error:
                return done
            log.write(f"A {block} {seq}\n")
            done += 1


def check(uri: str, log_path: Path) -> tuple[int, list[str]]:
    """Return (acknowledged blocks checked, problems)."""
    acked: dict[int, int] = {}
    issued: dict[int, set[int]] = defaultdict(set)
    for line in log_path.read_text().splitlines():
        kind, block_s, seq_s = line.split()
        block, seq = int(block_s), int(seq_s)
        if kind == "I":
            issued[block].add(seq)
        else:
            acked[block] = seq
    h = nbd.NBD()
    h.connect_uri(uri)
    problems = []
    for block, seq in acked.items():
        data = h.pread(BLOCK, block * BLOCK)
        allowed = {s for s in issued[block] if s >= seq}
        if not any(data == pattern(block, s) for s in allowed):
            problems.append(f"block {block}: acknowledged seq {seq}, read {data[:40]!r}")
    h.shutdown()
    return len(acked), problems


if __name__ == "__main__":
    uri, log, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    print(write_until_error(uri, log, seed, blocks=int(sys.argv[4]), flush_every=64))
