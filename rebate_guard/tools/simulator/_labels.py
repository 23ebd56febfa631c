"""Delayed, partial feedback: fraud labels on under half of the fraud, a few legit reviews
(optionally some reviews wrong: `legit_mislabel_rate`, `fraud_mislabel_rate`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rebate_guard.contract.time import DAY_MS
from rebate_guard.tools.simulator._common import (
    CASH_OUT,
    DEEP_REFERRAL,
    HIGH_RATE_MERCHANT,
    PYRAMID,
    RING_MERCHANT_CUSTOMER,
)
from rebate_guard.tools.simulator.config import WorldConfig

SOURCES = ("review", "chargeback", "user_report")
REVIEW, CHARGEBACK, USER_REPORT = range(3)
FRAUD_LABEL, LEGIT_LABEL = 0, 1
LOOKALIKE_REVIEW_BOOST = 6.0  # look-alikes look odd, so they get reviewed more often
#: Look-alike groups nothing odd is visible on a single tx of: reviewed at the base rate.
NOT_BOOSTED = (DEEP_REFERRAL, RING_MERCHANT_CUSTOMER, HIGH_RATE_MERCHANT)


@dataclass
class LabelArrays:
    ts: np.ndarray
    tx: np.ndarray  # sorted tx index, -1 for user-level labels
    user: np.ndarray  # global user index
    label: np.ndarray  # FRAUD_LABEL / LEGIT_LABEL
    source: np.ndarray


def _delay(rng: np.random.Generator, cfg: WorldConfig, source: np.ndarray) -> np.ndarray:
    """Reviews after 2-9 days (the config's review delays), user reports after 1-6,
    chargebacks after 10-21 days."""
    review_lo = round(cfg.review_delay_min_days * DAY_MS)
    review_hi = round(cfg.review_delay_max_days * DAY_MS)
    lo = np.choose(source, [review_lo, 10 * DAY_MS, 1 * DAY_MS])
    hi = np.choose(source, [review_hi, 21 * DAY_MS, 6 * DAY_MS])
    return lo + (rng.random(len(source)) * (hi - lo)).astype(np.int64)


def make_labels(
    rng: np.random.Generator,
    cfg: WorldConfig,
    end: int,
    ts: np.ndarray,
    user: np.ndarray,
    scenario: np.ndarray,
    look: np.ndarray,
    card: np.ndarray,
) -> LabelArrays:
    """Labels over the ts-sorted transactions; those known only after `end` are dropped."""
    fraud_tx = np.flatnonzero(scenario > 0)
    n_fraud = len(fraud_tx)

    # Some abusive accounts are labelled as a whole (account review), covering all their tx;
    # they may use at most half of the label budget, tx-level labels fill the rest.
    f_users, f_counts = np.unique(user[fraud_tx], return_counts=True)
    picked = np.flatnonzero(rng.random(len(f_users)) < cfg.user_label_share)
    fits = np.cumsum(f_counts[picked]) <= 0.5 * cfg.label_fraction * n_fraud
    acc_users = f_users[picked[fits]]
    covered = np.isin(user[fraud_tx], acc_users)
    n_cov = int(covered.sum())
    budget = cfg.label_fraction * n_fraud - n_cov
    p_tx = min(1.0, max(0.0, budget) / max(1, n_fraud - n_cov))
    rest = fraud_tx[~covered]
    f_tx = rest[rng.random(len(rest)) < p_tx]
    sc = scenario[f_tx]
    r = rng.random(len(f_tx))
    f_source = np.full(len(f_tx), REVIEW, dtype=np.int64)
    f_source[(r < 0.1)] = USER_REPORT
    f_source[(sc == PYRAMID) & (r < 0.4)] = USER_REPORT
    f_source[(sc == CASH_OUT) & (card[f_tx] >= 0) & (r < 0.6)] = CHARGEBACK
    f_ts = ts[f_tx] + _delay(rng, cfg, f_source)

    first = np.full(int(user.max()) + 1 if len(user) else 0, np.iinfo(np.int64).max)
    np.minimum.at(first, user[fraud_tx], ts[fraud_tx])
    a_ts = first[acc_users] + rng.integers(3 * DAY_MS, 12 * DAY_MS, len(acc_users))

    # Legit reviews (look-alikes more often), plus a few verified legit accounts.
    legit_tx = np.flatnonzero(scenario == 0)
    odd = (look[legit_tx] >= 0) & ~np.isin(look[legit_tx], NOT_BOOSTED)
    p_legit = cfg.legit_review_rate * np.where(odd, LOOKALIKE_REVIEW_BOOST, 1.0)
    l_tx = legit_tx[rng.random(len(legit_tx)) < p_legit]
    l_ts = ts[l_tx] + _delay(rng, cfg, np.full(len(l_tx), REVIEW))
    l_users_all = np.unique(user[legit_tx])
    l_users = l_users_all[rng.random(len(l_users_all)) < cfg.legit_review_rate]
    first_l = np.full(len(first), np.iinfo(np.int64).max)
    np.minimum.at(first_l, user[legit_tx], ts[legit_tx])
    lu_ts = first_l[l_users] + rng.integers(2 * DAY_MS, 10 * DAY_MS, len(l_users))

    f_label = np.full(len(f_tx), FRAUD_LABEL)
    l_label = np.full(len(l_tx), LEGIT_LABEL)
    if cfg.fraud_mislabel_rate > 0 or cfg.legit_mislabel_rate > 0:  # drawn only when on
        wrong = (f_source == REVIEW) & (rng.random(len(f_tx)) < cfg.fraud_mislabel_rate)
        f_label[wrong] = LEGIT_LABEL
        l_label[rng.random(len(l_tx)) < cfg.legit_mislabel_rate] = FRAUD_LABEL

    out = LabelArrays(
        ts=np.concatenate([f_ts, a_ts, l_ts, lu_ts]).astype(np.int64),
        tx=np.concatenate([f_tx, np.full(len(a_ts), -1), l_tx, np.full(len(lu_ts), -1)]),
        user=np.concatenate([user[f_tx], acc_users, user[l_tx], l_users]),
        label=np.concatenate(
            [
                f_label,
                np.full(len(a_ts), FRAUD_LABEL),
                l_label,
                np.full(len(lu_ts), LEGIT_LABEL),
            ]
        ),
        source=np.concatenate(
            [f_source, np.full(len(a_ts), REVIEW), np.full(len(l_tx) + len(lu_ts), REVIEW)]
        ),
    )
    keep = out.ts < end
    order = np.argsort(out.ts[keep], kind="stable")
    return LabelArrays(
        ts=out.ts[keep][order],
        tx=out.tx[keep][order].astype(np.int64),
        user=out.user[keep][order].astype(np.int64),
        label=out.label[keep][order].astype(np.int64),
        source=out.source[keep][order].astype(np.int64),
    )
