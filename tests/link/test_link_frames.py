"""The link's frame codec: exact round trips, and garbage is only ever a ProtocolError."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hal.media.remote.frames import (
    FRAME_TYPES,
    MAX_DATA,
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    Barrier,
    Bye,
    Challenge,
    Data,
    DigestReq,
    Digests,
    EpochAck,
    Error,
    FrameDecoder,
    Hello,
    ProtocolError,
    ReadReq,
    Response,
    State,
    Write,
    Zero,
    block_digests,
    decode_payload,
    encode_frame,
)

u64 = st.integers(0, (1 << 64) - 1)
ident = st.text(max_size=64)
history = st.lists(st.text(min_size=1, max_size=64), max_size=16).map(tuple)
small_bytes = st.binary(max_size=4096)

frames = st.one_of(
    st.builds(Hello, u64, st.sampled_from(["sender", "receiver"]), st.none() | ident, u64,
              st.none() | ident, history, st.booleans()),
    st.builds(Challenge, u64, st.sampled_from(["sender", "receiver"]),
              st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)),
    st.builds(Response, st.binary(min_size=32, max_size=32)),
    st.builds(Write, u64, u64, u64, small_bytes),
    st.builds(Zero, u64, u64, u64, u64, st.booleans()),
    st.builds(Barrier, u64, u64),
    st.builds(EpochAck, u64, st.booleans()),
    st.builds(DigestReq, u64, u64, u64, u64, st.sampled_from(["blake2b-128", "sha256"])),
    st.builds(Digests, u64, u64, u64, st.sampled_from(["blake2b-128", "sha256"]),
              st.lists(st.binary(max_size=32), max_size=50).map(tuple)),
    st.builds(ReadReq, u64, u64, u64),
    st.builds(Data, u64, u64, small_bytes),
    st.builds(State, st.booleans(), st.none() | ident, history),
    st.builds(Error, st.text(max_size=64), st.text(max_size=200)),
    st.builds(Bye, st.text(max_size=200)),
)


def decode_all(data: bytes, chunk: int | None = None) -> list:
    decoder = FrameDecoder()
    out = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        decoder.feed(data[i:i + step])
        while (frame := decoder.next_frame()) is not None:
            out.append(frame)
    return out


@settings(deadline=None)
@given(st.lists(frames, min_size=1, max_size=8), st.integers(1, 64))
def test_frames_round_trip_across_any_split(sent, chunk):
    wire = b"".join(encode_frame(f) for f in sent)
    assert decode_all(wire, chunk) == sent


def test_every_frame_type_is_covered():
    assert {cls.__name__ for cls in FRAME_TYPES.values()} == {
        "Hello", "Challenge", "Response", "Write", "Zero", "Barrier", "EpochAck", "DigestReq",
        "Digests", "ReadReq", "Data", "State", "Error", "Bye"}


def test_largest_write_fits_in_a_frame():
    frame = Write(1, 0, 0, bytes(MAX_DATA))
    assert decode_all(encode_frame(frame)) == [frame]


def raw(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("wire", [
    struct.pack(">I", MAX_FRAME_SIZE + 1),  # oversized: refused before buffering it
    struct.pack(">I", 0),  # empty
    raw(b"\xff\xff"),  # not CBOR
    raw(cbor2.dumps([6, 1, 2]) + b"\x00"),  # trailing bytes
    raw(cbor2.dumps({"type": 6})),  # not an array
    raw(cbor2.dumps([])),
    raw(cbor2.dumps([99, 1])),  # unknown type
    raw(cbor2.dumps([6, 1])),  # missing field
    raw(cbor2.dumps([6, 1, 2, 3])),  # extra field
    raw(cbor2.dumps([6, True, 2])),  # bool is not an integer
    raw(cbor2.dumps([6, -1, 2])),  # negative
    raw(cbor2.dumps([6, 1 << 64, 2])),  # beyond 64 bits
    raw(cbor2.dumps([4, 1, 0, 0, "text"])),  # str where bytes belong
    raw(cbor2.dumps([4, 1, 0, 0, bytes(MAX_DATA + 1)])),  # too much data in one frame
    raw(cbor2.dumps([2, 1, "sender", b"short nonce"])),
    raw(cbor2.dumps([2, 1, "admin", bytes(32)])),  # unknown role
    raw(cbor2.dumps([8, 1, 0, 4096, 4096, "md5"])),  # unsupported digest
    raw(cbor2.dumps([6, cbor2.CBORTag(1, 0), 2])),  # a tag (datetime) where an int belongs
    raw(b"\x9f\x06\x01\x02\xff"),  # indefinite-length array
    raw(b"\x81" * 100 + b"\x06"),  # deep nesting
    raw(cbor2.dumps([1, 1, "sender", None, 0, None, [["nested"]], True])),
])
def test_malformed_frames_are_protocol_errors(wire):
    decoder = FrameDecoder()
    decoder.feed(wire)
    with pytest.raises(ProtocolError):
        decoder.next_frame()
    with pytest.raises(ProtocolError):  # and the decoder stays broken
        decoder.next_frame()


def test_truncated_frame_waits_for_more():
    wire = encode_frame(Write(1, 0, 512, b"x" * 100))
    decoder = FrameDecoder()
    decoder.feed(wire[:-1])
    assert decoder.next_frame() is None
    decoder.feed(wire[-1:])
    assert decoder.next_frame() == Write(1, 0, 512, b"x" * 100)


def check_garbage(data: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(data)
    try:
        while decoder.next_frame() is not None:
            pass
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_garbage_is_only_ever_a_protocol_error(data):
    check_garbage(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_garbage_with_plausible_length_prefix(payload):
    check_garbage(raw(payload))
    try:
        decode_payload(payload)
    except ProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(frames, st.data())
def test_mutated_frames_decode_or_fail_cleanly(frame, data):
    wire = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(4, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    check_garbage(bytes(wire))


@settings(deadline=None)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
    | st.floats(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4),
                                                                      children, max_size=4),
    max_leaves=20))
def test_any_cbor_value_is_a_frame_or_a_protocol_error(value):
    check_garbage(raw(cbor2.dumps(value)))
    check_garbage(raw(cbor2.dumps([4, value, value, value, value])))


def test_block_digests_cover_a_short_last_block():
    data = bytes(4096) + b"\x01" * 100
    digests = block_digests(data, 4096)
    assert len(digests) == 2
    assert digests[0] == block_digests(bytes(4096), 4096)[0]
    assert digests[1] != digests[0]
    assert len(block_digests(data, 4096, "sha256")[0]) == 32
