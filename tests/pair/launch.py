"""``tandem`` with a crash point or a mutant patched in, for the pair's process tests.

    python -m tests.pair.launch [--crash-at POINT [--crash-after N]] [--mutant NAME] -- ARGS

runs ``tandem ARGS`` after patching the firmware so that the process kills itself with
SIGKILL (no flush, no goodbye: a power cut as the peer sees it) the N-th time it
reaches POINT, or misbehaves as the mutant NAME does. The points are the places of the
write path that issue 15 names; the patches live here, not in the product.
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from firmware.peer import runtime as peer_runtime
from firmware.peer import store as peer_store
from firmware.peer.events import Send
from firmware.peer.frames import Clear, Mark
from hal.media import fenced

POINTS = ("mark-sent", "holder-committed", "proceed-before-d", "during-d", "d-written",
          "during-mirror", "clear-sent")
MUTANTS = ("d-before-ack",)


class _Counter:
    def __init__(self, after: int) -> None:
        self.left = after

    def hit(self) -> bool:
        self.left -= 1
        return self.left <= 0


def _die() -> None:
    sys.stderr.write(f"launch: crash point reached, pid {os.getpid()} killed\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_sends(message_type: type, counter: _Counter, *, linger_s: float = 0.0) -> None:
    original = peer_runtime.PairRuntime._carry_out

    @functools.wraps(original)
    def carry_out(self: Any, action: Any) -> None:
        original(self, action)
        if isinstance(action, Send) and isinstance(action.frame.message, message_type) \
                and counter.hit():
            if linger_s:
                # The frame is on its way and the holder answers it; this process does
                # not read the answer (a hung loop), then dies.
                time.sleep(linger_s)
            _die()

    peer_runtime.PairRuntime._carry_out = carry_out  # type: ignore[method-assign]


def _patch_medium_write(role_suffix: str, counter: _Counter, *, half: bool) -> None:
    original = fenced.FencedMedium.pwrite

    def pwrite(self: Any, offset: int, data: Any) -> None:
        if self.name.endswith(role_suffix) and counter.hit():
            if half:
                original(self, offset, bytes(data[:len(data) // 2]))
            _die()
        original(self, offset, data)

    fenced.FencedMedium.pwrite = pwrite  # type: ignore[method-assign]


def install(point: str | None, after: int, mutant: str | None) -> None:
    counter = _Counter(after)
    if point == "mark-sent":
        _patch_sends(Mark, counter)
    elif point == "holder-committed":
        _patch_sends(Mark, counter, linger_s=0.3)
    elif point == "clear-sent":
        _patch_sends(Clear, counter)
    elif point == "during-d":
        _patch_medium_write("local.img", counter, half=True)
    elif point == "during-mirror":
        _patch_medium_write("second.img", counter, half=True)
    elif point == "proceed-before-d":
        durable = peer_store.PeerRecordStore.durable

        async def durable_then_die(self: Any, transaction: int | None = None) -> None:
            await durable(self, transaction)
            if transaction is not None and counter.hit():
                _die()

        peer_store.PeerRecordStore.durable = durable_then_die  # type: ignore[method-assign]
    elif point == "d-written":
        ended: Callable[..., None] = peer_store.PeerRecordStore.ended

        def ended_then_die(self: Any, transaction: int) -> None:
            if self._current.get(transaction) in self._issued and counter.hit():
                _die()
            ended(self, transaction)

        peer_store.PeerRecordStore.ended = ended_then_die  # type: ignore[method-assign]
    elif point is not None:
        raise SystemExit(f"launch: unknown crash point {point!r}; one of {POINTS}")
    if mutant == "d-before-ack":
        # The broken build issue 15 asks the suite to catch: the local medium is written
        # without waiting for the holder's acknowledgement.
        async def durable_at_once(self: Any, transaction: int | None = None) -> None:
            if transaction is not None:
                self._issued.add(self._current[transaction])

        peer_store.PeerRecordStore.durable = durable_at_once  # type: ignore[method-assign]
    elif mutant is not None:
        raise SystemExit(f"launch: unknown mutant {mutant!r}; one of {MUTANTS}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pair.launch")
    parser.add_argument("--crash-at", choices=POINTS)
    parser.add_argument("--crash-after", type=int, default=1)
    parser.add_argument("--mutant", choices=MUTANTS)
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    install(options.crash_at, options.crash_after, options.mutant)
    from firmware.cli import main as tandem_main

    return tandem_main(args)


if __name__ == "__main__":
    sys.exit(main())
