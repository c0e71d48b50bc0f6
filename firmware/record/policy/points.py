"""The appliance's operating points: two settings of the cost-aware policy."""

from __future__ import annotations

from dataclasses import replace

from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.cost_aware import CostAwarePolicy

POINTS: dict[str, CostAwareConfig] = {
    # Few updates: written regions stay (64 x 1 GiB / region: millions of writes), a
    # random miss guesses its 64 MiB area for 16 writes after the area's latest write,
    # its 16 MiB area for 64, 4 MiB for 256, 1 MiB for 1024…; regions leave only with
    # a miss's transaction, never by an update of their own. A level that has lately
    # caught less than a quarter of a write per admission stops guessing
    # (min_guess_yield, the same at both points).
    "latency-first": CostAwareConfig(
        hold_cost=float(1 << 30), written_hold_factor=64.0, stream_written_short=False,
        background_shed=False),
    # Little resync: a rewritten 32 KiB region stays 1280 writes, a once-written one
    # 160; guesses in areas of 1 MiB (40 writes) and 256 KiB (160 writes), and what
    # followed a region last time for 1280 region-writes (at most 80 regions); a tidy
    # sheds what is due once it has waited 8 updates' worth for a miss. Guesses are
    # gated as at latency-first. The rate is the middle (geometric) of the range where
    # the point meets both CloudPhysics bounds at 100 Mbit/s (docs/record-policy.md,
    # "How recovery-first's rate was chosen").
    "recovery-first": CostAwareConfig(hold_cost=float(40 << 20)),
}
DEFAULT_POINT = "recovery-first"


def make_policy(point: str = DEFAULT_POINT) -> CostAwarePolicy:
    """The policy of a named operating point ("latency-first" or "recovery-first")."""
    try:
        config = POINTS[point]
    except KeyError:
        raise ValueError(f"unknown operating point {point!r} "
                         f"(one of {', '.join(POINTS)})") from None
    return CostAwarePolicy(replace(config))
