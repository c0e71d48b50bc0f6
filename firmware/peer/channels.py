"""Two cores over one set of links: active-active's two directions (issue 16).

In active-active each node runs its *own* core (its record, held at the peer) and the
*holder* core of the peer's record. Both talk to the peer over the same TCP and serial
links: ``LinkMux`` opens each real link once and gives each core a ``ChannelLink`` per
URL (the ``PeerLink`` protocol, so ``PairRuntime`` is unchanged). A channel byte before
each sealed payload says which core it is for: what a node's own core sends is for the
peer's holder core, and the other way round. Each direction also has its own key
(``record_key``), so a frame of one direction can never be taken for the other's even if
the byte were damaged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from firmware.peer.links import LinkCounters, PayloadSink, PeerLink, StateSink, TcpPeerLink

OWN, HOLDER = "own", "holder"
# The byte before a payload: about the sender's own record (the receiver's holder core
# takes it), or about the receiver's own record (its own core takes it).
_SENDERS_RECORD, _RECEIVERS_RECORD = 0x01, 0x02
_SENDS = {OWN: _SENDERS_RECORD, HOLDER: _RECEIVERS_RECORD}
_TAKES = {_SENDERS_RECORD: HOLDER, _RECEIVERS_RECORD: OWN}


def record_key(key: bytes, owner: str) -> bytes:
    """The key of one direction: the record of node ``owner``."""
    return hmac.new(key, b"tandem-pair-record:" + owner.encode(), hashlib.sha256).digest()


class LinkMux:
    """The real links, one per URL, shared by the node's two cores."""

    def __init__(self, urls: tuple[str, ...],
                 opener: Callable[[str, PayloadSink, StateSink], PeerLink]) -> None:
        self.links: dict[str, PeerLink] = {url: opener(url, self._payload, self._state)
                                           for url in urls}
        self._channels: dict[tuple[str, str], ChannelLink] = {}
        self._started: set[str] = set()
        self.misrouted = 0  # payloads without a known channel byte

    def tcp_link(self) -> TcpPeerLink | None:
        """The link a ``--peer-listen`` listener hands the peer's dial to."""
        return next((link for link in self.links.values() if isinstance(link, TcpPeerLink)),
                    None)

    def channel(self, kind: str) -> Callable[..., ChannelLink]:
        """The ``open_peer_link`` for the ``kind`` core's runtime."""
        def open_channel(url: str, on_payload: PayloadSink,
                         on_state: StateSink) -> ChannelLink:
            link = ChannelLink(self, kind, url, on_payload, on_state)
            self._channels[(kind, url)] = link
            return link
        return open_channel

    # -- from the real links -------------------------------------------------------

    def _payload(self, url: str, payload: bytes) -> None:
        kind = _TAKES.get(payload[0]) if payload else None
        channel = self._channels.get((kind, url)) if kind is not None else None
        if channel is None:
            self.misrouted += 1
            return
        channel.counters.frames_received += 1
        channel.counters.bytes_received += len(payload)
        channel.on_payload(url, payload[1:])

    def _state(self, url: str, up: bool) -> None:
        for kind in (OWN, HOLDER):
            channel = self._channels.get((kind, url))
            if channel is not None:
                channel.on_state(url, up)

    # -- for the channels ----------------------------------------------------------

    def start(self, url: str) -> None:
        if url not in self._started:
            self._started.add(url)
            self.links[url].start()

    async def release(self, kind: str, url: str) -> None:
        self._channels.pop((kind, url), None)
        if not any(u == url for _, u in self._channels) and url in self._started:
            self._started.discard(url)
            await self.links[url].close()


class ChannelLink:
    """One core's view of one real link (the ``PeerLink`` protocol)."""

    def __init__(self, mux: LinkMux, kind: str, url: str, on_payload: PayloadSink,
                 on_state: StateSink) -> None:
        self._mux = mux
        self._link = mux.links[url]
        self.kind_of_core = kind
        self.name = url
        self.kind = self._link.kind
        self.on_payload = on_payload
        self.on_state = on_state
        self.counters = LinkCounters()
        self._prefix = bytes([_SENDS[kind]])

    @property
    def last_error(self) -> str | None:
        return self._link.last_error

    @property
    def up(self) -> bool:
        return self._link.up

    @property
    def enabled(self) -> bool:
        return self._link.enabled

    def start(self) -> None:
        self._mux.start(self.name)
        if self._link.up:
            self.on_state(self.name, True)

    def send(self, payload: bytes) -> None:
        self.counters.frames_sent += 1
        self.counters.bytes_sent += len(payload) + 1
        self._link.send(self._prefix + payload)

    def set_enabled(self, enabled: bool) -> None:
        self._link.set_enabled(enabled)  # one cable: both directions go up or down

    async def close(self) -> None:
        await self._mux.release(self.kind_of_core, self.name)

