"""Shared constants and vectorised building blocks of the world generator.

Everything here works on whole numpy arrays: time sampling with daily and weekly rhythm,
IP and amount draws, and a small append-only column store (`Columns`) that the generator
uses for users, merchants and transactions before they become polars frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebate_guard.contract.time import DAY_MS, HOUR_MS, MINUTE_MS

# Scenario codes (tx_truth.scenario); 0 is legit.
SCENARIOS = (
    "legit",
    "brushing",
    "referral_farm",
    "collusion_ring",
    "cash_out",
    "pyramid",
    # The commission, coupon and points flows (issue #21, `_abuse_economics`).
    "binding_hijack",
    "coupon_farm",
    "points_collector",
    "binding_farm",
    "commission_cycle",
)
LEGIT, BRUSHING, REFERRAL_FARM, COLLUSION_RING, CASH_OUT, PYRAMID = range(6)
BINDING_HIJACK, COUPON_FARM, POINTS_COLLECTOR, BINDING_FARM, COMMISSION_CYCLE = range(6, 11)
#: The scenarios of the commission, coupon and points flows (`_abuse_economics`).
FLOW_SCENARIOS = (BINDING_HIJACK, COUPON_FARM, POINTS_COLLECTOR, BINDING_FARM, COMMISSION_CYCLE)
ABUSE_SCENARIOS = SCENARIOS[1:]

# Legit look-alike codes (tx_truth.group / user_truth.role of legit users); -1 is none.
# Append only: the codes are stable.
LOOKALIKES = (
    "family_device",
    "office_ip",
    "viral_referrer",
    "lunch_rush",
    "loyal_daily",
    "ordinary_refund",
    "nat_pool",
    "big_purchase",
    "quick_refund",
    "deep_referral",
    "ring_merchant_customer",
    "high_rate_merchant",
    # Look-alikes of the flows' abuse (issue #21, `_flow_lookalikes`).
    "family_binding",
    "shop_binding_burst",
    "family_points",
    "coupon_hunters",
    "bound_regulars",
    "rescan_regulars",
)
NO_LOOK = -1
FAMILY_DEVICE, OFFICE_IP, VIRAL_REFERRER, LUNCH_RUSH, LOYAL_DAILY, ORDINARY_REFUND = range(6)
NAT_POOL, BIG_PURCHASE, QUICK_REFUND, DEEP_REFERRAL, RING_MERCHANT_CUSTOMER = range(6, 11)
HIGH_RATE_MERCHANT = 11
FAMILY_BINDING, SHOP_BINDING_BURST, FAMILY_POINTS, COUPON_HUNTERS, BOUND_REGULARS = range(12, 17)
RESCAN_REGULARS = 17
#: The look-alikes of the flows' abuse (`_flow_lookalikes`).
FLOW_LOOKALIKES = (
    FAMILY_BINDING,
    SHOP_BINDING_BURST,
    FAMILY_POINTS,
    COUPON_HUNTERS,
    BOUND_REGULARS,
    RESCAN_REGULARS,
)
#: A legit user referred this many links deep is a `deep_referral` (if no other role).
DEEP_REFERRAL_DEPTH = 4

# Merchant categories and their economics.
CATEGORIES = ("restaurant", "grocery", "retail", "beauty", "services", "entertainment")
RESTAURANT, GROCERY, RETAIL, BEAUTY, SERVICES, ENTERTAINMENT = range(6)
CATEGORY_SHARE = np.array([0.34, 0.15, 0.20, 0.08, 0.11, 0.12])
MEDIAN_CENTS = np.array([3_500.0, 6_500.0, 12_000.0, 16_000.0, 9_000.0, 8_000.0])
AMOUNT_SIGMA = np.array([0.45, 0.60, 0.80, 0.50, 0.60, 0.55])
# Inclusive rebate-rate ranges in whole percent, by category.
RATE_PCT = np.array([[6, 14], [6, 10], [8, 18], [12, 25], [10, 20], [10, 22]])
MIN_RATE_PCT, MAX_RATE_PCT = 6, 30
HIGH_RATE_PCT = (20, 30)  # legit merchants made high-rate by `high_rate_merchant_fraction`

# Time-of-day profiles: 96 bins of 15 minutes. 0..5 are the categories, then these two.
PROFILE_SIGNUP = 6
PROFILE_FLAT = 7
BIN_MS = 15 * MINUTE_MS
N_BINS = 96

_PEAKS: tuple[tuple[tuple[float, float, float], ...], ...] = (
    # (hour, weight, sigma in hours)
    ((8.0, 0.35, 0.8), (12.3, 1.0, 0.6), (18.7, 0.8, 0.9), (21.5, 0.2, 1.0)),  # restaurant
    ((9.5, 0.3, 1.5), (12.5, 0.3, 1.0), (18.0, 0.8, 1.4), (20.5, 0.3, 1.0)),  # grocery
    ((11.0, 0.4, 1.5), (15.0, 0.6, 2.0), (20.0, 0.8, 1.5)),  # retail
    ((11.0, 0.5, 1.5), (15.0, 0.7, 1.5), (19.0, 0.6, 1.5)),  # beauty
    ((10.0, 0.7, 1.5), (14.5, 0.6, 1.5), (19.0, 0.3, 1.5)),  # services
    ((14.0, 0.3, 2.0), (19.5, 0.9, 1.5), (22.0, 0.5, 1.2)),  # entertainment
    ((12.0, 0.4, 2.0), (20.5, 1.0, 2.0)),  # signup
    (),  # flat
)
# Day-of-week weights, Monday first.
_WEEKLY = np.array(
    [
        [0.95, 0.95, 0.95, 0.97, 1.05, 1.15, 1.05],
        [0.90, 0.88, 0.90, 0.92, 1.05, 1.30, 1.20],
        [0.80, 0.80, 0.85, 0.88, 1.00, 1.40, 1.30],
        [0.80, 0.85, 0.90, 0.95, 1.10, 1.40, 1.10],
        [1.10, 1.10, 1.10, 1.05, 1.00, 0.75, 0.55],
        [0.70, 0.70, 0.75, 0.85, 1.30, 1.60, 1.30],
        [1.00, 1.00, 1.00, 1.00, 1.00, 1.15, 1.15],
        [1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 1.00],
    ]
)
WEEKLY_ACCEPT = _WEEKLY / _WEEKLY.max(axis=1, keepdims=True)


def _profile(peaks: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    hours = (np.arange(N_BINS) + 0.5) / 4.0
    if not peaks:
        return np.full(N_BINS, 1.0 / N_BINS)
    # Night trough (01:00-06:00 is quiet), then the meal / shopping peaks.
    density = np.where((hours >= 7.0) & (hours < 23.0), 0.03, 0.004)
    for centre, weight, sigma in peaks:
        dist = np.abs(hours - centre)
        dist = np.minimum(dist, 24.0 - dist)
        density = density + weight * np.exp(-0.5 * (dist / sigma) ** 2)
    return density / density.sum()


PROFILES = np.stack([_profile(p) for p in _PEAKS])
_CDF = np.cumsum(PROFILES, axis=1)
_CDF[:, -1] = 1.0
# Offsetting each profile's CDF by its index makes one sorted array: one searchsorted call
# samples a bin for every element whatever its profile.
_CDF_FLAT = (_CDF + np.arange(len(PROFILES))[:, None]).ravel()

# First octets of plausible address blocks.
RESIDENTIAL_A = np.r_[
    36, 39, 42, 49, 58, 59, 60, 61, 101, 110:126, 171, 175, 180, 182, 183, 218:224
]
MOBILE_A = np.array([39, 111, 112, 117, 120, 183, 223])
OFFICE_A = np.array([58, 61, 124, 202, 210, 211])
HOSTING_A = np.array([45, 103, 104, 154, 156, 185, 193])


def day_of_week(ts: np.ndarray) -> np.ndarray:
    """0 = Monday (1970-01-01 was a Thursday)."""
    return (ts // DAY_MS + 3) % 7


def hour_of_day(ts: np.ndarray) -> np.ndarray:
    return (ts % DAY_MS) / HOUR_MS


def midnight(ts: np.ndarray) -> np.ndarray:
    return ts - ts % DAY_MS


def sample_bins(rng: np.random.Generator, profile: np.ndarray) -> np.ndarray:
    """A time of day (ms after midnight) for each element, drawn from its profile."""
    profile = np.asarray(profile, dtype=np.int64)
    u = profile + rng.random(len(profile))
    idx = np.searchsorted(_CDF_FLAT, u, side="right") - profile * N_BINS
    idx = np.clip(idx, 0, N_BINS - 1)
    return idx * BIN_MS + rng.integers(0, BIN_MS, len(profile))


def sample_ts(
    rng: np.random.Generator,
    lo: np.ndarray,
    hi: np.ndarray,
    profile: np.ndarray | int,
    weekly: bool = True,
) -> np.ndarray:
    """One timestamp per element in [lo, hi) following the profile's daily (and weekly) rhythm.

    Rejection sampling over whole arrays: a uniform calendar day in range, a time of day from
    the profile, kept if inside [lo, hi) and accepted by the day-of-week weight. What is still
    missing after a few rounds (tiny ranges) is drawn uniformly in [lo, hi).
    """
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.maximum(np.asarray(hi, dtype=np.int64), lo + 1)
    n = len(lo)
    prof = np.broadcast_to(np.asarray(profile, dtype=np.int64), (n,))
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    for _ in range(40):
        if len(todo) == 0:
            break
        lo_t, hi_t, p = lo[todo], hi[todo], prof[todo]
        first = lo_t // DAY_MS
        span = (hi_t - 1) // DAY_MS - first + 1
        day = first + (rng.random(len(todo)) * span).astype(np.int64)
        ts = day * DAY_MS + sample_bins(rng, p)
        ok = (ts >= lo_t) & (ts < hi_t)
        if weekly:
            ok &= rng.random(len(todo)) < WEEKLY_ACCEPT[p, day_of_week(ts)]
        out[todo[ok]] = ts[ok]
        todo = todo[~ok]
    if len(todo):
        out[todo] = lo[todo] + (rng.random(len(todo)) * (hi[todo] - lo[todo])).astype(np.int64)
    return out


def random_ips(rng: np.random.Generator, n: int, first_octets: np.ndarray) -> np.ndarray:
    """IPv4 addresses as int64 (never .0 or .255)."""
    a = first_octets[rng.integers(0, len(first_octets), n)].astype(np.int64)
    mid = rng.integers(0, 1 << 16, n, dtype=np.int64)
    last = rng.integers(1, 255, n, dtype=np.int64)
    return (a << 24) | (mid << 8) | last


def lognormal_amounts(
    rng: np.random.Generator, median: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Log-normal prices in cents with human rounding (whole units, .99 endings) sometimes."""
    n = len(median)
    raw = np.exp(np.log(median) + sigma * rng.standard_normal(n))
    cents = np.clip(np.round(raw), 100, 5_000_000).astype(np.int64)
    r = rng.random(n)
    whole = np.maximum(100, np.round(cents / 100).astype(np.int64) * 100)
    cents = np.where(r < 0.20, whole, cents)
    cents = np.where((r >= 0.20) & (r < 0.27), np.maximum(99, whole - 1), cents)
    return cents


def lognormal_delay(
    rng: np.random.Generator, n: int, median_ms: float, sigma: float, lo_ms: int, hi_ms: int
) -> np.ndarray:
    raw = np.exp(np.log(median_ms) + sigma * rng.standard_normal(n))
    return np.clip(raw, lo_ms, hi_ms).astype(np.int64)


def weighted_choice(rng: np.random.Generator, weights: np.ndarray, n: int) -> np.ndarray:
    """n indices drawn with replacement, proportional to weights."""
    cw = np.cumsum(weights, dtype=np.float64)
    idx = np.searchsorted(cw, rng.random(n) * cw[-1], side="right")
    return np.minimum(idx, len(weights) - 1)


@dataclass
class Columns:
    """Append-only columnar table: chunks of numpy arrays, one list per column."""

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.names}
        self.n = 0

    def add(self, **cols: np.ndarray | int | float) -> np.ndarray:
        """Append rows; scalars broadcast. Returns the new rows' global indices."""
        if set(cols) != set(self.names):
            raise ValueError(f"columns {sorted(cols)} != {sorted(self.names)}")
        sizes = {len(v) for v in cols.values() if isinstance(v, np.ndarray)}
        if len(sizes) != 1:
            raise ValueError(f"inconsistent column lengths {sizes}")
        (size,) = sizes
        for name, value in cols.items():
            arr = value if isinstance(value, np.ndarray) else np.full(size, value)
            self._chunks[name].append(arr)
        idx = np.arange(self.n, self.n + size, dtype=np.int64)
        self.n += size
        return idx

    def col(self, name: str) -> np.ndarray:
        chunks = self._chunks[name]
        if not chunks:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(chunks)

    def set(self, name: str, idx: np.ndarray, values: np.ndarray | int) -> None:
        """Overwrite values at global indices (collapses the column into one chunk)."""
        arr = self.col(name)
        arr[idx] = values
        self._chunks[name] = [arr]
