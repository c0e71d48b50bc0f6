"""The link protocol core: frames, their codec, and both ends' state machines — no I/O.

On the wire a frame is a 4-byte big-endian payload length and a CBOR array
``[type, field...]``. The decoder accepts nothing but the exact shapes below;
anything else (oversized, truncated CBOR, trailing bytes, a wrong field type,
a tag, a frame out of turn) is a ``ProtocolError`` and the connection is dropped.

A session::

    sender                               receiver
    CHALLENGE(version, "sender", Ns) ->
                                     <-  CHALLENGE(version, "receiver", Nr)
    RESPONSE(mac_s)                  ->  (checked: wrong key -> ERROR, close)
                                     <-  RESPONSE(mac_r), HELLO(receiver state)
    HELLO(sender state) or ERROR     ->  (both ends run generations.decide)
    WRITE/ZERO(epoch, seq, ...)...   ->  staged, not applied
    BARRIER(epoch, count)            ->  journal, apply the whole epoch, flush
                                     <-  EPOCH_ACK(epoch, durable=True)
    DIGEST_REQ / READ_REQ            <-> DIGESTS / DATA (answered in stream order)
    STATE(consistent, generation)    <-> STATE(receiver's state after persisting it)
    BYE / ERROR

Each side proves the key with HMAC-SHA256 over both nonces and its own role, so
a response cannot be reflected back; the sender proves first, so a peer without
the key learns nothing and gets nothing written.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar, TypeVar, dataclass_transform

import cbor2

from hal.media.remote.generations import MAX_HISTORY, Decision, SyncState, decide, explain
from hal.wire import (
    Check,
    MalformedCbor,
    blob,
    flag,
    list_of,
    maybe,
    one_of,
    strict_cbor,
    text,
    u64,
)

PROTOCOL_VERSION = 1
MAX_DATA = 4 * 1024 * 1024  # bytes in one WRITE or DATA frame (a longer write takes several)
MAX_DIGESTS = 65536  # digests in one DIGESTS frame
MAX_FRAME_SIZE = MAX_DATA + 64 * 1024  # payload bytes, CBOR overhead included
MAX_TEXT = 1024
MAX_ID = 64  # volume uuid and generation ids
NONCE_SIZE = 32
MIN_BLOCK = 512
MAX_BLOCK = 1024 * 1024
SENDER = "sender"
RECEIVER = "receiver"

_PREFIX = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; drop the connection."""


# --- digests -----------------------------------------------------------------------------

DIGEST_ALGS: dict[str, Callable[[bytes | memoryview], bytes]] = {
    "blake2b-128": lambda block: hashlib.blake2b(block, digest_size=16).digest(),
    "sha256": lambda block: hashlib.sha256(block).digest(),
}
DEFAULT_DIGEST_ALG = "blake2b-128"


def block_digests(data: bytes, block_size: int, alg: str = DEFAULT_DIGEST_ALG) -> list[bytes]:
    """Digest of each ``block_size`` block of ``data`` (the last one may be short)."""
    digest = DIGEST_ALGS[alg]
    view = memoryview(data)
    return [digest(view[i:i + block_size]) for i in range(0, len(data), block_size)]


def digest_count(length: int, block_size: int) -> int:
    return -(-length // block_size)


# --- field checks ------------------------------------------------------------------------

_TEXT = text(MAX_TEXT)
_ROLE = one_of(SENDER, RECEIVER)
_ID = text(MAX_ID)
_NONCE = lambda v: type(v) is bytes and len(v) == NONCE_SIZE  # noqa: E731
_MAC = lambda v: type(v) is bytes and len(v) == hashlib.sha256().digest_size  # noqa: E731
_ALG = one_of(*DIGEST_ALGS)


# --- frames ------------------------------------------------------------------------------


class Frame:
    """Base of all frames; ``TYPE`` is the number on the wire, ``CHECKS`` one per field."""

    TYPE: ClassVar[int]
    CHECKS: ClassVar[tuple[Check, ...]]


FRAME_TYPES: dict[int, type[Frame]] = {}


_F = TypeVar("_F", bound=Frame)


@dataclass_transform(frozen_default=True)
def _frame(type_number: int, *checks: Check) -> Callable[[type[_F]], type[_F]]:
    def register(cls: type[_F]) -> type[_F]:
        cls = dataclass(frozen=True, slots=True)(cls)
        assert len(fields(cls)) == len(checks), cls  # type: ignore[arg-type]  # a dataclass now
        cls.TYPE = type_number
        cls.CHECKS = checks
        FRAME_TYPES[type_number] = cls
        return cls

    return register


@_frame(1, u64, _ROLE, maybe(_ID), u64, maybe(_ID), list_of(_ID, MAX_HISTORY), flag)
class Hello(Frame):
    """Who I am once authenticated: my copy's size and generations."""

    version: int
    role: str
    volume_uuid: str | None
    size: int
    current: str | None
    history: tuple[str, ...] | list[str]
    consistent: bool

    def sync_state(self) -> SyncState:
        return SyncState(self.volume_uuid, self.current, tuple(self.history), self.consistent)


@_frame(2, u64, _ROLE, _NONCE)
class Challenge(Frame):
    version: int
    role: str
    nonce: bytes


@_frame(3, _MAC)
class Response(Frame):
    mac: bytes


@_frame(4, u64, u64, u64, blob(MAX_DATA))
class Write(Frame):
    epoch: int
    seq: int
    offset: int
    data: bytes


@_frame(5, u64, u64, u64, u64, flag)
class Zero(Frame):
    epoch: int
    seq: int
    offset: int
    length: int
    punch: bool


@_frame(6, u64, u64)
class Barrier(Frame):
    """Closes ``epoch``, which held ``count`` WRITE/ZERO frames (seq 0..count-1)."""

    epoch: int
    count: int


@_frame(7, u64, flag)
class EpochAck(Frame):
    """``durable``: applied and flushed; False: received whole, being applied."""

    epoch: int
    durable: bool


@_frame(8, u64, u64, u64, u64, _ALG)
class DigestReq(Frame):
    req_id: int
    offset: int
    length: int
    block_size: int
    alg: str


@_frame(9, u64, u64, u64, _ALG, list_of(blob(64), MAX_DIGESTS))
class Digests(Frame):
    req_id: int
    offset: int
    block_size: int
    alg: str
    digests: tuple[bytes, ...] | list[bytes]


@_frame(10, u64, u64, u64)
class ReadReq(Frame):
    req_id: int
    offset: int
    length: int


@_frame(11, u64, u64, blob(MAX_DATA))
class Data(Frame):
    req_id: int
    offset: int
    data: bytes


@_frame(12, flag, maybe(_ID), list_of(_ID, MAX_HISTORY))
class State(Frame):
    """Sender -> receiver: become (in)consistent; consistent also hands over the generation.

    Receiver -> sender: the receiver's state once it is persisted (the answer).
    """

    consistent: bool
    current: str | None
    history: tuple[str, ...] | list[str]


@_frame(13, text(64), _TEXT)
class Error(Frame):
    code: str
    message: str


@_frame(14, _TEXT)
class Bye(Frame):
    reason: str


def encode_frame(frame: Frame) -> bytes:
    values: list[Any] = [frame.TYPE]
    for f in fields(frame):  # type: ignore[arg-type]  # every Frame is a dataclass (_frame)
        v = getattr(frame, f.name)
        values.append(list(v) if isinstance(v, tuple) else v)
    payload = cbor2.dumps(values)
    if len(payload) > MAX_FRAME_SIZE:
        raise ValueError(f"frame too large ({len(payload)} bytes)")
    return _PREFIX.pack(len(payload)) + payload


def decode_payload(payload: bytes) -> Frame:
    """One frame from its CBOR payload; anything but an exact frame is a ProtocolError."""
    try:
        value = strict_cbor(payload, max_depth=2)
    except MalformedCbor as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if type(value) is not list or not value or type(value[0]) is not int:
        raise ProtocolError("frame is not [type, fields...]")
    cls = FRAME_TYPES.get(value[0])
    if cls is None:
        raise ProtocolError(f"unknown frame type {value[0]}")
    args = value[1:]
    if len(args) != len(cls.CHECKS):
        raise ProtocolError(f"{cls.__name__}: {len(args)} fields, expected {len(cls.CHECKS)}")
    for f, check, v in zip(fields(cls), cls.CHECKS, args,  # type: ignore[arg-type]  # _frame
                           strict=True):
        if not check(v):
            raise ProtocolError(f"{cls.__name__}.{f.name}: bad value {v!r:.60}")
    return cls(*(tuple(v) if type(v) is list else v for v in args))


class FrameDecoder:
    """Splits a byte stream into frames. After a ProtocolError it stays broken."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive."""
        if self._broken is not None:
            raise self._broken
        try:
            return self._next_frame()
        except ProtocolError as exc:
            self._broken = exc
            raise

    def _next_frame(self) -> Frame | None:
        if self.buffered < _PREFIX.size:
            return None
        (length,) = _PREFIX.unpack_from(self._buf, self._pos)
        if length == 0 or length > self._max:
            raise ProtocolError(f"frame length {length} outside 1..{self._max}")
        end = self._pos + _PREFIX.size + length
        if len(self._buf) < end:
            return None
        with memoryview(self._buf) as view:
            payload = bytes(view[self._pos + _PREFIX.size:end])
        self._pos = end
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > (1 << 20):
            del self._buf[:self._pos]
            self._pos = 0
        return decode_payload(payload)


# --- authentication ----------------------------------------------------------------------


def auth_mac(key: bytes, role: str, challenger_nonce: bytes, responder_nonce: bytes) -> bytes:
    """What ``role`` answers to the peer's challenge: bound to both nonces and to its role."""
    message = b"".join((
        b"tandem-link-auth\0",
        PROTOCOL_VERSION.to_bytes(2, "big"),
        role.encode(), b"\0",
        challenger_nonce,
        responder_nonce,
    ))
    return hmac.new(key, message, hashlib.sha256).digest()


# --- state machines ----------------------------------------------------------------------


class Phase(Enum):
    CHALLENGE = "await challenge"
    RESPONSE = "await response"
    HELLO = "await hello"
    READY = "ready"
    CLOSED = "closed"


class _Endpoint:
    """What both ends share: the outgoing bytes, the phase, error and bye."""

    ROLE: ClassVar[str]
    PEER_ROLE: ClassVar[str]

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if not key:
            raise ValueError("empty link key")
        if len(nonce) != NONCE_SIZE:
            raise ValueError("nonce must be 32 random bytes")
        self._key = key
        self._nonce = nonce
        self._peer_nonce = b""
        self._out: list[bytes] = []
        self.phase = Phase.CHALLENGE
        self.peer: Hello | None = None  # the peer's HELLO, once received
        self.decision: Decision | None = None

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def take_outgoing(self) -> list[bytes]:
        """Encoded frames to send, in order; the caller sends them all."""
        out, self._out = self._out, []
        return out

    def _send(self, frame: Frame) -> None:
        self._out.append(encode_frame(frame))

    def fail(self, code: str, message: str) -> None:
        """Tell the peer why we hang up (best effort) and close."""
        if self.phase is not Phase.CLOSED:
            self._send(Error(code[:64], message[:MAX_TEXT]))
            self.phase = Phase.CLOSED

    def bye(self, reason: str = "") -> None:
        if self.phase is not Phase.CLOSED:
            self._send(Bye(reason[:MAX_TEXT]))
            self.phase = Phase.CLOSED

    def _expect(self, frame: Frame, phase: Phase, cls: type[Frame]) -> None:
        if self.phase is not phase or not isinstance(frame, cls):
            raise ProtocolError(f"{type(frame).__name__} while {self.phase.value}")

    def _check_challenge(self, frame: Challenge) -> None:
        if frame.version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {frame.version}, this end speaks "
                                f"{PROTOCOL_VERSION}")
        if frame.role != self.PEER_ROLE:
            raise ProtocolError(f"peer claims role {frame.role!r}, expected {self.PEER_ROLE!r}")
        if hmac.compare_digest(frame.nonce, self._nonce):
            raise ProtocolError("peer echoed our nonce")
        self._peer_nonce = frame.nonce

    def _response_ok(self, frame: Response) -> bool:
        expected = auth_mac(self._key, self.PEER_ROLE, self._nonce, self._peer_nonce)
        return hmac.compare_digest(frame.mac, expected)

    def _my_response(self) -> Response:
        return Response(auth_mac(self._key, self.ROLE, self._peer_nonce, self._nonce))

    def _check_hello(self, frame: Hello) -> None:
        if frame.version != PROTOCOL_VERSION or frame.role != self.PEER_ROLE:
            raise ProtocolError("HELLO with wrong version or role")


# Sender events: what the receiver told us.


@dataclass(frozen=True)
class Connected:
    decision: Decision
    remote: SyncState
    remote_size: int
    explanation: str


@dataclass(frozen=True)
class Refused:
    """The handshake failed: wrong key (code "auth"), generations or size."""

    code: str
    message: str
    decision: Decision | None = None


@dataclass(frozen=True)
class EpochAcked:
    epoch: int
    durable: bool


@dataclass(frozen=True)
class DigestsReceived:
    req_id: int
    offset: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True)
class DataReceived:
    req_id: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class RemoteState:
    state: SyncState


@dataclass(frozen=True)
class PeerClosed:
    """The receiver hung up: ERROR (``code`` set) or BYE."""

    code: str | None
    message: str


SenderEvent = (Connected | Refused | EpochAcked | DigestsReceived | DataReceived | RemoteState
               | PeerClosed)


class SenderMachine(_Endpoint):
    """The appliance end: authenticates, compares generations, numbers epochs and requests."""

    ROLE = SENDER
    PEER_ROLE = RECEIVER

    def __init__(self, key: bytes, *, state: SyncState, size: int, nonce: bytes) -> None:
        super().__init__(key, nonce)
        self.state = state
        self.size = size
        self.epoch = 1  # the open epoch
        self._seq = 0  # WRITE/ZERO frames in the open epoch
        self._unacked: list[int] = []  # closed epochs awaiting EPOCH_ACK(durable), oldest first
        self._next_req = 1
        self._requests: dict[int, DigestReq | ReadReq] = {}
        self._state_requests = 0

    def start(self) -> None:
        self._send(Challenge(PROTOCOL_VERSION, SENDER, self._nonce))

    @property
    def unacked_epochs(self) -> tuple[int, ...]:
        return tuple(self._unacked)

    @property
    def ops_in_epoch(self) -> int:
        return self._seq

    def receive_frame(self, frame: Frame) -> list[SenderEvent]:
        """Digest one frame from the receiver. Raises ProtocolError if it is out of turn."""
        if isinstance(frame, Error):
            self.phase = Phase.CLOSED
            if frame.code == "auth":
                return [Refused("auth", f"receiver: {frame.message}")]
            return [PeerClosed(frame.code, frame.message)]
        if isinstance(frame, Bye):
            self.phase = Phase.CLOSED
            return [PeerClosed(None, frame.reason)]
        if self.phase is Phase.CHALLENGE:
            self._expect(frame, Phase.CHALLENGE, Challenge)
            assert isinstance(frame, Challenge)
            self._check_challenge(frame)
            self._send(self._my_response())
            self.phase = Phase.RESPONSE
            return []
        if self.phase is Phase.RESPONSE:
            self._expect(frame, Phase.RESPONSE, Response)
            assert isinstance(frame, Response)
            if not self._response_ok(frame):
                self.fail("auth", "receiver failed authentication")
                return [Refused("auth", "the receiver does not know the link key")]
            self.phase = Phase.HELLO
            return []
        if self.phase is Phase.HELLO:
            self._expect(frame, Phase.HELLO, Hello)
            assert isinstance(frame, Hello)
            return [self._on_hello(frame)]
        if self.phase is Phase.READY:
            return self._on_ready_frame(frame)
        raise ProtocolError(f"{type(frame).__name__} after close")

    def _on_hello(self, frame: Hello) -> SenderEvent:
        self._check_hello(frame)
        self.peer = frame
        remote = frame.sync_state()
        self.decision = decide(self.state, remote)
        text = explain(self.decision, self.state, remote)
        if self.decision.refused:
            self.fail(self.decision.value, text)
            return Refused(self.decision.value, text, self.decision)
        if frame.size < self.size:
            message = f"remote medium has {frame.size} bytes, the volume needs {self.size}"
            self.fail("size", message)
            return Refused("size", message, self.decision)
        s = self.state
        self._send(Hello(PROTOCOL_VERSION, SENDER, s.volume_uuid, self.size, s.current,
                         s.history, s.consistent))
        self.phase = Phase.READY
        return Connected(self.decision, remote, frame.size, text)

    def _on_ready_frame(self, frame: Frame) -> list[SenderEvent]:
        if isinstance(frame, EpochAck):
            if not self._unacked or frame.epoch != self._unacked[0]:
                raise ProtocolError(f"EPOCH_ACK for epoch {frame.epoch}, "
                                    f"awaiting {self._unacked[:1]}")
            if frame.durable:
                self._unacked.pop(0)
            return [EpochAcked(frame.epoch, frame.durable)]
        if isinstance(frame, Digests):
            req = self._requests.pop(frame.req_id, None)
            if (not isinstance(req, DigestReq) or frame.offset != req.offset
                    or frame.block_size != req.block_size or frame.alg != req.alg
                    or len(frame.digests) != digest_count(req.length, req.block_size)):
                raise ProtocolError(f"DIGESTS {frame.req_id} does not answer a request")
            return [DigestsReceived(frame.req_id, frame.offset, tuple(frame.digests))]
        if isinstance(frame, Data):
            req = self._requests.pop(frame.req_id, None)
            if (not isinstance(req, ReadReq) or frame.offset != req.offset
                    or len(frame.data) != req.length):
                raise ProtocolError(f"DATA {frame.req_id} does not answer a request")
            return [DataReceived(frame.req_id, frame.offset, frame.data)]
        if isinstance(frame, State):
            if self._state_requests == 0:
                raise ProtocolError("unsolicited STATE")
            self._state_requests -= 1
            # Once accepted, the receiver is a copy of our volume (it adopted the uuid).
            return [RemoteState(SyncState(self.state.volume_uuid, frame.current,
                                          tuple(frame.history), frame.consistent))]
        raise ProtocolError(f"{type(frame).__name__} from the receiver")

    # Commands: each queues frames; the caller sends take_outgoing().

    def _require_ready(self) -> None:
        if self.phase is not Phase.READY:
            raise RuntimeError(f"link not ready ({self.phase.value})")

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside the volume ({self.size} bytes)")

    def write(self, offset: int, data: bytes) -> None:
        self._require_ready()
        self._check_range(offset, len(data))
        view = memoryview(data)
        for start in range(0, len(data), MAX_DATA):
            chunk = bytes(view[start:start + MAX_DATA])
            self._send(Write(self.epoch, self._seq, offset + start, chunk))
            self._seq += 1

    def write_zeroes(self, offset: int, length: int, punch: bool = False) -> None:
        self._require_ready()
        self._check_range(offset, length)
        if length:
            self._send(Zero(self.epoch, self._seq, offset, length, punch))
            self._seq += 1

    def barrier(self) -> int:
        """Close the open epoch; returns its number (await EpochAcked for it)."""
        self._require_ready()
        epoch = self.epoch
        self._send(Barrier(epoch, self._seq))
        self._unacked.append(epoch)
        self.epoch += 1
        self._seq = 0
        return epoch

    def request_digests(self, offset: int, length: int, block_size: int,
                        alg: str = DEFAULT_DIGEST_ALG) -> int:
        self._require_ready()
        self._check_range(offset, length)
        if not _valid_block_size(block_size) or alg not in DIGEST_ALGS:
            raise ValueError(f"block size {block_size} / digest {alg!r} not supported")
        if digest_count(length, block_size) > MAX_DIGESTS:
            raise ValueError("too many blocks for one request")
        req = DigestReq(self._new_req_id(), offset, length, block_size, alg)
        self._requests[req.req_id] = req
        self._send(req)
        return req.req_id

    def request_read(self, offset: int, length: int) -> int:
        self._require_ready()
        self._check_range(offset, length)
        if length > MAX_DATA:
            raise ValueError("read longer than one DATA frame")
        req = ReadReq(self._new_req_id(), offset, length)
        self._requests[req.req_id] = req
        self._send(req)
        return req.req_id

    def send_state(self, consistent: bool) -> None:
        """Consistent=False before a resync; True after it, handing over our generation."""
        self._require_ready()
        if self._seq:
            raise RuntimeError("close the epoch before changing the remote's state")
        if consistent:
            self._send(State(True, self.state.current, self.state.history))
        else:
            self._send(State(False, None, ()))
        self._state_requests += 1

    def _new_req_id(self) -> int:
        req_id = self._next_req
        self._next_req += 1
        return req_id


def _valid_block_size(block_size: int) -> bool:
    return MIN_BLOCK <= block_size <= MAX_BLOCK and block_size & (block_size - 1) == 0


# Receiver actions: what the I/O layer must do, in order, before the next frame.


@dataclass(frozen=True)
class SessionStarted:
    """Authenticated and accepted; ``state`` is ours to persist (a blank copy adopts the uuid)."""

    decision: Decision
    sender: SyncState
    state: SyncState
    explanation: str


@dataclass(frozen=True)
class SessionRefused:
    code: str
    message: str


@dataclass(frozen=True)
class Stage:
    """Keep this WRITE/ZERO for the open epoch; do not touch the medium yet."""

    op: Write | Zero


@dataclass(frozen=True)
class CommitEpoch:
    """The epoch is whole: make it durable and apply it, then call ``epoch_durable``."""

    epoch: int
    count: int


@dataclass(frozen=True)
class ComputeDigests:
    request: DigestReq


@dataclass(frozen=True)
class ReadData:
    request: ReadReq


@dataclass(frozen=True)
class ChangeState:
    """Persist ``state`` (run the before-resync hook first if ``before_resync``)."""

    state: SyncState
    before_resync: bool


@dataclass(frozen=True)
class SessionEnded:
    code: str | None
    message: str


ReceiverAction = (SessionStarted | SessionRefused | Stage | CommitEpoch | ComputeDigests
                  | ReadData | ChangeState | SessionEnded)


class ReceiverMachine(_Endpoint):
    """The remote end: checks the key and every frame, groups writes into whole epochs."""

    ROLE = RECEIVER
    PEER_ROLE = SENDER

    def __init__(self, key: bytes, *, local_state: Callable[[], SyncState], size: int,
                 nonce: bytes) -> None:
        super().__init__(key, nonce)
        self._local_state = local_state
        self.state = local_state()
        self.size = size
        self.sender: SyncState | None = None
        self.epoch = 1  # the epoch being received
        self._seq = 0

    @property
    def ops_in_epoch(self) -> int:
        return self._seq

    def receive_frame(self, frame: Frame) -> list[ReceiverAction]:
        """Digest one frame from the sender. Raises ProtocolError if it is out of turn."""
        if isinstance(frame, Error | Bye):
            self.phase = Phase.CLOSED
            if isinstance(frame, Error):
                return [SessionEnded(frame.code, frame.message)]
            return [SessionEnded(None, frame.reason)]
        if self.phase is Phase.CHALLENGE:
            self._expect(frame, Phase.CHALLENGE, Challenge)
            assert isinstance(frame, Challenge)
            self._check_challenge(frame)
            self._send(Challenge(PROTOCOL_VERSION, RECEIVER, self._nonce))
            self.phase = Phase.RESPONSE
            return []
        if self.phase is Phase.RESPONSE:
            self._expect(frame, Phase.RESPONSE, Response)
            assert isinstance(frame, Response)
            if not self._response_ok(frame):
                self.fail("auth", "authentication failed")
                return [SessionRefused("auth", "sender failed authentication (wrong key?)")]
            self.state = self._local_state()
            s = self.state
            self._send(self._my_response())
            self._send(Hello(PROTOCOL_VERSION, RECEIVER, s.volume_uuid, self.size, s.current,
                             s.history, s.consistent))
            self.phase = Phase.HELLO
            return []
        if self.phase is Phase.HELLO:
            self._expect(frame, Phase.HELLO, Hello)
            assert isinstance(frame, Hello)
            return [self._on_hello(frame)]
        if self.phase is Phase.READY:
            return self._on_ready_frame(frame)
        raise ProtocolError(f"{type(frame).__name__} after close")

    def _on_hello(self, frame: Hello) -> ReceiverAction:
        self._check_hello(frame)
        if frame.volume_uuid is None or frame.current is None:
            raise ProtocolError("sender HELLO without volume uuid or generation")
        self.peer = frame
        self.sender = frame.sync_state()
        self.decision = decide(self.sender, self.state)
        text = explain(self.decision, self.sender, self.state)
        if self.decision.refused:
            self.fail(self.decision.value, text)
            return SessionRefused(self.decision.value, text)
        if frame.size > self.size:
            message = f"volume of {frame.size} bytes does not fit this medium ({self.size})"
            self.fail("size", message)
            return SessionRefused("size", message)
        if self.state.volume_uuid is None:
            # A blank copy becomes a copy of this volume (still inconsistent: no data yet).
            self.state = SyncState(frame.volume_uuid, None, (), False)
        self.phase = Phase.READY
        return SessionStarted(self.decision, self.sender, self.state, text)

    def _check_range(self, what: str, offset: int, length: int) -> None:
        if offset + length > self.size:
            raise ProtocolError(f"{what} {offset}+{length} beyond the medium ({self.size})")

    def _on_ready_frame(self, frame: Frame) -> list[ReceiverAction]:
        if isinstance(frame, Write | Zero):
            if frame.epoch != self.epoch or frame.seq != self._seq:
                raise ProtocolError(f"write {frame.epoch}/{frame.seq} out of order, "
                                    f"expected {self.epoch}/{self._seq}")
            length = len(frame.data) if isinstance(frame, Write) else frame.length
            self._check_range(type(frame).__name__.upper(), frame.offset, length)
            self._seq += 1
            return [Stage(frame)]
        if isinstance(frame, Barrier):
            if frame.epoch != self.epoch or frame.count != self._seq:
                raise ProtocolError(f"BARRIER {frame.epoch}/{frame.count} does not close "
                                    f"epoch {self.epoch} of {self._seq} writes")
            self.epoch += 1
            self._seq = 0
            # "Received whole": tells the sender the link is alive while the epoch is applied.
            self._send(EpochAck(frame.epoch, False))
            return [CommitEpoch(frame.epoch, frame.count)]
        if isinstance(frame, DigestReq):
            if (not _valid_block_size(frame.block_size)
                    or digest_count(frame.length, frame.block_size) > MAX_DIGESTS):
                raise ProtocolError("DIGEST_REQ with bad block size or too many blocks")
            self._check_range("DIGEST_REQ", frame.offset, frame.length)
            return [ComputeDigests(frame)]
        if isinstance(frame, ReadReq):
            if frame.length > MAX_DATA:
                raise ProtocolError("READ_REQ longer than one DATA frame")
            self._check_range("READ_REQ", frame.offset, frame.length)
            return [ReadData(frame)]
        if isinstance(frame, State):
            return [self._on_state(frame)]
        raise ProtocolError(f"{type(frame).__name__} from the sender")

    def _on_state(self, frame: State) -> ReceiverAction:
        if self._seq:
            raise ProtocolError("STATE inside an open epoch")
        assert self.sender is not None
        if frame.consistent:
            if frame.current is None:
                raise ProtocolError("STATE consistent without a generation")
            handed = SyncState(self.sender.volume_uuid, frame.current, tuple(frame.history), True)
            return ChangeState(self.state.adopting(handed), before_resync=False)
        new = SyncState(self.state.volume_uuid, self.state.current, self.state.history, False)
        return ChangeState(new, before_resync=self.state.consistent)

    # Answers, once the I/O layer has done the action.

    def epoch_durable(self, epoch: int) -> None:
        self._send(EpochAck(epoch, True))

    def send_digests(self, request: DigestReq, digests: list[bytes]) -> None:
        self._send(Digests(request.req_id, request.offset, request.block_size, request.alg,
                           digests))

    def send_data(self, request: ReadReq, data: bytes) -> None:
        self._send(Data(request.req_id, request.offset, data))

    def state_persisted(self, state: SyncState) -> None:
        self.state = state
        self._send(State(state.consistent, state.current, state.history))
