"""The client side of NBD as byte strings, for driving the server core and raw sockets in tests.

Written from proto.md independently of the server's code, so the tests do not simply
mirror the implementation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

C_FIXED_NEWSTYLE = 1
C_NO_ZEROES = 2

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = 2**31 + 1, 2**31 + 2, 2**31 + 3
REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = 2**31 + 6, 2**31 + 9
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_FAST_ZERO = 1, 2, 4, 16

T_HAS_FLAGS, T_READ_ONLY, T_SEND_FLUSH, T_SEND_FUA = 1, 2, 4, 8
T_SEND_TRIM, T_SEND_WRITE_ZEROES, T_SEND_DF, T_CAN_MULTI_CONN = 32, 64, 128, 256

EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 22, 28, 75, 95, 108

CHUNK_NONE, CHUNK_OFFSET_DATA, CHUNK_ERROR = 0, 1, 2**15 + 1
REPLY_FLAG_DONE = 1


def client_flags(flags: int = C_FIXED_NEWSTYLE | C_NO_ZEROES) -> bytes:
    return struct.pack(">I", flags)


def option(opt: int, data: bytes = b"", length: int | None = None) -> bytes:
    return IHAVEOPT + struct.pack(">II", opt, len(data) if length is None else length) + data


def info_data(name: str, infos: tuple[int, ...] = ()) -> bytes:
    raw = name.encode()
    return (struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(infos))
            + b"".join(struct.pack(">H", i) for i in infos))


def go(name: str = "tandem", infos: tuple[int, ...] = (INFO_BLOCK_SIZE,)) -> bytes:
    return option(OPT_GO, info_data(name, infos))


def request(command: int, handle: int, offset: int = 0, length: int = 0, flags: int = 0,
            payload: bytes = b"", magic: int = REQUEST_MAGIC) -> bytes:
    return struct.pack(">IHHQQI", magic, flags, command, handle, offset, length) + payload


def write(handle: int, offset: int, data: bytes, flags: int = 0) -> bytes:
    return request(CMD_WRITE, handle, offset, len(data), flags, data)


@dataclass
class OptionReply:
    option: int
    type: int
    data: bytes


def split_option_replies(data: bytes) -> list[OptionReply]:
    """Parse a byte string made only of option replies."""
    replies = []
    pos = 0
    while pos < len(data):
        magic, opt, rtype, length = struct.unpack_from(">QIII", data, pos)
        assert magic == OPTION_REPLY_MAGIC, f"bad option reply magic at {pos}"
        pos += 20
        replies.append(OptionReply(opt, rtype, data[pos:pos + length]))
        pos += length
    assert pos == len(data)
    return replies


@dataclass
class Reply:
    """A simple reply or one structured chunk."""

    handle: int
    error: int
    structured: bool
    data: bytes = b""
    chunk_type: int = -1
    flags: int = 0
    offset: int = -1
    message: bytes = b""


def parse_reply(data: bytes, read_length: int = 0) -> tuple[Reply, int]:
    """Parse one reply at the start of ``data``; ``read_length`` tells a simple read reply.

    Returns the reply and how many bytes it took.
    """
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic == SIMPLE_REPLY_MAGIC:
        _, error, handle = struct.unpack_from(">IIQ", data, 0)
        n = read_length if error == 0 else 0
        return Reply(handle, error, False, data[16:16 + n]), 16 + n
    assert magic == STRUCTURED_REPLY_MAGIC, f"bad reply magic {magic:#x}"
    _, flags, ctype, handle, length = struct.unpack_from(">IHHQI", data, 0)
    payload = data[20:20 + length]
    assert len(payload) == length, "truncated chunk"
    reply = Reply(handle, 0, True, chunk_type=ctype, flags=flags)
    if ctype == CHUNK_OFFSET_DATA:
        (reply.offset,) = struct.unpack_from(">Q", payload, 0)
        reply.data = payload[8:]
    elif ctype & 0x8000:
        reply.error, mlen = struct.unpack_from(">IH", payload, 0)
        reply.message = payload[6:6 + mlen]
    return reply, 20 + length
