"""What a guesser's admissions have lately caught, and whether that still pays."""

from __future__ import annotations

_DECAY = 1 - 1 / 64  # per admission: the yield is over the last ~64 admissions
_EVIDENCE = 16.0  # admissions (decayed) before the yield is judged


class GuessYield:
    """Decayed counts of a guesser's admissions and of the host writes they caught."""

    __slots__ = ("admissions", "hits")

    def __init__(self) -> None:
        self.admissions = 0.0
        self.hits = 0.0

    def admitted(self) -> None:
        """One more admission: older ones (and what they caught) weigh a little less."""
        self.admissions = self.admissions * _DECAY + 1
        self.hits = self.hits * _DECAY

    def too_little(self, floor: float) -> bool:
        """Judged (enough admissions seen) and catching fewer writes per admission than
        ``floor``."""
        return self.admissions >= _EVIDENCE and self.hits < floor * self.admissions
