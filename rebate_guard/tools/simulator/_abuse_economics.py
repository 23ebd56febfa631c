"""Injected abuse of the commission, coupon and points flows (issue #21): one function per
scenario, each adding one group of users and payments (their truth: fraud, with the scenario
and the group, as `_abuse`'s) and the platform events that make it abuse.

- `binding_hijack`: a merchant binds its accomplices right before each of their big payments
  at other merchants, and earns retention commission on them;
- `coupon_farm`: fresh accounts on a few phones claim a merchant's coupons and use them at
  once on small payments there;
- `points_collector`: fresh accounts on a few phones pass their points to one account, which
  spends them at once;
- `binding_farm`: a merchant binds fresh accounts made on a few phones, which then spend a
  little anywhere, each payment earning it retention commission.

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
    BEAUTY,
    BINDING_FARM,
    BINDING_HIJACK,
    COUPON_FARM,
    ENTERTAINMENT,
    GROCERY,
    HOSTING_A,
    POINTS_COLLECTOR,
    RESIDENTIAL_A,
    RESTAURANT,
    RETAIL,
    SERVICES,
    lognormal_amounts,
    random_ips,
)
from rebate_guard.tools.simulator._legit import add_abuse_merchants
from rebate_guard.tools.simulator.config import WorldConfig

_NONE = -1
_REFS = ("user", "counterparty", "place", "tx", "merchant_tx", "merchant_ring", "coupon")
_PLAN_COLUMNS = ("kind", "ts", "amount", *_REFS)


@dataclass
class Plan:
    """The groups' platform events, in the generator's indices (-1: none): `user`,
    `counterparty` and `place` (whose signup device and IP it was made on) are users,
    `tx` a transaction, `merchant_tx` the transaction whose merchant it names, or else
    `merchant_ring` the ring whose own merchant it names."""

    columns: dict[str, list[Any]] = field(
        default_factory=lambda: {name: [] for name in _PLAN_COLUMNS}
    )

    def add(self, kind: str, ts: np.ndarray, amount: np.ndarray, **refs: Any) -> None:
        n = len(ts)
        self.columns["kind"].append(np.full(n, kind, dtype=object))
        self.columns["ts"].append(np.asarray(ts, dtype=np.int64))
        self.columns["amount"].append(np.asarray(amount, dtype=np.int64))
        for name in _REFS:
            value = refs.get(name, _NONE)
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


def binding_hijack(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """A merchant's accomplices, bound to it minutes before each big payment elsewhere."""
    binder = add_abuse_merchants(
        rng, b, np.array([SERVICES]), 10, 20, BINDING_HIJACK, ring, cfg.ring_merchant_popularity
    )
    n_acc = int(rng.integers(3, 11))
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
    lo = np.maximum(b.start + HOUR_MS, signup[acc] + HOUR_MS)  # its binding inside the window
    ts = lo + (rng.random(n_tx) * np.maximum(1, b.end - HOUR_MS - lo)).astype(np.int64)
    merchant = _merchants_of(rng, b, cfg.n_merchants, (RETAIL, ENTERTAINMENT, BEAUTY), n_tx)
    amount = lognormal_amounts(rng, np.full(n_tx, 120_000.0), np.full(n_tx, 0.5))
    card = b.new_cards(n_acc)[acc]
    tx = b.add_abuse_tx(
        ring, BINDING_HIJACK, ts, users[acc], merchant, amount, device[acc], ip[acc], card
    )
    bound = ts - rng.integers(3 * MINUTE_MS, 45 * MINUTE_MS, n_tx)
    plan.add(BINDING, bound, np.zeros(n_tx), user=users[acc], merchant_ring=ring, place=users[acc])
    rate = rng.uniform(0.002, 0.01)
    commission = np.maximum(1, (amount * rate).astype(np.int64))
    plan.add(RETENTION_COMMISSION, ts + 1, commission, user=users[acc], tx=tx, merchant_ring=ring)
    b.new_ring(BINDING_HIJACK, users, binder)


def coupon_farm(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """Fresh accounts on a few phones claim a merchant's coupons and use them at once."""
    n_acc = int(rng.integers(8, 31))
    s0 = _window(rng, b, left_ms=2 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_acc) * int(rng.integers(2 * HOUR_MS, DAY_MS))).astype(np.int64)
    )
    users, device, ip = _accounts(
        rng, b, ring, COUPON_FARM, signup, n_devices=int(rng.integers(1, 4)), ip_octets=HOSTING_A
    )
    target = _merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), 1)
    claims = rng.integers(1, 4, n_acc)
    acc = np.repeat(np.arange(n_acc), claims)
    n = len(acc)
    nth = np.arange(n) - np.repeat(np.cumsum(claims) - claims, claims)
    claimed = signup[acc] + rng.integers(5 * MINUTE_MS, 2 * HOUR_MS, n) + nth * HOUR_MS
    paid = claimed + rng.integers(MINUTE_MS, 20 * MINUTE_MS, n)
    keep = paid < b.end
    acc, claimed, paid, n = acc[keep], claimed[keep], paid[keep], int(keep.sum())
    value = rng.choice(np.array([500, 800, 1_000, 1_500]), n)
    amount = value + (value * rng.uniform(0.2, 1.0, n)).astype(np.int64) // 10 * 10
    tx = b.add_abuse_tx(
        ring, COUPON_FARM, paid, users[acc], np.full(n, target[0]), amount, device[acc], ip[acc],
        np.full(n, _NONE),
    )  # fmt: skip
    coupon = np.arange(n) + _coupons_so_far(plan)
    refs = {"user": users[acc], "merchant_tx": tx, "coupon": coupon, "place": users[acc]}
    plan.add(COUPON_ISSUE, claimed, value, **refs)
    plan.add(COUPON_REDEEM, paid, value, tx=tx, **refs)
    b.new_ring(COUPON_FARM, users, target)


def _coupons_so_far(plan: Plan) -> int:
    coupons = [c for c in plan.columns["coupon"] if len(c)]
    return int(max((c.max() for c in coupons), default=-1)) + 1


def points_collector(
    rng: np.random.Generator, b: Builder, ring: int, plan: Plan, cfg: WorldConfig
) -> None:
    """Fresh accounts on a few phones give their points to one account, which spends them."""
    n_givers = int(rng.integers(8, 26))
    s0 = _window(rng, b, left_ms=4 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_givers) * int(rng.integers(6 * HOUR_MS, 4 * DAY_MS))).astype(np.int64)
    )
    collector_signup = np.array([b.start - int(rng.integers(30 * DAY_MS, 200 * DAY_MS))])
    collector, c_device, c_ip = _accounts(
        rng, b, ring, POINTS_COLLECTOR, collector_signup, n_devices=1, ip_octets=RESIDENTIAL_A
    )
    givers, device, ip = _accounts(
        rng, b, ring, POINTS_COLLECTOR, signup, n_devices=int(rng.integers(1, 5)),
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
    points = rng.integers(2, 8, n) * 100
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
    n_acc = int(rng.integers(10, 41))
    s0 = _window(rng, b, left_ms=5 * DAY_MS)
    signup = np.sort(
        s0 + (rng.random(n_acc) * int(rng.integers(6 * HOUR_MS, 3 * DAY_MS))).astype(np.int64)
    )
    users, device, ip = _accounts(
        rng, b, ring, BINDING_FARM, signup, n_devices=int(rng.integers(1, 4)),
        ip_octets=RESIDENTIAL_A,
    )  # fmt: skip
    plan.add(
        BINDING, signup + rng.integers(MINUTE_MS, 30 * MINUTE_MS, n_acc), np.zeros(n_acc),
        user=users, merchant_ring=ring, place=users,
    )  # fmt: skip
    per_account = 1 + (rng.random(n_acc) < 0.5)
    acc = np.repeat(np.arange(n_acc), per_account)
    n = len(acc)
    ts = signup[acc] + rng.integers(HOUR_MS, 4 * DAY_MS, n)
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


SCENARIO_GROUPS = {
    BINDING_HIJACK: binding_hijack,
    COUPON_FARM: coupon_farm,
    POINTS_COLLECTOR: points_collector,
    BINDING_FARM: binding_farm,
}


def group_counts(cfg: WorldConfig, expected_legit: float) -> dict[int, int]:
    """Groups of each scenario: the config's rate per 100k legitimate transactions (times
    `fraud_scale`), rounded; at least `min_groups_per_scenario` where the rate is not 0.
    The same with or without the economics (which leaves the contract streams alone): a
    world without them has the groups' payments, not their platform events."""
    rates = {
        BINDING_HIJACK: cfg.binding_hijack_per_100k,
        COUPON_FARM: cfg.coupon_farm_per_100k,
        POINTS_COLLECTOR: cfg.points_collector_per_100k,
        BINDING_FARM: cfg.binding_farm_per_100k,
    }
    counts = {}
    for scenario, rate in rates.items():
        expected = cfg.fraud_scale * rate * expected_legit / 100_000
        counts[scenario] = 0 if expected <= 0 else max(cfg.min_groups_per_scenario, round(expected))
    return counts


def inject(rng: np.random.Generator, b: Builder, groups: dict[int, int], cfg: WorldConfig) -> Plan:
    """Adds `groups[scenario]` groups of each scenario, in scenario order; their platform
    events, for `platform_events` once the world is assembled."""
    plan = Plan()
    for scenario in sorted(groups):
        for _ in range(groups[scenario]):
            SCENARIO_GROUPS[scenario](rng, b, len(b.rings), plan, cfg)
    return plan


def platform_events(
    plan: Plan, b: Builder, world: Any, *, cfg: WorldConfig, schema: dict[str, Any]
) -> pl.DataFrame:
    """The plan's events with public ids (`schema`: the world's platform-event columns)."""
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

    def pick(values: pl.Series, rows: np.ndarray, numbers: np.ndarray) -> list[Any]:
        """The public value of each generator index (None where -1)."""
        found = values.to_list()
        return [found[numbers[r]] if r >= 0 else None for r in rows.tolist()]

    merchant = [
        m if m is not None else (ring_merchant.get(f"{p}ring{r}") if r >= 0 else None)
        for m, r in zip(
            pick(txs["merchant_id"], cols["merchant_tx"], t_num),
            cols["merchant_ring"].tolist(),
            strict=True,
        )
    ]
    n = len(cols["ts"])
    frame = pl.DataFrame(
        {
            "event_id": [f"{p}pa{i}" for i in range(n)],
            "ts": cols["ts"],
            "kind": cols["kind"].tolist(),
            "amount_cents": cols["amount"],
            "user_id": pick(signups["user_id"], cols["user"], u_num),
            "merchant_id": merchant,
            "tx_id": pick(txs["tx_id"], cols["tx"], t_num),
            "coupon_id": [f"{p}cpa{c}" if c >= 0 else None for c in cols["coupon"].tolist()],
            "counterparty_id": pick(signups["user_id"], cols["counterparty"], u_num),
            "region": [region.get(m) for m in merchant],
            "device_id": pick(signups["device_id"], cols["place"], u_num),
            "ip": pick(signups["ip"], cols["place"], u_num),
        },
        schema_overrides={name: kind for name, kind in schema.items() if kind == pl.String},
    )
    return frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
