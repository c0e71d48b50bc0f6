"""Fuzz targets: functions of one byte string that raise only when they find a bug.

Each target drives one parser that faces the outside through its public API and
checks properties on what comes out; an exception other than the parser's own
"you sent garbage" answer is a crash, :class:`FuzzFailure` a broken property.

- ``nbd``: the NBD server protocol core (``firmware/frontends/nbd/protocol.py``);
  the first input byte chooses raw bytes, or a valid handshake (GO with structured
  replies, or EXPORT_NAME) followed by fuzz bytes in the transmission phase.
- ``console``: the console grammar and built-in commands.
- ``record``: the NVRAM record decoder; raw images, and valid images with bits
  flipped (which must be rejected or read as a *larger* record, never smaller).
- ``link``: the mirror link's frame decoder and codec.
- ``peer``: the peer link (``firmware/peer/``): the serial and TCP byte framings, the
  message gate, and a pair core fed what the gate lets through; the first input byte
  chooses serial bytes, TCP bytes, or a CBOR body that the target signs with the key
  (so that the shapes behind the MAC are reached) for a record-holder or a primary.

The same targets serve atheris (``python -m tools.fuzz``) and the test suite
(``tests/fuzz``), which replays the kept corpus and a short random pass.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any


class FuzzFailure(AssertionError):
    """A property of the target does not hold for this input."""


def pieces(data: bytes, split: int) -> Iterator[bytes]:
    """Cut ``data`` the way a socket might: ``split`` picks the chunk size (>= 192: whole)."""
    if split >= 192 or not data:
        if data:
            yield data
        return
    size = 1 + split % 61
    for i in range(0, len(data), size):
        yield data[i:i + size]


# -- NBD ---------------------------------------------------------------------------------

_IHAVEOPT = 0x49484156454F5054
_OPT_EXPORT_NAME, _OPT_GO, _OPT_STRUCTURED_REPLY = 1, 7, 8
_CLIENT_FLAGS = struct.pack(">I", 0b11)  # fixed newstyle, no zeroes


def nbd_option(option: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", _IHAVEOPT, option, len(data)) + data


def nbd_request(command: int, handle: int, offset: int, length: int, flags: int = 0,
                data: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", 0x25609513, flags, command, handle, offset, length) + data


NBD_HANDSHAKES = (
    b"",
    _CLIENT_FLAGS + nbd_option(_OPT_STRUCTURED_REPLY)
    + nbd_option(_OPT_GO, struct.pack(">I", 6) + b"tandem" + struct.pack(">HH", 1, 3)),
    _CLIENT_FLAGS + nbd_option(_OPT_EXPORT_NAME, b"tandem"),
)


def _nbd_exports() -> tuple[Any, ...]:
    from firmware.frontends.nbd.protocol import Export

    return (Export("tandem", 1 << 20, minimum_block_size=512, maximum_payload_size=1 << 16),
            Export("ro", 64 << 10, read_only=True))


def fuzz_nbd(data: bytes) -> None:
    from firmware.frontends.nbd import protocol as p

    if len(data) < 2:
        return
    exports = _nbd_exports()
    conn = p.ServerConnection(exports)
    conn.data_to_send()
    stream = NBD_HANDSHAKES[data[0] % len(NBD_HANDSHAKES)] + data[2:]
    ended = False
    ready: Any = None
    for piece in [*pieces(stream, data[1]), b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not None:
            if ended:
                raise FuzzFailure(f"event {event!r:.100} after the session ended")
            if isinstance(event, p.Ready):
                if ready is not None:
                    raise FuzzFailure("two Ready events")
                if event.export not in exports:
                    raise FuzzFailure(f"Ready for an unknown export {event.export}")
                ready = event.export
            elif isinstance(event, (p.Disconnect, p.ProtocolViolation)):
                ended = True
            elif isinstance(event, p.InvalidRequest):
                conn.send_error(event.handle, event.error, event.reason)
            else:
                _nbd_answer(conn, ready, event)
            conn.data_to_send()


def _nbd_answer(conn: Any, export: Any, event: Any) -> None:
    from firmware.frontends.nbd import protocol as p

    if export is None:
        raise FuzzFailure(f"request {event!r:.100} before the handshake ended")
    if isinstance(event, p.FlushRequest):
        conn.send_ok(event.handle)
        return
    length = len(event.data) if isinstance(event, p.WriteRequest) else event.length
    if length <= 0 or event.offset < 0 or event.offset + length > export.size:
        raise FuzzFailure(f"{event!r:.100} passed outside the export ({export.size} bytes)")
    if (event.offset | length) % export.minimum_block_size:
        raise FuzzFailure(f"{event!r:.100} passed misaligned")
    if isinstance(event, p.ReadRequest):
        if length > export.maximum_payload_size:
            raise FuzzFailure(f"read of {length} bytes passed the payload limit")
        head, body = conn.send_read_reply(event.handle, event.offset, bytes(length))
        if len(body) != length:
            raise FuzzFailure("read reply carries the wrong amount of data")
        return
    if export.read_only:
        raise FuzzFailure(f"{event!r:.100} passed on a read-only export")
    conn.send_ok(event.handle)


# -- console -----------------------------------------------------------------------------


class ConsoleFuzzBackend:
    """Fixed answers for the console's commands."""

    def __init__(self) -> None:
        self.regions = [0, 1, 2, 3, 10, 12, 13, 4095]

    def status(self) -> dict[str, object]:
        return {"region_size": 65536, "volume_size": 1 << 28, "record_regions": 8,
                "mirror_state": "ordered", "mirror_error": None, "board": "fuzz",
                "uptime_s": 1.5, "mirror_lag_bytes": 0, "hits": 3}

    def record_regions(self) -> list[int]:
        return list(self.regions)

    def mirror_pause(self) -> None:
        pass

    def mirror_resume(self) -> None:
        pass


def fuzz_console(data: bytes) -> None:
    from firmware.console.commands import console_commands
    from firmware.console.grammar import PROMPT, ConsoleSession

    if len(data) < 2:
        return
    echo = bool(data[0] & 1)
    session = ConsoleSession(console_commands(ConsoleFuzzBackend()), echo=echo)
    session.greeting()
    prompt = PROMPT.encode()
    answered = False
    for piece in pieces(data[2:], data[1]):
        out = session.receive(piece)
        if echo:
            continue
        try:
            out.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FuzzFailure(f"console output is not UTF-8: {out[:80]!r}") from exc
        if out and not out.endswith(prompt):
            raise FuzzFailure(f"console answer does not end with the prompt: {out[-80:]!r}")
        answered = answered or bool(out)
    if not echo and answered != any(b in data[2:] for b in b"\r\n\x03"):
        raise FuzzFailure(f"console answered {answered} to {data[2:80]!r}")


# -- the NVRAM record --------------------------------------------------------------------


class RamNvram:
    """An NVRAM image in a bytearray."""

    def __init__(self, image: bytes | bytearray) -> None:
        self.data = bytearray(image)

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > len(self.data):
            raise ValueError(f"NVRAM range {offset}+{length} outside 0..{len(self.data)}")
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes) -> None:
        if offset < 0 or offset + len(data) > len(self.data):
            raise ValueError(f"NVRAM range {offset}+{len(data)} outside 0..{len(self.data)}")
        self.data[offset:offset + len(data)] = data

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        pass


def record_image(volume_size: int, region_size: int, regions: list[int],
                 nvram_size: int = 4096, adopted: bool = True) -> bytes:
    """A valid record image naming ``regions`` (both header slots used if ``adopted``)."""
    from firmware.record.layout import Geometry
    from firmware.record.store import NvramRecordStore

    nvram = RamNvram(bytes(nvram_size))
    store = NvramRecordStore(nvram)
    geometry = Geometry(volume_size, region_size, b"fuzz-volume-uuid")
    store.format(geometry, regions)
    if adopted:
        store.adopt(store.load())
    return bytes(nvram.data)


def fuzz_record(data: bytes) -> None:
    """Raw images must load or be refused; flipped valid images must not shrink."""
    from firmware.record.layout import BITMAP_OFFSET, LayoutError
    from firmware.record.store import NvramRecordStore

    if len(data) < 8:
        return
    if data[0] & 1:
        _record_raw(data[1:])
        return
    # A valid image from the input: geometry, regions, then bit flips.
    region_size = 4096 << (data[1] % 6)
    nregions = 1 + struct.unpack_from(">H", data, 2)[0] % 2000
    volume_size = nregions * region_size - (data[4] % 2) * 512
    count = data[5] % 64
    rest = data[6:]
    regions = sorted({int.from_bytes(rest[i:i + 2], "big") % nregions
                      for i in range(0, min(2 * count, len(rest) - 1), 2)})
    rest = rest[2 * count:]
    image = bytearray(record_image(volume_size, region_size, regions, adopted=bool(data[4] & 2)))
    bitmap_end = BITMAP_OFFSET + 2 * -(-nregions // 8)
    flipped: set[tuple[int, int]] = set()  # (pair, bit): each bit of a pair flipped in one rail
    for i in range(0, len(rest) - 2, 3):
        where = int.from_bytes(rest[i:i + 2], "big") % bitmap_end
        bit = rest[i + 2] % 8
        if where >= BITMAP_OFFSET:
            pair = (where - BITMAP_OFFSET) // 2
            if (pair, bit) in flipped:
                continue  # both rails of one bit: the one damage dual rail cannot see
            flipped.add((pair, bit))
        image[where] ^= 1 << bit
    try:
        loaded = NvramRecordStore(RamNvram(image)).load()
    except LayoutError:
        return  # refused: start-up does a full resync
    g = loaded.header.geometry
    if (g.volume_size, g.region_size) != (volume_size, region_size):
        raise FuzzFailure(f"flipped image read with another geometry {g}")
    missing = set(regions) - set(loaded.regions)
    if missing:
        raise FuzzFailure(f"flipped image lost regions {sorted(missing)[:10]}")


def _record_raw(image: bytes) -> None:
    from firmware.record.layout import LayoutError
    from firmware.record.store import NvramRecordStore

    # Real parts hold at least the two header slots; the content is what is fuzzed.
    image = image.ljust(256, b"\0")
    try:
        loaded = NvramRecordStore(RamNvram(image)).load()
    except LayoutError:
        return
    nregions = loaded.header.geometry.nregions
    if any(not 0 <= r < nregions for r in loaded.regions):
        raise FuzzFailure("a region outside the volume")
    if loaded.regions != sorted(set(loaded.regions)):
        raise FuzzFailure("regions not sorted and unique")


# -- the mirror link's frames ------------------------------------------------------------


def fuzz_link(data: bytes) -> None:
    from hal.media.remote.frames import (
        FrameDecoder,
        ProtocolError,
        decode_payload,
        encode_frame,
    )

    if len(data) < 2:
        return
    decoder = FrameDecoder(max_frame_size=1 << 16)
    for piece in pieces(data[2:], data[1]):
        decoder.feed(piece)
        while True:
            try:
                frame = decoder.next_frame()
            except ProtocolError:
                return
            if frame is None:
                break
            wire = encode_frame(frame)
            again = decode_payload(wire[4:])
            if again != frame:
                raise FuzzFailure(f"{frame!r:.100} does not survive encode/decode")


# -- the peer link -----------------------------------------------------------------------

PEER_KEY = b"fuzz-peer-key"
_PEER_MAX = 4096


_peer_boots: dict[str, Any] = {}


def _peer_core(role: str) -> Any:
    """A fresh core of node "b" (its FRAM formatted once per role: the core copies it)."""
    from firmware.peer.config import PairConfig, serial_link, tcp_link
    from firmware.peer.core import PairCore
    from firmware.peer.held import PairFram, PairState

    if role not in _peer_boots:
        fram = PairFram(RamNvram(bytes(4096)))
        fram.format(PairState("b", "a", role, held_complete=True), 16)
        config = PairConfig("b", "a", PEER_KEY, (tcp_link("tcp"), serial_link("serial")))
        _peer_boots[role] = (config, fram.open_boot())
    config, loaded = _peer_boots[role]
    return PairCore(config, loaded, now=0.0)


def _peer_payload(payload: bytes, role: str) -> None:
    from firmware.peer import frames as f
    from firmware.peer.events import FrameIn, LinkUp, Persist, Send, Tick

    gate = f.FrameGate(PEER_KEY, node="b", peer="a")
    try:
        frame = gate.open(payload)
    except f.Refusal as refusal:
        if refusal.header is not None and refusal.reason not in (
                "unknown-type", "malformed", "version", "replay", "source"):
            raise FuzzFailure(f"authentic frame refused as {refusal.reason}") from None
        return
    if f.decode(PEER_KEY, f.encode(PEER_KEY, frame)) != frame:
        raise FuzzFailure(f"{frame!r:.100} does not survive encode/decode")
    try:
        gate.open(payload)
    except f.Refusal:
        pass
    else:
        raise FuzzFailure("the same frame accepted twice")
    core = _peer_core(role)
    core.handle(0.0, LinkUp("tcp"))
    for event in (FrameIn("tcp", payload), Tick(), FrameIn("serial", payload), Tick()):
        for action in core.handle(0.5, event):
            if isinstance(action, Send) and f.decode(PEER_KEY, action.payload) != action.frame:
                raise FuzzFailure("the core sent a frame that does not decode")
            if isinstance(action, Persist) and not action.changes:
                raise FuzzFailure("an empty FRAM change")


def fuzz_peer(data: bytes) -> None:
    from firmware.peer import frames as f
    from firmware.peer.framing import SerialFrameDecoder, TcpFrameDecoder

    if len(data) < 2:
        return
    mode = data[0] % 4
    body = data[2:]
    if mode >= 2:
        _peer_payload(f.tag(PEER_KEY, body) + body, ("record-holder", "primary")[mode - 2])
        return
    decoder: Any = (SerialFrameDecoder if mode == 0 else TcpFrameDecoder)(_PEER_MAX)
    for piece in pieces(body, data[1]):
        for payload in decoder.feed(piece):
            if not 0 < len(payload) <= _PEER_MAX:
                raise FuzzFailure(f"a payload of {len(payload)} bytes")
            _peer_payload(payload, "record-holder")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "nbd": fuzz_nbd,
    "console": fuzz_console,
    "record": fuzz_record,
    "link": fuzz_link,
    "peer": fuzz_peer,
}


def seeds() -> dict[str, list[bytes]]:
    """Hand-made starting inputs per target (the corpus grows from these)."""
    go, name = b"\x01\xff", b"\x02\xff"
    out: dict[str, list[bytes]] = {
        "nbd": [
            b"\x00\xff" + NBD_HANDSHAKES[1],
            b"\x00\x07" + NBD_HANDSHAKES[2] + nbd_request(0, 1, 0, 512),
            go + nbd_request(1, 2, 4096, 512, 1, bytes(512)) + nbd_request(3, 3, 0, 0),
            go + nbd_request(0, 4, 0, 4096, 0) + nbd_request(4, 5, 0, 4096)
            + nbd_request(6, 6, 0, 8192, 2) + nbd_request(2, 7, 0, 0),
            name + nbd_request(0, 8, (1 << 20) - 512, 1024) + nbd_request(9, 9, 0, 1),
            b"\x00\xff" + _CLIENT_FLAGS + nbd_option(3) + nbd_option(6, struct.pack(">I", 2)
                                                                     + b"ro\x00\x00")
            + nbd_option(5) + nbd_option(2),
        ],
        "console": [
            b"\x00\xff" + b"status\r\n",
            b"\x00\x03" + b"status --json\r\nrecord --list\nrecord --count\r\n",
            b"\x01\xff" + b"mirror pause\rmirror resume\rmirror status\r",
            b"\x00\xff" + b"help\nhelp status\n\x1b[A\x08\x7fx\x15y\x03'unterminated\n",
            b"\x00\x10" + b"a" * 1100 + b"\n" + b"\xff\xfe\xc3\n",
        ],
        "record": [
            b"\x00\x00\x00\x10\x00\x02" + b"\x00\x01\x00\x05",
            b"\x00\x04\x01\x00\x02\x04" + b"\x00\x01\x00\x02\x00\x03\x00\x40" + b"\x00\x90\x03",
            b"\x01" + record_image(1 << 24, 65536, [1, 2, 200]),
            b"\x01" + record_image(1 << 20, 4096, [0, 255], adopted=False)[:200],
        ],
        "link": [],
        "peer": [],
    }
    try:
        out["link"] = _link_seeds()
    except ImportError:
        pass
    try:
        out["peer"] = _peer_seeds()
    except ImportError:
        pass
    return out


def _peer_seeds() -> list[bytes]:
    from firmware.peer import frames as f
    from firmware.peer.framing import encode_serial, encode_tcp

    hello = ("primary", False, "", (0, ""), 16, 0, 0, (1, 1), ("mark-runs",), False, True)
    messages: list[f.Message] = [
        f.Hello(*hello), f.HelloAck(1, *hello), f.Heartbeat(3000, 0, True),
        f.HeartbeatAck(1, 3000, 2), f.Mark(1, 1 << 33, ((0, 3, 0), (9, 1, 1))), f.MarkAck(1),
        f.Clear(2, ((0, 1 << 33), (1, 5))), f.ClearAck(2), f.ReconcileReq(3),
        f.Reconcile(3, 0, 1, ((4, 7, 2),)), f.ReconcileAck(3, 0),
        f.FenceNotice("lease", "took over", "a", (1, "")), f.Nak(4, "full", "")]
    sealer = f.FrameSealer(PEER_KEY, node="a", boot=1)
    payloads = [sealer.seal(m, epoch=1, ack=0, peer_boot=1)[1] for m in messages]
    out = [b"\x02\xff" + p[f.TAG_SIZE:] for p in payloads]
    out += [b"\x03\xff" + p[f.TAG_SIZE:] for p in payloads[:6]]
    out.append(b"\x00\x07" + b"".join(encode_serial(p) for p in payloads))
    out.append(b"\x01\xff" + b"".join(encode_tcp(p) for p in payloads[:4]))
    out.append(b"\x00\x0b" + b"noise\x00" + encode_serial(payloads[0])[:9]
               + encode_serial(payloads[1]))
    return out


def _link_seeds() -> list[bytes]:
    from hal.media.remote import frames as f

    samples = [
        ("Hello", (1, "sender", "volume-uuid", 1 << 20, "gen-2", ("gen-1",), True)),
        ("Challenge", (1, "receiver", b"\x01" * 32)),
        ("Response", (b"\x02" * 32,)),
        ("Write", (1, 0, 4096, b"w" * 64)),
        ("Zero", (1, 1, 0, 8192, True)),
        ("Barrier", (1, 2)),
        ("EpochAck", (1, True)),
        ("DigestReq", (1, 0, 65536, 4096, "blake2b-128")),
        ("Digests", (1, 0, 4096, "sha256", (b"\x00" * 16, b"\x01" * 16))),
        ("ReadReq", (2, 0, 4096)),
        ("Data", (2, 0, b"d" * 32)),
        ("State", (True, "gen-2", ("gen-1",))),
        ("Error", ("code", "a message")),
        ("Bye", ("done",)),
    ]
    out: list[bytes] = []
    stream = b""
    for name, values in samples:
        try:
            wire = f.encode_frame(getattr(f, name)(*values))
        except (AttributeError, TypeError, ValueError):
            continue  # the frame set changed: the fuzzer finds its way from the others
        out.append(b"\x00\xff" + wire)
        stream += wire
    out.append(b"\x00\x05" + stream)
    return out
