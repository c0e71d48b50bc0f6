"""What the management console needs from the appliance, nothing more.

The appliance (``firmware.app``) implements :class:`ConsoleBackend`; the built-in
commands (:mod:`firmware.console.commands`) only ever call these four methods.
Commands that need more of the appliance (``peer ...``, ``verify``) do not widen
this protocol: they are registered in the console's
:class:`~firmware.console.grammar.CommandTable` with handlers that hold whatever
object they need.

All methods are synchronous and quick: the console calls them on the event loop.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class ConsoleBackend(Protocol):
    def status(self) -> dict[str, object]:
        """Counters and state, as a flat mapping of JSON-compatible values.

        Known keys (all optional for the console, which renders whatever is there):
        ``record_regions``, ``record_bytes``, ``region_size``, ``volume_size``, ``hits``,
        ``misses``, ``evictions``, ``waits``, ``nvram_updates``, ``nvram_bytes_written``,
        ``mirror_state``, ``mirror_lag_bytes``, ``mirror_lag_seconds``,
        ``resync_remaining_bytes``, ``board``, ``uptime_s``.
        ``region_size`` (bytes) is what turns region indices into byte ranges.
        """
        ...

    def record_regions(self) -> list[int]:
        """Indices of the regions named in the write record (any order)."""
        ...

    def mirror_pause(self) -> None:
        """Stop copying to the second medium; the record keeps growing meanwhile."""
        ...

    def mirror_resume(self) -> None:
        """Start copying to the second medium again."""
        ...
