"""Users' points books and the points policy (docs/economics.md, "Points policy").

A user's points are the rebates granted on their payments (net of releases and clawbacks)
and the platform's `points_grant`s. Points never turn into cash: a `points_withdraw` is
always blocked. Of what a user has earned, only the policy's `redeemable_share` may leave the
book as redemptions or transfers, and never more than the balance.

Pure and in integers: a book is four counts, and the share an exact fraction. Each user's
book lives where the user's events are decided (the user partition), so nothing here waits
for another partition: the receiving side of a transfer is the platform's own `points_grant`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rebate_guard.contract.records import (
    ALLOW,
    BLOCK,
    POINTS_EXPIRE,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_REQUESTS,
    POINTS_WITHDRAW,
    Decision,
    PlatformEvent,
    build,
)
from rebate_guard.core.policy import PointsTerms, Policy

#: The reasons a points request is blocked.
NOT_WITHDRAWABLE = "policy:points_not_withdrawable"
OVER_REDEEMABLE_SHARE = "policy:over_redeemable_share"
OVER_BALANCE = "policy:over_balance"
#: What a points decision records as its model and thresholds.
POINTS_MODEL = "points-policy"
POINTS_THRESHOLDS = "points"

# A book: [earned, redeemed, transferred out, expired] (a list: ~4x smaller than an object).
EARNED, REDEEMED, TRANSFERRED, EXPIRED = range(4)


def balance(book: list[int]) -> int:
    """earned - redeemed - transferred out - expired."""
    return book[EARNED] - book[REDEEMED] - book[TRANSFERRED] - book[EXPIRED]


def redeemable(book: list[int], terms: PointsTerms) -> int:
    """min(balance, floor(share x earned) - redeemed - transferred out), in integers.

    Examples
    --------
    >>> redeemable([1_000, 100, 0, 0], PointsTerms(redeemable_share=0.4))
    300
    >>> redeemable([1_000, 0, 0, 900], PointsTerms(redeemable_share=0.4))
    100
    """
    share = terms.share
    released = book[EARNED] * share.numerator // share.denominator
    return min(balance(book), released - book[REDEEMED] - book[TRANSFERRED])


@dataclass
class PointsBooks:
    """user -> [earned, redeemed, transferred out, expired]."""

    books: dict[str, list[int]] = field(default_factory=dict)

    def book(self, user_id: str) -> list[int]:
        found = self.books.get(user_id)
        if found is None:
            found = self.books[user_id] = [0, 0, 0, 0]
        return found

    def take(
        self, event: PlatformEvent, policy: Policy, *, decided_at: int
    ) -> tuple[Decision | None, int]:
        """A platform event in the user's book: the decision on a points request (None for
        the other kinds), and how much the event moved the user's points (what it adds to
        the platform's liability: a grant adds, an allowed redemption or transfer and an
        expiry take away, anything else moves none)."""
        kind, user = event.kind, event.user_id or ""
        if kind == POINTS_GRANT:
            self.earn(user, event.amount_cents)
            return None, event.amount_cents
        if kind == POINTS_EXPIRE:
            return None, -self.expire(user, event.amount_cents)
        if kind not in POINTS_REQUESTS:
            return None, 0
        allowed, reason = self.request(event, policy.points)
        decision = points_decision(
            event, allowed=allowed, reason=reason, policy=policy, decided_at=decided_at
        )
        return decision, -allowed

    def earn(self, user_id: str, cents: int) -> None:
        """A rebate granted or released (cents > 0), clawed back (< 0), or points granted."""
        self.book(user_id)[EARNED] += cents

    def expire(self, user_id: str, cents: int) -> int:
        """Points lapsed: at most the balance leaves the book; returns how much did."""
        book = self.book(user_id)
        gone = max(0, min(cents, balance(book)))
        book[EXPIRED] += gone
        return gone

    def request(self, event: PlatformEvent, terms: PointsTerms) -> tuple[int, str | None]:
        """A redeem, transfer or withdraw request: the points allowed to move (all asked,
        or none) and the reason it is blocked (None: allowed); an allowed move leaves the
        book."""
        if event.kind == POINTS_WITHDRAW:
            return 0, NOT_WITHDRAWABLE
        book = self.book(event.user_id or "")
        asked = event.amount_cents
        if asked > balance(book):
            return 0, OVER_BALANCE
        if asked > redeemable(book, terms):
            return 0, OVER_REDEEMABLE_SHARE
        book[REDEEMED if event.kind == POINTS_REDEEM else TRANSFERRED] += asked
        return asked, None


def points_decision(
    event: PlatformEvent, *, allowed: int, reason: str | None, policy: Policy, decided_at: int
) -> Decision:
    """The decision on a points request, keyed by its event_id: allowed (trust 1) or
    blocked (risk 1) with its reason; the points asked and allowed as the rebate fields."""
    blocked = reason is not None
    return build(
        Decision,
        tx_id=event.event_id,
        ts=event.ts,
        user_id=event.user_id or "",
        merchant_id=event.merchant_id or "",
        risk=1.0 if blocked else 0.0,
        trust_weight=0.0 if blocked else 1.0,
        action=BLOCK if blocked else ALLOW,
        rebate_requested_cents=event.amount_cents,
        rebate_granted_cents=allowed,
        reasons=[reason] if reason is not None else [],
        model_version=POINTS_MODEL,
        decided_at=decided_at,
        policy_version=policy.version,
        commission_tiers=0,
        threshold_version=POINTS_THRESHOLDS,
    )
