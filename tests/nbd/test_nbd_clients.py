"""The NBD server against real clients: nbdinfo, qemu-img, qemu-io, nbdcopy, libnbd, fio."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import time

import pytest

from tests.nbd.conftest import need
from tests.nbd.nbd_wire import (
    OPT_GO,
    REP_ERR_TOO_BIG,
    client_flags,
    go,
    option,
    request,
)

nbd = pytest.importorskip("nbd")

MiB = 1 << 20
RUN_TIMEOUT = 60  # guards against hangs only


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def random_image(path, size: int, seed: int) -> bytes:
    """Random data with some all-zero stretches, so sparse paths get exercised too."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for _ in range(8):
        start = rng.randrange(0, size, 4096)
        data[start:start + rng.randrange(4096, 2 * MiB, 4096)] = b""
    data = bytes(data[:size].ljust(size, b"\0"))
    path.write_bytes(data)
    return data


def connect(uri: str, strict: bool = True):  # noqa: ANN201 - an nbd.NBD handle
    handle = nbd.NBD()
    if not strict:
        handle.set_strict_mode(0)  # let requests the server must refuse reach it
    handle.connect_uri(uri)
    return handle


# -- nbdinfo -----------------------------------------------------------------------------

def test_nbdinfo_json(nbd_server):
    need("nbdinfo")
    info = json.loads(run("nbdinfo", "--json", nbd_server.uri).stdout)
    assert info["protocol"] == "newstyle-fixed"
    assert info["structured"] is True
    [export] = info["exports"]
    assert export["export-name"] == "tandem"
    assert export["export-size"] == 64 * MiB
    assert export["description"] == "Tandem mirrored volume"
    for key in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df"):
        assert export[key] is True, key
    assert export["is_read_only"] is False
    assert (export["block_size_minimum"], export["block_size_preferred"],
            export["block_size_maximum"]) == (512, 4096, 32 * MiB)


def test_nbdinfo_on_a_read_only_export(nbd_server_factory):
    need("nbdinfo")
    server = nbd_server_factory(size=MiB, read_only=True)
    [export] = json.loads(run("nbdinfo", "--json", server.uri).stdout)["exports"]
    assert export["is_read_only"] is True
    assert export["can_trim"] is False and export["can_zero"] is False


def test_nbdinfo_list(nbd_server):
    need("nbdinfo")
    out = run("nbdinfo", "--list", f"nbd://127.0.0.1:{nbd_server.port}").stdout
    assert 'export="tandem"' in out
    assert "description: Tandem mirrored volume" in out


# -- qemu ----------------------------------------------------------------------------------

def test_qemu_img_convert_in_compare_and_out(nbd_server_factory, tmp_path):
    need("qemu-img")
    server = nbd_server_factory(size=32 * MiB)
    source = tmp_path / "source.img"
    data = random_image(source, 32 * MiB, seed=1)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), server.uri)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), server.uri)
    back = tmp_path / "back.img"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri, str(back))
    assert back.read_bytes() == data
    # A change on the export is seen by compare.
    handle = connect(server.uri)
    handle.pwrite(b"\x5a" * 4096, 12 * MiB)
    handle.shutdown()
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), server.uri,
               check=False).returncode == 1


def test_qemu_io_patterns(nbd_server):
    need("qemu-io")
    commands = [
        "write -P 0xab 0 64k", "read -P 0xab 0 64k",
        "write -f -P 0xcd 64k 4k", "read -P 0xcd 64k 4k",
        "discard 0 4k", "read -P 0 0 4k", "read -P 0xab 4k 60k",
        "write -P 0xee 1M 128k", "write -z 1M 64k", "read -P 0 1M 64k",
        "read -P 0xee 1088k 64k",
        "write -P 0x11 2M 3M",  # larger than one request of some clients
        "read -P 0x11 2M 3M",
        "flush",
    ]
    args = ["qemu-io", "-f", "raw"]
    for command in commands:
        args += ["-c", command]
    out = run(*args, nbd_server.uri).stdout
    assert "Pattern verification failed" not in out
    assert "error" not in out.lower()
    assert nbd_server.target.flushes >= 1
    assert nbd_server.target.fua_writes >= 1


# -- nbdcopy and libnbd ----------------------------------------------------------------------

def test_nbdcopy_in_and_out(nbd_server_factory, tmp_path):
    need("nbdcopy")
    server = nbd_server_factory(size=16 * MiB)
    source = tmp_path / "source.img"
    data = random_image(source, 16 * MiB, seed=2)
    run("nbdcopy", "--flush", str(source), server.uri)
    back = tmp_path / "back.img"
    run("nbdcopy", server.uri, str(back))
    assert back.read_bytes() == data
    assert server.target.flushes >= 1


def test_libnbd_reads_writes_and_negotiation(nbd_server):
    handle = connect(nbd_server.uri)
    assert handle.get_size() == 64 * MiB
    assert handle.get_structured_replies_negotiated()
    assert handle.can_multi_conn() and handle.can_fua() and handle.can_zero()
    assert handle.get_block_size(nbd.SIZE_MINIMUM) == 512
    data = os.urandom(MiB)
    handle.pwrite(data, 5 * MiB)
    handle.pwrite(b"\1" * 4096, 5 * MiB, nbd.CMD_FLAG_FUA)
    assert handle.pread(MiB, 5 * MiB) == b"\1" * 4096 + data[4096:]
    handle.zero(8192, 5 * MiB + 4096)
    handle.trim(4096, 5 * MiB + 12288, nbd.CMD_FLAG_FUA)
    handle.flush()
    assert handle.pread(12288, 5 * MiB + 4096) == bytes(12288)
    handle.shutdown()


def test_libnbd_many_requests_in_flight(nbd_server):
    handle = connect(nbd_server.uri)
    blocks = {i: os.urandom(4096) for i in range(256)}
    cookies = [handle.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(d)), i * 8192)
               for i, d in blocks.items()]
    while handle.aio_in_flight() > 0:
        handle.poll(-1)
    assert all(handle.aio_command_completed(c) for c in cookies)
    for i, d in blocks.items():
        assert handle.pread(4096, i * 8192) == d
    handle.shutdown()


def nbd_error_of(call) -> str:  # noqa: ANN001 - a callable doing one request
    with pytest.raises(nbd.Error) as caught:
        call()
    return caught.value.errno


def test_libnbd_sees_the_protocol_errors(nbd_server, nbd_server_factory):
    handle = connect(nbd_server.uri, strict=False)
    size = handle.get_size()
    assert nbd_error_of(lambda: handle.pread(4096, size)) == "EINVAL"
    assert nbd_error_of(lambda: handle.pread(8192, size - 4096)) == "EINVAL"
    assert nbd_error_of(lambda: handle.pwrite(bytes(4096), size)) == "ENOSPC"
    assert nbd_error_of(lambda: handle.zero(4096, size)) == "ENOSPC"
    assert nbd_error_of(lambda: handle.trim(4096, size)) == "EINVAL"
    assert nbd_error_of(lambda: handle.pread(512, 1)) == "EINVAL"  # misaligned
    assert nbd_error_of(lambda: handle.pread(33 * MiB, 0)) == "EOVERFLOW"
    assert handle.pread(512, 0) == bytes(512)  # the connection is still good
    handle.shutdown()

    read_only = connect(nbd_server_factory(size=MiB, read_only=True).uri, strict=False)
    assert read_only.is_read_only()
    assert nbd_error_of(lambda: read_only.pwrite(bytes(512), 0)) == "EPERM"
    assert nbd_error_of(lambda: read_only.trim(512, 0)) == "EPERM"
    assert read_only.pread(512, 0) == bytes(512)
    read_only.shutdown()


def test_libnbd_without_structured_replies(nbd_server):
    handle = nbd.NBD()
    handle.set_request_structured_replies(False)
    handle.set_strict_mode(0)
    handle.connect_uri(nbd_server.uri)
    assert not handle.get_structured_replies_negotiated()
    handle.pwrite(b"s" * 8192, 0)
    assert handle.pread(8192, 0) == b"s" * 8192
    assert nbd_error_of(lambda: handle.pread(4096, handle.get_size())) == "EINVAL"
    handle.shutdown()


def test_libnbd_old_style_export_name(nbd_server):
    handle = nbd.NBD()
    handle.set_opt_mode(False)
    handle.set_request_structured_replies(False)
    handle.set_handshake_flags(0)  # no fixed newstyle: NBD_OPT_EXPORT_NAME only
    handle.connect_uri(nbd_server.uri)
    handle.pwrite(b"o" * 512, 0)
    assert handle.pread(512, 0) == b"o" * 512
    handle.shutdown()


def test_two_clients_at_once(nbd_server):
    first = connect(nbd_server.uri)
    second = connect(nbd_server.uri)
    assert nbd_server.connections == 2
    first.pwrite(b"1" * 4096, 0)
    first.flush()
    assert second.pread(4096, 0) == b"1" * 4096
    first.shutdown()
    second.shutdown()


# -- fio -------------------------------------------------------------------------------------

def test_fio_random_writes_verified(nbd_server):
    need("fio")
    result = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={nbd_server.uri}",
                 "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=16m",
                 "--runtime=2", "--time_based", "--verify=crc32c", "--verify_fatal=1",
                 "--verify_state_save=0",
                 "--output-format=json")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    job = report["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["io_bytes"] > 0
    assert job["read"]["io_bytes"] > 0  # the verification reads


# -- garbage on the port ------------------------------------------------------------------------

def raw_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    return sock


def wait_for(condition) -> None:  # noqa: ANN001 - a predicate
    for _ in range(int(RUN_TIMEOUT / 0.01)):
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError("condition never became true")


def closed_by_server(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    sock.close()
    return True


def test_garbage_does_not_disturb_a_working_client(nbd_server):
    handle = connect(nbd_server.uri)
    rng = random.Random(3)

    def still_working(n: int) -> None:
        data = bytes([n]) * 4096
        handle.pwrite(data, n * 4096)
        assert handle.pread(4096, n * 4096) == data

    # Random bytes straight after the greeting.
    for n in range(5):
        sock = raw_connection(nbd_server.port)
        sock.sendall(rng.randbytes(rng.randrange(1, 4096)))
        closed_by_server(sock)
        still_working(n)

    # A truncated handshake, then the client goes away.
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags()[:2])
    sock.close()
    still_working(10)

    # An option length that is absurd: disconnect; one that is merely too long: TOO_BIG.
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags() + option(OPT_GO, length=0xFFFFFFFF))
    assert closed_by_server(sock)
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags() + option(OPT_GO, length=100_000) + bytes(100_000))
    _, opt, rtype, _ = struct.unpack(">QIII", sock.recv(20, socket.MSG_WAITALL))
    assert (opt, rtype) == (OPT_GO, REP_ERR_TOO_BIG)
    sock.close()
    still_working(11)

    # A bad request magic after a good handshake.
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags() + go())
    sock.sendall(request(0, 1, 0, 512, magic=0x12345678))
    assert closed_by_server(sock)
    still_working(12)

    # A write announcing more payload than allowed, and one cut off mid-payload.
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags() + go() + request(1, 1, 0, 0xFFFFFFFF))
    assert closed_by_server(sock)
    sock = raw_connection(nbd_server.port)
    sock.sendall(client_flags() + go() + request(1, 1, 0, 65536) + bytes(1000))
    sock.close()
    still_working(13)

    handle.shutdown()
    wait_for(lambda: nbd_server.connections == 0)  # every connection is gone
