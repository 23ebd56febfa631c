"""The platform rules (detectors/rules.py, docs/detectors.md "The rules"): each fires on its
abuse of the commission, coupon and points flows, not on the look-alike just under its line,
and its code reaches the decision's reasons through the scorer."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from detectors.rules import (
    DEFAULT_RULES,
    REQUEST_RULES,
    REQUEST_RULES_BEFORE_REQUESTER,
    RULES_BEFORE_BINDING_RING,
    RULES_BEFORE_CYCLE,
    RULES_BEFORE_PLATFORM,
    RULES_BEFORE_TILL,
    RuleScore,
    request_rule_score,
)
from features.engine import REQUEST_FEATURE_NAMES, FeatureEngine
from graph.evidence import ring_features
from rebate_guard.contract.records import Decision, PlatformEvent
from rebate_guard.contract.validation import parse_platform_event, parse_signup, parse_transaction
from rebate_guard.core.decider import Scorer
from tests.factories import DAY, HOUR, T0, signup, tx

MINUTE = 60_000


def event(event_id: str, ts: int, kind: str, **fields: Any) -> PlatformEvent:
    return parse_platform_event({"event_id": event_id, "ts": ts, "kind": kind, **fields})


def decide(scorer: Scorer, events: list[PlatformEvent], **payment: Any) -> Decision:
    for e in events:
        scorer.apply(e, decided_at=e.ts)
    decision = scorer.apply(parse_transaction(tx(**payment)), decided_at=T0)
    assert decision is not None
    return decision


def bindings(n: int, *, merchant: str = "m-shop") -> list[PlatformEvent]:
    return [
        event(
            f"b{i}", T0 - HOUR + i, "binding", user_id=f"u{i}", merchant_id=merchant, device_id="d1"
        )
        for i in range(n)
    ]


def coupons(n: int) -> list[PlatformEvent]:
    claim = {"merchant_id": "m-shop", "amount_cents": 500, "device_id": "d1"}
    return [
        event(f"c{i}", T0 - HOUR + i, "coupon_issue", user_id=f"u{i}", coupon_id=f"k{i}", **claim)
        for i in range(n)
    ]


def transfers(n: int) -> list[PlatformEvent]:
    return [
        event(
            f"g{i}",
            T0 - HOUR + i,
            "points_grant",
            user_id="u0",
            counterparty_id=f"v{i}",
            amount_cents=300,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("code", "abuse", "look_alike"),
    [
        ("binding_farm_device", bindings(5), bindings(4)),
        ("coupon_farm_device", coupons(5), coupons(4)),
        ("points_collector", transfers(6), transfers(5)),
    ],
)
def test_a_platform_rule_fires_past_its_look_alike_and_reaches_the_reasons(
    code: str, abuse: list[PlatformEvent], look_alike: list[PlatformEvent]
) -> None:
    found = decide(Scorer(), abuse, user_id="u0", device_id="d1")
    assert code in found.reasons
    assert code not in decide(Scorer(), look_alike, user_id="u0", device_id="d1").reasons
    assert found.risk > decide(Scorer(), [], user_id="u0", device_id="d1").risk


def test_a_binding_right_before_a_big_payment_elsewhere_is_named() -> None:
    bound = [event("b1", T0 - 20 * MINUTE, "binding", user_id="u1", merchant_id="m-binder")]
    big = decide(Scorer(), bound, merchant_id="m-far", amount_cents=80_000)
    assert "binding_before_big_payment" in big.reasons
    # The same payment at the binder itself, or a small one elsewhere, is ordinary.
    home = decide(Scorer(), bound, merchant_id="m-binder", amount_cents=80_000)
    small = decide(Scorer(), bound, merchant_id="m-far", amount_cents=3_000)
    assert "binding_before_big_payment" not in home.reasons + small.reasons


def test_a_customer_bound_again_hours_before_a_big_payment_elsewhere_is_named() -> None:
    first = event("b1", T0 - 5 * DAY, "binding", user_id="u1", merchant_id="m-binder")
    again = event("b2", T0 - 5 * HOUR, "binding", user_id="u1", merchant_id="m-binder")
    rebound = decide(Scorer(), [first, again], merchant_id="m-far", amount_cents=80_000)
    assert "binding_before_big_payment" in rebound.reasons
    # Bound once, five hours before (a shop's customer shopping on later): not named.
    once = decide(Scorer(), [again], merchant_id="m-far", amount_cents=80_000)
    assert "binding_before_big_payment" not in once.reasons


def test_a_checkpoint_with_the_rules_of_before_the_till_exemption_takes_todays() -> None:
    before_till = RuleScore(rules=RULES_BEFORE_TILL)
    restored = pickle.loads(pickle.dumps(before_till))
    assert restored.rules == DEFAULT_RULES
    young_at_till = {"user_account_age_s": 300.0, "signed_up_at_till": 1.0}
    assert "young_account" in before_till.explain_one(young_at_till)
    assert "young_account" not in restored.explain_one(young_at_till)
    assert "young_account" in restored.explain_one({**young_at_till, "signed_up_at_till": 0.0})


def test_a_checkpoint_with_the_old_default_rules_takes_the_platform_rules() -> None:
    old = RuleScore(rules=DEFAULT_RULES[:RULES_BEFORE_PLATFORM])
    assert pickle.loads(pickle.dumps(old)).rules == DEFAULT_RULES
    before_cycle = RuleScore(rules=DEFAULT_RULES[:RULES_BEFORE_CYCLE])
    assert pickle.loads(pickle.dumps(before_cycle)).rules == DEFAULT_RULES
    before_binding_ring = RuleScore(rules=DEFAULT_RULES[:RULES_BEFORE_BINDING_RING])
    assert pickle.loads(pickle.dumps(before_binding_ring)).rules == DEFAULT_RULES
    own = RuleScore(rules=DEFAULT_RULES[:2])
    assert pickle.loads(pickle.dumps(own)).rules == DEFAULT_RULES[:2]


def test_the_request_rules_read_the_request_vector() -> None:
    """A points request's vector (features.engine.request_vector): the user's platform
    features, the account's age and whether the points leave for someone else; the request
    rules read it, and the payment rules that need a payment's features cannot fire on it."""
    engine = FeatureEngine()
    engine.signup(parse_signup(signup("u0", T0 - 2 * HOUR)))
    for e in transfers(6):
        engine.platform_event(e)
    give = event("t", T0, "points_transfer", user_id="u0", counterparty_id="x", amount_cents=9)
    x = engine.request_features(give)
    assert list(x) == list(REQUEST_FEATURE_NAMES)
    assert (x["points_givers_30d"], x["user_account_age_s"], x["is_points_transfer"]) == (
        6,
        2 * 3600.0,
        1.0,
    )
    assert request_rule_score().assess(x)[1] == [
        "points_collector",
        "young_account",
        "points_transfer",
    ]
    redeem = event("r", T0, "points_redeem", user_id="u0", amount_cents=9)
    assert engine.request_features(redeem)["is_points_transfer"] == 0.0
    # Read before the request is learned, and reading changes nothing.
    assert engine.request_features(give) == x
    # A rule set's codes are rules of the payments' own, where they mean the same.
    shared = {r.code for r in REQUEST_RULES} & {r.code for r in DEFAULT_RULES}
    assert shared == {"points_collector", "young_account"}
    assert all(r in DEFAULT_RULES for r in REQUEST_RULES if r.code in shared)


def test_a_commission_cycle_members_payments_fire_the_cycle_rule() -> None:
    """Scored with a commission cycle's ring (the graph's indicator of its kind), every
    payment of a member fires `commission_cycle_ring`; another kind's ring does not."""
    rules = RuleScore()
    cycle = ring_features((0.9, ["ring:commission_cycle"]))
    other = ring_features((0.9, ["ring:binding_ring"]))
    assert "commission_cycle_ring" in rules.explain_one(cycle)
    assert "commission_cycle_ring" not in rules.explain_one(other)
    assert rules.score_one(cycle) > rules.score_one(other)


def test_a_cycle_members_payment_alone_is_stated_more_likely_fraud_than_not() -> None:
    """What the cycle rule says before any label (`rule_say` starts from the stated score):
    a member's payment on which nothing else fires is more likely fraud than not. Its members
    are established accounts that no other rule fires on, and at even odds or under their
    payments were granted until labels came (docs/detectors.md, "Commission cycles")."""
    rules = RuleScore()
    cycle = ring_features((0.9, ["ring:commission_cycle"]))
    assert rules.explain_one(cycle) == ["commission_cycle_ring"]
    assert rules.score_one(cycle) > 0.6


@pytest.mark.parametrize(
    ("ring", "transfer", "codes"),
    [
        (None, 0.0, []),
        ((0.71, ["ring:referral_farm"]), 0.0, ["requester_in_ring"]),
        ((1.0, ["ring:brushing"]), 0.0, ["requester_in_ring"]),
        ((0.7, ["ring:signup_batch"]), 0.0, []),  # made together: intent, not abuse yet
        ((0.9, ["ring:collusion"]), 1.0, ["requester_in_ring", "points_transfer"]),
    ],
)
def test_the_request_rules_read_the_requesters_ring(
    ring: tuple[float, list[str]] | None, transfer: float, codes: list[str]
) -> None:
    """A request is weighed with its requester's ring (any kind but a signup batch): a ring
    alone holds a plain redemption (w in [0.5, 0.8)); passing the points on as well blocks
    it (w < 0.5)."""
    x = {**ring_features(ring), "is_points_transfer": transfer}
    risk, fired = request_rule_score().assess(x)
    assert fired == codes
    weight = 1.0 - risk
    if codes == ["requester_in_ring"]:
        assert 0.5 <= weight < 0.8
    elif len(codes) == 2:
        assert weight < 0.5
    else:
        assert weight >= 0.85


def test_a_checkpoint_with_the_request_rules_of_before_the_requester_takes_todays() -> None:
    old = RuleScore(rules=REQUEST_RULES_BEFORE_REQUESTER, name="request_rules")
    restored = pickle.loads(pickle.dumps(old))
    assert restored.rules == REQUEST_RULES
    member = ring_features((0.9, ["ring:brushing"]))
    assert old.explain_one(member) == [] and restored.explain_one(member) == ["requester_in_ring"]
