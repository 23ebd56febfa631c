"""The feature engine: everything known about a transaction's context, at its ts.

Pure and synchronous: the same object serves the live worker and replay, so the models see
identical features on both paths. Each family (user, merchant, category, device, IP, card,
referral) keeps its own state keyed by one entity, which is what lets the stream split the
families across partitions. `transaction()` returns the features *before* the transaction
itself is added to state (score before learn).

Events must arrive in event-time order (`rebate_guard.scoring.order_key`); a repeated signup
for a user already signed up is ignored, so redelivery is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.identity import card_family, device_family, ip_family
from features.merchant import CategoryFamily, MerchantFamily
from features.referral import ReferralFamily
from features.user import UserFamily
from streams.records import PAYMENT, Label, Signup, Transaction

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday = 0).
_EPOCH_WEEKDAY = 3

Features = dict[str, float | None]

TRANSACTION_FEATURES = ("amount_cents", "rebate_rate", "is_refund", "is_night", "is_weekend")


@dataclass(frozen=True)
class EngineConfig:
    """What the risk team may tune; defaults match `rebate_guard.settings`."""

    #: Offset of the platform's local time from UTC, for the night and weekend flags.
    utc_offset_minutes: int = 0
    #: Users idle longer than this are forgotten (their lifetime facts, such as the account
    #: age, restart). Windowed state goes as soon as its windows have expired.
    user_ttl_ms: int = 730 * DAY_MS
    #: How often (in event time) idle keys are swept out of memory.
    sweep_every_ms: int = HOUR_MS


class FeatureEngine:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.user = UserFamily()
        self.merchant = MerchantFamily()
        self.category = CategoryFamily()
        self.device = device_family()
        self.ip = ip_family()
        self.card = card_family()
        self.referral = ReferralFamily()
        self._offset_ms = self.config.utc_offset_minutes * 60_000
        self._next_sweep: int | None = None
        self.swept = 0

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def signup(self, event: Signup) -> None:
        self._maybe_sweep(event.ts)
        if not self.user.signup(event):
            return  # redelivered or repeated: the first signup stands
        self.device.signup(event)
        self.ip.signup(event)
        self.referral.signup(event)

    def label(self, event: Label) -> None:
        self._maybe_sweep(event.ts)
        self.merchant.label(event)

    def vector(self, tx: Transaction) -> list[float | None]:
        """The feature values of `tx` in `FEATURE_NAMES` order; then learns `tx`."""
        ts = tx.ts
        self._maybe_sweep(ts)
        local = ts + self._offset_ms
        local_day = local // DAY_MS
        out: list[float | None] = [
            tx.amount_cents,
            tx.rebate_rate,
            0 if tx.kind == PAYMENT else 1,
            1 if local % DAY_MS < 6 * HOUR_MS else 0,
            1 if (local_day + _EPOCH_WEEKDAY) % 7 >= 5 else 0,
        ]
        # The merchant family needs the account age *before* the user family learns this tx.
        age = self.user.account_age_ms(tx.user_id, ts)
        self.user.transaction(tx, out)
        self.merchant.transaction(tx, age, out)
        self.category.transaction(tx, out)
        self.device.transaction(tx, out)
        self.ip.transaction(tx, out)
        self.card.transaction(tx, out)
        self.referral.transaction(tx, out)
        return out

    def transaction(self, tx: Transaction) -> Features:
        return dict(zip(FEATURE_NAMES, self.vector(tx), strict=True))

    def _maybe_sweep(self, ts: int) -> None:
        due = self._next_sweep
        if due is None:
            self._next_sweep = ts + self.config.sweep_every_ms
        elif ts >= due:
            self.sweep(ts)
            self._next_sweep = ts + self.config.sweep_every_ms

    def sweep(self, now_ms: int) -> int:
        """Forget keys whose windows have all expired (and users past their TTL)."""
        ttl = self.config.user_ttl_ms
        gone = (
            self.user.sweep(now_ms, ttl)
            + self.merchant.sweep(now_ms)
            + self.category.sweep(now_ms)
            + self.device.sweep(now_ms)
            + self.ip.sweep(now_ms)
            + self.card.sweep(now_ms)
            + self.referral.sweep(now_ms, ttl)
        )
        self.swept += gone
        return gone

    def key_counts(self) -> dict[str, int]:
        return {
            "user_profiles": len(self.user.profiles),
            "user_activity": len(self.user.activity),
            "merchants": len(self.merchant.state),
            "categories": len(self.category.state),
            "devices": len(self.device.state),
            "ips": len(self.ip.state),
            "cards": len(self.card.state),
            "referral_nodes": len(self.referral.state),
        }


def _names() -> tuple[str, ...]:
    families = (
        UserFamily.names,
        MerchantFamily.names,
        CategoryFamily.names,
        device_family().names,
        ip_family().names,
        card_family().names,
        ReferralFamily.names,
    )
    return TRANSACTION_FEATURES + tuple(name for names in families for name in names)


#: Every feature the detectors see, in the order of `FeatureEngine.vector`.
FEATURE_NAMES = _names()
