"""Operation counters shared by the NVRAM backends (for tests and benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass
class NvramStats:
    """What a backend was asked to do since it was opened.

    ``bytes_written`` counts bytes that reached the cells: after an injected power
    cut it includes the stored prefix of the interrupted write, not the rest.
    """

    write_calls: int = 0
    bytes_written: int = 0
    read_calls: int = 0
    bytes_read: int = 0


class CountedOperations:
    """The counters every backend keeps in ``_stats``, handed out as a snapshot."""

    _stats: NvramStats

    @property
    def stats(self) -> NvramStats:
        """A snapshot of the operation counters."""
        return replace(self._stats)
