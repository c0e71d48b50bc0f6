"""RemoteMedium against a real `tandem receive` process over 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import threading

import pytest
from link_support import KEY, SIZE, free_port, wait_for

from firmware.second_medium import open_remote
from hal.media.base import MediumError
from hal.media.remote.frames import (
    Connected,
    EpochAcked,
    FrameDecoder,
    SenderMachine,
    block_digests,
)
from hal.media.remote.generations import MemoryStateStore, StateFile, SyncState
from hal.media.remote.medium import RemoteMedium
from hal.media.remote.net import client_tls_context


def remote(port: int, key: bytes = KEY, **kwargs) -> RemoteMedium:
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("connect_timeout", 5.0)
    return RemoteMedium("127.0.0.1", port, key, SIZE, **kwargs)


def random_run(medium: RemoteMedium, local: bytearray, rnd: random.Random, writes: int) -> None:
    for _ in range(writes):
        offset = rnd.randrange(0, SIZE - 70000)
        if rnd.random() < 0.15:
            length = rnd.randrange(1, 65536)
            medium.write_zeroes(offset, length)
            local[offset:offset + length] = bytes(length)
        else:
            data = rnd.randbytes(rnd.randrange(1, 65536))
            medium.pwrite(offset, data)
            local[offset:offset + len(data)] = data


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_random_writes_and_flushes_arrive_byte_identical(receiver, image):
    m = remote(receiver.port)
    local = bytearray(SIZE)
    rnd = random.Random(1)
    for _ in range(25):
        random_run(m, local, rnd, rnd.randrange(1, 12))
        m.flush()
    assert open(image, "rb").read() == local
    assert m.pread(0, SIZE) == local
    assert m.digests(0, SIZE, 4096) == block_digests(bytes(local), 4096)
    assert m.status()["acked_epochs"] == 25
    m.close()


def test_wrong_key_is_refused_and_the_medium_is_untouched(receiver, image):
    before = sha(image)
    intruder = remote(receiver.port, key=KEY + b"!")
    with pytest.raises(MediumError) as refused:
        intruder.connect()
    assert refused.value.errno == errno.EACCES
    with pytest.raises(MediumError):
        intruder.pwrite(0, b"evil" * 128)
    intruder.close()
    assert sha(image) == before
    assert not os.path.exists(f"{image}.tandem-state")  # not even a volume uuid adopted
    assert "failed authentication" in receiver.log_text()
    assert receiver.alive
    good = remote(receiver.port)  # and the receiver still serves the right key
    good.pwrite(0, b"good")
    good.flush()
    good.close()
    assert open(image, "rb").read(4) == b"good"


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize("garbage", [
    os.urandom(3000),
    struct.pack(">I", 0xFFFFFFFF),  # absurd length
    struct.pack(">I", 5) + b"\xff" * 5,  # a frame that is not CBOR
])
def test_garbage_drops_the_connection_and_the_receiver_keeps_running(receiver, image, garbage):
    before = sha(image)
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.sendall(garbage)
        try:
            read_until_closed(sock)  # the receiver hangs up (after an ERROR frame)
        except ConnectionResetError:
            pass
    assert receiver.alive
    assert sha(image) == before
    m = remote(receiver.port)
    m.pwrite(4096, b"still here")
    m.flush()
    m.close()


class RawSender:
    """The sender machine over a plain socket, to misbehave after authenticating."""

    def __init__(self, port: int, state: SyncState) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.machine = SenderMachine(KEY, state=state, size=SIZE, nonce=os.urandom(32))
        self.decoder = FrameDecoder()
        self.machine.start()
        self.events = []
        while not any(isinstance(e, Connected) for e in self.events):
            self.exchange()

    def send(self) -> None:
        self.sock.sendall(b"".join(self.machine.take_outgoing()))

    def exchange(self) -> None:
        self.send()
        self.decoder.feed(self.sock.recv(65536))
        while (frame := self.decoder.next_frame()) is not None:
            self.events += self.machine.receive_frame(frame)

    def epoch(self, writes: list[tuple[int, bytes]]) -> None:
        for offset, data in writes:
            self.machine.write(offset, data)
        epoch = self.machine.barrier()
        while EpochAcked(epoch, True) not in self.events:
            self.exchange()


def test_garbage_after_authentication_loses_only_the_open_epoch(receiver, image):
    sender = RawSender(receiver.port, SyncState.new_primary())
    sender.epoch([(0, b"A" * 4096)])
    sender.machine.write(8192, b"B" * 4096)  # epoch 2, never closed
    sender.send()
    sender.sock.sendall(struct.pack(">I", 7) + b"garbage")
    assert b"protocol" in read_until_closed(sender.sock)  # an ERROR frame, then hang-up
    sender.sock.close()
    data = open(image, "rb").read()
    assert data[:4096] == b"A" * 4096 and data[8192:12288] == bytes(4096)
    assert receiver.alive


def test_receiver_killed_mid_epoch_keeps_the_previous_epoch(receiver_factory, image):
    port = free_port()
    receiver = receiver_factory().start(port)
    m = remote(port)
    rnd = random.Random(2)
    local = bytearray(SIZE)
    random_run(m, local, rnd, 10)
    m.flush()
    epoch1 = bytes(local)
    pending = bytearray(local)
    random_run(m, pending, rnd, 10)  # epoch 2: sent, not closed
    m.digests(0, 4096)  # answered in stream order: epoch 2 reached the receiver
    receiver.kill()
    assert open(image, "rb").read() == epoch1
    receiver_factory().start(port)
    assert open(image, "rb").read() == epoch1
    with pytest.raises(MediumError):
        m.digests(0, 4096)  # a read does not take the report of the lost writes...
    with pytest.raises(MediumError):
        m.pwrite(0, b"x")  # ...the write path gets it, once: epoch 2 is lost
    random_run(m, local, rnd, 10)  # the next run reconnects
    m.flush()
    assert open(image, "rb").read() == local
    m.close()


def test_an_epoch_in_flight_when_the_receiver_dies_lands_whole_or_not_at_all(
        receiver_factory, image):
    """Prefix consistency: after a kill the copy is exactly the image after some epoch."""
    port = free_port()
    receiver = receiver_factory().start(port)
    rnd = random.Random(3)
    m = remote(port)
    local = bytearray(SIZE)
    for round_ in range(3):
        before = bytes(local)
        random_run(m, local, rnd, 40)  # ~1.3 MB: applying it takes a moment
        outcome: list[str] = []
        flushing = threading.Thread(target=_flush_recording, args=(m, outcome))
        flushing.start()
        wait_for(lambda: m.status()["queued_bytes"] == 0, what="epoch sent")
        receiver.kill()
        flushing.join(20)
        receiver = receiver_factory().start(port)  # replays a journalled epoch, if any
        recovered = open(image, "rb").read()
        assert recovered in (before, bytes(local)), f"round {round_}: a torn epoch"
        if outcome == ["acked"]:
            assert recovered == local, "an acknowledged epoch was lost"
        m.pwrite(0, bytes(local))  # the mirror's catch-up after the reconnect
        m.flush()
        assert open(image, "rb").read() == local
    m.close()


def _flush_recording(m: RemoteMedium, outcome: list[str]) -> None:
    try:
        m.flush()
        outcome.append("acked")
    except MediumError:
        outcome.append("failed")


def _flush_quietly(m: RemoteMedium) -> None:
    try:
        m.flush()
    except MediumError:
        pass


def test_link_cut_mid_stream_raises_then_reconnects(receiver, image, proxy_factory):
    proxy = proxy_factory(receiver.port)
    m = remote(proxy.port)
    rnd = random.Random(4)
    local = bytearray(SIZE)
    random_run(m, local, rnd, 10)
    m.flush()
    lost = bytearray(local)
    random_run(m, lost, rnd, 10)
    proxy.cut()
    wait_for(lambda: not m.connected, what="the cut to be noticed")
    with pytest.raises(MediumError):
        m.flush()  # the run's writes are reported lost
    assert open(image, "rb").read() == local  # the cut run never landed, even in part
    random_run(m, local, rnd, 10)
    m.flush()
    assert proxy.connections == 2
    assert open(image, "rb").read() == local
    m.close()


def test_link_cut_while_waiting_for_the_ack(receiver, proxy_factory):
    proxy = proxy_factory(receiver.port)
    m = remote(proxy.port)
    m.pwrite(0, os.urandom(4 << 20))
    cutter = threading.Timer(0.05, proxy.cut)
    cutter.start()
    try:
        m.flush()  # may win the race; what matters is what comes after
    except MediumError:
        pass
    cutter.join()
    for _attempt in range(3):  # the cut may still be news to the next run: a mirror retries
        try:
            m.pwrite(0, b"after")
            m.flush()
            break
        except MediumError:
            continue
    assert m.pread(0, 5) == b"after"
    m.close()


def sync_fully(m: RemoteMedium) -> None:
    m.begin_resync()
    m.end_resync()


def test_split_brain_is_detected_and_refused(receiver_factory, image):
    port = free_port()
    receiver = receiver_factory().start(port)
    store = MemoryStateStore()
    m = remote(port, state=store)
    sync_fully(m)
    assert StateFile(f"{image}.tandem-state").load().current == store.load().current
    m.pwrite(0, b"before the split")
    m.flush()
    receiver.kill()  # link lost while in sync: the appliance starts a new generation
    wait_for(lambda: not m.connected, what="the link failure")
    receiver.admin("--promote")  # ...and the remote site starts using its copy
    before = sha(image)
    receiver_factory().start(port)
    with pytest.raises(MediumError) as refused:
        m.pwrite(0, b"after the split")
    assert refused.value.errno == errno.EPERM
    assert "split brain" in str(refused.value)
    with pytest.raises(MediumError):
        m.pwrite(0, b"still refused")
    assert sha(image) == before
    m.close()
    assert "split brain" in receiver.log_text()


def test_discard_my_data_resolves_a_split_brain(receiver_factory, image):
    port = free_port()
    receiver = receiver_factory().start(port)
    store = MemoryStateStore()
    m = remote(port, state=store)
    sync_fully(m)
    m.close()
    receiver.stop()
    receiver.admin("--promote")
    store.save(store.load().rotated())
    receiver = receiver_factory().start(port)
    with pytest.raises(MediumError):
        remote(port, state=store).connect()
    with pytest.raises(subprocess.CalledProcessError):  # not while a receiver holds the copy
        receiver.admin("--discard-my-data")
    receiver.stop()
    receiver.admin("--discard-my-data")
    receiver_factory().start(port)
    m = remote(port, state=store)
    assert m.connect().decision.value == "full-sync"
    m.close()


def test_remote_written_after_a_clean_disconnect_is_remote_ahead(receiver_factory, image):
    port = free_port()
    receiver = receiver_factory().start(port)
    store = MemoryStateStore()
    m = remote(port, state=store)
    sync_fully(m)
    m.close()
    receiver.stop()
    receiver.admin("--promote")
    receiver_factory().start(port)
    with pytest.raises(MediumError) as refused:
        remote(port, state=store).connect()
    assert "remote-ahead" in str(refused.value)


def test_before_resync_hook_snapshots_or_refuses(receiver_factory, image, tmp_path):
    marker = tmp_path / "snapshot-taken"
    port = free_port()
    receiver = receiver_factory("--before-resync", f"cp \"$TANDEM_MEDIUM\" {marker}").start(port)
    store = MemoryStateStore()
    m = remote(port, state=store)
    sync_fully(m)  # a blank copy has nothing worth a snapshot
    assert not marker.exists()
    m.pwrite(0, b"consistent data")
    m.flush()
    state = m.begin_resync()
    assert not state.consistent and marker.read_bytes()[:15] == b"consistent data"
    assert not StateFile(f"{image}.tandem-state").load().consistent
    state = m.end_resync()
    assert state.consistent and state.current == store.load().current
    m.close()
    receiver.stop()
    receiver_factory("--before-resync", "exit 3").start(port)
    m = remote(port, state=store)
    with pytest.raises(MediumError):
        m.begin_resync()
    assert StateFile(f"{image}.tandem-state").load().consistent  # refused: still consistent
    m.close()


@pytest.fixture
def certificate(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=tandem-test", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_link_round_trip(receiver_factory, image, certificate):
    cert, key = certificate
    receiver = receiver_factory("--tls-cert", str(cert), "--tls-key", str(key)).start()
    m = remote(receiver.port, tls=client_tls_context(str(cert)))
    local = bytearray(SIZE)
    random_run(m, local, random.Random(5), 8)
    m.flush()
    assert m.pread(0, SIZE) == local
    m.close()
    plain = remote(receiver.port, connect_timeout=3.0)  # a plain-text sender gets nowhere
    with pytest.raises(MediumError):
        plain.connect()
    plain.close()
    assert receiver.alive and open(image, "rb").read() == local


def test_rate_capped_link_delivers_everything(receiver, image):
    m = remote(receiver.port, rate_limit=8 << 20)
    local = bytearray(SIZE)
    random_run(m, local, random.Random(6), 30)
    m.flush()
    m.rate_limit = None
    random_run(m, local, random.Random(7), 5)
    m.flush()
    assert open(image, "rb").read() == local
    m.close()


def test_a_newer_session_takes_over(receiver, image):
    store = MemoryStateStore()
    old = remote(receiver.port, state=store)
    old.pwrite(0, b"old")
    old.flush()
    new = remote(receiver.port, state=store)  # the appliance restarted; the old TCP lingers
    new.pwrite(512, b"new")
    new.flush()
    wait_for(lambda: not old.connected, what="the old session to be dropped")
    assert open(image, "rb").read(515) == b"old" + bytes(509) + b"new"
    old.close()
    new.close()


def test_open_remote_names_a_receiver(receiver, key_file, image):
    m = open_remote(f"127.0.0.1:{receiver.port}", size=SIZE, key_file=str(key_file))
    assert isinstance(m, RemoteMedium) and m.name == f"tandem://127.0.0.1:{receiver.port}"
    m.pwrite(0, b"named")
    m.flush()
    m.close()
    assert open(image, "rb").read(5) == b"named"


def test_a_hung_receiver_times_out_then_the_link_recovers(receiver, image):
    m = remote(receiver.port, timeout=1.0)
    m.pwrite(0, b"before")
    m.flush()
    os.kill(receiver.proc.pid, signal.SIGSTOP)
    try:
        m.pwrite(0, b"frozen")
        with pytest.raises(MediumError) as hung:
            m.flush()
        assert hung.value.errno == errno.ETIMEDOUT
    finally:
        os.kill(receiver.proc.pid, signal.SIGCONT)
    m.pwrite(0, b"thawed")
    m.flush()
    assert open(image, "rb").read(6) == b"thawed"
    m.close()


def test_pipelined_epochs_and_a_lost_one_is_reported_to_the_next_write(receiver, image,
                                                                       proxy_factory):
    proxy = proxy_factory(receiver.port)
    m = remote(proxy.port)
    local = bytearray(SIZE)
    acks = []
    for i in range(6):  # several epochs in flight at once
        data = os.urandom(65536)
        m.pwrite(i * 65536, data)
        local[i * 65536:(i + 1) * 65536] = data
        acks.append(m.flush_async())
    for ack in acks:
        ack.result(timeout=10)
    assert open(image, "rb").read() == local
    os.kill(receiver.proc.pid, signal.SIGSTOP)  # no ack can come back now
    try:
        m.pwrite(0, b"lost")
        pending = m.flush_async()
        proxy.cut()
        with pytest.raises(MediumError):
            pending.result(timeout=10)
    finally:
        os.kill(receiver.proc.pid, signal.SIGCONT)
    with pytest.raises(MediumError):  # the loss, reported once to the write path...
        m.pwrite(0, b"next run")
    m.pwrite(0, b"next run")  # ...then it reconnects
    m.flush()
    assert open(image, "rb").read(8) == b"next run"
    m.pwrite(0, b"lost again")
    pending = m.flush_async()
    os.kill(receiver.proc.pid, signal.SIGSTOP)
    proxy.cut()
    os.kill(receiver.proc.pid, signal.SIGCONT)
    try:
        pending.result(timeout=10)
    except MediumError:
        m.reset()  # the caller writes the run off itself: no second report
    m.pwrite(0, b"after reset")
    m.flush()
    assert open(image, "rb").read(11) == b"after reset"
    m.close()


def test_a_medium_on_the_appliance_loop_starts_no_thread_of_its_own(receiver, image):
    """What `tandem run --remote` does: the link's I/O on the appliance's loop, the
    blocking calls from a worker (the mirror's), the goodbye from the loop."""
    import asyncio
    import concurrent.futures

    async def appliance_side() -> bytes:
        loop = asyncio.get_running_loop()
        before = {t.name for t in threading.enumerate()}
        m = remote(receiver.port, loop=loop)
        worker = concurrent.futures.ThreadPoolExecutor(1)
        try:
            await loop.run_in_executor(worker, m.pwrite, 4096, b"on the loop")
            await loop.run_in_executor(worker, m.flush)
            back = await loop.run_in_executor(worker, m.pread, 4096, 11)
            new_threads = {t.name for t in threading.enumerate()} - before
            assert not any(name.startswith("link ") for name in new_threads)
            assert m.status()["acked_epochs"] == 1
        finally:
            await m.aclose()
            worker.shutdown()
        return back

    assert asyncio.run(appliance_side()) == b"on the loop"
    with open(image, "rb") as f:
        f.seek(4096)
        assert f.read(11) == b"on the loop"
