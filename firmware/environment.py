"""What an appliance takes from its surroundings, so that a test or `tandem torture` can
start the real ``Appliance`` on simulated parts, and two appliances can share a process.

The defaults are the board's: the monotonic clock, a worker thread per blocking
boundary, the NVRAM and media a board profile names.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hal.media.base import Medium
from hal.media.file import open_medium
from hal.nvram import open_nvram
from hal.nvram.base import Nvram


def worker_thread(name: str) -> concurrent.futures.Executor:
    """One thread per boundary: the order of its jobs is the order they were handed over
    (the mirror's I/O, the NVRAM's transactions and the local medium's rely on it)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tandem-{name}")


def open_profile_medium(role: str, spec: Mapping[str, Any], default_size: int) -> Medium:
    return open_medium(dict(spec), default_size=default_size)


@dataclass
class Environment:
    """``executor(name)`` gives the executor for one boundary (``"mirror"``, ``"nvram"``,
    ``"local"``); the appliance owns what it gets and shuts it down when it stops.
    ``open_medium(role, spec, default_size)`` opens the profile's ``"local"`` or
    ``"second"`` medium (a ``--remote`` second medium is not opened through it)."""

    clock: Callable[[], float] = time.monotonic
    executor: Callable[[str], concurrent.futures.Executor] = worker_thread
    open_nvram: Callable[[Mapping[str, Any]], Nvram] = open_nvram
    open_medium: Callable[[str, Mapping[str, Any], int], Medium] = open_profile_medium
    # A pair's link to its peer, by URL: ``(url, on_payload, on_state) -> PeerLink``
    # (firmware/peer/links.py). None: the real TCP and serial links.
    open_peer_link: Callable[..., Any] | None = None
