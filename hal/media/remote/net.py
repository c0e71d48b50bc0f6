"""Small socket helpers shared by both ends of the link, and the rate cap's token bucket."""

from __future__ import annotations

import asyncio
import socket
import ssl

PACE_SLICE = 64 * 1024  # bytes sent at a time when a rate cap is set


def set_keepalive(writer: asyncio.StreamWriter) -> None:
    """Notice a peer that vanished (power cut, cable) within about 25 s, not hours."""
    sock = writer.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def server_tls_context(cert: str, key: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """Verify the receiver's certificate against ``cafile`` (or the system's CAs).

    The HMAC handshake authenticates the peer either way; TLS adds secrecy.
    """
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


class TokenBucket:
    """Pacing for a rate cap: how long to wait before sending ``n`` more bytes."""

    def __init__(self, rate: float, burst: int | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(PACE_SLICE, rate / 20))
        self._tokens = self.burst
        self._last: float | None = None

    def delay(self, n: int, now: float) -> float:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
