"""The second medium `tandem run --remote` names: a `tandem receive` or any NBD export.

Which medium a URL means, where the link's generation state lives (the data
directory) and when a volume starts a new identity are the appliance's
decisions, so they live here and not in hal/media/.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os

from firmware.parsing import parse_host_port
from hal.media.base import Medium, MediumError
from hal.media.remote.generations import StateFile, StateStore, SyncState
from hal.media.remote.medium import RemoteMedium
from hal.media.remote.net import client_tls_context

log = logging.getLogger("tandem.link")


def open_remote(remote: str, *, size: int, key_file: str | None = None,
                state: StateStore | None = None, tls_ca: str | None = None,
                tls: bool = False, rate_limit: float | None = None,
                loop: asyncio.AbstractEventLoop | None = None) -> Medium:
    """The second medium named by `tandem run --remote`: ``HOST:PORT`` or an NBD URI.

    ``HOST:PORT`` is a `tandem receive` (needs ``key_file``; TLS if ``tls`` or
    ``tls_ca``; its link runs on ``loop`` if given); ``nbd://``, ``nbds://``,
    ``nbd+unix://``... is any NBD export.
    """
    if remote.startswith("nbd"):
        from hal.media.nbd import NbdMedium

        medium = NbdMedium(remote, size=size, rate_limit=rate_limit)
        try:
            medium.connect()  # a wrong target is worth failing for; one that is down is not
        except MediumError as exc:
            if exc.errno == errno.ENOSPC:
                medium.close()
                raise
            log.warning("%s; the mirror will keep trying", exc)
        return medium
    if not key_file:
        raise ValueError("--remote HOST:PORT needs --key-file")
    with open(key_file, "rb") as f:
        key = f.read()
    host, port = parse_host_port(remote)
    context = client_tls_context(tls_ca) if (tls or tls_ca) else None
    return RemoteMedium(host, port, key, size, state=state, tls=context,
                        rate_limit=rate_limit, loop=loop)


def open_second_medium(remote: str, *, size: int, data_dir: str, volume_created: bool,
                       key_file: str | None = None, tls: bool = False,
                       tls_ca: str | None = None, rate_limit: float | None = None,
                       loop: asyncio.AbstractEventLoop | None = None) -> Medium:
    """The second medium of `tandem run --remote`, with the link state kept across restarts.

    A `tandem receive` knows this volume by the uuid and generations in
    ``DATA_DIR/link-state``; a volume created now starts a new identity (a receiver
    holding another volume's copy then refuses, rather than being overwritten).
    """
    state: StateStore | None = None
    if not remote.startswith("nbd"):
        os.makedirs(data_dir, exist_ok=True)
        path = os.path.join(data_dir, "link-state")
        store = StateFile(path)
        if volume_created or not os.path.exists(path):
            store.save(SyncState.new_primary())
        store.load()  # a damaged file stops the start-up here, not at the first connect
        state = store
    return open_remote(remote, size=size, key_file=key_file, state=state, tls=tls,
                       tls_ca=tls_ca, rate_limit=rate_limit, loop=loop)
