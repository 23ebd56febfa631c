"""The abuse of the commission, coupon and points flows in the simulator
(`rebate_guard.tools.simulator._abuse_economics`): each group's payments are fraud in the
truth, and its platform events are valid contract records that make it what it is."""

from __future__ import annotations

import polars as pl
import pytest

from rebate_guard.contract.time import HOUR_MS
from rebate_guard.contract.validation import parse_platform_event
from rebate_guard.tools.simulator import World, WorldConfig, simulate_world
from rebate_guard.tools.simulator.profiles import FLOW_ABUSE, world_config

SMALL = WorldConfig(seed=4, n_users=3_000, n_merchants=120, days=14, **FLOW_ABUSE)


@pytest.fixture(scope="module")
def world() -> World:
    return simulate_world(SMALL)


def _abuse_events(world: World) -> pl.DataFrame:
    return world.platform_events.filter(pl.col("event_id").str.starts_with("pa"))


def _fraud_of(world: World, scenario: str) -> pl.DataFrame:
    truth = world.tx_truth.filter(pl.col("scenario") == scenario)
    assert truth["is_fraud"].all() and truth.height > 0
    return world.transactions.join(truth, on="tx_id")


def test_the_groups_events_are_valid_platform_events(world: World) -> None:
    events = _abuse_events(world)
    assert events.height > 0 and events["event_id"].is_unique().all()
    for row in events.iter_rows(named=True):
        parse_platform_event(row)  # raises on a record the contract refuses
    assert events["ts"].is_between(SMALL.start_ts_ms, SMALL.end_ts_ms).all()


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
    events = _abuse_events(world)
    received = events.filter(pl.col("kind") == "points_grant")
    collectors = set(received["user_id"])
    assert (
        received.group_by("user_id")
        .agg(pl.col("counterparty_id").n_unique())["counterparty_id"]
        .min()
        >= 8
    )
    spent = events.filter(pl.col("kind") == "points_redeem")
    assert set(spent["user_id"]) <= collectors
    paid = _fraud_of(world, "points_collector")
    assert collectors <= set(paid["user_id"])


def test_only_the_random_profile_and_configs_asking_for_them_have_these_groups() -> None:
    bare = simulate_world(WorldConfig(seed=4, n_users=1_000, n_merchants=60, days=7))
    assert _abuse_events(bare).is_empty()
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
