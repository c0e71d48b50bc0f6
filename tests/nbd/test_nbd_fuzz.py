"""Fuzzing the NBD protocol core: whatever bytes come in, it yields events, never exceptions."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware.frontends.nbd.protocol import (
    Disconnect,
    Export,
    FlushRequest,
    InvalidRequest,
    ProtocolViolation,
    ReadRequest,
    Ready,
    ServerConnection,
    TrimRequest,
    WriteRequest,
    WriteZeroesRequest,
)
from tests.nbd.nbd_wire import (
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE_ZEROES,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_INFO,
    OPT_LIST,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    client_flags,
    go,
    info_data,
    option,
    request,
    write,
)

EXPORTS = (Export("tandem", 1 << 20, minimum_block_size=512),
           Export("ro", 64 << 10, read_only=True))
TERMINAL = (Disconnect, ProtocolViolation)
EVENT_TYPES = (Ready, ReadRequest, WriteRequest, FlushRequest, TrimRequest, WriteZeroesRequest,
               InvalidRequest, Disconnect, ProtocolViolation)
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def drive(chunks: list[bytes], eof: bool = True) -> list:
    """Feed chunks as a server would, answering every request; return all events."""
    conn = ServerConnection(EXPORTS)
    out = [conn.data_to_send()]
    events: list = []
    for chunk in [*chunks, b""] if eof else chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not None:
            assert isinstance(event, EVENT_TYPES)
            events.append(event)
            out.append(conn.data_to_send())
            # Answer the way the server would; these must not raise either.
            if isinstance(event, ReadRequest):
                header, data = conn.send_read_reply(event.handle, event.offset,
                                                    bytes(event.length))
                out += [header, data]
            elif isinstance(event, InvalidRequest):
                out.append(conn.send_error(event.handle, event.error, event.reason))
            elif isinstance(event, (WriteRequest, FlushRequest, TrimRequest,
                                    WriteZeroesRequest)):
                out.append(conn.send_ok(event.handle))
    # At most one terminal event, and it is the last one.
    terminal = [i for i, e in enumerate(events) if isinstance(e, TERMINAL)]
    assert len(terminal) <= 1
    if terminal:
        assert terminal[0] == len(events) - 1
    elif eof:
        raise AssertionError("end of stream must end the session")
    return events


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return [p for p in pieces if p]


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(0, 4096), max_size=8))
def test_random_bytes(data, cuts):
    drive(split(data, cuts))


@FUZZ
@given(st.binary(max_size=2048), st.booleans(), st.lists(st.integers(0, 4096), max_size=8))
def test_random_bytes_after_a_valid_handshake(data, structured, cuts):
    prefix = client_flags() + (option(OPT_STRUCTURED_REPLY) if structured else b"") + go()
    events = drive(split(prefix + data, cuts))
    assert isinstance(events[0], Ready)


def _option_messages():
    name = st.sampled_from(["tandem", "ro", "", "nope"])
    infos = st.lists(st.integers(0, 5), max_size=4).map(tuple)
    return st.one_of(
        st.builds(lambda n, i: option(OPT_INFO, info_data(n, i)), name, infos),
        st.sampled_from([option(OPT_LIST), option(OPT_STARTTLS), option(OPT_STRUCTURED_REPLY),
                         option(42, b"junk"), option(OPT_ABORT)]),
    )


def _requests():
    handle = st.integers(0, 2**64 - 1)
    offset = st.one_of(st.integers(0, 1 << 21), st.sampled_from([0, 512, 2**63, 2**64 - 512]))
    length = st.one_of(st.integers(0, 1 << 14), st.sampled_from([512, 4096, 2**32 - 1]))
    flags = st.integers(0, 0x1F)
    command = st.sampled_from([CMD_READ, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, 5, 7, 99])
    return st.one_of(
        st.builds(request, command, handle, offset, length, flags),
        st.builds(lambda h, o, n, f: write(h, o, bytes(n), f & 1), handle, offset,
                  st.integers(0, 8192), flags),
        st.just(request(CMD_DISC, 0)),
    )


@st.composite
def valid_sessions(draw):
    stream = client_flags()
    stream += b"".join(draw(st.lists(_option_messages(), max_size=4)))
    stream += draw(st.sampled_from([go("tandem"), go(""), go("ro"),
                                    option(OPT_EXPORT_NAME, b"tandem")]))
    stream += b"".join(draw(st.lists(_requests(), max_size=12)))
    return stream


@st.composite
def mutated(draw, sessions):
    data = bytearray(draw(sessions))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "overwrite32"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        else:
            data[at:at + 4] = draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x00\x00\x40\x00", b"\x02\x00\x00\x01"]))
    return bytes(data)


@FUZZ
@given(valid_sessions(), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_valid_sessions_give_the_same_events_however_split(stream, cuts):
    whole = drive([stream])
    assert drive(split(stream, cuts)) == whole
    assert not any(isinstance(e, ProtocolViolation) for e in whole)


@FUZZ
@given(mutated(valid_sessions()), st.lists(st.integers(0, 1 << 16), max_size=8))
def test_mutated_sessions(stream, cuts):
    drive(split(stream, cuts))


@FUZZ
@given(mutated(valid_sessions()))
def test_without_end_of_stream(stream):
    drive([stream], eof=False)
