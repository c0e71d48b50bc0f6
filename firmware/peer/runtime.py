"""The pair core (core.py) on an event loop: links, ticks, FRAM, fence command, hooks.

``PairRuntime`` owns the node's ``PairCore`` and is the only caller of its ``handle``.
It turns what happens (a payload on a link, a link going up or down, time passing, a
FRAM write done, a fence command's exit status, a host write, a region mirrored) into
events, and carries out the actions the core returns, in order:

- ``Send``: frame and send on the named link (losing it is allowed);
- ``Persist``: apply to ``PairFram`` (inline when the NVRAM is fast, else on a worker),
  then ``FramDone``/``FramFailed`` — one at a time, as the core asks;
- ``WriteProceed``/``WriteRefused``: resolve the write's future (the record store's);
- ``Freeze``/``Thaw``, ``TakeOver``, ``Resync``, ``RoleChanged``: the app's hooks;
- ``RunFence``: run ``--fence-command`` with a timeout, always answer ``FenceResult``;
- ``Report``: the log, and the last reports for ``peer status``.

Events raised while actions are carried out (an inline FRAM write's ``FramDone``) are
queued and handled after the current batch, never re-entrantly.

``MediaGate`` is what the media wrappers ask right before every write to D and M: the
core's ``io_deadline`` against the same monotonic clock, so a pause between the core's
``WriteProceed`` and the write itself (SIGSTOP, a stall) cannot let a write through
after the lease ended.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from firmware.peer.config import PairConfig
from firmware.peer.core import PairCore
from firmware.peer.events import (
    Action,
    Covered,
    Event,
    FenceResult,
    FlushClears,
    FramDone,
    FrameIn,
    FramFailed,
    Freeze,
    HostWrite,
    LinkDown,
    LinkUp,
    Persist,
    ReleaseAsk,
    ReleaseReady,
    Report,
    Resync,
    RoleChanged,
    RunFence,
    Send,
    TakeOver,
    Thaw,
    Tick,
    WriteCancel,
    WriteDone,
    WriteProceed,
    WriteRefused,
    WriteWait,
)
from firmware.peer.frames import PRIMARY
from firmware.peer.held import LoadedPair, PairFram
from firmware.peer.links import PeerLink, PeerListener, TcpPeerLink, open_link
from firmware.tasks import cancel_and_wait

log = logging.getLogger("tandem.peer")

TICK_S = 0.05
FENCE_TIMEOUT_S = 30.0


class MediaGate:
    """May the media be written now? Asked from any thread, right before each write."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.deadline: float | None = float("-inf")  # None: no limit
        self.reason = "no lease yet"

    def may_write(self) -> bool:
        deadline = self.deadline
        return deadline is None or self._clock() < deadline

    def refusal(self) -> str:
        return f"pair: media writes not allowed now ({self.reason})"


@dataclass
class PairHooks:
    """What the app does on the core's word (every hook runs on the loop)."""

    on_role: Callable[[RoleChanged], None] = lambda action: None
    on_takeover: Callable[[TakeOver], None] = lambda action: None
    on_resync: Callable[[frozenset[int], bool], None] = lambda regions, full: None
    on_freeze: Callable[[bool, str], None] = lambda frozen, reason: None
    on_tick: Callable[[], None] = lambda: None
    # Active-active: ReleaseAsk, ReleaseReady, Covered (the node joins its two cores).
    on_coherence: Callable[[Action], None] = lambda action: None


@dataclass
class RuntimeCounters:
    persists: int = 0
    fram_failures: int = 0
    writes_waited: int = 0
    writes_refused: int = 0
    fences_run: int = 0
    wait_reasons: dict[str, int] = field(default_factory=dict)


class PairRuntime:
    def __init__(self, config: PairConfig, fram: PairFram, loaded: LoadedPair, *,
                 peer_urls: Iterable[str], listen: tuple[str, int] | None = None,
                 hooks: PairHooks | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 fence_command: str | None = None,
                 fence_timeout_s: float = FENCE_TIMEOUT_S,
                 fram_executor: concurrent.futures.Executor | None = None,
                 tick_s: float | None = TICK_S,
                 open_peer_link: Callable[..., PeerLink] | None = None) -> None:
        """``open_peer_link(url, on_payload, on_state)``: how a link is made (default:
        the real TCP or serial link, links.py); a simulation passes its own."""
        self.config = config
        self.fram = fram
        self.hooks = hooks or PairHooks()
        self._clock = clock
        self.gate = MediaGate(clock)
        self.core = PairCore(config, loaded, now=clock())
        self.fence_command = fence_command
        self.fence_timeout_s = fence_timeout_s
        self._fram_executor = fram_executor
        self.tick_s = tick_s
        self.counters = RuntimeCounters()
        self.reports: collections.deque[tuple[float, str, str]] = collections.deque(maxlen=32)
        self.links: dict[str, PeerLink] = {}
        opener = open_peer_link or open_link
        for url in peer_urls:
            self.links[url] = opener(url, self._payload_in, self._link_state)
        tcp = next((link for link in self.links.values() if isinstance(link, TcpPeerLink)),
                   None)
        self.listener = PeerListener(*listen, tcp) if listen is not None else None
        self._writes: dict[int, asyncio.Future[float | None]] = {}
        self._events: collections.deque[Event] = collections.deque()
        self._handling = False
        self._full_resync_seen = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self.listener is not None:
            await self.listener.start()
        for link in self.links.values():
            link.start()
        self.submit(Tick())  # the FRAM's word at boot: role, resync
        if self.tick_s is not None:  # None: the caller ticks (a simulation's own clock)
            self._tasks.append(asyncio.get_running_loop().create_task(self._ticker(),
                                                                       name="peer-tick"))

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self.listener is not None:
            await self.listener.close()
        for link in self.links.values():
            await link.close()
        for future in self._writes.values():
            if not future.done():
                future.set_exception(OSError(errno.EIO, "pair runtime stopped"))
        self.gate.deadline = float("-inf")
        self.gate.reason = "stopped"

    async def _ticker(self) -> None:
        assert self.tick_s is not None
        while True:
            await asyncio.sleep(self.tick_s)
            self.tick()

    def tick(self) -> None:
        """Time passed: the core's timers, then the app's (clears to offer, resyncs)."""
        self.submit(Tick())
        try:
            self.hooks.on_tick()
        except Exception:  # a hook's bug must not stop the heartbeats
            log.exception("pair tick hook failed")

    # -- events in ---------------------------------------------------------------------

    def submit(self, event: Event) -> None:
        """Hand the core an event; its actions are carried out before this returns
        (unless called from inside an action, then right after the current one)."""
        self._events.append(event)
        if self._handling:
            return
        self._handling = True
        try:
            while self._events:
                actions = self.core.handle(self._clock(), self._events.popleft())
                for action in actions:
                    self._carry_out(action)
                self._update_gate()
                self._watch_full_resync()
        finally:
            self._handling = False

    def host_write(self, write: int, regions: tuple[int, ...],
                   predicted: tuple[int, ...] = ()) -> asyncio.Future[float | None]:
        """Ask to issue a write; the future gives the deadline (None: none) or raises
        OSError when the write is refused."""
        future: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        self._writes[write] = future
        self.submit(HostWrite(write, regions, predicted))
        return future

    def pending_write(self, write: int) -> asyncio.Future[float | None] | None:
        return self._writes.get(write)

    def write_finished(self, write: int, *, issued: bool, ok: bool = True) -> None:
        self._writes.pop(write, None)
        self.submit(WriteDone(write, ok) if issued else WriteCancel(write))

    def _payload_in(self, link: str, payload: bytes) -> None:
        if not self._closed:
            self.submit(FrameIn(link, payload))

    def _link_state(self, link: str, up: bool) -> None:
        if not self._closed:
            self.submit(LinkUp(link) if up else LinkDown(link))

    # -- actions out -------------------------------------------------------------------

    def _carry_out(self, action: Action) -> None:
        if isinstance(action, Send):
            link = self.links.get(action.link)
            if link is not None:
                link.send(action.payload)
        elif isinstance(action, Persist):
            self._persist(action)
        elif isinstance(action, WriteProceed):
            future = self._writes.get(action.write)
            if future is not None and not future.done():
                future.set_result(action.deadline)
        elif isinstance(action, WriteWait):
            if action.reason == "record full":
                # Room comes from clears: do not let them wait for company now.
                self._events.append(FlushClears())
            self.counters.writes_waited += 1
            reasons = self.counters.wait_reasons
            reasons[action.reason] = reasons.get(action.reason, 0) + 1
        elif isinstance(action, WriteRefused):
            self.counters.writes_refused += 1
            future = self._writes.get(action.write)
            if future is not None and not future.done():
                future.set_exception(OSError(errno.EIO, f"pair: write refused ({action.reason})"))
        elif isinstance(action, Freeze):
            self.gate.reason = action.reason
            self.hooks.on_freeze(True, action.reason)
        elif isinstance(action, Thaw):
            self.hooks.on_freeze(False, "")
        elif isinstance(action, TakeOver):
            log.warning("pair: took over at epoch %d (%s); %s", action.epoch, action.method,
                        "FULL RESYNC" if action.full_resync
                        else f"{len(action.resync)} regions to resync")
            self.hooks.on_takeover(action)
        elif isinstance(action, Resync):
            self.hooks.on_resync(action.regions, self.core.persisted_state.full_resync)
        elif isinstance(action, RoleChanged):
            log.info("pair: %s at epoch %d%s", action.role, action.epoch,
                     " (serving alone)" if action.serving else "")
            self.hooks.on_role(action)
        elif isinstance(action, RunFence):
            self._tasks.append(asyncio.get_running_loop().create_task(
                self._run_fence(), name="peer-fence"))
        elif isinstance(action, ReleaseAsk | ReleaseReady | Covered):
            self.hooks.on_coherence(action)
        elif isinstance(action, Report):
            self.reports.append((time.time(), action.kind, action.detail))
            level = logging.INFO if action.kind in ("link-restored", "peer-back") \
                else logging.WARNING
            log.log(level, "pair: %s: %s", action.kind, action.detail)

    def _watch_full_resync(self) -> None:
        """A full resync is owed from the moment the FRAM says so (a split brain resolved,
        a handover that did not fit, a blank record over old media): the whole volume
        is copied, then ``FullResyncDone``. No action says it, the superblock does."""
        owed = self.core.persisted_state.full_resync and self.core.role == PRIMARY
        if owed and not self._full_resync_seen:
            self.hooks.on_resync(frozenset(), True)
        self._full_resync_seen = owed

    def _update_gate(self) -> None:
        deadline = self.core.io_deadline
        self.gate.deadline = deadline
        if deadline is None or deadline > float("-inf"):
            self.gate.reason = "lease"

    def _persist(self, action: Persist) -> None:
        self.counters.persists += 1
        if self._fram_executor is None:
            self.submit(self._apply(action))
            return
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._fram_executor, self._apply, action)
        future.add_done_callback(lambda done: self._persisted(action, done))

    def _persisted(self, action: Persist, done: asyncio.Future[Event]) -> None:
        if self._closed:
            return
        try:
            event = done.result()
        except BaseException as exc:  # noqa: BLE001 - any failure of the write
            event = FramFailed(action.token, str(exc))
        self.submit(event)

    def _apply(self, action: Persist) -> Event:
        try:
            for change in action.changes:
                self.fram.apply(change)
        except Exception as exc:  # noqa: BLE001 - TableFull, NvramError, PowerLost
            self.counters.fram_failures += 1
            return FramFailed(action.token, f"{type(exc).__name__}: {exc}")
        return FramDone(action.token)

    async def _run_fence(self) -> None:
        self.counters.fences_run += 1
        command = self.fence_command
        if not command:
            self.submit(FenceResult(False, "no fence command configured"))
            return
        env = dict(os.environ, TANDEM_NODE=self.config.node, TANDEM_PEER=self.config.peer)
        log.warning("pair: fencing %s: %s", self.config.peer, command)
        try:
            process = await asyncio.create_subprocess_shell(
                command, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
        except OSError as exc:
            self.submit(FenceResult(False, f"fence command: {exc}"))
            return
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.fence_timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            self.submit(FenceResult(False, f"fence command timed out after "
                                           f"{self.fence_timeout_s:.0f} s"))
            return
        text = output.decode(errors="replace").strip()[-200:]
        ok = process.returncode == 0
        detail = f"exit {process.returncode}" + (f": {text}" if text else "")
        self.submit(FenceResult(ok, detail))

    # -- what the console shows --------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = self.core.status().as_dict()
        now = self._clock()
        for entry in out["links"]:
            heard = entry["last_heartbeat"]
            entry["last_heartbeat_age_s"] = None if heard is None else round(now - heard, 3)
            link = self.links.get(entry["url"])
            if link is not None:
                entry["transport"] = "up" if link.up else ("down" if link.enabled
                                                            else "disabled")
                entry["last_error"] = link.last_error
                entry.update(link.counters.as_dict())
        out["reports"] = [{"at": round(at, 3), "kind": kind, "detail": detail}
                          for at, kind, detail in self.reports]
        out["writes_waited"] = self.counters.writes_waited
        out["writes_refused"] = self.counters.writes_refused
        out["wait_reasons"] = dict(self.counters.wait_reasons)
        out["fram_persists"] = self.counters.persists
        out["fram_failures"] = self.counters.fram_failures
        if self.listener is not None and self.listener.address is not None:
            host, port = self.listener.address
            out["listen"] = f"{host}:{port}"
        return out
