"""The platform's economics as `platform-events` (docs/simulator.md, "Platform economics").

From a world's payments, signups and merchants: merchants' regions and daily settlements
(the discount that funds the rebates), new money (membership deposits, joining fees,
capital), the platform's own points (consumption points, sign-up bonuses, their
redemption within the redeemable share, expiry, transfers), bindings with their retention
commissions, and coupons. Vectorised: loops run only per region and per capital round.
`platform_books` adds the books up per period (docs/economics.md, with granted = requested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from rebate_guard.contract.records import (
    BINDING,
    COUPON_EXPIRE,
    COUPON_ISSUE,
    COUPON_REDEEM,
    MERCHANT_SETTLEMENT,
    POINTS_EXPIRE,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_TRANSFER,
    POOL_TOPUP,
    RETENTION_COMMISSION,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.tools.simulator._common import (
    ABUSE_SCENARIOS,
    FAMILY_POINTS,
    LOOKALIKES,
    lognormal_delay,
    weighted_choice,
)
from rebate_guard.tools.simulator.config import WorldConfig

REGIONS = ("north", "east", "south", "west", "central", "northeast", "southwest", "northwest")
#: Settlement behaviour of a merchant (merchant_truth's `settlement`).
ON_TIME, LATE, PARTIAL = "on_time", "late", "partial"
PPM = 1_000_000
_TS_BITS = 42  # (user, ts) packed in one int64: ts relative to the history's start
#: The platform's terms the app's points book follows: a refund this soon after its payment
#: voids the payment's rebate (the shipped policy's `ledger.refund_voids_within_hours`).
REFUND_VOIDS_REBATE_MS = 72 * HOUR_MS
_NEVER = np.iinfo(np.int64).max
HOME_REGION_SALT = 0x40E  # the users' home regions' own random stream
_NONE = -1


@dataclass
class _Events:
    """Columns of one kind of generated events; indices are -1 where the field is null."""

    kind: str
    ts: np.ndarray
    amount: np.ndarray
    user: np.ndarray | None = None  # signup row
    merchant: np.ndarray | None = None  # merchant row
    tx: np.ndarray | None = None  # payment row
    coupon: np.ndarray | None = None
    counterparty: np.ndarray | None = None  # signup row
    place_payment: np.ndarray | None = None  # device/ip: of this payment row ...
    place_signup: np.ndarray | None = None  # ... or of this signup row
    region: np.ndarray | None = None  # region row, for events naming no merchant


def _col(values: np.ndarray | None, n: int) -> np.ndarray:
    return np.full(n, _NONE, dtype=np.int64) if values is None else values.astype(np.int64)


def _ppm(rate: np.ndarray | float) -> np.ndarray:
    return np.round(np.asarray(rate, dtype=np.float64) * PPM).astype(np.int64)


def _share(cents: np.ndarray, share: np.ndarray | float) -> np.ndarray:
    """floor(cents x share), exact to the millionth (as the contract's rebates)."""
    return np.asarray(cents, dtype=np.int64) * _ppm(share) // PPM


def _round_units(cents: np.ndarray) -> np.ndarray:
    """To whole currency units (100 cents), at least one."""
    return np.maximum(100, np.round(np.asarray(cents, dtype=np.float64) / 100) * 100).astype(
        np.int64
    )


@dataclass
class _Platform:
    """The world's payments, users and merchants as arrays (row numbers as ids)."""

    cfg: WorldConfig
    start: int
    end: int
    stall: int | None
    pay: pl.DataFrame  # payments, ts order: tx_id, device_id, ip (for the output)
    ts: np.ndarray
    user: np.ndarray
    merchant: np.ndarray
    amount: np.ndarray
    rebate: np.ndarray  # requested: floor(amount x rate)
    signups: pl.DataFrame  # user_id, device_id, ip by signup row
    signup_ts: np.ndarray
    referrer: np.ndarray
    merchant_ids: pl.Series
    region: np.ndarray  # per merchant
    abuse_merchant: np.ndarray  # per merchant: run by an abuse group
    abuse_user: np.ndarray  # per user (signup row): an abusive account
    user_day_cents: float  # mean spending per user and day
    #: per user (signup row): pools their points in a family (the `family_points` look-alike
    #: gives and spends them in its own events), so has no vouchers of their own here.
    pools_points: np.ndarray | None = None
    #: per payment: when a refund voided its rebate in the platform's books (`_rebate_voided`;
    #: _NEVER: it stands). None: none is voided.
    rebate_voided_ts: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return len(self.signup_ts)

    @property
    def n_merchants(self) -> int:
        return len(self.merchant_ids)

    def new_user(self) -> np.ndarray:
        return (self.signup_ts >= self.start) & (self.signup_ts < self.end)

    def home_region(self) -> np.ndarray:
        """Per user (signup row), their region: where they pay most often (ties: the
        larger region), or, for users with no payment in the window, one drawn by the
        regions' shares of the payments (where the platform's users pay). Where their
        money goes, so where a deposit of theirs counts (docs/economics.md). Drawn from a
        stream of its own: the other events are what they were without it."""
        n_regions = self.cfg.regions
        paid_in = self.region[self.merchant]
        counts = np.bincount(
            self.user * n_regions + paid_in, minlength=self.n_users * n_regions
        ).reshape(self.n_users, n_regions)
        rng = np.random.default_rng([self.cfg.seed, HOME_REGION_SALT])
        trade = np.bincount(paid_in, minlength=n_regions).astype(np.float64) + 1.0
        drawn = weighted_choice(rng, trade, self.n_users)
        return np.where(counts.any(axis=1), counts.argmax(axis=1), drawn)


def _platform(rng: np.random.Generator, cfg: WorldConfig, world: Any) -> _Platform:
    start, end = cfg.start_ts_ms, cfg.end_ts_ms
    signups = world.signups.with_row_index("u").with_columns(pl.col("u").cast(pl.Int64))
    known = world.merchant_truth["merchant_id"]
    seen = world.transactions["merchant_id"].unique().sort()
    merchant_ids = pl.concat([known, seen.filter(~seen.is_in(known.implode()))])
    merchants = pl.DataFrame({"merchant_id": merchant_ids}).with_row_index("m")
    pay = (
        world.transactions.filter(pl.col("kind") == "payment")
        .join(signups.select("user_id", "u"), on="user_id", how="left", maintain_order="left")
        .join(
            merchants.with_columns(pl.col("m").cast(pl.Int64)),
            on="merchant_id",
            how="left",
            maintain_order="left",
        )
    )
    amount = pay["amount_cents"].to_numpy().astype(np.int64)
    weights = 0.75 ** np.arange(cfg.regions)
    signup_ts = signups["ts"].to_numpy().astype(np.int64)
    active_days = np.clip(end - np.maximum(signup_ts, start), 0, None).sum() / DAY_MS
    referrer = (
        signups.select("referrer_id")
        .join(
            signups.select(pl.col("user_id").alias("referrer_id"), "u"),
            on="referrer_id",
            how="left",
            maintain_order="left",
        )["u"]
        .fill_null(_NONE)
        .to_numpy()
    )
    role = signups.join(world.user_truth, on="user_id", how="left", maintain_order="left")["role"]
    return _Platform(
        cfg=cfg,
        start=start,
        end=end,
        stall=cfg.stall_ts_ms,
        pay=pay.select("tx_id", "device_id", "ip"),
        ts=pay["ts"].to_numpy().astype(np.int64),
        user=pay["u"].to_numpy().astype(np.int64),
        merchant=pay["m"].to_numpy().astype(np.int64),
        amount=amount,
        rebate=amount * _ppm(pay["rebate_rate"].to_numpy()) // PPM,
        signups=signups.select("user_id", "device_id", "ip"),
        signup_ts=signup_ts,
        referrer=referrer.astype(np.int64),
        merchant_ids=merchant_ids,
        region=weighted_choice(rng, weights, len(merchant_ids)),
        abuse_user=role.is_in(ABUSE_SCENARIOS).to_numpy(),
        pools_points=role.eq(LOOKALIKES[FAMILY_POINTS]).fill_null(False).to_numpy(),
        abuse_merchant=merchant_ids.is_in(
            world.merchant_truth.filter(pl.col("role") != "legit")["merchant_id"].implode()
        ).to_numpy(),
        user_day_cents=float(amount.sum()) / max(1.0, float(active_days)),
        rebate_voided_ts=_rebate_voided(world.transactions, pay),
    )


def _rebate_voided(transactions: pl.DataFrame, pay: pl.DataFrame) -> np.ndarray:
    """Per payment of `pay` (its rows), the ts of the refund that voids its rebate in the
    platform's books (one within REFUND_VOIDS_REBATE_MS of it, as the ledger's), else
    _NEVER: the world's truth of refunds, not any detector's output."""
    refunds = transactions.filter(pl.col("kind") == "refund").select(
        pl.col("ref_tx_id").alias("tx_id"), pl.col("ts").alias("refund_ts")
    )
    refunds = refunds.group_by("tx_id").agg(pl.col("refund_ts").min())
    voided = (
        pay.select("tx_id", "ts")
        .join(refunds, on="tx_id", how="left", maintain_order="left")
        .select(
            pl.when(pl.col("refund_ts") - pl.col("ts") <= REFUND_VOIDS_REBATE_MS)
            .then(pl.col("refund_ts"))
            .otherwise(_NEVER)
        )
    )
    return voided.to_series().to_numpy().astype(np.int64)


# --------------------------------------------------------------------------------------
# Money in


def _settlements(rng: np.random.Generator, p: _Platform) -> tuple[list[_Events], np.ndarray]:
    """Each merchant pays in the discount of each day's payments (the rebates requested on
    them) when its day closes, T+1; a late minority days later, a partial one only part."""
    cfg, n_m = p.cfg, p.n_merchants
    draw = rng.random(n_m)
    behaviour = np.where(
        draw < cfg.late_settlement_share,
        1,
        np.where(draw < cfg.late_settlement_share + cfg.partial_settlement_share, 2, 0),
    )
    delay_days = np.where(behaviour == 1, rng.integers(2, 8, n_m), 0)
    paid_share = np.where(behaviour == 2, rng.uniform(0.5, 0.9, n_m), 1.0)
    # Each merchant's day runs from its own cut-off (spread over the day, so the platform's
    # funding comes in smoothly); the batch is paid 1-3 h after it closes.
    cutoff = rng.integers(0, DAY_MS, n_m)
    processing = rng.integers(HOUR_MS, 3 * HOUR_MS, n_m)
    batch = (p.ts - cutoff[p.merchant]) // DAY_MS
    batches = (
        pl.DataFrame({"m": p.merchant, "batch": batch, "owed": p.rebate})
        .group_by("m", "batch")
        .agg(pl.col("owed").sum())
        .sort("m", "batch")
    )
    m = batches["m"].to_numpy()
    owed = batches["owed"].to_numpy()
    closes = (batches["batch"].to_numpy() + 1) * DAY_MS + cutoff[m]
    ts = closes + processing[m] + delay_days[m] * DAY_MS
    amount = _share(owed, paid_share[m])
    keep = (ts < p.end) & (amount > 0)
    events = _Events(MERCHANT_SETTLEMENT, ts[keep], amount[keep], merchant=m[keep])
    return [events], np.array([ON_TIME, LATE, PARTIAL])[behaviour]


def _new_money(rng: np.random.Generator, p: _Platform) -> list[_Events]:
    """Membership deposits of new users, joining fees of new merchants, and the platform's
    capital: an opening sum, then rounds that follow the new money (investors follow growth)."""
    cfg = p.cfg
    unit = p.user_day_cents
    # Abusive accounts (farms, pyramids) do not buy memberships here: their money flows are
    # the abuse scenarios' own.
    buys = p.new_user() & ~p.abuse_user & (rng.random(p.n_users) < cfg.membership_share)
    new = np.flatnonzero(buys)
    tier = np.array([0.5, 1.0, 2.0])[weighted_choice(rng, np.array([0.5, 0.35, 0.15]), len(new))]
    deposit_ts = p.signup_ts[new] + lognormal_delay(
        rng, len(new), 20 * MINUTE_MS, 1.0, MINUTE_MS, DAY_MS
    )
    deposit = _round_units(tier / 0.9 * cfg.membership_user_days * unit)  # mean tier 0.9
    ok = deposit_ts < p.end
    # A deposit names its depositor's region (its books); a joining fee its merchant; the
    # platform's capital neither (the platform's books alone).
    home = p.home_region()[new[ok]]
    deposits = _Events(POOL_TOPUP, deposit_ts[ok], deposit[ok], user=new[ok], region=home)

    first = np.full(p.n_merchants, np.iinfo(np.int64).max)
    np.minimum.at(first, p.merchant, p.ts)
    # New merchants: those first seen after the first day, as many as the platform grows
    # (a share new_user_fraction of them), and every abuse-run one (set up in the window).
    later = (first >= p.start + DAY_MS) & (first < p.end)
    grows = rng.random(p.n_merchants) < cfg.new_user_fraction
    joined = np.flatnonzero(later & (grows | p.abuse_merchant))
    fee_ts = first[joined] - rng.integers(HOUR_MS, DAY_MS, len(joined))  # joined, then sold
    if p.stall is not None:  # after the stall, few merchants still join
        stalled = (fee_ts >= p.stall) & (rng.random(len(joined)) >= cfg.stall_signup_share)
        joined, fee_ts = joined[~stalled], fee_ts[~stalled]
    fee = np.full(len(joined), _round_units(np.array([cfg.merchant_joining_user_days * unit]))[0])
    fees = _Events(POOL_TOPUP, fee_ts, fee, merchant=joined)

    first_week = p.ts < p.start + min(7, cfg.days) * DAY_MS
    daily_rebates = p.rebate[first_week].sum() / min(7, cfg.days)
    capital_ts = [p.start]
    capital = [int(_round_units(np.array([cfg.opening_capital_days * daily_rebates]))[0])]
    span = cfg.capital_round_days * DAY_MS
    money_ts = np.concatenate([deposits.ts, fees.ts])
    money = np.concatenate([deposits.amount, fees.amount])
    for round_start in range(p.start + span, p.end, span):
        raised = money[(money_ts >= round_start - span) & (money_ts < round_start)].sum()
        if p.stall is not None and round_start >= p.stall:  # investors follow growth
            raised *= cfg.stall_signup_share
        if raised * cfg.capital_round_share >= 100:
            capital_ts.append(round_start + 10 * HOUR_MS)
            capital.append(int(_round_units(np.array([raised * cfg.capital_round_share]))[0]))
    ts = np.array(capital_ts, dtype=np.int64)
    keep = ts < p.end
    rounds = _Events(POOL_TOPUP, ts[keep], np.array(capital, dtype=np.int64)[keep])
    return [deposits, fees, rounds]


# --------------------------------------------------------------------------------------
# Points


def _points(rng: np.random.Generator, p: _Platform) -> list[_Events]:
    """Consumption points on each payment and sign-up bonuses (the platform's promotion, on
    top of the rebates), vouchers redeemed at payments within the redeemable share of what
    the user's book shows earned (rebates requested, less those refunds voided, + grants
    before), a few given to the referrer, and the unredeemable part of unused bonuses
    lapsing."""
    cfg = p.cfg
    n = len(p.ts)
    basis = p.amount if cfg.consumption_points_basis == "bill" else p.rebate
    grant = _share(basis, cfg.consumption_points_share)
    has_grant = grant > 0
    grants = _Events(
        POINTS_GRANT,
        p.ts[has_grant] + 1,
        grant[has_grant],
        user=p.user[has_grant],
        merchant=p.merchant[has_grant],
        tx=np.flatnonzero(has_grant),
    )
    bonus = int(_round_units(np.array([cfg.signup_bonus_user_days * p.user_day_cents]))[0])
    new = np.flatnonzero(p.new_user()) if cfg.signup_bonus_user_days > 0 else np.arange(0)
    bonus_ts = p.signup_ts[new] + 1
    # A bonus names no merchant: it counts in its user's region (where a deposit of theirs
    # would, docs/events.md), and so does the part of it that lapses.
    home = p.home_region()[new]
    bonuses = _Events(POINTS_GRANT, bonus_ts, np.full(len(new), bonus), user=new, region=home)
    lapse = int(bonus - _share(np.array([bonus]), cfg.redeemable_share)[0])
    expire_ts = bonus_ts + round(cfg.bonus_expiry_days * DAY_MS)
    lapsing = np.flatnonzero((expire_ts < p.end) & (lapse > 0))
    expiries = _Events(
        POINTS_EXPIRE,
        expire_ts[lapsing],
        np.full(len(lapsing), lapse),
        user=new[lapsing],
        region=home[lapsing],
    )

    # What each user's book showed earned before each payment: rebates + grants with an
    # earlier ts, less the rebates refunds voided before it (the app shows the platform's
    # book). A rebate the platform holds (pending in the app), scales or blocks is not in
    # the book either, but the world cannot know the detector's decisions: an ask may pass
    # the book by those, and the policy cuts it to the redeemable part (real friction).
    base = int(min(p.signup_ts.min(initial=p.start), p.start)) - 1
    voided_ts = np.full(n, _NEVER) if p.rebate_voided_ts is None else p.rebate_voided_ts
    voided = np.flatnonzero((voided_ts < p.end) & (p.rebate > 0))
    e_user = np.concatenate([p.user, p.user[has_grant], new, p.user[voided]])
    e_ts = np.concatenate([p.ts, grants.ts, bonuses.ts, voided_ts[voided]])
    e_amount = np.concatenate([p.rebate, grants.amount, bonuses.amount, -p.rebate[voided]])
    e_key = (e_user << _TS_BITS) + (e_ts - base)
    order = np.argsort(e_key, kind="stable")
    e_key = e_key[order]
    cum = np.concatenate([[0], np.cumsum(e_amount[order])])
    # The payments' rebates come first in the events: where each one sorted to, moved back
    # to the first event of its (user, ts) (what had happened strictly before it) and to
    # the user's first event (where the user's sums start).
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    own = position[:n]
    index = np.arange(len(e_key))
    same_key = np.maximum.accumulate(np.where(np.diff(e_key, prepend=-1) != 0, index, 0))
    users = e_key >> _TS_BITS
    same_user = np.maximum.accumulate(np.where(np.diff(users, prepend=-1) != 0, index, 0))
    earned = cum[same_key[own]] - cum[same_user[own]]

    # Vouchers: at a share of their payments (a per-user habit) users spend all that is
    # redeemable then, so what they redeemed is the highest floor(share x earned) any of
    # their uses saw (a refund since may have taken earned below it: nothing to spend).
    propensity = rng.beta(2.0, 2.0 * (1 - cfg.redeem_propensity) / cfg.redeem_propensity, p.n_users)
    chance = propensity[p.user]
    if p.stall is not None:  # the run after the stall
        chance = np.where(p.ts >= p.stall, np.maximum(chance, cfg.stall_redeem_propensity), chance)
    use = np.flatnonzero(rng.random(n) < chance)
    use = use[np.lexsort((p.ts[use], p.user[use]))]
    # Which uses give to the referrer is drawn for all of them before their amounts are
    # known: the later draws (bindings, coupons) do not depend on what anyone asks.
    to_referrer = rng.random(len(use)) < cfg.transfer_share
    cap = _share(earned[use], cfg.redeemable_share)
    amount = cap - _redeemed_before(p.user[use], cap)
    spend = amount > 0
    use, amount, to_referrer = use[spend], amount[spend], to_referrer[spend]
    giver_referrer = p.referrer[p.user[use]]
    gives = (giver_referrer >= 0) & to_referrer
    if p.pools_points is not None and p.pools_points.any():
        # A family's pooled points leave in its own transfers and redemptions (within the
        # same share): vouchers of their own too would ask for the same points twice. Left
        # out after every draw (each user's vouchers are their own), so the rest is as drawn.
        own = ~p.pools_points[p.user[use]]
        use, amount, gives, giver_referrer = use[own], amount[own], gives[own], giver_referrer[own]
    redeem, gift = use[~gives], use[gives]
    redeems = _Events(
        POINTS_REDEEM,
        p.ts[redeem],
        amount[~gives],
        user=p.user[redeem],
        merchant=p.merchant[redeem],
    )
    transfers = _Events(
        POINTS_TRANSFER,
        p.ts[gift],
        amount[gives],
        user=p.user[gift],
        counterparty=giver_referrer[gives],
    )
    received = _Events(
        POINTS_GRANT,
        p.ts[gift] + 1,
        amount[gives],
        user=giver_referrer[gives],
        counterparty=p.user[gift],
    )
    return [grants, bonuses, expiries, redeems, transfers, received]


def _redeemed_before(user: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Per voucher use (sorted by user, then ts; `cap`: floor(share x earned) at it, >= 0),
    what its user had redeemed by then: the highest cap of their earlier uses (0 at the first).

    Examples
    --------
    >>> _redeemed_before(np.array([0, 0, 0, 0, 1]), np.array([40, 30, 50, 45, 10])).tolist()
    [0, 40, 40, 50, 0]
    """
    if len(cap) == 0:
        return cap
    width = int(cap.max()) + 1  # each user's caps in a band of their own: one running max
    reached = np.maximum.accumulate(user.astype(np.int64) * width + cap) - user * width
    same_user = np.concatenate([[False], user[1:] == user[:-1]])
    return np.where(same_user, np.concatenate([[0], reached[:-1]]), 0)


# --------------------------------------------------------------------------------------
# Bindings, commissions, coupons


def _bindings(rng: np.random.Generator, p: _Platform, bound_by_groups: np.ndarray) -> list[_Events]:
    """Half the users are bound to the merchant of their first payment (new ones often by
    its QR code at signup); the binding merchant earns its own 0.2-1 % on their later
    payments anywhere on the platform. Users an abuse group or a look-alike binds
    (`bound_by_groups`, signup rows) have their binding already: none here (drawn as the
    others, then dropped, so everyone else's binding is what it was)."""
    cfg = p.cfg
    n = len(p.ts)
    first = np.full(p.n_users, n, dtype=np.int64)
    np.minimum.at(first, p.user, np.arange(n))  # payments are in ts order
    bound = np.flatnonzero((first < n) & (rng.random(p.n_users) < cfg.bound_user_share))
    by_qr = p.new_user()[bound] & (rng.random(len(bound)) < cfg.qr_binding_share)
    free = ~np.isin(bound, bound_by_groups)
    bound, by_qr = bound[free], by_qr[free]
    pay0 = first[bound]
    ts = np.where(by_qr, p.signup_ts[bound] + 1, p.ts[pay0])
    bindings = _Events(
        BINDING,
        ts,
        np.zeros(len(bound), dtype=np.int64),
        user=bound,
        merchant=p.merchant[pay0],
        place_payment=np.where(by_qr, _NONE, pay0),
        place_signup=np.where(by_qr, bound, _NONE),
    )
    rate = rng.uniform(cfg.retention_commission_min, cfg.retention_commission_max, p.n_merchants)
    binder = np.full(p.n_users, _NONE, dtype=np.int64)
    binder[bound] = p.merchant[pay0]
    later = np.flatnonzero((binder[p.user] >= 0) & (np.arange(n) > first[p.user]))
    earner = binder[p.user[later]]
    commission = _share(p.amount[later], np.round(rate[earner], 4))
    paid = commission > 0
    commissions = _Events(
        RETENTION_COMMISSION,
        p.ts[later][paid] + 1,
        commission[paid],
        user=p.user[later][paid],
        merchant=earner[paid],
        tx=later[paid],
    )
    return [bindings, commissions]


def _coupons(rng: np.random.Generator, p: _Platform) -> list[_Events]:
    """After a share of payments the platform pushes a coupon of another merchant of the
    same region (picked by its trade); used on the user's first payment there within its
    validity, else it lapses."""
    cfg = p.cfg
    n = len(p.ts)
    trade = np.bincount(p.merchant, minlength=p.n_merchants).astype(np.float64)
    pushed = np.flatnonzero(rng.random(n) < cfg.coupon_push_rate)
    issuer = np.full(len(pushed), _NONE, dtype=np.int64)
    for region in range(cfg.regions):
        members = np.flatnonzero((p.region == region) & (trade > 0))
        here = np.flatnonzero(p.region[p.merchant[pushed]] == region)
        if len(members) < 2 or len(here) == 0:
            continue
        issuer[here] = members[weighted_choice(rng, trade[members], len(here))]
    # The platform's recommender: often the merchant of the user's next payment, if it is
    # another one of the same region within the coupon's validity.
    by_user = np.lexsort((p.ts, p.user))
    following = np.full(n, _NONE, dtype=np.int64)
    same = p.user[by_user][1:] == p.user[by_user][:-1]
    following[by_user[:-1][same]] = by_user[1:][same]
    nxt = following[pushed]
    valid_ms = round(cfg.coupon_valid_days * DAY_MS)
    targeted = (
        (nxt >= 0)
        & (rng.random(len(pushed)) < cfg.coupon_targeting)
        & (p.ts[np.maximum(nxt, 0)] < p.ts[pushed] + valid_ms)
        & (p.region[p.merchant[np.maximum(nxt, 0)]] == p.region[p.merchant[pushed]])
    )
    issuer[targeted] = p.merchant[nxt[targeted]]
    ok = (issuer >= 0) & (issuer != p.merchant[pushed])
    pushed, issuer = pushed[ok], issuer[ok]
    median = pl.DataFrame({"m": p.merchant, "a": p.amount}).group_by("m").agg(pl.col("a").median())
    typical = np.zeros(p.n_merchants)
    typical[median["m"].to_numpy()] = median["a"].to_numpy()
    value = _round_units(typical[issuer] * rng.uniform(0.05, 0.2, len(issuer)))
    issue_ts = p.ts[pushed] + rng.integers(MINUTE_MS, 30 * MINUTE_MS, len(pushed))
    keep = issue_ts < p.end
    pushed, issuer, value, issue_ts = pushed[keep], issuer[keep], value[keep], issue_ts[keep]
    coupon = np.arange(len(pushed), dtype=np.int64)
    user = p.user[pushed]
    valid_until = issue_ts + valid_ms

    uses = (
        pl.DataFrame({"c": coupon, "u": user, "m": issuer, "from": issue_ts, "to": valid_until})
        .join(
            pl.DataFrame({"u": p.user, "m": p.merchant, "ts": p.ts, "k": np.arange(n)}),
            on=["u", "m"],
        )
        .filter((pl.col("ts") > pl.col("from")) & (pl.col("ts") < pl.col("to")))
        .sort("c", "ts", "k")
        .unique("c", keep="first", maintain_order=True)
        .unique("k", keep="first", maintain_order=True)  # one coupon per payment
    )
    used_c = uses["c"].to_numpy().astype(np.int64)
    used_k = uses["k"].to_numpy().astype(np.int64)
    unused = np.ones(len(coupon), dtype=bool)
    unused[used_c] = False
    lapses = unused & (valid_until < p.end)
    return [
        _Events(
            COUPON_ISSUE, issue_ts, value, user=user, merchant=issuer, coupon=coupon,
            place_payment=pushed,
        ),
        _Events(
            COUPON_REDEEM, p.ts[used_k], value[used_c], user=user[used_c], merchant=issuer[used_c],
            coupon=used_c, tx=used_k, place_payment=used_k,
        ),
        _Events(
            COUPON_EXPIRE, valid_until[lapses], value[lapses], user=user[lapses],
            merchant=issuer[lapses], coupon=coupon[lapses],
        ),
    ]  # fmt: skip


# --------------------------------------------------------------------------------------
# Assembly

#: Tie order at equal ts within the platform's events: money first, then what users hold.
_KINDS = (
    POOL_TOPUP,
    MERCHANT_SETTLEMENT,
    BINDING,
    POINTS_GRANT,
    POINTS_EXPIRE,
    POINTS_TRANSFER,
    POINTS_REDEEM,
    RETENTION_COMMISSION,
    COUPON_ISSUE,
    COUPON_REDEEM,
    COUPON_EXPIRE,
)


def simulate_economics(
    rng: np.random.Generator,
    cfg: WorldConfig,
    world: Any,
    schema: dict[str, Any],
    *,
    bound_by_groups: np.ndarray | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(The platform events of `world`, sorted by ts with `schema`'s columns; per merchant
    its `region` and `settlement` behaviour). `bound_by_groups`: the signup rows of the
    users the abuse groups and look-alikes bind themselves (bound no second time)."""
    p = _platform(rng, cfg, world)
    settlements, behaviour = _settlements(rng, p)
    parts = [
        *settlements,
        *_new_money(rng, p),
        *_points(rng, p),
        *_bindings(rng, p, np.arange(0) if bound_by_groups is None else bound_by_groups),
        *_coupons(rng, p),
    ]
    merchants = pl.DataFrame(
        {
            "merchant_id": p.merchant_ids,
            "region": np.array(REGIONS)[p.region],
            "settlement": behaviour,
        }
    )
    return _frame(p, parts, schema), merchants


def _frame(p: _Platform, parts: list[_Events], schema: dict[str, Any]) -> pl.DataFrame:
    sizes = [len(e.ts) for e in parts]
    ts = np.concatenate([e.ts for e in parts]).astype(np.int64)
    rank = np.repeat([_KINDS.index(e.kind) for e in parts], sizes)
    order = np.lexsort((np.arange(len(ts)), rank, ts))

    def column(name: str) -> pl.Series:
        """Row numbers of the field's source (null where absent), in event order."""
        at = np.concatenate([_col(getattr(e, name), len(e.ts)) for e in parts])[order]
        c = pl.col(name)
        return pl.DataFrame({name: at}).select(pl.when(c >= 0).then(c)).to_series()

    def pick(values: pl.Series, name: str) -> pl.Series:
        return values.gather(column(name))

    users = p.signups["user_id"]
    regions = pl.Series(np.array(REGIONS)[p.region], dtype=pl.String)  # per merchant row
    prefix = p.cfg.id_prefix
    frame = pl.DataFrame(
        {
            "n": np.arange(len(ts), dtype=np.int64),
            "ts": ts[order],
            "kind": pl.Series([e.kind for e in parts], dtype=pl.String).gather(
                np.repeat(np.arange(len(parts)), sizes)[order]
            ),
            "amount_cents": np.concatenate([e.amount for e in parts]).astype(np.int64)[order],
            "user_id": pick(users, "user"),
            "merchant_id": pick(p.merchant_ids, "merchant"),
            "tx_id": pick(p.pay["tx_id"], "tx"),
            "coupon": column("coupon"),
            "counterparty_id": pick(users, "counterparty"),
            # The merchant's region; an event naming none, its own (a depositor's), if any.
            "region": regions.gather(column("merchant")).fill_null(
                pl.Series(REGIONS, dtype=pl.String).gather(column("region"))
            ),
            "device_paid": pick(p.pay["device_id"], "place_payment"),
            "device_signup": pick(p.signups["device_id"], "place_signup"),
            "ip_paid": pick(p.pay["ip"], "place_payment"),
            "ip_signup": pick(p.signups["ip"], "place_signup"),
        }
    ).with_columns(
        pl.coalesce("device_paid", "device_signup").alias("device_id"),
        pl.coalesce("ip_paid", "ip_signup").alias("ip"),
        pl.concat_str([pl.lit(prefix + "pe"), pl.col("n").cast(pl.String)]).alias("event_id"),
        pl.concat_str([pl.lit(prefix + "cp"), pl.col("coupon").cast(pl.String)]).alias("coupon_id"),
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())


# --------------------------------------------------------------------------------------
# The books

#: (liability, distributable) sign of each kind's amount (docs/economics.md, "The books").
_BOOKS = {
    POINTS_GRANT: (1, 0),
    POINTS_REDEEM: (-1, -1),
    POINTS_EXPIRE: (-1, 0),
    POINTS_TRANSFER: (-1, 0),
    MERCHANT_SETTLEMENT: (0, 1),
    POOL_TOPUP: (0, 1),
    RETENTION_COMMISSION: (0, -1),
}


def platform_books(world: Any, *, period_ms: int = DAY_MS) -> pl.DataFrame:
    """The platform's books at the end of each period (aligned to the epoch) from its first
    movement on: liability, distributable and their ratio (null when nothing is
    distributable), with every payment's requested rebate granted. A reference for the
    solvency monitor, from the simulator's side (docs/economics.md)."""
    payments = world.transactions.filter(pl.col("kind") == "payment").select(
        "ts",
        (
            pl.col("amount_cents") * (pl.col("rebate_rate") * PPM).round().cast(pl.Int64) // PPM
        ).alias("liability"),
        pl.lit(0, dtype=pl.Int64).alias("distributable"),
    )
    kind = pl.col("kind")
    amount = pl.col("amount_cents")

    def signed(which: int) -> pl.Expr:
        expr = pl.lit(0, dtype=pl.Int64)
        for name, signs in _BOOKS.items():
            expr = pl.when(kind == name).then(amount * signs[which]).otherwise(expr)
        return expr

    events = world.platform_events.select(
        "ts", signed(0).alias("liability"), signed(1).alias("distributable")
    )
    moves = pl.concat([payments, events]).with_columns((pl.col("ts") // period_ms).alias("p"))
    if moves.is_empty():
        return pl.DataFrame(
            schema={
                "period_end": pl.Int64,
                "liability_cents": pl.Int64,
                "distributable_cents": pl.Int64,
                "ratio": pl.Float64,
            }
        )
    first, last = moves["p"].min(), moves["p"].max()
    periods = pl.DataFrame({"p": np.arange(first, last + 1, dtype=np.int64)})
    sums = moves.group_by("p").agg(pl.col("liability").sum(), pl.col("distributable").sum())
    books = (
        periods.join(sums, on="p", how="left")
        .fill_null(0)
        .sort("p")
        .select(
            ((pl.col("p") + 1) * period_ms).alias("period_end"),
            pl.col("liability").cum_sum().alias("liability_cents"),
            pl.col("distributable").cum_sum().alias("distributable_cents"),
        )
    )
    d = pl.col("distributable_cents")
    return books.with_columns(pl.when(d > 0).then(pl.col("liability_cents") / d).alias("ratio"))
