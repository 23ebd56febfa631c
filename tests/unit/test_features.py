from pathlib import Path

import pytest

from features.engine import EngineConfig, FeatureEngine
from features.merchant import CategoryFeatures, MerchantFeatures
from rebate_guard.contract.records import Signup, Transaction
from rebate_guard.contract.validation import parse_signup, parse_transaction
from rebate_guard.tools.replay import EventFiles
from rebate_guard.tools.simulator import WorldConfig, simulate_world, write_world
from tests.factories import DAY, HOUR, T0, signup, tx


def test_user_window_counts_only_previous_payments_inside_24h() -> None:
    engine = FeatureEngine()
    first = engine.transaction(parse_transaction(tx("a", T0, amount_cents=100)))
    assert first["user_tx_count_24h"] == 0 and first["seconds_since_prev_payment"] is None
    engine.transaction(parse_transaction(tx("b", T0 + HOUR, amount_cents=200)))
    third = engine.transaction(parse_transaction(tx("c", T0 + DAY, amount_cents=50)))
    # "a" is exactly 24 h old: the window is (t - 24 h, t], so it has left.
    assert third["user_tx_count_24h"] == 1
    assert third["user_amount_sum_24h"] == 200
    assert third["seconds_since_prev_payment"] == (DAY - HOUR) / 1000


def test_refunds_do_not_count_as_payments() -> None:
    engine = FeatureEngine()
    engine.transaction(parse_transaction(tx("r", T0, kind="refund", ref_tx_id="x")))
    after = engine.transaction(parse_transaction(tx("p", T0 + 1)))
    assert after["user_tx_count_24h"] == 0


def test_device_counts_distinct_users_including_the_current_one() -> None:
    engine = FeatureEngine()
    engine.signup(parse_signup(signup("u1", T0 - DAY, device_id="shared")))
    engine.signup(parse_signup(signup("u2", T0 - DAY, device_id="shared")))
    x = engine.transaction(parse_transaction(tx("t", T0, user_id="u3", device_id="shared")))
    assert x["device_user_count_7d"] == 3
    again = engine.transaction(
        parse_transaction(tx("t2", T0 + 1, user_id="u1", device_id="shared"))
    )
    assert again["device_user_count_7d"] == 3
    late = engine.transaction(
        parse_transaction(tx("t3", T0 + 8 * DAY, user_id="u9", device_id="shared"))
    )
    assert late["device_user_count_7d"] == 1  # everyone else is older than 7 days
    assert (
        engine.transaction(parse_transaction(tx("t4", T0, device_id=None)))["device_user_count_7d"]
        is None
    )


def test_account_age_from_signup() -> None:
    engine = FeatureEngine()
    assert engine.transaction(parse_transaction(tx("a", T0)))["user_account_age_s"] is None
    engine.signup(parse_signup(signup("u2", T0 - HOUR)))
    x = engine.transaction(parse_transaction(tx("b", T0, user_id="u2")))
    assert x["user_account_age_s"] == 3600


def test_a_user_who_signed_up_at_the_till_is_told_from_a_referred_or_late_one() -> None:
    engine = FeatureEngine()
    minutes = 5 * 60_000
    engine.signup(parse_signup(signup("till", T0 - minutes, device_id="phone")))
    engine.signup(parse_signup(signup("referred", T0 - minutes, referrer_id="farmer")))
    engine.signup(parse_signup(signup("other_phone", T0 - minutes, device_id="phone")))
    engine.signup(parse_signup(signup("late", T0 - 3 * HOUR, device_id="phone")))
    engine.signup(parse_signup(signup("no_device", T0 - minutes, device_id=None, ip="1.2.3.4")))

    def first(user: str, **overrides: object) -> object:
        payment = tx(f"{user}-1", T0, user_id=user, **{"device_id": "phone", **overrides})
        return engine.transaction(parse_transaction(payment))["signed_up_at_till"]

    assert first("till") == 1.0
    assert first("referred") == 0.0  # a farm's accounts come with their referrer
    assert first("other_phone", device_id="another") == 0.0
    assert first("late") == 0.0
    assert first("no_device", device_id=None, ip="1.2.3.4") == 1.0
    # It is the user's: settled at the first payment, kept on the later ones.
    later = engine.transaction(parse_transaction(tx("till-2", T0 + DAY, user_id="till")))
    assert later["signed_up_at_till"] == 1.0
    assert (
        engine.transaction(parse_transaction(tx("x", T0, user_id="nobody")))["signed_up_at_till"]
        is None
    )


def test_distinct_window_expires_by_last_sighting_not_first() -> None:
    from features.windows import WindowDistinct

    window = WindowDistinct(width_ms=10)
    window.add(0, "a")
    window.add(1, "b")
    window.add(5, "a")  # "a" seen again: it must outlive "b"
    window.expire(11)
    assert list(window.last_seen) == ["a"]
    assert window.count_with("a") == 1 and window.count_with("c") == 2
    window.expire(15)
    assert window.last_seen == {}


def test_merchant_pair_and_card_windows_have_half_open_edges() -> None:
    engine = FeatureEngine()

    def pay(tx_id: str, ts: int, **kw) -> dict:
        return engine.transaction(parse_transaction(tx(tx_id, ts, **kw)))

    pay("a", T0, user_id="u1", merchant_id="m", card_id="c")
    pay("b", T0 + 1, user_id="u2", merchant_id="m", card_id="c")
    x = pay("c", T0 + HOUR, user_id="u1", merchant_id="m", card_id="c")
    # "a" is exactly 1 h old: outside (t - 1 h, t]; "b" is inside.
    assert x["merchant_tx_count_1h"] == 1
    assert x["user_merchant_tx_count_7d"] == 1  # only "a" (u1 at m) precedes it
    assert x["card_user_count_30d"] == 2  # u1 and u2
    later = pay("d", T0 + 7 * DAY, user_id="u1", merchant_id="m", card_id="c")
    # "a" left the 7 d window exactly at 7 d; "c" is still in it.
    assert later["user_merchant_tx_count_7d"] == 1
    assert later["merchant_tx_count_1h"] == 0
    refund = pay(
        "r",
        T0 + 7 * DAY + 1,
        user_id="u1",
        merchant_id="m",
        card_id="c",
        kind="refund",
        ref_tx_id="d",
    )
    after = pay("e", T0 + 7 * DAY + 2, user_id="u1", merchant_id="m", card_id="c")
    # The refund is not a payment: it does not count for the next transaction.
    assert refund["merchant_tx_count_1h"] == 1 and after["merchant_tx_count_1h"] == 1
    assert pay("n", T0 + 8 * DAY, card_id=None)["card_user_count_30d"] is None


def test_merchant_fraud_rate_counts_only_labels_arrived_for_payments_in_30d() -> None:
    from rebate_guard.contract.validation import parse_label
    from tests.factories import label

    engine = FeatureEngine()

    def pay(tx_id: str, ts: int) -> dict:
        return engine.transaction(parse_transaction(tx(tx_id, ts, merchant_id="m")))

    assert pay("a", T0)["merchant_fraud_rate_30d"] is None
    pay("b", T0 + HOUR)
    pay("c", T0 + 2 * HOUR)
    assert pay("x", T0 + DAY)["merchant_fraud_rate_30d"] is None  # no label has arrived yet
    engine.label(parse_label(label("a", T0 + 2 * DAY, label="fraud")))
    engine.label(parse_label(label("b", T0 + 2 * DAY, label="legit")))
    engine.label(parse_label(label("unknown-tx", T0 + 2 * DAY)))  # ignored
    y = pay("y", T0 + 2 * DAY)
    assert y["merchant_fraud_rate_30d"] == y["merchant_fraud_rate_7d"] == 0.5
    assert y["merchant_labelled_count_30d"] == y["merchant_labelled_count_7d"] == 2
    engine.label(parse_label(label("b", T0 + 3 * DAY, label="fraud")))  # a review reversed
    z = pay("z", T0 + 3 * DAY)
    assert z["merchant_fraud_rate_30d"] == 1.0 and z["merchant_labelled_count_30d"] == 2
    # 7 d on, "a" and "b" have left the 7 d window but not the 30 d one.
    later = pay("u", T0 + 7 * DAY + HOUR)
    assert later["merchant_fraud_rate_7d"] is None and later["merchant_labelled_count_7d"] == 0
    assert later["merchant_fraud_rate_30d"] == 1.0 and later["merchant_labelled_count_30d"] == 2
    # "a" leaves the window at exactly 30 d; "b" (fraud) is still inside.
    assert pay("w", T0 + 30 * DAY)["merchant_fraud_rate_30d"] == 1.0
    assert pay("v", T0 + 30 * DAY + 2 * HOUR)["merchant_fraud_rate_30d"] is None
    assert "a" not in engine.merchant.payment_merchant  # bounded: expired payments are forgotten


def test_a_labelled_window_takes_labels_only_for_payments_inside_it() -> None:
    from features.windows import LabelledWindow

    window = LabelledWindow((30 * DAY, 7 * DAY))
    window.add(T0, "a")
    window.add(T0 + DAY, "b")
    assert not window.label("never-paid", True)  # a stray label leaves no count behind
    assert window.label("a", True) and window.label("b", False)
    assert (window.labelled(0), window.labelled(1), window.fraud_rate(1)) == (2, 2, 0.5)
    assert window.expire(T0 + 7 * DAY) == []  # "a" left the 7 d window only
    assert (window.labelled(0), window.labelled(1), window.fraud_rate(1)) == (2, 1, 0.0)
    assert window.label("a", False)  # relabelled: counts in the 30 d window, not the 7 d
    assert (window.fraud_rate(0), window.fraud_rate(1)) == (0.0, 0.0)
    assert window.expire(T0 + 30 * DAY) == ["a"]
    # A label for a payment that has expired is ignored, not counted until it never expires.
    assert not window.label("a", True)
    assert (window.labelled(0), window.fraud_rate(0)) == (1, 0.0)
    assert window.expire(T0 + 31 * DAY) == ["b"]
    assert (window.labelled(0), window.labelled(1), len(window)) == (0, 0, 0)
    assert window.fraud_rate(0) is None and not window.members and not window.labels
    # A repeated tx_id is its latest payment: the earlier one's label goes with it.
    window.add(T0 + 40 * DAY, "c")
    window.label("c", True)
    window.add(T0 + 41 * DAY, "c")
    assert window.labelled(0) == 0
    window.label("c", False)
    assert window.expire(T0 + 70 * DAY) == ["c"]  # the earlier "c" left; the label stays
    assert window.fraud_rate(0) == 0.0 and window.labelled(1) == 0


def test_a_merchant_checkpointed_before_the_7d_window_restores_with_it() -> None:
    import pickle
    from collections import deque

    from features.merchant import LABEL_HORIZONS, MerchantState
    from features.windows import LabelledWindow

    # The state pickle held before session 12: one 30 d width.
    items = deque([(T0, "a"), (T0 + 20 * DAY, "b"), (T0 + 25 * DAY, "c")])
    old = {"width_ms": 30 * DAY, "items": items, "labels": {"a": True, "c": False}, "fraud": 1}
    window = LabelledWindow.__new__(LabelledWindow)
    window.__setstate__((None, old))
    merchant = MerchantState()
    merchant.labelled = window
    restored = pickle.loads(pickle.dumps(merchant))
    labelled = restored.labelled
    assert labelled.widths == LABEL_HORIZONS
    labelled.expire(T0 + 27 * DAY)  # "a" and "b" are older than 7 d; "c" is not
    assert (labelled.labelled(0), labelled.fraud_rate(0)) == (2, 0.5)
    assert (labelled.labelled(1), labelled.fraud_rate(1)) == (1, 0.0)
    assert labelled.label("b", True) and labelled.fraud_rate(0) == 2 / 3


def test_sweeping_idle_keys_changes_no_feature_and_bounds_the_state(tmp_path: Path) -> None:
    world = simulate_world(
        WorldConfig(seed=4, n_users=300, n_merchants=30, days=40, target_transactions=3_000)
    )
    paths = write_world(world, tmp_path)
    events = list(EventFiles(paths["transactions"], paths["signups"], paths["labels"], None))
    swept = FeatureEngine(EngineConfig(sweep_every_ms=HOUR))
    kept = FeatureEngine(EngineConfig(sweep_every_ms=10_000 * DAY))
    for event in events:
        if isinstance(event, Transaction):
            assert swept.vector(event) == kept.vector(event), event.tx_id
        else:
            for engine in (swept, kept):
                (engine.signup if isinstance(event, Signup) else engine.label)(event)
    assert swept.swept > 0
    small, big = swept.key_counts(), kept.key_counts()
    for family in ("user_activity", "devices", "ips", "cards"):
        assert small[family] < big[family], family


def test_a_user_idle_past_the_ttl_starts_afresh() -> None:
    engine = FeatureEngine(EngineConfig(user_ttl_ms=60 * DAY))
    engine.signup(parse_signup(signup("u1", T0)))
    assert engine.transaction(parse_transaction(tx("a", T0 + DAY)))["user_account_age_s"] == 86_400
    engine.signup(parse_signup(signup("u2", T0 + 61 * DAY)))  # time passes; u1 stays idle
    later = engine.transaction(parse_transaction(tx("b", T0 + 62 * DAY)))
    assert later["user_account_age_s"] is None and later["seconds_since_prev_payment"] is None


def test_a_payment_log_total_at_a_time_is_its_expired_sum_and_changes_nothing() -> None:
    from features.windows import PaymentLog

    log = PaymentLog((DAY, HOUR))
    for i in range(100):
        log.add(T0 + i * 20 * 60_000, i + 1)  # every 20 minutes over ~33 h
    for now in (T0 + 30 * HOUR, T0 + 40 * HOUR, T0 + 80 * HOUR):
        before = (list(log.ts), list(log.heads), list(log.sums))
        got = [log.total_at(now, 0), log.total_at(now, 1)]
        assert (log.ts, log.heads, log.sums) == before
        log.expire(now)
        assert got == log.sums


def test_a_payment_log_holds_at_most_twice_what_is_inside_its_window() -> None:
    """Expired payments leave the lists once they outnumber those inside: a user paying
    every 10 days keeps 3 in 30 days, and not up to 64 expired ones besides after a year."""
    from features.windows import PaymentLog

    log = PaymentLog((30 * DAY, DAY))
    for i in range(100):
        now = T0 + i * 10 * DAY
        log.expire(now)
        log.add(now, 5)
        assert (log.count(0), log.sums[0]) == (min(i + 1, 3), 5 * min(i + 1, 3))
        assert (log.count(1), log.sums[1]) == (1, 5)
        assert len(log.ts) == len(log.values) <= 2 * len(log)


def test_each_device_feature_holds_the_value_of_its_own_window() -> None:
    """The identity families lay out one generic computation: each name must get its value."""
    engine = FeatureEngine()
    engine.signup(parse_signup(signup("u1", T0 - 3 * DAY, device_id="d")))
    engine.transaction(parse_transaction(tx("a", T0 - 2 * DAY, user_id="u2", device_id="d")))
    paid = tx("b", T0 - HOUR, user_id="u3", device_id="d", amount_cents=3000, rebate_rate=0.1)
    engine.transaction(parse_transaction(paid))
    x = engine.transaction(parse_transaction(tx("c", T0, user_id="u4", device_id="d")))
    assert x["device_user_count_24h"] == 2  # u3 and u4
    assert x["device_user_count_7d"] == 4
    assert x["device_signup_count_7d"] == 1
    assert x["device_rebate_requested_24h"] == 300  # u3's only: u2's payment is 2 days old


def test_a_feature_row_names_its_fields_and_refuses_a_value_left_unset() -> None:
    row = MerchantFeatures()
    assert MerchantFeatures.names[:2] == ("merchant_tx_count_24h", "merchant_tx_count_1h")
    for name in MerchantFeatures.names[1:]:
        setattr(row, name, 1)
    with pytest.raises(AttributeError, match="merchant_tx_count_24h"):
        row.values()
    row.merchant_tx_count_24h = 7
    assert row.values() == (7,) + (1,) * (len(MerchantFeatures.names) - 1)
    single = CategoryFeatures()
    single.rebate_rate_vs_category = None
    assert single.values() == (None,)


def test_a_profile_from_before_the_till_feature_restores_as_not_at_a_till() -> None:
    import pickle

    from features.user import UserProfile

    profile = UserProfile()
    profile.signup_ts, profile.first_payment_ts = T0 - 60_000, T0
    reduced = profile.__reduce_ex__(2)
    state = dict(reduced[2][1])  # (None, slots) for a class with __slots__
    for name in ("signup_device", "signup_ip", "till_signup"):
        del state[name]
    old = reduced[0](*reduced[1])
    old.__setstate__((None, state))
    assert old.till_signup is False and old.signup_device is None
    fresh = UserProfile()
    fresh.signup_ts, fresh.signup_device = T0, "phone"
    restored = pickle.loads(pickle.dumps(fresh))
    assert restored.till_signup is None and restored.signup_device == "phone"  # not settled yet
