"""Referral tree: who referred whom, and how deep each user sits.

Pyramid-like schemes pay commissions many tiers up; a user more than three tiers below a
root is evidence of one. Depth is computed once at signup (the referrer's depth + 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.records import Signup

MAX_LEGIT_DEPTH = 3


@dataclass
class ReferralTree:
    depth: dict[str, int] = field(default_factory=dict)
    downline: dict[str, int] = field(default_factory=dict)

    def signup(self, event: Signup) -> None:
        referrer = event.referrer_id
        if referrer is None:
            self.depth.setdefault(event.user_id, 0)
            return
        self.depth[event.user_id] = self.depth.get(referrer, 0) + 1
        self.downline[referrer] = self.downline.get(referrer, 0) + 1

    def ring_score(self, user_id: str) -> tuple[float, list[str]]:
        """A score in [0, 1] with reason codes; 0 and no reasons when nothing is suspicious."""
        depth = self.depth.get(user_id, 0)
        if depth <= MAX_LEGIT_DEPTH:
            return 0.0, []
        # Each tier past the third doubles the odds; five tiers deep is already 0.8.
        score = 1.0 - 0.5 ** (depth - MAX_LEGIT_DEPTH + 1)
        return score, ["ring:pyramid_depth"]
