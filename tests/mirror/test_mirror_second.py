"""The second medium's capabilities, resolved once (firmware/mirror/second.py)."""

from __future__ import annotations

import concurrent.futures

from firmware.mirror.second import Capabilities, SecondMedium
from tools.sim.media import MemoryMedium

BLOCK = 4096
SIZE = 1 << 18


class _Link(MemoryMedium):
    """A second medium with every optional capability, counting what is asked."""

    def __init__(self) -> None:
        super().__init__(SIZE, "link")
        self.sessions = 0
        self.asked: list[str] = []
        self.rate_limit: float | None = None

    def flush_async(self) -> concurrent.futures.Future[object]:
        self.asked.append("flush_async")
        done: concurrent.futures.Future[object] = concurrent.futures.Future()
        done.set_result(None)
        return done

    def digests(self, offset: int, length: int, block_size: int, alg: str) -> list[bytes]:
        self.asked.append("digests")
        return [b"x"] * (length // block_size)

    def connect(self) -> object:
        self.asked.append("connect")
        return None

    @property
    def connected(self) -> bool:
        return False

    def status(self) -> dict[str, object]:
        return {"connected": False}

    def reset(self) -> None:
        self.asked.append("reset")

    def begin_resync(self) -> object:
        return None

    def end_resync(self) -> object:
        return None


def test_a_plain_medium_has_no_capabilities_and_the_fallbacks_serve() -> None:
    plain = SecondMedium(MemoryMedium(SIZE, "plain"))
    assert plain.capabilities == Capabilities()
    assert plain.linked is None and plain.connected and plain.status() == {}
    assert plain.close_run().done() and plain.connect() is None
    plain.reset()  # nothing to reset: nothing happens
    assert len(plain.digests(0, 2 * BLOCK, BLOCK)) == 2  # read back


def test_capabilities_are_resolved_once_and_used() -> None:
    link = _Link()
    second = SecondMedium(link)
    assert second.capabilities == Capabilities(
        pipelined=True, digests=True, digests_ahead=False, connects=True,
        knows_connection=True, reports=True, resets=True, linked=True, rate_limited=True)
    assert second.linked is link and not second.connected
    second.close_run()
    second.digests(0, 2 * BLOCK, BLOCK)
    second.connect()
    second.reset()
    assert link.asked == ["flush_async", "digests", "connect", "reset"]
    link.digests = None  # type: ignore[method-assign,assignment]  # gone later: not asked
    assert second.capabilities.digests
