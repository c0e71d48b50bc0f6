"""The server side of the NBD protocol as a state machine over bytes, without I/O.

Feed what the client sent to :meth:`ServerConnection.receive_data` (``b""`` for end
of stream), pull events with :meth:`ServerConnection.next_event` until it returns
``None`` (it needs more bytes), and write out what :meth:`ServerConnection.data_to_send`
returns and what the ``send_*`` methods return. The shape follows h11: nothing here
touches a socket, so everything can be tested and fuzzed on byte strings.

What it speaks (see the NBD protocol, ``doc/proto.md`` of NetworkBlockDevice/nbd):

* fixed newstyle handshake with ``NBD_FLAG_NO_ZEROES``; the options ``EXPORT_NAME``,
  ``ABORT``, ``LIST``, ``INFO``, ``GO`` (export, name, description and block-size
  information), ``STRUCTURED_REPLY``; ``STARTTLS`` is refused by policy (no TLS) and
  any other option is answered ``NBD_REP_ERR_UNSUP``. Options are answered inside the
  state machine; the caller only sees :class:`Ready`, :class:`Disconnect` or
  :class:`ProtocolViolation` come out of the handshake.
* transmission with simple replies, or structured replies when negotiated: ``READ``,
  ``WRITE``, ``FLUSH``, ``TRIM``, ``WRITE_ZEROES`` (with ``NO_HOLE``) and ``DISC``;
  ``FUA`` is accepted on every command. Requests the state machine can judge by
  itself (unknown command or flag, zero or over-large length, misalignment, beyond
  the end, a write to a read-only export) come out as :class:`InvalidRequest`, to be
  answered with :meth:`ServerConnection.send_error`.

Feeding any byte string never raises: bytes that break the protocol beyond repair
become one :class:`ProtocolViolation` (the caller drops the connection) and
everything after it is ignored. The ``send_*`` methods raise
:class:`LocalProtocolError` when called before the transmission phase.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# -- Wire constants -------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPTION_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1 << 0  # handshake flags (server)
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0  # client flags
FLAG_C_NO_ZEROES = 1 << 1


class Option(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


class OptionReply(enum.IntEnum):
    ACK = 1
    SERVER = 2
    INFO = 3
    META_CONTEXT = 4
    ERR_UNSUP = 2**31 + 1
    ERR_POLICY = 2**31 + 2
    ERR_INVALID = 2**31 + 3
    ERR_PLATFORM = 2**31 + 4
    ERR_TLS_REQD = 2**31 + 5
    ERR_UNKNOWN = 2**31 + 6
    ERR_SHUTDOWN = 2**31 + 7
    ERR_BLOCK_SIZE_REQD = 2**31 + 8
    ERR_TOO_BIG = 2**31 + 9


class Info(enum.IntEnum):
    EXPORT = 0
    NAME = 1
    DESCRIPTION = 2
    BLOCK_SIZE = 3


class TransmissionFlag(enum.IntFlag):
    HAS_FLAGS = 1 << 0
    READ_ONLY = 1 << 1
    SEND_FLUSH = 1 << 2
    SEND_FUA = 1 << 3
    ROTATIONAL = 1 << 4
    SEND_TRIM = 1 << 5
    SEND_WRITE_ZEROES = 1 << 6
    SEND_DF = 1 << 7
    CAN_MULTI_CONN = 1 << 8
    SEND_RESIZE = 1 << 9
    SEND_CACHE = 1 << 10
    SEND_FAST_ZERO = 1 << 11


class Command(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7


class CommandFlag(enum.IntFlag):
    FUA = 1 << 0
    NO_HOLE = 1 << 1
    DF = 1 << 2
    REQ_ONE = 1 << 3
    FAST_ZERO = 1 << 4


class ReplyType(enum.IntEnum):
    NONE = 0
    OFFSET_DATA = 1
    OFFSET_HOLE = 2
    BLOCK_STATUS = 5
    ERROR = 2**15 + 1
    ERROR_OFFSET = 2**15 + 2


REPLY_FLAG_DONE = 1 << 0


class NbdError(enum.IntEnum):
    """The error values a reply may carry (they match Linux errno numbers)."""

    EPERM = 1
    EIO = 5
    ENOMEM = 12
    EINVAL = 22
    ENOSPC = 28
    EOVERFLOW = 75
    ENOTSUP = 95
    ESHUTDOWN = 108


# Limits. Strings (export names, descriptions) MUST be at most 4096 bytes. Option data up
# to OPTION_DATA_LIMIT is buffered and parsed; longer option data is skipped without being
# buffered and answered NBD_REP_ERR_TOO_BIG; option data longer than OPTION_DATA_HARD_LIMIT
# is treated as a denial of service and the connection is dropped.
MAX_STRING = 4096
OPTION_DATA_LIMIT = 16 * 1024
OPTION_DATA_HARD_LIMIT = 1024 * 1024
DEFAULT_MAXIMUM_PAYLOAD = 32 * 1024 * 1024

_REQUEST_HEADER = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
_OPTION_HEADER = struct.Struct(">QII")  # IHAVEOPT, option, length
_OPTION_REPLY_HEADER = struct.Struct(">QIII")  # magic, option, reply type, length
_SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
_CHUNK_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
_DATA_CHUNK_HEADER = struct.Struct(">IHHQIQ")  # chunk header + offset of OFFSET_DATA
_ERROR_CHUNK_HEADER = struct.Struct(">IHHQIIH")  # chunk header + error, message length

_SIMPLE_OK = struct.Struct(">IIQ")
_SMALL_PAYLOAD = 64 * 1024

# Hot-path copies of enum values (plain ints compare and hash fastest).
_CMD_READ = int(Command.READ)
_CMD_WRITE = int(Command.WRITE)
_CMD_DISC = int(Command.DISC)
_CMD_FLUSH = int(Command.FLUSH)
_CMD_TRIM = int(Command.TRIM)
_CMD_WRITE_ZEROES = int(Command.WRITE_ZEROES)
_FUA = int(CommandFlag.FUA)
_NO_HOLE = int(CommandFlag.NO_HOLE)
_DF = int(CommandFlag.DF)
_EINVAL = int(NbdError.EINVAL)
_EPERM = int(NbdError.EPERM)
_ENOSPC = int(NbdError.ENOSPC)
_EOVERFLOW = int(NbdError.EOVERFLOW)


class LocalProtocolError(RuntimeError):
    """The caller used the state machine wrongly (e.g. sent a reply before transmission)."""


# -- Exports --------------------------------------------------------------------------

def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True, slots=True)
class Export:
    """What the server offers under one name; sizes in bytes."""

    name: str
    size: int
    read_only: bool = False
    description: str = ""
    minimum_block_size: int = 1
    preferred_block_size: int = 4096
    maximum_payload_size: int = DEFAULT_MAXIMUM_PAYLOAD
    multi_conn: bool = True  # flush and FUA are visible across connections

    def __post_init__(self) -> None:
        if not 0 <= self.size < 2**64:
            raise ValueError(f"export size {self.size} out of range")
        if len(self.name.encode()) > MAX_STRING or len(self.description.encode()) > MAX_STRING:
            raise ValueError("export name and description must be at most 4096 bytes")
        if not (_is_power_of_two(self.minimum_block_size)
                and self.minimum_block_size <= 65536):
            raise ValueError("minimum block size must be a power of two up to 65536")
        if not (_is_power_of_two(self.preferred_block_size)
                and self.preferred_block_size >= max(self.minimum_block_size, 512)):
            raise ValueError("preferred block size must be a power of two >= max(minimum, 512)")
        if not self.preferred_block_size <= self.maximum_payload_size < 2**32:
            raise ValueError("maximum payload must be >= preferred block size and < 2**32")

    def transmission_flags(self, structured_replies: bool) -> int:
        flags = (TransmissionFlag.HAS_FLAGS | TransmissionFlag.SEND_FLUSH
                 | TransmissionFlag.SEND_FUA)
        if self.read_only:
            flags |= TransmissionFlag.READ_ONLY
        else:
            flags |= TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES
        if self.multi_conn:
            flags |= TransmissionFlag.CAN_MULTI_CONN
        if structured_replies:
            # Every read is answered with a single data chunk, so "don't fragment" holds.
            flags |= TransmissionFlag.SEND_DF
        return int(flags)


# -- Events ---------------------------------------------------------------------------

@dataclass(slots=True)
class Ready:
    """The handshake is over; requests for ``export`` follow."""

    export: Export
    structured_replies: bool
    transmission_flags: int


@dataclass(slots=True)
class ReadRequest:
    handle: int
    offset: int
    length: int
    flags: int


@dataclass(slots=True)
class WriteRequest:
    handle: int
    offset: int
    data: bytes
    fua: bool


@dataclass(slots=True)
class FlushRequest:
    handle: int


@dataclass(slots=True)
class TrimRequest:
    handle: int
    offset: int
    length: int
    fua: bool


@dataclass(slots=True)
class WriteZeroesRequest:
    handle: int
    offset: int
    length: int
    no_hole: bool
    fua: bool


@dataclass(slots=True)
class InvalidRequest:
    """A request refused without reaching the volume; answer ``send_error(handle, error)``."""

    handle: int
    command: int
    error: int
    reason: str


@dataclass(slots=True)
class Disconnect:
    """The client ended the session cleanly (NBD_CMD_DISC, NBD_OPT_ABORT or end of stream).

    After ``NBD_CMD_DISC`` the server finishes outstanding requests, then closes.
    """

    reason: str


@dataclass(slots=True)
class ProtocolViolation:
    """The client broke the protocol in a way that only a hard disconnect can answer."""

    reason: str


Event = (Ready | ReadRequest | WriteRequest | FlushRequest | TrimRequest | WriteZeroesRequest
         | InvalidRequest | Disconnect | ProtocolViolation)


class Phase(enum.Enum):
    CLIENT_FLAGS = "client flags"
    OPTIONS = "options"
    TRANSMISSION = "transmission"
    CLOSED = "closed"


_TRANSMISSION = Phase.TRANSMISSION


# -- The state machine ----------------------------------------------------------------

class ServerConnection:
    """One client connection, seen from the server."""

    def __init__(self, exports: Sequence[Export]) -> None:
        if not exports:
            raise ValueError("at least one export is needed")
        self.exports: tuple[Export, ...] = tuple(exports)
        self.phase = Phase.CLIENT_FLAGS
        self.export: Export | None = None
        self.structured_replies = False
        self.no_zeroes = False
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._outgoing = bytearray(struct.pack(">QQH", NBDMAGIC, IHAVEOPT,
                                               FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        # An over-long option whose data is being discarded: (option, bytes still to skip).
        self._skipping: tuple[int, int] | None = None
        # Transmission-phase settings, fixed by _enter_transmission.
        self._size = 0
        self._read_only = False
        self._min_block = 1
        self._max_payload = DEFAULT_MAXIMUM_PAYLOAD
        self._read_flags = _FUA

    # -- input --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes the client sent; ``b""`` means the client closed its end."""
        if self.phase is Phase.CLOSED:
            return
        if not data:
            self._eof = True
            return
        buf = self._buf
        pos = self._pos
        if pos:
            # Compact before growing; CPython deletes from the front of a bytearray cheaply.
            if pos == len(buf):
                buf.clear()
            else:
                del buf[:pos]
            self._pos = 0
        buf += data

    def data_to_send(self) -> bytes:
        """Bytes the handshake produced (greeting, option replies) that must go out now."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or ``None`` when more bytes are needed (or the session is over)."""
        if self.phase is not _TRANSMISSION:
            return self._next_handshake_event()
        buf = self._buf
        pos = self._pos
        body = pos + 28
        if len(buf) < body:
            return self._end_of_input()
        magic, flags, command, handle, offset, length = _REQUEST_HEADER.unpack_from(buf, pos)
        if magic != REQUEST_MAGIC:
            return self._violation(f"bad request magic {magic:#010x}")
        if command == _CMD_WRITE:
            if length > self._max_payload:
                # The payload cannot be skipped without reading that much: hang up.
                return self._violation(
                    f"write of {length} bytes exceeds the maximum payload {self._max_payload}")
            end = body + length
            if len(buf) < end:
                return self._end_of_input()
            if length <= _SMALL_PAYLOAD:
                data = bytes(buf[body:end])  # quickest for small payloads
            else:
                with memoryview(buf) as view:  # one copy instead of two
                    data = bytes(view[body:end])
            self._pos = end
            if flags & ~_FUA:
                return InvalidRequest(handle, command, _EINVAL, f"bad write flags {flags:#x}")
            if self._read_only:
                return InvalidRequest(handle, command, _EPERM, "export is read-only")
            problem = self._check_range(command, offset, length)
            if problem is not None:
                return InvalidRequest(handle, command, problem[0], problem[1])
            return WriteRequest(handle, offset, data, bool(flags & _FUA))
        self._pos = body
        if command == _CMD_READ:
            if flags & ~self._read_flags:
                return InvalidRequest(handle, command, _EINVAL, f"bad read flags {flags:#x}")
            if length > self._max_payload:
                # Structured replies may refuse over-large reads with EOVERFLOW (the client
                # retries smaller); simple replies have no such error.
                error = _EOVERFLOW if self.structured_replies else _EINVAL
                return InvalidRequest(
                    handle, command, error,
                    f"read of {length} bytes exceeds the maximum payload {self._max_payload}")
            problem = self._check_range(command, offset, length)
            if problem is not None:
                return InvalidRequest(handle, command, problem[0], problem[1])
            return ReadRequest(handle, offset, length, flags)
        if command == _CMD_FLUSH:
            if flags & ~_FUA:
                return InvalidRequest(handle, command, _EINVAL, f"bad flush flags {flags:#x}")
            if offset or length:
                return InvalidRequest(handle, command, _EINVAL,
                                      "flush offset and length must be zero")
            return FlushRequest(handle)
        if command == _CMD_TRIM or command == _CMD_WRITE_ZEROES:
            allowed = _FUA if command == _CMD_TRIM else _FUA | _NO_HOLE
            if flags & ~allowed:
                return InvalidRequest(handle, command, _EINVAL,
                                      f"bad flags {flags:#x} for {Command(command).name}")
            if self._read_only:
                return InvalidRequest(handle, command, _EPERM, "export is read-only")
            problem = self._check_range(command, offset, length)
            if problem is not None:
                return InvalidRequest(handle, command, problem[0], problem[1])
            if command == _CMD_TRIM:
                return TrimRequest(handle, offset, length, bool(flags & _FUA))
            return WriteZeroesRequest(handle, offset, length, bool(flags & _NO_HOLE),
                                      bool(flags & _FUA))
        if command == _CMD_DISC:
            self._close()
            return Disconnect("client sent NBD_CMD_DISC")
        return InvalidRequest(handle, command, _EINVAL, f"unsupported command {command}")

    def _check_range(self, command: int, offset: int, length: int) -> tuple[int, str] | None:
        if length == 0:
            return _EINVAL, "zero-length request"
        block = self._min_block
        if (offset | length) & (block - 1):
            return _EINVAL, f"request {offset}+{length} not aligned to {block} bytes"
        if offset + length > self._size:
            # proto.md: ENOSPC for writes beyond the end, EINVAL for reads and trims.
            error = _ENOSPC if command == _CMD_WRITE or command == _CMD_WRITE_ZEROES else _EINVAL
            return error, f"request {offset}+{length} beyond the end ({self._size} bytes)"
        return None

    def _end_of_input(self, inside_message: bool = False) -> Event | None:
        if not self._eof:
            return None
        complete = self._pos == len(self._buf) and not inside_message
        self._close()
        if complete:
            return Disconnect("client closed the connection")
        return ProtocolViolation("connection closed in the middle of a message")

    def _violation(self, reason: str) -> ProtocolViolation:
        self._close()
        return ProtocolViolation(reason)

    def _close(self) -> None:
        self.phase = Phase.CLOSED
        self._buf = bytearray()
        self._pos = 0

    # -- handshake ----------------------------------------------------------------

    def _next_handshake_event(self) -> Event | None:
        while self.phase is Phase.CLIENT_FLAGS or self.phase is Phase.OPTIONS:
            buf = self._buf
            available = len(buf) - self._pos
            if self._skipping is not None:
                option, remaining = self._skipping
                step = min(remaining, available)
                self._pos += step
                remaining -= step
                if remaining:
                    self._skipping = (option, remaining)
                    return self._end_of_input(inside_message=True)
                self._skipping = None
                self._reply(option, OptionReply.ERR_TOO_BIG, b"option data too long")
                continue
            if self.phase is Phase.CLIENT_FLAGS:
                if available < 4:
                    return self._end_of_input()
                (client_flags,) = struct.unpack_from(">I", buf, self._pos)
                self._pos += 4
                if client_flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES):
                    return self._violation(f"unknown client flags {client_flags:#x}")
                # Fixed newstyle is honoured even if the client did not set the bit; only
                # NBD_OPT_EXPORT_NAME is sent by clients that do not know it anyway.
                self.no_zeroes = bool(client_flags & FLAG_C_NO_ZEROES)
                self.phase = Phase.OPTIONS
                continue
            if available < 16:
                return self._end_of_input()
            magic, option, length = _OPTION_HEADER.unpack_from(buf, self._pos)
            if magic != IHAVEOPT:
                return self._violation(f"bad option magic {magic:#018x}")
            if length > OPTION_DATA_LIMIT:
                if option == Option.EXPORT_NAME or length > OPTION_DATA_HARD_LIMIT:
                    return self._violation(f"option {option} with {length} bytes of data")
                self._pos += 16
                self._skipping = (option, length)
                continue
            if available < 16 + length:
                return self._end_of_input()
            start = self._pos + 16
            data = bytes(buf[start:start + length])
            self._pos = start + length
            event = self._handle_option(option, data)
            if event is not None:
                return event
        return None

    def _reply(self, option: int, reply: int, data: bytes = b"") -> None:
        self._outgoing += _OPTION_REPLY_HEADER.pack(OPTION_REPLY_MAGIC, option, reply, len(data))
        self._outgoing += data

    def _find_export(self, name: bytes) -> Export | None:
        if not name:
            return self.exports[0]  # the default export
        for export in self.exports:
            if export.name.encode() == name:
                return export
        return None

    def _handle_option(self, option: int, data: bytes) -> Event | None:
        if option == Option.EXPORT_NAME:
            export = self._find_export(data)
            if export is None:
                # This option cannot carry an error: the spec says to terminate.
                return self._violation(f"unknown export {data[:64]!r} in NBD_OPT_EXPORT_NAME")
            flags = export.transmission_flags(self.structured_replies)
            self._outgoing += struct.pack(">QH", export.size, flags)
            if not self.no_zeroes:
                self._outgoing += bytes(124)
            return self._enter_transmission(export, flags)
        if option == Option.ABORT:
            self._reply(option, OptionReply.ACK)
            self._close()
            return Disconnect("client sent NBD_OPT_ABORT")
        if option == Option.LIST:
            if data:
                self._reply(option, OptionReply.ERR_INVALID, b"NBD_OPT_LIST takes no data")
                return None
            for export in self.exports:
                name = export.name.encode()
                self._reply(option, OptionReply.SERVER,
                            struct.pack(">I", len(name)) + name + export.description.encode())
            self._reply(option, OptionReply.ACK)
            return None
        if option == Option.STARTTLS:
            if data:
                self._reply(option, OptionReply.ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")
            else:
                self._reply(option, OptionReply.ERR_POLICY, b"TLS is not offered")
            return None
        if option == Option.INFO or option == Option.GO:
            return self._handle_info(option, data)
        if option == Option.STRUCTURED_REPLY:
            if data:
                self._reply(option, OptionReply.ERR_INVALID,
                            b"NBD_OPT_STRUCTURED_REPLY takes no data")
                return None
            self.structured_replies = True
            self._reply(option, OptionReply.ACK)
            return None
        self._reply(option, OptionReply.ERR_UNSUP, b"option not supported")
        return None

    def _handle_info(self, option: int, data: bytes) -> Event | None:
        if len(data) < 6:
            self._reply(option, OptionReply.ERR_INVALID, b"option data too short")
            return None
        (name_length,) = struct.unpack_from(">I", data, 0)
        if name_length > len(data) - 6:
            self._reply(option, OptionReply.ERR_INVALID, b"export name longer than the option")
            return None
        if name_length > MAX_STRING:
            self._reply(option, OptionReply.ERR_TOO_BIG, b"export name too long")
            return None
        name = data[4:4 + name_length]
        (count,) = struct.unpack_from(">H", data, 4 + name_length)
        requests_at = 6 + name_length
        if len(data) != requests_at + 2 * count:
            self._reply(option, OptionReply.ERR_INVALID, b"information request list malformed")
            return None
        requested = set(struct.unpack_from(f">{count}H", data, requests_at))
        export = self._find_export(name)
        if export is None:
            self._reply(option, OptionReply.ERR_UNKNOWN, b"no such export")
            return None
        flags = export.transmission_flags(self.structured_replies)
        self._reply(option, OptionReply.INFO, struct.pack(">HQH", Info.EXPORT, export.size, flags))
        if Info.NAME in requested:
            self._reply(option, OptionReply.INFO,
                        struct.pack(">H", Info.NAME) + export.name.encode())
        if Info.DESCRIPTION in requested and export.description:
            self._reply(option, OptionReply.INFO,
                        struct.pack(">H", Info.DESCRIPTION) + export.description.encode())
        # Sent even when not asked for: the server enforces its minimum block size.
        self._reply(option, OptionReply.INFO,
                    struct.pack(">HIII", Info.BLOCK_SIZE, export.minimum_block_size,
                                export.preferred_block_size, export.maximum_payload_size))
        self._reply(option, OptionReply.ACK)
        if option == Option.GO:
            return self._enter_transmission(export, flags)
        return None

    def _enter_transmission(self, export: Export, flags: int) -> Ready:
        self.phase = Phase.TRANSMISSION
        self.export = export
        self._size = export.size
        self._read_only = export.read_only
        self._min_block = export.minimum_block_size
        self._max_payload = export.maximum_payload_size
        self._read_flags = _FUA | (_DF if self.structured_replies else 0)
        return Ready(export, self.structured_replies, flags)

    # -- output (transmission phase) -----------------------------------------------

    def _require_transmission(self) -> None:
        if self.export is None:
            raise LocalProtocolError("replies can only be sent in the transmission phase")

    def send_ok(self, handle: int) -> bytes:
        """A successful reply without data (write, flush, trim, write zeroes)."""
        if self.export is None:
            self._require_transmission()
        return _SIMPLE_OK.pack(SIMPLE_REPLY_MAGIC, 0, handle)

    def send_error(self, handle: int, error: int, message: str = "") -> bytes:
        """An error reply; a structured error chunk when structured replies are on."""
        self._require_transmission()
        if not self.structured_replies:
            return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)
        text = message.encode("utf-8", "replace")[:MAX_STRING]
        return _ERROR_CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, ReplyType.ERROR,
                                        handle, 6 + len(text), error, len(text)) + text

    def send_read_reply(self, handle: int, offset: int, data: bytes) -> tuple[bytes, bytes]:
        """The whole successful reply to a read, as (header, data) to write one after the other.

        With structured replies this is one ``OFFSET_DATA`` chunk marked done: the data is
        in hand, so no error can follow it.
        """
        if self.export is None:
            self._require_transmission()
        if self.structured_replies:
            return (_DATA_CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE,
                                            ReplyType.OFFSET_DATA, handle, 8 + len(data),
                                            offset), data)
        return _SIMPLE_OK.pack(SIMPLE_REPLY_MAGIC, 0, handle), data

    def send_offset_data_chunk(self, handle: int, offset: int, data: bytes,
                               done: bool = False) -> tuple[bytes, bytes]:
        """One ``NBD_REPLY_TYPE_OFFSET_DATA`` chunk (structured replies only)."""
        self._require_structured()
        return (_DATA_CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0,
                                        ReplyType.OFFSET_DATA, handle, 8 + len(data), offset),
                data)

    def send_done_chunk(self, handle: int) -> bytes:
        """The ``NBD_REPLY_TYPE_NONE`` chunk that ends a structured reply."""
        self._require_structured()
        return _CHUNK_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, ReplyType.NONE,
                                  handle, 0)

    def _require_structured(self) -> None:
        self._require_transmission()
        if not self.structured_replies:
            raise LocalProtocolError("structured replies were not negotiated")
