"""Acceptance 8: garbage on the NBD port and on the console never stops the appliance."""

from __future__ import annotations

import os
import random
import socket
import struct

import nbd

from tests.e2e.appliance import RunningAppliance

NBD_MAGIC = b"NBDMAGIC"
OPTS_MAGIC = 0x49484156454F5054
REQUEST_MAGIC = 0x25609513


def send_and_close(port: int, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.settimeout(2)
        try:
            s.recv(256)  # the server's greeting
            s.sendall(payload)
            s.recv(4096)
        except OSError:
            pass  # the server may hang up on us: that is the point


def handshake_payloads(rng: random.Random) -> list[bytes]:
    go = struct.pack(">QII", OPTS_MAGIC, 7, 0)  # NBD_OPT_GO with an empty body (too short)
    huge = struct.pack(">QII", OPTS_MAGIC, 1, 0xFFFFFFF0)  # EXPORT_NAME of 4 GiB
    flags = struct.pack(">I", 3)
    request = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, 1, 1, 0, 0x7FFFFFFF)  # oversize write
    return [
        b"",
        rng.randbytes(4),
        rng.randbytes(3000),
        flags + go,
        flags + huge,
        flags + struct.pack(">QII", OPTS_MAGIC, 1, 6) + b"tandem" + request,
        flags + struct.pack(">QII", OPTS_MAGIC, 1, 6) + b"tandem" + rng.randbytes(64),
        flags + struct.pack(">QII", 0xDEADBEEF, 1, 0),
    ]


def test_garbage_everywhere_while_a_client_keeps_working(appliance: RunningAppliance) -> None:
    rng = random.Random(8)
    good = nbd.NBD()
    good.connect_uri(appliance.uri)
    payloads = handshake_payloads(rng) + [rng.randbytes(rng.randrange(1, 5000))
                                          for _ in range(30)]
    for i, payload in enumerate(payloads):
        send_and_close(appliance.nbd_port, payload)
        block = os.urandom(4096)
        good.pwrite(block, i * 4096)
        assert good.pread(4096, i * 4096) == block
    # Out-of-range I/O gets an error, and the connection stays usable.
    try:
        good.pread(4096, 256 << 20)
        raise AssertionError("read past the end succeeded")
    except nbd.Error as exc:
        assert exc.errno is not None
    assert good.pread(512, 0)
    # Console garbage: binary junk, overlong lines, half commands, then a real one.
    for junk in (rng.randbytes(2000), b"x" * 5000 + b"\n", b"\xff\xfe\x00\x1b[A\r\n",
                 b"status --bogus\r\n", b"mirror sideways\n"):
        with socket.create_connection(("127.0.0.1", appliance.console_port), timeout=5) as s:
            s.sendall(junk)
    assert appliance.status()["hits"] + appliance.status()["misses"] > 0
    assert "unknown command" in appliance.console("frobnicate", check=False)
    good.pwrite(b"z" * 512, 0)
    good.flush()
    good.shutdown()
    assert appliance.proc is not None and appliance.proc.poll() is None
