"""The simulator's platform economics (`World.platform_events`): every event is a contract
event, the flows add up (settlements to the discount owed, redemptions within the
redeemable share, commissions after bindings, coupons at their issuer), and the books
behave as a platform's: below the warning line while it grows, past it days after a stall."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from rebate_guard.contract.records import (
    BINDING,
    COUPON_EXPIRE,
    COUPON_ISSUE,
    COUPON_REDEEM,
    MERCHANT_SETTLEMENT,
    PLATFORM_EVENT_KINDS,
    POINTS_EXPIRE,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_REQUESTS,
    POINTS_TRANSFER,
    POOL_TOPUP,
    RETENTION_COMMISSION,
    requested_rebate_cents,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS
from rebate_guard.contract.validation import parse_platform_event
from rebate_guard.core.policy import default_policy
from rebate_guard.tools.simulator import (
    World,
    WorldConfig,
    event_stream,
    platform_books,
    simulate_world,
    world_config,
)
from rebate_guard.tools.simulator._common import ABUSE_SCENARIOS
from rebate_guard.tools.simulator._economics import _NEVER, REFUND_VOIDS_REBATE_MS, _rebate_voided
from rebate_guard.tools.simulator.profiles import FLOW_ABUSE, FLOW_LOOKALIKE_RATES, SURVIVOR

#: The platform's own flows: the abuse of them and its look-alikes (`_abuse_economics`,
#: `_flow_lookalikes`, their own tests) break what is checked here on purpose (bindings
#: repeated, transfers past the redeemable share, coupons claimed without a payment before).
NO_FLOW_ABUSE = dict.fromkeys([*FLOW_ABUSE, *FLOW_LOOKALIKE_RATES], 0.0)
SMALL = WorldConfig(seed=11, n_users=3_000, n_merchants=120, days=14, **NO_FLOW_ABUSE)
#: Worlds the books are measured on: a platform growing as the simulator's does (a fifth of
#: its users join within its four weeks), and the same platform stalling on day 10.
GROWING = WorldConfig(n_users=10_000, n_merchants=400, days=28)
STALL_DAY = 10
WARNING = 3.0


@pytest.fixture(scope="module")
def world() -> World:
    return simulate_world(SMALL)


@pytest.fixture(scope="module")
def events(world: World) -> pl.DataFrame:
    return world.platform_events


def _of(events: pl.DataFrame, kind: str) -> pl.DataFrame:
    return events.filter(pl.col("kind") == kind)


def test_every_platform_event_is_a_contract_event_and_every_flow_is_there(
    events: pl.DataFrame,
) -> None:
    for row in events.iter_rows(named=True):
        assert parse_platform_event(row).asdict() == row
    kinds = set(events["kind"])
    assert kinds <= set(PLATFORM_EVENT_KINDS)
    assert kinds >= {
        MERCHANT_SETTLEMENT,
        POOL_TOPUP,
        POINTS_GRANT,
        POINTS_REDEEM,
        POINTS_EXPIRE,
        POINTS_TRANSFER,
        BINDING,
        RETENTION_COMMISSION,
        COUPON_ISSUE,
        COUPON_REDEEM,
        COUPON_EXPIRE,
    }
    assert events["event_id"].is_unique().all()
    assert events["ts"].is_sorted()
    start, end = SMALL.start_ts_ms, SMALL.end_ts_ms
    assert start <= events["ts"].min() and events["ts"].max() < end  # the window's books


def test_economics_are_deterministic_and_leave_the_contract_streams_alone(world: World) -> None:
    again = simulate_world(SMALL)
    assert_frame_equal(world.platform_events, again.platform_events)
    assert_frame_equal(world.platform_truth, again.platform_truth)
    # The platform's own events are legit, of no group, but for the points requests of
    # abusive accounts: fraud, of the account's scenario.
    assert world.platform_truth["event_id"].equals(world.platform_events["event_id"])
    truth = world.platform_truth.join(world.platform_events, on="event_id").join(
        world.user_truth, on="user_id", how="left"
    )
    abusive = pl.col("role").is_in(list(ABUSE_SCENARIOS)) & pl.col("kind").is_in(
        list(POINTS_REQUESTS)
    )
    fraud = truth.filter(abusive.fill_null(False))
    assert fraud.height > 0 and fraud["is_fraud"].all()
    assert fraud["scenario"].equals(fraud["role"], check_names=False)
    rest = truth.filter(~abusive.fill_null(False))
    assert not rest["is_fraud"].any() and set(rest["scenario"]) == {""}
    assert set(world.platform_truth["group"]) == {""}
    other = simulate_world(replace(SMALL, seed=12))
    assert not other.platform_events.equals(world.platform_events)
    without = simulate_world(replace(SMALL, economics=False))
    assert without.platform_events.is_empty() and without.platform_truth.is_empty()
    for name in ("transactions", "signups", "labels"):
        assert_frame_equal(getattr(without, name), getattr(world, name))


def test_what_users_ask_for_leaves_the_other_flows_alone(events: pl.DataFrame) -> None:
    """Every draw of the points is made before the vouchers' amounts are known: users
    asking for other amounts (here, under a tiny redeemable share: many uses then have
    nothing to ask) bind, earn commissions and get coupons exactly as before."""
    fewer = simulate_world(replace(SMALL, redeemable_share=0.001)).platform_events
    points = (POINTS_REDEEM, POINTS_TRANSFER, POINTS_EXPIRE, POINTS_GRANT)
    assert not _of(fewer, POINTS_REDEEM).equals(_of(events, POINTS_REDEEM))

    def others(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(~pl.col("kind").is_in(points)).drop("event_id")

    assert others(events).height > 1_000
    assert_frame_equal(others(fewer), others(events))


def test_events_naming_a_merchant_carry_its_one_region(world: World, events: pl.DataFrame) -> None:
    named = events.filter(pl.col("merchant_id").is_not_null())
    assert named["region"].null_count() == 0
    regions = named.select("merchant_id", "region").unique()
    assert regions["merchant_id"].is_unique().all()
    truth = world.merchant_truth.select("merchant_id", "region")
    assert (
        regions.join(truth, on="merchant_id", suffix="_truth")
        .filter(pl.col("region") != pl.col("region_truth"))
        .is_empty()
    )
    assert 2 <= truth["region"].n_unique() <= SMALL.regions


def _owed(world: World, before_ms: int) -> pl.DataFrame:
    payments = world.transactions.filter(
        (pl.col("kind") == "payment") & (pl.col("ts") < before_ms)
    ).select("merchant_id", "amount_cents", "rebate_rate")
    owed = [requested_rebate_cents(a, r) for _, a, r in payments.iter_rows()]
    return (
        payments.with_columns(pl.Series("owed", owed))
        .group_by("merchant_id")
        .agg(pl.col("owed").sum())
    )


def test_merchants_settle_the_discount_they_owe_less_the_late_and_partial_ones(
    world: World, events: pl.DataFrame
) -> None:
    end = SMALL.end_ts_ms
    settled = (
        _of(events, MERCHANT_SETTLEMENT).group_by("merchant_id").agg(pl.col("amount_cents").sum())
    )
    # A merchant's day closes at its own cut-off and is paid 1-3 h later (late ones 2-7
    # days later): what was owed a day and 3 h before the end is paid by then.
    books = (
        _owed(world, end)
        .join(_owed(world, end - DAY_MS - 3 * HOUR_MS), on="merchant_id", suffix="_due")
        .join(settled, on="merchant_id", how="left")
        .join(world.merchant_truth.select("merchant_id", "settlement"), on="merchant_id")
        .fill_null(0)
    )
    on_time = books.filter(pl.col("settlement") == "on_time")
    assert on_time.height > 0.85 * books.height  # late and partial ones: a minority
    assert (on_time["owed_due"] <= on_time["amount_cents"]).all()
    assert (on_time["amount_cents"] <= on_time["owed"]).all()
    partial = books.filter(pl.col("settlement") == "partial")
    assert (partial["amount_cents"] <= 0.9 * partial["owed"]).all()
    assert (partial["amount_cents"] >= 0.5 * partial["owed_due"] - 1).all()
    late = books.filter(pl.col("settlement") == "late")
    late_due = _owed(world, end - 2 * DAY_MS).join(late, on="merchant_id", suffix="_late")
    assert (late_due["amount_cents"] <= late_due["owed"]).all()
    assert late.height and partial.height
    # In all, the platform is paid most of what it is owed, not all of it.
    assert 0.8 * books["owed"].sum() < books["amount_cents"].sum() < books["owed"].sum()


def test_points_move_within_what_users_earned_and_may_redeem(world: World) -> None:
    """Each user's points book in event order, as the platform keeps it (payments' requested
    rebates and grants earn, a refund within the refund window claws its payment's rebate
    back); redemptions and transfers stay within floor(share x earned), so within what the
    app shows; expiry within the balance."""
    share_ppm = round(SMALL.redeemable_share * 1_000_000)
    window = default_policy().ledger.refund_window_ms
    earned: dict[str, int] = defaultdict(int)
    spent: dict[str, int] = defaultdict(int)  # redeemed + transferred out
    lapsed: dict[str, int] = defaultdict(int)
    paid: dict[str, tuple[int, int]] = {}  # tx_id -> (ts, rebate)
    moves = after_clawback = 0
    clawed_back: set[str] = set()
    for topic, _, event in event_stream(world):
        if topic == "transactions":
            user = event["user_id"]
            if event["kind"] == "payment":
                rebate = requested_rebate_cents(event["amount_cents"], event["rebate_rate"])
                earned[user] += rebate
                paid[event["tx_id"]] = (event["ts"], rebate)
            elif event["ts"] - paid[event["ref_tx_id"]][0] <= window:
                earned[user] -= paid[event["ref_tx_id"]][1]
                clawed_back.add(user)
        elif topic == "platform-events":
            user, kind, amount = event["user_id"], event["kind"], event["amount_cents"]
            if kind == POINTS_GRANT:
                earned[user] += amount
            elif kind in (POINTS_REDEEM, POINTS_TRANSFER):
                spent[user] += amount
                moves += 1
                after_clawback += user in clawed_back
                assert spent[user] <= earned[user] * share_ppm // 1_000_000, event
            elif kind == POINTS_EXPIRE:
                lapsed[user] += amount
            if kind in (POINTS_REDEEM, POINTS_TRANSFER, POINTS_EXPIRE):
                assert spent[user] + lapsed[user] <= earned[user], event
    assert moves > 1_000
    assert after_clawback > 20  # the refunds' clawbacks are in play


def test_the_refund_window_is_the_platforms() -> None:
    """The app shows the book the shipped policy keeps: a refund voids its payment's
    rebate within the policy's window, the simulator's mirror of it."""
    assert default_policy().ledger.refund_window_ms == REFUND_VOIDS_REBATE_MS


def test_a_rebate_is_voided_by_a_refund_within_the_window_only() -> None:
    pay = pl.DataFrame({"tx_id": ["a", "b", "c"], "ts": [0, 0, 0]})
    transactions = pl.DataFrame(
        {
            "kind": ["payment", "payment", "payment", "refund", "refund"],
            "tx_id": ["a", "b", "c", "ra", "rb"],
            "ref_tx_id": [None, None, None, "a", "b"],
            "ts": [0, 0, 0, REFUND_VOIDS_REBATE_MS, REFUND_VOIDS_REBATE_MS + 1],
        }
    )
    voided = _rebate_voided(transactions, pay).tolist()
    assert voided == [REFUND_VOIDS_REBATE_MS, _NEVER, _NEVER]


def test_a_transfer_is_followed_by_the_receivers_grant(events: pl.DataFrame) -> None:
    transfers = _of(events, POINTS_TRANSFER)
    assert transfers.height > 0
    received = _of(events, POINTS_GRANT).filter(pl.col("counterparty_id").is_not_null())
    pairs = transfers.join(
        received,
        left_on=["counterparty_id", "user_id", "amount_cents"],
        right_on=["user_id", "counterparty_id", "amount_cents"],
        suffix="_grant",
    )
    assert pairs.height == transfers.height == received.height
    assert (pairs["ts_grant"] == pairs["ts"] + 1).all()


def test_bindings_come_before_the_commissions_they_earn(world: World, events: pl.DataFrame) -> None:
    bindings = _of(events, BINDING)
    assert bindings["user_id"].is_unique().all()
    assert (bindings["amount_cents"] == 0).all()
    # Bound to the merchant of the user's first payment.
    first = (
        world.transactions.filter(pl.col("kind") == "payment")
        .group_by("user_id")
        .agg(pl.col("merchant_id").sort_by("ts").first().alias("first_paid_at"))
    )
    bound = bindings.join(first, on="user_id")
    assert bound.height == bindings.height
    assert (bound["merchant_id"] == bound["first_paid_at"]).all()
    commissions = _of(events, RETENTION_COMMISSION).join(
        bindings.select("user_id", "merchant_id", pl.col("ts").alias("bound_at")),
        on="user_id",
        how="left",
        suffix="_bound",
    )
    assert commissions.height > 0
    assert (commissions["merchant_id"] == commissions["merchant_id_bound"]).all()
    assert (commissions["bound_at"] < commissions["ts"]).all()
    paid = commissions.join(
        world.transactions.select("tx_id", "user_id", "amount_cents", pl.col("ts").alias("paid")),
        on="tx_id",
        suffix="_tx",
    )
    assert paid.height == commissions.height
    assert (paid["user_id"] == paid["user_id_tx"]).all()
    assert (paid["ts"] == paid["paid"] + 1).all()
    rate = paid["amount_cents"] / paid["amount_cents_tx"]
    assert rate.max() <= SMALL.retention_commission_max
    # Per binding merchant one rate in 0.2-1 %: its commissions' rates spread within it.
    assert rate.min() >= SMALL.retention_commission_min * 0.5


def test_coupons_are_redeemed_only_at_their_issuer_after_issue(
    world: World, events: pl.DataFrame
) -> None:
    issued = _of(events, COUPON_ISSUE)
    assert issued["coupon_id"].is_unique().all()
    redeemed = _of(events, COUPON_REDEEM).join(issued, on="coupon_id", suffix="_issue")
    assert redeemed.height == _of(events, COUPON_REDEEM).height > 0
    assert (redeemed["merchant_id"] == redeemed["merchant_id_issue"]).all()
    assert (redeemed["user_id"] == redeemed["user_id_issue"]).all()
    assert (redeemed["ts"] > redeemed["ts_issue"]).all()
    valid_ms = round(SMALL.coupon_valid_days * DAY_MS)
    assert (redeemed["ts"] < redeemed["ts_issue"] + valid_ms).all()
    paid = redeemed.join(world.transactions, on="tx_id", suffix="_tx")
    assert paid.height == redeemed.height
    assert (paid["merchant_id"] == paid["merchant_id_tx"]).all()
    assert (paid["ts"] == paid["ts_tx"]).all()
    expired = _of(events, COUPON_EXPIRE)
    assert not set(expired["coupon_id"]) & set(redeemed["coupon_id"])
    assert set(expired["coupon_id"]) | set(redeemed["coupon_id"]) <= set(issued["coupon_id"])
    # Pushed within 30 min of a payment at another merchant of the same region.
    region = world.merchant_truth.select("merchant_id", "region")
    payments = (
        world.transactions.filter(pl.col("kind") == "payment")
        .select("user_id", pl.col("ts").alias("paid"), pl.col("merchant_id").alias("paid_at"))
        .join(region.rename({"region": "paid_in"}), left_on="paid_at", right_on="merchant_id")
    )
    pushed = (
        issued.join(payments, on="user_id")
        .filter(pl.col("paid").is_between(pl.col("ts") - 30 * 60_000, pl.col("ts") - 1))
        .group_by("coupon_id")
        .agg(
            ((pl.col("region") == pl.col("paid_in")) & (pl.col("merchant_id") != pl.col("paid_at")))
            .any()
            .alias("after_a_neighbour")
        )
    )
    assert pushed.height == issued.height
    assert pushed["after_a_neighbour"].all()


def test_a_stall_cuts_signups_and_new_money_but_not_payments() -> None:
    config = replace(SMALL, days=21)
    stall = config.start_ts_ms + STALL_DAY * DAY_MS
    growing = simulate_world(config)
    stalled = simulate_world(replace(config, stall_day=STALL_DAY))

    def after(world: World, frame: str) -> pl.DataFrame:
        return getattr(world, frame).filter(pl.col("ts") >= stall)

    assert after(stalled, "signups").height < 0.4 * after(growing, "signups").height
    new_money = [after(w, "platform_events").filter(pl.col("kind") == POOL_TOPUP) for w in
                 (growing, stalled)]  # fmt: skip
    assert new_money[1]["amount_cents"].sum() < 0.3 * new_money[0]["amount_cents"].sum()
    # Before the stall, about the same growth (its viral wave is cut short).
    before = [w.signups.filter(pl.col("ts").is_between(config.start_ts_ms, stall - 1)) for w in
              (growing, stalled)]  # fmt: skip
    assert abs(before[0].height - before[1].height) < 0.1 * before[0].height
    # Existing users keep paying: about as many payments after it.
    paid = [after(w, "transactions").height for w in (growing, stalled)]
    assert paid[1] > 0.9 * paid[0]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_growing_platform_stays_below_the_warning_line_and_a_stall_crosses_it(
    seed: int,
) -> None:
    """The liability : distributable ratio (docs/economics.md, granted = requested) per day:
    it moves while the platform grows but stays below 3:1 after the first days; after a
    stall, paying out without new money takes it past 3 within days."""
    config = replace(GROWING, seed=seed)
    growing = platform_books(simulate_world(config))
    warm = growing.filter(pl.col("period_end") >= config.start_ts_ms + 3 * DAY_MS)
    assert warm["ratio"].null_count() == 0
    assert warm["ratio"].max() < WARNING
    assert warm["ratio"].max() - warm["ratio"].min() > 0.5  # it moves
    stall = config.start_ts_ms + STALL_DAY * DAY_MS
    stalled = platform_books(simulate_world(replace(config, stall_day=STALL_DAY)))
    crossed = stalled.filter(pl.col("ratio").is_null() | (pl.col("ratio") >= WARNING))["period_end"]
    assert crossed.len() > 0
    assert stall < crossed.min() <= stall + 5 * DAY_MS


def test_new_money_names_the_depositors_region_and_capital_none(
    world: World, events: pl.DataFrame
) -> None:
    """A deposit counts in its depositor's region (docs/economics.md): where they pay most,
    or, without a payment, a region of the world's; a joining fee names its merchant's; the
    platform's capital names none."""
    topups = _of(events, POOL_TOPUP)
    deposits = topups.filter(pl.col("user_id").is_not_null())
    capital = topups.filter(pl.col("user_id").is_null() & pl.col("merchant_id").is_null())
    assert deposits.height > 100 and capital.height >= 1
    assert deposits["region"].null_count() == 0
    assert capital["region"].is_null().all()
    regions = set(world.merchant_truth["region"])
    assert set(deposits["region"]) <= regions and len(set(deposits["region"])) >= 2
    paid = (
        world.transactions.filter(pl.col("kind") == "payment")
        .join(world.merchant_truth.select("merchant_id", "region"), on="merchant_id")
        .group_by("user_id", "region")
        .len()
    )
    most = paid.group_by("user_id").agg(pl.col("len").max().alias("most"))
    home = deposits.join(paid, on=["user_id", "region"], how="left").join(
        most, on="user_id", how="left"
    )
    payers = home.filter(pl.col("most").is_not_null())
    assert payers.height > 0.5 * deposits.height
    assert (payers["len"] == payers["most"]).all()  # a region they pay most in


def test_a_sign_up_bonus_names_its_users_region_as_a_deposit_does(
    world: World, events: pl.DataFrame
) -> None:
    """A sign-up bonus names no merchant: it counts in its user's region (docs/events.md,
    `region`), the one their deposit names if they made one, and so does its lapsing part;
    a transfer's receiving grant stays the platform's alone (no region)."""
    grants = _of(events, POINTS_GRANT).filter(pl.col("merchant_id").is_null())
    bonuses = grants.filter(pl.col("counterparty_id").is_null())
    received = grants.filter(pl.col("counterparty_id").is_not_null())
    assert bonuses.height > 100 and received.height > 0
    assert bonuses["region"].null_count() == 0 and received["region"].is_null().all()
    assert set(bonuses["region"]) <= set(world.merchant_truth["region"])
    deposits = _of(events, POOL_TOPUP).filter(pl.col("user_id").is_not_null())
    both = bonuses.join(deposits, on="user_id", suffix="_deposit")
    assert both.height > 0.3 * bonuses.height
    assert (both["region"] == both["region_deposit"]).all()
    lapsed = _of(events, POINTS_EXPIRE).join(bonuses, on="user_id", suffix="_bonus")
    assert lapsed.height > 0 and (lapsed["region"] == lapsed["region_bonus"]).all()


def test_the_survivor_funds_its_points_from_the_discount() -> None:
    """The survivor profile is the default world (same payments, signups, labels) whose
    consumption points are half of each payment's discount, not of its bill."""
    survivor = simulate_world(world_config("survivor", seed=4, transactions=5_000))
    default = simulate_world(world_config("default", seed=4, transactions=5_000))
    for name in ("transactions", "signups", "labels"):
        assert_frame_equal(getattr(survivor, name), getattr(default, name))
    payments = survivor.transactions.filter(pl.col("kind") == "payment")
    discount = {
        t: requested_rebate_cents(a, r)
        for t, a, r in payments.select("tx_id", "amount_cents", "rebate_rate").iter_rows()
    }
    grants = _of(survivor.platform_events, POINTS_GRANT).filter(pl.col("tx_id").is_not_null())
    assert grants.height == sum(1 for d in discount.values() if d >= 2)  # floor > 0
    for tx_id, points in grants.select("tx_id", "amount_cents").iter_rows():
        assert points == discount[tx_id] // 2
    bill = _of(default.platform_events, POINTS_GRANT).filter(pl.col("tx_id").is_not_null())
    assert grants["amount_cents"].sum() < 0.2 * bill["amount_cents"].sum()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_survivor_stays_below_the_warning_line_even_after_a_deep_stall(seed: int) -> None:
    """Its points need no growth: the ratio (granted = requested, per day) stays under 3:1
    growing, after a stall on day 10, and when nobody joins after day 3; a stall raises it
    towards what the discount alone holds (at most 2.25, `profiles.SURVIVOR`)."""
    config = replace(GROWING, seed=seed, **SURVIVOR)
    warm = config.start_ts_ms + 3 * DAY_MS
    ratios = {}
    for name, stall in (
        ("growing", {}),
        ("stall", {"stall_day": STALL_DAY}),
        ("deep", {"stall_day": 3, "stall_signup_share": 0.0}),
    ):
        books = platform_books(simulate_world(replace(config, **stall)))
        ratio = books.filter(pl.col("period_end") >= warm)["ratio"]
        assert ratio.null_count() == 0 and ratio.max() < WARNING, name
        ratios[name] = ratio[-1]
    assert ratios["growing"] < ratios["stall"] < ratios["deep"]
