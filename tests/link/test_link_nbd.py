"""NbdMedium against real NBD servers: qemu-nbd and nbdkit's file plugin."""

from __future__ import annotations

import errno
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from link_support import free_port, wait_for_path

from firmware.second_medium import open_remote
from hal.media.base import MediumError
from hal.media.nbd import NbdMedium

SIZE = 8 * 1024 * 1024

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-nbd") and shutil.which("nbdkit")),
                                reason="needs qemu-nbd and nbdkit")


class NbdServer:
    def __init__(self, argv: list[str], ready: Path | None = None,
                 socket: Path | None = None) -> None:
        self.argv = argv
        self.ready = ready
        self.socket = socket
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NbdServer:
        for stale in (self.ready, self.socket):  # left behind by a killed server
            if stale is not None and stale.exists():
                stale.unlink()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        if self.ready is not None:
            wait_for_path(self.ready)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def servers():
    started: list[NbdServer] = []

    def make(argv: list[str], ready: Path | None = None, socket: Path | None = None
             ) -> NbdServer:
        server = NbdServer(argv, ready, socket)
        started.append(server)
        return server.start()

    yield make
    for s in started:
        s.kill()


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "export.img"
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


def qemu_nbd(servers, image: Path, sock: Path) -> NbdServer:
    pidfile = sock.with_suffix(".pid")  # written once the socket listens
    return servers(["qemu-nbd", "-f", "raw", "-t", "-k", str(sock), "--pid-file", str(pidfile),
                    str(image)], ready=pidfile, socket=sock)


def nbdkit(servers, image: Path, sock: Path, *filters: str, params: tuple[str, ...] = ()
           ) -> NbdServer:
    pidfile = sock.with_suffix(".pid")
    return servers(["nbdkit", "-f", "-U", str(sock), "-P", str(pidfile), *filters, "file",
                    str(image), *params], ready=pidfile, socket=sock)


def exercise(medium: NbdMedium, rnd: random.Random, runs: int = 10) -> bytearray:
    local = bytearray(SIZE)
    for _ in range(runs):
        for _ in range(rnd.randrange(1, 10)):
            offset = rnd.randrange(0, SIZE - 70000)
            if rnd.random() < 0.2:
                length = rnd.randrange(1, 65536)
                medium.write_zeroes(offset, length, punch=rnd.random() < 0.5)
                local[offset:offset + length] = bytes(length)
            else:
                data = rnd.randbytes(rnd.randrange(1, 65536))
                medium.pwrite(offset, data)
                local[offset:offset + len(data)] = data
        medium.flush()
    return local


@pytest.mark.parametrize("server", ["qemu-nbd", "nbdkit"])
def test_nbd_export_as_the_second_medium(servers, image, tmp_path, server):
    sock = tmp_path / "nbd.sock"
    (qemu_nbd if server == "qemu-nbd" else nbdkit)(servers, image, sock)
    medium = NbdMedium(f"nbd+unix:///?socket={sock}")
    assert medium.size == SIZE
    local = exercise(medium, random.Random(server))
    assert medium.pread(0, SIZE) == local
    medium.close()
    assert image.read_bytes() == local


def test_nbd_over_tcp(servers, image):
    port = free_port()
    pidfile = image.with_suffix(".pid")
    servers(["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "-P", str(pidfile), "file",
             str(image)], ready=pidfile)
    medium = NbdMedium(f"nbd://127.0.0.1:{port}")
    local = exercise(medium, random.Random(9), runs=3)
    medium.close()
    assert image.read_bytes() == local


def test_server_killed_mid_run_is_reported_once_then_reconnects(servers, image, tmp_path):
    sock = tmp_path / "nbd.sock"
    server = nbdkit(servers, image, sock)
    medium = NbdMedium(f"nbd+unix:///?socket={sock}")
    medium.pwrite(0, b"first run")
    medium.flush()
    medium.pwrite(4096, b"second run")
    server.kill()
    with pytest.raises(MediumError):
        medium.pread(0, 9)  # the connection is gone
    nbdkit(servers, image, sock)  # back, but the second run may be lost:
    with pytest.raises(MediumError):
        medium.pread(0, 9)  # reads do not take the report...
    with pytest.raises(MediumError):
        medium.flush()  # ...the write path does, once
    medium.pwrite(4096, b"second run")  # the next run reconnects
    medium.flush()
    assert medium.pread(0, 9) == b"first run"
    assert medium.pread(4096, 10) == b"second run"
    medium.close()


def test_injected_write_errors_surface_as_medium_errors(servers, image, tmp_path):
    sock = tmp_path / "nbd.sock"
    trigger = tmp_path / "inject"
    nbdkit(servers, image, sock, "--filter=error",
           params=("error-pwrite=ENOSPC", "error-pwrite-rate=100%",
                   f"error-pwrite-file={trigger}"))
    medium = NbdMedium(f"nbd+unix:///?socket={sock}")
    medium.pwrite(0, b"fine")
    trigger.touch()
    with pytest.raises(MediumError) as failed:
        medium.pwrite(0, b"full")
    assert failed.value.errno == errno.ENOSPC
    trigger.unlink()
    medium.pwrite(0, b"okay")  # the connection itself survived
    medium.flush()
    assert medium.pread(0, 4) == b"okay"
    medium.close()


def test_open_remote_takes_an_nbd_uri(servers, image, tmp_path):
    sock = tmp_path / "nbd.sock"
    nbdkit(servers, image, sock)
    medium = open_remote(f"nbd+unix:///?socket={sock}", size=SIZE)
    assert isinstance(medium, NbdMedium) and medium.size == SIZE
    medium.close()
    with pytest.raises(MediumError):
        open_remote(f"nbd+unix:///?socket={sock}", size=SIZE + 1)
