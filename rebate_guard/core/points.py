"""Users' points books and the points policy (docs/economics.md, "Points policy").

A user's points are the rebates granted on their payments (net of releases and clawbacks)
and the platform's `points_grant`s. Points never turn into cash: a `points_withdraw` is
always blocked. Of what a user has earned, only the policy's `redeemable_share` may leave the
book as redemptions or transfers, and never more than the balance. Within those limits a
request is weighed as a payment is: its rules' risk (`detectors.rules.REQUEST_RULES`, scored
by the decider on the request's features and on the requester's ring in the graph) gives a
trust weight, which the policy's fixed thresholds turn into allow, scale (part of the
points), hold or block; only the allowed part leaves the book.

A held request keeps its points aside (out of the balance, so they cannot be asked for
twice) and is resolved as a held rebate is, by the same `Ledger`: a legitimate label on the
request or its user releases it (the points leave the book then), a fraud label voids it
(they stay), and one nobody resolved within `hold_timeout_hours` is released or voided as
`hold_timeout_action` says. Each resolution is a `RebateAdjustment` keyed by the request's
event_id, as a payment's is keyed by its tx_id.

Pure and in integers: a book is five counts, and the share an exact fraction. Each user's
book lives where the user's events are decided (the user partition), so nothing here waits
for another partition: the receiving side of a transfer is the platform's own `points_grant`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rebate_guard.contract.records import (
    ALLOW,
    BLOCK,
    HOLD,
    POINTS_EXPIRE,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_REQUESTS,
    POINTS_TRANSFER,
    POINTS_WITHDRAW,
    RELEASE,
    SCALE,
    Decision,
    Label,
    PlatformEvent,
    RebateAdjustment,
    build,
)
from rebate_guard.core.ledger import Ledger
from rebate_guard.core.policy import EXPECTED_LOSS, LedgerTerms, PointsTerms, Policy, trust_weight
from rebate_guard.core.solvency import Movement

#: The reasons a points request is blocked.
NOT_WITHDRAWABLE = "policy:points_not_withdrawable"
OVER_REDEEMABLE_SHARE = "policy:over_redeemable_share"
OVER_BALANCE = "policy:over_balance"
#: The reasons a request asked past the user's book (its balance or redeemable share then).
PAST_THE_BOOK = frozenset({OVER_BALANCE, OVER_REDEEMABLE_SHARE})
#: What a points decision records as its model (the request rules: they learn nothing, so
#: one version) and thresholds (the policy's fixed ones, as a points decision).
POINTS_MODEL = "points-rules"
POINTS_THRESHOLDS = "points"

# A book: [earned, redeemed, transferred out, expired, held] (a list: ~4x smaller than an
# object); held: asked by requests on hold, set aside until they are resolved.
EARNED, REDEEMED, TRANSFERRED, EXPIRED, HELD = range(5)


def balance(book: list[int]) -> int:
    """earned - redeemed - transferred out - expired - held."""
    return book[EARNED] - book[REDEEMED] - book[TRANSFERRED] - book[EXPIRED] - book[HELD]


def redeemable(book: list[int], terms: PointsTerms) -> int:
    """min(balance, floor(share x earned) - redeemed - transferred out - held), in integers.

    Examples
    --------
    >>> redeemable([1_000, 100, 0, 0, 0], PointsTerms(redeemable_share=0.4))
    300
    >>> redeemable([1_000, 0, 0, 900, 0], PointsTerms(redeemable_share=0.4))
    100
    >>> redeemable([1_000, 100, 0, 0, 50], PointsTerms(redeemable_share=0.4))
    250
    """
    share = terms.share
    released = book[EARNED] * share.numerator // share.denominator
    return min(balance(book), released - book[REDEEMED] - book[TRANSFERRED] - book[HELD])


def _redemption_cut(event: PlatformEvent, book: list[int], terms: PointsTerms) -> int | None:
    """What a redemption past the book's limits may still take: its redeemable points
    (None: not a redemption, or nothing redeemable, so it is refused whole). A transfer
    names what it gives another user and a withdrawal is never allowed: neither is cut.

    Examples
    --------
    >>> from rebate_guard.contract.records import PlatformEvent
    >>> ask = PlatformEvent(event_id="e", ts=0, kind=POINTS_REDEEM, amount_cents=500, user_id="u")
    >>> _redemption_cut(ask, [1_000, 0, 0, 0, 0], PointsTerms(redeemable_share=0.4))
    400
    >>> _redemption_cut(ask, [1_000, 400, 0, 0, 0], PointsTerms(redeemable_share=0.4)) is None
    True
    """
    if event.kind != POINTS_REDEEM:
        return None
    room = redeemable(book, terms)
    return room if room > 0 else None


def withheld_for_the_book(reasons: Sequence[str], weight: float, *, allow_at: float) -> bool:
    """Whether a request's decision withheld points only because it asked past the user's
    book: the policy cut or refused it for that, and its rules' trust `weight` would have
    let it through whole (at least `allow_at`, the thresholds it was decided with, and no
    expected-loss limit stepped it down).

    A legitimate user's book falls short of what they ask when the detector held, scaled or
    blocked rebates of their payments (withheld there, and counted there) or a refund
    clawed one back: what the request loses is that money again, not the request's own
    friction (docs/economics.md, "Points policy").

    >>> withheld_for_the_book([OVER_REDEEMABLE_SHARE], 0.97, allow_at=0.85)
    True
    >>> withheld_for_the_book([OVER_REDEEMABLE_SHARE, "points_transfer"], 0.92, allow_at=0.85)
    True
    >>> withheld_for_the_book([OVER_REDEEMABLE_SHARE, "points_collector"], 0.73, allow_at=0.85)
    False
    >>> withheld_for_the_book(["young_account"], 0.82, allow_at=0.85)
    False
    """
    if weight < allow_at or EXPECTED_LOSS in reasons:
        return False
    return any(reason in PAST_THE_BOOK for reason in reasons)


#: A held request: (kind, merchant, region), for what its release moves.
HeldRequest = tuple[str, str | None, str | None]


@dataclass
class PointsBooks:
    """user -> [earned, redeemed, transferred out, expired, held], and the held requests."""

    books: dict[str, list[int]] = field(default_factory=dict)
    #: The held requests, as the rebate ledger keeps held rebates (keyed by event_id).
    holds: Ledger = field(default_factory=Ledger)
    #: event_id -> what each held request is, until it is resolved.
    held: dict[str, HeldRequest] = field(default_factory=dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint; one from before requests could be held has four counts a
        book and no holds."""
        self.__dict__.update(state)
        if "holds" not in state:
            for book in self.books.values():
                book.append(0)
            self.holds, self.held = Ledger(), {}

    def book(self, user_id: str) -> list[int]:
        found = self.books.get(user_id)
        if found is None:
            found = self.books[user_id] = [0, 0, 0, 0, 0]
        return found

    def take(
        self,
        event: PlatformEvent,
        policy: Policy,
        *,
        decided_at: int,
        risk: float = 0.0,
        codes: Sequence[str] = (),
    ) -> tuple[Decision | None, int]:
        """A platform event in the user's book: the decision on a points request (None for
        the other kinds; `risk` and `codes`: its rules' risk and the codes that fired), and
        how much the event moved the user's points (what it adds to the platform's
        liability: a grant adds, the allowed part of a redemption or transfer and an expiry
        take away, anything else moves none)."""
        kind, user = event.kind, event.user_id or ""
        if kind == POINTS_GRANT:
            self.earn(user, event.amount_cents)
            return None, event.amount_cents
        if kind == POINTS_EXPIRE:
            return None, -self.expire(user, event.amount_cents)
        if kind not in POINTS_REQUESTS:
            return None, 0
        decision = self.request(event, policy, risk=risk, codes=codes, decided_at=decided_at)
        return decision, -decision.rebate_granted_cents

    def earn(self, user_id: str, cents: int) -> None:
        """A rebate granted or released (cents > 0), clawed back (< 0), or points granted."""
        self.book(user_id)[EARNED] += cents

    def expire(self, user_id: str, cents: int) -> int:
        """Points lapsed: at most the balance leaves the book (held points are set aside);
        returns how much did."""
        book = self.book(user_id)
        gone = max(0, min(cents, balance(book)))
        book[EXPIRED] += gone
        return gone

    def request(
        self,
        event: PlatformEvent,
        policy: Policy,
        *,
        risk: float,
        codes: Sequence[str],
        decided_at: int,
    ) -> Decision:
        """A redeem, transfer or withdraw request, decided: the policy's blocks first (never
        withdrawable, past the balance, past the redeemable share), then the trust weight
        1 - `risk` by the policy's fixed thresholds, as a payment's rebate (allow: all
        asked; scale: asked x w, rounded down; hold: set aside until resolved; block:
        none). What is allowed leaves the book now.

        A redemption past what the book lets leave is cut to it rather than refused: a
        voucher at a checkout covers the bill as far as the user's redeemable points go
        (`_redemption_cut`), so an ask a few cents past them (a rebate held or clawed back
        since the app showed the figure) loses those cents, not the whole voucher."""
        weight = trust_weight(risk)
        asked = event.amount_cents
        book = self.book(event.user_id or "")
        blocked = self._policy_block(event, book, policy.points)
        cut = None if blocked is None else _redemption_cut(event, book, policy.points)
        if cut is not None and blocked is not None:
            action, allowed, reasons = policy.thresholds.decide(weight, cut)
            if action in (ALLOW, SCALE):  # the rules let the redeemable part through
                action, reasons = SCALE, [blocked, *reasons]
            else:  # never held: a held ask past the share could not be released whole
                action, allowed, reasons = BLOCK, 0, [blocked]
        elif blocked is not None:
            action, allowed, reasons = BLOCK, 0, [blocked]
        else:
            action, allowed, reasons = policy.thresholds.decide(weight, asked)
        decision = build(
            Decision,
            tx_id=event.event_id,
            ts=event.ts,
            user_id=event.user_id or "",
            merchant_id=event.merchant_id or "",
            risk=round(risk, 6),
            trust_weight=weight,
            action=action,
            rebate_requested_cents=asked,
            rebate_granted_cents=allowed,
            reasons=[*reasons, *codes],
            model_version=POINTS_MODEL,
            decided_at=decided_at,
            policy_version=policy.version,
            commission_tiers=0,
            threshold_version=POINTS_THRESHOLDS,
        )
        book[REDEEMED if event.kind == POINTS_REDEEM else TRANSFERRED] += allowed
        if action == HOLD and asked > 0:
            book[HELD] += asked
            self.holds.record(decision, policy.ledger)
            self.held[event.event_id] = (event.kind, event.merchant_id, event.region)
        return decision

    @staticmethod
    def _policy_block(event: PlatformEvent, book: list[int], terms: PointsTerms) -> str | None:
        """The policy's reason to block the request whatever its weight; None: none."""
        if event.kind == POINTS_WITHDRAW:
            return NOT_WITHDRAWABLE
        asked = event.amount_cents
        if asked > balance(book):
            return OVER_BALANCE
        if asked > redeemable(book, terms):
            return OVER_REDEEMABLE_SHARE
        return None

    # --- held requests --------------------------------------------------------------------
    def due(self, now: int, terms: LedgerTerms, *, decided_at: int) -> list[RebateAdjustment]:
        """Event time has reached `now`: held requests past the hold timeout are resolved
        (`settle` moves their points)."""
        if not self.held:
            return []
        return self.holds.due(now, terms, decided_at=decided_at)

    def label(self, label: Label, terms: LedgerTerms, *, decided_at: int) -> list[RebateAdjustment]:
        """A label on a held request (tx_id = its event_id) or on its user resolves it."""
        if not self.held:
            return []
        return self.holds.label(label, terms, decided_at=decided_at)

    def settle(self, adjustments: list[RebateAdjustment]) -> list[Movement]:
        """The held requests the adjustments resolved leave the holds: a released one's
        points leave the book (redeemed or transferred out), a voided one's return to the
        balance. Returns what the releases move in the platform's books (as an allowed
        request's movement, at the resolution's time, keyed by the adjustment)."""
        self.holds.take_movements()  # a rebate's release adds liability; a request's is below
        moved = []
        for adjustment in adjustments:
            kind, merchant, region = self.held.pop(adjustment.tx_id)
            self._forget(adjustment.tx_id)
            book, cents = self.book(adjustment.user_id), adjustment.cents
            book[HELD] -= cents
            if adjustment.kind != RELEASE:
                continue
            redeem = kind == POINTS_REDEEM
            book[REDEEMED if redeem else TRANSFERRED] += cents
            moved.append(
                Movement(
                    adjustment.adjustment_id,
                    adjustment.ts,
                    None if kind == POINTS_TRANSFER else merchant,
                    region,
                    liability_cents=-cents,
                    payouts_cents=cents if redeem else 0,
                )
            )
        return moved

    def _forget(self, event_id: str) -> None:
        """A resolved request leaves the holds' ledger at once: nothing granted at decision
        is left to claw back (a payment's granted rebate stays for its clawback window; a
        released request's points have left the book for good)."""
        entry = self.holds.entries.pop(event_id)
        mine = self.holds.by_user[entry.user_id]
        mine.remove(event_id)
        if not mine:
            del self.holds.by_user[entry.user_id]
