"""What the appliance's wire protocols share: strict CBOR decoding and field checks.

The remote site's link (``hal/media/remote/frames.py``), the receiver's journal and the
peer appliance's link (``firmware/peer/frames.py``) all decode CBOR that arrived from
outside. Each accepts exact shapes only; the pieces here are the part they have in common:
a decoder that refuses indefinite lengths, deep nesting and trailing bytes, and one-line
predicates over decoded values (``type(v) is int`` rather than ``isinstance``: a CBOR
``true`` must not pass as the integer 1).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import cbor2

MAX_U64 = (1 << 64) - 1

Check = Callable[[Any], bool]


class MalformedCbor(ValueError):
    """The bytes are not exactly one CBOR item of the allowed depth."""


def strict_cbor(payload: bytes, max_depth: int) -> Any:
    """Decode exactly one CBOR item from ``payload``; anything else is MalformedCbor."""
    try:
        fp = io.BytesIO(payload)
        value = cbor2.CBORDecoder(fp, max_depth=max_depth, allow_indefinite=False).decode()
        consumed = fp.tell()
    except Exception as exc:  # cbor2 raises several kinds; all mean garbage here
        raise MalformedCbor(f"undecodable CBOR: {exc}") from None
    if consumed != len(payload):
        raise MalformedCbor("trailing bytes after the CBOR item")
    return value


def u64(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_U64


def flag(v: Any) -> bool:
    return type(v) is bool


def blob(limit: int) -> Check:
    return lambda v: type(v) is bytes and len(v) <= limit


def text(limit: int) -> Check:
    return lambda v: type(v) is str and len(v) <= limit


def maybe(check: Check) -> Check:
    return lambda v: v is None or check(v)


def list_of(check: Check, limit: int) -> Check:
    return lambda v: type(v) is list and len(v) <= limit and all(check(x) for x in v)


def one_of(*values: str) -> Check:
    return lambda v: type(v) is str and v in values
