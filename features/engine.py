"""The feature engine: everything known about a transaction's context, at its ts.

Pure and synchronous: the same object serves the live worker (fed per batch) and replay (fed
from files), so the model sees identical features on both paths. `transaction()` returns the
features *before* the transaction itself is added to state (score before learn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from features.windows import LabelledWindow, WindowDistinct, WindowSum
from streams.records import FRAUD, PAYMENT, Label, Signup, Transaction

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

Features = dict[str, float | None]

FEATURE_NAMES = (
    "amount_cents",
    "rebate_rate",
    "is_refund",
    "user_tx_count_24h",
    "user_amount_sum_24h",
    "seconds_since_prev_payment",
    "user_account_age_s",
    "device_user_count_7d",
    "ip_user_count_24h",
    "card_user_count_30d",
    "merchant_tx_count_1h",
    "user_merchant_tx_count_7d",
    "merchant_fraud_rate_30d",
)


@dataclass
class UserState:
    payments_24h: WindowSum = field(default_factory=lambda: WindowSum(DAY_MS))
    last_payment_ts: int | None = None
    signup_ts: int | None = None


@dataclass
class FeatureEngine:
    users: dict[str, UserState] = field(default_factory=dict)
    devices: dict[str, WindowDistinct] = field(default_factory=dict)
    ips: dict[str, WindowDistinct] = field(default_factory=dict)
    cards: dict[str, WindowDistinct] = field(default_factory=dict)
    merchant_payments_1h: dict[str, WindowSum] = field(default_factory=dict)
    pair_payments_7d: dict[tuple[str, str], WindowSum] = field(default_factory=dict)
    merchant_labels_30d: dict[str, LabelledWindow] = field(default_factory=dict)
    #: tx_id -> merchant of payments still inside some merchant's 30 d window, so a label can
    #: find its payment; entries leave with the payment.
    payment_merchant: dict[str, str] = field(default_factory=dict)

    def _user(self, user_id: str) -> UserState:
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = UserState()
        return state

    def signup(self, event: Signup) -> None:
        self._user(event.user_id).signup_ts = event.ts
        _seen(self.devices, event.device_id, 7 * DAY_MS, event.ts, event.user_id)
        _seen(self.ips, event.ip, DAY_MS, event.ts, event.user_id)

    def label(self, event: Label) -> None:
        """A tx-level label, applied at its ts (user-level labels are the detectors' concern)."""
        if event.tx_id is None:
            return
        merchant = self.payment_merchant.get(event.tx_id)
        if merchant is not None:
            self.merchant_labels_30d[merchant].label(event.tx_id, event.label == FRAUD)

    def transaction(self, tx: Transaction) -> Features:
        user = self._user(tx.user_id)
        user.payments_24h.expire(tx.ts)
        pair = (tx.user_id, tx.merchant_id)
        features: Features = {
            "amount_cents": float(tx.amount_cents),
            "rebate_rate": tx.rebate_rate,
            "is_refund": 0.0 if tx.kind == PAYMENT else 1.0,
            "user_tx_count_24h": float(user.payments_24h.count),
            "user_amount_sum_24h": float(user.payments_24h.total),
            "seconds_since_prev_payment": (
                None if user.last_payment_ts is None else (tx.ts - user.last_payment_ts) / 1000
            ),
            "user_account_age_s": (
                None if user.signup_ts is None else (tx.ts - user.signup_ts) / 1000
            ),
            "device_user_count_7d": _distinct_with(self.devices, tx.device_id, tx.ts, tx.user_id),
            "ip_user_count_24h": _distinct_with(self.ips, tx.ip, tx.ts, tx.user_id),
            "card_user_count_30d": _distinct_with(self.cards, tx.card_id, tx.ts, tx.user_id),
            "merchant_tx_count_1h": _count(self.merchant_payments_1h, tx.merchant_id, tx.ts),
            "user_merchant_tx_count_7d": _count(self.pair_payments_7d, pair, tx.ts),
            "merchant_fraud_rate_30d": self._merchant_fraud_rate(tx.merchant_id, tx.ts),
        }
        if tx.kind == PAYMENT:
            user.payments_24h.add(tx.ts, tx.amount_cents)
            user.last_payment_ts = tx.ts
            _seen(self.devices, tx.device_id, 7 * DAY_MS, tx.ts, tx.user_id)
            _seen(self.ips, tx.ip, DAY_MS, tx.ts, tx.user_id)
            _seen(self.cards, tx.card_id, 30 * DAY_MS, tx.ts, tx.user_id)
            _add(self.merchant_payments_1h, tx.merchant_id, HOUR_MS, tx.ts, tx.amount_cents)
            _add(self.pair_payments_7d, pair, 7 * DAY_MS, tx.ts, tx.amount_cents)
            labels = self.merchant_labels_30d.get(tx.merchant_id)
            if labels is None:
                labels = self.merchant_labels_30d[tx.merchant_id] = LabelledWindow(30 * DAY_MS)
            labels.add(tx.ts, tx.tx_id)
            self.payment_merchant[tx.tx_id] = tx.merchant_id
        return features

    def _merchant_fraud_rate(self, merchant_id: str, ts: int) -> float | None:
        window = self.merchant_labels_30d.get(merchant_id)
        if window is None:
            return None
        for tx_id in window.expire(ts):
            self.payment_merchant.pop(tx_id, None)
        return window.fraud_rate()


def _distinct_with(
    index: dict[str, WindowDistinct], key: str | None, ts: int, member: str
) -> float | None:
    if key is None:
        return None
    window = index.get(key)
    if window is None:
        return 1.0
    window.expire(ts)
    return float(window.count_with(member))


def _seen(
    index: dict[str, WindowDistinct], key: str | None, width_ms: int, ts: int, member: str
) -> None:
    if key is None:
        return
    window = index.get(key)
    if window is None:
        window = index[key] = WindowDistinct(width_ms)
    window.add(ts, member)


K = TypeVar("K")


def _count(index: dict[K, WindowSum], key: K, ts: int) -> float:
    window = index.get(key)
    if window is None:
        return 0.0
    window.expire(ts)
    return float(window.count)


def _add(index: dict[K, WindowSum], key: K, width_ms: int, ts: int, value: int) -> None:
    window = index.get(key)
    if window is None:
        window = index[key] = WindowSum(width_ms)
    window.add(ts, value)
