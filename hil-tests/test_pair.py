"""The appliance pair on the rig: A serves a LUN through LIO/TCMU, B holds A's record;
kill -9 of A under fio, B takes over and serves the same data on its own LUN.

Runs on the virtual rig (it starts two more firmware processes next to the rig's own
and needs the guest's kernel for their LUNs); on a real board pair, run the same steps
with the boards' own `tandem run --node ...` lines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import need, run

pytestmark = pytest.mark.skipif(os.environ.get("TANDEM_RIG_VIRTUAL") != "1",
                                reason="starts a pair of firmware processes: virtual rig only")

SIZE = os.environ.get("TANDEM_HIL_PAIR_SIZE", "64M")
FIO_SIZE = os.environ.get("TANDEM_HIL_PAIR_FIO_SIZE", "16M")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PairNode:
    def __init__(self, root: Path, name: str, role: str, shared: Path, key: Path) -> None:
        self.name = name
        self.role = role
        self.root = root
        self.shared = shared
        self.key = key
        self.nbd, self.console, self.listen = _port(), _port(), _port()
        self.log = root / f"pair-{name}.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, peer_listen: int, serial: str | None) -> None:
        cmd = [sys.executable, "-m", "firmware.cli", "run", "--board", "sim",
               "--data-dir", str(self.root / self.name), "--size", SIZE,
               "--local", str(self.shared / "local.img"),
               "--second", str(self.shared / "second.img"),
               "--nbd", f"127.0.0.1:{self.nbd}", "--console", f"127.0.0.1:{self.console}",
               "--no-console-pty", "--tcmu", "--tcm-loop", "--tcmu-name", f"pair-{self.name}",
               "--node", self.name, "--peer", f"tcp://127.0.0.1:{peer_listen}",
               *(["--peer", serial] if serial else []),
               "--peer-listen", f"127.0.0.1:{self.listen}", "--peer-key", str(self.key),
               "--pair-role", self.role, "--lease", "2"]
        out = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True,
                                     cwd=Path(__file__).resolve().parents[1])

    def peer(self) -> dict:
        out = run([sys.executable, "-m", "firmware.cli", "console",
                   f"socket://127.0.0.1:{self.console}", "peer", "status", "--json"],
                  timeout=30)
        return json.loads(out.stdout)

    def status(self) -> dict:
        out = run([sys.executable, "-m", "firmware.cli", "console",
                   f"socket://127.0.0.1:{self.console}", "status", "--json"], timeout=30)
        return json.loads(out.stdout)

    def scsi_disk(self, timeout: float) -> str:
        """The tcm_loop disk this node's frontend reported (banner, or on takeover)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            found = re.findall(r"SCSI disk (/dev/sd\w+)", text)
            if found:
                return found[-1]
            assert self.proc is not None and self.proc.poll() is None, text[-3000:]
            time.sleep(0.5)
        raise TimeoutError(f"{self.name}: no SCSI disk reported:\n"
                           + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _fio(disk: str, out: Path, *verify: str) -> subprocess.CompletedProcess:
    return run(["fio", "--name=pair", f"--filename={disk}", "--direct=1",
                "--ioengine=libaio", "--rw=randwrite", "--bs=4k", "--iodepth=16",
                f"--size={FIO_SIZE}", "--verify=crc32c", "--verify_fatal=1",
                "--randseed=15", "--output-format=json", f"--output={out}", *verify],
               timeout=600)


def test_failover_to_b_lun_keeps_every_acknowledged_write(tmp_path, results_dir):
    need("fio")
    shared = tmp_path / "shared"
    shared.mkdir()
    key = tmp_path / "pair.key"
    key.write_text("hil-pair-key-0123456789abcdef\n")
    a = PairNode(tmp_path, "a", "primary", shared, key)
    b = PairNode(tmp_path, "b", "record-holder", shared, key)
    socat = None
    serial: tuple[str | None, str | None] = (None, None)
    if shutil.which("socat"):
        ends = (str(tmp_path / "ttyA"), str(tmp_path / "ttyB"))
        socat = subprocess.Popen(["socat", f"pty,raw,echo=0,link={ends[0]}",
                                  f"pty,raw,echo=0,link={ends[1]}"])
        serial = ends
    try:
        a.start(b.listen, serial[0])
        b.start(a.listen, serial[1])
        disk_a = a.scsi_disk(120)
        deadline = time.monotonic() + 60
        while a.peer()["state"] != "connected":
            assert time.monotonic() < deadline, "A and B did not connect"
            time.sleep(0.5)
        # Writes through LIO on A (each acknowledged one is in B's FRAM first), verified.
        _fio(disk_a, results_dir / "pair-fio-a.json", "--do_verify=1")
        a_status = a.peer()
        assert a_status["counters"]["marks_acked"] > 0
        assert a_status["local_copy_regions"] <= b.peer()["held_regions"]
        killed = time.monotonic()
        a.proc.kill()  # type: ignore[union-attr]
        a.proc.wait()  # type: ignore[union-attr]
        disk_b = b.scsi_disk(120)
        took = time.monotonic() - killed
        assert disk_b != disk_a
        status = b.peer()
        assert status["state"] == "sole-owner" and status["role"] == "primary"
        # The same blocks read back through B's LUN.
        _fio(disk_b, results_dir / "pair-fio-b.json", "--verify_only")
        deadline = time.monotonic() + 300
        while True:
            st = b.status()
            if st["mirror_state"] == "ordered" and st["resync_remaining_bytes"] == 0 \
                    and st["mirror_lag_bytes"] == 0:
                break
            assert time.monotonic() < deadline, f"B's mirror did not drain: {st}"
            time.sleep(1)
        assert run(["cmp", str(shared / "local.img"), str(shared / "second.img")],
                   timeout=300).returncode == 0
        (results_dir / "pair-failover.txt").write_text(
            f"B's LUN {disk_b} up {took:.1f} s after A was killed; "
            f"links: {[link['url'] for link in status['links']]}\n")
    finally:
        b.stop()
        if a.proc is not None and a.proc.poll() is None:
            a.proc.kill()
        if socat is not None:
            socat.terminate()
