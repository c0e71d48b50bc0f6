"""Run the real `tandem run` as a subprocess and talk to it like a host admin would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tandem_command() -> list[str]:
    exe = shutil.which("tandem", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "firmware.cli"]


class RunningAppliance:
    """One appliance on the simulated board, in its own data dir and ports."""

    def __init__(self, data_dir: Path, size: str = "256M", *extra: str) -> None:
        self.data_dir = data_dir
        self.size = size
        self.extra = list(extra)
        self.nbd_port = free_port()
        self.console_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.banner: list[str] = []

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/tandem"

    @property
    def console_url(self) -> str:
        return f"socket://127.0.0.1:{self.console_port}"

    def start(self, timeout: float = 30.0) -> RunningAppliance:
        cmd = tandem_command() + [
            "run", "--board", "sim", "--data-dir", str(self.data_dir), "--size", self.size,
            "--nbd", f"127.0.0.1:{self.nbd_port}",
            "--console-tcp", f"127.0.0.1:{self.console_port}", *self.extra]
        log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                     cwd=REPO)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"tandem run exited: see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            self.banner.append(line.rstrip())
            if "console on socket://" in line:
                return self
        raise TimeoutError("tandem run did not print its banner")

    def console(self, *command: str, check: bool = True) -> str:
        out = subprocess.run(tandem_command() + ["console", self.console_url, *command],
                             capture_output=True, text=True, timeout=30, cwd=REPO)
        if check and out.returncode != 0:
            raise RuntimeError(f"console {command}: rc={out.returncode} {out.stdout} {out.stderr}")
        return out.stdout

    def status(self) -> dict[str, object]:
        return json.loads(self.console("status", "--json"))

    def wait_mirrored(self, timeout: float = 120.0) -> dict[str, object]:
        """Wait until the second medium holds everything (lag 0, resync done)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if (st["mirror_state"] == "ordered" and st["mirror_lag_bytes"] == 0
                    and st["resync_remaining_bytes"] == 0):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"mirror did not drain: {st}")
            time.sleep(0.2)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]

    @property
    def local_img(self) -> Path:
        return self.data_dir / "local.img"

    @property
    def second_img(self) -> Path:
        return self.data_dir / "second.img"


def same_bytes(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0
