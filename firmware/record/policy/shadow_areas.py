"""Shadow admissions: the areas a gated level would have guessed, noted but not added.

A level whose guesses have stopped paying adds none; its admissions go on here,
at the cost of a few dictionary lookups per write, and the writes that land in a
live shadow area are counted as what its guesses would have caught. So a gated
level is still measured on every miss, and reopens as soon as its guesses would
pay again (docs/record-policy.md, "Gated levels and shadow admissions").
"""

from __future__ import annotations

import heapq

from firmware.record.policy.guess_yield import GuessYield
from firmware.record.policy.protocol import RecordView


class ShadowAreas:
    """Per area level, the shadow areas with the clock of their latest write."""

    def __init__(self) -> None:
        self._shifts: list[int] = []
        self._keeps: list[int] = []
        self._areas: list[dict[int, int]] = []
        # (expiry, level, area) entries, checked lazily against the area's latest write.
        self._due: list[tuple[int, int, int]] = []

    def attach(self, area_shifts: list[int], keeps: list[int]) -> None:
        """The levels (byte shifts, coarsest first) and how long each keeps an area."""
        self._shifts = area_shifts
        self._keeps = keeps
        self._areas = [{} for _ in area_shifts]

    def admit(self, level: int, first: int, last: int, expiry: int, clock: int) -> None:
        """Note areas first..last of a gated level, as if admitted at ``clock``."""
        shadow = self._areas[level]
        for area in range(first, last + 1):
            if area not in shadow:
                heapq.heappush(self._due, (expiry, level, area))
            shadow[area] = clock

    def observe(self, view: RecordView | None, shift: int, offset: int, end: int,
                clock: int, on_guess: bool, yields: list[GuessYield]) -> None:
        """Count a write in a live shadow area that misses, or lands on a finer level's
        guess (``on_guess``), as one that level would have caught; let quiet shadow
        areas go."""
        due, shadows, keeps = self._due, self._areas, self._keeps
        if not due:
            return
        while due and due[0][0] <= clock:
            _expiry, level, area = heapq.heappop(due)
            last = shadows[level].get(area)
            if last is None:
                continue
            if last + keeps[level] > clock:
                heapq.heappush(due, (last + keeps[level], level, area))
            else:
                del shadows[level][area]
        caught = on_guess or (view is not None and not view.contains(offset >> shift))
        for level, ashift in enumerate(self._shifts):
            shadow = shadows[level]
            if not shadow:
                continue
            inside = False
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area in shadow:
                    shadow[area] = clock
                    inside = True
            if inside and caught:
                yields[level].hits += 1
