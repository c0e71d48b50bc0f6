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
    """`python -m firmware.receive_app ...`, started and stopped by the test."""

    def __init__(self, workdir: Path, image: Path, key_file: Path, extra: list[str]) -> None:
        self.workdir = workdir
        self.image = image
        self.key_file = key_file
        self.extra = extra
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "receiver.log"

    def start(self, port: int = 0) -> ReceiverProcess:
        cmd = [sys.executable, "-m", "firmware.receive_app",
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
        out = subprocess.run([sys.executable, "-m", "firmware.receive_app",
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


# --- the appliance side: `tandem run --remote ...` as a subprocess ------------------------

def appliance_status_ready(status: dict[str, object], linked: bool = True) -> bool:
    """The mirror holds everything: ordered, no lag, nothing to resync (and handed over)."""
    done = (status.get("mirror_state") == "ordered" and status.get("mirror_lag_bytes") == 0
            and status.get("resync_remaining_bytes") == 0
            and status.get("mirror_inflight_bytes", 0) == 0)
    if linked:
        done = done and status.get("link_remote_consistent") is True \
            and status.get("link_connected") is True
    return done


def wait_converged(app, timeout: float = 60.0, linked: bool = True) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        status = app.status()
        if appliance_status_ready(status, linked):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"the mirror did not converge: {status}")
        time.sleep(0.25)


BLOCK = 4096
_MAGIC = b"TNDMLOG1"


def log_block(block: int, seq: int) -> bytes:
    """A block's content for write number ``seq``: self-describing, the rest derived."""
    head = _MAGIC + block.to_bytes(8, "little") + seq.to_bytes(8, "little")
    filler = (seq.to_bytes(8, "little") * (BLOCK // 8))[:BLOCK - len(head)]
    return head + filler


def read_log_block(data: bytes) -> tuple[int, int] | None:
    """(block, seq) of a block written by log_block; None for anything else (zeroes)."""
    if data[:8] != _MAGIC:
        return None
    block = int.from_bytes(data[8:16], "little")
    seq = int.from_bytes(data[16:24], "little")
    if data != log_block(block, seq):
        raise AssertionError(f"block {block}: torn or foreign content (seq {seq})")
    return block, seq


class WriteLog:
    """Writes through NBD one at a time, logging each before it is issued."""

    def __init__(self, blocks: int, seed: int = 0) -> None:
        import random

        self.blocks = blocks
        self.rnd = random.Random(seed)
        self.log: list[int] = []  # block of write number i+1
        self.acked = 0  # writes 1..acked were acknowledged

    def run(self, uri: str, stop: threading.Event, limit: int | None = None) -> None:
        import nbd

        handle = nbd.NBD()
        handle.connect_uri(uri)
        try:
            while not stop.is_set() and (limit is None or len(self.log) < limit):
                block = self.rnd.randrange(self.blocks)
                self.log.append(block)
                seq = len(self.log)
                handle.pwrite(log_block(block, seq), block * BLOCK)
                self.acked = seq
        except nbd.Error:
            pass  # the appliance went away (a test killed it)
        finally:
            try:
                handle.shutdown()
            except nbd.Error:
                pass

    def image_seqs(self, image: bytes) -> dict[int, int]:
        found: dict[int, int] = {}
        for block in range(self.blocks):
            parsed = read_log_block(image[block * BLOCK:(block + 1) * BLOCK])
            if parsed is not None:
                assert parsed[0] == block, f"block {parsed[0]} found at {block}"
                found[block] = parsed[1]
        return found

    def expected_after(self, k: int) -> dict[int, int]:
        """Each block's last write among writes 1..k."""
        last: dict[int, int] = {}
        for seq, block in enumerate(self.log[:k], start=1):
            last[block] = seq
        return last

    def check_prefix(self, image: bytes) -> int:
        """The image holds exactly writes 1..k for some k (returned), nothing out of order."""
        found = self.image_seqs(image)
        k = max(found.values(), default=0)
        expected = self.expected_after(k)
        wrong = {b: (found.get(b), expected.get(b)) for b in set(found) | set(expected)
                 if found.get(b) != expected.get(b)}
        assert not wrong, (f"not a prefix of the write log: holds write {k} but "
                           f"(found, expected) differ at {dict(list(wrong.items())[:8])}")
        return k

    def check_holds_acked(self, image: bytes) -> None:
        """Every acknowledged write is there, or a later write to its block."""
        found = self.image_seqs(image)
        expected = self.expected_after(self.acked)
        lost = {b: (found.get(b), s) for b, s in expected.items() if found.get(b, 0) < s}
        assert not lost, ("acknowledged writes lost (found, expected): "
                          f"{dict(list(lost.items())[:8])}")
