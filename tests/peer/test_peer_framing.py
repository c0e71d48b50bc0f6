"""The peer link's bytes: message round trips, both framings, and what is refused.

Damage on the serial line (garbage, bit flips, truncation, lost bytes) must never yield a
payload that was not sent, and every frame the damage did not touch must still arrive:
the decoder resynchronises at the next delimiter.
"""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.peer import frames as f
from firmware.peer.framing import (
    MAX_SERIAL_PAYLOAD,
    SerialFrameDecoder,
    TcpFrameDecoder,
    cobs_decode,
    cobs_encode,
    encode_serial,
    encode_tcp,
)

KEY = b"test-key"
u64 = st.integers(0, (1 << 64) - 1)
name = st.text(st.characters(codec="utf-8"), max_size=5)
epoch_id = st.tuples(u64, name)
kind = st.sampled_from(f.KINDS)
role = st.sampled_from([f.PRIMARY, f.RECORD_HOLDER])
features = st.lists(st.text(max_size=8), max_size=3).map(tuple)
hello_fields = (role, st.booleans(), name, epoch_id, u64, u64, u64, st.tuples(u64, u64),
                features, st.booleans())

messages = st.one_of(
    st.builds(f.Hello, *hello_fields),
    st.builds(f.HelloAck, u64, *hello_fields),
    st.builds(f.Heartbeat, u64, u64, st.booleans()),
    st.builds(f.HeartbeatAck, u64, u64, u64),
    st.builds(f.Mark, u64, u64, st.lists(
        st.tuples(st.integers(0, 1 << 40), st.integers(1, 1000), kind), max_size=20).map(tuple)),
    st.builds(f.MarkAck, u64),
    st.builds(f.Clear, u64, st.lists(st.tuples(u64, u64), max_size=20).map(tuple)),
    st.builds(f.ClearAck, u64),
    st.builds(f.ReconcileReq, u64),
    st.builds(f.Reconcile, u64, u64, u64,
              st.lists(st.tuples(u64, u64, kind), max_size=20).map(tuple)),
    st.builds(f.ReconcileAck, u64, u64),
    st.builds(f.FenceNotice, st.text(max_size=32), st.text(max_size=50), name, epoch_id),
    st.builds(f.Nak, u64, st.text(max_size=32), st.text(max_size=50)),
)
headers = st.builds(f.Header, st.just("a"), u64, u64, u64, u64, u64)


@settings(deadline=None)
@given(headers, messages)
def test_every_message_survives_encode_and_decode(header, message) -> None:
    frame = f.Frame(header, message)
    assert f.decode(KEY, f.encode(KEY, frame)) == frame


def test_every_message_type_is_in_the_strategy() -> None:
    # A new message type must be added to `messages` above to be round-tripped.
    assert len(f.MESSAGE_TYPES) == 13


def sealed(*messages: f.Message, boot: int = 1, epoch: int = 1, src: str = "a") -> list[bytes]:
    sealer = f.FrameSealer(KEY, node=src, boot=boot)
    return [sealer.seal(m, epoch=epoch, ack=0, peer_boot=0)[1] for m in messages]


def payloads(n: int, size: int = 40) -> list[bytes]:
    return sealed(*(f.Nak(i, "x", "y" * (i * 7 % size)) for i in range(n)))


# --- COBS and the two framings --------------------------------------------------------------


@given(st.binary(max_size=2000))
def test_cobs_round_trips_and_holds_no_zero(data) -> None:
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


@settings(deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=6),
       st.integers(1, 97))
def test_tcp_framing_round_trips_across_any_split(sent, chunk) -> None:
    wire = b"".join(encode_tcp(p) for p in sent)
    decoder = TcpFrameDecoder()
    got = [p for i in range(0, len(wire), chunk) for p in decoder.feed(wire[i:i + chunk])]
    assert got == sent and decoder.broken is None and decoder.counters.frames == len(sent)


@settings(deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=600), min_size=1, max_size=6),
       st.integers(1, 97))
def test_serial_framing_round_trips_across_any_split(sent, chunk) -> None:
    wire = b"".join(encode_serial(p) for p in sent)
    decoder = SerialFrameDecoder()
    got = [p for i in range(0, len(wire), chunk) for p in decoder.feed(wire[i:i + chunk])]
    assert got == sent and decoder.counters.dropped == 0


def test_tcp_oversized_length_is_refused_and_the_stream_stops() -> None:
    decoder = TcpFrameDecoder(max_payload=1024)
    wire = struct.pack(">II", 1025, 0) + bytes(1025) + encode_tcp(b"after")
    assert decoder.feed(wire) == []
    assert decoder.broken == "oversized" and decoder.counters.oversized == 1
    assert decoder.feed(encode_tcp(b"later")) == []  # the runtime drops the connection


def test_tcp_crc_mismatch_breaks_the_stream() -> None:
    frame = bytearray(encode_tcp(b"payload"))
    frame[-1] ^= 1
    decoder = TcpFrameDecoder()
    assert decoder.feed(bytes(frame)) == [] and decoder.broken == "crc"


def test_serial_oversized_run_is_dropped_and_the_next_frame_arrives() -> None:
    decoder = SerialFrameDecoder(max_payload=100)
    good = encode_serial(b"good")
    out = decoder.feed(b"\x01" * 5000) + decoder.feed(b"\x02" * 5000 + good)
    assert out == [b"good"] and decoder.counters.oversized == 1
    big = encode_serial(b"\x07" * 200)  # a well-formed frame over this decoder's limit
    assert decoder.feed(big + good) == [b"good"] and decoder.counters.oversized == 2


def test_serial_encoder_refuses_what_the_u16_cannot_say() -> None:
    with pytest.raises(ValueError):
        encode_serial(bytes(MAX_SERIAL_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode_serial(b"")


@st.composite
def damaged_streams(draw):
    """Sent payloads, the serial bytes, and damage: (op, position, argument) sorted."""
    sent = draw(st.lists(st.binary(min_size=1, max_size=120), min_size=1, max_size=6))
    frames = [encode_serial(p) for p in sent]
    wire = b"".join(frames)
    ops = draw(st.lists(st.tuples(
        st.sampled_from(["garbage", "flip", "drop"]), st.integers(0, len(wire) - 1),
        st.binary(min_size=1, max_size=30), st.integers(0, 7), st.integers(1, 40)),
        max_size=4))
    return sent, frames, ops


def apply_damage(frames: list[bytes], ops) -> tuple[bytes, set[int]]:
    """The damaged stream and the indices of frames the damage touched. Damage is
    described on the original bytes: garbage inserted before a byte, a bit flipped in
    one, a run of bytes lost."""
    wire = b"".join(frames)
    owner = [i for i, frame in enumerate(frames) for _ in frame]
    inserted: dict[int, bytes] = {}
    flipped = bytearray(len(wire))
    lost = [False] * len(wire)
    for op, where, garbage, bit, count in ops:
        if op == "garbage":
            inserted[where] = inserted.get(where, b"") + garbage
        elif op == "flip":
            flipped[where] ^= 1 << bit
        else:
            for i in range(where, min(where + count, len(wire))):
                lost[i] = True
    out = bytearray()
    touched: set[int] = set()
    for i, byte in enumerate(wire):
        if i in inserted:
            out += inserted[i]
            if i > 0 and owner[i - 1] == owner[i]:
                touched.add(owner[i])  # inside a frame, not between two
        if lost[i]:
            touched.add(owner[i])
            continue
        if flipped[i]:
            touched.add(owner[i])
        out.append(byte ^ flipped[i])
    return bytes(out), touched


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_streams(), st.integers(1, 61))
def test_serial_damage_never_makes_a_false_frame_and_the_rest_arrives(stream, chunk) -> None:
    sent, frames, ops = stream
    wire, touched = apply_damage(frames, ops)
    decoder = SerialFrameDecoder()
    got = [p for i in range(0, len(wire), chunk) for p in decoder.feed(wire[i:i + chunk])]
    assert set(got) <= set(sent), "a payload nobody sent"
    intact = [p for i, p in enumerate(sent) if i not in touched]
    it = iter(got)
    assert all(any(p == q for q in it) for p in intact), "an undamaged frame went missing"


@settings(deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 200))
def test_serial_decoder_takes_any_bytes(data, chunk) -> None:
    decoder = SerialFrameDecoder(max_payload=512)
    for i in range(0, len(data), chunk):
        for payload in decoder.feed(data[i:i + chunk]):
            assert 0 < len(payload) <= 512


@settings(deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 200))
def test_tcp_decoder_takes_any_bytes(data, chunk) -> None:
    decoder = TcpFrameDecoder(max_payload=512)
    for i in range(0, len(data), chunk):
        decoder.feed(data[i:i + chunk])


# --- the gate: authentic, well-formed, from the peer, new --------------------------------


def gate() -> f.FrameGate:
    return f.FrameGate(KEY, node="b", peer="a")


def gate_state(g: f.FrameGate) -> tuple:
    return (g.peer_boot, g.highest_sq, g.counters.accepted)


def test_gate_accepts_each_frame_once() -> None:
    g = gate()
    first, second = sealed(f.MarkAck(1), f.MarkAck(2))
    assert g.open(second).message == f.MarkAck(2)
    assert g.open(first).message == f.MarkAck(1)  # reordered across links: still new
    for payload in (first, second):
        before = gate_state(g)
        with pytest.raises(f.Refusal) as refusal:
            g.open(payload)
        assert refusal.value.reason == "replay" and gate_state(g) == before


def test_gate_refuses_an_older_boot_and_frames_older_than_the_window() -> None:
    g = f.FrameGate(KEY, node="b", peer="a", window=4)
    old_boot = sealed(f.MarkAck(1), boot=1)[0]
    g.open(sealed(f.MarkAck(1), boot=2)[0])
    with pytest.raises(f.Refusal, match="replay"):
        g.open(old_boot)
    frames = sealed(*(f.MarkAck(i) for i in range(10)), boot=3)
    g.open(frames[9])
    g.open(frames[6])  # within the window
    with pytest.raises(f.Refusal, match="replay"):
        g.open(frames[5])  # out of it: refused rather than risk a replay


@settings(deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7))
def test_any_bit_flip_is_refused_with_no_state_change(where, bit) -> None:
    g = gate()
    payload = bytearray(sealed(f.Mark(3, 9, ((1, 2, 0),)))[0])
    payload[where % len(payload)] ^= 1 << bit
    before = gate_state(g)
    with pytest.raises(f.Refusal) as refusal:
        g.open(bytes(payload))
    assert refusal.value.reason in ("mac", "short") and refusal.value.header is None
    assert gate_state(g) == before


def test_wrong_key_and_own_frames_are_refused() -> None:
    g = gate()
    other = f.FrameSealer(b"another key", node="a", boot=1)
    with pytest.raises(f.Refusal, match="mac"):
        g.open(other.seal(f.MarkAck(1), epoch=1, ack=0, peer_boot=0)[1])
    with pytest.raises(f.Refusal, match="source"):
        g.open(sealed(f.MarkAck(1), src="b")[0])  # our own frame, reflected
    assert gate_state(g) == (0, 0, 0)


def signed(values: dict) -> bytes:
    body = cbor2.dumps(values)
    return f.tag(KEY, body) + body


HEADER = {"v": 1, "src": "a", "boot": 1, "ep": 1, "sq": 5, "ack": 0, "pb": 0}


@pytest.mark.parametrize("values, reason", [
    ({**HEADER, "t": 99}, "unknown-type"),
    ({**HEADER, "v": 2, "t": 6, "id": 1}, "version"),
    ({**HEADER, "t": 6}, "malformed"),  # MARK_ACK without its id
    ({**HEADER, "t": 6, "id": -1}, "malformed"),
    ({**HEADER, "t": 6, "id": True}, "malformed"),  # a CBOR true is not the integer 1
    ({**HEADER, "t": 5, "id": 1, "g": 1, "r": [[0, 0, 0]]}, "malformed"),  # empty run
    ({**HEADER, "t": 5, "id": 1, "g": 1, "r": [[0, 1, 7]]}, "malformed"),  # unknown kind
])
def test_authentic_but_unusable_frames_are_refused_with_their_header(values, reason) -> None:
    g = gate()
    with pytest.raises(f.Refusal) as refusal:
        g.open(signed(values))
    assert refusal.value.reason == reason
    assert refusal.value.header is not None and refusal.value.header.sq == 5
    assert gate_state(g) == (0, 0, 0)


def test_unknown_keys_are_ignored() -> None:
    frame = gate().open(signed({**HEADER, "t": 6, "id": 4, "future": [1, 2]}))
    assert frame.message == f.MarkAck(4)


@pytest.mark.parametrize("payload", [b"", b"x" * 16, b"x" * 17])
def test_short_or_garbage_payloads_are_refused(payload) -> None:
    with pytest.raises(f.Refusal):
        gate().open(payload)
