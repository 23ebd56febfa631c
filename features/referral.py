"""Referral family: where a user sits in the referral tree, and how fast their referrer recruits.

Depth is fixed at signup (the referrer's depth + 1; a referrer never seen signing up counts as
a root). Pyramid schemes show as depth past three tiers; referral farms as referrers whose
downline jumps within a day.
"""

from __future__ import annotations

from typing import ClassVar

from features.windows import WindowCount, sweep_idle, touch
from streams.records import Signup, Transaction

DAY_MS = 86_400_000

REFERRAL_FEATURES = ("referral_depth", "referrer_downline_size", "referrer_signups_24h")


class ReferralNode:
    __slots__ = ("depth", "downline", "last_ts", "recent", "referrer")

    def __init__(self) -> None:
        self.referrer: str | None = None
        self.depth: int | None = None  # None until the user's own signup is seen
        self.downline = 0
        # Referees' signups in the last 24 h; most users refer nobody, so it is created (an
        # empty deque is ~600 bytes) only with the first referee.
        self.recent: WindowCount | None = None
        self.last_ts = 0


class ReferralFamily:
    names: ClassVar[tuple[str, ...]] = REFERRAL_FEATURES

    def __init__(self) -> None:
        self.state: dict[str, ReferralNode] = {}

    def signup(self, event: Signup) -> None:
        node = touch(self.state, event.user_id, event.ts, ReferralNode)
        referrer_id = event.referrer_id
        if referrer_id is None or referrer_id == event.user_id:
            node.referrer, node.depth = None, 0
            return
        referrer = touch(self.state, referrer_id, event.ts, ReferralNode)
        referrer.downline += 1
        recent = referrer.recent
        if recent is None:
            recent = referrer.recent = WindowCount(DAY_MS)
        recent.expire(event.ts)
        recent.add(event.ts)
        node.referrer = referrer_id
        node.depth = (referrer.depth or 0) + 1

    def transaction(self, tx: Transaction, out: list[float | None]) -> None:
        if tx.user_id not in self.state:
            out.extend((None, None, None))
            return
        node = touch(self.state, tx.user_id, tx.ts, ReferralNode)
        out.append(node.depth)
        # The referrer may have been swept (idle past the TTL): then it reads as unknown.
        referrer = None if node.referrer is None else self.state.get(node.referrer)
        if referrer is None:
            out.extend((None, None))
            return
        recent = referrer.recent
        if recent is not None:
            recent.expire(tx.ts)
        out.append(referrer.downline)
        out.append(0 if recent is None else len(recent))

    def sweep(self, now_ms: int, ttl_ms: int) -> int:
        """Drop users idle (no signup, referee or payment) for longer than the TTL."""
        return len(sweep_idle(self.state, now_ms - ttl_ms))
