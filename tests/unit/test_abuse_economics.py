"""The abuse of the commission, coupon and points flows in the simulator
(`rebate_guard.tools.simulator._abuse_economics`) and its legit look-alikes
(`_flow_lookalikes`): each group's payments are fraud (legit, of its look-alike group) in
the truth, its platform events are valid contract records that make it what it is, and
`platform_truth` says which group made each event."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest

from rebate_guard.contract.records import BINDING, POINTS_REQUESTS
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.contract.validation import parse_platform_event
from rebate_guard.tools.simulator import LOOKALIKES, SCENARIOS, World, WorldConfig, simulate_world
from rebate_guard.tools.simulator._common import FLOW_LOOKALIKES, FLOW_SCENARIOS
from rebate_guard.tools.simulator.profiles import FLOW_ABUSE, FLOW_LOOKALIKE_RATES, world_config

#: Every look-alike often enough for a small world to have a few groups of each.
LOOKALIKES_ON = dict.fromkeys(FLOW_LOOKALIKE_RATES, 25.0)
SMALL = WorldConfig(seed=4, n_users=3_000, n_merchants=120, days=14, **FLOW_ABUSE, **LOOKALIKES_ON)
FLOW_SCENARIO_NAMES = {SCENARIOS[code] for code in FLOW_SCENARIOS}


@pytest.fixture(scope="module")
def world() -> World:
    return simulate_world(SMALL)


def _with_truth(world: World) -> pl.DataFrame:
    return world.platform_events.join(world.platform_truth, on="event_id")


def _abuse_events(world: World) -> pl.DataFrame:
    return _with_truth(world).filter(pl.col("is_fraud"))


def _group_events(world: World, group: str) -> pl.DataFrame:
    return _with_truth(world).filter(pl.col("group") == group)


def _group_payments(world: World, group: str) -> pl.DataFrame:
    truth = world.tx_truth.filter(pl.col("group") == group)
    assert not truth["is_fraud"].any() and truth.height > 0
    return world.transactions.join(truth, on="tx_id")


def _fraud_of(world: World, scenario: str) -> pl.DataFrame:
    truth = world.tx_truth.filter(pl.col("scenario") == scenario)
    assert truth["is_fraud"].all() and truth.height > 0
    return world.transactions.join(truth, on="tx_id")


def test_the_groups_events_are_valid_platform_events(world: World) -> None:
    events = _with_truth(world).filter(pl.col("is_fraud") | (pl.col("group") != ""))
    assert events.height > 0 and world.platform_events["event_id"].is_unique().all()
    for row in events.iter_rows(named=True):
        parse_platform_event(row)  # raises on a record the contract refuses
    assert events["ts"].is_between(SMALL.start_ts_ms, SMALL.end_ts_ms).all()


def test_platform_truth_names_the_group_that_made_each_event(world: World) -> None:
    truth = world.platform_truth
    assert truth["event_id"].equals(world.platform_events["event_id"])
    events = _with_truth(world)
    # The flows' scenarios name the events their groups made; any scenario's accounts'
    # points requests (their vouchers and gifts) are fraud of it too.
    requests = pl.col("kind").is_in(list(POINTS_REQUESTS))
    fraud = events.filter(pl.col("is_fraud"))
    assert fraud.filter(~requests)["scenario"].is_in(FLOW_SCENARIO_NAMES).all()
    assert fraud["scenario"].is_in(list(SCENARIOS[1:])).all()
    assert (truth.filter(~pl.col("is_fraud"))["scenario"] == "").all()
    assert (truth.filter(pl.col("is_fraud"))["group"] == "").all()
    assert set(truth["scenario"]) - {""} >= FLOW_SCENARIO_NAMES
    assert set(truth["group"]) == {"", *FLOW_LOOKALIKE_NAMES}
    spent = fraud.filter(requests).join(world.user_truth, on="user_id")
    assert spent.height == fraud.filter(requests).height > 0
    assert (spent["role"] == spent["scenario"]).all()
    made = events.filter((pl.col("is_fraud") & ~requests) | (pl.col("group") != ""))
    # A fraud event's user is an account of its scenario, a look-alike's one of its group ...
    roles = made.join(world.user_truth, on="user_id")
    assert roles.height == made.height
    expected = pl.when(pl.col("is_fraud")).then(pl.col("scenario")).otherwise(pl.col("group"))
    assert (roles["role"] == roles.select(expected).to_series()).all()
    # ... and its payment is one of that scenario's (fraud) or that group's (legit).
    paid = made.filter(pl.col("tx_id").is_not_null()).join(world.tx_truth, on="tx_id", suffix="_tx")
    assert paid.height == made["tx_id"].drop_nulls().len()
    assert (paid["is_fraud"] == paid["is_fraud_tx"]).all()
    fraud = paid.filter(pl.col("is_fraud"))
    assert (fraud["scenario"] == fraud["scenario_tx"]).all()
    legit = paid.filter(~pl.col("is_fraud"))
    assert (legit["group"] == legit["group_tx"]).all()
    # The platform's own economics (everything else) is legit, of no group.
    rest = events.filter(~pl.col("is_fraud") & (pl.col("group") == ""))
    assert rest.height > made.height and (rest["scenario"] == "").all()


def test_event_ids_are_one_sequence_in_time_order(world: World) -> None:
    events = world.platform_events
    assert events["ts"].is_sorted()
    assert events["event_id"].to_list() == [f"pe{n}" for n in range(events.height)]


def test_a_hijacked_payment_follows_a_binding_to_another_merchant_within_the_hour(
    world: World,
) -> None:
    paid = _fraud_of(world, "binding_hijack")
    bindings = _abuse_events(world).filter(pl.col("kind") == "binding")
    joined = paid.join(bindings, on="user_id", suffix="_bound")
    lead = joined.filter(
        (pl.col("ts_bound") < pl.col("ts")) & (pl.col("ts_bound") > pl.col("ts") - HOUR_MS)
    )
    assert set(lead["tx_id"]) == set(paid["tx_id"])
    assert (lead["merchant_id_bound"] != lead["merchant_id"]).all()
    commissions = _abuse_events(world).filter(pl.col("kind") == "retention_commission")
    assert set(paid["tx_id"]) <= set(commissions["tx_id"])


def test_a_farmed_coupon_is_claimed_on_a_shared_phone_and_used_on_a_farm_payment(
    world: World,
) -> None:
    paid = _fraud_of(world, "coupon_farm")
    events = _abuse_events(world)
    used = events.filter(pl.col("kind") == "coupon_redeem")
    assert set(used["tx_id"]) == set(paid["tx_id"])
    at = used.join(paid, on="tx_id", suffix="_paid")
    assert (at["ts"] == at["ts_paid"]).all() and (at["merchant_id"] == at["merchant_id_paid"]).all()
    claims = events.filter(pl.col("kind") == "coupon_issue")
    assert claims.group_by("device_id").agg(pl.col("user_id").n_unique())["user_id"].max() > 1


def test_points_collected_from_fresh_accounts_are_spent_by_the_collector(world: World) -> None:
    events = _abuse_events(world).filter(pl.col("scenario") == "points_collector")
    received = events.filter(pl.col("kind") == "points_grant")
    collectors = set(received["user_id"])
    assert (
        received.group_by("user_id")
        .agg(pl.col("counterparty_id").n_unique())["counterparty_id"]
        .min()
        >= 8
    )
    spent = events.filter(pl.col("kind") == "points_redeem")
    # The collector spends them; its fresh givers' own vouchers are the ring's too.
    assert collectors <= set(spent["user_id"])
    roles = spent.join(world.user_truth, on="user_id")
    assert roles.height == spent.height and (roles["role"] == "points_collector").all()
    paid = _fraud_of(world, "points_collector")
    assert collectors <= set(paid["user_id"])


def test_only_the_random_profile_and_configs_asking_for_them_have_these_groups() -> None:
    bare = simulate_world(WorldConfig(seed=4, n_users=1_000, n_merchants=60, days=7))
    assert bare.platform_truth.height == bare.platform_events.height > 0
    # No flow abuse: the only fraud is the other scenarios' accounts spending their points.
    flows = {"binding_hijack", "coupon_farm", "points_collector", "binding_farm"}
    assert not set(bare.platform_truth.filter(pl.col("is_fraud"))["scenario"]) & flows
    assert (bare.platform_truth["group"] == "").all()
    assert world_config("random", seed=1).coupon_farm_per_100k > 0
    assert world_config("default", seed=1).coupon_farm_per_100k == 0


def test_a_binding_farm_binds_its_accounts_on_few_phones_and_earns_on_their_payments(
    world: World,
) -> None:
    paid = _fraud_of(world, "binding_farm")
    events = _abuse_events(world)
    farmed = set(paid["user_id"])
    bindings = events.filter((pl.col("kind") == "binding") & pl.col("user_id").is_in(farmed))
    per_phone = bindings.group_by("device_id").agg(pl.col("user_id").n_unique())["user_id"]
    assert per_phone.max() > 4  # past what a family binds on one phone
    commissions = events.filter(pl.col("kind") == "retention_commission")
    earned = commissions.filter(pl.col("tx_id").is_in(set(paid["tx_id"])))
    assert earned.height == paid.height
    assert set(earned["merchant_id"]) <= set(bindings["merchant_id"])


def test_a_commission_cycle_pays_its_merchant_and_earns_it_commission_elsewhere(
    world: World,
) -> None:
    paid = _fraud_of(world, "commission_cycle")
    earner = set(world.merchant_truth.filter(pl.col("role") == "commission_cycle")["merchant_id"])
    events = _abuse_events(world).filter(pl.col("scenario") == "commission_cycle")
    bindings = events.filter(pl.col("kind") == "binding")
    assert set(bindings["user_id"]) == set(paid["user_id"])
    assert set(bindings["merchant_id"]) == earner
    # Bound at a payment at the earner, on the phone it was paid on.
    at = bindings.join(paid, on=["user_id", "ts"], suffix="_paid")
    assert at.height == bindings.height
    assert (at["merchant_id_paid"] == at["merchant_id"]).all()
    assert (at["device_id"] == at["device_id_paid"]).all()
    commissions = events.filter(pl.col("kind") == "retention_commission")
    assert set(commissions["merchant_id"]) == earner
    later = paid.join(bindings.select("user_id", pl.col("ts").alias("bound")), on="user_id")
    later = later.filter(pl.col("ts") > pl.col("bound"))
    assert set(commissions["tx_id"]) <= set(later["tx_id"])
    assert commissions.height >= 0.9 * later.height  # all but the few cents-less bills
    on = commissions.join(paid, on="tx_id", suffix="_paid")
    assert (on["ts"] == on["ts_paid"] + 1).all()
    elsewhere = on.filter(~pl.col("merchant_id_paid").is_in(earner))
    assert elsewhere.height > on.height / 2  # most spending is elsewhere ...
    assert paid.filter(pl.col("merchant_id").is_in(earner)).height > 2 * bindings.height
    # ... and part of it comes within a day of a payment at the earner (a tight cycle).
    visits = paid.filter(pl.col("merchant_id").is_in(earner)).select(
        "user_id", pl.col("ts").alias("visit")
    )
    cycled = (
        elsewhere.select("event_id", "user_id", "ts")
        .join(visits, on="user_id")
        .filter((pl.col("visit") < pl.col("ts")) & (pl.col("visit") > pl.col("ts") - DAY_MS))
    )
    assert 0 < cycled["event_id"].n_unique() < elsewhere.height


#: The flows' legit look-alikes (`_flow_lookalikes`).
FLOW_LOOKALIKE_NAMES = {LOOKALIKES[code] for code in FLOW_LOOKALIKES}


def _bound_users_per_device(events: pl.DataFrame) -> pl.Series:
    return (
        events.filter(pl.col("kind") == "binding")
        .group_by("device_id")
        .agg(pl.col("user_id").n_unique())["user_id"]
    )


def test_a_family_binds_its_new_accounts_on_one_phone_minutes_after_signing_up(
    world: World,
) -> None:
    payments = _group_payments(world, "family_binding")
    events = _group_events(world, "family_binding")
    bindings = events.filter(pl.col("kind") == "binding")
    assert set(bindings["user_id"]) >= set(payments["user_id"])
    signed = bindings.join(world.signups, on="user_id", suffix="_signup")
    new = signed.filter(pl.col("ts_signup") >= SMALL.start_ts_ms)
    lag = new["ts"] - new["ts_signup"]
    assert new.height > 0 and (lag > 0).all() and (lag < HOUR_MS + 30 * MINUTE_MS).all()
    # As a farm does (1-30 min after signup, several accounts on a phone).
    per_phone = _bound_users_per_device(events)
    assert per_phone.min() >= 2 and per_phone.max() >= 3
    assert (
        bindings.group_by("device_id").agg(pl.col("merchant_id").n_unique())["merchant_id"].max()
        == 1
    )
    commissions = events.filter(pl.col("kind") == "retention_commission")
    assert set(commissions["tx_id"]) <= set(payments["tx_id"]) and commissions.height > 0


def test_a_shops_sign_up_drive_binds_a_mornings_customers_some_paying_big_elsewhere(
    world: World,
) -> None:
    events = _group_events(world, "shop_binding_burst")
    bindings = events.filter(pl.col("kind") == "binding")
    drives = bindings.group_by("merchant_id").agg(
        pl.len().alias("bound"), (pl.col("ts").max() - pl.col("ts").min()).alias("span")
    )
    assert (drives["bound"] >= 15).all() and (drives["span"] < 3 * HOUR_MS).all()
    payments = _group_payments(world, "shop_binding_burst")
    lead = (
        payments.join(bindings.select("user_id", "merchant_id", "ts"), on="user_id", suffix="_b")
        .filter(pl.col("merchant_id") != pl.col("merchant_id_b"))
        .filter((pl.col("ts") > pl.col("ts_b")) & (pl.col("ts") < pl.col("ts_b") + HOUR_MS))
    )
    assert lead.height > 0  # a payment elsewhere within the hour of a binding, as a hijack's


def test_relatives_give_their_points_to_the_family_shopper_who_spends_them(
    world: World,
) -> None:
    events = _group_events(world, "family_points")
    received = events.filter(pl.col("kind") == "points_grant")
    givers = received.group_by("user_id").agg(pl.col("counterparty_id").n_unique())
    # 4-15 relatives, of whom those with points to give do: most families, several.
    assert givers["counterparty_id"].max() >= 4
    transfers = events.filter(pl.col("kind") == "points_transfer")
    assert set(transfers["counterparty_id"]) == set(givers["user_id"])
    spent = events.filter(pl.col("kind") == "points_redeem")
    assert set(spent["user_id"]) <= set(givers["user_id"]) and spent.height > 0
    payments = _group_payments(world, "family_points")
    # Givers are people with lives: most pay besides giving.
    assert len(set(transfers["user_id"]) & set(payments["user_id"])) > 0


def test_a_family_gives_and_spends_only_what_the_points_policy_lets_leave_its_books(
    world: World,
) -> None:
    """The app offers what the policy lets leave a book: each relative's gift is within
    the redeemable share of what their payments before it earned, the shopper spends
    within the share of what was given, and their points leave in no voucher of their own
    (which would ask for the same points twice)."""
    share = SMALL.redeemable_share
    events = _group_events(world, "family_points")
    transfers = events.filter(pl.col("kind") == "points_transfer")
    assert transfers.height > 0
    # What their payments earned in the book: each one's rebate, and the consumption points
    # the platform grants on it.
    rebates = world.transactions.filter(pl.col("kind") == "payment").select(
        "user_id",
        pl.col("ts").alias("paid"),
        (pl.col("amount_cents") * (pl.col("rebate_rate") * 1_000_000).round().cast(pl.Int64))
        .floordiv(1_000_000)
        .alias("points"),
    )
    consumption = world.platform_events.filter(
        (pl.col("kind") == "points_grant") & pl.col("tx_id").is_not_null()
    ).select("user_id", pl.col("ts").alias("paid"), pl.col("amount_cents").alias("points"))
    earned = (
        transfers.select("event_id", "user_id", "ts", "amount_cents")
        .join(pl.concat([rebates, consumption]), on="user_id", how="left")
        .group_by("event_id", "amount_cents")
        .agg(pl.col("points").filter(pl.col("paid") < pl.col("ts")).sum())
    )
    assert (earned["amount_cents"] <= (earned["points"] * share).floor()).all()
    assert (earned["amount_cents"] % 100 == 0).all() and (earned["amount_cents"] > 0).all()
    received = (
        events.filter(pl.col("kind") == "points_grant")
        .group_by("user_id")
        .agg(pl.col("amount_cents").sum().alias("received"))
    )
    spent = (
        events.filter(pl.col("kind") == "points_redeem")
        .group_by("user_id")
        .agg(pl.col("amount_cents").sum().alias("spent"))
        .join(received, on="user_id")
    )
    assert spent.height > 0 and (spent["spent"] <= (spent["received"] * share).floor()).all()
    family = world.user_truth.filter(pl.col("role") == "family_points")["user_id"]
    own = _with_truth(world).filter(
        pl.col("user_id").is_in(family.implode())
        & pl.col("kind").is_in(["points_redeem", "points_transfer"])
        & (pl.col("group") != "family_points")
    )
    assert own.is_empty()


def test_coupon_hunters_on_one_network_claim_coupons_and_use_them_minutes_later(
    world: World,
) -> None:
    events = _group_events(world, "coupon_hunters")
    claims = events.filter(pl.col("kind") == "coupon_issue")
    used = events.filter(pl.col("kind") == "coupon_redeem")
    assert used.height > 0.5 * claims.height
    waited = used.join(claims.select("coupon_id", pl.col("ts").alias("claimed")), on="coupon_id")
    delay = waited["ts"] - waited["claimed"]
    assert (delay >= MINUTE_MS).all() and (delay <= 2 * HOUR_MS).all()
    per_ip = claims.group_by("ip").agg(pl.col("user_id").n_unique())["user_id"]
    assert per_ip.max() >= 5  # many accounts' claims on one network, as a farm's
    per_day = claims.group_by("user_id", pl.col("ts") // DAY_MS).len()["len"]
    assert per_day.max() >= 3
    payments = _group_payments(world, "coupon_hunters")
    assert set(used["tx_id"]) <= set(payments["tx_id"])


def test_a_shops_bound_regulars_come_back_and_earn_it_commission_elsewhere(
    world: World,
) -> None:
    events = _group_events(world, "bound_regulars")
    payments = _group_payments(world, "bound_regulars")
    bindings = events.filter(pl.col("kind") == "binding")
    at = bindings.join(payments, on=["user_id", "ts"], suffix="_paid")
    assert at.height == bindings.height and (at["merchant_id"] == at["merchant_id_paid"]).all()
    commissions = events.filter(pl.col("kind") == "retention_commission")
    on = commissions.join(payments, on="tx_id", suffix="_paid")
    assert on.height == commissions.height
    assert (on["merchant_id_paid"] != on["merchant_id"]).any()
    assert (on["merchant_id_paid"] == on["merchant_id"]).any()


def test_a_shops_regulars_re_scan_its_code_pay_there_and_some_days_big_elsewhere(
    world: World,
) -> None:
    """`rescan_regulars`: bound again and again to the shop they belong to, mostly paying
    there minutes after the scan; on some of those days a big payment elsewhere follows
    within hours (a re-binding right before a big payment elsewhere, as a hijacker's)."""
    events = _group_events(world, "rescan_regulars")
    payments = _group_payments(world, "rescan_regulars")
    bindings = events.filter(pl.col("kind") == "binding").sort("ts")
    shops = bindings.group_by("user_id").agg(pl.col("merchant_id").n_unique(), pl.len())
    assert (shops["merchant_id"] == 1).all() and (shops["len"] > 1).any()
    scans = bindings.with_columns(pl.col("merchant_id").alias("shop")).select(
        "user_id", "shop", pl.col("ts").alias("scanned")
    )
    after = scans.join(payments, on="user_id").filter(
        (pl.col("ts") >= pl.col("scanned")) & (pl.col("ts") < pl.col("scanned") + DAY_MS)
    )
    soon = pl.col("ts") < pl.col("scanned") + 15 * MINUTE_MS
    at_shop = after.filter((pl.col("merchant_id") == pl.col("shop")) & soon)
    # Most bindings (the first, made at a payment, and the scans after): paid at the counter.
    assert at_shop.select("user_id", "scanned").n_unique() > bindings.height / 2
    big_elsewhere = after.filter(
        (pl.col("merchant_id") != pl.col("shop")) & (pl.col("amount_cents") > 50_000)
    )
    assert big_elsewhere.height > 0
    assert len(set(big_elsewhere["user_id"]) & set(at_shop["user_id"])) > 0


def test_a_user_a_group_binds_is_not_bound_again_by_the_platform(world: World) -> None:
    """The platform's economics bind half the users to their first merchant; the users an
    abuse group or a look-alike binds (at the group's own merchant) are not among them: no
    user carries a group's binding and an ordinary one."""
    bindings = _with_truth(world).filter(pl.col("kind") == BINDING)
    by_group = (pl.col("scenario") != "") | (pl.col("group") != "")
    grouped = set(bindings.filter(by_group)["user_id"])
    ordinary = set(bindings.filter(~by_group)["user_id"])
    assert len(grouped) > 100 and len(ordinary) > 500
    assert not grouped & ordinary
    assert bindings.filter(~by_group)["user_id"].is_unique().all()


#: Hijack groups only, often enough for a few in a small world; their accomplices adapted.
HIJACKS = WorldConfig(seed=5, n_users=1_500, n_merchants=80, days=10, binding_hijack_per_100k=40.0)


def test_adapted_hijackers_pay_a_token_at_the_binder_before_their_big_payments() -> None:
    """`hijack_token_share`: between a hijacking binding and its big payment elsewhere, the
    accomplice pays the binder a token (a cent to a fifth of its ticket) so that the binding
    looks visited; the tokens are fraud of the scenario, and the rest of the world is what it
    was without them (their own random stream)."""
    plain = simulate_world(HIJACKS)
    adapted = simulate_world(replace(HIJACKS, hijack_token_share=0.5))
    bindings = _abuse_events(adapted).filter(pl.col("kind") == "binding")
    assert set(bindings["scenario"]) == {"binding_hijack"}
    binders = bindings.select("user_id", pl.col("merchant_id").alias("binder")).unique()
    paid = adapted.transactions.join(adapted.tx_truth, on="tx_id").join(binders, on="user_id")
    tokens = paid.filter(pl.col("merchant_id") == pl.col("binder"))
    big = paid.filter(pl.col("merchant_id") != pl.col("binder"))
    assert tokens.height > 0 and big.height > 0
    assert tokens["is_fraud"].all() and set(tokens["scenario"]) == {"binding_hijack"}
    # A services shop's ticket is about 9,000 (its median, within x2 for most shops).
    assert tokens["amount_cents"].min() >= 1 and tokens["amount_cents"].max() < 9_000 * 2 // 5
    # Each token lies between a binding and the accomplice's next big payment.
    bound = bindings.select("user_id", pl.col("ts").alias("bound"))
    inside = (
        tokens.join(bound, on="user_id")
        .join(big.select("user_id", pl.col("ts").alias("big_ts")), on="user_id")
        .filter((pl.col("bound") < pl.col("ts")) & (pl.col("ts") < pl.col("big_ts")))
        .filter(pl.col("big_ts") - pl.col("bound") < round(HIJACKS.hijack_lead_minutes * MINUTE_MS))
    )
    assert set(inside["tx_id"]) == set(tokens["tx_id"])
    assert 0.2 < tokens.height / big.height < 0.8
    # The commission on a token is the platform's: none on a few cents.
    earned = _abuse_events(adapted).filter(pl.col("kind") == "retention_commission")
    assert set(earned["tx_id"]) & set(tokens["tx_id"]) <= set(
        tokens.filter(pl.col("amount_cents") >= 100)["tx_id"]
    )
    # Without them, the same world but for the tokens (ids aside: they are numbered in time).
    key = ["ts", "user_id", "merchant_id", "amount_cents"]
    assert plain.signups.equals(adapted.signups)
    rest = adapted.transactions.join(tokens.select("tx_id"), on="tx_id", how="anti")
    assert rest.select(key).equals(plain.transactions.select(key))
    assert (
        not plain.transactions.join(binders, on="user_id")
        .filter(pl.col("merchant_id") == pl.col("binder"))
        .height
    )
