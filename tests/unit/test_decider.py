import pickle
from collections import OrderedDict

from detectors.risk import RiskModel
from graph.layer import GraphLayer
from rebate_guard.contract.order import order_key
from rebate_guard.contract.validation import (
    parse_label,
    parse_platform_event,
    parse_signup,
    parse_transaction,
)
from rebate_guard.core.decider import Decider, Scorer
from rebate_guard.core.policy import Policy
from tests.factories import DAY, HOUR, T0, fixed_policy, label, signup, tx


def test_a_quiet_payment_is_allowed_in_full() -> None:
    scorer = Scorer()
    scorer.apply(parse_signup(signup("u1", T0 - 30 * DAY)), 0)
    d = scorer.apply(parse_transaction(tx(amount_cents=10_000, rebate_rate=0.15)), 1)
    assert d.action == "allow"
    assert d.rebate_requested_cents == d.rebate_granted_cents == 1500
    assert d.reasons == [] and d.model_version and d.policy_version


def test_a_farm_on_one_device_loses_its_rebate_with_reasons() -> None:
    scorer = Scorer()
    for n in range(8):
        scorer.apply(parse_signup(signup(f"f{n}", T0 - 60_000, device_id="farm")), 0)
    d = scorer.apply(parse_transaction(tx("t", T0, user_id="f0", device_id="farm")), 1)
    assert d.action in {"hold", "block"}
    assert d.rebate_granted_cents == 0
    assert "device_shared_7d" in d.reasons and "young_account" in d.reasons


def test_a_deep_referral_chain_alone_does_not_lower_the_weight() -> None:
    """Referral depth is a classifier feature, not a ring score: a legitimate user six tiers
    down with no other signal is trusted as much as one two tiers down (the policy's
    commission tiers cap what a deep tree earns), and no ring is named."""
    scorer = Scorer(decider=Decider(policy=fixed_policy()))
    parent = None
    for n in range(6):
        scorer.apply(
            parse_signup(signup(f"p{n}", T0 - 30 * DAY, referrer_id=parent, device_id=f"d{n}")),
            0,
        )
        parent = f"p{n}"
    deep = scorer.decide(parse_transaction(tx("t", T0, user_id="p5", device_id="d5")), 1)
    shallow = scorer.apply(parse_transaction(tx("s", T0, user_id="p2", device_id="d2")), 1)
    assert deep[1]["referral_depth"] == 5
    assert deep[0].trust_weight == shallow.trust_weight and deep[0].action == "allow"
    assert not any(r.startswith("ring:") for r in deep[0].reasons)
    assert deep[0].commission_tiers == 3  # capped by the policy, not by the weight


def test_refunds_request_no_rebate() -> None:
    d = Scorer().apply(parse_transaction(tx("r", kind="refund", ref_tx_id="t1")), 1)
    assert d.rebate_requested_cents == d.rebate_granted_cents == 0


def test_events_order_by_time_then_kind_then_id() -> None:
    s = parse_signup(signup("u", T0))
    t = parse_transaction(tx("t", T0))
    lab = parse_label(label("t", T0))
    assert sorted([(lab, 0), (t, 1), (s, 2)], key=lambda p: order_key(*p)) == [
        (s, 2),
        (lab, 0),
        (t, 1),
    ]
    # Same ts and kind: the id decides, whatever the input order.
    t2 = parse_transaction(tx("a2", T0))
    t1 = parse_transaction(tx("a1", T0))
    assert sorted([(t2, 0), (t1, 1)], key=lambda p: order_key(*p)) == [(t1, 1), (t2, 0)]
    # Replay ranks kinds by their position in EVENT_KINDS and ids by their `id_fields`: it
    # must agree with order_key.
    from rebate_guard.contract.order import EVENT_KINDS

    platform = parse_platform_event(
        {"event_id": "e", "ts": T0, "kind": "pool_topup", "amount_cents": 100}
    )
    by_kind = {"signups": s, "labels": lab, "platform-events": platform, "transactions": t}
    assert [order_key(by_kind[kind.name], 0)[1] for kind in EVENT_KINDS] == [0, 1, 2, 3]
    # A platform event at t comes after a label at t and before a payment at t.
    assert sorted([(t, 0), (platform, 1), (lab, 2)], key=lambda p: order_key(*p)) == [
        (lab, 2),
        (platform, 1),
        (t, 0),
    ]
    for kind in EVENT_KINDS:
        event = by_kind[kind.name]
        first = next(getattr(event, f) for f in kind.id_fields if getattr(event, f) is not None)
        assert order_key(event, 0)[2] == first
    by_user = parse_label({**label("t", T0), "tx_id": None, "user_id": "u"})
    assert order_key(by_user, 0)[2] == "u"


def test_scorer_state_pickles_and_resumes_identically() -> None:
    scorer = Scorer()
    scorer.apply(parse_signup(signup("u1", T0 - DAY)), 0)
    scorer.apply(parse_transaction(tx("a", T0)), 1)
    clone = pickle.loads(pickle.dumps(scorer))
    nxt = parse_transaction(tx("b", T0 + 1000))
    assert clone.apply(nxt, 1) == scorer.apply(nxt, 1)


def test_a_refund_sees_whether_its_payment_was_granted_a_rebate() -> None:
    scorer = Scorer()
    paid = scorer.apply(parse_transaction(tx("p1", T0)), 1)
    free = scorer.apply(parse_transaction(tx("p2", T0 + 1, rebate_rate=0.0)), 1)
    assert paid.rebate_granted_cents > 0 and free.rebate_granted_cents == 0

    def refund(tx_id: str, ref: str, ts: int) -> object:
        event = parse_transaction(tx(tx_id, ts, kind="refund", ref_tx_id=ref))
        return scorer.decide(event, 1)[1]["refund_of_granted_rebate"]

    assert refund("r1", "p1", T0 + 10) == 1.0
    assert refund("r2", "p2", T0 + 11) == 0.0
    assert refund("r3", "nope", T0 + 12) is None
    assert (
        scorer.decide(parse_transaction(tx("p3", T0 + 13)), 1)[1]["refund_of_granted_rebate"]
        is None
    )
    # Past the 30-day lookback the payment is forgotten (and the map stays bounded).
    assert refund("r4", "p1", T0 + 31 * DAY) is None and "p1" not in scorer.decider.granted


def _capped(user_cap: int | None, device_cap: int | None) -> Scorer:
    policy = Policy.from_document(
        {
            "version": "caps",
            "thresholds": {"allow_at": 0.0, "scale_at": 0.0, "hold_at": 0.0},  # all allowed
            "limits": {
                k: v
                for k, v in (
                    ("user_daily_rebate_cents", user_cap),
                    ("device_daily_rebate_cents", device_cap),
                )
                if v is not None
            },
        }
    )
    return Scorer(decider=Decider(policy=policy))


def test_a_users_daily_cap_cuts_then_stops_their_rebates_for_24_hours() -> None:
    scorer = _capped(700, None)
    pay = [tx(f"p{i}", T0 + i * HOUR, amount_cents=3_000, rebate_rate=0.1) for i in range(4)]
    got = [scorer.apply(parse_transaction(p), 0) for p in pay]
    assert [(d.action, d.rebate_granted_cents) for d in got] == [
        ("allow", 300),
        ("allow", 300),
        ("scale", 100),
        ("block", 0),
    ]
    assert got[2].reasons[0] == got[3].reasons[0] == "cap:user_day"
    # Another user is not held to it; and 24 h after the first grant, room comes back.
    other = tx("o", T0 + 4 * HOUR, user_id="u2", amount_cents=3_000)
    assert scorer.apply(parse_transaction(other), 0).rebate_granted_cents == 300
    later = scorer.apply(parse_transaction(tx("p9", T0 + DAY, amount_cents=3_000)), 0)
    assert (later.action, later.rebate_granted_cents) == ("allow", 300)


def test_a_devices_daily_cap_counts_every_users_requests_on_it() -> None:
    scorer = _capped(None, 500)
    first = tx("a", T0, user_id="u1", device_id="shared", amount_cents=4_000, rebate_rate=0.1)
    second = tx("b", T0 + HOUR, user_id="u2", device_id="shared", amount_cents=4_000)
    third = tx("c", T0 + 2 * HOUR, user_id="u3", device_id="shared", amount_cents=4_000)
    got = [scorer.apply(parse_transaction(p), 0) for p in (first, second, third)]
    assert [(d.action, d.rebate_granted_cents) for d in got] == [
        ("allow", 400),
        ("scale", 100),
        ("block", 0),
    ]
    assert got[1].reasons[0] == "cap:device_day"


def test_commissions_are_paid_at_most_three_tiers_up_and_only_with_a_rebate() -> None:
    scorer = _capped(None, None)
    parent = None
    for n in range(6):
        scorer.apply(
            parse_signup(signup(f"p{n}", T0 - DAY, referrer_id=parent, device_id=f"d{n}")), 0
        )
        parent = f"p{n}"
    tiers = {
        n: scorer.apply(parse_transaction(tx(f"t{n}", T0, user_id=f"p{n}")), 0).commission_tiers
        for n in range(6)
    }
    assert tiers == {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 3}
    blocked = Policy.from_document({"version": "b", "lists": {"block_users": ["p2"]}})
    scorer.decider.policy = blocked
    assert scorer.apply(parse_transaction(tx("x", T0, user_id="p2")), 0).commission_tiers == 0


class _BrokenOnSomeAmounts(RiskModel):
    def assess(self, x):  # type: ignore[no-untyped-def]
        if x["amount_cents"] == 13_131:
            raise FloatingPointError("a bug in scoring")
        return super().assess(x)


def test_a_transaction_the_model_cannot_score_is_held_not_allowed_and_the_next_is_scored() -> None:
    scorer = Scorer(decider=Decider(model=_BrokenOnSomeAmounts()))
    scorer.apply(parse_signup(signup("u1", T0 - 30 * DAY)), 0)
    broken = scorer.apply(parse_transaction(tx("bad", T0, amount_cents=13_131)), 0)
    assert (broken.action, broken.rebate_granted_cents) == ("hold", 0)
    assert broken.reasons == ["fail_closed:model"] and broken.trust_weight == 0.0
    assert scorer.decider.model_failures == 1
    fine = scorer.apply(parse_transaction(tx("ok", T0 + HOUR, amount_cents=10_000)), 0)
    assert fine.action == "allow" and fine.reasons == []
    assert "bad" not in scorer.decider.remembered  # nothing to learn from a label on it


class _RingMerchant(GraphLayer):
    """A graph whose merchant m1 is in a collusion ring (and no user is)."""

    def ring_score(self, user_id: str, merchant_id: str | None) -> tuple[float, list[str]]:
        return (0.9, ["ring:collusion"]) if merchant_id == "m1" else (0.0, [])


def test_a_ring_merchants_score_weighs_on_its_returning_customers_not_on_passers_by() -> None:
    """Rings cycle money through repeat payments: a first payment at a flagged merchant by
    a user in no ring carries no ring score; the same user's next payment there does."""
    scorer = Scorer(decider=Decider(policy=fixed_policy()), graph=_RingMerchant())
    scorer.apply(parse_signup(signup("u1", T0 - 30 * DAY)), 0)
    first = scorer.apply(parse_transaction(tx("t1", T0, merchant_id="m1")), 0)
    again = scorer.apply(parse_transaction(tx("t2", T0 + HOUR, merchant_id="m1")), 0)
    assert first is not None and again is not None
    assert "ring:collusion" not in first.reasons and first.action == "allow"
    assert again.reasons[0] == "ring:collusion" and again.rebate_granted_cents == 0


def test_a_users_labels_are_features_of_their_later_payments_from_the_labels_ts_on() -> None:
    scorer = Scorer()
    scorer.apply(parse_transaction(tx("a1", T0, user_id="a")), 0)
    before = scorer.decide(parse_transaction(tx("a2", T0 + DAY, user_id="a")), 0)[1]
    assert (before["user_fraud_labels"], before["user_legit_labels"]) == (0, 0)
    scorer.apply(parse_label(label("a1", T0 + 2 * DAY)), 0)  # tx-level: its user is found
    scorer.apply(parse_label(label(None, T0 + 3 * DAY, user_id="a")), 0)  # user-level
    scorer.apply(parse_label(label(None, T0 + 3 * DAY, user_id="b", label="legit")), 0)
    scorer.apply(parse_label(label("elsewhere", T0 + 3 * DAY)), 0)  # decided elsewhere
    after = scorer.decide(parse_transaction(tx("a3", T0 + 4 * DAY, user_id="a")), 0)[1]
    assert (after["user_fraud_labels"], after["user_legit_labels"]) == (2, 0)
    other = scorer.decide(parse_transaction(tx("b1", T0 + 4 * DAY, user_id="b")), 0)[1]
    assert (other["user_fraud_labels"], other["user_legit_labels"]) == (0, 1)
    restored = pickle.loads(pickle.dumps(scorer.decider))
    assert restored.user_labels == scorer.decider.user_labels


def test_payments_leave_granted_past_the_refund_lookback_also_after_an_old_checkpoint() -> None:
    """`granted` holds the last 30 days' payments, oldest first, however long the history,
    and a checkpoint from before it was an OrderedDict (a plain dict, whose oldest item
    costs a scan past every slot deleted at its front) resumes as one, forgetting alike."""
    every, n_payments = 6 * HOUR, 4 * 90  # 90 days, four payments a day
    scorer = Scorer()
    for n in range(n_payments):
        scorer.apply(parse_transaction(tx(f"p{n}", T0 + n * every, user_id=f"u{n % 7}")), 1)

    def kept_at(now: int) -> list[str]:
        return [f"p{n}" for n in range(n_payments) if T0 + n * every > now - 30 * DAY]

    last = T0 + (n_payments - 1) * every
    assert list(scorer.decider.granted) == kept_at(last) and len(kept_at(last)) == 120
    old = pickle.loads(pickle.dumps(scorer.decider))
    old.__dict__["granted"] = dict(old.granted)  # as a checkpoint from before held it
    restored = pickle.loads(pickle.dumps(old))
    assert isinstance(restored.granted, OrderedDict)
    late = parse_transaction(tx("late", last + 2 * DAY))
    restored.decide(late, scorer.features.vector(late), decided_at=1)
    assert list(restored.granted) == [*kept_at(last + 2 * DAY), "late"]
