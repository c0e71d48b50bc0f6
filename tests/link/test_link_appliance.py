"""Issue 6 acceptance: `tandem run --remote` and `tandem receive` as two processes.

Under load the remote follows; after the load, once the lag is 0, the two
images are byte-identical. Mirroring into qemu-nbd and nbdkit works the same
way. Faults (link cut, receiver killed, sender killed) converge without losing
an acknowledged write, and during ordered replication the remote is always a
prefix of the write log. A wrong key gets nothing written.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from link_support import (
    BLOCK,
    KEY,
    CuttableProxy,
    ReceiverProcess,
    WriteLog,
    free_port,
    log_block,
    wait_converged,
    wait_for,
    wait_for_path,
)

from firmware.receiver.journal import EpochJournal
from firmware.receiver.replica import Replica
from hal.media.file import FileMedium
from hal.media.remote.generations import StateFile
from tests.e2e.appliance import RunningAppliance, same_bytes

SIZE = 32 * 1024 * 1024


@pytest.fixture
def site(tmp_path: Path):
    """A remote image, its receiver, and the appliances started against it."""
    s = _Site(tmp_path)
    yield s
    s.close()


class _Site:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.key = tmp_path / "link.key"
        self.key.write_bytes(KEY)
        self.image = tmp_path / "remote.img"
        with open(self.image, "wb") as f:
            f.truncate(SIZE)
        self.receiver = ReceiverProcess(tmp_path, self.image, self.key, [])
        self.apps: list[RunningAppliance] = []
        self.proxies: list[CuttableProxy] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def appliance(self, remote: str, *extra: str, key: Path | None = None,
                  data: str = "site-a") -> RunningAppliance:
        args = ["--remote", remote, "--no-console-pty", "--log-level", "DEBUG", *extra]
        if not remote.startswith("nbd"):
            args += ["--key-file", str(key or self.key)]
        app = RunningAppliance(self.tmp / data, "32M", *args)
        self.apps.append(app)
        return app.start()

    def proxy(self, port: int) -> CuttableProxy:
        proxy = CuttableProxy(port)
        self.proxies.append(proxy)
        return proxy

    def fio(self, uri: str, seconds: float) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            ["fio", "--name=load", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
             "--bsrange=4k-64k", "--iodepth=8", "--size=32m", f"--runtime={seconds}",
             "--time_based", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
             "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for app in self.apps:
            if app.proc is not None and app.proc.poll() is None:
                app.stop()
        for proxy in self.proxies:
            proxy.close()
        self.receiver.kill()


def finish_fio(proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    job = json.loads(out[out.index(b"{"):])["jobs"][0]
    assert job["error"] == 0 and job["write"]["total_ios"] > 0
    return job


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")


def test_the_remote_follows_under_fio_load_and_ends_identical(site: _Site) -> None:
    need("fio")
    site.receiver.start()
    app = site.appliance(f"127.0.0.1:{site.receiver.port}")
    fio = site.fio(app.uri, 4)
    acked: list[int] = []
    while fio.poll() is None:
        acked.append(int(app.status()["link_acked_epochs"]))  # type: ignore[call-overload]
        time.sleep(0.3)
    finish_fio(fio)
    assert len(acked) >= 2 and acked[-1] > acked[0], "the remote did not follow the load"
    status = wait_converged(app)
    assert status["link_decision"] == "full-sync"  # a blank receiver, synced by digest
    assert same_bytes(app.local_img, site.image)


@pytest.mark.parametrize("server", ["qemu-nbd", "nbdkit"])
def test_mirroring_into_an_nbd_export(site: _Site, server: str) -> None:
    need("fio", server)
    sock = site.tmp / "export.sock"
    pidfile = site.tmp / "export.pid"
    argv = (["qemu-nbd", "-f", "raw", "-t", "-k", str(sock), "--pid-file", str(pidfile)]
            if server == "qemu-nbd" else
            ["nbdkit", "-f", "-U", str(sock), "-P", str(pidfile), "file"]) + [str(site.image)]
    nbd_server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    site.procs.append(nbd_server)
    wait_for_path(pidfile)
    app = site.appliance(f"nbd+unix:///?socket={sock}")
    finish_fio(site.fio(app.uri, 3))
    wait_converged(app, linked=False)
    assert app.status()["link_connected"] is True
    assert same_bytes(app.local_img, site.image)


def test_link_cut_mid_stream(site: _Site) -> None:
    need("fio")
    site.receiver.start()
    proxy = site.proxy(site.receiver.port)
    app = site.appliance(f"127.0.0.1:{proxy.port}")
    fio = site.fio(app.uri, 5)
    for _ in range(2):
        time.sleep(1.5)
        proxy.cut()
    finish_fio(fio)  # the hosts never noticed: their writes were verified on read-back
    wait_converged(app)
    assert proxy.connections >= 3
    assert same_bytes(app.local_img, site.image)


def test_receiver_killed_and_restarted(site: _Site) -> None:
    need("fio")
    port = free_port()
    site.receiver.start(port)
    app = site.appliance(f"127.0.0.1:{port}")
    fio = site.fio(app.uri, 5)
    time.sleep(1.5)
    site.receiver.kill()
    wait_for(lambda: app.status()["mirror_state"] == "degraded", 15, "the mirror to degrade")
    site.receiver.start(port)
    finish_fio(fio)
    wait_converged(app)
    assert same_bytes(app.local_img, site.image)


def test_sender_killed_and_restarted_keeps_every_acknowledged_write(site: _Site) -> None:
    site.receiver.start()
    remote = f"127.0.0.1:{site.receiver.port}"
    app = site.appliance(remote)
    wait_converged(app)  # the initial full sync is done: the remote holds our generation
    writes = WriteLog(SIZE // BLOCK // 2, seed=7)
    stop = threading.Event()
    writer = threading.Thread(target=writes.run, args=(app.uri, stop))
    writer.start()
    wait_for(lambda: writes.acked > 300, 20, "writes")
    app.kill()  # SIGKILL: whatever was in flight on the link is lost with it
    writer.join(10)
    assert writes.acked > 0
    app = site.appliance(remote)  # the same data dir: record, link state and local image
    status = wait_converged(app)
    assert status["link_decision"] == "in-sync"  # the remote knew us: no full sync
    local = app.local_img.read_bytes()
    writes.check_holds_acked(local)
    assert local == site.image.read_bytes()


def test_the_remote_is_always_a_prefix_of_the_write_log(site: _Site) -> None:
    port = free_port()
    site.receiver.start(port)
    app = site.appliance(f"127.0.0.1:{port}")
    writes = WriteLog(1024, seed=11)  # 4 MiB of blocks: plenty of overwrites
    stop = threading.Event()
    writer = threading.Thread(target=writes.run, args=(app.uri, stop))
    writer.start()
    rnd = random.Random(3)
    checked: list[int] = []
    try:
        for attempt in range(2):
            wait_for(lambda: _ordered_and_consistent(app), 30, "ordered replication")
            time.sleep(rnd.uniform(0.3, 0.8))
            site.receiver.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            site.receiver.proc.wait(10)  # type: ignore[union-attr]
            snapshot = _snapshot(site.image, site.tmp / f"snap{attempt}")
            site.receiver.start(port)
            image, consistent = _recovered(snapshot)
            if consistent:
                checked.append(writes.check_prefix(image))
    finally:
        stop.set()
        writer.join(10)
    assert len(checked) == 2 and min(checked) > 0, checked
    wait_converged(app)
    final = site.image.read_bytes()
    assert writes.check_prefix(final) == len(writes.log)
    assert final == app.local_img.read_bytes()


def _ordered_and_consistent(app: RunningAppliance) -> bool:
    status = app.status()
    return (status["mirror_state"] == "ordered" and status["link_remote_consistent"] is True
            and status["link_connected"] is True)


def _snapshot(image: Path, into: Path) -> Path:
    """The receiver's files as a power cut would have left them."""
    into.mkdir()
    for suffix in ("", ".tandem-journal", ".tandem-state"):
        source = Path(f"{image}{suffix}")
        if source.exists():
            shutil.copyfile(source, into / f"remote.img{suffix}")
    return into / "remote.img"


def _recovered(image: Path) -> tuple[bytes, bool]:
    """What the receiver would hold after start-up: the journalled epoch replayed."""
    journal = EpochJournal(f"{image}.tandem-journal")
    replica = Replica(FileMedium(str(image)), StateFile(f"{image}.tandem-state"), journal)
    try:
        replica.recover()
        return image.read_bytes(), replica.state.consistent
    finally:
        replica.close()


def test_a_wrong_key_gets_nothing_written(site: _Site) -> None:
    site.receiver.start()
    wrong = site.tmp / "wrong.key"
    wrong.write_bytes(b"not the link key\n")
    before = site.image.read_bytes()
    app = site.appliance(f"127.0.0.1:{site.receiver.port}", key=wrong)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", app.uri],
                   check=True, capture_output=True, timeout=30)
    wait_for(lambda: app.status()["mirror_state"] == "degraded", 15, "the mirror to degrade")
    status = app.status()
    assert "authentication" in str(status["mirror_error"]) and status["link_connected"] is False
    assert site.receiver.alive
    assert site.image.read_bytes() == before
    assert "failed authentication" in site.receiver.log_text()


def test_the_prefix_check_has_teeth() -> None:
    writes = WriteLog(8)
    writes.log = [0, 1, 2, 1]  # write 1 to block 0, 2 to block 1, 3 to block 2, 4 to block 1
    image = bytearray(8 * BLOCK)

    def put(block: int, seq: int) -> None:
        image[block * BLOCK:(block + 1) * BLOCK] = log_block(block, seq)

    put(0, 1)
    put(1, 2)
    assert writes.check_prefix(bytes(image)) == 2
    put(1, 4)  # write 4 without write 3
    with pytest.raises(AssertionError, match="not a prefix"):
        writes.check_prefix(bytes(image))
