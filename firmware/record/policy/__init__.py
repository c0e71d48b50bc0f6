"""Record policies: which regions to add ahead of the host, which to let go.

The record asks a policy two things and decides nothing else itself:
``predict`` on a miss (regions to add beside the missing ones, so that the
host's next writes hit) and ``victims``/``idle`` (which clean regions to
evict); it tells the policy what it did (``on_admitted``/``on_evicted``).
Policies see the record only through ``RecordView``.

- ``protocol``: ``RecordView`` and ``RecordPolicy``;
- ``sequential_lru``: the simple policy (look-ahead of streams, LRU eviction);
- ``cost_aware``: the appliance's policy, composed of ``expiry`` (when each region
  may go), ``areas`` and ``shadow_areas`` (guessed areas around a random miss, and
  the would-be guesses of gated levels), ``followers`` (what followed last time),
  ``streams`` (sequential runs and their look-ahead) and ``guess_yield`` (what a
  guesser's admissions catch); ``config`` its settings, ``points`` the two
  operating points.
"""

from firmware.record.policy.config import CostAwareConfig
from firmware.record.policy.cost_aware import CostAwarePolicy
from firmware.record.policy.points import DEFAULT_POINT, POINTS, make_policy
from firmware.record.policy.protocol import RecordPolicy, RecordView
from firmware.record.policy.sequential_lru import SequentialLru, SequentialLruConfig

__all__ = [
    "DEFAULT_POINT",
    "POINTS",
    "CostAwareConfig",
    "CostAwarePolicy",
    "RecordPolicy",
    "RecordView",
    "SequentialLru",
    "SequentialLruConfig",
    "make_policy",
]
