"""Merchant family: who pays at a merchant, how, and what is known about it, keyed by
merchant_id. Brushing and collusion show here first: bursts of round or repeated amounts from
a few young accounts, refunds, and labels arriving for its earlier payments.

The merchant's fraud rates over 7 d and 30 d (the card-fraud literature's terminal risk
windows) are over its previous payments in the window *whose label has arrived by t*, with
the count of those labelled payments beside each rate (1 of 1 is not 50 of 100). Labels come
days after their payments (1-14 in the simulated worlds), so the label delay is applied by
construction, exactly as the worker sees it: the 7 d rate holds only the labels that came
fast, the 30 d rate mostly those of its older payments. Nothing is shifted or imputed; a
payment labelled after it left a window never counts in that window. A 24 h window would
hold no label at all where labels take a day or more, so there is none.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

from features.rows import FeatureRow, Value, feature_row
from features.windows import (
    LabelledWindow,
    PaymentLog,
    TopShare,
    WindowCount,
    sweep_idle,
    touch,
)
from rebate_guard.contract.records import FRAUD, PAYMENT, Label, Transaction
from rebate_guard.contract.time import DAY_MS, HOUR_MS

MERCHANT_HORIZONS = (DAY_MS, HOUR_MS)
LONG_WINDOW_MS = 30 * DAY_MS
#: The widths of the labelled windows, longest first. No 24 h one: labels take a day or more
#: to arrive (reviews, reports, chargebacks), so it would hold none.
LABEL_HORIZONS = (LONG_WINDOW_MS, 7 * DAY_MS)
YOUNG_ACCOUNT_MS = 7 * DAY_MS
# Whole currency units (100 minor units): typed-in amounts, typical of scripted brushing.
ROUND_UNIT_CENTS = 100


@feature_row
class MerchantFeatures(FeatureRow):
    """Who pays at the merchant and how, and what is known about it, before the transaction."""

    merchant_tx_count_24h: Value
    merchant_tx_count_1h: Value
    merchant_amount_sum_24h: Value
    merchant_amount_sum_1h: Value
    #: Distinct payers over 24 h, including the current one.
    merchant_user_count_24h: Value
    #: Shares of the 24 h payments: from its most frequent payer, from young accounts,
    #: of whole currency units, of amounts paid before in the window.
    merchant_top_user_share_24h: Value
    merchant_young_account_share_24h: Value
    #: The coefficient of variation of its 24 h amounts.
    merchant_amount_cv_24h: Value
    merchant_round_amount_share_24h: Value
    merchant_repeat_amount_share_24h: Value
    #: Refunds per labelled payment over 30 d.
    merchant_refund_rate_30d: Value
    #: Over the labelled payments of the window (see the module docstring), and how many.
    merchant_fraud_rate_30d: Value
    merchant_fraud_rate_7d: Value
    merchant_labelled_count_30d: Value
    merchant_labelled_count_7d: Value


class MerchantState:
    __slots__ = (
        "amounts",
        "day",
        "labelled",
        "last_ts",
        "payments",
        "refunds_30d",
        "round",
        "square_sum",
        "users",
        "young",
    )

    def __init__(self) -> None:
        self.payments = PaymentLog(MERCHANT_HORIZONS)
        # Per payment in the last 24 h: (ts, user, amount, young), for the 24 h aggregates.
        self.day: deque[tuple[int, str, int, bool]] = deque()
        self.users = TopShare()
        self.amounts: dict[int, int] = {}
        self.square_sum = 0
        self.young = 0
        self.round = 0
        self.labelled = LabelledWindow(LABEL_HORIZONS)
        self.refunds_30d = WindowCount(LONG_WINDOW_MS)
        self.last_ts = 0

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        """Restores a checkpoint; a labelled window from before the 7 d one is widened."""
        for name, value in state[1].items():
            setattr(self, name, value)
        if self.labelled.widths != LABEL_HORIZONS:
            self.labelled = self.labelled.widened(LABEL_HORIZONS)

    def expire_day(self, now_ms: int) -> None:
        horizon = now_ms - DAY_MS
        day = self.day
        while day and day[0][0] <= horizon:
            _, user, amount, young = day.popleft()
            self.users.remove(user)
            left = self.amounts[amount] - 1
            if left:
                self.amounts[amount] = left
            else:
                del self.amounts[amount]
            self.square_sum -= amount * amount
            self.young -= young
            self.round -= amount % ROUND_UNIT_CENTS == 0


class MerchantFamily:
    names: ClassVar[tuple[str, ...]] = MerchantFeatures.names

    def __init__(self) -> None:
        self.state: dict[str, MerchantState] = {}
        #: tx_id -> merchant for payments still in some merchant's 30 d labelled window, so a
        #: label (which names only its tx_id) finds its merchant; entries leave with them.
        self.payment_merchant: dict[str, str] = {}

    def label(self, event: Label) -> None:
        """A tx-level label, applied at its ts (user-level labels are the detectors' concern)
        to its payment if that is still in its merchant's 30 d window at the label's ts."""
        if event.tx_id is None:
            return
        merchant_id = self.payment_merchant.get(event.tx_id)
        if merchant_id is not None:
            labelled = self.state[merchant_id].labelled
            self._expire(labelled, event.ts)
            labelled.label(event.tx_id, event.label == FRAUD)

    def _expire(self, labelled: LabelledWindow, now_ms: int) -> None:
        for gone in labelled.expire(now_ms):
            self.payment_merchant.pop(gone, None)

    def transaction(self, tx: Transaction, account_age_ms: int | None) -> MerchantFeatures:
        """The merchant features of `tx`; then learns `tx`."""
        ts = tx.ts
        merchant = touch(self.state, tx.merchant_id, ts=ts, new=MerchantState)
        log = merchant.payments
        log.expire(ts)
        merchant.expire_day(ts)
        row = MerchantFeatures()
        n_items = len(log.ts)
        n_day = n_items - log.heads[0]  # `MERCHANT_HORIZONS` order: 24 h, 1 h
        row.merchant_tx_count_24h = n_day
        row.merchant_tx_count_1h = n_items - log.heads[1]
        row.merchant_amount_sum_24h = total = log.sums[0]
        row.merchant_amount_sum_1h = log.sums[1]
        users = merchant.users
        row.merchant_user_count_24h = len(users) + (tx.user_id not in users.counts)
        if n_day:
            row.merchant_top_user_share_24h = users.top / n_day
            row.merchant_young_account_share_24h = merchant.young / n_day
            spread = n_day * merchant.square_sum - total * total
            row.merchant_amount_cv_24h = math.sqrt(spread) / total if n_day >= 2 else None
            row.merchant_round_amount_share_24h = merchant.round / n_day
            row.merchant_repeat_amount_share_24h = (n_day - len(merchant.amounts)) / n_day
        else:
            row.merchant_top_user_share_24h = row.merchant_young_account_share_24h = None
            row.merchant_amount_cv_24h = row.merchant_round_amount_share_24h = None
            row.merchant_repeat_amount_share_24h = None
        labelled = merchant.labelled
        self._expire(labelled, ts)
        refunds = merchant.refunds_30d
        refunds.expire(ts)
        row.merchant_refund_rate_30d = len(refunds) / len(labelled) if len(labelled) else None
        # `LABEL_HORIZONS` order: 30 d, 7 d.
        row.merchant_fraud_rate_30d = labelled.fraud_rate(0)
        row.merchant_fraud_rate_7d = labelled.fraud_rate(1)
        row.merchant_labelled_count_30d = labelled.labelled(0)
        row.merchant_labelled_count_7d = labelled.labelled(1)
        if tx.kind == PAYMENT:
            amount = tx.amount_cents
            young = account_age_ms is not None and account_age_ms < YOUNG_ACCOUNT_MS
            log.add(ts, amount)
            merchant.day.append((ts, tx.user_id, amount, young))
            users.add(tx.user_id)
            merchant.amounts[amount] = merchant.amounts.get(amount, 0) + 1
            merchant.square_sum += amount * amount
            merchant.young += young
            merchant.round += amount % ROUND_UNIT_CENTS == 0
            labelled.add(ts, tx.tx_id)
            self.payment_merchant[tx.tx_id] = tx.merchant_id
        else:
            refunds.add(ts)
        return row

    def sweep(self, now_ms: int) -> int:
        """Drop merchants idle for the longest window: all their state has expired anyway."""
        gone = sweep_idle(self.state, now_ms - LONG_WINDOW_MS)
        for merchant in gone:
            for tx_id in merchant.labelled.members:
                self.payment_merchant.pop(tx_id, None)
        return len(gone)


@feature_row
class CategoryFeatures(FeatureRow):
    #: The merchant's rebate rate minus the mean of its category's other merchants (30 d).
    rebate_rate_vs_category: Value


CATEGORY_WINDOW_MS = 30 * DAY_MS


class CategoryRates:
    """Latest rebate rate (in millionths) of each merchant of a category seen in 30 d."""

    __slots__ = ("last_seen", "total_ppm")

    def __init__(self) -> None:
        # merchant -> (ts, rate_ppm), in last-seen order so expiry pops from the front.
        self.last_seen: dict[str, tuple[int, int]] = {}
        self.total_ppm = 0

    def expire(self, now_ms: int) -> None:
        horizon = now_ms - CATEGORY_WINDOW_MS
        last_seen = self.last_seen
        stale = []
        for merchant, (seen, rate) in last_seen.items():
            if seen > horizon:
                break
            stale.append(merchant)
            self.total_ppm -= rate
        for merchant in stale:
            del last_seen[merchant]


class CategoryFamily:
    """A merchant's rebate rate against its category's: merchants that buy traffic with a far
    higher discount than their peers are typical brushing and collusion fronts."""

    names: ClassVar[tuple[str, ...]] = CategoryFeatures.names

    def __init__(self) -> None:
        self.state: dict[str, CategoryRates] = {}

    def transaction(self, tx: Transaction) -> CategoryFeatures:
        """The category features of `tx`; then learns `tx`."""
        row = CategoryFeatures()
        category = tx.merchant_category
        if category is None:
            row.rebate_rate_vs_category = None
            return row
        rates = self.state.get(category)
        if rates is None:
            rates = self.state[category] = CategoryRates()
        rates.expire(tx.ts)
        rate_ppm = round(tx.rebate_rate * 1_000_000)
        last_seen = rates.last_seen
        own = last_seen.get(tx.merchant_id)
        others_total = rates.total_ppm - (0 if own is None else own[1])
        others = len(last_seen) - (own is not None)
        row.rebate_rate_vs_category = (
            (rate_ppm - others_total / others) / 1_000_000 if others else None
        )
        if tx.kind == PAYMENT:  # a refund does not refresh the merchant's rate
            if own is not None:
                del last_seen[tx.merchant_id]
            last_seen[tx.merchant_id] = (tx.ts, rate_ppm)
            rates.total_ppm = others_total + rate_ppm
        return row

    def sweep(self, now_ms: int) -> int:
        gone = 0
        for category, rates in list(self.state.items()):
            before = len(rates.last_seen)
            rates.expire(now_ms)
            gone += before - len(rates.last_seen)
            if not rates.last_seen:
                del self.state[category]
        return gone
