"""The second medium as the mirror sees it: a Medium plus optional capabilities.

A plain file needs nothing more than ``Medium``. A remote site offers more:
pipelined runs (``flush_async``), block digests computed at the far end, a
connection the mirror may open and watch, a status, a way to drop a pending
loss report, and link sessions. Each capability is declared here as a
Protocol and looked up once, when the mirror is built (``SecondMedium``), so
the copier asks ``capabilities`` instead of probing attributes on every call.

A second medium with link sessions (``LinkedMedium``: `RemoteMedium`) is told
when a resync starts (``begin_resync``: the remote copy is marked inconsistent,
its before-resync hook runs) and when it is complete (``end_resync``: the
remote is consistent and holds this appliance's generation); each new session's
decision is acted on (full sync → sweep; resync → catch-up; refused → degraded
with the explanation as the error).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from hal.media.base import Medium

DIGEST_ALG = "blake2b-128"


@runtime_checkable
class Pipelined(Protocol):
    def flush_async(self) -> concurrent.futures.Future[Any]:
        """Close the run now; the future is done once it is durable at the far end."""
        ...


@runtime_checkable
class Digests(Protocol):
    def digests(self, offset: int, length: int, block_size: int, alg: str) -> Sequence[bytes]:
        """Digests of the medium's blocks, computed where the bytes are."""
        ...


@runtime_checkable
class DigestsAhead(Protocol):
    def digests_async(self, offset: int, length: int, block_size: int, alg: str
                      ) -> concurrent.futures.Future[list[bytes]]:
        """digests() without waiting: ask now, collect later (overlaps the round trip)."""
        ...


@runtime_checkable
class Connects(Protocol):
    def connect(self) -> object:
        """Connect if not connected."""
        ...


@runtime_checkable
class KnowsConnection(Protocol):
    @property
    def connected(self) -> bool:
        ...


@runtime_checkable
class Reports(Protocol):
    def status(self) -> Mapping[str, object]:
        """Figures for the appliance's status (shown with a ``link_`` prefix)."""
        ...


@runtime_checkable
class Resettable(Protocol):
    def reset(self) -> None:
        """Drop a pending loss report: the caller has written its run off."""
        ...


class Decision(Protocol):
    @property
    def value(self) -> str:
        ...


class RemoteSync(Protocol):
    @property
    def consistent(self) -> bool:
        ...


class SessionHandshake(Protocol):
    """What connecting learned: what to do about the remote copy, and its state."""

    @property
    def decision(self) -> Decision:
        ...

    @property
    def explanation(self) -> str:
        ...

    @property
    def remote(self) -> RemoteSync:
        ...


@runtime_checkable
class RateLimited(Protocol):
    """A link whose bytes per second can be capped (None: no cap)."""

    rate_limit: float | None


@runtime_checkable
class LinkedMedium(Protocol):
    """A second medium at a remote site that knows sessions and sync state (RemoteMedium)."""

    sessions: int  # successful connects so far: a new one must be acted on

    def connect(self) -> SessionHandshake:
        """Connect if not connected; the session's handshake (decision, remote state)."""
        ...

    def begin_resync(self) -> object:
        """Mark the remote inconsistent (runs its before-resync hook)."""
        ...

    def end_resync(self) -> object:
        """The remote is complete: consistent, holding our generation."""
        ...


@dataclass(frozen=True, slots=True)
class Capabilities:
    pipelined: bool = False  # flush_async
    digests: bool = False  # the far end computes block digests
    digests_ahead: bool = False  # ...and can be asked ahead
    connects: bool = False
    knows_connection: bool = False
    reports: bool = False  # status()
    resets: bool = False
    linked: bool = False  # link sessions: begin_resync/end_resync, a decision per session
    rate_limited: bool = False  # rate_limit can be set


class SecondMedium:
    """The second medium and its capabilities, resolved once.

    The worker-side calls (``close_run``, ``digests``, ``connect``...) run in the
    mirror's worker; the rest on the event loop.
    """

    def __init__(self, medium: Medium) -> None:
        self.medium = medium
        self._pipelined = medium if isinstance(medium, Pipelined) else None
        self._digests = medium if isinstance(medium, Digests) else None
        self._digests_ahead = medium if isinstance(medium, DigestsAhead) else None
        self._connects = medium if isinstance(medium, Connects) else None
        self._knows = medium if isinstance(medium, KnowsConnection) else None
        self._reports = medium if isinstance(medium, Reports) else None
        self._resets = medium if isinstance(medium, Resettable) else None
        self.linked: LinkedMedium | None = medium if isinstance(medium, LinkedMedium) \
            else None
        self.rate_limited: RateLimited | None = medium if isinstance(medium, RateLimited) \
            else None
        self.capabilities = Capabilities(
            pipelined=self._pipelined is not None, digests=self._digests is not None,
            digests_ahead=self._digests_ahead is not None,
            connects=self._connects is not None, knows_connection=self._knows is not None,
            reports=self._reports is not None, resets=self._resets is not None,
            linked=self.linked is not None, rate_limited=self.rate_limited is not None)
        # Digests asked ahead, by (offset, length), until the pass that asked takes them.
        self._ahead: dict[tuple[int, int], concurrent.futures.Future[list[bytes]]] = {}

    @property
    def name(self) -> str:
        return self.medium.name

    @property
    def connected(self) -> bool:
        """Whether the link is up; a medium that does not say is always there."""
        return self._knows.connected if self._knows is not None else True

    def status(self) -> Mapping[str, object]:
        return self._reports.status() if self._reports is not None else {}

    def reset(self) -> None:
        if self._resets is not None:
            self._resets.reset()

    # -- (worker) -------------------------------------------------------------------

    def connect(self) -> SessionHandshake | None:
        """Connect if it connects; a linked medium's handshake, else None."""
        if self.linked is not None:
            return self.linked.connect()
        if self._connects is not None:
            self._connects.connect()
        return None

    def close_run(self) -> concurrent.futures.Future[Any]:
        """End a run: a future for its durability on the second medium."""
        if self._pipelined is not None:
            return self._pipelined.flush_async()
        self.medium.flush()
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        done.set_result(None)  # durable already
        return done

    def ask_ahead(self, ranges: Iterable[tuple[int, int]], block: int) -> None:
        """Ask for the digests of the next run's ranges now, where the medium can."""
        ask = self._digests_ahead
        if ask is None:
            return
        for offset, length in ranges:
            self._ahead[(offset, length)] = ask.digests_async(offset, length, block,
                                                              DIGEST_ALG)

    def forget_ahead(self) -> None:
        self._ahead.clear()

    def digests(self, offset: int, length: int, block: int) -> list[bytes]:
        """The second medium's block digests: asked ahead, asked now, or read."""
        asked = self._ahead.pop((offset, length), None)
        if asked is not None:
            return asked.result()
        if self._digests is not None:
            return list(self._digests.digests(offset, length, block, DIGEST_ALG))
        return block_digests(self.medium.pread(offset, length), block)


def block_digests(data: bytes, block: int) -> list[bytes]:
    # Imported here: a mirror that never compares digests never loads the link's
    # protocol module (nor cbor2).
    from hal.media.remote.frames import block_digests as digests

    return digests(data, block, DIGEST_ALG)


def differing_runs(ours: list[bytes], theirs: list[bytes], block: int,
                   length: int) -> Iterator[tuple[int, int]]:
    """Byte ranges [start, end) of consecutive blocks whose digests differ."""
    run_start: int | None = None
    for i, digest in enumerate(ours):
        same = i < len(theirs) and theirs[i] == digest
        if not same and run_start is None:
            run_start = i
        elif same and run_start is not None:
            yield run_start * block, min(i * block, length)
            run_start = None
    if run_start is not None:
        yield run_start * block, length
