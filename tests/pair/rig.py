"""Two real ``tandem run`` processes as a pair, with links that fail on purpose.

A (primary) and B (record-holder) share one local medium D and one second medium M
(``shared/local.img``, ``shared/second.img``) and each has its own data dir (its FRAM).
Each node dials the other through a ``FaultyTcpProxy`` and the serial link is a
``FaultySerialPair`` (two ptys), so a test can black-hole, cut or garble either link in
either direction while the nodes run. Both proxies and the cable live on a loop in a
thread of the test process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.appliance import REPO, same_bytes
from tests.reliability.threaded import LoopThread
from tools.sim.fault_proxy import FaultySerialPair, FaultyTcpProxy, Mode

KEY = "pair-test-key-0123456789abcdef\n"


def free_port() -> int:
    """A port to listen on, below the ephemeral range: the pair dials, redials and
    proxies all the time, and an ephemeral port taken for one of those connections
    between our probe and the node's bind would fail the node's start."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range")
              .read_text().split())
    while True:
        port = random.randrange(10000, max(10001, low - 1))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


class Node:
    def __init__(self, rig: PairRig, name: str, role: str) -> None:
        self.rig = rig
        self.name = name
        self.role = role
        self.data_dir = rig.root / name
        self.nbd_port = free_port()
        self.console_port = free_port()
        self.listen_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = rig.root / f"{name}.log"
        self.banner: list[str] = []

    @property
    def uri(self) -> str:
        return f"nbd://127.0.0.1:{self.nbd_port}/tandem"

    @property
    def console_url(self) -> str:
        return f"socket://127.0.0.1:{self.console_port}"

    def command(self, *, crash_at: str | None = None, crash_after: int = 1,
                mutant: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        rig = self.rig
        other = rig.b if self is rig.a else rig.a
        proxy = rig.proxy_ab if self is rig.a else rig.proxy_ba
        serial = rig.cable.a if self is rig.a else rig.cable.b
        launch = [sys.executable, *(os.environ.get("PAIR_LAUNCH", "-m tests.pair.launch").split())]
        if crash_at:
            launch += ["--crash-at", crash_at, "--crash-after", str(crash_after)]
        if mutant:
            launch += ["--mutant", mutant]
        del other
        return launch + [
            "--", "run", "--board", "sim", "--data-dir", str(self.data_dir),
            "--size", rig.size, "--local", str(rig.d), "--second", str(rig.m),
            "--nbd", f"127.0.0.1:{self.nbd_port}",
            "--console", f"127.0.0.1:{self.console_port}", "--no-console-pty",
            "--node", self.name, "--peer", f"tcp://127.0.0.1:{proxy.port}",
            *(["--peer", serial] if rig.serial else []),
            "--peer-listen", f"127.0.0.1:{self.listen_port}", "--peer-key", str(rig.key),
            "--pair-role", self.role, "--lease", str(rig.lease), *rig.extra, *extra]

    def start(self, timeout: float = 30.0, **options: Any) -> Node:
        log = open(self.log_path, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.command(**options), stdout=subprocess.PIPE,
                                     stderr=log, text=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.name} exited: see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            self.banner.append(line.rstrip())
            if "console on socket://" in line:
                return self
        raise TimeoutError(f"{self.name} did not print its banner")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def console(self, *command: str, check: bool = True) -> str:
        """One console command over its TCP port, as ``tandem console`` would send it
        (in-process: the tests poll often)."""
        import shlex

        from tools.console_client import ConsoleClient

        with ConsoleClient.open(self.console_url, timeout=15) as client:
            answer = client.command(shlex.join(command))
        if check and answer.startswith("error"):
            raise RuntimeError(f"{self.name} console {command}: {answer}")
        return answer

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.console("status", "--json")))

    def peer(self) -> dict[str, Any]:
        return dict(json.loads(self.console("peer", "status", "--json")))

    def wait_peer(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                  what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.peer()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what or 'condition'} not reached: "
                                   f"{ {k: status[k] for k in ('state', 'role', 'epoch')} }")
            time.sleep(0.2)

    def wait_mirrored(self, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if (st["mirror_state"] == "ordered" and st["mirror_lag_bytes"] == 0
                    and st["resync_remaining_bytes"] == 0):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: mirror did not drain: {st}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self.wait_exit()

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.wait_exit()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class PairRig:
    def __init__(self, root: Path, *, size: str = "64M", lease: float = 2.0,
                 serial: bool = True, extra: tuple[str, ...] = ()) -> None:
        self.root = root
        self.size = size
        self.lease = lease
        self.serial = serial
        self.extra = extra
        shared = root / "shared"
        shared.mkdir(parents=True, exist_ok=True)
        self.d = shared / "local.img"
        self.m = shared / "second.img"
        self.key = root / "pair.key"
        self.key.write_text(KEY)
        self.loop = LoopThread()
        self.a = Node(self, "a", "primary")
        self.b = Node(self, "b", "record-holder")
        # A dials B through proxy_ab, B dials A through proxy_ba.
        self.proxy_ab = self.loop.call(self._proxy(self.b.listen_port))
        self.proxy_ba = self.loop.call(self._proxy(self.a.listen_port))
        self.cable = self.loop.call(self._cable())

    @staticmethod
    async def _proxy(port: int) -> FaultyTcpProxy:
        return await FaultyTcpProxy(("127.0.0.1", port)).start()

    @staticmethod
    async def _cable() -> FaultySerialPair:
        return FaultySerialPair(seed=15).start()

    # -- faults ----------------------------------------------------------------------

    def tcp(self, mode: Mode, direction: str = "both") -> None:
        """``direction``: both, "a->b" (what A sends) or "b->a"."""
        async def apply() -> None:
            if direction in ("both", "a->b"):
                self.proxy_ab.set(mode, "forward")
                self.proxy_ba.set(mode, "backward")
            if direction in ("both", "b->a"):
                self.proxy_ab.set(mode, "backward")
                self.proxy_ba.set(mode, "forward")
        self.loop.call(apply())

    def serial_up(self, up: bool, direction: str = "both") -> None:
        async def apply() -> None:
            if direction in ("both", "a->b"):
                self.cable.a_to_b = up
            if direction in ("both", "b->a"):
                self.cable.b_to_a = up
        self.loop.call(apply())

    def media_identical(self) -> bool:
        return same_bytes(self.d, self.m)

    def close(self) -> None:
        for node in (self.a, self.b):
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - tidy up whatever is left
                pass
        self.loop.call(self.proxy_ab.close())
        self.loop.call(self.proxy_ba.close())

        async def close_cable() -> None:
            self.cable.close()
        self.loop.call(close_cable())
        self.loop.close()


def start_pair(rig: PairRig, **a_options: Any) -> None:
    """A and B up, connected, A serving."""
    rig.a.start(**a_options)
    rig.b.start()
    rig.a.wait_peer(lambda s: s["state"] == "connected", 20, "connected")
    rig.b.wait_peer(lambda s: s["state"] == "connected", 20, "connected")
