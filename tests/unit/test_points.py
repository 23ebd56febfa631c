"""The points books and policy (rebate_guard/core/points.py, docs/economics.md "Points
policy"), and what the decider moves in the platform's books (`take_movements`)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

from detectors.rules import REQUEST_RULES, REQUEST_RULES_BEFORE_REQUESTER, RuleScore
from graph.layer import GraphLayer, Ring
from rebate_guard.contract.records import Decision, PlatformEvent, SolvencyReading
from rebate_guard.contract.validation import (
    parse_label,
    parse_platform_event,
    parse_signup,
    parse_transaction,
)
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.ledger import reconcile
from rebate_guard.core.points import HELD, REDEEMED, TRANSFERRED, PointsBooks, balance, redeemable
from rebate_guard.core.policy import Lists, PointsTerms, Policy, Thresholds
from rebate_guard.core.solvency import Movement, SolvencyMonitor
from tests.factories import DAY, HOUR, MINUTE, T0, fixed_policy, label, signup, tx


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


def test_redeeming_within_the_share() -> None:
    earned, share = 1_000, 0.4
    d = decider(share)
    assert d.platform_event(event("points_grant", earned, "g"), decided_at=0) is None
    allowed_now = int(earned * share)  # floor(0.4 x 1000) - nothing redeemed yet
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
    assert redeemable(d.points.book("u1"), d.policy.points) == 0
    # Nothing redeemable left: a redemption past the share or the balance is refused whole,
    # whatever the weight (a weight that would allow).
    over = d.platform_event(event("points_redeem", 1, "r1"), decided_at=0)
    assert over is not None and over.reasons == ["policy:over_redeemable_share"]
    assert (over.risk, over.trust_weight, over.action) == (0.029312, 0.970688, "block")
    assert over.merchant_id == ""  # the request named no merchant
    too_much = d.platform_event(event("points_redeem", earned, "r2"), decided_at=0)
    assert too_much is not None and too_much.reasons == ["policy:over_balance"]
    assert too_much.rebate_granted_cents == 0
    moved = d.take_movements()
    # The grant adds to the liability; the allowed redemption pays out at m7 (east).
    assert moved == [
        Movement("g", T0, None, None, liability_cents=earned),
        Movement("r3", T0, "m7", "east", liability_cents=-allowed_now, payouts_cents=allowed_now),
    ]


def test_a_redemption_past_the_share_takes_the_redeemable_part_a_transfer_none() -> None:
    """A voucher covers the bill as far as the redeemable points go: an ask a little past
    them (the app's figure counted a rebate the book holds back) loses only what is past."""
    d = decider(share=0.4)
    d.platform_event(event("points_grant", 990, "g"), decided_at=0)  # 396 redeemable
    asked = d.platform_event(event("points_redeem", 400, "r", merchant_id="m1"), decided_at=0)
    assert asked is not None
    assert (asked.action, asked.reasons) == ("scale", ["policy:over_redeemable_share"])
    assert (asked.rebate_requested_cents, asked.rebate_granted_cents) == (400, 396)
    assert d.points.book("u1")[REDEEMED] == 396
    assert d.take_movements()[-1] == Movement(
        "r", T0, "m1", None, liability_cents=-396, payouts_cents=396
    )
    # A transfer names what it gives another user: past the share, refused whole.
    d2 = decider(share=0.4)
    d2.platform_event(event("points_grant", 1_000, "g"), decided_at=0)
    gift = d2.platform_event(event("points_transfer", 401, "t"), decided_at=0)
    assert gift is not None and (gift.action, gift.rebate_granted_cents) == ("block", 0)
    assert gift.reasons == ["policy:over_redeemable_share"]


def test_a_redemption_past_the_share_that_the_rules_would_hold_is_blocked() -> None:
    scorer = request_scorer()
    gifts(scorer, "collector", givers=6)  # 6_000 received: 2_400 redeemable
    over = scorer.apply(at("points_redeem", 5_000, "r", T0 + HOUR, "collector"), 1)
    assert over is not None and (over.action, over.rebate_granted_cents) == ("block", 0)
    book = scorer.decider.points.book("collector")
    assert (book[REDEEMED], book[HELD]) == (0, 0)  # nothing set aside: refused whole


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


# --- points requests through the weight path ---------------------------------------------


def request_scorer(policy: Policy | None = None) -> Scorer:
    """Features and decider in one process (as replay): a request is weighed on its user's
    features. The collector's account is two months old, the newcomer's an hour."""
    scorer = Scorer(decider=Decider(policy=policy or fixed_policy()))
    for user, age in (("collector", 60 * DAY), ("relative", 400 * DAY), ("newcomer", HOUR)):
        scorer.apply(parse_signup(signup(user, T0 - age)), 0)
    return scorer


def at(kind: str, amount: int, event_id: str, ts: int, user: str, **fields: Any) -> PlatformEvent:
    return replace(event(kind, amount, event_id, user_id=user, **fields), ts=ts)


def gifts(scorer: Scorer, receiver: str, givers: int, points: int = 1_000) -> None:
    """`givers` users each give `receiver` points: the platform's grant of each transfer."""
    for i in range(givers):
        grant = at("points_grant", points, f"g{i}", T0 + i * MINUTE, receiver)
        scorer.apply(replace(grant, counterparty_id=f"giver{i}"), 0)


def test_a_collectors_redemption_and_transfer_are_held_with_the_rule() -> None:
    scorer = request_scorer()
    gifts(scorer, "collector", givers=6)  # more givers in a month than a few relatives
    redeem = scorer.apply(at("points_redeem", 500, "r", T0 + HOUR, "collector"), 1)
    assert redeem is not None
    # -3.5 + 2.5: w = 1 - logistic(-1.0) = 0.731, in the hold band [0.5, 0.8).
    assert (redeem.action, redeem.reasons, redeem.trust_weight) == (
        "hold",
        ["points_collector"],
        0.731059,
    )
    assert (redeem.rebate_requested_cents, redeem.rebate_granted_cents) == (500, 0)
    passed_on = scorer.apply(
        at("points_transfer", 400, "t", T0 + 2 * HOUR, "collector", counterparty_id="buyer"), 2
    )
    assert passed_on is not None
    # Points moved on to someone else: -3.5 + 2.5 + 1.0, w = 0.5: held at the line.
    assert (passed_on.action, passed_on.reasons) == (
        "hold",
        ["points_collector", "points_transfer"],
    )
    # Nothing left the book: the held points are set aside, out of the balance.
    book = scorer.decider.points.book("collector")
    assert (book[REDEEMED], book[TRANSFERRED], book[HELD]) == (0, 0, 900)
    assert balance(book) == 6_000 - 900


def test_five_givers_are_relatives_not_a_collector() -> None:
    scorer = request_scorer()
    gifts(scorer, "collector", givers=5)
    redeem = scorer.apply(at("points_redeem", 500, "r", T0 + HOUR, "collector"), 1)
    assert redeem is not None
    assert (redeem.action, redeem.reasons, redeem.rebate_granted_cents) == ("allow", [], 500)


def test_a_relatives_small_gift_is_allowed() -> None:
    scorer = request_scorer()
    scorer.apply(at("points_grant", 2_000, "earned", T0, "relative"), 0)
    gift = scorer.apply(
        at("points_transfer", 300, "t", T0 + HOUR, "relative", counterparty_id="niece"), 1
    )
    assert gift is not None
    # A transfer alone: -3.5 + 1.0, w = 0.924, past allow_at.
    assert (gift.action, gift.reasons, gift.trust_weight) == (
        "allow",
        ["points_transfer"],
        0.924142,
    )
    assert gift.rebate_granted_cents == 300
    assert scorer.decider.points.book("relative")[TRANSFERRED] == 300


def test_a_day_old_account_passing_its_points_on_is_held_and_a_young_collector_blocked() -> None:
    scorer = request_scorer()
    scorer.apply(at("points_grant", 800, "bonus", T0, "newcomer"), 0)
    redeem = scorer.apply(at("points_redeem", 100, "r", T0 + MINUTE, "newcomer"), 1)
    assert redeem is not None and (redeem.action, redeem.reasons) == ("allow", ["young_account"])
    passed_on = scorer.apply(
        at("points_transfer", 200, "t", T0 + 2 * MINUTE, "newcomer", counterparty_id="c"), 2
    )
    assert passed_on is not None
    assert (passed_on.action, passed_on.reasons) == ("hold", ["young_account", "points_transfer"])
    gifts(scorer, "newcomer", givers=6)
    collected = scorer.apply(
        at("points_transfer", 300, "t2", T0 + HOUR, "newcomer", counterparty_id="c"), 3
    )
    assert collected is not None
    assert (collected.action, collected.rebate_granted_cents) == ("block", 0)
    assert collected.reasons == ["points_collector", "young_account", "points_transfer"]


def test_the_policys_blocks_come_first_with_the_rules_after() -> None:
    scorer = request_scorer()
    gifts(scorer, "collector", givers=6)
    out = scorer.apply(at("points_withdraw", 100, "w", T0 + HOUR, "collector"), 1)
    assert out is not None and out.action == "block"
    assert out.reasons == ["policy:points_not_withdrawable", "points_collector"]
    over = scorer.apply(at("points_redeem", 5_000, "r", T0 + HOUR, "collector"), 1)
    assert over is not None and over.reasons == ["policy:over_redeemable_share", "points_collector"]


def test_a_weight_in_the_scale_band_moves_part_of_the_points() -> None:
    # Thresholds under which the collector's weight (0.731) scales.
    policy = replace(fixed_policy(), thresholds=Thresholds(allow_at=0.9, scale_at=0.7, hold_at=0.5))
    scorer = request_scorer(policy)
    gifts(scorer, "collector", givers=6)
    asked = at("points_redeem", 1_000, "r", T0 + HOUR, "collector", region="e")
    features = scorer.features.request_features(asked)
    assert features["points_givers_30d"] == 6
    redeem = scorer.decider.platform_event(asked, decided_at=1, features=features)
    assert redeem is not None
    assert (redeem.action, redeem.rebate_granted_cents) == ("scale", 731)  # floor(1000 x w)
    assert scorer.decider.points.book("collector")[REDEEMED] == 731
    assert scorer.decider.take_movements() == [
        Movement("r", T0 + HOUR, None, "e", liability_cents=-731, payouts_cents=731)
    ]


def held_redemption(policy: Policy | None = None) -> tuple[Scorer, Decision]:
    scorer = request_scorer(policy)
    gifts(scorer, "collector", givers=6)
    redeem = at("points_redeem", 500, "r", T0 + HOUR, "collector", merchant_id="m4", region="e")
    decision = scorer.apply(redeem, 1)
    assert decision is not None and decision.action == "hold"
    scorer.decider.take_movements()
    return scorer, decision


def test_a_held_request_is_released_at_the_hold_timeout() -> None:
    scorer, held = held_redemption()
    d = scorer.decider
    until = held.ts + d.policy.ledger.hold_timeout_ms
    d.advance(until - 1, decided_at=5)
    assert not d.take_adjustments() and d.points.book("collector")[HELD] == 500
    d.advance(until, decided_at=5)
    (released,) = d.take_adjustments()
    assert (released.adjustment_id, released.kind, released.cause) == (
        "r:hold",
        "release",
        "hold_timeout",
    )
    assert (released.cents, released.granted_cents, released.held_cents) == (500, 500, 0)
    book = d.points.book("collector")
    assert (book[REDEEMED], book[HELD]) == (500, 0)
    # It pays out now, where it was to be spent, as an allowed redemption would have.
    assert d.take_movements() == [
        Movement("r:hold", until, "m4", "e", liability_cents=-500, payouts_cents=500)
    ]
    assert reconcile([held], [released]) == {"r": (500, 500, 0, 0)}
    # Resolved once: a later fraud label on the user claws nothing back.
    d.label(parse_label(label(None, until + DAY, user_id="collector")), decided_at=6)
    assert not [a for a in d.take_adjustments() if a.tx_id == "r"]


def test_a_fraud_label_on_the_user_voids_a_held_request() -> None:
    scorer, _ = held_redemption()
    d = scorer.decider
    d.label(parse_label(label(None, T0 + 2 * HOUR, user_id="collector")), decided_at=5)
    voided = [a for a in d.take_adjustments() if a.tx_id == "r"]
    assert [(a.kind, a.cause, a.voided_cents) for a in voided] == [("void", "label:fraud", 500)]
    book = d.points.book("collector")
    assert (book[REDEEMED], book[HELD]) == (0, 0)  # the points stay with the user
    assert not [m for m in d.take_movements() if m.movement_id.startswith("r")]
    d.advance(T0 + 10 * DAY, decided_at=6)  # and the timeout finds nothing left to resolve
    assert not d.take_adjustments()


def test_held_requests_and_their_books_survive_a_checkpoint() -> None:
    scorer, held = held_redemption()
    restored = pickle.loads(pickle.dumps(scorer.decider))
    restored.advance(held.ts + restored.policy.ledger.hold_timeout_ms, decided_at=5)
    assert [a.adjustment_id for a in restored.take_adjustments()] == ["r:hold"]
    # A decider pickled before requests were weighed: four counts a book, no holds, no rules.
    old = Decider()
    old.points.earn("u", 1_000)
    state = old.__dict__ | {"points": PointsBooks(books={"u": [1_000, 10, 0, 0]})}
    del state["points_rules"]
    del state["points"].__dict__["holds"], state["points"].__dict__["held"]
    back = pickle.loads(pickle.dumps(state))
    upgraded = Decider.__new__(Decider)
    upgraded.__setstate__(back)
    assert upgraded.points.book("u") == [1_000, 10, 0, 0, 0]
    assert upgraded.points_rules.rules == REQUEST_RULES


# --- what is known of the requester -------------------------------------------------------


def in_ring(layer: GraphLayer, user: str, kind: str = "brushing", score: float = 0.9) -> None:
    """The graph's ring book holds a ring of `kind` with `user` in it (as a scan records it)."""
    members, at_ts = frozenset({user}), T0 - DAY
    ring = Ring(f"r-{user}", kind, members, frozenset({"m1"}), score, at_ts, at_ts, {}, 0)
    layer.book.rings[ring.ring_id] = ring
    layer.book.by_user.setdefault(user, set()).add(ring.ring_id)


def earned(scorer: Scorer, *users: str) -> None:
    for user in users:
        scorer.apply(at("points_grant", 5_000, f"earned-{user}", T0, user), 0)


def test_a_ring_members_voucher_is_held_and_a_shoppers_allowed() -> None:
    """A points request reads its requester's ring in the graph's book, as a payment reads its
    user's: a ring member's voucher is held (`requester_in_ring`; a legitimate label or the
    timeout releases it), a shopper's beside it allowed, and the member's transfer blocked."""
    layer = GraphLayer()
    scorer = Scorer(decider=Decider(policy=fixed_policy()), graph=layer)
    for user in ("member", "shopper"):
        scorer.apply(parse_signup(signup(user, T0 - 90 * DAY)), 0)
    earned(scorer, "member", "shopper")
    in_ring(layer, "member")
    voucher = scorer.apply(at("points_redeem", 1_000, "v1", T0 + HOUR, "member"), 1)
    assert voucher is not None
    assert (voucher.action, voucher.reasons) == ("hold", ["requester_in_ring"])
    assert voucher.trust_weight == 0.622459  # -3.5 + 3.0: 1 - logistic(-0.5), in the hold band
    assert scorer.decider.points.book("member")[HELD] == 1_000
    shoppers = scorer.apply(at("points_redeem", 1_000, "v2", T0 + HOUR, "shopper"), 1)
    assert shoppers is not None
    assert (shoppers.action, shoppers.reasons) == ("allow", [])
    assert shoppers.rebate_granted_cents == 1_000
    gift = scorer.apply(
        at("points_transfer", 500, "t1", T0 + 2 * HOUR, "member", counterparty_id="buyer"), 2
    )
    assert gift is not None
    assert (gift.action, gift.reasons) == ("block", ["requester_in_ring", "points_transfer"])
    # A signup batch (accounts made together: a shop's sign-up drive too) holds nothing.
    in_ring(layer, "shopper", kind="signup_batch", score=0.7)
    batched = scorer.apply(at("points_redeem", 1_000, "v3", T0 + 3 * HOUR, "shopper"), 3)
    assert batched is not None and (batched.action, batched.reasons) == ("allow", [])
    # Without a graph layer nothing is known of rings: the same voucher is allowed.
    alone = Scorer(decider=Decider(policy=fixed_policy()))
    earned(alone, "member")
    allowed = alone.apply(at("points_redeem", 1_000, "v1", T0 + HOUR, "member"), 1)
    assert allowed is not None and allowed.action == "allow"


def test_a_checkpoint_with_the_request_rules_of_before_the_ring_takes_todays() -> None:
    """A decider pickled before requests read their requester's ring holds the three request
    rules of then: it loads with today's, and holds a ring member's voucher."""
    old = Decider(policy=fixed_policy())
    old.points_rules = RuleScore(rules=REQUEST_RULES_BEFORE_REQUESTER, name="request_rules")
    restored = pickle.loads(pickle.dumps(old))
    assert restored.points_rules.rules == REQUEST_RULES
    restored.points.earn("member", 5_000)
    asked = at("points_redeem", 300, "r1", T0 + DAY, "member")
    voucher = restored.platform_event(asked, decided_at=1, ring=(0.9, ["ring:brushing"]))
    assert voucher is not None and voucher.reasons == ["requester_in_ring"]
