"""`tandem receive`: the remote end of the link, keeping a crash-consistent copy of a volume.

    tandem receive --listen HOST:PORT --medium PATH --key-file FILE
                   [--tls-cert FILE --tls-key FILE] [--before-resync CMD]

The copy is always the image of the sending appliance's volume at the end of
some epoch: an epoch is journalled whole, then applied, then acknowledged.
A peer without the key, or one that sends garbage, is dropped with nothing
written, and the receiver keeps listening. Beside the medium live
``PATH.tandem-state`` (generations, consistent flag) and ``PATH.tandem-journal``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import stat
import sys

from firmware.mirror.link.frames import (
    ChangeState,
    CommitEpoch,
    ComputeDigests,
    FrameDecoder,
    ProtocolError,
    ReadData,
    ReceiverMachine,
    SessionEnded,
    SessionRefused,
    SessionStarted,
    Stage,
    Write,
    Zero,
)
from firmware.mirror.link.generations import StateFile, SyncState
from firmware.mirror.link.journal import EpochJournal
from firmware.mirror.link.net import server_tls_context, set_keepalive
from firmware.mirror.link.replica import Replica, StaleSession
from firmware.parsing import parse_host_port, parse_size
from hal.media.base import MediumError
from hal.media.file import FileMedium

log = logging.getLogger("tandem.link.receiver")

HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKES = 16  # connections not yet authenticated, at once
READ_SIZE = 1024 * 1024
STAGE_BATCH = 8 * 1024 * 1024  # staged bytes handed to the replica per worker-thread call


class Receiver:
    """Accepts sender sessions for one replica; the newest authenticated session wins."""

    def __init__(self, replica: Replica, key: bytes, *, before_resync: str | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:
        if not key:
            raise ValueError("empty link key")
        self.replica = replica
        self.key = key
        self.before_resync = before_resync
        self.handshake_timeout = handshake_timeout
        self.handshaking = 0
        self.active: _Session | None = None
        self.sessions: set[_Session] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """asyncio.start_server's callback: one connection."""
        if self.handshaking >= MAX_HANDSHAKES:
            writer.transport.abort()
            return
        session = _Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if self.active is session:
                self.active = None

    def take_over(self, session: _Session) -> None:
        old, self.active = self.active, session
        if old is not None and old is not session:
            log.info("%s: taking over from %s", session.peer, old.peer)
            old.abort()

    def abort_all(self) -> None:
        for session in list(self.sessions):
            session.abort()


class _Session:
    def __init__(self, receiver: Receiver, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.receiver = receiver
        self.replica = receiver.replica
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.machine = ReceiverMachine(receiver.key, local_state=lambda: self.replica.state,
                                       size=self.replica.size, nonce=os.urandom(32))
        self.decoder = FrameDecoder()
        self.token: int | None = None
        self._handshaking = False
        self._staged: list[Write | Zero] = []
        self._staged_bytes = 0

    def abort(self) -> None:
        self.writer.transport.abort()

    async def run(self) -> None:
        set_keepalive(self.writer)
        self._set_handshaking(True)
        try:
            await self._serve()
        except ProtocolError as exc:
            log.warning("%s: dropping connection: %s", self.peer, exc)
            self.machine.fail("protocol", str(exc))
        except TimeoutError:
            log.warning("%s: dropping connection: handshake timed out", self.peer)
            self.machine.fail("timeout", "handshake timed out")
        except StaleSession:
            log.info("%s: session taken over", self.peer)
        except MediumError as exc:
            log.error("%s: medium failed: %s", self.peer, exc)
            self.machine.fail("medium", str(exc))
        except (ConnectionError, OSError) as exc:
            log.info("%s: connection lost: %s", self.peer, exc)
        finally:
            self._set_handshaking(False)
            if self.token is not None:
                await asyncio.to_thread(self.replica.discard, self.token)
            await self._send_best_effort()
            self.writer.transport.abort()

    def _set_handshaking(self, on: bool) -> None:
        if on != self._handshaking:
            self._handshaking = on
            self.receiver.handshaking += 1 if on else -1

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.receiver.handshake_timeout
        while not self.machine.closed:
            if self.machine.ready:
                data = await self.reader.read(READ_SIZE)
            else:
                async with asyncio.timeout_at(deadline):
                    data = await self.reader.read(READ_SIZE)
            if not data:
                if self.machine.ops_in_epoch:
                    log.warning("%s: link closed inside epoch %d; dropping its %d writes",
                                self.peer, self.machine.epoch, self.machine.ops_in_epoch)
                return
            self.decoder.feed(data)
            while not self.machine.closed:
                frame = self.decoder.next_frame()
                if frame is None:
                    break
                for action in self.machine.receive_frame(frame):
                    await self._perform(action)
                if self.machine.closed or self.decoder.buffered == 0:
                    await self._stage_now()
                await self._send()
            await self._stage_now()

    async def _perform(self, action: object) -> None:
        if isinstance(action, Stage):
            self._staged.append(action.op)
            self._staged_bytes += 64 + (len(action.op.data) if isinstance(action.op, Write) else 0)
            if self._staged_bytes >= STAGE_BATCH:
                await self._stage_now()
            return
        await self._stage_now()
        if isinstance(action, SessionRefused):
            log.warning("%s: refused: %s", self.peer, action.message)
        elif isinstance(action, SessionStarted):
            await self._start(action)
        elif isinstance(action, CommitEpoch):
            await self._send()  # the "received whole" ack goes out before the slow part
            await asyncio.to_thread(self.replica.commit, self._session_token(), action.epoch)
            self.machine.epoch_durable(action.epoch)
        elif isinstance(action, ComputeDigests):
            asked = action.request
            digests = await asyncio.to_thread(self.replica.digests, asked.offset, asked.length,
                                              asked.block_size, asked.alg)
            self.machine.send_digests(asked, digests)
        elif isinstance(action, ReadData):
            read = action.request
            data = await asyncio.to_thread(self.replica.read, read.offset, read.length)
            self.machine.send_data(read, data)
        elif isinstance(action, ChangeState):
            await self._change_state(action)
        elif isinstance(action, SessionEnded):
            if action.code:
                log.warning("%s: sender hung up: %s: %s", self.peer, action.code, action.message)
            else:
                log.info("%s: sender said bye %s", self.peer, action.message)

    async def _start(self, action: SessionStarted) -> None:
        self._set_handshaking(False)
        self.receiver.take_over(self)
        self.token = await asyncio.to_thread(self.replica.open_session)
        if action.state != self.replica.state:
            await asyncio.to_thread(self.replica.set_state, self.token, action.state)
        log.info("%s: sender authenticated; %s", self.peer, action.explanation)

    async def _change_state(self, action: ChangeState) -> None:
        if action.before_resync and self.receiver.before_resync:
            status = await _run_hook(self.receiver.before_resync, self.replica.medium.name)
            if status != 0:
                message = f"before-resync hook failed (exit status {status}); resync refused"
                log.error("%s: %s", self.peer, message)
                self.machine.fail("hook", message)
                return
        await asyncio.to_thread(self.replica.set_state, self.token, action.state)
        self.machine.state_persisted(action.state)
        log.info("%s: copy is now %s (generation %s)", self.peer,
                 "consistent" if action.state.consistent else "inconsistent (resync)",
                 action.state.current)

    def _session_token(self) -> int:
        """The replica's token of this session: the machine acts on epochs only in one."""
        if self.token is None:
            raise RuntimeError("link: an epoch arrived outside a session")
        return self.token

    async def _stage_now(self) -> None:
        if self._staged:
            staged, self._staged, self._staged_bytes = self._staged, [], 0
            await asyncio.to_thread(self.replica.stage, self._session_token(), staged)

    async def _send(self) -> None:
        out = self.machine.take_outgoing()
        if out:
            self.writer.writelines(out)
            await self.writer.drain()

    async def _send_best_effort(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self._send()
        except (TimeoutError, ConnectionError, OSError):
            pass


async def _run_hook(command: str, medium: str) -> int:
    env = dict(os.environ, TANDEM_MEDIUM=medium, TANDEM_EVENT="before-resync")
    process = await asyncio.create_subprocess_shell(command, env=env)
    return await process.wait()


# --- command line ------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "receive",
        help="keep a crash-consistent remote copy of a volume mirrored over the link",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--listen", type=parse_host_port, metavar="HOST:PORT",
                   help="address to accept the sending appliance on (port 0: any free port)")
    p.add_argument("--medium", required=True, metavar="PATH",
                   help="image file or block device holding the copy")
    p.add_argument("--key-file", metavar="FILE",
                   help="shared secret: the file's whole content")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    p.add_argument("--size", type=parse_size, metavar="BYTES",
                   help="create the image file with this size if it does not exist")
    p.add_argument("--state", metavar="FILE",
                   help="sync state file (default PATH.tandem-state)")
    p.add_argument("--journal", metavar="FILE",
                   help="epoch journal file (default PATH.tandem-journal)")
    p.add_argument("--before-resync", metavar="CMD",
                   help="shell command run before a consistent copy becomes inconsistent for "
                        "a resync (snapshot it); a non-zero exit refuses the resync. "
                        "$TANDEM_MEDIUM names the medium")
    p.add_argument("--promote", action="store_true",
                   help="mark this copy as written independently (taken over at this site): "
                        "start a new generation, then exit")
    p.add_argument("--discard-my-data", action="store_true",
                   help="forget this copy's generations so the next sender overwrites it "
                        "with a full sync (resolves a split brain in the sender's favour)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every session event")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="tandem receive: %(message)s", stream=sys.stderr)
    try:
        is_block = stat.S_ISBLK(os.stat(args.medium).st_mode)
    except FileNotFoundError:
        is_block = False
    if is_block and not (args.state and args.journal):
        print("tandem receive: a block device needs --state and --journal files",
              file=sys.stderr)
        return 2
    if not os.path.exists(args.medium) and args.size is None:
        print(f"tandem receive: {args.medium} does not exist (give --size to create it)",
              file=sys.stderr)
        return 2
    state_file = StateFile(args.state or args.medium + ".tandem-state")
    journal = EpochJournal(args.journal or args.medium + ".tandem-journal")
    try:
        journal.lock()
    except BlockingIOError:
        print(f"tandem receive: {args.medium} is in use by another tandem receive",
              file=sys.stderr)
        journal.close()
        return 1
    try:
        create = args.size is not None and not os.path.exists(args.medium)
        medium = FileMedium(args.medium, args.size if create else None, create=create)
        replica = Replica(medium, state_file, journal)
    except (OSError, ValueError) as exc:
        print(f"tandem receive: {exc}", file=sys.stderr)
        return 1
    try:
        if args.promote or args.discard_my_data:
            return _admin(args, replica)
        if not args.listen or not args.key_file:
            print("tandem receive: --listen and --key-file are required", file=sys.stderr)
            return 2
        with open(args.key_file, "rb") as f:
            key = f.read()
        if not key:
            print(f"tandem receive: {args.key_file} is empty", file=sys.stderr)
            return 2
        tls = None
        if args.tls_cert:
            tls = server_tls_context(args.tls_cert, args.tls_key)
        epoch = replica.recover()
        if epoch is not None:
            log.warning("replayed journalled epoch %d after a crash", epoch)
        receiver = Receiver(replica, key, before_resync=args.before_resync)
        return asyncio.run(_serve(receiver, args.listen, tls))
    finally:
        replica.close()


def _admin(args: argparse.Namespace, replica: Replica) -> int:
    state = replica.state
    if args.discard_my_data:
        state = SyncState(state.volume_uuid, None, (), False)
        replica.forget_journal()
        print("tandem receive: generations forgotten; the next sender will do a full sync")
    if args.promote:
        state = SyncState(state.volume_uuid, state.current, state.history, state.consistent)
        state = state.rotated()
        print(f"tandem receive: promoted; new generation {state.current}")
    replica.set_state(None, state)
    return 0


async def _serve(receiver: Receiver, listen: tuple[str, int], tls: ssl.SSLContext | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(receiver.handle, listen[0], listen[1], ssl=tls,
                                        limit=READ_SIZE)
    address = server.sockets[0].getsockname()
    host = f"[{address[0]}]" if ":" in address[0] else address[0]
    state = receiver.replica.state
    print(f"tandem receive: listening on {host}:{address[1]} "
          f"({'consistent' if state.consistent else 'inconsistent'}, "
          f"generation {state.current})", flush=True)
    async with server:
        await stop.wait()
        server.close()
        receiver.abort_all()
        while receiver.sessions:
            await asyncio.sleep(0.05)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m firmware.mirror.link.receiver ARGS`` is ``tandem receive ARGS``."""
    parser = argparse.ArgumentParser(prog="tandem")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["receive", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
