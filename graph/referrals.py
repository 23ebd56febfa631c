"""Referral-tree evidence for the trust weight, until the ring detectors of the graph layer.

Pyramid-like schemes pay commissions many tiers up; a user more than three tiers below a root
is evidence of one. The depth itself is a feature (`referral_depth`, from
`features.referral`), so the live worker and replay read the same tree.
"""

from __future__ import annotations

MAX_LEGIT_DEPTH = 3


def pyramid_score(depth: float | None) -> tuple[float, list[str]]:
    """A score in [0, 1] with reason codes; 0 and no reasons when nothing is suspicious."""
    if depth is None or depth <= MAX_LEGIT_DEPTH:
        return 0.0, []
    # Each tier past the third doubles the odds; five tiers deep is already 0.8.
    return 1.0 - 0.5 ** (depth - MAX_LEGIT_DEPTH + 1), ["ring:pyramid_depth"]
