"""The NBD protocol core on byte strings: handshake, every option, every command, every error."""

from __future__ import annotations

import struct

import pytest

from firmware.frontends.nbd.protocol import (
    Disconnect,
    Export,
    FlushRequest,
    InvalidRequest,
    LocalProtocolError,
    Phase,
    ProtocolViolation,
    ReadRequest,
    Ready,
    ServerConnection,
    TrimRequest,
    WriteRequest,
    WriteZeroesRequest,
)
from tests.nbd.nbd_wire import (
    C_FIXED_NEWSTYLE,
    C_NO_ZEROES,
    CHUNK_ERROR,
    CHUNK_NONE,
    CHUNK_OFFSET_DATA,
    CMD_BLOCK_STATUS,
    CMD_CACHE,
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    CMD_TRIM,
    CMD_WRITE,
    CMD_WRITE_ZEROES,
    EINVAL,
    ENOSPC,
    EOVERFLOW,
    EPERM,
    FLAG_DF,
    FLAG_FAST_ZERO,
    FLAG_FUA,
    FLAG_NO_HOLE,
    INFO_BLOCK_SIZE,
    INFO_DESCRIPTION,
    INFO_EXPORT,
    INFO_NAME,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_LIST_META_CONTEXT,
    OPT_SET_META_CONTEXT,
    OPT_STARTTLS,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_POLICY,
    REP_ERR_TOO_BIG,
    REP_ERR_UNKNOWN,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_SERVER,
    REPLY_FLAG_DONE,
    SIMPLE_REPLY_MAGIC,
    T_CAN_MULTI_CONN,
    T_HAS_FLAGS,
    T_READ_ONLY,
    T_SEND_DF,
    T_SEND_FLUSH,
    T_SEND_FUA,
    T_SEND_TRIM,
    T_SEND_WRITE_ZEROES,
    client_flags,
    go,
    info_data,
    option,
    parse_reply,
    request,
    split_option_replies,
    write,
)

SIZE = 1 << 20
EXPORT = Export("tandem", SIZE, description="test volume", minimum_block_size=512)
RO_EXPORT = Export("frozen", SIZE, read_only=True, minimum_block_size=512)


def events_of(conn: ServerConnection, data: bytes = b"") -> list:
    if data:
        conn.receive_data(data)
    out = []
    while (event := conn.next_event()) is not None:
        out.append(event)
    return out


def handshaken(structured: bool = True, export: Export = EXPORT,
               exports: tuple[Export, ...] | None = None) -> ServerConnection:
    """A connection in the transmission phase (via NBD_OPT_GO)."""
    conn = ServerConnection(exports or (export,))
    conn.data_to_send()
    stream = client_flags()
    if structured:
        stream += option(OPT_STRUCTURED_REPLY)
    stream += go(export.name)
    events = events_of(conn, stream)
    assert [type(e) for e in events] == [Ready]
    conn.data_to_send()
    return conn


def one_event(conn: ServerConnection, data: bytes):
    events = events_of(conn, data)
    assert len(events) == 1, events
    return events[0]


# -- handshake ----------------------------------------------------------------------------

def test_greeting_is_fixed_newstyle_with_no_zeroes():
    conn = ServerConnection([EXPORT])
    assert conn.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3)
    assert conn.data_to_send() == b""
    assert conn.phase is Phase.CLIENT_FLAGS


def test_unknown_client_flags_are_a_violation():
    conn = ServerConnection([EXPORT])
    event = one_event(conn, client_flags(C_FIXED_NEWSTYLE | 0x80))
    assert isinstance(event, ProtocolViolation)
    assert conn.phase is Phase.CLOSED
    assert events_of(conn, go()) == []  # everything after is ignored


def test_handshake_fed_byte_by_byte():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events = []
    for byte in client_flags() + option(OPT_STRUCTURED_REPLY) + go():
        events += events_of(conn, bytes([byte]))
    assert [type(e) for e in events] == [Ready]
    assert events[0].structured_replies


@pytest.mark.parametrize("flags, zeroes", [(C_FIXED_NEWSTYLE | C_NO_ZEROES, 0),
                                           (C_FIXED_NEWSTYLE, 124), (0, 124)])
def test_export_name_enters_transmission(flags, zeroes):
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    event = one_event(conn, client_flags(flags) + option(OPT_EXPORT_NAME, b"tandem"))
    assert isinstance(event, Ready) and event.export is EXPORT
    reply = conn.data_to_send()
    size, tflags = struct.unpack(">QH", reply[:10])
    assert size == SIZE
    assert tflags == event.transmission_flags
    assert reply[10:] == bytes(zeroes)
    assert conn.phase is Phase.TRANSMISSION


def test_export_flags_for_writable_and_read_only_exports():
    writable = EXPORT.transmission_flags(structured_replies=False)
    assert writable == (T_HAS_FLAGS | T_SEND_FLUSH | T_SEND_FUA | T_SEND_TRIM
                        | T_SEND_WRITE_ZEROES | T_CAN_MULTI_CONN)
    assert EXPORT.transmission_flags(structured_replies=True) == writable | T_SEND_DF
    read_only = RO_EXPORT.transmission_flags(structured_replies=False)
    assert read_only & T_READ_ONLY
    assert not read_only & (T_SEND_TRIM | T_SEND_WRITE_ZEROES)


def test_empty_export_name_is_the_default_export():
    conn = ServerConnection([EXPORT, RO_EXPORT])
    event = one_event(conn, client_flags() + option(OPT_EXPORT_NAME, b""))
    assert isinstance(event, Ready) and event.export is EXPORT


def test_export_name_picks_among_several_exports():
    conn = ServerConnection([EXPORT, RO_EXPORT])
    event = one_event(conn, client_flags() + option(OPT_EXPORT_NAME, b"frozen"))
    assert event.export is RO_EXPORT


def test_unknown_export_name_closes():
    conn = ServerConnection([EXPORT])
    event = one_event(conn, client_flags() + option(OPT_EXPORT_NAME, b"nope"))
    assert isinstance(event, ProtocolViolation)
    assert conn.phase is Phase.CLOSED


def test_abort_is_acknowledged_then_disconnects():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    event = one_event(conn, client_flags() + option(OPT_ABORT))
    assert isinstance(event, Disconnect)
    [ack] = split_option_replies(conn.data_to_send())
    assert (ack.option, ack.type) == (OPT_ABORT, REP_ACK)


def test_list_names_every_export_with_its_description():
    conn = ServerConnection([EXPORT, RO_EXPORT])
    conn.data_to_send()
    assert events_of(conn, client_flags() + option(OPT_LIST)) == []
    replies = split_option_replies(conn.data_to_send())
    assert [r.type for r in replies] == [REP_SERVER, REP_SERVER, REP_ACK]
    first = replies[0].data
    (name_length,) = struct.unpack(">I", first[:4])
    assert first[4:4 + name_length] == b"tandem"
    assert first[4 + name_length:] == b"test volume"
    assert replies[1].data[4:] == b"frozen"


def test_list_with_data_is_invalid():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(OPT_LIST, b"x"))
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_INVALID


@pytest.mark.parametrize("data, expected", [(b"", REP_ERR_POLICY), (b"x", REP_ERR_INVALID)])
def test_starttls_is_refused(data, expected):
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(OPT_STARTTLS, data))
    [reply] = split_option_replies(conn.data_to_send())
    assert (reply.option, reply.type) == (OPT_STARTTLS, expected)
    assert reply.data  # a message for the human


def infos_by_type(replies):
    return {struct.unpack(">H", r.data[:2])[0]: r.data[2:] for r in replies if r.type == REP_INFO}


def test_info_describes_the_export_and_stays_in_negotiation():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    stream = client_flags() + option(OPT_INFO, info_data(
        "tandem", (INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 999)))
    assert events_of(conn, stream) == []
    replies = split_option_replies(conn.data_to_send())
    assert replies[-1].type == REP_ACK
    infos = infos_by_type(replies)
    assert struct.unpack(">QH", infos[INFO_EXPORT]) == (
        SIZE, EXPORT.transmission_flags(structured_replies=False))
    assert infos[INFO_NAME] == b"tandem"
    assert infos[INFO_DESCRIPTION] == b"test volume"
    assert struct.unpack(">III", infos[INFO_BLOCK_SIZE]) == (512, 4096, 32 * 1024 * 1024)
    assert conn.phase is Phase.OPTIONS
    # ... and GO afterwards enters transmission.
    assert isinstance(one_event(conn, go()), Ready)


def test_go_with_structured_replies_advertises_df():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    event = one_event(conn, client_flags() + option(OPT_STRUCTURED_REPLY) + go("", ()))
    assert isinstance(event, Ready) and event.structured_replies
    replies = split_option_replies(conn.data_to_send())
    assert [r.type for r in replies][0] == REP_ACK  # for STRUCTURED_REPLY
    infos = infos_by_type(replies)
    (_, flags) = struct.unpack(">QH", infos[INFO_EXPORT])
    assert flags & T_SEND_DF and flags == event.transmission_flags
    assert INFO_BLOCK_SIZE in infos  # sent unasked: the minimum block is not the default


@pytest.mark.parametrize("opt", [OPT_INFO, OPT_GO])
def test_info_and_go_for_unknown_export(opt):
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    assert events_of(conn, client_flags() + option(opt, info_data("other"))) == []
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_UNKNOWN
    assert conn.phase is Phase.OPTIONS


@pytest.mark.parametrize("data", [
    b"",  # too short
    struct.pack(">I", 100) + b"tandem" + b"\0\0",  # name longer than the option
    info_data("tandem", (1, 2))[:-1],  # info list cut short
    info_data("tandem") + b"\0",  # trailing garbage
])
def test_malformed_go_is_invalid(data):
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    assert events_of(conn, client_flags() + option(OPT_GO, data)) == []
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_INVALID


def test_structured_reply_with_data_is_invalid():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(OPT_STRUCTURED_REPLY, b"x"))
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_INVALID
    assert not conn.structured_replies


@pytest.mark.parametrize("opt", [4, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, 11, 12, 2**31])
def test_unknown_options_are_unsupported(opt):
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(opt, b"some data"))
    [reply] = split_option_replies(conn.data_to_send())
    assert (reply.option, reply.type) == (opt, REP_ERR_UNSUP)


def test_over_long_option_is_skipped_and_answered_too_big():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(OPT_GO, length=100_000))
    for _ in range(10):  # the data arrives in pieces
        assert events_of(conn, bytes(10_000)) == []
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_TOO_BIG
    assert isinstance(one_event(conn, go()), Ready)  # still in sync


def test_export_name_longer_than_a_string_in_go_is_too_big():
    conn = ServerConnection([EXPORT])
    conn.data_to_send()
    events_of(conn, client_flags() + option(OPT_GO, info_data("x" * 5000)))
    [reply] = split_option_replies(conn.data_to_send())
    assert reply.type == REP_ERR_TOO_BIG


@pytest.mark.parametrize("opt, length", [(OPT_GO, 2**32 - 1), (OPT_EXPORT_NAME, 20_000)])
def test_absurd_option_lengths_disconnect(opt, length):
    conn = ServerConnection([EXPORT])
    event = one_event(conn, client_flags() + option(opt, length=length))
    assert isinstance(event, ProtocolViolation)


def test_bad_option_magic_is_a_violation():
    conn = ServerConnection([EXPORT])
    event = one_event(conn, client_flags() + b"IHAVEOPX" + bytes(8))
    assert isinstance(event, ProtocolViolation)


def test_end_of_stream_during_handshake():
    conn = ServerConnection([EXPORT])
    conn.receive_data(client_flags() + option(OPT_LIST))
    events_of(conn)
    conn.receive_data(b"")
    assert [type(e) for e in events_of(conn)] == [Disconnect]

    conn = ServerConnection([EXPORT])
    conn.receive_data(client_flags() + go()[:10])
    conn.receive_data(b"")
    assert [type(e) for e in events_of(conn)] == [ProtocolViolation]


def test_export_rejects_impossible_block_sizes():
    with pytest.raises(ValueError):
        Export("x", SIZE, minimum_block_size=3)
    with pytest.raises(ValueError):
        Export("x", SIZE, preferred_block_size=256)
    with pytest.raises(ValueError):
        Export("x", SIZE, maximum_payload_size=1024)
    with pytest.raises(ValueError):
        ServerConnection([])


# -- transmission: requests -----------------------------------------------------------------

def test_read_request():
    conn = handshaken()
    event = one_event(conn, request(CMD_READ, 7, 4096, 8192, FLAG_DF))
    assert event == ReadRequest(7, 4096, 8192, FLAG_DF)


def test_write_request_payload_split_across_receives():
    conn = handshaken()
    data = bytes(range(256)) * 32
    stream = write(0xFFFF_FFFF_FFFF_FFFF, 512, data, FLAG_FUA)
    assert events_of(conn, stream[:20]) == []
    assert events_of(conn, stream[20:3000]) == []
    event = one_event(conn, stream[3000:])
    assert event == WriteRequest(0xFFFF_FFFF_FFFF_FFFF, 512, data, True)
    assert isinstance(event.data, bytes)


def test_flush_trim_write_zeroes_and_disc():
    conn = handshaken()
    events = events_of(conn, request(CMD_FLUSH, 1)
                       + request(CMD_TRIM, 2, 0, 4096, FLAG_FUA)
                       + request(CMD_WRITE_ZEROES, 3, 4096, 4096, FLAG_NO_HOLE)
                       + request(CMD_WRITE_ZEROES, 4, 0, 512, FLAG_FUA)
                       + request(CMD_DISC, 5)
                       + request(CMD_READ, 6, 0, 512))  # after DISC: ignored
    assert events == [FlushRequest(1), TrimRequest(2, 0, 4096, True),
                      WriteZeroesRequest(3, 4096, 4096, True, False),
                      WriteZeroesRequest(4, 0, 512, False, True),
                      Disconnect("client sent NBD_CMD_DISC")]
    assert conn.phase is Phase.CLOSED


def test_fua_is_accepted_on_every_command():
    conn = handshaken()
    events = events_of(conn, request(CMD_READ, 1, 0, 512, FLAG_FUA)
                       + request(CMD_FLUSH, 2, flags=FLAG_FUA))
    assert [type(e) for e in events] == [ReadRequest, FlushRequest]


def test_pipelined_requests_come_out_in_order():
    conn = handshaken()
    stream = b"".join(write(i, i * 512, bytes([i]) * 512) for i in range(50))
    events = events_of(conn, stream)
    assert [e.handle for e in events] == list(range(50))
    assert all(e.data == bytes([e.handle]) * 512 for e in events)


def test_end_of_stream_between_requests_is_a_clean_disconnect():
    conn = handshaken()
    conn.receive_data(request(CMD_FLUSH, 1))
    conn.receive_data(b"")
    assert [type(e) for e in events_of(conn)] == [FlushRequest, Disconnect]


def test_end_of_stream_inside_a_write_is_a_violation():
    conn = handshaken()
    conn.receive_data(write(1, 0, bytes(4096))[:1000])
    conn.receive_data(b"")
    assert [type(e) for e in events_of(conn)] == [ProtocolViolation]


# -- transmission: errors ---------------------------------------------------------------------

def invalid(conn: ServerConnection, data: bytes) -> InvalidRequest:
    event = one_event(conn, data)
    assert isinstance(event, InvalidRequest), event
    return event


def test_bad_request_magic_is_a_violation():
    conn = handshaken()
    event = one_event(conn, request(CMD_READ, 1, 0, 512, magic=0x12560953))
    assert isinstance(event, ProtocolViolation)
    assert events_of(conn, request(CMD_READ, 1, 0, 512)) == []


@pytest.mark.parametrize("command", [CMD_CACHE, CMD_BLOCK_STATUS, 8, 0xFFFF])
def test_unknown_commands_are_einval(command):
    conn = handshaken()
    event = invalid(conn, request(command, 9, 0, 512))
    assert (event.handle, event.error) == (9, EINVAL)
    assert isinstance(one_event(conn, request(CMD_FLUSH, 10)), FlushRequest)  # still in sync


@pytest.mark.parametrize("command", [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES])
def test_zero_length_is_einval(command):
    assert invalid(handshaken(), request(command, 1, 0, 0)).error == EINVAL


@pytest.mark.parametrize("structured, expected", [(False, EINVAL), (True, EOVERFLOW)])
def test_over_large_read(structured, expected):
    conn = handshaken(structured=structured)
    event = invalid(conn, request(CMD_READ, 1, 0, 32 * 1024 * 1024 + 512))
    assert event.error == expected


def test_maximum_size_read_is_fine():
    big = Export("big", 64 << 20, minimum_block_size=512)
    event = one_event(handshaken(export=big), request(CMD_READ, 1, 0, 32 << 20))
    assert isinstance(event, ReadRequest)


def test_over_large_write_disconnects():
    conn = handshaken()
    event = one_event(conn, request(CMD_WRITE, 1, 0, 32 * 1024 * 1024 + 512))
    assert isinstance(event, ProtocolViolation)


def test_over_large_trim_and_zero_are_allowed_within_the_export():
    big = Export("big", 64 << 20, minimum_block_size=512)
    conn = handshaken(export=big)
    events = events_of(conn, request(CMD_TRIM, 1, 0, 64 << 20)
                       + request(CMD_WRITE_ZEROES, 2, 0, 64 << 20))
    assert [type(e) for e in events] == [TrimRequest, WriteZeroesRequest]


@pytest.mark.parametrize("command, expected", [
    (CMD_READ, EINVAL), (CMD_TRIM, EINVAL), (CMD_WRITE, ENOSPC), (CMD_WRITE_ZEROES, ENOSPC)])
@pytest.mark.parametrize("offset, length", [(SIZE - 512, 1024), (SIZE, 512), (2**63, 512),
                                            (2**64 - 512, 512)])
def test_beyond_the_end(command, expected, offset, length):
    conn = handshaken()
    payload = bytes(length) if command == CMD_WRITE else b""
    event = invalid(conn, request(command, 1, offset, length, payload=payload))
    assert event.error == expected
    # The write payload was consumed: the next request parses.
    assert isinstance(one_event(conn, request(CMD_FLUSH, 2)), FlushRequest)


@pytest.mark.parametrize("command", [CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES])
@pytest.mark.parametrize("offset, length", [(1, 512), (0, 100), (256, 256)])
def test_misaligned_requests_are_einval(command, offset, length):
    conn = handshaken()
    payload = bytes(length) if command == CMD_WRITE else b""
    assert invalid(conn, request(command, 1, offset, length, payload=payload)).error == EINVAL


def test_byte_granular_export_takes_unaligned_requests():
    fine = Export("fine", 4096)  # minimum block size 1
    event = one_event(handshaken(export=fine), write(1, 3, b"abc"))
    assert event == WriteRequest(1, 3, b"abc", False)


@pytest.mark.parametrize("command", [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES])
def test_writes_to_a_read_only_export_are_eperm(command):
    conn = handshaken(export=RO_EXPORT)
    payload = bytes(512) if command == CMD_WRITE else b""
    assert invalid(conn, request(command, 1, 0, 512, payload=payload)).error == EPERM
    assert isinstance(one_event(conn, request(CMD_READ, 2, 0, 512)), ReadRequest)


@pytest.mark.parametrize("structured, command, flags", [
    (True, CMD_WRITE, FLAG_NO_HOLE), (True, CMD_WRITE, FLAG_DF), (True, CMD_READ, FLAG_NO_HOLE),
    (False, CMD_READ, FLAG_DF),  # DF needs structured replies
    (True, CMD_TRIM, FLAG_NO_HOLE), (True, CMD_WRITE_ZEROES, FLAG_FAST_ZERO),
    (True, CMD_FLUSH, FLAG_DF), (True, CMD_READ, 0x8000)])
def test_flags_not_valid_for_the_command_are_einval(structured, command, flags):
    conn = handshaken(structured=structured)
    payload = bytes(512) if command == CMD_WRITE else b""
    length = 0 if command == CMD_FLUSH else 512
    event = invalid(conn, request(command, 1, 0, length, flags, payload))
    assert event.error == EINVAL


def test_flush_with_offset_or_length_is_einval():
    conn = handshaken()
    assert invalid(conn, request(CMD_FLUSH, 1, 512, 0)).error == EINVAL
    assert invalid(conn, request(CMD_FLUSH, 1, 0, 512)).error == EINVAL


# -- transmission: replies --------------------------------------------------------------------

def test_simple_replies():
    conn = handshaken(structured=False)
    assert conn.send_ok(0x0102030405060708) == struct.pack(
        ">IIQ", SIMPLE_REPLY_MAGIC, 0, 0x0102030405060708)
    assert conn.send_error(9, EINVAL, "ignored without structured replies") == struct.pack(
        ">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, 9)
    header, data = conn.send_read_reply(5, 4096, b"abcd")
    reply, used = parse_reply(header + data, read_length=4)
    assert (reply.handle, reply.error, reply.structured, reply.data) == (5, 0, False, b"abcd")
    assert used == len(header) + 4


def test_structured_replies():
    conn = handshaken(structured=True)
    header, data = conn.send_read_reply(5, 4096, b"abcd")
    reply, used = parse_reply(header + data)
    assert used == len(header) + len(data)
    assert (reply.handle, reply.chunk_type, reply.flags, reply.offset, reply.data) == (
        5, CHUNK_OFFSET_DATA, REPLY_FLAG_DONE, 4096, b"abcd")

    reply, _ = parse_reply(conn.send_error(6, ENOSPC, "full"))
    assert (reply.handle, reply.chunk_type, reply.flags, reply.error, reply.message) == (
        6, CHUNK_ERROR, REPLY_FLAG_DONE, ENOSPC, b"full")

    header, data = conn.send_offset_data_chunk(7, 0, b"xy", done=False)
    reply, _ = parse_reply(header + data)
    assert (reply.chunk_type, reply.flags, reply.data) == (CHUNK_OFFSET_DATA, 0, b"xy")
    reply, used = parse_reply(conn.send_done_chunk(7))
    assert (reply.chunk_type, reply.flags, used) == (CHUNK_NONE, REPLY_FLAG_DONE, 20)
    # Write-type commands still get simple replies, which structured clients accept.
    assert parse_reply(conn.send_ok(8))[0].structured is False


def test_replies_before_transmission_are_refused():
    conn = ServerConnection([EXPORT])
    for send in (lambda: conn.send_ok(1), lambda: conn.send_error(1, EINVAL),
                 lambda: conn.send_read_reply(1, 0, b"x"), lambda: conn.send_done_chunk(1)):
        with pytest.raises(LocalProtocolError):
            send()


def test_chunks_need_structured_replies():
    conn = handshaken(structured=False)
    with pytest.raises(LocalProtocolError):
        conn.send_done_chunk(1)
    with pytest.raises(LocalProtocolError):
        conn.send_offset_data_chunk(1, 0, b"x")


def test_error_message_is_limited_to_a_string():
    conn = handshaken(structured=True)
    reply, _ = parse_reply(conn.send_error(1, EINVAL, "x" * 10_000))
    assert len(reply.message) == 4096
