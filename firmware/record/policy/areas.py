"""The area guesser: on a random miss, guess the nested areas around it.

A miss admits its areas at every level — 64 MiB, 16 MiB, 4 MiB, … down to four
regions — and the coarsest open level's regions enter the record as guesses. A
guess stays while any of its areas has been written within ``hold_cost / area
size`` writes: a coarse area pays for itself only briefly, a fine one for longer,
so the guesses of a quiet area thin out from its edges towards where the host
wrote. First writes come in bursts near earlier ones; docs/record-policy.md
("Guessed areas") has what the traces show.
"""

from __future__ import annotations

import heapq

from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.guess_yield import GuessYield
from firmware.record.policy.protocol import RecordView
from firmware.record.policy.shadow_areas import ShadowAreas


class AreaGuesser:
    """Admitted areas per level, the guesses that live by them, and each level's yield."""

    def __init__(self, config: CostAwareConfig) -> None:
        self.config = config
        self._shift = 16
        self._nregions = 0
        # The nested areas, coarsest first (byte shifts); per level, the writes an area
        # is kept after its latest write, and the admitted areas with the clock of their
        # latest write; (expiry, level, area) entries, checked lazily against it.
        self._shifts: list[int] = []
        self._keeps: list[int] = []
        self._admitted: list[dict[int, int]] = []
        self._due: list[tuple[int, int, int]] = []
        # Guesses not written yet (members, or guesses the record refused: those are
        # forgotten when met): they have no expiry of their own.
        self.guessed: set[int] = set()
        # Per level, its admissions (real or, while it is gated, shadow) and the host
        # writes they caught: writes that landed on a guess with that level's area the
        # coarsest around it, or (shadow) in a live shadow area.
        self._yields: list[GuessYield] = []
        self._shadows = ShadowAreas()

    def attach(self, region_shift: int, nregions: int) -> None:
        self._shift = region_shift
        self._nregions = nregions
        area = self.config.max_admit_bytes
        self._shifts = []
        while area >= 4 << region_shift:
            self._shifts.append(area.bit_length() - 1)
            area //= 4
        self._keeps = [int(self.config.hold_cost / (1 << ashift)) for ashift in self._shifts]
        self._admitted = [{} for _ in self._shifts]
        self._yields = [GuessYield() for _ in self._shifts]
        self._shadows.attach(self._shifts, self._keeps)

    def observe(self, view: RecordView | None, offset: int, end: int, span: range,
                clock: int) -> None:
        """A host write (bytes offset..end, regions span): credit the guess it lands on,
        keep its areas alive, and the same for shadow areas; it is no guess any more."""
        guessed = self.guessed
        on_guess = bool(guessed) and not guessed.isdisjoint(span)
        if on_guess:
            self._credit_hit(offset)
        for ashift, admitted in zip(self._shifts, self._admitted, strict=True):
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area in admitted:
                    admitted[area] = clock
        self._shadows.observe(view, self._shift, offset, end, clock, on_guess, self._yields)
        guessed.difference_update(span)

    def guess(self, view: RecordView, offset: int, length: int, own: range,
              clock: int) -> list[int]:
        """Admit the areas around a random miss; return the coarsest one's new regions
        (none of ``own``, the write's own)."""
        shift = self._shift
        end = offset + max(length, 1) - 1
        coarsest = None
        for level, ashift in enumerate(self._shifts):
            keep = self._keeps[level]
            if keep < self.config.min_area_writes:
                continue
            if coarsest is None:
                level_yield = self._yields[level]
                level_yield.admitted()
                if level_yield.too_little(self.config.min_guess_yield):
                    self._shadows.admit(level, offset >> ashift, end >> ashift, clock + keep,
                                        clock)
                    continue
                coarsest = ashift
            admitted = self._admitted[level]
            for area in range(offset >> ashift, (end >> ashift) + 1):
                if area not in admitted:
                    heapq.heappush(self._due, (clock + keep, level, area))
                admitted[area] = clock
        if coarsest is None:
            return []
        start = (offset >> coarsest) << (coarsest - shift)
        stop = min(self._nregions, ((end >> coarsest) + 1) << (coarsest - shift))
        contains = view.contains
        added = [r for r in range(start, stop) if r not in own and not contains(r)]
        self.guessed.update(added)
        return added

    def collect_quiet(self, clock: int) -> list[int]:
        """Admitted areas gone quiet leave; return their guesses that no other area
        covers (they are due now), area by area."""
        area_due, guessed, keeps = self._due, self.guessed, self._keeps
        released: list[int] = []
        while area_due and area_due[0][0] <= clock:
            _expiry, level, area = heapq.heappop(area_due)
            last = self._admitted[level].get(area)
            if last is None:
                continue
            later = last + keeps[level]
            if later > clock:
                heapq.heappush(area_due, (later, level, area))
                continue
            del self._admitted[level][area]
            per = self._shifts[level] - self._shift
            inside = guessed.intersection(range(area << per,
                                                min(self._nregions, (area + 1) << per)))
            if not inside:
                continue
            uncovered = sorted(self._uncovered(level, area, inside, clock))
            guessed.difference_update(uncovered)
            released += uncovered
        return released

    def forget(self, regions: list[int]) -> None:
        self.guessed.difference_update(regions)

    def _credit_hit(self, offset: int) -> None:
        """A write landed on a guess: credit the coarsest admitted area around it."""
        for level, (ashift, admitted) in enumerate(zip(self._shifts, self._admitted,
                                                       strict=True)):
            if offset >> ashift in admitted:
                self._yields[level].hits += 1
                return

    def _uncovered(self, level: int, area: int, regions: set[int], clock: int) -> set[int]:
        """Of ``regions`` (in a quiet area of ``level``), those no live area covers: an
        area is live while written within its keep. Works on whole areas, not regions —
        a 64 MiB area is thousands of regions, and a miss may retire one."""
        shift, shifts, keeps = self._shift, self._shifts, self._keeps
        ashift = shifts[level]
        base = area << ashift  # first byte of the quiet area
        for coarser in range(level):  # coarsest first: at most one area each holds it
            last = self._admitted[coarser].get(base >> shifts[coarser])
            if last is not None and last + keeps[coarser] > clock:
                return set()
        for finer in range(level + 1, len(shifts)):
            admitted = self._admitted[finer]
            if not admitted:
                continue
            fshift, keep = shifts[finer], keeps[finer]
            first = base >> fshift
            stop = first + (1 << (ashift - fshift))
            inside = (range(first, stop) if stop - first <= len(admitted)
                      else [a for a in admitted if first <= a < stop])
            per = fshift - shift
            for sub in inside:
                last = admitted.get(sub)
                if last is not None and last + keep > clock:
                    regions.difference_update(range(sub << per, (sub + 1) << per))
            if not regions:
                break
        return regions
