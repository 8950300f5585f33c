"""How a retention group's tiers are cut into partitions (pure arithmetic, no IO).

Each tier has two partition sizes, both aligned to multiples of themselves since the epoch:

``window``  the small partitions the tier receives: for the finest tier a sealed head window
            (:data:`~._head.WINDOW_SLOTS` steps, 10 min at 10 s), for a coarser tier the rollup
            of one full partition of the tier below;
``span``    the full partitions that ``window`` partitions are compacted into: about
            :data:`FULL_SLOTS` points per series (2 h at 10 s, 12 h at 1 min, 30 d at 1 h), at
            most a quarter of the tier's retention (so that retention, which deletes whole
            partitions, stays close to what was asked), and a multiple of the window and of the
            next tier's step (so that a full partition rolls up into whole coarser slots).

Retention deletes a tier's full partition once it is older than the retention *and* its data
has been rolled up into the next tier, so data may outlive its retention by up to one span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._head import WINDOW_SLOTS
from ._retention import Tier

FULL_SLOTS = 720


@dataclass(frozen=True, slots=True)
class TierPlan:
    step: int
    retention: int
    window: int
    span: int


def plan_tiers(tiers: tuple[Tier, ...]) -> tuple[TierPlan, ...]:
    """The partition sizes of each tier of a group (finest first)."""
    plans: list[TierPlan] = []
    for i, tier in enumerate(tiers):
        window = WINDOW_SLOTS * tier.step if i == 0 else plans[-1].span
        slots = max(1, min(FULL_SLOTS, tier.points // 4))
        span = math.lcm(slots * tier.step, window)
        if i + 1 < len(tiers):
            span = math.lcm(span, tiers[i + 1].step)
        plans.append(TierPlan(tier.step, tier.retention, window, span))
    return tuple(plans)
