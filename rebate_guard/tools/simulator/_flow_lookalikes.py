"""Legit look-alikes of the abuse of the commission, coupon and points flows (issue #21):
one function per look-alike, each adding one group of legit users (role: the look-alike),
their payments (legit, group: the look-alike) and their platform events to the flows'
`Plan` (truth: legit, group: the look-alike).

Each does what the abuse does on the features the rules read, for a reason of its own:

- `family_binding` (binding_farm): a family sharing one phone gets its members accounts at
  its local shop's counter, minutes apart, each bound to the shop; now and then a
  neighbour signs up a building's old people the same way;
- `shop_binding_burst` (binding_farm, binding_hijack): a popular shop's sign-up drive binds a
  morning's customers within hours, many on its Wi-Fi; some go on shopping in the mall,
  a big payment elsewhere within the hour of their binding;
- `family_points` (points_collector): relatives give their points to the one who does the
  family's shopping, who spends them within days;
- `coupon_hunters` (coupon_farm): deal hunters on one campus or office network claim the
  same merchants' coupons on deal days, several a day, and use them minutes later;
- `bound_regulars` (commission_cycle): a shop's regulars, bound to it, come back every few
  days and spend elsewhere too, each payment earning it retention commission;
- `rescan_regulars` (binding_hijack): a shop's regulars re-scan its QR code at their visits,
  each scan a binding again to the merchant they already belong to, and most then pay
  there; on some of those days they pay big elsewhere hours later (a re-binding right
  before a big payment elsewhere, as a hijacker's).

Everyone in these groups also lives an ordinary life: payments at popular merchants at the
world's activity (payments per user-day), so the group's behaviour is a part of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebate_guard.contract.records import (
    BINDING,
    COUPON_EXPIRE,
    COUPON_ISSUE,
    COUPON_REDEEM,
    POINTS_GRANT,
    POINTS_REDEEM,
    POINTS_TRANSFER,
)
from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.tools.simulator._abuse_economics import (
    COUPON_VALUES,
    Plan,
    _merchants_of,
    _window,
    commissions,
    coupons_so_far,
    spending,
    visits,
)
from rebate_guard.tools.simulator._builder import Builder
from rebate_guard.tools.simulator._common import (
    BEAUTY,
    BOUND_REGULARS,
    COUPON_HUNTERS,
    ENTERTAINMENT,
    FAMILY_BINDING,
    FAMILY_POINTS,
    GROCERY,
    OFFICE_A,
    RESCAN_REGULARS,
    RESIDENTIAL_A,
    RESTAURANT,
    RETAIL,
    SERVICES,
    SHOP_BINDING_BURST,
    lognormal_amounts,
    lognormal_delay,
    random_ips,
    sample_ts,
    weighted_choice,
)
from rebate_guard.tools.simulator._economics import _share
from rebate_guard.tools.simulator.config import WorldConfig

_NONE = -1
RATE_SIGMA = 0.9  # spread of people's activity (as the legit population's)
#: How long a claimed coupon stays valid (the platform's pushed ones: `coupon_valid_days`).
COUPON_VALID_MS = 7 * DAY_MS


@dataclass
class People:
    """A look-alike group's users (generator indices) and what they pay with."""

    look: int
    users: np.ndarray
    signup: np.ndarray
    device: np.ndarray
    home: np.ndarray  # home IP
    card: np.ndarray  # -1: none

    def pay(
        self,
        rng: np.random.Generator,
        b: Builder,
        who: np.ndarray,
        ts: np.ndarray,
        merchant: np.ndarray,
        amount: np.ndarray,
        *,
        ip: np.ndarray | None = None,
        device: np.ndarray | None = None,
    ) -> np.ndarray:
        """Their payments (positions `who`): on their phone, at home or on mobile data (or
        `ip`), mostly on their card; the new rows."""
        n = len(who)
        if ip is None:
            ip = np.where(rng.random(n) < 0.6, self.home[who], b.mobile_ips(rng, n))
        card = np.where(rng.random(n) < 0.9, self.card[who], _NONE)
        on = self.device[who] if device is None else device
        return b.add_lookalike_tx(self.look, ts, self.users[who], merchant, amount, on, ip, card)

    def everyday(
        self,
        rng: np.random.Generator,
        b: Builder,
        cfg: WorldConfig,
        activity: float,
        *,
        since: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Their ordinary payments from `since` (their signup, else) to the end at the
        world's activity: (who, ts, amount, rows)."""
        n = len(self.users)
        lo = np.maximum(b.start, self.signup + rng.integers(2 * MINUTE_MS, 3 * HOUR_MS, n))
        if since is not None:
            lo = np.maximum(lo, since)
        rate = rng.lognormal(np.log(activity) - RATE_SIGMA**2 / 2, RATE_SIGMA, n)
        who, ts, merchant, amount = spending(rng, b, cfg.n_merchants, rate, lo, b.end)
        return who, ts, amount, self.pay(rng, b, who, ts, merchant, amount)


def _people(
    rng: np.random.Generator,
    b: Builder,
    look: int,
    signup: np.ndarray,
    device: np.ndarray,
    signup_ip: np.ndarray,
    home: np.ndarray,
) -> People:
    users = b.add_lookalike_users(look, signup, device, signup_ip)
    card = np.where(rng.random(len(users)) < 0.9, b.new_cards(len(users)), _NONE)
    return People(look, users, signup, device, home, card)


def _established(rng: np.random.Generator, b: Builder, n: int) -> np.ndarray:
    return b.start - rng.integers(30 * DAY_MS, 300 * DAY_MS, n)


def _bound_commissions(
    rng: np.random.Generator,
    plan: Plan,
    cfg: WorldConfig,
    shop: int,
    people: People,
    bound: np.ndarray,
    paid: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """The shop's commission on its bound customers' payments after their binding."""
    who = np.concatenate([p[0] for p in paid])
    ts = np.concatenate([p[1] for p in paid])
    amount = np.concatenate([p[2] for p in paid])
    rows = np.concatenate([p[3] for p in paid])
    later = ts > bound[who]
    commissions(
        rng, plan, cfg, shop, user=people.users[who[later]], tx=rows[later], ts=ts[later],
        amount=amount[later],
    )  # fmt: skip


def family_binding(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """A family on one phone: its owner has had the app a while, the others (2-6 in all;
    7-15 when a neighbour signs up a building's old people) get accounts at the local
    shop's counter minutes apart, each bound to the shop minutes after; some pay there at
    once, then they all live on the phone, paying at the shop and around."""
    shop = int(_merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), 1)[0])
    helper = rng.random() < 0.15
    n = int(rng.integers(7, 16)) if helper else 2 + int(
        weighted_choice(rng, np.array([0.25, 0.35, 0.25, 0.1, 0.05]), 1)[0]
    )  # fmt: skip
    day = _window(rng, b, left_ms=3 * DAY_MS)
    category = int(b.merchants.col("category")[shop])
    at = int(sample_ts(rng, np.array([day]), np.array([day + DAY_MS]), category)[0])
    signup = np.concatenate(
        [_established(rng, b, 1), at + np.sort(rng.integers(0, 40 * MINUTE_MS, n - 1))]
    )
    phone = np.full(n, b.new_devices(1)[0])
    home = np.full(n, random_ips(rng, 1, RESIDENTIAL_A)[0])
    at_shop = b.mobile_ips(rng, 1)[0]
    signup_ip = np.where(np.arange(n) == 0, home, at_shop)
    people = _people(rng, b, FAMILY_BINDING, signup, phone, signup_ip, home)
    bound = np.maximum(signup, at) + rng.integers(MINUTE_MS, 30 * MINUTE_MS, n)
    plan.add(BINDING, bound, np.zeros(n), user=people.users, merchant=shop, place=people.users)
    # Some pay at the counter at once (the shop's welcome offer), on the family phone.
    counter = np.flatnonzero(rng.random(n) < 0.4)
    c_ts = bound[counter] + rng.integers(MINUTE_MS, 20 * MINUTE_MS, len(counter))
    median = b.merchants.col("median")[shop]
    c_amount = lognormal_amounts(
        rng, np.full(len(counter), 0.6 * median), np.full(len(counter), 0.4)
    )
    c_rows = people.pay(
        rng, b, counter, c_ts, np.full(len(counter), shop), c_amount,
        ip=np.full(len(counter), at_shop),
    )  # fmt: skip
    # Then the family's life, on the phone (a few members later on their own too), a third
    # of it at the shop.
    own = np.where(rng.random(n) < 0.4, b.new_devices(n), phone)
    people.device = own
    who, ts, amount, rows = people.everyday(rng, b, cfg, activity, since=bound + HOUR_MS)
    local = np.flatnonzero(rng.random(len(who)) < 0.35)
    l_ts = sample_ts(rng, bound[who[local]] + HOUR_MS, np.full(len(local), b.end), category)
    l_amount = lognormal_amounts(rng, np.full(len(local), median), np.full(len(local), 0.5))
    l_rows = people.pay(rng, b, who[local], l_ts, np.full(len(local), shop), l_amount)
    _bound_commissions(
        rng, plan, cfg, shop, people, bound,
        [(counter, c_ts, c_amount, c_rows), (who, ts, amount, rows),
         (who[local], l_ts, l_amount, l_rows)],
    )  # fmt: skip


def shop_binding_burst(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """A popular shop's sign-up drive: one morning 15-60 customers are bound to it within
    1-3 hours, most new accounts made at the counter (half on the shop's Wi-Fi), and pay
    there; a third go on shopping in the mall, some big; then their lives go on."""
    shop = int(_merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY, RETAIL, BEAUTY), 1)[0])
    n = int(rng.integers(15, 61))
    day = _window(rng, b, left_ms=3 * DAY_MS)
    opens = day - day % DAY_MS + int(rng.integers(7 * HOUR_MS, 10 * HOUR_MS))
    arrive = np.sort(opens + rng.integers(0, int(rng.integers(HOUR_MS, 3 * HOUR_MS)), n))
    new = rng.random(n) < 0.6
    signup = np.where(
        new, arrive - rng.integers(MINUTE_MS, 10 * MINUTE_MS, n), _established(rng, b, n)
    )
    wifi = random_ips(rng, 1, OFFICE_A)[0]
    home = random_ips(rng, n, RESIDENTIAL_A)
    on_wifi = rng.random(n) < 0.5
    here = np.where(on_wifi, wifi, b.mobile_ips(rng, n))
    people = _people(
        rng, b, SHOP_BINDING_BURST, signup, b.new_devices(n), np.where(new, here, home), home
    )
    median = b.merchants.col("median")[shop]
    pay_ts = arrive + rng.integers(MINUTE_MS, 15 * MINUTE_MS, n)
    everyone = np.arange(n)
    amount = lognormal_amounts(rng, np.full(n, float(median)), np.full(n, 0.5))
    rows = people.pay(rng, b, everyone, pay_ts, np.full(n, shop), amount, ip=here)
    # The binding was made on the phone the customer then paid on.
    plan.add(BINDING, arrive, np.zeros(n), user=people.users, merchant=shop, place_tx=rows)
    mall = np.flatnonzero(rng.random(n) < 0.3)
    m_ts = pay_ts[mall] + rng.integers(10 * MINUTE_MS, 90 * MINUTE_MS, len(mall))
    elsewhere = _merchants_of(rng, b, cfg.n_merchants, (RETAIL, ENTERTAINMENT, BEAUTY), len(mall))
    m_median = b.merchants.col("median")[elsewhere] * rng.uniform(1.0, 6.0, len(mall))
    m_amount = lognormal_amounts(rng, m_median, np.full(len(mall), 0.6))
    m_rows = people.pay(rng, b, mall, m_ts, elsewhere, m_amount)
    who, ts, e_amount, e_rows = people.everyday(rng, b, cfg, activity, since=pay_ts + HOUR_MS)
    _bound_commissions(
        rng, plan, cfg, shop, people, arrive,
        [(everyone, pay_ts, amount, rows), (mall, m_ts, m_amount, m_rows),
         (who, ts, e_amount, e_rows)],
    )  # fmt: skip


def family_points(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """4-15 relatives (a few living with the collector, on its home network or phone; a
    few just joined) give their points to the one who does the family's shopping, within
    hours to days, who spends them in 1-5 payments at groceries and shops soon after.

    They do it in the platform's app, which offers only what the points policy lets leave
    a book (docs/economics.md, "Points policy"): a relative gives at most the redeemable
    share of the rebates of their payments so far, in whole units (one with less than a
    unit has nothing to give, and gives nothing), and the shopper spends the redeemable
    share of what was given. Their points go to the family this way, not as vouchers of
    their own (`_economics._points` leaves them out)."""
    n = 1 + int(rng.integers(4, 16))  # the collector first
    pooled = _window(rng, b, left_ms=5 * DAY_MS)
    joined = rng.random(n) < 0.15
    joined[0] = False
    signup = np.where(
        joined, pooled - rng.integers(HOUR_MS, 5 * DAY_MS, n), _established(rng, b, n)
    )
    signup = np.maximum(signup, b.history_start)
    home = random_ips(rng, n, RESIDENTIAL_A)
    device = b.new_devices(n)
    household = np.flatnonzero(rng.random(n) < 0.25)
    home[household] = home[0]
    device[household[rng.random(len(household)) < 0.3]] = device[0]
    people = _people(rng, b, FAMILY_POINTS, signup, device, home, home)
    paid_by, paid_ts, _, paid_rows = people.everyday(rng, b, cfg, activity)
    givers = np.arange(1, n)
    given = np.maximum(
        pooled + (rng.random(n - 1) * int(rng.integers(HOUR_MS, 3 * DAY_MS))).astype(np.int64),
        signup[givers] + HOUR_MS,
    )
    meant = np.clip(np.round(rng.lognormal(np.log(800.0), 0.8, n - 1) / 100), 1, 200) * 100
    offered = _redeemable_units(b, cfg, paid_by, paid_ts, paid_rows, givers, given)
    points = np.minimum(meant, offered)
    last = int(given.max())  # the shopper goes out after the day's gifts, given or not
    gives = points > 0
    givers, given, points = givers[gives], given[gives], points[gives]
    collector = people.users[0]
    plan.add(POINTS_TRANSFER, given, points, user=people.users[givers], counterparty=collector)
    plan.add(POINTS_GRANT, given + 1, points, user=collector, counterparty=people.users[givers])
    k = int(rng.integers(1, 6))
    spend = np.sort(last + lognormal_delay(rng, k, 12 * HOUR_MS, 1.2, 10 * MINUTE_MS, 5 * DAY_MS))
    spend = spend[spend < b.end]
    k = len(spend)
    if k:
        shops = _merchants_of(rng, b, cfg.n_merchants, (GROCERY, RETAIL, RESTAURANT), k)
        bill = lognormal_amounts(rng, b.merchants.col("median")[shops] * 1.5, np.full(k, 0.5))
        rows = people.pay(rng, b, np.zeros(k, dtype=np.int64), spend, shops, bill)
        share = _redeemable(np.array([points.sum()]), cfg)[0] // k
        if share > 0:
            plan.add(POINTS_REDEEM, spend, np.full(k, share), user=collector, merchant_tx=rows)


def _redeemable(earned: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """floor(redeemable_share x earned), exact to the millionth (as the policy's)."""
    return _share(earned, cfg.redeemable_share)


def _redeemable_units(
    b: Builder,
    cfg: WorldConfig,
    paid_by: np.ndarray,
    paid_ts: np.ndarray,
    paid_rows: np.ndarray,
    who: np.ndarray,
    at: np.ndarray,
) -> np.ndarray:
    """What the app offers each of `who` (people positions) to give at `at`: the
    redeemable share of what their payments before then earned in the platform's books
    (each one's rebate and its consumption points, as `_economics._points` grants them),
    in whole units of 100. Sign-up bonuses are left out: the offer never exceeds the book."""
    amount = b.tx.col("amount")[paid_rows]
    rebate = _share(amount, b.merchants.col("rate_pct")[b.tx.col("merchant")[paid_rows]] / 100)
    basis = amount if cfg.consumption_points_basis == "bill" else rebate
    points = rebate + _share(basis, cfg.consumption_points_share)
    earned = np.array(
        # the consumption points are granted 1 ms after their payment
        [points[(paid_by == w) & (paid_ts + 1 < t)].sum() for w, t in zip(who, at, strict=True)],
        dtype=np.int64,
    )
    return _redeemable(earned, cfg) // 100 * 100


def coupon_hunters(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """5-25 deal hunters on one campus or office network (their own phones; a few join for
    the deals): on 3-10 deal days of 1-4 popular restaurants or groceries each comes with
    even odds, claims 1-4 coupons there and uses them minutes later; some lapse."""
    n = int(rng.integers(5, 26))
    network = random_ips(rng, 1, OFFICE_A)[0]
    deals = np.unique(
        _merchants_of(rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), int(rng.integers(1, 5)))
    )
    n_days = int(rng.integers(3, 11))
    first = _window(rng, b, left_ms=3 * DAY_MS)
    days = np.unique(
        first - first % DAY_MS + rng.integers(0, max(1, (b.end - first) // DAY_MS), n_days) * DAY_MS
    )
    joined = rng.random(n) < 0.2
    signup = np.where(joined, days[0] + rng.integers(0, 10 * HOUR_MS, n), _established(rng, b, n))
    home = random_ips(rng, n, RESIDENTIAL_A)
    people = _people(rng, b, COUPON_HUNTERS, signup, b.new_devices(n), np.full(n, network), home)
    people.everyday(rng, b, cfg, activity)
    comes = rng.random((len(days), n)) < 0.5
    day_of, who = np.nonzero(comes)
    claims = rng.integers(1, 5, len(who))
    day_of, who = np.repeat(day_of, claims), np.repeat(who, claims)
    merchant = deals[rng.integers(0, len(deals), len(who))]
    category = b.merchants.col("category")[merchant]
    claimed = sample_ts(rng, days[day_of], days[day_of] + DAY_MS, category)
    ok = (claimed > signup[who] + MINUTE_MS) & (claimed < b.end - HOUR_MS)
    who, merchant, claimed = who[ok], merchant[ok], claimed[ok]
    m = len(who)
    value = rng.choice(COUPON_VALUES, m)
    coupon = np.arange(m) + coupons_so_far(plan)
    ip = np.where(rng.random(m) < 0.7, network, b.mobile_ips(rng, m))
    used = rng.random(m) < 0.85
    paid = claimed + lognormal_delay(rng, m, 10 * MINUTE_MS, 1.0, MINUTE_MS, 2 * HOUR_MS)
    used &= paid < b.end  # a coupon claimed just before the end lapses after it
    u = np.flatnonzero(used)
    amount = (value[u] * rng.uniform(1.1, 3.0, len(u))).astype(np.int64) // 10 * 10
    rows = people.pay(rng, b, who[u], paid[u], merchant[u], amount, ip=ip[u])
    users = people.users[who]
    plan.add(
        COUPON_ISSUE, claimed, value, user=users, merchant=merchant, coupon=coupon,
        place=users,
    )  # fmt: skip
    plan.add(
        COUPON_REDEEM, paid[u], value[u], user=users[u], merchant=merchant[u], coupon=coupon[u],
        tx=rows, place_tx=rows,
    )  # fmt: skip
    lapse = np.flatnonzero(~used & (claimed + COUPON_VALID_MS < b.end))
    plan.add(
        COUPON_EXPIRE, claimed[lapse] + COUPON_VALID_MS, value[lapse], user=users[lapse],
        merchant=merchant[lapse], coupon=coupon[lapse],
    )  # fmt: skip


def _regulars(
    rng: np.random.Generator, b: Builder, cfg: WorldConfig, look: int
) -> tuple[int, People, np.ndarray]:
    """5-20 regulars of a popular shop (most established accounts, a few joined in the 20
    days before the group's window): (the shop, them, their first visit, in the window's
    first 5 days)."""
    categories = (RESTAURANT, GROCERY, BEAUTY, SERVICES, RETAIL)
    shop = int(_merchants_of(rng, b, cfg.n_merchants, categories, 1)[0])
    category = int(b.merchants.col("category")[shop])
    n = int(rng.integers(5, 21))
    a = _window(rng, b, left_ms=10 * DAY_MS)
    signup = np.where(
        rng.random(n) < 0.9, _established(rng, b, n), a - rng.integers(HOUR_MS, 20 * DAY_MS, n)
    )
    signup = np.maximum(signup, b.history_start)
    home = random_ips(rng, n, RESIDENTIAL_A)
    people = _people(rng, b, look, signup, b.new_devices(n), home, home)
    lo = np.maximum(a, signup + HOUR_MS)
    first = sample_ts(rng, lo, np.minimum(lo + 5 * DAY_MS, b.end - HOUR_MS), category)
    return shop, people, first


def bound_regulars(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """5-20 regulars of a popular shop, bound to it at a visit in the group's first days,
    come back every 1-6 days (each their own pace) and live their lives elsewhere; the shop
    earns its retention commission on every later payment."""
    shop, people, first = _regulars(rng, b, cfg, BOUND_REGULARS)
    n = len(people.users)
    gap = DAY_MS * rng.uniform(1.0, 6.0, n) * rng.lognormal(0.0, 0.3, n)
    v_who, v_ts = visits(rng, b, shop, first, b.end, gap)
    who = np.concatenate([np.arange(n), v_who])
    ts = np.concatenate([first, v_ts])
    median = float(b.merchants.col("median")[shop])
    amount = lognormal_amounts(rng, np.full(len(who), median), np.full(len(who), 0.45))
    rows = people.pay(rng, b, who, ts, np.full(len(who), shop), amount)
    plan.add(BINDING, first, np.zeros(n), user=people.users, merchant=shop, place_tx=rows[:n])
    rate = activity * rng.uniform(1.0, 4.0)
    lo_e = np.maximum(b.start, people.signup + HOUR_MS)
    e_who, e_ts, e_merchant, e_amount = spending(
        rng, b, cfg.n_merchants, np.full(n, rate), lo_e, b.end
    )
    e_rows = people.pay(rng, b, e_who, e_ts, e_merchant, e_amount)
    _bound_commissions(
        rng,
        plan,
        cfg,
        shop,
        people,
        first,
        [(who, ts, amount, rows), (e_who, e_ts, e_amount, e_rows)],
    )


def rescan_regulars(
    rng: np.random.Generator, b: Builder, plan: Plan, cfg: WorldConfig, activity: float
) -> None:
    """5-20 regulars of a popular shop, bound to it at a visit in the group's first days,
    come back every 2-8 days (each their own pace) and scan its QR code at the door each
    time: the platform records a binding to the shop again. After a scan most pay there
    (`rescan_pay_share`; the others claimed an offer or read the menu); on a quarter of
    those days they go on to a big purchase elsewhere 20 min-8 h later. They live their
    lives around it, and the shop earns its commission on every later payment."""
    shop, people, first = _regulars(rng, b, cfg, RESCAN_REGULARS)
    n = len(people.users)
    median = float(b.merchants.col("median")[shop])
    f_amount = lognormal_amounts(rng, np.full(n, median), np.full(n, 0.45))
    f_rows = people.pay(rng, b, np.arange(n), first, np.full(n, shop), f_amount)
    plan.add(BINDING, first, np.zeros(n), user=people.users, merchant=shop, place_tx=f_rows)
    gap = DAY_MS * rng.uniform(2.0, 8.0, n) * rng.lognormal(0.0, 0.3, n)
    v_who, scanned = visits(rng, b, shop, first, b.end - HOUR_MS, gap)
    # The scan, then (mostly) the payment at the counter minutes later, on the same phone.
    pays = rng.random(len(v_who)) < cfg.rescan_pay_share
    p_who = v_who[pays]
    p_ts = scanned[pays] + rng.integers(MINUTE_MS, 15 * MINUTE_MS, len(p_who))
    p_amount = lognormal_amounts(rng, np.full(len(p_who), median), np.full(len(p_who), 0.45))
    p_rows = people.pay(rng, b, p_who, p_ts, np.full(len(p_who), shop), p_amount)
    place_tx = np.full(len(v_who), _NONE, dtype=np.int64)
    place_tx[pays] = p_rows
    plan.add(
        BINDING, scanned, np.zeros(len(v_who)), user=people.users[v_who], merchant=shop,
        place=np.where(pays, _NONE, people.users[v_who]), place_tx=place_tx,
    )  # fmt: skip
    # A big purchase elsewhere the same day, after the visit.
    big = np.flatnonzero(rng.random(len(v_who)) < 0.25)
    b_ts = scanned[big] + rng.integers(20 * MINUTE_MS, 8 * HOUR_MS, len(big))
    keep = b_ts < b.end
    big, b_ts = big[keep], b_ts[keep]
    elsewhere = _merchants_of(rng, b, cfg.n_merchants, (RETAIL, ENTERTAINMENT, BEAUTY), len(big))
    b_median = b.merchants.col("median")[elsewhere] * rng.uniform(2.0, 10.0, len(big))
    b_amount = lognormal_amounts(rng, b_median, np.full(len(big), 0.6))
    b_rows = people.pay(rng, b, v_who[big], b_ts, elsewhere, b_amount)
    who, ts, e_amount, e_rows = people.everyday(rng, b, cfg, activity)
    _bound_commissions(
        rng, plan, cfg, shop, people, first,
        [(np.arange(n), first, f_amount, f_rows), (p_who, p_ts, p_amount, p_rows),
         (v_who[big], b_ts, b_amount, b_rows), (who, ts, e_amount, e_rows)],
    )  # fmt: skip


LOOKALIKE_GROUPS = {
    FAMILY_BINDING: family_binding,
    SHOP_BINDING_BURST: shop_binding_burst,
    FAMILY_POINTS: family_points,
    COUPON_HUNTERS: coupon_hunters,
    BOUND_REGULARS: bound_regulars,
    RESCAN_REGULARS: rescan_regulars,
}


def per_100k(cfg: WorldConfig) -> dict[int, float]:
    """Groups of each look-alike per 100k legitimate transactions."""
    return {
        FAMILY_BINDING: cfg.family_binding_per_100k,
        SHOP_BINDING_BURST: cfg.shop_binding_burst_per_100k,
        FAMILY_POINTS: cfg.family_points_per_100k,
        COUPON_HUNTERS: cfg.coupon_hunters_per_100k,
        BOUND_REGULARS: cfg.bound_regulars_per_100k,
        RESCAN_REGULARS: cfg.rescan_regulars_per_100k,
    }


def group_counts(cfg: WorldConfig, expected_legit: float) -> dict[int, int]:
    """Groups of each look-alike: its rate per 100k legitimate transactions, rounded (legit
    behaviour: not times `fraud_scale`, no minimum)."""
    return {look: round(rate * expected_legit / 100_000) for look, rate in per_100k(cfg).items()}


def inject(
    rng: np.random.Generator,
    b: Builder,
    groups: dict[int, int],
    cfg: WorldConfig,
    plan: Plan,
) -> None:
    """Adds `groups[look]` groups of each look-alike, in code order, and their platform
    events to `plan` (whose `activity` their people pay at)."""
    for look in sorted(groups):
        for _ in range(groups[look]):
            plan.making = (_NONE, look)
            LOOKALIKE_GROUPS[look](rng, b, plan, cfg, plan.activity)
    plan.making = (_NONE, _NONE)
