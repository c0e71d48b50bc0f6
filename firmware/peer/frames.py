"""The peer messages, their CBOR codec and their authentication — no I/O.

A payload (what framing.py carries) is a 16-byte tag and a CBOR map::

    tag = HMAC-SHA256(key, "tandem-peer\\0" | map)[:16]         (RFC 4868's -256-128)
    map = {"v": 1, "t": type, "src": node, "boot": n, "ep": epoch, "sq": n, "ack": n,
           "pb": n, ...the message's own keys}

``boot`` is the sender's boot counter (persisted in its FRAM before first use, so it only
grows); ``sq`` numbers every frame the sender sends in that boot, on every link alike,
from ``boot << 32`` (so sequence numbers never repeat across boots);
``ack`` is the highest ``sq`` it has accepted from the receiver; ``pb`` is the receiver's
boot the sender last heard of, so that an answer to a previous boot of the receiver is
recognised as stale (0: none heard yet). Unknown keys are ignored; an unknown ``t`` is
refused (the core answers NAK).

:class:`FrameGate` accepts a payload only if its tag verifies, it names the peer as its
source, it decodes to exactly the shape of a known message, and its ``(boot, sq)`` is
new: a frame from an older boot of the peer, or one already accepted (replayed, or
duplicated by the network), is refused. A window of ``REPLAY_WINDOW`` sequence numbers
absorbs the reordering between the two links; older ones are refused as replays. The
stale-epoch check needs the pair's state and is the core's (core.py). A refused frame
changes nothing but the gate's counters.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar, dataclass_transform

import cbor2

from hal.wire import (
    MAX_U64,
    Check,
    MalformedCbor,
    flag,
    list_of,
    one_of,
    strict_cbor,
    text,
    u64,
)

PROTOCOL_VERSION = 1
TAG_SIZE = 16
MAX_NAME = 16  # bytes of a node name in UTF-8 (the FRAM superblock stores 16)
MAX_MARK_RUNS = 4096
MAX_RUN = 1 << 20
MAX_CLEAR_ENTRIES = 4096
MAX_RECONCILE_ENTRIES = 1024
MAX_TEXT = 256
REPLAY_WINDOW = 16384
_MAC_DOMAIN = b"tandem-peer\0"

PRIMARY = "primary"
RECORD_HOLDER = "record-holder"

# Entry kinds in MARK and RECONCILE: why the writer names the region.
KIND_WRITE = 0  # a host write touches it
KIND_PREDICTED = 1  # the policy expects a write soon
KIND_RESYNC = 2  # it may differ already (found at start-up, handed over, inherited)
KINDS = (KIND_WRITE, KIND_PREDICTED, KIND_RESYNC)


# --- field checks ---------------------------------------------------------------------------


def _name(v: Any) -> bool:
    return type(v) is str and len(v.encode()) <= MAX_NAME


def _kind(v: Any) -> bool:
    return type(v) is int and v in KINDS


def _tuple_of(*checks: Check) -> Check:
    return lambda v: (type(v) is list and len(v) == len(checks)
                      and all(c(x) for c, x in zip(checks, v, strict=True)))


def _run(v: Any) -> bool:
    return (type(v) is list and len(v) == 3 and u64(v[0]) and type(v[1]) is int
            and 1 <= v[1] <= MAX_RUN and v[0] + v[1] - 1 <= MAX_U64 and _kind(v[2]))


_EPOCH_ID = _tuple_of(u64, _name)
_VERSIONS = _tuple_of(u64, u64)
_ROLE = one_of(PRIMARY, RECORD_HOLDER)
_TEXT = text(MAX_TEXT)


def wire(key: str, check: Check) -> Any:
    """A message field: its key in the CBOR map and the check its value must pass.
    Lists on the wire are tuples in Python (messages are frozen and hashable)."""
    return field(metadata={"key": key, "check": check})


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """The keys every frame carries (see the module's docstring)."""

    src: str
    boot: int
    ep: int
    sq: int
    ack: int
    pb: int


_HEADER_KEYS = {"v": u64, "t": u64, "src": _name, "boot": u64, "ep": u64, "sq": u64,
                "ack": u64, "pb": u64}


class Message:
    """Base of all message bodies; ``TYPE`` is ``t`` on the wire."""

    TYPE: ClassVar[int]
    NAME: ClassVar[str]


MESSAGE_TYPES: dict[int, type[Message]] = {}

_M = TypeVar("_M", bound=Message)


@dataclass_transform(frozen_default=True, field_specifiers=(wire,))
def _message(type_number: int, name: str) -> Callable[[type[_M]], type[_M]]:
    def register(cls: type[_M]) -> type[_M]:
        cls = dataclass(frozen=True, slots=True)(cls)
        for f in fields(cls):  # type: ignore[arg-type]  # a dataclass now
            key = f.metadata["key"]
            assert key not in _HEADER_KEYS, (cls, key)
            assert f.default is MISSING, (cls, f.name)
        cls.TYPE = type_number
        cls.NAME = name
        MESSAGE_TYPES[type_number] = cls
        return cls

    return register


EpochId = tuple[int, str]  # (number, the node that created it; "" for a formatted FRAM)


@_message(1, "HELLO")
class Hello(Message):
    """Who I am and where I stand: sent on every link until the peer answers, and again
    after every change of epoch or role."""

    role: str = wire("role", _ROLE)
    sole: bool = wire("sole", flag)  # I served alone at this epoch (took over)
    epoch_creator: str = wire("epc", _name)
    parent: EpochId = wire("par", _EPOCH_ID)
    capacity: int = wire("cap", u64)  # entries my FRAM holds for the peer
    held: int = wire("held", u64)
    intent: int = wire("int", u64)
    versions: tuple[int, int] = wire("pv", _VERSIONS)
    features: tuple[str, ...] = wire("feat", list_of(text(32), 16))
    yielding: bool = wire("yld", flag)  # an operator's rejoin: I give up my epoch
    handing_back: bool = wire("hbk", flag)  # failback: take back the primary role


@_message(2, "HELLO_ACK")
class HelloAck(Message):
    answers: int = wire("re", u64)
    role: str = wire("role", _ROLE)
    sole: bool = wire("sole", flag)
    epoch_creator: str = wire("epc", _name)
    parent: EpochId = wire("par", _EPOCH_ID)
    capacity: int = wire("cap", u64)
    held: int = wire("held", u64)
    intent: int = wire("int", u64)
    versions: tuple[int, int] = wire("pv", _VERSIONS)
    features: tuple[str, ...] = wire("feat", list_of(text(32), 16))
    yielding: bool = wire("yld", flag)
    handing_back: bool = wire("hbk", flag)


@_message(3, "HB")
class Heartbeat(Message):
    lease_request_ms: int = wire("lr", u64)  # 0: no lease wanted (the record-holder)
    held: int = wire("held", u64)
    covered: bool = wire("cov", flag)  # the writer: every region I may have written is
    #                                    in your record (so you may take over from it)


@_message(4, "HB_ACK")
class HeartbeatAck(Message):
    answers: int = wire("re", u64)
    lease_grant_ms: int = wire("lg", u64)  # 0: no lease
    held: int = wire("held", u64)


@_message(5, "MARK")
class Mark(Message):
    """Add regions to the record the receiver holds for me; ``runs`` are
    ``(first region, count, kind)``, all at generation ``gen``."""

    batch: int = wire("id", u64)
    gen: int = wire("g", u64)
    runs: tuple[tuple[int, int, int], ...] = wire("r", list_of(_run, MAX_MARK_RUNS))


@_message(6, "MARK_ACK")
class MarkAck(Message):
    """The batch is durable in the sender's FRAM."""

    batch: int = wire("id", u64)


@_message(7, "CLEAR")
class Clear(Message):
    """Remove ``(region, gen)`` entries, each only if the stored gen is not newer."""

    batch: int = wire("id", u64)
    entries: tuple[tuple[int, int], ...] = wire(
        "e", list_of(_tuple_of(u64, u64), MAX_CLEAR_ENTRIES))


@_message(8, "CLEAR_ACK")
class ClearAck(Message):
    batch: int = wire("id", u64)


@_message(9, "RECONCILE_REQ")
class ReconcileReq(Message):
    """Send me what your FRAM names (the record you hold for me, or your own sets)."""

    request: int = wire("id", u64)


@_message(10, "RECONCILE")
class Reconcile(Message):
    """One part of the answer: ``(region, gen, kind)`` entries."""

    request: int = wire("id", u64)
    part: int = wire("part", u64)
    parts: int = wire("parts", u64)
    entries: tuple[tuple[int, int, int], ...] = wire(
        "e", list_of(_tuple_of(u64, u64, _kind), MAX_RECONCILE_ENTRIES))


@_message(11, "RECONCILE_ACK")
class ReconcileAck(Message):
    """I have made that part durable in my own FRAM (a handover may let go of it)."""

    request: int = wire("id", u64)
    part: int = wire("part", u64)


@_message(12, "FENCE_NOTICE")
class FenceNotice(Message):
    """I took over: the epoch in the header is mine now; you must not serve."""

    method: str = wire("method", text(32))
    result: str = wire("result", _TEXT)
    epoch_creator: str = wire("epc", _name)
    parent: EpochId = wire("par", _EPOCH_ID)


@_message(13, "NAK")
class Nak(Message):
    """I refused your frame ``answers``: ``code`` says why."""

    answers: int = wire("re", u64)
    code: str = wire("code", text(32))
    detail: str = wire("detail", _TEXT)


@dataclass(frozen=True, slots=True)
class Frame:
    header: Header
    message: Message


# --- codec ----------------------------------------------------------------------------------


def _to_wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    return value


def _from_wire(value: Any) -> Any:
    if type(value) is list:
        return tuple(_from_wire(v) for v in value)
    return value


def tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _MAC_DOMAIN + body, hashlib.sha256).digest()[:TAG_SIZE]


def encode(key: bytes, frame: Frame) -> bytes:
    """The authenticated payload of ``frame``."""
    h = frame.header
    m = frame.message
    values: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": m.TYPE, "src": h.src,
                              "boot": h.boot, "ep": h.ep, "sq": h.sq, "ack": h.ack,
                              "pb": h.pb}
    for f in fields(m):  # type: ignore[arg-type]  # every Message is a dataclass
        values[f.metadata["key"]] = _to_wire(getattr(m, f.name))
    body = cbor2.dumps(values)
    return tag(key, body) + body


class Refusal(Exception):
    """Why a payload is not accepted; ``header`` is set when it was authentic, so the
    core may answer it (NAK)."""

    def __init__(self, reason: str, detail: str = "", header: Header | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.header = header


def decode(key: bytes, payload: bytes) -> Frame:
    """Check the tag and the shape; raise Refusal. No replay or source check (FrameGate)."""
    if len(payload) <= TAG_SIZE:
        raise Refusal("short", f"{len(payload)} bytes")
    body = payload[TAG_SIZE:]
    if not hmac.compare_digest(payload[:TAG_SIZE], tag(key, body)):
        raise Refusal("mac")
    try:
        value = strict_cbor(body, max_depth=4)
    except MalformedCbor as exc:
        raise Refusal("malformed", str(exc)) from None
    if type(value) is not dict or not all(type(k) is str for k in value):
        raise Refusal("malformed", "not a map with text keys")
    for k, check in _HEADER_KEYS.items():
        if k not in value or not check(value[k]):
            raise Refusal("malformed", f"header key {k!r}")
    header = Header(value["src"], value["boot"], value["ep"], value["sq"], value["ack"],
                    value["pb"])
    if value["v"] != PROTOCOL_VERSION:
        raise Refusal("version", f"version {value['v']}", header)
    cls = MESSAGE_TYPES.get(value["t"])
    if cls is None:
        raise Refusal("unknown-type", f"type {value['t']}", header)
    args: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]  # every Message is a dataclass
        k = f.metadata["key"]
        if k not in value or not f.metadata["check"](value[k]):
            raise Refusal("malformed", f"{cls.NAME}.{k}", header)
        args[f.name] = _from_wire(value[k])
    return Frame(header, cls(**args))


# --- the two ends ---------------------------------------------------------------------------


@dataclass
class GateCounters:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class FrameGate:
    """The receiving end: authentic, well-formed, from the peer, and not seen before."""

    def __init__(self, key: bytes, *, node: str, peer: str,
                 window: int = REPLAY_WINDOW) -> None:
        if not key:
            raise ValueError("empty peer key")
        self._key = key
        self._node = node
        self._peer = peer
        self._window = window
        self.peer_boot = 0  # the newest boot of the peer accepted so far (0: none)
        self._high = 0  # highest sq accepted in that boot
        self._seen = 0  # bit i: sq (high - i) accepted
        self.counters = GateCounters()

    def open(self, payload: bytes) -> Frame:
        """The frame in ``payload``; raise Refusal (and count it) otherwise."""
        try:
            frame = decode(self._key, payload)
            self._check_source(frame.header)
        except Refusal as refusal:
            self.counters.refuse(refusal.reason)
            raise
        self.counters.accepted += 1
        return frame

    def _check_source(self, h: Header) -> None:
        if h.src != self._peer:
            # Our own frames reflected back, or another pair's on a shared key.
            raise Refusal("source", f"from {h.src!r}")
        if h.boot < self.peer_boot:
            raise Refusal("replay", f"boot {h.boot} < {self.peer_boot}", h)
        if h.boot > self.peer_boot:
            self.peer_boot, self._high, self._seen = h.boot, h.sq, 1
            return
        if h.sq > self._high:
            shift = h.sq - self._high
            self._seen = ((self._seen << shift) | 1) & ((1 << self._window) - 1)
            self._high = h.sq
            return
        age = self._high - h.sq
        if age >= self._window or self._seen >> age & 1:
            raise Refusal("replay", f"sq {h.sq}", h)
        self._seen |= 1 << age

    @property
    def highest_sq(self) -> int:
        return self._high


class FrameSealer:
    """The sending end: numbers and authenticates frames for one boot of this node."""

    def __init__(self, key: bytes, *, node: str, boot: int) -> None:
        if not key:
            raise ValueError("empty peer key")
        self._key = key
        self._node = node
        self._boot = boot
        # Numbered from boot << 32: no two boots of a node share a sequence number, so an
        # answer naming one (HB_ACK, HELLO_ACK, NAK) can never be taken for an answer to
        # a frame of a later boot.
        self._sq = boot << 32

    @property
    def last_sq(self) -> int:
        return self._sq

    def seal(self, message: Message, *, epoch: int, ack: int, peer_boot: int
             ) -> tuple[Frame, bytes]:
        self._sq += 1
        frame = Frame(Header(self._node, self._boot, epoch, self._sq, ack, peer_boot), message)
        return frame, encode(self._key, frame)
