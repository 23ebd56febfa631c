"""Referral family: where a user sits in the referral tree, and how fast their referrer recruits.

Keyed by the referrer: a referrer's downline and recent signups live where the referrer's key
does, and a transaction reads them there. Depth is a property of the whole tree, so it comes
from the tree itself (`ReferralTree`): fixed at signup as the referrer's depth + 1, where a
referrer who had not signed up by then (in `(ts, user_id)` order) counts as a root. Pyramid
schemes show as depth past three tiers; referral farms as referrers whose downline jumps
within a day.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any, ClassVar

from features.rows import FeatureRow, Value, feature_row
from features.user import TxContext
from features.windows import WindowCount, sweep_idle, touch
from rebate_guard.contract.records import Signup, Transaction
from rebate_guard.contract.time import DAY_MS


@feature_row
class ReferralFeatures(FeatureRow):
    #: The user's depth in the referral tree: 0 for a root, None if never seen signing up.
    referral_depth: Value
    #: The referrer's referees so far, and those who signed up in the last 24 h.
    referrer_downline_size: Value
    referrer_signups_24h: Value


#: A user's entry in the referral tree: (referrer, signup ts). Only signups that name a
#: referrer other than the user make one; a user without one is a root (depth 0).
TreeEntry = tuple[str, int]
#: Walks the tree: yields the user whose entry it needs next, receives it, returns a depth.
DepthWalk = Generator[str, TreeEntry | None, int]


def depth_walk(referrer: str, user_id: str, *, signup_ts: int) -> DepthWalk:
    """The depth of `user_id`, who signed up at `signup_ts` naming `referrer`.

    Depth is one more than the referrer's depth at that signup, which only entries of earlier
    signups decide: so the answer never changes once every signup before it is in the tree,
    and any holder of the tree (a dict, Redis) gives the same one. Keys strictly decrease up
    the walk, so it ends even on a malformed (cyclic) input.
    """
    depth, upline, key = 1, referrer, (signup_ts, user_id)
    while True:
        entry = yield upline
        if entry is None or (entry[1], upline) >= key:
            return depth  # a root, or not signed up yet at that moment
        depth += 1
        key = (entry[1], upline)
        upline = entry[0]


def run_walk(walk: DepthWalk, lookup: Callable[[str], TreeEntry | None]) -> int:
    """Drives a walk against a synchronous lookup (a dict's `get`)."""
    try:
        user = next(walk)
        while True:
            user = walk.send(lookup(user))
    except StopIteration as done:
        depth: int = done.value
        return depth


class DepthMemo:
    """Depths already walked, per user: final once asked for at a transaction (every signup
    before it has been applied by then; see `depth_walk`). Bounded: the oldest go first and
    are walked again if needed."""

    __slots__ = ("depths", "limit")

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        #: user -> (signup ts, depth), oldest first; the ts tells a memo from before a
        #: re-signup (past the user TTL) from a current one. Ordered: once full, every put
        #: drops the oldest, and a plain dict finds its first item past every slot deleted
        #: at its front (the refund map's cost in benchmarks/README.md).
        self.depths: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restores a checkpoint; one from when `depths` was a plain dict (in insertion
        order, as now) resumes as an OrderedDict."""
        _, slots = state
        self.limit = slots["limit"]
        self.depths = OrderedDict(slots["depths"])

    def get(self, user_id: str, signup_ts: int) -> int | None:
        memo = self.depths.get(user_id)
        return memo[1] if memo is not None and memo[0] == signup_ts else None

    def put(self, user_id: str, *, signup_ts: int, depth: int) -> None:
        depths = self.depths
        depths[user_id] = (signup_ts, depth)  # a user already here keeps their place
        if len(depths) > self.limit:
            depths.popitem(last=False)


class ReferralTree:
    """The tree in one process (replay, tests): entries in a dict, depths memoised."""

    def __init__(self) -> None:
        self.entries: dict[str, TreeEntry] = {}
        self.memo = DepthMemo()

    def signup(self, event: Signup) -> None:
        """Records a first signup (the caller filters repeats)."""
        entry = tree_entry(event)
        if entry is not None:
            self.entries[event.user_id] = entry

    def depth(self, user_id: str, context: TxContext) -> int | None:
        referrer, signup_ts = context.referrer, context.signup_ts
        if referrer is None or signup_ts is None:
            return None
        depth = self.memo.get(user_id, signup_ts)
        if depth is None:
            depth = run_walk(depth_walk(referrer, user_id, signup_ts=signup_ts), self.entries.get)
            self.memo.put(user_id, signup_ts=signup_ts, depth=depth)
        return depth


def tree_entry(event: Signup) -> TreeEntry | None:
    """The tree entry a first signup makes, if it names a referrer other than the user."""
    referrer = event.referrer_id
    if referrer is None or referrer == event.user_id:
        return None
    return (referrer, event.ts)


class ReferrerState:
    __slots__ = ("downline", "last_ts", "recent")

    def __init__(self) -> None:
        self.downline = 0
        # Referees' signups in the last 24 h; most users refer nobody, so it is created (an
        # empty deque is ~600 bytes) only with the first referee.
        self.recent: WindowCount | None = None
        self.last_ts = 0


class ReferralFamily:
    names: ClassVar[tuple[str, ...]] = ReferralFeatures.names

    def __init__(self, ttl_ms: int) -> None:
        #: A referrer without a new referee for this long is forgotten (the user TTL).
        self.ttl_ms = ttl_ms
        self.state: dict[str, ReferrerState] = {}

    def signup(self, event: Signup) -> None:
        """A user's first signup: one more referee for the referrer it names."""
        referrer_id = event.referrer_id
        if referrer_id is None or referrer_id == event.user_id:
            return
        referrer = touch(self.state, referrer_id, ts=event.ts, new=ReferrerState)
        referrer.downline += 1
        recent = referrer.recent
        if recent is None:
            recent = referrer.recent = WindowCount(DAY_MS)
        recent.expire(event.ts)
        recent.add(event.ts)

    def transaction(self, tx: Transaction, context: TxContext) -> ReferralFeatures:
        """The referral features of `tx` (a transaction adds nothing to the referrer's state)."""
        row = ReferralFeatures()
        referrer_id = context.referrer
        if referrer_id is None:
            # A root has depth 0; a user never seen signing up has none.
            row.referral_depth = None if context.signup_ts is None else 0
            row.referrer_downline_size = row.referrer_signups_24h = None
            return row
        row.referral_depth = context.depth
        referrer = self.state.get(referrer_id)
        # Checked on read as well as swept, so expiry never depends on when sweeps ran.
        if referrer is None or referrer.last_ts <= tx.ts - self.ttl_ms:
            row.referrer_downline_size = row.referrer_signups_24h = None
            return row
        recent = referrer.recent
        if recent is not None:
            recent.expire(tx.ts)
        row.referrer_downline_size = referrer.downline
        row.referrer_signups_24h = 0 if recent is None else len(recent)
        return row

    def sweep(self, now_ms: int) -> int:
        """Drop referrers with no new referee for longer than the TTL."""
        return len(sweep_idle(self.state, now_ms - self.ttl_ms))
