"""Injected abuse of the commission, coupon and points flows (issue #21): one function per
scenario, each adding one group of users and payments (their truth: fraud, with the scenario
and the group, as `_abuse`'s) and the platform events that make it abuse.

- `binding_hijack`: a merchant binds its accomplices right before each of their big payments
  at other merchants, and earns retention commission on them (some accomplices first pay a
  token at the binder, `hijack_token_share`, so the binding looks visited);
- `coupon_farm`: fresh accounts on a few phones claim a merchant's coupons and use them at
  once on small payments there;
- `points_collector`: fresh accounts on a few phones pass their points to one account, which
  spends them at once;
- `binding_farm`: a merchant binds fresh accounts made on a few phones, which then spend a
  little anywhere, each payment earning it retention commission;
- `commission_cycle`: a few colluders bound to a merchant keep paying at it and spend
  elsewhere, so it earns retention commission on them while its discount and the platform's
  points go round among them.

Their legit look-alikes (`_flow_lookalikes`) add their groups to the same `Plan`, which
keeps the truth of every event (the ring or the look-alike group that made it). The
tactics (group sizes, phones per farm, delays, transfer sizes) are `WorldConfig` knobs,
drawn per world by the random profile.

The groups are built before the world is assembled (`inject`, as `_abuse.inject`), in the
generator's integer indices; their platform events are written afterwards
(`platform_events`), when those indices have public ids: a user's is its place in signup
order, a payment's its place in time order (`world._assemble` numbers them so), a group's
merchant is the one `merchant_truth` gives its ring, and a device or IP is the one its user
signed up on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from rebate_guard.contract.records import (
    BINDING,
    COUPON_ISSUE,
    COUPON_REDEEM,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_TRANSFER,
    RETENTION_COMMISSION,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.tools.simulator._abuse import _legit_merchants
from rebate_guard.tools.simulator._builder import Builder
from rebate_guard.tools.simulator._common import (
    AMOUNT_SIGMA,
    BEAUTY,
    BINDING_FARM,
    BINDING_HIJACK,
    COMMISSION_CYCLE,
    COUPON_FARM,
    ENTERTAINMENT,
    GROCERY,
    HOSTING_A,
    LOOKALIKES,
    POINTS_COLLECTOR,
    RESIDENTIAL_A,
    RESTAURANT,
    RETAIL,
    SCENARIOS,
    SERVICES,
    lognormal_amounts,
    random_ips,
    sample_ts,
    weighted_choice,
)
from rebate_guard.tools.simulator._legit import add_abuse_merchants
from rebate_guard.tools.simulator.config import WorldConfig

_NONE = -1
PPM = 1_000_000
_REFS = (
    "user",
    "counterparty",
    "place",
    "place_tx",
    "tx",
    "merchant",
    "merchant_tx",
    "merchant_ring",
    "coupon",
)
#: Who made an event: the abuse ring (index) or the look-alike group (code), -1 for none.
_TRUTH = ("ring", "look")
_PLAN_COLUMNS = ("kind", "ts", "amount", *_REFS, *_TRUTH)
#: The truth of platform events (`truth/platform_truth`): per event, fraud or not, the
#: scenario of the abuse that made it ("" for legit), its look-alike group ("" for none).
PLATFORM_TRUTH_SCHEMA: dict[str, Any] = {
    "event_id": pl.String,
    "is_fraud": pl.Boolean,
    "scenario": pl.String,
    "group": pl.String,
}


@dataclass
class Plan:
    """The groups' platform events, in the generator's indices (-1: none): `user`,
    `counterparty` and `place` (whose signup device and IP it was made on) are users,
    `place_tx` the transaction whose device and IP it was made on, `tx` a transaction, and
    the merchant it names is `merchant`, else the merchant of `merchant_tx`, else the own
    merchant of the ring `merchant_ring`. Each event's truth is the group being made
    (`making`: its ring, or its look-alike code)."""

    columns: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in _PLAN_COLUMNS}
    )
    making: tuple[int, int] = (_NONE, _NONE)
    #: The world's legit payments per user-day: groups whose people live ordinary lives
    #: pay as often as everyone else.
    activity: float = 0.3

    def add(self, kind: str, ts: np.ndarray, amount: np.ndarray, **refs: Any) -> None:
        n = len(ts)
        self.columns["kind"].append(np.full(n, kind, dtype=object))
        self.columns["ts"].append(np.asarray(ts, dtype=np.int64))
        self.columns["amount"].append(np.asarray(amount, dtype=np.int64))
        values = {
            **{r: refs.get(r, _NONE) for r in _REFS},
            **dict(zip(_TRUTH, self.making, strict=True)),
        }
        for name, value in values.items():
            self.columns[name].append(np.broadcast_to(np.asarray(value, dtype=np.int64), n))

    def frame(self) -> dict[str, np.ndarray]:
        if not self.columns["ts"]:
            return {
                name: np.array([], dtype=object if name == "kind" else np.int64)
                for name in _PLAN_COLUMNS
            }
        return {name: np.concatenate(parts) for name, parts in self.columns.items()}


def _accounts(
    rng: np.random.Generator,
    b: Builder,
    ring: int,
    scenario: int,
    signup: np.ndarray,
    *,
    n_devices: int,
    ip_octets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`len(signup)` accounts on `n_devices` phones and as many home or hosting IPs."""
    n = len(signup)
    devices = b.new_devices(n_devices)
    device = devices[rng.permutation(n) % n_devices]
    ips = random_ips(rng, max(1, n_devices), ip_octets)
    ip = ips[rng.integers(0, len(ips), n)]
    users = b.add_abuse_users(
        ring, scenario, signup, np.full(n, _NONE), device, ip, b.new_phones(n)
    )
    return users, device, ip


def _merchants_of(
    rng: np.random.Generator, b: Builder, n_legit: int, categories: tuple[int, ...], n: int
) -> np.ndarray:
    """`n` payments' legitimate merchants of the categories, from a few popular ones."""
    pool = _legit_merchants(rng, b, n_legit, categories, 8)
    return pool[rng.integers(0, len(pool), n)]


def _window(rng: np.random.Generator, b: Builder, *, left_ms: int) -> int:
    """A random start leaving `left_ms` (or half the window) before the end."""
    latest = b.end - min(left_ms, (b.end - b.start) // 2)
    return int(rng.integers(b.start, max(b.start + 1, latest)))


def _sized(rng: np.random.Generator, lo: int, hi: int, cfg: WorldConfig) -> int:
    """A group's accounts: lo..hi-1, times the world's `flow_group_size` (at least 2)."""
    return max(2, round(int(rng.integers(lo, hi)) * cfg.flow_group_size))


def _phones(rng: np.random.Generator, cfg: WorldConfig) -> int:
    """The phones a farm makes its accounts on: 1..`farm_phones`."""
    return int(rng.integers(1, cfg.farm_phones + 1))


def spending(
    rng: np.random.Generator,
    b: Builder,
    n_legit: int,
    rate: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray | int,
    *,
    categories: tuple[int, ...] | None = None,
    size: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Everyday payments of people (who, ts, merchant, amount): `rate` a day each (Poisson)
    in [lo, hi), at legitimate merchants (of `categories`) by popularity, at their hours
    and prices (times `size`, per person)."""
    hi = np.broadcast_to(np.asarray(hi, dtype=np.int64), len(lo))
    counts = rng.poisson(rate * np.maximum(0, hi - lo) / DAY_MS)
    who = np.repeat(np.arange(len(lo)), counts)
    category = b.merchants.col("category")[:n_legit]
    popularity = b.merchants.col("popularity")[:n_legit]
    pool = np.arange(n_legit)
    if categories is not None and np.isin(category, categories).any():
        pool = np.flatnonzero(np.isin(category, categories))
    merchant = pool[weighted_choice(rng, popularity[pool], len(who))]
    ts = sample_ts(rng, lo[who], hi[who], category[merchant])
    median = b.merchants.col("median")[merchant] * np.broadcast_to(size, len(lo))[who]
    amount = lognormal_amounts(rng, median, AMOUNT_SIGMA[category[merchant]])
    return who, ts, merchant, amount


def visits(
    rng: np.random.Generator,
    b: Builder,
    merchant: int,
    first: np.ndarray,
    end: int,
    gap_ms: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(who, ts) of people coming back to `merchant` after their `first` visit, about every
    `gap_ms` (each their own pace, Poisson), at its hours, until `end`."""
    counts = rng.poisson(np.maximum(0, end - first) / gap_ms)
    who = np.repeat(np.arange(len(first)), counts)
    category = int(b.merchants.col("category")[merchant])
    ts = sample_ts(rng, first[who] + 1, np.full(len(who), end), category)
    return who, ts


def commissions(
    rng: np.random.Generator,
    plan: Plan,
    cfg: WorldConfig,
    earner: int,
    *,
    user: np.ndarray,
    tx: np.ndarray,
    ts: np.ndarray,
    amount: np.ndarray,
) -> None:
    """The binding merchant's retention commission on its customers' payments, as the
    platform's own economics pays it: its one rate in the config's range (to 0.01 %),
    floor(amount x rate), 1 ms after each payment."""
    rate = round(float(rng.uniform(cfg.retention_commission_min, cfg.retention_commission_max)), 4)
    cents = np.asarray(amount, dtype=np.int64) * round(rate * PPM) // PPM
    paid = cents > 0
    plan.add(
        RETENTION_COMMISSION, ts[paid] + 1, cents[paid], user=user[paid], tx=tx[paid],
        merchant=earner,
    )  # fmt: skip


def binding_hijack(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """A merchant's accomplices, bound to it minutes before each big payment elsewhere."""
    binder = add_abuse_merchants(
        rng, b, np.array([SERVICES]), 10, 20, BINDING_HIJACK, ring, cfg.ring_merchant_popularity
    )
    n_acc = _sized(rng, 3, 11, cfg)
    older = rng.random(n_acc) < 0.7
    signup = np.where(
        older,
        b.start - rng.integers(30 * DAY_MS, 300 * DAY_MS, n_acc),
        _window(rng, b, left_ms=7 * DAY_MS) - rng.integers(HOUR_MS, 5 * DAY_MS, n_acc),
    )
    users, device, ip = _accounts(
        rng, b, ring, BINDING_HIJACK, signup, n_devices=n_acc, ip_octets=RESIDENTIAL_A
    )
    per_account = rng.integers(2, 7, n_acc)
    acc = np.repeat(np.arange(n_acc), per_account)
    n_tx = len(acc)
    lead_ms = round(cfg.hijack_lead_minutes * MINUTE_MS)
    earliest = max(HOUR_MS, lead_ms)  # its binding inside the window, after the signup
    lo = np.maximum(b.start + earliest, signup[acc] + earliest)
    ts = lo + (rng.random(n_tx) * np.maximum(1, b.end - HOUR_MS - lo)).astype(np.int64)
    merchant = _merchants_of(rng, b, cfg.n_merchants, (RETAIL, ENTERTAINMENT, BEAUTY), n_tx)
    amount = lognormal_amounts(rng, np.full(n_tx, 120_000.0), np.full(n_tx, 0.5))
    card = b.new_cards(n_acc)[acc]
    tx = b.add_abuse_tx(
        ring, BINDING_HIJACK, ts, users[acc], merchant, amount, device[acc], ip[acc], card
    )
    bound = ts - rng.integers(3 * MINUTE_MS, lead_ms, n_tx)
    plan.add(BINDING, bound, np.zeros(n_tx), user=users[acc], merchant_ring=ring, place=users[acc])
    rate = rng.uniform(0.002, 0.01)
    commission = np.maximum(1, (amount * rate).astype(np.int64))
    plan.add(RETENTION_COMMISSION, ts + 1, commission, user=users[acc], tx=tx, merchant_ring=ring)
    if cfg.hijack_token_share > 0:
        token_visits(b, ring, plan, cfg, int(binder[0]), big=tx, bound=bound, rate=rate)
    b.new_ring(BINDING_HIJACK, users, binder)


#: The token visits' own random stream (with the seed and the ring): a world's other draws
#: are what they were without them.
TOKEN_STREAM = 0x70CE


def token_visits(
    b: Builder,
    ring: int,
    plan: Plan,
    cfg: WorldConfig,
    binder: int,
    *,
    big: np.ndarray,
    bound: np.ndarray,
    rate: float,
) -> None:
    """A hijack adapted to a detector that lets a visit to the binder end the binding's lead:
    before `hijack_token_share` of its big payments (rows `big`, each bound at `bound`) the
    accomplice pays a token at the binder in between, on the phone, IP and card of the big
    payment: 1 cent to a fifth of the binder's usual ticket (log-uniform), as little as it
    can, the money going to its own merchant anyway. Its commission as on the others', where
    there is any (`rate`)."""
    rng = np.random.default_rng([cfg.seed, TOKEN_STREAM, ring])
    paid = b.tx.col("ts")[big]
    chosen = np.flatnonzero(rng.random(len(big)) < cfg.hijack_token_share)
    n = len(chosen)
    gap = paid[chosen] - bound[chosen]
    ts = bound[chosen] + 1 + (rng.random(n) * (gap - 1)).astype(np.int64)
    top = 0.2 * float(b.merchants.col("median")[binder])
    amount = np.exp(rng.uniform(0.0, np.log(top), n)).astype(np.int64)
    rows = big[chosen]
    user = b.tx.col("user")[rows]
    tx = b.add_abuse_tx(
        ring, BINDING_HIJACK, ts, user, np.full(n, binder), amount, b.tx.col("device")[rows],
        b.tx.col("ip")[rows], b.tx.col("card")[rows],
    )  # fmt: skip
    commission = (amount * rate).astype(np.int64)
    earned = commission > 0
    plan.add(
        RETENTION_COMMISSION, ts[earned] + 1, commission[earned], user=user[earned],
        tx=tx[earned], merchant_ring=ring,
    )  # fmt: skip


def coupon_farm(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """Fresh accounts on a few phones claim a merchant's coupons and use them at once."""
    n_acc = _sized(rng, 8, 31, cfg)
    s0 = _window(rng, b, left_ms=2 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_acc) * int(rng.integers(2 * HOUR_MS, DAY_MS))).astype(np.int64)
    )
    users, device, ip = _accounts(
        rng, b, ring, COUPON_FARM, signup, n_devices=_phones(rng, cfg), ip_octets=HOSTING_A
    )
    target = _merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), 1)
    claims = rng.integers(1, 4, n_acc)
    acc = np.repeat(np.arange(n_acc), claims)
    n = len(acc)
    nth = np.arange(n) - np.repeat(np.cumsum(claims) - claims, claims)
    claimed = signup[acc] + rng.integers(5 * MINUTE_MS, 2 * HOUR_MS, n) + nth * HOUR_MS
    paid = claimed + rng.integers(MINUTE_MS, round(cfg.coupon_use_minutes * MINUTE_MS), n)
    keep = paid < b.end
    acc, claimed, paid, n = acc[keep], claimed[keep], paid[keep], int(keep.sum())
    value = rng.choice(COUPON_VALUES, n)
    amount = value + (value * rng.uniform(0.2, 1.0, n)).astype(np.int64) // 10 * 10
    tx = b.add_abuse_tx(
        ring, COUPON_FARM, paid, users[acc], np.full(n, target[0]), amount, device[acc], ip[acc],
        np.full(n, _NONE),
    )  # fmt: skip
    coupon = np.arange(n) + coupons_so_far(plan)
    refs = {"user": users[acc], "merchant_tx": tx, "coupon": coupon, "place": users[acc]}
    plan.add(COUPON_ISSUE, claimed, value, **refs)
    plan.add(COUPON_REDEEM, paid, value, tx=tx, **refs)
    b.new_ring(COUPON_FARM, users, target)


#: What a coupon is worth (cents): the platform's usual small denominations.
COUPON_VALUES = np.array([500, 800, 1_000, 1_500])


def coupons_so_far(plan: Plan) -> int:
    coupons = [c for c in plan.columns["coupon"] if len(c)]
    return int(max((c.max() for c in coupons), default=-1)) + 1


def points_collector(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """Fresh accounts on a few phones give their points to one account, which spends them."""
    n_givers = _sized(rng, 8, 26, cfg)
    s0 = _window(rng, b, left_ms=4 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_givers) * int(rng.integers(6 * HOUR_MS, 4 * DAY_MS))).astype(np.int64)
    )
    collector_signup = np.array([b.start - int(rng.integers(30 * DAY_MS, 200 * DAY_MS))])
    collector, c_device, c_ip = _accounts(
        rng, b, ring, POINTS_COLLECTOR, collector_signup, n_devices=1, ip_octets=RESIDENTIAL_A
    )
    givers, device, ip = _accounts(
        rng, b, ring, POINTS_COLLECTOR, signup, n_devices=_phones(rng, cfg),
        ip_octets=RESIDENTIAL_A,
    )  # fmt: skip
    shops = _merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY, RETAIL), 3)
    # Each giver makes one small payment (its points start there), then gives them away.
    paid = signup + rng.integers(10 * MINUTE_MS, 3 * HOUR_MS, n_givers)
    amount = rng.integers(15, 40, n_givers) * 100
    keep = paid < b.end - HOUR_MS
    givers, device, ip, paid, amount = (
        givers[keep],
        device[keep],
        ip[keep],
        paid[keep],
        amount[keep],
    )
    n = len(givers)
    b.add_abuse_tx(
        ring, POINTS_COLLECTOR, paid, givers, shops[rng.integers(0, 3, n)], amount, device, ip,
        np.full(n, _NONE),
    )  # fmt: skip
    given = paid + rng.integers(5 * MINUTE_MS, 30 * MINUTE_MS, n)
    points = rng.integers(2, cfg.points_transfer_units + 1, n) * 100
    plan.add(POINTS_TRANSFER, given, points, user=givers, counterparty=collector[0])
    plan.add(POINTS_GRANT, given + 1, points, user=collector[0], counterparty=givers)
    # The collector spends them in a few payments soon after, vouchers first.
    k = int(rng.integers(3, 9))
    spend = np.sort(given.max(initial=s0) + rng.integers(10 * MINUTE_MS, 2 * DAY_MS, k))
    spend = spend[spend < b.end]
    k = len(spend)
    if k:
        where = shops[rng.integers(0, 3, k)]
        bill = lognormal_amounts(rng, np.full(k, 6_000.0), np.full(k, 0.5))
        tx = b.add_abuse_tx(
            ring, POINTS_COLLECTOR, spend, np.full(k, collector[0]), where, bill,
            np.full(k, c_device[0]), np.full(k, c_ip[0]), np.full(k, _NONE),
        )  # fmt: skip
        share = np.full(k, int(points.sum()) // k)
        plan.add(POINTS_REDEEM, spend, share, user=collector[0], merchant_tx=tx)
    b.new_ring(POINTS_COLLECTOR, np.concatenate([collector, givers]), shops)


def binding_farm(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """Fresh accounts made on a few phones, bound to one merchant, spending a little."""
    binder = add_abuse_merchants(
        rng, b, np.array([RESTAURANT]), 8, 14, BINDING_FARM, ring, cfg.ring_merchant_popularity
    )
    n_acc = _sized(rng, 10, 41, cfg)
    s0 = _window(rng, b, left_ms=5 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_acc) * int(rng.integers(6 * HOUR_MS, 3 * DAY_MS))).astype(np.int64)
    )
    users, device, ip = _accounts(
        rng, b, ring, BINDING_FARM, signup, n_devices=_phones(rng, cfg), ip_octets=RESIDENTIAL_A
    )
    plan.add(
        BINDING, signup + rng.integers(MINUTE_MS, 30 * MINUTE_MS, n_acc), np.zeros(n_acc),
        user=users, merchant_ring=ring, place=users,
    )  # fmt: skip
    per_account = 1 + (rng.random(n_acc) < 0.5)
    acc = np.repeat(np.arange(n_acc), per_account)
    n = len(acc)
    ts = signup[acc] + rng.integers(HOUR_MS, round(cfg.farm_spend_days * DAY_MS), n)
    keep = ts < b.end
    acc, ts, n = acc[keep], ts[keep], int(keep.sum())
    merchant = _merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), n)
    amount = rng.integers(10, 40, n) * 100
    tx = b.add_abuse_tx(
        ring, BINDING_FARM, ts, users[acc], merchant, amount, device[acc], ip[acc],
        np.full(n, _NONE),
    )  # fmt: skip
    commission = np.maximum(1, amount // 100)
    plan.add(RETENTION_COMMISSION, ts + 1, commission, user=users[acc], tx=tx, merchant_ring=ring)
    b.new_ring(BINDING_FARM, users, binder)


def commission_cycle(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """A few colluders (mostly established accounts, one may lend another a phone) bound to
    a merchant at a first payment there; then each pays at it about every
    `cycle_visit_days` (bigger bills than its customers', often round: the merchant hands
    the money back) and routes the household's everyday spending through the account (3-10
    times an ordinary user's payments, bigger bills), at merchants anywhere, each payment
    earning the merchant its retention commission."""
    category = np.array([rng.choice(np.array([RESTAURANT, RETAIL, BEAUTY, SERVICES]))])
    earner = add_abuse_merchants(
        rng, b, category, 10, 20, COMMISSION_CYCLE, ring, cfg.ring_merchant_popularity
    )
    shop = int(earner[0])
    n_acc = _sized(rng, 3, 9, cfg)
    a = _window(rng, b, left_ms=10 * DAY_MS)
    z = min(b.end, a + int(rng.integers(10, 46)) * DAY_MS)
    older = rng.random(n_acc) < 0.8
    signup = np.where(
        older,
        b.start - rng.integers(30 * DAY_MS, 300 * DAY_MS, n_acc),
        a - rng.integers(HOUR_MS, 5 * DAY_MS, n_acc),
    )
    device = b.new_devices(n_acc)
    lent = rng.random(n_acc) < 0.2
    device[lent] = device[rng.integers(0, n_acc, int(lent.sum()))]
    home = random_ips(rng, n_acc, RESIDENTIAL_A)
    users = b.add_abuse_users(
        ring, COMMISSION_CYCLE, signup, np.full(n_acc, _NONE), device, home, b.new_phones(n_acc)
    )
    lo = np.maximum(a, signup + HOUR_MS)
    first = sample_ts(rng, lo, np.minimum(lo + 3 * DAY_MS, z - HOUR_MS), int(category[0]))
    gap = cfg.cycle_visit_days * DAY_MS * rng.lognormal(0.0, 0.5, n_acc)
    v_acc, v_ts = visits(rng, b, shop, first, z, gap)
    bill = b.merchants.col("median")[shop] * rng.uniform(1.5, 4.0, n_acc)
    v_amount = lognormal_amounts(rng, bill[v_acc], np.full(len(v_acc), 0.4))
    round_ = rng.random(len(v_acc)) < 0.4
    v_amount[round_] = np.maximum(1_000, np.round(v_amount[round_] / 1_000) * 1_000)
    e_acc, e_ts, e_merchant, e_amount = spending(
        rng, b, cfg.n_merchants, plan.activity * rng.uniform(3.0, 10.0, n_acc),
        first + MINUTE_MS, z,
        size=rng.uniform(1.0, 2.5, n_acc),
    )  # fmt: skip
    first_amount = lognormal_amounts(rng, bill, np.full(n_acc, 0.4))
    acc = np.concatenate([np.arange(n_acc), v_acc, e_acc])
    ts = np.concatenate([first, v_ts, e_ts])
    merchant = np.concatenate([np.full(n_acc + len(v_acc), shop), e_merchant])
    amount = np.concatenate([first_amount, v_amount, e_amount])
    n = len(acc)
    own = rng.random(n) < 0.9
    paid_on = np.where(own, device[acc], device[rng.integers(0, n_acc, n)])
    ip = np.where(rng.random(n) < 0.6, home[acc], b.mobile_ips(rng, n))
    card = np.where(rng.random(n) < 0.85, b.new_cards(n_acc)[acc], _NONE)
    tx = b.add_abuse_tx(ring, COMMISSION_CYCLE, ts, users[acc], merchant, amount, paid_on, ip, card)
    plan.add(BINDING, first, np.zeros(n_acc), user=users, merchant=shop, place_tx=tx[:n_acc])
    later = np.arange(n_acc, n)
    commissions(
        rng, plan, cfg, shop, user=users[acc[later]], tx=tx[later], ts=ts[later],
        amount=amount[later],
    )  # fmt: skip
    b.new_ring(COMMISSION_CYCLE, users, earner)


SCENARIO_GROUPS = {
    BINDING_HIJACK: binding_hijack,
    COUPON_FARM: coupon_farm,
    POINTS_COLLECTOR: points_collector,
    BINDING_FARM: binding_farm,
    COMMISSION_CYCLE: commission_cycle,
}


def per_100k(cfg: WorldConfig) -> dict[int, float]:
    """Groups of each flow scenario per 100k legitimate transactions."""
    return {
        BINDING_HIJACK: cfg.binding_hijack_per_100k,
        COUPON_FARM: cfg.coupon_farm_per_100k,
        POINTS_COLLECTOR: cfg.points_collector_per_100k,
        BINDING_FARM: cfg.binding_farm_per_100k,
        COMMISSION_CYCLE: cfg.commission_cycle_per_100k,
    }


def group_counts(cfg: WorldConfig, expected_legit: float) -> dict[int, int]:
    """Groups of each scenario: the config's rate per 100k legitimate transactions (times
    `fraud_scale`), rounded; at least `min_groups_per_scenario` where the rate is not 0.
    The same with or without the economics (which leaves the contract streams alone): a
    world without them has the groups' payments, not their platform events."""
    counts = {}
    for scenario, rate in per_100k(cfg).items():
        expected = cfg.fraud_scale * rate * expected_legit / 100_000
        counts[scenario] = 0 if expected <= 0 else max(cfg.min_groups_per_scenario, round(expected))
    return counts


def inject(
    rng: np.random.Generator,
    b: Builder,
    groups: dict[int, int],
    cfg: WorldConfig,
    *,
    activity: float,
) -> Plan:
    """Adds `groups[scenario]` groups of each scenario, in scenario order (`activity`: the
    world's legit payments per user-day); their platform events, for `platform_events` once
    the world is assembled."""
    plan = Plan(activity=activity)
    for scenario in sorted(groups):
        for _ in range(groups[scenario]):
            plan.making = (len(b.rings), _NONE)
            SCENARIO_GROUPS[scenario](rng, b, len(b.rings), plan, cfg)
    plan.making = (_NONE, _NONE)
    return plan


def platform_events(
    plan: Plan,
    b: Builder,
    world: Any,
    *,
    cfg: WorldConfig,
    schema: dict[str, Any],
    first_coupon: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The plan's events with public ids (`schema`: the world's platform-event columns;
    `event_id` left null for the world to number; coupons numbered from `first_coupon`),
    and their truth (`PLATFORM_TRUTH_SCHEMA` without the event id), row for row."""
    cols = plan.frame()
    p = cfg.id_prefix
    u_num = np.empty(b.users.n, dtype=np.int64)
    u_num[np.argsort(b.users.col("signup_ts"), kind="stable")] = np.arange(b.users.n)
    t_num = np.empty(b.tx.n, dtype=np.int64)
    t_num[np.argsort(b.tx.col("ts"), kind="stable")] = np.arange(b.tx.n)
    signups, txs = world.signups, world.transactions
    merchants = world.merchant_truth
    ring_merchant = dict(
        merchants.filter(pl.col("ring_id").is_not_null())
        .select("ring_id", "merchant_id")
        .iter_rows()
    )
    region = dict(merchants.select("merchant_id", "region").iter_rows())
    m_num = b.merchant_numbers
    assert m_num is not None or not (cols["merchant"] >= 0).any(), "assemble the world first"

    def pick(values: pl.Series, rows: np.ndarray, numbers: np.ndarray) -> list[Any]:
        """The public value of each generator index (None where -1)."""
        found = values.to_list()
        return [found[numbers[r]] if r >= 0 else None for r in rows.tolist()]

    def place(column: str) -> list[Any]:
        """Where each event was made: the place_tx payment's, else the place user's signup."""
        paid = pick(txs[column], cols["place_tx"], t_num)
        signed = pick(signups[column], cols["place"], u_num)
        return [a if a is not None else s for a, s in zip(paid, signed, strict=True)]

    merchant = [
        f"{p}m{m_num[m]}" if m >= 0 and m_num is not None else by_tx
        if by_tx is not None else (ring_merchant.get(f"{p}ring{r}") if r >= 0 else None)
        for m, by_tx, r in zip(
            cols["merchant"].tolist(),
            pick(txs["merchant_id"], cols["merchant_tx"], t_num),
            cols["merchant_ring"].tolist(),
            strict=True,
        )
    ]  # fmt: skip
    n = len(cols["ts"])
    frame = pl.DataFrame(
        {
            "event_id": [None] * n,
            "ts": cols["ts"],
            "kind": cols["kind"].tolist(),
            "amount_cents": cols["amount"],
            "user_id": pick(signups["user_id"], cols["user"], u_num),
            "merchant_id": merchant,
            "tx_id": pick(txs["tx_id"], cols["tx"], t_num),
            "coupon_id": [
                f"{p}cp{first_coupon + c}" if c >= 0 else None for c in cols["coupon"].tolist()
            ],
            "counterparty_id": pick(signups["user_id"], cols["counterparty"], u_num),
            "region": [region.get(m) for m in merchant],
            "device_id": place("device_id"),
            "ip": place("ip"),
        },
        schema_overrides={name: kind for name, kind in schema.items() if kind == pl.String},
    )
    scenario_of = np.array([b.rings[r].scenario for r in range(len(b.rings))] + [0])
    ring, look = cols["ring"], cols["look"]
    truth = pl.DataFrame(
        {
            "is_fraud": ring >= 0,
            "scenario": [SCENARIOS[s] if s else "" for s in scenario_of[ring].tolist()],
            "group": [LOOKALIKES[g] if g >= 0 else "" for g in look.tolist()],
        },
        schema={name: PLATFORM_TRUTH_SCHEMA[name] for name in ("is_fraud", "scenario", "group")},
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items()), truth
