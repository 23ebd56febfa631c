"""A simulator family: named profiles that turn a seed into a `WorldConfig`.

- ``"default"``: today's world, ``WorldConfig(seed=seed, days=days, target_transactions=...)``.
- ``"survivor"``: the default world on a platform that funds its points from the merchants'
  discount (`SURVIVOR`): its books need no growth (docs/simulator.md, "A survivor").
- ``"random"``: domain randomisation. Every knob is drawn from its own generator seeded by the
  seed (`RANDOM_RANGES` lists the ranges), so tuning on some seeds and reporting on others
  measures how a pipeline does on platforms it never saw. The same profile and seed always
  give the same config, hence the same world.

See docs/simulator.md, "A simulator family".
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np

from rebate_guard.tools.simulator._abuse import mean_tx_per_group
from rebate_guard.tools.simulator._common import (
    BRUSHING,
    CASH_OUT,
    COLLUSION_RING,
    PYRAMID,
    REFERRAL_FARM,
)
from rebate_guard.tools.simulator.config import (
    BRUSHING_HOURS,
    COLLUSION_PATTERNS,
    FARM_DEVICES,
    WorldConfig,
)

PROFILES = ("default", "random", "survivor")
#: The abuse of the commission, coupon and points flows (issue #21) at fixed rates, groups
#: per 100k legit transactions: what a config switches on to have every one of them (the
#: random profile draws its own, `FLOW_RATES`; the default one has none).
FLOW_ABUSE: dict[str, Any] = {
    "binding_hijack_per_100k": 1.5,
    "coupon_farm_per_100k": 1.5,
    "points_collector_per_100k": 1.5,
    "binding_farm_per_100k": 1.5,
    "commission_cycle_per_100k": 1.5,
}
#: ... and their legit look-alikes, likewise.
FLOW_LOOKALIKE_RATES: dict[str, Any] = {
    "family_binding_per_100k": 8.0,
    "shop_binding_burst_per_100k": 3.0,
    "family_points_per_100k": 6.0,
    "coupon_hunters_per_100k": 5.0,
    "bound_regulars_per_100k": 6.0,
    "rescan_regulars_per_100k": 6.0,
}
#: The random profile's flows, from their own generator (`FLOW_SALT`, so the rest of a
#: random world is what it was before them): each scenario's and look-alike's groups per
#: 100k legit transactions are 0 with odds `FLOW_OFF` (platforms where nobody does it),
#: else uniform in (low, high): the abuse as rare as the rarest older scenario or a few
#: times as common, the look-alikes (legit habits) more common; then the abuse's tactics,
#: drawn like `RANDOM_RANGES`.
FLOW_OFF = 0.15
FLOW_RATES: dict[str, tuple[float, float]] = {
    "binding_hijack_per_100k": (0.5, 4.0),
    "coupon_farm_per_100k": (0.5, 4.0),
    "points_collector_per_100k": (0.5, 4.0),
    "binding_farm_per_100k": (0.5, 4.0),
    "commission_cycle_per_100k": (0.5, 3.0),
    "family_binding_per_100k": (2.0, 20.0),
    "shop_binding_burst_per_100k": (0.5, 5.0),
    "family_points_per_100k": (1.0, 12.0),
    "coupon_hunters_per_100k": (1.0, 10.0),
    "bound_regulars_per_100k": (1.0, 12.0),
}
FLOW_TACTICS: dict[str, tuple[Any, ...]] = {
    "flow_group_size": (0.5, 2.0),
    "farm_phones": (1, 8),
    "hijack_lead_minutes": (10.0, 360.0),
    "farm_spend_days": (0.5, 10.0),
    "points_transfer_units": (3, 30),
    "coupon_use_minutes": (5.0, 180.0),
    "cycle_visit_days": (0.5, 5.0),
}
#: Look-alikes added since, drawn after the tactics (so the rest of a random world is what
#: it was before them), 0 with odds `FLOW_OFF` as the others; then their own knobs.
LATER_FLOW_RATES: dict[str, tuple[float, float]] = {
    "rescan_regulars_per_100k": (1.0, 12.0),
}
LATER_FLOW_TACTICS: dict[str, tuple[Any, ...]] = {
    "rescan_pay_share": (0.5, 0.95),
}
#: The abuse's answers to the detector, drawn after those (so the rest of a random world is
#: what it was before them): from none of a hijack's accomplices paying a token at the binder
#: before their big payments (a visit ends the lead) to all of them.
ADAPTED_TACTICS: dict[str, tuple[Any, ...]] = {
    "hijack_token_share": (0.0, 1.0),
}
FLOW_SALT = 0xF10
#: The survivor's economics (the rest is the default world's): consumption points are half
#: the merchant's discount on a payment (its requested rebate, which the merchant settles),
#: not half its bill, so of all it grants (the rebate and the points: 1.5x the discount) the
#: redeemable 40 % is 0.6x the discount, which the discount pays for; with no new money at
#: all the liability : distributable ratio then tends to at most 0.6 x 1.5 / (1 - 0.6) =
#: 2.25, under the 3:1 warning line. Its members pay a fee, not an investment: a fifth of the
#: default's deposit, so the discount, not new money, is most of what comes in.
SURVIVOR: dict[str, Any] = {
    "consumption_points_basis": "discount",
    "consumption_points_share": 0.5,
    "membership_user_days": 10.0,
}
#: (days, transactions) a profile uses when the caller gives none.
PROFILE_SIZE = {"default": (28, 100_000), "random": (45, 80_000), "survivor": (28, 100_000)}
RANDOM_SALT = 0x5EED

#: The random profile's knobs: (low, high) drawn uniformly (ints inclusive), or a tuple of
#: choices drawn with equal odds. Fraud (fraud_share, the per-scenario mix) is drawn apart.
RANDOM_RANGES: dict[str, tuple[Any, ...]] = {
    "n_users": (10_000, 30_000),
    "n_merchants": (400, 1_500),
    "new_user_fraction": (0.1, 0.3),
    "referral_fraction": (0.1, 0.4),
    "referral_attachment": (0.5, 3.0),
    "refund_rate": (0.005, 0.05),
    "quick_refund_share": (0.1, 0.5),
    "refund_delay_median_hours": (6.0, 72.0),
    "big_purchase_rate": (0.002, 0.02),
    "family_fraction": (0.02, 0.08),
    "family_card_share": (0.3, 0.9),
    "office_fraction": (0.0, 0.08),
    "office_max_size": (300, 2_000),
    "nat_pool_share": (0.0, 0.3),
    "nat_pool_users": (500, 2_000),
    "high_rate_merchant_fraction": (0.0, 0.15),
    "loyal_fraction": (0.005, 0.03),
    "lunch_rush_fraction": (0.02, 0.08),
    "ring_merchant_popularity": (0.1, 2.0),
    "brushing_hours": BRUSHING_HOURS,
    "brushing_round_share": (0.0, 0.9),
    "collusion_pattern": COLLUSION_PATTERNS,
    "cash_out_lone_share": (0.0, 1.0),
    "farm_devices": FARM_DEVICES,
    "label_fraction": (0.1, 0.5),
    "user_label_share": (0.05, 0.2),
    "legit_review_rate": (0.001, 0.004),
    "review_delay_min_days": (1.0, 3.0),
    "review_delay_max_days": (5.0, 14.0),
    "legit_mislabel_rate": (0.0, 0.01),
    "fraud_mislabel_rate": (0.0, 0.01),
}
#: The platform's economics, drawn after everything else (so the rest of a random world is
#: what it was before them): how generous its points are, how its users redeem, how many
#: members pay in, how its merchants settle.
ECONOMICS_RANGES: dict[str, tuple[Any, ...]] = {
    "regions": (3, 6),
    "late_settlement_share": (0.01, 0.08),
    "partial_settlement_share": (0.01, 0.05),
    "consumption_points_share": (0.3, 0.7),
    "redeem_propensity": (0.6, 0.95),
    "bound_user_share": (0.3, 0.7),
    "coupon_push_rate": (0.02, 0.1),
    "membership_share": (0.3, 0.7),
    "membership_user_days": (30.0, 80.0),
}
#: The legit population's knobs added since, drawn after everything else (so a random
#: world's other knobs are what they were before them). `signup_at_checkout_share`: of the new users
#: no friend invited, those who sign up at a merchant's till (its QR code, to pay) and pay
#: there minutes later: a few on an app-first platform that grows through app stores and
#: ads, most on one that grows through its merchants (mini-program sign-up at the till, the
#: merchant binding the customers it brings in): docs/simulator.md, "Sign-up at the till".
POPULATION_RANGES: dict[str, tuple[Any, ...]] = {
    "signup_at_checkout_share": (0.05, 0.75),
}
#: Chance that a referrer is itself a referred user; `referred_referrer_weight` is derived
#: from it and the drawn `referral_fraction`, so chains run 5-9 deep at any referral share.
REFERRED_REFERRER = (0.5, 0.7)
FRAUD_SHARE = (0.005, 0.05)  # of transactions (tiny worlds run higher: >= 1 group per kind)
MIX_ALPHA = 1.0  # Dirichlet concentration of the per-scenario mix of abuse groups
MIX_FLOOR = 0.02  # no scenario's share of the mix drops below this
PYRAMID_SIZED_DAYS = 28  # the window `MEAN_TX_PER_GROUP` was measured on
PER_100K = {
    BRUSHING: "brushing_per_100k",
    REFERRAL_FARM: "referral_farm_per_100k",
    COLLUSION_RING: "collusion_ring_per_100k",
    CASH_OUT: "cash_out_per_100k",
    PYRAMID: "pyramid_per_100k",
}


def world_config(
    profile: str, *, seed: int, transactions: int | None = None, days: int | None = None
) -> WorldConfig:
    """The `WorldConfig` of `profile` for `seed` (days / transactions: the profile's if None)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    default_days, default_tx = PROFILE_SIZE[profile]
    size: dict[str, Any] = {
        "seed": seed,
        "days": default_days if days is None else days,
        "target_transactions": default_tx if transactions is None else transactions,
    }
    if profile == "default":
        return WorldConfig(**size)
    if profile == "survivor":
        return WorldConfig(**size, **SURVIVOR)
    rng = np.random.default_rng([seed, RANDOM_SALT])
    flows = _flow_knobs(np.random.default_rng([seed, RANDOM_SALT, FLOW_SALT]))
    return WorldConfig(**size, **_random_knobs(rng, size["days"]), **flows)


def _flow_knobs(rng: np.random.Generator) -> dict[str, Any]:
    """The flows' abuse and look-alike rates (`FLOW_RATES`, `FLOW_OFF`), then the tactics,
    then the later look-alikes' rates and knobs, then the abuse's adapted tactics."""
    knobs = {**_flow_rates(rng, FLOW_RATES), **_drawn(rng, FLOW_TACTICS)}
    later = {**_flow_rates(rng, LATER_FLOW_RATES), **_drawn(rng, LATER_FLOW_TACTICS)}
    return {**knobs, **later, **_drawn(rng, ADAPTED_TACTICS)}


def _flow_rates(
    rng: np.random.Generator, ranges: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Groups per 100k legit transactions: 0 with odds `FLOW_OFF`, else uniform in the range."""
    off = rng.random(len(ranges)) < FLOW_OFF
    return {
        name: 0.0 if none else float(rng.uniform(low, high))
        for none, (name, (low, high)) in zip(off, ranges.items(), strict=True)
    }


def _random_knobs(rng: np.random.Generator, days: int) -> dict[str, Any]:
    knobs = _drawn(rng, RANDOM_RANGES)
    f, p = knobs["referral_fraction"], float(rng.uniform(*REFERRED_REFERRER))
    knobs["referred_referrer_weight"] = p * (1.0 - f) / (f * (1.0 - p))
    # Abuse: a fraud share, split over the scenarios by a Dirichlet mix; groups per 100k
    # legit tx follow from each scenario's transactions per group under the drawn tactics.
    share = float(rng.uniform(*FRAUD_SHARE))
    mix = np.maximum(rng.dirichlet(np.full(len(PER_100K), MIX_ALPHA)), MIX_FLOOR)
    mix = mix / mix.sum()
    mean_tx = mean_tx_per_group(WorldConfig(cash_out_lone_share=knobs["cash_out_lone_share"]))
    mean_tx[PYRAMID] *= days / PYRAMID_SIZED_DAYS  # members rebuy until the window ends
    per_tx = sum(w * mean_tx[s] for w, s in zip(mix, PER_100K, strict=True))
    groups = share / (1.0 - share) * 100_000 / per_tx
    for w, (_, name) in zip(mix, PER_100K.items(), strict=True):
        knobs[name] = float(groups * w)
    knobs["fraud_scale"] = 1.0
    knobs["min_groups_per_scenario"] = 0
    economics = _drawn(rng, ECONOMICS_RANGES)
    return {**knobs, **economics, **_drawn(rng, POPULATION_RANGES)}


def _drawn(rng: np.random.Generator, ranges: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """A value per knob: one of the choices, or uniform in (low, high), ints inclusive."""
    knobs: dict[str, Any] = {}
    for name, spec in ranges.items():
        if isinstance(spec[0], str):
            knobs[name] = spec[int(rng.integers(0, len(spec)))]
        elif isinstance(spec[0], int):
            knobs[name] = int(rng.integers(spec[0], spec[1] + 1))
        else:
            knobs[name] = float(rng.uniform(spec[0], spec[1]))
    return knobs


def config_json(config: WorldConfig) -> dict[str, Any]:
    """Every knob of a config by name (JSON-ready), so a written world says what it is."""
    return {f.name: getattr(config, f.name) for f in fields(config)}
