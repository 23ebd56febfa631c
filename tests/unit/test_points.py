"""The points books and policy (rebate_guard/core/points.py, docs/economics.md "Points
policy"), and what the decider moves in the platform's books (`take_movements`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rebate_guard.contract.records import PlatformEvent, SolvencyReading
from rebate_guard.contract.validation import parse_label, parse_platform_event, parse_transaction
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.points import PointsBooks, balance, redeemable
from rebate_guard.core.policy import Lists, PointsTerms, Policy, Thresholds
from rebate_guard.core.solvency import Movement, SolvencyMonitor
from tests.factories import DAY, HOUR, T0, fixed_policy, label, tx


def event(kind: str, amount: int, event_id: str = "e-1", **fields: Any) -> PlatformEvent:
    values: dict[str, Any] = {
        "event_id": event_id,
        "ts": T0,
        "kind": kind,
        "amount_cents": amount,
        "user_id": "u1",
        **fields,
    }
    if kind == "points_transfer":
        values.setdefault("counterparty_id", "u2")
    return parse_platform_event(values)


def decider(share: float = 0.4) -> Decider:
    return Decider(policy=replace(fixed_policy(), points=PointsTerms(redeemable_share=share)))


def test_withdrawing_points_is_always_blocked() -> None:
    d = decider(share=1.0)
    d.platform_event(event("points_grant", 10_000, "g"), decided_at=0)
    decision = d.platform_event(event("points_withdraw", 1, "w"), decided_at=5)
    assert decision is not None
    assert (decision.action, decision.reasons) == ("block", ["policy:points_not_withdrawable"])
    assert (decision.rebate_requested_cents, decision.rebate_granted_cents) == (1, 0)
    assert balance(d.points.book("u1")) == 10_000
    # Nothing moved: only the grant's movement.
    assert [m.movement_id for m in d.take_movements()] == ["g"]


def test_redeeming_within_the_share_over_it_and_over_the_balance() -> None:
    earned, share = 1_000, 0.4
    d = decider(share)
    assert d.platform_event(event("points_grant", earned, "g"), decided_at=0) is None
    allowed_now = int(earned * share)  # floor(0.4 x 1000) - nothing redeemed yet
    over = d.platform_event(event("points_redeem", allowed_now + 1, "r1"), decided_at=0)
    assert over is not None and over.reasons == ["policy:over_redeemable_share"]
    too_much = d.platform_event(event("points_redeem", earned + 1, "r2"), decided_at=0)
    assert too_much is not None and too_much.reasons == ["policy:over_balance"]
    ok = d.platform_event(
        event("points_redeem", allowed_now, "r3", merchant_id="m7", region="east"), decided_at=9
    )
    assert ok is not None
    assert ok.tx_id == "r3" and ok.merchant_id == "m7" and ok.user_id == "u1"
    # No feature known, no rule fires: the rules' base rate, allowed in full.
    assert (ok.action, ok.reasons, ok.risk, ok.trust_weight) == ("allow", [], 0.029312, 0.970688)
    assert (ok.rebate_requested_cents, ok.rebate_granted_cents) == (allowed_now, allowed_now)
    assert (ok.model_version, ok.threshold_version, ok.decided_at) == ("points-rules", "points", 9)
    assert ok.policy_version == d.policy.version
    # The policy blocks whatever the weight (a weight that would allow).
    assert (over.risk, over.trust_weight, over.action) == (0.029312, 0.970688, "block")
    assert over.merchant_id == ""  # the request named no merchant
    assert redeemable(d.points.book("u1"), d.policy.points) == 0
    moved = d.take_movements()
    # The grant adds to the liability; the allowed redemption pays out at m7 (east).
    assert moved == [
        Movement("g", T0, None, None, liability_cents=earned),
        Movement("r3", T0, "m7", "east", liability_cents=-allowed_now, payouts_cents=allowed_now),
    ]


def test_expiry_clamps_at_the_balance() -> None:
    d = decider()
    d.platform_event(event("points_grant", 700, "g"), decided_at=0)
    assert d.platform_event(event("points_expire", 1_500, "x"), decided_at=0) is None
    assert balance(d.points.book("u1")) == 0
    assert d.take_movements()[-1] == Movement("x", T0, None, None, liability_cents=-700)
    d.platform_event(event("points_expire", 10, "x2"), decided_at=0)
    assert d.take_movements() == []  # nothing left to expire: nothing moves


def test_a_transfer_reduces_the_giver() -> None:
    earned = 1_000
    d = decider(share=0.5)
    d.platform_event(event("points_grant", earned, "g"), decided_at=0)
    given = d.platform_event(event("points_transfer", 300, "t", merchant_id="m1"), decided_at=0)
    assert given is not None and given.action == "allow"
    book = d.points.book("u1")
    assert balance(book) == earned - 300
    assert redeemable(book, d.policy.points) == earned // 2 - 300
    # Its receiving side is the platform's points_grant to the receiver, not a merchant's.
    assert d.take_movements()[-1] == Movement("t", T0, None, None, liability_cents=-300)
    again = d.platform_event(event("points_transfer", 201, "t2"), decided_at=0)
    assert again is not None and again.reasons == ["policy:over_redeemable_share"]


def test_redeemable_never_past_the_balance() -> None:
    terms = PointsTerms(redeemable_share=1.0)
    books = PointsBooks()
    books.earn("u", 100)
    books.earn("u", -100)  # clawed back
    assert redeemable(books.book("u"), terms) == 0
    assert books.expire("u", 50) == 0


def _always(action: str) -> Policy:
    """Every payment gets `action` (allow: allow list; hold: thresholds no weight reaches)."""
    if action == "allow":
        return replace(fixed_policy(), lists=Lists(allow_users=frozenset({"u1"})))
    return replace(fixed_policy(), thresholds=Thresholds(allow_at=1.0, scale_at=1.0, hold_at=0.0))


def test_decider_movements_of_grants_and_clawbacks() -> None:
    scorer = Scorer(decider=Decider(policy=_always("allow")))
    paid = scorer.apply(parse_transaction(tx("p1", T0, merchant_id="m9")), 1)
    assert paid is not None and paid.action == "allow"
    granted = paid.rebate_granted_cents
    assert scorer.decider.take_movements() == []  # the scorer took them (no monitor: dropped)
    d = scorer.decider
    assert balance(d.points.book("u1")) == granted
    # A fraud label claws the grant back: the liability goes with it, from the same merchant.
    d.label(parse_label(label("p1", T0 + DAY)), decided_at=2)
    assert d.take_movements() == [
        Movement("p1:clawback", T0 + DAY, "m9", None, liability_cents=-granted)
    ]
    assert balance(d.points.book("u1")) == 0


def test_decider_movements_of_a_hold_and_its_release() -> None:
    monitor = SolvencyMonitor()
    scorer = Scorer(decider=Decider(policy=_always("hold")), solvency=monitor)
    held = scorer.apply(parse_transaction(tx("h1", T0, merchant_id="m3")), 1)
    assert held is not None and held.action == "hold"
    assert monitor.current() == {}  # held is not liability: nothing moved
    scorer.apply(parse_label(label("h1", T0 + HOUR, label="legit")), 2)
    requested = held.rebate_requested_cents
    now = monitor.current()
    assert now["merchant:m3"].liability_cents == requested
    assert now["platform"].period_start == T0 + HOUR
    assert balance(scorer.decider.points.book("u1")) == requested
    # The user may redeem the share of it (under thresholds a weight can reach: the
    # request's weight goes through them as a payment's does).
    scorer.decider.policy = fixed_policy()
    redeem = event("points_redeem", requested * 2 // 5, "r", merchant_id="m3")
    redeem = replace(redeem, ts=T0 + 2 * HOUR)
    decision = scorer.apply(redeem, 3)
    assert decision is not None and decision.action == "allow"
    closed = [r for r in scorer.solvency_outputs if isinstance(r, SolvencyReading)]
    assert [(r.scope, r.period_start) for r in closed] == [
        ("platform", T0 + HOUR),
        ("region:unknown", T0 + HOUR),
        ("merchant:m3", T0 + HOUR),
    ]
    # The redemption is in the next period's books.
    assert monitor.current()["merchant:m3"].payouts_cents == decision.rebate_granted_cents
