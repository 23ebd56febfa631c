"""Injected abuse: one function per scenario, each adding one group (users, merchants, tx).

A group is small (a handful to a few hundred accounts), so looping over groups in Python is
cheap; everything inside a group is generated with whole-array numpy operations.
"""

from __future__ import annotations

import numpy as np

from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.tools.simulator._builder import Builder
from rebate_guard.tools.simulator._common import (
    AMOUNT_SIGMA,
    BEAUTY,
    BRUSHING,
    CASH_OUT,
    COLLUSION_RING,
    ENTERTAINMENT,
    GROCERY,
    HOSTING_A,
    PROFILE_FLAT,
    PYRAMID,
    REFERRAL_FARM,
    RESIDENTIAL_A,
    RESTAURANT,
    RETAIL,
    SERVICES,
    lognormal_amounts,
    lognormal_delay,
    midnight,
    random_ips,
    sample_ts,
    weighted_choice,
)
from rebate_guard.tools.simulator._legit import add_abuse_merchants
from rebate_guard.tools.simulator.config import WorldConfig

ROUND_AMOUNTS = np.array([1_000, 2_000, 3_000, 5_000, 6_800, 8_800, 9_900, 10_000, 20_000])
RING_AMOUNTS = np.array([10_000, 20_000, 30_000, 50_000, 66_600, 88_800, 100_000])
PACKAGE_PRICES = np.array([99_900, 49_900, 29_900, 19_900, 9_900])  # by referral tier

# Rough transactions per group, for sizing worlds to target_transactions.
MEAN_TX_PER_GROUP = {
    BRUSHING: 480.0,
    REFERRAL_FARM: 95.0,
    COLLUSION_RING: 110.0,
    CASH_OUT: 145.0,
    PYRAMID: 400.0,
}
LONE_PAIRS = (2, 7)  # a lone cash-out account's purchase-refund pairs (2-6)
LONE_CASH_OUT_TX = 8.0
BRUSHING_START_HOURS = {"night": (0, 3), "day": (9, 18)}  # burst start, local hour range


def mean_tx_per_group(cfg: WorldConfig) -> dict[int, float]:
    """`MEAN_TX_PER_GROUP` under the config's tactics (lone cash-out groups are small)."""
    lone = cfg.cash_out_lone_share
    cash_out = MEAN_TX_PER_GROUP[CASH_OUT] * (1 - lone) + LONE_CASH_OUT_TX * lone
    return {**MEAN_TX_PER_GROUP, CASH_OUT: cash_out}


def _legit_merchants(
    rng: np.random.Generator, b: Builder, n_legit: int, categories: tuple[int, ...], n: int
) -> np.ndarray:
    cat = b.merchants.col("category")[:n_legit]
    pop = b.merchants.col("popularity")[:n_legit]
    pool = np.flatnonzero(np.isin(cat, categories))
    if len(pool) == 0:
        pool = np.arange(n_legit)
    return np.unique(pool[weighted_choice(rng, pop[pool], n)])


def _older_signup(rng: np.random.Generator, b: Builder, n: int) -> np.ndarray:
    return b.start - rng.integers(30 * DAY_MS, b.start - b.history_start, n)


def _window_start(rng: np.random.Generator, b: Builder, min_left_ms: int) -> int:
    """A random time in the window leaving at least min_left_ms (or half the window)."""
    span = b.end - b.start
    latest = b.end - min(min_left_ms, span // 2)
    return int(rng.integers(b.start, max(b.start + 1, latest)))


def brushing(rng: np.random.Generator, b: Builder, ring: int, cfg: WorldConfig) -> None:
    """A merchant plus accounts it controls buying there in bursts, often round amounts."""
    category = np.array([rng.choice([RETAIL, BEAUTY, SERVICES])])
    merchant = add_abuse_merchants(
        rng, b, category, 18, 30, BRUSHING, ring, cfg.ring_merchant_popularity
    )
    n_acc = int(rng.integers(8, 31))
    devices = b.new_devices(int(rng.integers(2, 7)))
    ips = random_ips(rng, int(rng.integers(1, 4)), RESIDENTIAL_A)
    cards = b.new_cards(int(rng.integers(2, 6)))
    acc_device = devices[rng.permutation(n_acc) % len(devices)]
    shared_phones = b.new_phones(max(1, n_acc // 3))
    own_phones = b.new_phones(n_acc)
    phone = np.where(
        rng.random(n_acc) < 0.5,
        shared_phones[rng.integers(0, len(shared_phones), n_acc)],
        own_phones,
    )

    n_bursts = int(rng.integers(3, 9))
    first = _window_start(rng, b, 3 * DAY_MS)
    b_start = sample_ts(
        rng, np.full(n_bursts, first), np.full(n_bursts, b.end - 3 * HOUR_MS), PROFILE_FLAT
    )
    b_start[0] = first
    if cfg.brushing_hours != "any":  # bursts moved to the night or the working day
        lo_h, hi_h = BRUSHING_START_HOURS[cfg.brushing_hours]
        b_start = midnight(b_start) + rng.integers(lo_h * HOUR_MS, hi_h * HOUR_MS, n_bursts)
        b_start = np.where(b_start < b.start, b_start + DAY_MS, b_start)
        b_start = np.where(b_start >= b.end - 3 * HOUR_MS, b_start - DAY_MS, b_start)
    duration = rng.integers(30 * MINUTE_MS, 3 * HOUR_MS, n_bursts)
    sizes = rng.integers(30, 151, n_bursts)
    burst = np.repeat(np.arange(n_bursts), sizes)
    ts = b_start[burst] + (rng.random(len(burst)) * duration[burst]).astype(np.int64)
    ts = np.minimum(ts, b.end - 1)
    busy = rng.pareto(1.5, n_acc) + 1.0  # a few accounts do most of the buying
    acc = weighted_choice(rng, busy, len(ts))
    n_tx = len(ts)
    median = b.merchants.col("median")[merchant]
    amount = lognormal_amounts(rng, np.full(n_tx, median[0]), np.full(n_tx, 0.4))
    round_ = rng.random(n_tx) < cfg.brushing_round_share
    amount[round_] = ROUND_AMOUNTS[rng.integers(0, len(ROUND_AMOUNTS), int(round_.sum()))]
    card = cards[rng.integers(0, len(cards), n_tx)]
    card[rng.random(n_tx) < 0.15] = -1

    # Accounts are registered in batches on the merchant's phones before their first burst.
    first_tx = np.full(n_acc, b_start.min(), dtype=np.int64)
    np.minimum.at(first_tx, acc, ts)
    signup = first_tx - rng.integers(HOUR_MS, 5 * DAY_MS, n_acc)
    order = np.argsort(signup, kind="stable")
    referrer = np.full(n_acc, -1, dtype=np.int64)
    users = b.add_abuse_users(
        ring,
        BRUSHING,
        signup,
        referrer,
        acc_device,
        ips[rng.integers(0, len(ips), n_acc)],
        phone,
    )
    chained = rng.random(n_acc) < 0.2
    chained[order[0]] = False
    rank = np.empty(n_acc, dtype=np.int64)
    rank[order] = np.arange(n_acc)
    prev = order[np.maximum(rank - 1, 0)]
    who = np.flatnonzero(chained & (signup[prev] < signup))
    b.users.set("referrer", users[who], users[prev[who]])
    b.add_abuse_tx(
        ring,
        BRUSHING,
        ts,
        users[acc],
        np.full(n_tx, merchant[0]),
        amount,
        acc_device[acc],
        ips[rng.integers(0, len(ips), n_tx)],
        card,
    )
    b.new_ring(BRUSHING, users, merchant)


def referral_farm(rng: np.random.Generator, b: Builder, ring: int, cfg: WorldConfig) -> None:
    """Young accounts on few devices/IPs/phones referring each other, small qualifying buys."""
    n_acc = int(rng.integers(30, 121))
    devices = b.new_devices(int(rng.integers(2, 6)))
    ips = random_ips(rng, int(rng.integers(1, 4)), HOSTING_A)
    phones = b.new_phones(int(rng.integers(5, 16)))
    cards = b.new_cards(int(rng.integers(1, 4)))
    s0 = _window_start(rng, b, 2 * DAY_MS)
    span = int(rng.integers(6 * HOUR_MS, 3 * DAY_MS))
    span = min(span, b.end - HOUR_MS - s0)
    signup = np.sort(s0 + (rng.random(n_acc) * span).astype(np.int64)) + np.arange(n_acc)
    # Referral structure: a star around 1-3 hubs mixed with chains.
    n_hubs = int(rng.integers(1, 4))
    local_ref = np.full(n_acc, -1, dtype=np.int64)
    i = np.arange(1, n_acc)
    hub = np.minimum(rng.integers(0, n_hubs, n_acc - 1), i - 1)
    local_ref[1:] = np.where(rng.random(n_acc - 1) < 0.6, hub, i - 1)
    acc_device = devices[rng.integers(0, len(devices), n_acc)]
    if cfg.farm_devices == "rotating":  # a fresh handset id every 1-3 accounts
        per = int(rng.integers(1, 4))
        acc_device = b.new_devices(-(-n_acc // per))[np.arange(n_acc) // per]
    users = b.add_abuse_users(
        ring,
        REFERRAL_FARM,
        signup,
        np.full(n_acc, -1),
        acc_device,
        ips[rng.integers(0, len(ips), n_acc)],
        phones[rng.integers(0, len(phones), n_acc)],
    )
    has_ref = local_ref >= 0
    b.users.set("referrer", users[has_ref], users[local_ref[has_ref]])

    merchants = _legit_merchants(
        rng, b, cfg.n_merchants, (RESTAURANT, GROCERY), int(rng.integers(1, 4))
    )
    n_buys = 1 + (rng.random(n_acc) < 0.35) + (rng.random(n_acc) < 0.1)
    acc = np.repeat(np.arange(n_acc), n_buys)
    nth = np.arange(len(acc)) - np.repeat(np.cumsum(n_buys) - n_buys, n_buys)
    first = lognormal_delay(rng, len(acc), 20 * MINUTE_MS, 0.8, 3 * MINUTE_MS, 6 * HOUR_MS)
    later = rng.integers(10 * MINUTE_MS, DAY_MS, len(acc)) * nth
    ts = signup[acc] + first + later
    keep = ts < b.end
    acc, ts = acc[keep], ts[keep]
    n_tx = len(acc)
    threshold = int(rng.choice([1_000, 1_500, 2_000]))
    amount = threshold + np.where(rng.random(n_tx) < 0.5, 0, rng.integers(0, 300, n_tx) // 10 * 10)
    card = np.where(rng.random(n_tx) < 0.4, -1, cards[rng.integers(0, len(cards), n_tx)])
    b.add_abuse_tx(
        ring,
        REFERRAL_FARM,
        ts,
        users[acc],
        merchants[rng.integers(0, len(merchants), n_tx)],
        amount,
        acc_device[acc],
        ips[rng.integers(0, len(ips), n_tx)],
        card,
    )
    b.new_ring(REFERRAL_FARM, users, merchants)


def collusion_ring(rng: np.random.Generator, b: Builder, ring: int, cfg: WorldConfig) -> None:
    """A closed set of users x high-rate merchants cycling money with repeated round amounts."""
    n_users = int(rng.integers(3, 9))
    n_merch = int(rng.integers(2, 5))
    categories = rng.choice(np.array([SERVICES, BEAUTY, ENTERTAINMENT]), n_merch)
    merchants = add_abuse_merchants(
        rng, b, categories, 25, 30, COLLUSION_RING, ring, cfg.ring_merchant_popularity
    )
    a = _window_start(rng, b, 7 * DAY_MS)
    z = min(b.end, a + int(rng.integers(7, 22)) * DAY_MS)
    older = rng.random(n_users) < 0.7
    signup = np.where(
        older,
        _older_signup(rng, b, n_users),
        a - rng.integers(HOUR_MS, 10 * DAY_MS, n_users),
    )
    devices = b.new_devices(n_users)
    share = rng.random(n_users) < 0.3
    devices[share] = devices[rng.integers(0, n_users, int(share.sum()))]
    home = random_ips(rng, n_users, RESIDENTIAL_A)
    cards = b.new_cards(n_users)
    users = b.add_abuse_users(
        ring, COLLUSION_RING, signup, np.full(n_users, -1), devices, home, b.new_phones(n_users)
    )
    lo = np.maximum(a, signup + HOUR_MS)
    m_cat = b.merchants.col("category")
    if cfg.collusion_pattern == "rounds":
        acc, ts = _payment_rounds(rng, lo, a, z)
        n_tx = len(acc)
        merchant = merchants[rng.integers(0, n_merch, n_tx)]
    else:  # steady: ~1.5 payments a day each, at the merchants' usual hours
        counts = rng.poisson(1.5 * np.maximum(0, z - lo) / DAY_MS)
        acc = np.repeat(np.arange(n_users), counts)
        n_tx = len(acc)
        merchant = merchants[rng.integers(0, n_merch, n_tx)]
        ts = sample_ts(rng, lo[acc], np.full(n_tx, z), m_cat[merchant])
    values = rng.choice(RING_AMOUNTS, int(rng.integers(2, 4)), replace=False)
    amount = values[rng.integers(0, len(values), n_tx)]
    other = rng.random(n_tx) < 0.2
    median = b.merchants.col("median")[merchant[other]]
    amount[other] = lognormal_amounts(rng, median, AMOUNT_SIGMA[m_cat[merchant[other]]])
    ip = np.where(rng.random(n_tx) < 0.7, home[acc], b.mobile_ips(rng, n_tx))
    b.add_abuse_tx(
        ring, COLLUSION_RING, ts, users[acc], merchant, amount, devices[acc], ip, cards[acc]
    )
    b.new_ring(COLLUSION_RING, users, merchants)


def _payment_rounds(
    rng: np.random.Generator, lo: np.ndarray, a: int, z: int
) -> tuple[np.ndarray, np.ndarray]:
    """Members pay in rounds: every 1-4 days all active members pay 1+ times within one
    10-60 minute window, then nothing until the next round (about 1.5 payments a day each)."""
    gap = int(rng.integers(DAY_MS, 4 * DAY_MS))
    n_rounds = max(1, (z - a) // gap)
    opens = a + np.arange(n_rounds) * gap + rng.integers(0, 12 * HOUR_MS, n_rounds)
    window = rng.integers(10 * MINUTE_MS, HOUR_MS, n_rounds)
    member = np.tile(np.arange(len(lo)), n_rounds)
    round_of = np.repeat(np.arange(n_rounds), len(lo))
    times = 1 + rng.poisson(max(0.0, 1.5 * gap / DAY_MS - 1.0), len(member))
    acc, round_of = np.repeat(member, times), np.repeat(round_of, times)
    ts = opens[round_of] + (rng.random(len(acc)) * window[round_of]).astype(np.int64)
    keep = (ts >= lo[acc]) & (ts < z)
    return acc[keep], ts[keep]


def cash_out(rng: np.random.Generator, b: Builder, ring: int, cfg: WorldConfig) -> None:
    """Big purchases refunded minutes to hours later, on cards/devices shared by a few accounts
    (organised), or by one account on its own card (lone, `cash_out_lone_share`)."""
    lone = cfg.cash_out_lone_share > 0 and rng.random() < cfg.cash_out_lone_share
    n_acc = 1 if lone else int(rng.integers(2, 7))
    cards = b.new_cards(1 if lone else int(rng.integers(1, 3)))
    devices = b.new_devices(1 if lone else int(rng.integers(1, 4)))
    ips = random_ips(rng, 1 if lone else int(rng.integers(1, 3)), RESIDENTIAL_A)
    merchants = _legit_merchants(
        rng, b, cfg.n_merchants, (RETAIL, ENTERTAINMENT, BEAUTY), int(rng.integers(1, 4))
    )
    a = _window_start(rng, b, 5 * DAY_MS)
    z = min(b.end, a + int(rng.integers(5, 16)) * DAY_MS)
    older = rng.random(n_acc) < 0.5
    signup = np.where(
        older, _older_signup(rng, b, n_acc), a - rng.integers(HOUR_MS, 3 * DAY_MS, n_acc)
    )
    acc_device = devices[rng.integers(0, len(devices), n_acc)]
    users = b.add_abuse_users(
        ring,
        CASH_OUT,
        signup,
        np.full(n_acc, -1),
        acc_device,
        ips[rng.integers(0, len(ips), n_acc)],
        b.new_phones(n_acc),
    )
    lo = np.maximum(a, signup + HOUR_MS)
    pairs = rng.integers(*LONE_PAIRS, n_acc) if lone else rng.integers(8, 26, n_acc)
    acc = np.repeat(np.arange(n_acc), pairs)
    n_tx = len(acc)
    m_cat = b.merchants.col("category")
    merchant = merchants[rng.integers(0, len(merchants), n_tx)]
    hi = np.maximum(lo[acc] + HOUR_MS, z - HOUR_MS)
    ts = sample_ts(rng, lo[acc], hi, m_cat[merchant])
    amount = lognormal_amounts(rng, np.full(n_tx, 60_000.0), np.full(n_tx, 0.6))
    round_ = rng.random(n_tx) < 0.4
    amount[round_] = np.maximum(1_000, np.round(amount[round_] / 1_000) * 1_000)
    card = cards[rng.integers(0, len(cards), n_tx)]
    device = np.where(
        rng.random(n_tx) < 0.8, acc_device[acc], devices[rng.integers(0, len(devices), n_tx)]
    )
    ip = np.where(
        rng.random(n_tx) < 0.6, ips[rng.integers(0, len(ips), n_tx)], b.mobile_ips(rng, n_tx)
    )
    pay = b.add_abuse_tx(ring, CASH_OUT, ts, users[acc], merchant, amount, device, ip, card)
    delay = lognormal_delay(rng, n_tx, 40 * MINUTE_MS, 0.9, 3 * MINUTE_MS, 8 * HOUR_MS)
    r_ts = ts + delay
    ok = r_ts < b.end
    b.add_abuse_tx(
        ring,
        CASH_OUT,
        r_ts[ok],
        users[acc[ok]],
        merchant[ok],
        amount[ok],
        device[ok],
        ip[ok],
        card[ok],
        refund_of=pay[ok],
    )
    b.new_ring(CASH_OUT, users, merchants)


def _pyramid_tree(rng: np.random.Generator, depth: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """parent (-1 for the root) and tier of each node; a spine guarantees the depth."""
    parent = [-1, *range(depth)]
    tier = list(range(depth + 1))
    eligible = list(range(depth))  # nodes that may still recruit (tier < depth)
    while len(parent) < size:
        p = eligible[int(rng.integers(0, len(eligible)))]
        parent.append(p)
        tier.append(tier[p] + 1)
        if tier[-1] < depth:
            eligible.append(len(parent) - 1)
    return np.array(parent, dtype=np.int64), np.array(tier, dtype=np.int64)


def pyramid(rng: np.random.Generator, b: Builder, ring: int, cfg: WorldConfig) -> None:
    """A referral tree deeper than 3 tiers growing fast; members buy packages to qualify."""
    depth = int(rng.integers(4, 7))
    parent, tier = _pyramid_tree(rng, depth, int(rng.integers(40, 201)))
    n = len(parent)
    t_root = int(rng.integers(b.start, b.start + max(1, int(0.3 * (b.end - b.start)))))
    cap = int(min(2 * DAY_MS, 0.8 * (b.end - t_root) / depth))
    delay = lognormal_delay(rng, n, min(8 * HOUR_MS, cap // 2), 0.9, 20 * MINUTE_MS, cap)
    # Nodes are created parent-first, so a parent's time is known when its child is reached.
    active = np.empty(n, dtype=np.int64)
    active[0] = t_root
    for t in range(1, depth + 1):
        idx = np.flatnonzero(tier == t)
        active[idx] = active[parent[idx]] + delay[idx]
    signup = active.copy()
    if rng.random() < 0.5:  # the root is often an established account
        signup[0] = _older_signup(rng, b, 1)[0]
    keep = active < b.end - 30 * MINUTE_MS
    new_index = np.cumsum(keep) - 1
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)[keep]
    tier, signup, active = tier[keep], signup[keep], active[keep]
    n = len(tier)
    own_device = b.new_devices(n)
    signup_device = own_device.copy()
    onboarded = (rng.random(n) < 0.2) & (parent >= 0)
    signup_device[onboarded] = own_device[parent[onboarded]]  # recruiter's phone
    home = random_ips(rng, n, RESIDENTIAL_A)
    users = b.add_abuse_users(
        ring, PYRAMID, signup, np.full(n, -1), signup_device, home, b.new_phones(n)
    )
    has_parent = parent >= 0
    b.users.set("referrer", users[has_parent], users[parent[has_parent]])

    scheme = add_abuse_merchants(
        rng,
        b,
        np.array([rng.choice([BEAUTY, SERVICES])]),
        20,
        30,
        PYRAMID,
        ring,
        cfg.ring_merchant_popularity,
    )
    merchants = scheme
    if rng.random() < 0.5:
        merchants = np.concatenate(
            [scheme, _legit_merchants(rng, b, cfg.n_merchants, (BEAUTY,), 1)]
        )
    first = active + lognormal_delay(rng, n, 2 * HOUR_MS, 0.8, 10 * MINUTE_MS, DAY_MS)
    period = rng.integers(5 * DAY_MS, 9 * DAY_MS, n)
    n_buys = np.where(first < b.end, 1 + np.maximum(0, b.end - 1 - first) // period, 0)
    acc = np.repeat(np.arange(n), n_buys)
    nth = np.arange(len(acc)) - np.repeat(np.cumsum(n_buys) - n_buys, n_buys)
    ts = first[acc] + nth * period[acc] + rng.integers(-HOUR_MS, HOUR_MS, len(acc)) * (nth > 0)
    ts = np.minimum(ts, b.end - 1)
    n_tx = len(acc)
    price = PACKAGE_PRICES[np.minimum(tier[acc], len(PACKAGE_PRICES) - 1)]
    odd = rng.random(n_tx) < 0.1
    price[odd] = PACKAGE_PRICES[rng.integers(0, len(PACKAGE_PRICES), int(odd.sum()))]
    merchant = np.where(rng.random(n_tx) < 0.85, scheme[0], merchants[-1])
    cards = b.new_cards(n)
    card = np.where(rng.random(n_tx) < 0.9, cards[acc], -1)
    ip = np.where(rng.random(n_tx) < 0.6, home[acc], b.mobile_ips(rng, n_tx))
    b.add_abuse_tx(ring, PYRAMID, ts, users[acc], merchant, price, own_device[acc], ip, card)
    b.new_ring(PYRAMID, users, merchants)


SCENARIO_GROUPS = {
    BRUSHING: brushing,
    REFERRAL_FARM: referral_farm,
    COLLUSION_RING: collusion_ring,
    CASH_OUT: cash_out,
    PYRAMID: pyramid,
}


def inject(rng: np.random.Generator, b: Builder, groups: dict[int, int], cfg: WorldConfig) -> None:
    """Add `groups[scenario]` groups of each scenario, in scenario order."""
    for scenario in sorted(groups):
        for _ in range(groups[scenario]):
            SCENARIO_GROUPS[scenario](rng, b, len(b.rings), cfg)
