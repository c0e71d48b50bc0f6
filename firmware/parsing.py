"""Operator-facing value syntax, one definition for every command line and profile.

Sizes (``64K``, ``1.5G``, ``4096``, ``256MiB``: binary units) and ``HOST:PORT``
addresses (``[IPv6]:PORT`` too) were once parsed in four places that disagreed;
every option, board profile default and URL now goes through these two.
"""

from __future__ import annotations

import argparse

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SyntaxValueError(argparse.ArgumentTypeError, ValueError):
    """A value an operator typed is malformed: argparse shows the message as it is,
    and code that is no command line catches it as a ValueError."""


def parse_size(text: str | int) -> int:
    """'64K', '1G', '1.5G', '256MiB', '4096' → bytes (binary units); positive only."""
    if isinstance(text, int):
        if text <= 0:
            raise SyntaxValueError(f"size must be positive: {text}")
        return text
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[:-1] if unit else value
    try:
        size = int(float(number) * _UNITS[unit])
    except (ValueError, OverflowError):
        raise SyntaxValueError(f"not a size: {text!r} (e.g. 64K, 256M, 1G)") from None
    if size <= 0:
        raise SyntaxValueError(f"size must be positive: {text!r}")
    return size


def parse_host_port(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """HOST:PORT or [IPv6]:PORT → (host, port); an empty or absent host (``:PORT``,
    ``PORT``) is ``default_host``.

    Port 0 is accepted: a listening side then picks a free port.
    """
    text = text.strip()
    if text.isdigit():
        text = ":" + text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SyntaxValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or default_host, int(port)
