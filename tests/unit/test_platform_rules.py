"""The platform rules (detectors/rules.py, docs/detectors.md "The rules"): each fires on its
abuse of the commission, coupon and points flows, not on the look-alike just under its line,
and its code reaches the decision's reasons through the scorer."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from detectors.rules import DEFAULT_RULES, RULES_BEFORE_PLATFORM, RuleScore
from rebate_guard.contract.records import Decision, PlatformEvent
from rebate_guard.contract.validation import parse_platform_event, parse_transaction
from rebate_guard.core.decider import Scorer
from tests.factories import HOUR, T0, tx

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


def test_a_checkpoint_with_the_old_default_rules_takes_the_platform_rules() -> None:
    old = RuleScore(rules=DEFAULT_RULES[:RULES_BEFORE_PLATFORM])
    assert pickle.loads(pickle.dumps(old)).rules == DEFAULT_RULES
    own = RuleScore(rules=DEFAULT_RULES[:2])
    assert pickle.loads(pickle.dumps(own)).rules == DEFAULT_RULES[:2]
