"""The peer link's byte framings, TCP and serial, with incremental decoders.

A payload (an authenticated peer message, see frames.py) travels as::

    TCP     u32 length | u32 crc32c(payload) | payload                  (big-endian)
    serial  0x00 | COBS( u16 length | u32 crc32c(payload) | payload ) | 0x00

TCP delivers bytes in order, so a frame boundary once lost (an impossible length, a
CRC that does not match) cannot be found again: the decoder stops and says so
(``broken``), and the runtime drops the connection. A serial line loses, flips and
invents bytes; COBS keeps 0x00 out of the encoded frame so that every 0x00 is a
boundary, and the decoder resynchronises at the next one. The leading 0x00 ends
whatever garbage came before the frame, so noise on an idle line costs no frame.

Decoders never raise on what they are fed: they count what they drop, by reason.
Only a payload whose length and CRC32C both match leaves a decoder; the message
layer then checks its MAC, so line noise that happens to pass the CRC still
cannot become a message.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass

from crc32c import crc32c

MAX_TCP_PAYLOAD = 1 << 20
MAX_SERIAL_PAYLOAD = 0xFFFF  # the u16 length

_TCP_HEAD = struct.Struct(">II")
_SERIAL_HEAD = struct.Struct(">HI")
_DELIMITER = b"\x00"


# --- COBS (consistent overhead byte stuffing) -----------------------------------------------


def cobs_encode(data: bytes) -> bytes:
    """``data`` with every 0x00 replaced by a distance code; the result holds no 0x00."""
    out = bytearray()
    for piece in data.split(b"\x00"):
        start = 0
        while len(piece) - start >= 254:  # a full block: code 0xFF, no zero follows it
            out.append(0xFF)
            out += piece[start:start + 254]
            start += 254
        out.append(len(piece) - start + 1)
        out += piece[start:]
    return bytes(out)


def cobs_decode(encoded: bytes) -> bytes | None:
    """The data :func:`cobs_encode` made ``encoded`` from, or None if it is not COBS."""
    out = bytearray()
    i = 0
    n = len(encoded)
    while i < n:
        code = encoded[i]
        end = i + code
        if code == 0 or end > n:
            return None
        block = encoded[i + 1:end]
        if 0 in block:
            return None
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_cobs_size(length: int) -> int:
    """The longest encoding of ``length`` bytes (one code byte per 254, plus one)."""
    return length + length // 254 + 1


# --- counters -------------------------------------------------------------------------------


@dataclass
class FramingCounters:
    """What a decoder delivered and what it dropped, by reason."""

    frames: int = 0
    crc: int = 0  # length right, checksum wrong: bit flips
    length: int = 0  # the length field disagrees with the bytes there (truncation, merging)
    oversized: int = 0  # longer than the decoder accepts
    cobs: int = 0  # not a COBS encoding
    garbage_bytes: int = 0  # bytes thrown away, whatever the reason

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def dropped(self) -> int:
        return self.crc + self.length + self.oversized + self.cobs


# --- TCP ------------------------------------------------------------------------------------


def encode_tcp(payload: bytes) -> bytes:
    if not payload or len(payload) > MAX_TCP_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes outside 1..{MAX_TCP_PAYLOAD}")
    return _TCP_HEAD.pack(len(payload), crc32c(payload)) + payload


class TcpFrameDecoder:
    """Splits a TCP byte stream into payloads; after a bad frame it is ``broken``."""

    def __init__(self, max_payload: int = MAX_TCP_PAYLOAD) -> None:
        self._max = max_payload
        self._buf = bytearray()
        self.counters = FramingCounters()
        self.broken: str | None = None  # why the stream lost its frame boundaries

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data`` (none once broken)."""
        if self.broken is not None:
            self.counters.garbage_bytes += len(data)
            return []
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= _TCP_HEAD.size:
            length, crc = _TCP_HEAD.unpack_from(buf, pos)
            if length == 0 or length > self._max:
                self._break("oversized" if length else "length", len(buf) - pos)
                return out
            end = pos + _TCP_HEAD.size + length
            if len(buf) < end:
                break
            payload = bytes(buf[pos + _TCP_HEAD.size:end])
            if crc32c(payload) != crc:
                self._break("crc", len(buf) - pos)
                return out
            out.append(payload)
            self.counters.frames += 1
            pos = end
        del buf[:pos]
        return out

    def _break(self, reason: str, dropped: int) -> None:
        setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        self.counters.garbage_bytes += dropped
        self._buf.clear()
        self.broken = reason


# --- serial ---------------------------------------------------------------------------------


def encode_serial(payload: bytes) -> bytes:
    if not payload or len(payload) > MAX_SERIAL_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes outside 1..{MAX_SERIAL_PAYLOAD}")
    frame = _SERIAL_HEAD.pack(len(payload), crc32c(payload)) + payload
    return _DELIMITER + cobs_encode(frame) + _DELIMITER


class SerialFrameDecoder:
    """Splits a noisy serial byte stream into payloads; resynchronises at every 0x00."""

    def __init__(self, max_payload: int = MAX_SERIAL_PAYLOAD) -> None:
        if not 1 <= max_payload <= MAX_SERIAL_PAYLOAD:
            raise ValueError(f"serial payloads are 1..{MAX_SERIAL_PAYLOAD} bytes")
        self._max = max_payload
        self._max_encoded = max_cobs_size(_SERIAL_HEAD.size + max_payload)
        self._buf = bytearray()
        self._skipping = False  # inside an oversized run: drop up to the next delimiter
        self.counters = FramingCounters()

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by ``data``."""
        out: list[bytes] = []
        pieces = data.split(_DELIMITER)
        for i, piece in enumerate(pieces):
            ended = i < len(pieces) - 1  # a delimiter follows this piece
            if self._skipping:
                self.counters.garbage_bytes += len(piece)
                if ended:
                    self._skipping = False
                continue
            self._buf += piece
            if len(self._buf) > self._max_encoded:
                self.counters.oversized += 1
                self.counters.garbage_bytes += len(self._buf)
                self._buf.clear()
                self._skipping = not ended
                continue
            if ended:
                encoded = bytes(self._buf)
                self._buf.clear()
                if encoded:
                    payload = self._unframe(encoded)
                    if payload is not None:
                        out.append(payload)
        return out

    def _unframe(self, encoded: bytes) -> bytes | None:
        c = self.counters
        frame = cobs_decode(encoded)
        if frame is None:
            c.cobs += 1
        elif len(frame) < _SERIAL_HEAD.size:
            c.length += 1
        else:
            length, crc = _SERIAL_HEAD.unpack_from(frame)
            payload = frame[_SERIAL_HEAD.size:]
            if length > self._max:
                c.oversized += 1
            elif length != len(payload) or length == 0:
                c.length += 1
            elif crc32c(payload) != crc:
                c.crc += 1
            else:
                c.frames += 1
                return payload
        c.garbage_bytes += len(encoded)
        return None
