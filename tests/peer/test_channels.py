"""Active-active's two cores over one set of links (firmware/peer/channels.py)."""

from __future__ import annotations

from firmware.peer.channels import HOLDER, OWN, LinkMux, record_key
from firmware.peer.links import LinkCounters


class FakeLink:
    def __init__(self, url: str, on_payload, on_state) -> None:
        self.name = url
        self.kind = "tcp"
        self.counters = LinkCounters()
        self.last_error = None
        self.on_payload = on_payload
        self.on_state = on_state
        self.sent: list[bytes] = []
        self.started = 0
        self.closed = 0
        self._up = False

    @property
    def up(self) -> bool:
        return self._up

    @property
    def enabled(self) -> bool:
        return True

    def start(self) -> None:
        self.started += 1

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def set_enabled(self, enabled: bool) -> None:
        pass

    async def close(self) -> None:
        self.closed += 1


def test_each_core_gets_what_the_peer_sent_for_it() -> None:
    mux = LinkMux(("tcp://peer:1",), FakeLink)
    got: dict[str, list[bytes]] = {OWN: [], HOLDER: []}
    states: list[tuple[str, bool]] = []
    own = mux.channel(OWN)("tcp://peer:1", lambda url, p: got[OWN].append(p),
                           lambda url, up: states.append((OWN, up)))
    holder = mux.channel(HOLDER)("tcp://peer:1", lambda url, p: got[HOLDER].append(p),
                                 lambda url, up: states.append((HOLDER, up)))
    own.start()
    holder.start()
    real = mux.links["tcp://peer:1"]
    assert isinstance(real, FakeLink) and real.started == 1  # one real link for both
    own.send(b"mark")
    holder.send(b"mark-ack")
    assert real.sent == [b"\x01mark", b"\x02mark-ack"]
    # What the peer's own core sends (0x01) is for our holder core, and the other way.
    real.on_payload("tcp://peer:1", b"\x01their-mark")
    real.on_payload("tcp://peer:1", b"\x02our-ack")
    real.on_payload("tcp://peer:1", b"\x07garbage")
    real.on_payload("tcp://peer:1", b"")
    assert got == {OWN: [b"our-ack"], HOLDER: [b"their-mark"]}
    assert mux.misrouted == 2
    real.on_state("tcp://peer:1", True)
    assert sorted(states) == [(HOLDER, True), (OWN, True)]


def test_the_real_link_closes_with_its_last_channel() -> None:
    import asyncio

    mux = LinkMux(("serial",), FakeLink)
    own = mux.channel(OWN)("serial", lambda u, p: None, lambda u, up: None)
    holder = mux.channel(HOLDER)("serial", lambda u, p: None, lambda u, up: None)
    own.start()
    holder.start()
    real = mux.links["serial"]
    assert isinstance(real, FakeLink)
    asyncio.run(own.close())
    assert real.closed == 0
    asyncio.run(holder.close())
    assert real.closed == 1


def test_each_direction_has_its_own_key() -> None:
    key = b"k" * 32
    assert record_key(key, "a") != record_key(key, "b")
    assert record_key(key, "a") == record_key(key, "a") != key
