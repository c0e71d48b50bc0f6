"""What a record policy sees of the record, and what the record asks and tells it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol


class RecordView(Protocol):
    """What a policy may look at."""

    @property
    def region_shift(self) -> int:
        ...

    @property
    def nregions(self) -> int:
        ...

    def contains(self, region: int) -> bool:
        ...

    def lru(self) -> Iterator[tuple[int, float]]:
        """Member regions from least to most recently written, with that time."""
        ...

    def evictable(self, region: int) -> bool:
        """Mirrored, and no write to it in flight."""
        ...

    @property
    def mirrored_seq(self) -> int:
        """Every write up to this sequence number is on the second medium."""
        ...

    def last_write_seq(self, region: int) -> int:
        """Sequence number of the latest write to a member region (0: none)."""
        ...


class RecordPolicy(Protocol):
    """Asked on every write and miss; told what the record did with its answers.

    On a miss the record calls ``predict`` then ``victims``; if the transaction
    commits it calls ``on_evicted`` with the regions that left and ``on_admitted``
    with those that entered. Whatever happens, every ``victims`` and ``idle`` is
    answered by exactly one ``on_evicted``: with none of them when the record could
    not make the transaction (no room for the write, the store failed), so that the
    policy knows which of the regions it named are still members.
    """

    def attach(self, view: RecordView) -> None:
        """The record this policy serves (called once, when the record is built)."""
        ...

    def observe(self, offset: int, length: int) -> None:
        """Every write, hit or miss, in the order the host issued them."""
        ...

    def predict(self, view: RecordView, offset: int, length: int) -> list[int]:
        """On a miss: regions to add besides the write's own (not yet in the record)."""
        ...

    def victims(self, view: RecordView, need: int, protect: set[int]) -> list[int]:
        """On a miss: evictable regions to drop in the same transaction.

        At least ``need`` if it can (to make room within the capacity); more are
        welcome — shedding clean regions with a miss's update costs nothing extra.
        The record drops only regions that are evictable and not in ``protect``.
        """
        ...

    def idle(self, view: RecordView, now: float) -> list[int]:
        """Evictable regions to drop in the background because they went quiet."""
        ...

    def on_admitted(self, regions: Sequence[int]) -> None:
        """A miss's transaction committed: these regions entered the record (the
        write's own missing regions, then the predicted ones it took, if any)."""
        ...

    def on_evicted(self, regions: Sequence[int]) -> None:
        """These regions left the record (possibly none: see the class's docstring).

        Besides answering ``victims`` and ``idle``, the record calls it when it sheds
        regions by a rule of its own (a tidy once the host is quiet, ``evict_clean``);
        those may include regions the policy never named.
        """
        ...
