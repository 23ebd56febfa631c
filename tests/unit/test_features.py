from features.engine import FeatureEngine
from streams.validation import parse_signup, parse_transaction
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
