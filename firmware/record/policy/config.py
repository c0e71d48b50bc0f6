"""The settings of the cost-aware policy: one exchange rate and what it prices."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CostAwareConfig:
    # Bytes x host writes of resync worth one NVRAM update: the operating point.
    hold_cost: float = float(128 << 20)
    # Written regions are kept this many times hold_cost / region_size writes (a
    # written region costs only its own bytes, a guessed area many regions' worth);
    # once-written ones for a fraction of that time.
    written_hold_factor: float = 1.0
    once_written_share: float = 1 / 8
    # Regions a stream wrote are kept hold_cost / look-ahead writes (a later pass is
    # predicted again for a share of one update) rather than as other written regions.
    stream_written_short: bool = True
    # Coarsest area guessed around a random miss (0: guess nothing), and the fewest
    # writes an area must be worth keeping (hold_cost / size) to be guessed at all.
    max_admit_bytes: int = 64 << 20
    min_area_writes: int = 16
    # A level whose admissions have lately caught fewer host writes than this, per
    # admission (each holds at least one update's worth), adds no guesses (0: never
    # gated); while it is gated, its admissions are only noted (shadow admissions) and
    # the writes that land in them are counted as what its guesses would have caught,
    # so it reopens when they would pay again. Shadows rather than real probes: a probe
    # of a coarse area costs as much as the guesses the gate saves
    # (docs/record-policy.md, "Gated levels and shadow admissions").
    min_guess_yield: float = 0.25
    # Streams tracked at once, the hole a stream may skip, and how far ahead of its
    # own length a young stream may predict.
    max_streams: int = 32
    max_gap: int = 128 * 1024
    ahead_per_stream_byte: int = 16
    # Writes remembered in order (0: none) and how many of those that followed a
    # missed region's previous write are guessed with the miss.
    history_writes: int = 65536
    follow_writes: int = 16
    # Followers are gated as area levels are (min_guess_yield), but a follower guess is
    # a few regions, so while gated one admission in follower_probe_every is made for
    # real to see whether they would pay again.
    follower_probe_every: int = 16
    # Regions shed recently, remembered so that a rewrite of one counts as reuse.
    ghost_regions: int = 65536
    # Spend background updates (tidy) on shedding regions past their time once holding
    # them since the last miss has cost this many updates' worth; False: shed only with
    # misses. A tidy's update buys nothing the next miss would not do for free, so it
    # is a guard for a host that stops missing, not a rival to that free ride
    # (docs/record-policy.md, "Shedding and the expiry ledger", has what the
    # alternatives cost).
    background_shed: bool = True
    tidy_after_updates: float = 8.0
