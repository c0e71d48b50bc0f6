"""The remote site's link server: one authenticated session after another, applied to
the site's replica (firmware/receive_app.py is the `tandem receive` application).

The copy is always the image of the sending appliance's volume at the end of
some epoch: an epoch is journalled whole, then applied, then acknowledged.
A peer without the key, or one that sends garbage, is dropped with nothing
written, and the receiver keeps listening.
"""

from __future__ import annotations

import asyncio
import logging
import os

from firmware.receiver.replica import Replica, StaleSession
from hal.media.base import MediumError
from hal.media.remote.frames import (
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
from hal.media.remote.net import set_keepalive

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
