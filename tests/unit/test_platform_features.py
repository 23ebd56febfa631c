"""The platform-event features (`features.platform`, docs/features.md): what each abuse of
the commission, coupon and points flows shows, on its window's edges, through the two stages
and through a checkpoint from before they existed."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from features import platform
from features.engine import FeatureEngine
from features.stages import PLATFORM_FAMILIES, EntityStage, UserStage, platform_routes
from rebate_guard.contract.records import PlatformEvent
from rebate_guard.contract.validation import parse_platform_event, parse_signup, parse_transaction
from tests.factories import DAY, HOUR, T0, signup, tx

MINUTE = 60_000


def event(event_id: str, ts: int, kind: str, **fields: Any) -> PlatformEvent:
    return parse_platform_event({"event_id": event_id, "ts": ts, "kind": kind, **fields})


def features(engine: FeatureEngine, **overrides: Any) -> dict[str, float | None]:
    return engine.transaction(parse_transaction(tx(**overrides)))


def test_a_binding_right_before_a_big_payment_elsewhere_shows_its_amount() -> None:
    engine = FeatureEngine()
    engine.platform_event(event("b1", T0 - 10 * MINUTE, "binding", user_id="u1", merchant_id="mb"))
    big = features(engine, tx_id="t1", merchant_id="m-far", amount_cents=80_000)
    assert big["bound_elsewhere_s"] == 600
    assert big["binding_lead_amount_cents"] == 80_000
    # At the binder itself it is the ordinary case: a customer brought in, paying there.
    home = features(engine, tx_id="t2", merchant_id="mb", ts=T0 + 1)
    assert home["bound_elsewhere_s"] is None and home["binding_lead_amount_cents"] is None
    # An hour after the binding the lead is over (half-open window); the binding is still
    # recent for a day.
    later = features(engine, tx_id="t3", merchant_id="m-far", ts=T0 - 10 * MINUTE + HOUR)
    assert later["binding_lead_amount_cents"] is None
    assert later["bound_elsewhere_s"] == 3_600
    gone = features(engine, tx_id="t4", merchant_id="m-far", ts=T0 - 10 * MINUTE + DAY)
    assert gone["bound_elsewhere_s"] is None


def test_a_customer_bound_again_to_the_same_merchant_leads_its_payments_for_a_day() -> None:
    engine = FeatureEngine()

    def bind(i: int, ts: int, merchant: str) -> None:
        engine.platform_event(event(f"b{i}", ts, "binding", user_id="u1", merchant_id=merchant))

    bind(1, T0 - 3 * DAY, "mb")
    bind(2, T0 - 5 * HOUR, "mb")
    # Bound again by the merchant it was bound to: five hours on, the lead still holds.
    again = features(engine, tx_id="t1", merchant_id="m-far", amount_cents=80_000)
    assert again["binding_lead_amount_cents"] == 80_000
    # ... for as long as the binding is recent, as `bound_elsewhere_s` (a day, half-open).
    late = features(engine, tx_id="t2", merchant_id="m-far", ts=T0 - 5 * HOUR + DAY)
    assert late["binding_lead_amount_cents"] is None and late["bound_elsewhere_s"] is None
    # A first binding to another merchant is no re-binding: an hour's lead again.
    bind(3, T0 + DAY, "mc")
    first = features(engine, tx_id="t3", merchant_id="m-far", ts=T0 + DAY + 2 * HOUR)
    assert first["binding_lead_amount_cents"] is None and first["bound_elsewhere_s"] == 7_200
    # Nor is a binding to the same merchant more than 30 days after the one before.
    bind(4, T0 + 32 * DAY, "mc")
    stale = features(engine, tx_id="t4", merchant_id="m-far", ts=T0 + 32 * DAY + 2 * HOUR)
    assert stale["binding_lead_amount_cents"] is None


def test_a_binding_the_customer_then_pays_at_is_a_visit_and_leads_nothing() -> None:
    """A regular re-scanning its shop's QR code at the door, then paying at the counter and
    shopping big elsewhere later that day: a visit, not a hijack's lead; a new customer
    bound at a shop's counter likewise within the hour."""
    engine = FeatureEngine()

    def bind(i: int, ts: int, merchant: str) -> None:
        engine.platform_event(event(f"b{i}", ts, "binding", user_id="u1", merchant_id=merchant))

    bind(1, T0 - 3 * DAY, "mb")
    bind(2, T0 - 5 * HOUR, "mb")
    features(engine, tx_id="t1", merchant_id="mb", ts=T0 - 5 * HOUR + 5 * MINUTE)
    visited = features(engine, tx_id="t2", merchant_id="m-far", amount_cents=80_000)
    assert visited["binding_lead_amount_cents"] is None
    assert visited["bound_elsewhere_s"] == 5 * 3_600  # still bound elsewhere, recently
    # The next re-binding starts over: without a visit after it, the lead holds again.
    bind(3, T0 + HOUR, "mb")
    again = features(engine, tx_id="t3", merchant_id="m-far", ts=T0 + 3 * HOUR, amount_cents=80_000)
    assert again["binding_lead_amount_cents"] == 80_000
    # A first binding, then a payment at the binder: the hour's lead is over too.
    bind(4, T0 + 2 * DAY, "mc")
    features(engine, tx_id="t4", merchant_id="mc", ts=T0 + 2 * DAY + MINUTE)
    first = features(engine, tx_id="t5", merchant_id="m-far", ts=T0 + 2 * DAY + 20 * MINUTE)
    assert first["binding_lead_amount_cents"] is None


def test_a_user_checkpointed_before_re_bindings_were_told_apart_restores_as_not_re_bound() -> None:
    engine = FeatureEngine()
    engine.platform_event(event("b1", T0 - 10 * MINUTE, "binding", user_id="u1", merchant_id="mb"))
    [state] = engine.users.platform.state.values()
    old_state = {n: getattr(state, n) for n in type(state).__slots__ if n != "rebound"}
    restored = type(state).__new__(type(state))
    restored.__setstate__((None, old_state))
    assert restored.rebound is False and restored.binder == "mb"
    before_visits = {n: getattr(state, n) for n in type(state).__slots__ if n != "visit_cents"}
    restored = type(state).__new__(type(state))
    restored.__setstate__((None, before_visits))
    assert restored.visit_cents is None and restored.binder == "mb"


def test_a_token_paid_at_the_binder_is_no_visit_and_the_lead_holds() -> None:
    """An accomplice paying a cent at the binder between the binding and each big payment
    elsewhere: no purchase, so the lead holds; a purchase at the binder (an ordinary one
    for the user) ends it, the largest payment there since the binding counting."""
    engine = FeatureEngine()

    def bind(i: int, ts: int) -> None:
        engine.platform_event(event(f"b{i}", ts, "binding", user_id="u1", merchant_id="mb"))

    bind(1, T0 - HOUR)
    # A fresh account: the token is its first payment, weighed against the big one.
    features(engine, tx_id="t1", merchant_id="mb", ts=T0 - 30 * MINUTE, amount_cents=1)
    big = features(
        engine, tx_id="t2", merchant_id="m-far", ts=T0 - 20 * MINUTE, amount_cents=90_000
    )
    assert big["binding_lead_amount_cents"] == 90_000
    bind(2, T0 + HOUR)  # a re-binding: a day's lead
    features(engine, tx_id="t3", merchant_id="mb", ts=T0 + 2 * HOUR, amount_cents=1_000)
    again = features(engine, tx_id="t4", merchant_id="m-far", ts=T0 + 3 * HOUR, amount_cents=90_000)
    # 1,000 is under a thirtieth of its mean payment, (1 + 90,000 + 1,000 + 90,000) / 4.
    assert again["binding_lead_amount_cents"] == 90_000
    features(engine, tx_id="t5", merchant_id="mb", ts=T0 + 4 * HOUR, amount_cents=9_000)
    bought = features(
        engine, tx_id="t6", merchant_id="m-far", ts=T0 + 5 * HOUR, amount_cents=90_000
    )
    assert bought["binding_lead_amount_cents"] is None
    # A token after the purchase takes nothing back: the largest visit counts.
    features(engine, tx_id="t7", merchant_id="mb", ts=T0 + 6 * HOUR, amount_cents=1)
    still = features(engine, tx_id="t8", merchant_id="m-far", ts=T0 + 7 * HOUR, amount_cents=90_000)
    assert still["binding_lead_amount_cents"] is None
    # The next re-binding starts over, and a token after it is no visit again.
    bind(3, T0 + 8 * HOUR)
    features(engine, tx_id="t9", merchant_id="mb", ts=T0 + 9 * HOUR, amount_cents=5)
    token = features(
        engine, tx_id="t10", merchant_id="m-far", ts=T0 + 10 * HOUR, amount_cents=90_000
    )
    assert token["binding_lead_amount_cents"] == 90_000


def test_a_regular_with_a_cheap_shop_still_visits_before_a_big_payment_elsewhere() -> None:
    """A regular of a cheap cafe (4,000 a visit, 10,000 a payment elsewhere) re-scans its
    code, has a coffee and buys a television in the afternoon: its coffee is one of its
    ordinary purchases, whatever the television costs next to it."""
    engine = FeatureEngine()
    for i in range(10):
        features(engine, tx_id=f"e{i}", merchant_id="m-shop", ts=T0 - (20 - i) * DAY)
    engine.platform_event(event("b1", T0 - 3 * DAY, "binding", user_id="u1", merchant_id="mb"))
    engine.platform_event(event("b2", T0 - 5 * HOUR, "binding", user_id="u1", merchant_id="mb"))
    features(
        engine, tx_id="t1", merchant_id="mb", ts=T0 - 5 * HOUR + 5 * MINUTE, amount_cents=4_000
    )
    tv = features(engine, tx_id="t2", merchant_id="m-far", amount_cents=300_000)
    assert tv["binding_lead_amount_cents"] is None


def test_a_checkpoint_from_before_visits_were_weighed_restores_its_visits_as_purchases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pickle of a user's platform state as it was (`visited`, no amount): a visit it
    recorded counts as a purchase, as it did then; none recorded, none restored."""
    engine = FeatureEngine()
    engine.platform_event(event("b1", T0 - 10 * MINUTE, "binding", user_id="u1", merchant_id="mb"))
    [state] = engine.users.platform.state.values()
    fields = {n: getattr(state, n) for n in type(state).__slots__ if n != "visit_cents"}

    class UserPlatform:  # the layout before visits were weighed
        __slots__ = (*fields, "visited")

    UserPlatform.__module__ = platform.UserPlatform.__module__
    UserPlatform.__qualname__ = platform.UserPlatform.__qualname__
    pickles = []
    for visited in (True, False):
        old = UserPlatform()
        for name, value in {**fields, "visited": visited}.items():
            setattr(old, name, value)
        with monkeypatch.context() as patched:
            patched.setattr(platform, "UserPlatform", UserPlatform)
            pickles.append(pickle.dumps(old))
    visited, not_visited = (pickle.loads(p) for p in pickles)
    assert type(visited) is platform.UserPlatform and visited.binder == "mb"
    assert visited.visit_cents == platform.UNWEIGHED_VISIT_CENTS
    assert not_visited.visit_cents is None
    engine.users.platform.state["u1"] = visited
    big = features(engine, tx_id="t1", merchant_id="m-far", amount_cents=80_000)
    assert big["binding_lead_amount_cents"] is None
    engine.users.platform.state["u1"] = not_visited
    big = features(engine, tx_id="t2", merchant_id="m-far", amount_cents=80_000)
    assert big["binding_lead_amount_cents"] == 80_000


def test_a_binding_farm_shows_on_the_device_and_at_the_binder() -> None:
    engine = FeatureEngine()
    for i in range(6):
        user = f"farm{i}"
        engine.signup(parse_signup(signup(user, ts=T0 - HOUR, device_id="d-farm")))
        engine.platform_event(
            event(f"b{i}", T0 + i, "binding", user_id=user, merchant_id="mf", device_id="d-farm"),
        )
    x = features(engine, user_id="farm0", merchant_id="m-any", device_id="d-farm", ts=T0 + HOUR)
    assert x["device_bound_user_count_7d"] == 6
    assert x["binder_bindings_7d"] == 6
    assert x["binder_bindings_per_device_7d"] == 6.0
    assert x["binder_young_binding_share_7d"] == 1.0
    assert x["binder_spend_per_binding_30d"] == 0  # nothing spent yet by its customers
    y = features(engine, tx_id="t2", user_id="farm1", device_id="d-farm", ts=T0 + 2 * HOUR)
    assert y["binder_spend_per_binding_30d"] == 10_000 / 6  # farm0's payment counted
    # Seven days after the last, the bindings have left the device's and the binder's windows.
    z = features(engine, tx_id="t3", user_id="farm1", device_id="d-farm", ts=T0 + 7 * DAY + 5)
    assert z["device_bound_user_count_7d"] is None and z["binder_bindings_7d"] == 0


def test_a_commission_is_cycled_when_its_customer_paid_at_the_earner_within_a_day() -> None:
    engine = FeatureEngine()
    engine.platform_event(event("b1", T0 - 2 * DAY, "binding", user_id="u1", merchant_id="mc"))
    features(engine, tx_id="p1", merchant_id="mc", ts=T0)  # the customer pays at the earner
    commission = {"kind": "retention_commission", "user_id": "u1", "merchant_id": "mc"}
    # One commission a day inside the cycle window, one at its edge (24 h: outside).
    engine.platform_event(event("c1", T0 + DAY - 1, tx_id="p2", amount_cents=30, **commission))
    engine.platform_event(event("c2", T0 + DAY, tx_id="p3", amount_cents=10, **commission))
    x = features(engine, tx_id="p4", merchant_id="m-other", ts=T0 + DAY)
    assert x["user_commission_30d"] == 40
    assert x["user_commission_cycle_share_30d"] == 0.75
    assert x["binder_commission_cycle_share_30d"] == 0.75


def test_coupon_farming_shows_claims_per_device_and_the_claim_to_use_time() -> None:
    engine = FeatureEngine()
    for i in range(4):
        claim = {"coupon_id": f"k{i}", "merchant_id": "m2", "amount_cents": 500, "ip": "ip9"}
        engine.platform_event(
            event(f"c{i}", T0 + i, "coupon_issue", user_id=f"u{i}", device_id="d9", **claim)
        )
    use = {"coupon_id": "k0", "merchant_id": "m2", "amount_cents": 500, "tx_id": "t1"}
    engine.platform_event(event("r0", T0 + 90_000, "coupon_redeem", user_id="u0", **use))
    x = features(engine, tx_id="t1", user_id="u0", device_id="d9", ip="ip9", ts=T0 + 90_000)
    assert x["coupon_claim_to_use_s"] == 90.0
    assert x["user_coupons_claimed_24h"] == 1
    assert x["device_coupon_user_count_24h"] == 4 and x["ip_coupon_user_count_24h"] == 4
    other = features(engine, tx_id="t2", user_id="u0", device_id="d9", ts=T0 + 100_000)
    assert other["coupon_claim_to_use_s"] is None  # no coupon used on this payment


def test_a_points_collector_shows_its_givers_and_how_fast_it_redeems() -> None:
    engine = FeatureEngine()
    for i in range(7):
        gift = {"user_id": "col", "counterparty_id": f"giver{i}", "amount_cents": 200}
        engine.platform_event(event(f"g{i}", T0 + i * MINUTE, "points_grant", **gift))
    # A promotion (no giver) is not a transfer.
    engine.platform_event(event("promo", T0, "points_grant", user_id="col", amount_cents=999))
    redeem = {"user_id": "col", "amount_cents": 1_400}
    engine.platform_event(event("r1", T0 + 10 * MINUTE, "points_redeem", **redeem))
    x = features(engine, user_id="col", ts=T0 + HOUR)
    assert x["points_givers_30d"] == 7 and x["points_received_30d"] == 1_400
    assert x["points_quick_redeem_s"] == 4 * 60
    month_on = features(engine, tx_id="t2", user_id="col", ts=T0 + 30 * DAY + 6 * MINUTE)
    assert month_on["points_givers_30d"] == 0 and month_on["points_received_30d"] == 0


def test_the_stages_route_a_platform_event_to_its_device_ip_and_binder() -> None:
    made_on = {"device_id": "d1", "ip": "i1"}
    binding = event("b1", T0, "binding", user_id="u1", merchant_id="mb", **made_on)
    routes = dict(platform_routes(binding, 1))
    assert routes == {0: PLATFORM_FAMILIES}
    users, entities = UserStage(0, 730 * DAY), EntityStage(730 * DAY)
    context = users.platform_event(binding)
    assert context is not None
    entities.platform_event(binding, context)
    assert set(entities.device_claims.state) == {"d1"} and set(entities.ip_claims.state) == {"i1"}
    assert set(entities.binder.state) == {"mb"}
    # A kind no feature reads goes nowhere.
    assert users.platform_event(event("p1", T0, "pool_topup", amount_cents=5)) is None


def test_stages_checkpointed_before_platform_events_restore_with_empty_platform_state() -> None:
    users, entities = UserStage(0, 730 * DAY), EntityStage(730 * DAY)
    user_state = users.__dict__.copy()
    del user_state["platform"]
    entity_state = entities.__dict__.copy()
    for name in ("binder", "device_claims", "ip_claims"):
        del entity_state[name]
    restored_users = UserStage.__new__(UserStage)
    restored_users.__setstate__(user_state)
    restored_entities = EntityStage.__new__(EntityStage)
    restored_entities.__setstate__(entity_state)
    assert restored_users.platform.state == {} and restored_entities.binder.state == {}
    assert restored_entities.device_claims.names == entities.device_claims.names
    assert pickle.loads(pickle.dumps(restored_entities)).binder.state == {}


def test_a_points_request_reads_the_collectors_features_and_changes_nothing() -> None:
    engine = FeatureEngine()
    for i in range(6):
        gift = {"user_id": "col", "counterparty_id": f"giver{i}", "amount_cents": 100}
        engine.platform_event(event(f"g{i}", T0 + i, "points_grant", **gift))
    before = pickle.dumps(engine)
    redeem = event("r1", T0 + HOUR, "points_redeem", user_id="col", amount_cents=600)
    seen = engine.request_features(redeem)
    assert seen["points_givers_30d"] == 6 and seen["points_received_30d"] == 600
    assert seen["binding_lead_amount_cents"] is None and seen["coupon_claim_to_use_s"] is None
    assert pickle.dumps(engine) == before
    assert engine.request_features(event("t", T0, "pool_topup", amount_cents=1)) == {}
