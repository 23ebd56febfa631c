"""The legit world: merchants, users with habits, the look-alike groups, and their transactions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS
from rebate_guard.tools.simulator._builder import Builder
from rebate_guard.tools.simulator._common import (
    AMOUNT_SIGMA,
    BIG_PURCHASE,
    CATEGORY_SHARE,
    DEEP_REFERRAL,
    DEEP_REFERRAL_DEPTH,
    FAMILY_DEVICE,
    GROCERY,
    HIGH_RATE_MERCHANT,
    HIGH_RATE_PCT,
    LEGIT,
    LOYAL_DAILY,
    LUNCH_RUSH,
    MEDIAN_CENTS,
    MOBILE_A,
    NAT_POOL,
    NO_LOOK,
    OFFICE_A,
    OFFICE_IP,
    ORDINARY_REFUND,
    PROFILE_SIGNUP,
    QUICK_REFUND,
    RATE_PCT,
    RESIDENTIAL_A,
    RESTAURANT,
    RING_MERCHANT_CUSTOMER,
    VIRAL_REFERRER,
    day_of_week,
    hour_of_day,
    lognormal_amounts,
    lognormal_delay,
    midnight,
    random_ips,
    sample_ts,
    weighted_choice,
)
from rebate_guard.tools.simulator.config import WorldConfig

RATE_SIGMA = 0.9  # log-normal spread of users' activity rates
STALL_STREAM = 0x57A11  # the growth stall's own random stream (with the seed)
REFERRAL_BATCHES = 64  # preferential attachment: referees placed in this many signup batches
BIG_PURCHASE_TAIL = 1.2  # Pareto index of a big purchase's multiple (5x upwards, capped 50x)
RUSH_SHARE = 0.08  # share of a rush restaurant's regulars in its weekday lunch burst (x activity)
MIN_CROWD = 20
CHECKOUT_STREAM = 0xC4EC  # sign-ups at the till: their own random stream (with the seed)
#: Sign-up at a till to paying there, (median, log-normal sigma, min, max) ms. At a counter:
#: scan the merchant's QR code, register in its mini-program (phone number, SMS code), pay:
#: a few minutes. At a restaurant's table `TABLE_ORDER_SHARE` scan to order, eat, then pay.
COUNTER_DELAY = (3 * MINUTE_MS, 0.7, MINUTE_MS, 30 * MINUTE_MS)
TABLE_DELAY = (35 * MINUTE_MS, 0.4, 10 * MINUTE_MS, 90 * MINUTE_MS)
TABLE_ORDER_SHARE = 0.5


@dataclass
class Checkout:
    """Legit users who signed up at a merchant's till, and the first payment they made there."""

    user: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    merchant: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    ip: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass
class Population:
    """Per-user habits of the legit users (global user indices 0..n-1)."""

    n: int
    n_legit_merchants: int
    signup: np.ndarray
    lo: np.ndarray  # earliest possible transaction ts
    rate: np.ndarray  # payments per active day, before the activity scale
    dev1: np.ndarray
    dev2: np.ndarray
    home_ip: np.ndarray
    p_home_ip: np.ndarray
    office_of: np.ndarray
    office_ip: np.ndarray  # per user, -1 if not an office worker
    office_lunch: np.ndarray  # per user, chance of an office lunch payment on a weekday
    cards: np.ndarray  # (n, 2), -1 padded
    n_cards: np.ndarray
    homes: np.ndarray  # (n, 3) home merchants
    n_home: np.ndarray
    p_home: np.ndarray
    look: np.ndarray  # role code, -1 none
    office_rest: np.ndarray  # (n_offices, 5), -1 padded
    rush: np.ndarray  # lunch-rush restaurants
    family_devices: np.ndarray
    office_ips: np.ndarray
    loyal: np.ndarray
    loyal_merchant: np.ndarray
    loyal_tod: np.ndarray
    loyal_price: np.ndarray
    nat_ip: np.ndarray | None = None  # per user, their carrier-NAT public IP (None: no NAT)
    nat_share: float = 0.0  # share of their mobile traffic leaving through it
    checkout: Checkout = field(default_factory=Checkout)  # who signed up at a till


def build_merchants(rng: np.random.Generator, b: Builder, cfg: WorldConfig) -> None:
    n = cfg.n_merchants
    cat = weighted_choice(rng, CATEGORY_SHARE, n)
    cat[: max(3, n // 20)] = RESTAURANT  # a city always has restaurants
    cat = rng.permutation(cat)
    rate_pct = rng.integers(RATE_PCT[cat, 0], RATE_PCT[cat, 1] + 1)
    median = MEDIAN_CENTS[cat] * np.exp(0.35 * rng.standard_normal(n))
    popularity = rng.lognormal(0.0, 1.1, n)
    look = np.full(n, NO_LOOK, dtype=np.int64)
    if cfg.high_rate_merchant_fraction > 0:  # drawn last: default worlds keep their streams
        high = rng.random(n) < cfg.high_rate_merchant_fraction
        rate_pct[high] = rng.integers(HIGH_RATE_PCT[0], HIGH_RATE_PCT[1] + 1, int(high.sum()))
        look[high] = HIGH_RATE_MERCHANT
    b.merchants.add(
        category=cat,
        rate_pct=rate_pct,
        median=median,
        popularity=popularity,
        scenario=LEGIT,
        ring=-1,
        look=look,
    )


def add_abuse_merchants(
    rng: np.random.Generator,
    b: Builder,
    categories: np.ndarray,
    rate_lo: int,
    rate_hi: int,
    scenario: int,
    ring: int,
    legit_pull: float,
) -> np.ndarray:
    """Merchants run by (or colluding with) an abuse group: high rates, a little legit traffic
    (`legit_pull`: `WorldConfig.ring_merchant_popularity`)."""
    n = len(categories)
    return b.merchants.add(
        category=categories,
        rate_pct=rng.integers(rate_lo, rate_hi + 1, n),
        median=MEDIAN_CENTS[categories] * np.exp(0.3 * rng.standard_normal(n)),
        popularity=legit_pull * rng.lognormal(0.0, 0.5, n),
        scenario=scenario,
        ring=ring,
        look=NO_LOOK,
    )


def _stall_signups(cfg: WorldConfig, new: np.ndarray, signup: np.ndarray) -> None:
    """Growth stalls at `cfg.stall_ts_ms`: of the new users who would sign up from then on,
    only `stall_signup_share` still do; the others had joined before the window (the platform
    is as big, its growth is over). Before the stall the curve is the growth world's. Own
    random stream: the rest of the world draws as it would without a stall."""
    assert cfg.stall_ts_ms is not None
    rng = np.random.default_rng([cfg.seed, STALL_STREAM])
    late = new & (signup >= cfg.stall_ts_ms)
    gone = np.flatnonzero(late & (rng.random(len(new)) >= cfg.stall_signup_share))
    signup[gone] = cfg.start_ts_ms - rng.integers(HOUR_MS, cfg.history_days * DAY_MS, len(gone))
    new[gone] = False


def _take(avail: np.ndarray, used: np.ndarray, n: int) -> np.ndarray:
    """The first n of avail (a random order of users) not yet used; marks them used."""
    free = avail[~used[avail]]
    out = free[:n]
    used[out] = True
    return out


def build_population(rng: np.random.Generator, b: Builder, cfg: WorldConfig) -> Population:
    n = cfg.n_users
    start, end = b.start, b.end
    n_m = b.merchants.n
    m_cat = b.merchants.col("category")
    m_pop = b.merchants.col("popularity")
    restaurants = np.flatnonzero(m_cat == RESTAURANT)

    new = rng.random(n) < cfg.new_user_fraction
    signup = np.where(
        new,
        sample_ts(rng, np.full(n, start), np.full(n, end - 6 * HOUR_MS), PROFILE_SIGNUP),
        start - rng.integers(HOUR_MS, cfg.history_days * DAY_MS, n),
    ).astype(np.int64)
    if cfg.stall_ts_ms is not None:
        _stall_signups(cfg, new, signup)

    dev1 = b.new_devices(n)
    dev2 = np.full(n, -1, dtype=np.int64)
    has2 = rng.random(n) < 0.15
    dev2[has2] = b.new_devices(int(has2.sum()))
    home_ip = random_ips(rng, n, RESIDENTIAL_A)
    p_home_ip = rng.beta(5.0, 3.0, n)
    n_cards = weighted_choice(rng, np.array([0.08, 0.64, 0.28]), n)
    cards = np.full((n, 2), -1, dtype=np.int64)
    cards[n_cards >= 1, 0] = b.new_cards(int((n_cards >= 1).sum()))
    cards[n_cards == 2, 1] = b.new_cards(int((n_cards == 2).sum()))
    phone = b.new_phones(n)
    phone[rng.random(n) < 0.03] = -1
    rate = rng.lognormal(np.log(cfg.payments_per_user_day) - RATE_SIGMA**2 / 2, RATE_SIGMA, n)
    n_home = 1 + weighted_choice(rng, np.array([0.3, 0.45, 0.25]), n)
    homes = weighted_choice(rng, m_pop[:n_m] ** 0.8, 3 * n).reshape(n, 3)
    p_home = rng.beta(6.0, 3.0, n)
    referrer = np.full(n, -1, dtype=np.int64)
    look = np.full(n, NO_LOOK, dtype=np.int64)
    used = np.zeros(n, dtype=bool)
    avail = rng.permutation(n)

    # Lunch-rush restaurants: the most popular ones.
    n_rush = max(1, round(cfg.lunch_rush_fraction * len(restaurants)))
    rush = restaurants[np.argsort(-m_pop[restaurants], kind="stable")[:n_rush]]

    # family_device: 2-5 members on one device and home IP, sometimes one card, often referred.
    family_devices = np.empty(0, dtype=np.int64)
    target = round(cfg.family_fraction * n)
    if target >= 2:
        sizes = rng.integers(2, 6, target)
        sizes = sizes[: max(1, int(np.searchsorted(np.cumsum(sizes), target, side="right")))]
        members = _take(avail, used, int(sizes.sum()))
        sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), len(members), side="right"))]
        members = members[: int(sizes.sum())]
        fam = np.repeat(np.arange(len(sizes)), sizes)
        order = np.lexsort((signup[members], fam))
        members, fam = members[order], fam[order]
        heads = members[np.cumsum(sizes) - sizes]
        head = heads[fam]
        other = members != head
        own = other & (rng.random(len(members)) < 0.4)
        dev2[members[own]] = dev1[members[own]]  # a kid with an own phone too
        dev1[members] = dev1[head]
        home_ip[members] = home_ip[head]
        p_home_ip[members] = np.maximum(p_home_ip[members], 0.75)
        share_card = (rng.random(len(sizes)) < cfg.family_card_share)[fam]
        share_card &= other & (cards[head, 0] >= 0)
        cards[members[share_card], 0] = cards[head[share_card], 0]
        n_cards[members[share_card]] = np.maximum(n_cards[members[share_card]], 1)
        refers = (rng.random(len(sizes)) < 0.5)[fam] & other
        signup[members[refers]] = np.maximum(signup[members[refers]], signup[head[refers]] + 1)
        referrer[members[refers]] = head[refers]
        look[members] = FAMILY_DEVICE
        family_devices = dev1[heads]

    # office_ip: dozens to hundreds of coworkers on one office IP, lunch at nearby restaurants.
    target = round(cfg.office_fraction * n)
    office_sizes: list[int] = []
    while target - sum(office_sizes) >= 10:
        size = int(rng.integers(30, cfg.office_max_size + 1))
        office_sizes.append(min(size, target - sum(office_sizes)))
    n_off = len(office_sizes)
    office_ips = random_ips(rng, n_off, OFFICE_A)
    office_rest = np.full((n_off, 5), -1, dtype=np.int64)
    office_of = np.full(n, -1, dtype=np.int64)
    office_ip = np.full(n, -1, dtype=np.int64)
    if n_off:
        boost = m_pop[restaurants] * np.where(np.isin(restaurants, rush), 3.0, 1.0)
        n_rest = rng.integers(2, 6, n_off)
        for o in range(n_off):
            picks = restaurants[weighted_choice(rng, boost, 10)]
            picks = np.unique(picks)[: n_rest[o]]
            office_rest[o, : len(picks)] = picks
        members = _take(avail, used, sum(office_sizes))
        off = np.repeat(np.arange(n_off), office_sizes)[: len(members)]
        office_of[members] = off
        office_ip[members] = office_ips[off]
        n_valid = (office_rest[off] >= 0).sum(axis=1)
        slot_a = (rng.random(len(members)) * n_valid).astype(np.int64)
        slot_b = (rng.random(len(members)) * n_valid).astype(np.int64)
        homes[members, 0] = office_rest[off, slot_a]
        second = rng.random(len(members)) < 0.5
        homes[members[second], 1] = office_rest[off[second], slot_b[second]]
        n_home[members] = np.maximum(n_home[members], 2)
        look[members] = OFFICE_IP

    # viral_referrer: a legit influencer whose posts bring in hundreds of real users.
    n_inf = cfg.influencers if cfg.influencers is not None else max(1, n // 20_000)
    veteran = avail[(signup[avail] < start) & ~used[avail]]
    influencers = veteran[:n_inf]
    used[influencers] = True
    look[influencers] = VIRAL_REFERRER
    for inf in influencers:
        count = min(int(rng.integers(150, 401)), max(10, int(0.08 * n / max(1, n_inf))))
        last_post = start + int(0.7 * (end - start))
        if cfg.stall_ts_ms is not None:  # a stalled platform's posts no longer go viral
            before = min(1.0, (cfg.stall_ts_ms - start) / (last_post - start))
            count = round(count * before)
            last_post = max(start + HOUR_MS, min(last_post, cfg.stall_ts_ms))
        referees = _take(avail, used, count)
        n_posts = int(rng.integers(3, 7))
        posts = sample_ts(rng, np.full(n_posts, start), np.full(n_posts, last_post), PROFILE_SIGNUP)
        delay = lognormal_delay(rng, len(referees), 6 * HOUR_MS, 1.0, 2 * MINUTE_MS, 3 * DAY_MS)
        ts = posts[rng.integers(0, n_posts, len(referees))] + delay
        late = ts >= end - 2 * HOUR_MS
        ts[late] = end - 2 * HOUR_MS - rng.integers(0, HOUR_MS, int(late.sum()))
        signup[referees] = ts
        referrer[referees] = inf
        look[referees] = VIRAL_REFERRER

    # loyal_daily: same merchant, about the same time and price, (almost) every day.
    loyal = _take(avail, used, round(cfg.loyal_fraction * n))
    loyal = loyal[signup[loyal] < end - 3 * DAY_MS]
    food = np.flatnonzero(((m_cat == RESTAURANT) | (m_cat == GROCERY))[:n_m])
    loyal_merchant = food[weighted_choice(rng, m_pop[food], len(loyal))]
    morning = rng.random(len(loyal)) < 0.6
    loyal_tod = np.where(
        morning,
        rng.integers(int(7.25 * HOUR_MS), int(9.5 * HOUR_MS), len(loyal)),
        rng.integers(int(11.5 * HOUR_MS), 13 * HOUR_MS, len(loyal)),
    )
    b_median = b.merchants.col("median")
    price = b_median[loyal_merchant] * rng.lognormal(0.0, 0.25, len(loyal)) * 0.6
    loyal_price = np.maximum(300, np.round(price / 50) * 50).astype(np.int64)
    homes[loyal, 0] = loyal_merchant
    look[loyal] = LOYAL_DAILY

    # Ordinary referrals: a referrer who signed up earlier, rarely one who was referred.
    referred = (rng.random(n) < cfg.referral_fraction) & (referrer < 0)
    weight = np.where(referred | (referrer >= 0), cfg.referred_referrer_weight, 1.0)
    weight = weight * rng.lognormal(0.0, 1.0, n)
    _ordinary_referrals(rng, cfg.referral_attachment, signup, referred, weight, referrer)
    depth = referral_depth(referrer)
    look[(look == NO_LOOK) & (depth >= DEEP_REFERRAL_DEPTH)] = DEEP_REFERRAL

    r = rng.random(n)
    signup_ip = np.where(r < 0.6, home_ip, b.mobile_ips(rng, n))
    at_office = (office_ip >= 0) & (r > 0.85)
    signup_ip[at_office] = office_ip[at_office]
    signup_ip[look == FAMILY_DEVICE] = home_ip[look == FAMILY_DEVICE]
    b.users.add(
        signup_ts=signup,
        referrer=referrer,
        device=dev1,
        ip=signup_ip,
        phone=phone,
        scenario=LEGIT,
        ring=-1,
        look=look,
    )
    gap = rng.integers(2 * MINUTE_MS, 3 * HOUR_MS, n)
    lo = np.maximum(start, signup + gap)
    office_lunch = np.where(office_of >= 0, rng.beta(2.0, 4.0, n), 0.0)
    nat_ip = None
    if cfg.nat_pool_share > 0:  # drawn last: default worlds keep their random streams
        pool = random_ips(rng, max(1, round(n / cfg.nat_pool_users)), MOBILE_A)
        nat_ip = pool[rng.integers(0, len(pool), n)]
        via = (r >= 0.6) & (signup_ip != office_ip) & (rng.random(n) < cfg.nat_pool_share)
        via &= look != FAMILY_DEVICE
        signup_ip[via] = nat_ip[via]
        b.users.set("ip", np.arange(b.users.n - n, b.users.n), signup_ip)
    checkout = Checkout()
    if cfg.signup_at_checkout_share > 0:
        eligible = new & (referrer < 0) & (look != VIRAL_REFERRER)
        checkout = _signups_at_checkout(cfg, b, eligible, signup, homes[:, 0], nat_ip)
        signup_ip[checkout.user] = checkout.ip
        b.users.set("ip", np.arange(b.users.n - n, b.users.n), signup_ip)
        lo[checkout.user] = checkout.ts + MINUTE_MS  # the till payment is their first
    return Population(
        n=n,
        n_legit_merchants=n_m,
        signup=signup,
        lo=lo,
        rate=rate,
        dev1=dev1,
        dev2=dev2,
        home_ip=home_ip,
        p_home_ip=p_home_ip,
        office_of=office_of,
        office_ip=office_ip,
        office_lunch=office_lunch,
        cards=cards,
        n_cards=n_cards,
        homes=homes,
        n_home=n_home,
        p_home=p_home,
        look=look,
        office_rest=office_rest,
        rush=rush,
        family_devices=family_devices,
        office_ips=office_ips,
        loyal=loyal,
        loyal_merchant=loyal_merchant,
        loyal_tod=loyal_tod,
        loyal_price=loyal_price,
        nat_ip=nat_ip,
        nat_share=cfg.nat_pool_share,
        checkout=checkout,
    )


def _signups_at_checkout(
    cfg: WorldConfig,
    b: Builder,
    eligible: np.ndarray,
    signup: np.ndarray,
    shop: np.ndarray,
    nat_ip: np.ndarray | None,
) -> Checkout:
    """`signup_at_checkout_share` of the `eligible` users (new, not referred by a user) sign
    up at a till: at their main shop (`shop`), on mobile data there, and pay there minutes
    later (`COUNTER_DELAY`, `TABLE_DELAY`). Their sign-up times stay as drawn, so every
    referral keeps its order. Own random stream: the population draws as it would without
    (their payments then change the legit ones' draws)."""
    rng = np.random.default_rng([cfg.seed, CHECKOUT_STREAM])
    at_till = eligible & (rng.random(len(eligible)) < cfg.signup_at_checkout_share)
    user = np.flatnonzero(at_till)
    merchant = shop[user]
    k = len(user)
    table = (b.merchants.col("category")[merchant] == RESTAURANT) & (
        rng.random(k) < TABLE_ORDER_SHARE
    )
    delay = np.where(
        table, lognormal_delay(rng, k, *TABLE_DELAY), lognormal_delay(rng, k, *COUNTER_DELAY)
    )
    ip = b.mobile_ips(rng, k)
    if nat_ip is not None:  # carrier NAT, as the rest of their mobile traffic
        via = rng.random(k) < cfg.nat_pool_share
        ip[via] = nat_ip[user[via]]
    return Checkout(user=user, ts=signup[user] + delay, merchant=merchant, ip=ip)


def _ordinary_referrals(
    rng: np.random.Generator,
    attachment: float,
    signup: np.ndarray,
    referred: np.ndarray,
    weight: np.ndarray,
    referrer: np.ndarray,
) -> None:
    """Give each `referred` user a referrer who signed up earlier, drawn by `weight` (in place).

    With `attachment` > 0 the draw is preferential: a referrer's weight is multiplied by
    1 + attachment x the referees it got so far, updated between `REFERRAL_BATCHES` batches
    of referees in signup order (one vectorised draw per batch).
    """
    n = len(signup)
    order = np.argsort(signup, kind="stable")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    who = np.flatnonzero(referred & (pos > 0))
    u = rng.random(len(who))
    if attachment > 0:
        by_time = np.argsort(pos[who], kind="stable")
        batches = np.array_split(by_time, REFERRAL_BATCHES)
    else:
        batches = [np.arange(len(who))]
    referees = np.zeros(n)
    for batch in batches:
        w = weight * (1.0 + attachment * referees) if attachment > 0 else weight
        cw = np.cumsum(w[order])
        new = who[batch]
        pick = np.searchsorted(cw, u[batch] * cw[pos[new] - 1], side="right")
        ref = order[np.minimum(pick, pos[new] - 1)]
        ok = signup[ref] < signup[new]
        referrer[new[ok]] = ref[ok]
        referees += np.bincount(ref[ok], minlength=n)


def referral_depth(referrer: np.ndarray) -> np.ndarray:
    """Links from each user up to the root of their referral tree (0: not referred)."""
    depth = np.zeros(len(referrer), dtype=np.int64)
    cur = referrer.copy()
    while (cur >= 0).any():
        up = cur >= 0
        depth[up] += 1
        cur[up] = referrer[cur[up]]
    return depth


def _weekdays(start: int, end: int) -> np.ndarray:
    days = np.arange(start // DAY_MS, (end - 1) // DAY_MS + 1, dtype=np.int64)
    return days[day_of_week(days * DAY_MS) < 5]


def _crowds(pop: Population) -> list[np.ndarray]:
    """The regulars of each lunch-rush restaurant (users having it as a home merchant)."""
    homes_valid = np.where(np.arange(3)[None, :] < pop.n_home[:, None], pop.homes, -1)
    return [np.flatnonzero((homes_valid == r).any(axis=1)) for r in pop.rush]


def expected_legit(
    pop: Population, start: int, end: int, refund_rate: float
) -> tuple[float, float]:
    """(a, b) with expected legit transactions ~= a * activity_scale + b."""
    active = np.maximum(0, end - pop.lo) / DAY_MS
    regular = float((pop.rate * active).sum())
    crowd = sum(max(MIN_CROWD, len(c)) for c in _crowds(pop))
    rush = crowd * len(_weekdays(start, end)) * RUSH_SHARE * pop.rate.mean() / 0.3
    loyal_days = np.maximum(0, end - pop.lo[pop.loyal]) / DAY_MS
    loyal = float(loyal_days.sum()) * (5 * 0.92 + 2 * 0.55) / 7
    office = float(pop.office_lunch.sum()) * len(_weekdays(start, end))
    till = len(pop.checkout.user)
    return (regular + rush) * (1 + refund_rate), (loyal + office + till) * (1 + refund_rate)


def _context(
    rng: np.random.Generator, b: Builder, pop: Population, user: np.ndarray, ts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """device, ip, card of legit payments (own/family device, home/office/mobile IP, cards)."""
    n = len(user)
    device = pop.dev1[user].copy()
    second = pop.dev2[user]
    use2 = (second >= 0) & (rng.random(n) < 0.25)
    device[use2] = second[use2]
    device[rng.random(n) < 0.003] = -1
    home = rng.random(n) < pop.p_home_ip[user]
    ip = np.where(home, pop.home_ip[user], b.mobile_ips(rng, n))
    if pop.nat_ip is not None:  # carrier NAT: a share of mobile traffic on the pool's IP
        via = ~home & (rng.random(n) < pop.nat_share)
        ip[via] = pop.nat_ip[user[via]]
    office = pop.office_ip[user]
    hour = hour_of_day(ts)
    at_office = (
        (office >= 0) & (day_of_week(ts) < 5) & (hour >= 9) & (hour < 18) & (rng.random(n) < 0.85)
    )
    ip[at_office] = office[at_office]
    ip[rng.random(n) < 0.003] = -1
    n_cards = pop.n_cards[user]
    slot = (rng.random(n) * np.maximum(n_cards, 1)).astype(np.int64)
    card = pop.cards[user, slot]
    card[(n_cards == 0) | (rng.random(n) < 0.05)] = -1
    return device, ip, card


def legit_transactions(
    rng: np.random.Generator, b: Builder, pop: Population, cfg: WorldConfig, scale: float
) -> None:
    start, end = b.start, b.end
    m_cat = b.merchants.col("category")
    m_pop = b.merchants.col("popularity")
    m_median = b.merchants.col("median")
    n = pop.n

    # Regular payments: Poisson per user, home merchants or popularity-weighted exploration.
    active = np.maximum(0, end - pop.lo) / DAY_MS
    counts = rng.poisson(pop.rate * scale * active)
    user = np.repeat(np.arange(n, dtype=np.int64), counts)
    k = len(user)
    slot = (rng.random(k) * pop.n_home[user]).astype(np.int64)
    home = pop.homes[user, slot]
    explore = weighted_choice(rng, m_pop, k)
    merchant = np.where(rng.random(k) < pop.p_home[user], home, explore)
    ts = sample_ts(rng, pop.lo[user], np.full(k, end), m_cat[merchant])
    # Office workers lunch at the office's restaurants around noon on weekdays.
    off = pop.office_of[user]
    has_off = off >= 0
    lunch = np.zeros(k, dtype=bool)
    if has_off.any():
        at_rest = (pop.office_rest[off[has_off]] == merchant[has_off, None]).any(axis=1)
        lunch[np.flatnonzero(has_off)[at_rest]] = True
        lunch &= day_of_week(ts) < 5
        tod = np.clip(rng.normal(12.3, 0.45, int(lunch.sum())), 11.0, 14.0) * HOUR_MS
        moved = midnight(ts[lunch]) + tod.astype(np.int64)
        ok = (moved >= pop.lo[user[lunch]]) & (moved < end)
        ts[np.flatnonzero(lunch)[ok]] = moved[ok]
    amount = lognormal_amounts(rng, m_median[merchant], AMOUNT_SIGMA[m_cat[merchant]])
    flag = np.full(k, NO_LOOK, dtype=np.int64)

    # loyal_daily: one extra payment on most days, same merchant, same time, same price.
    days = np.arange(start // DAY_MS, (end - 1) // DAY_MS + 1, dtype=np.int64)
    n_l = len(pop.loyal)
    grid_user = np.repeat(np.arange(n_l), len(days))
    grid_day = np.tile(days, n_l)
    weekday = day_of_week(grid_day * DAY_MS) < 5
    keep = rng.random(len(grid_day)) < np.where(weekday, 0.92, 0.55)
    grid_user, grid_day = grid_user[keep], grid_day[keep]
    l_user = pop.loyal[grid_user]
    jitter = rng.normal(0.0, 10 * MINUTE_MS, len(l_user)).astype(np.int64)
    l_ts = grid_day * DAY_MS + pop.loyal_tod[grid_user] + jitter
    ok = (l_ts >= pop.lo[l_user]) & (l_ts < end)
    l_user, l_ts, grid_user = l_user[ok], l_ts[ok], grid_user[ok]
    l_merchant = pop.loyal_merchant[grid_user]
    l_amount = pop.loyal_price[grid_user].copy()
    vary = rng.random(len(l_user)) < 0.25
    l_amount[vary] += rng.choice(np.array([-100, 100, 200, 300, 500]), int(vary.sum()))

    # Office lunches: on many weekdays coworkers pay for lunch near the office, at noon, on
    # the office network.
    workers = np.flatnonzero(pop.office_of >= 0)
    weekdays = _weekdays(start, end)
    grid_user = np.repeat(workers, len(weekdays))
    grid_day = np.tile(weekdays, len(workers))
    keep = rng.random(len(grid_user)) < pop.office_lunch[grid_user]
    o_user, o_day = grid_user[keep], grid_day[keep]
    tod = np.clip(rng.normal(12.3, 0.4, len(o_user)), 11.25, 14.0) * HOUR_MS
    o_ts = o_day * DAY_MS + tod.astype(np.int64)
    ok = (o_ts >= pop.lo[o_user]) & (o_ts < end)
    o_user, o_ts = o_user[ok], o_ts[ok]
    o_rest = pop.office_rest[pop.office_of[o_user]]
    n_valid = (o_rest >= 0).sum(axis=1)
    o_merchant = o_rest[np.arange(len(o_user)), (rng.random(len(o_user)) * n_valid).astype(int)]
    o_amount = lognormal_amounts(rng, m_median[o_merchant], AMOUNT_SIGMA[m_cat[o_merchant]])

    # lunch_rush: weekday bursts around 12:20 at popular restaurants, from their regulars.
    r_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rate_factor = pop.rate.mean() / 0.3
    for r, crowd in zip(pop.rush, _crowds(pop), strict=True):
        if len(crowd) < MIN_CROWD:
            crowd = np.concatenate([crowd, rng.choice(n, MIN_CROWD, replace=False)])
        lam = RUSH_SHARE * len(crowd) * rate_factor * scale
        sizes = rng.poisson(lam, len(weekdays))
        day = np.repeat(weekdays, sizes)
        tod = np.clip(rng.normal(12.33, 0.23, len(day)), 11.5, 13.5) * HOUR_MS
        r_ts = day * DAY_MS + tod.astype(np.int64)
        r_user = crowd[rng.integers(0, len(crowd), len(day))]
        ok = (r_ts >= pop.lo[r_user]) & (r_ts < end)
        r_parts.append((r_user[ok], r_ts[ok], np.full(int(ok.sum()), r, dtype=np.int64)))
    if r_parts:
        r_user = np.concatenate([p[0] for p in r_parts])
        r_ts = np.concatenate([p[1] for p in r_parts])
        r_merchant = np.concatenate([p[2] for p in r_parts])
    else:
        r_user = r_ts = r_merchant = np.empty(0, dtype=np.int64)
    r_amount = lognormal_amounts(rng, m_median[r_merchant], AMOUNT_SIGMA[m_cat[r_merchant]])
    set_meal = rng.random(len(r_amount)) < 0.5
    r_amount[set_meal] = np.maximum(100, np.round(r_amount[set_meal] / 100) * 100)

    # Sign-ups at the till: the first payment, at the shop, minutes after signing up there.
    till = pop.checkout
    t_amount = np.empty(0, dtype=np.int64)
    if len(till.user):  # drawn only when on: default worlds keep their streams
        t_cat = m_cat[till.merchant]
        t_amount = lognormal_amounts(rng, m_median[till.merchant], AMOUNT_SIGMA[t_cat])

    user = np.concatenate([user, l_user, o_user, r_user, till.user])
    ts = np.concatenate([ts, l_ts, o_ts, r_ts, till.ts])
    merchant = np.concatenate([merchant, l_merchant, o_merchant, r_merchant, till.merchant])
    amount = np.concatenate([amount, l_amount, o_amount, r_amount, t_amount]).astype(np.int64)
    flag = np.concatenate(
        [
            flag,
            np.full(len(l_user), LOYAL_DAILY),
            np.full(len(o_user), NO_LOOK),
            np.full(len(r_user), LUNCH_RUSH),
            np.full(len(till.user), NO_LOOK),
        ]
    ).astype(np.int64)
    big = np.zeros(len(amount), dtype=bool)
    if cfg.big_purchase_rate > 0:  # drawn only when on: default worlds keep their streams
        big = rng.random(len(amount)) < cfg.big_purchase_rate
        multiple = np.minimum(50.0, 5.0 * (1.0 + rng.pareto(BIG_PURCHASE_TAIL, int(big.sum()))))
        amount[big] = np.minimum(5_000_000, np.round(amount[big] * multiple)).astype(np.int64)
    device, ip, card = _context(rng, b, pop, user, ts)
    at_till = slice(len(user) - len(till.user), len(user))  # on the phone they signed up on,
    device[at_till], ip[at_till] = pop.dev1[till.user], till.ip  # on its connection there

    # Ordinary refunds: hours to days later (some quick cancellations), same card.
    k = len(user)
    refunded = rng.random(k) < cfg.refund_rate
    pay = np.flatnonzero(refunded)
    quick = rng.random(len(pay)) < cfg.quick_refund_share
    median = cfg.refund_delay_median_hours * HOUR_MS
    delay = np.where(
        quick,
        rng.integers(8 * MINUTE_MS, 2 * HOUR_MS, len(pay)),
        lognormal_delay(rng, len(pay), median, 0.9, HOUR_MS, 12 * DAY_MS),
    )
    f_ts = ts[pay] + delay
    ok = f_ts < end
    pay, f_ts, quick = pay[ok], f_ts[ok], quick[ok]
    refund_look = np.where(quick, QUICK_REFUND, ORDINARY_REFUND)
    refunded = np.full(k, NO_LOOK, dtype=np.int64)
    refunded[pay] = refund_look

    # Look-alike group of each payment, by precedence (later assignments win).
    m_look = b.merchants.col("look")
    ring_merchant = b.merchants.col("scenario") != LEGIT
    look = np.where(pop.look[user] == DEEP_REFERRAL, DEEP_REFERRAL, NO_LOOK)
    look = np.where(ring_merchant[merchant], RING_MERCHANT_CUSTOMER, look)
    look = np.where(m_look[merchant] == HIGH_RATE_MERCHANT, HIGH_RATE_MERCHANT, look)
    look = np.where(pop.look[user] == VIRAL_REFERRER, VIRAL_REFERRER, look)
    look = np.where(flag == LUNCH_RUSH, LUNCH_RUSH, look)
    look = np.where(flag == LOYAL_DAILY, LOYAL_DAILY, look)
    look = np.where(np.isin(device, pop.family_devices), FAMILY_DEVICE, look)
    if pop.nat_ip is not None:
        look = np.where((ip >= 0) & np.isin(ip, pop.nat_ip), NAT_POOL, look)
    look = np.where((ip >= 0) & np.isin(ip, pop.office_ips), OFFICE_IP, look)
    look = np.where(big, BIG_PURCHASE, look)
    look = np.where(refunded >= 0, refunded, look)
    offset = (
        b.tx.add(
            ts=ts,
            user=user,
            merchant=merchant,
            amount=amount,
            refund=False,
            ref=-1,
            device=device,
            ip=ip,
            card=card,
            scenario=LEGIT,
            ring=-1,
            look=look,
        )[0]
        if k
        else 0
    )

    # User-initiated (the user's context at refund time), else by the merchant (no device/ip).
    by_user = rng.random(len(pay)) < 0.6
    f_device, f_ip, _ = _context(rng, b, pop, user[pay], f_ts)
    if len(pay):
        b.tx.add(
            ts=f_ts,
            user=user[pay],
            merchant=merchant[pay],
            amount=amount[pay],
            refund=True,
            ref=offset + pay,
            device=np.where(by_user, f_device, -1),
            ip=np.where(by_user, f_ip, -1),
            card=card[pay],
            scenario=LEGIT,
            ring=-1,
            look=refund_look,
        )
