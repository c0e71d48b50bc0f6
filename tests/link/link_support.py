"""Helpers for the link tests: a `tandem receive` subprocess, a cuttable TCP proxy, waiting."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KEY = b"c2VjcmV0IGxpbmsga2V5Cg==\n"  # any bytes: the file's whole content is the key
SIZE = 8 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    """`python -m firmware.mirror.link.receiver ...`, started and stopped by the test."""

    def __init__(self, workdir: Path, image: Path, key_file: Path, extra: list[str]) -> None:
        self.workdir = workdir
        self.image = image
        self.key_file = key_file
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "receiver.log"

    def start(self, port: int = 0) -> ReceiverProcess:
        cmd = [sys.executable, "-m", "firmware.mirror.link.receiver",
               "--listen", f"127.0.0.1:{port}", "--medium", str(self.image),
               "--key-file", str(self.key_file), "-v", *self.extra]
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log)
        log.close()
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.kill()
            raise AssertionError(f"receiver did not start: {line!r}\n{self.log.read_text()}")
        self.port = int(match.group(1))
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(10)

    def admin(self, *args: str) -> str:
        """Run `receive --promote` / `--discard-my-data` on the same medium."""
        out = subprocess.run([sys.executable, "-m", "firmware.mirror.link.receiver",
                              "--medium", str(self.image), *args],
                             cwd=REPO, capture_output=True, check=True, timeout=30)
        return out.stdout.decode()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class CuttableProxy:
    """A TCP relay on 127.0.0.1 whose connections the test can cut at any moment."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    @staticmethod
    def _relay(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_for_path(path: str | os.PathLike[str], timeout: float = 10.0) -> None:
    wait_for(lambda: os.path.exists(path), timeout, f"{path}")
