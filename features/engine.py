"""The feature engine: everything known about a transaction's context, at its ts.

Pure and synchronous: the same object serves the live worker and replay, so the models see
identical features on both paths. Each family (user, the user's platform events, merchant,
category, device, IP, card, referral, binder) keeps its own state keyed by one entity, which
is what lets the stream split the families across partitions. `transaction()` returns the
features *before* the transaction itself is added to state (score before learn).

Events must arrive in event-time order (`rebate_guard.contract.order`); a repeated signup
for a user already signed up is ignored, so redelivery is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass

from features.merchant import MerchantFamily
from features.platform import UserPlatformFamily
from features.referral import ReferralTree
from features.stages import (
    EntityStage,
    SweepClock,
    TransactionFeatures,
    UserStage,
    detached,
    family_names,
)
from features.user import UserFamily
from rebate_guard.contract.records import Label, PlatformEvent, Signup, Transaction
from rebate_guard.contract.time import DAY_MS, HOUR_MS

Features = dict[str, float | None]


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
    """Both stages in one process (see `features.stages`), with the referral tree in a dict."""

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.users = UserStage(config.utc_offset_minutes, config.user_ttl_ms)
        self.entities = EntityStage(config.user_ttl_ms)
        self.tree = ReferralTree()
        self.sweeps = SweepClock(config.sweep_every_ms)
        self.swept = 0

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES

    def signup(self, event: Signup) -> None:
        self._maybe_sweep(event.ts)
        if not self.users.signup(event):
            return  # redelivered or repeated: the first signup stands
        self.tree.signup(event)
        self.entities.signup(event)

    def label(self, event: Label) -> None:
        self._maybe_sweep(event.ts)
        self.entities.label(event)

    def platform_event(self, event: PlatformEvent) -> None:
        """A platform event (`features.platform`): the user's, then its entity families'."""
        self._maybe_sweep(event.ts)
        context = self.users.platform_event(event)
        if context is not None:
            self.entities.platform_event(event, context)

    def request_features(self, event: PlatformEvent) -> Features:
        """The user's platform features at a points request (`event`, before it is learned),
        changing nothing: what a points decision may weigh, as the rules weigh a payment's
        (`points_collector` reads `points_givers_30d`). Empty for an event without a user."""
        if event.user_id is None:
            return {}
        scratch = detached(self.users.platform, event.user_id)
        values = scratch.features_at(event.user_id, event.ts, merchant_id=event.merchant_id)
        return dict(zip(UserPlatformFamily.names, values, strict=True))

    def vector(self, tx: Transaction) -> list[float | None]:
        """The feature values of `tx` in `FEATURE_NAMES` order; then learns `tx`."""
        self._maybe_sweep(tx.ts)
        out, context = self.users.transaction(tx)
        context.depth = self.tree.depth(tx.user_id, context)
        self.entities.transaction(tx, context, out=out)
        return out

    def transaction(self, tx: Transaction) -> Features:
        return dict(zip(FEATURE_NAMES, self.vector(tx), strict=True))

    def _maybe_sweep(self, ts: int) -> None:
        if self.sweeps.due(ts):
            self.sweep(ts)

    def sweep(self, now_ms: int) -> int:
        """Forget keys whose windows have all expired (and users past their TTL)."""
        gone = self.users.sweep(now_ms) + self.entities.sweep(now_ms)
        self.swept += gone
        return gone

    # The families, for tests and the state benchmark.
    @property
    def user(self) -> UserFamily:
        return self.users.user

    @property
    def merchant(self) -> MerchantFamily:
        return self.entities.merchant

    def key_counts(self) -> dict[str, int]:
        entities = self.entities
        return {
            "user_profiles": len(self.user.profiles),
            "user_activity": len(self.user.activity),
            "merchants": len(entities.merchant.state),
            "categories": len(entities.category.state),
            "devices": len(entities.device.state),
            "ips": len(entities.ip.state),
            "cards": len(entities.card.state),
            "referrers": len(entities.referral.state),
            "referral_tree": len(self.tree.entries),
            "user_platform": len(self.users.platform.state),
            "binders": len(entities.binder.state),
        }


def _names() -> tuple[str, ...]:
    families = (UserFamily.names, UserPlatformFamily.names, *family_names())
    return TransactionFeatures.names + tuple(name for names in families for name in names)


#: Every feature the detectors see, in the order of `FeatureEngine.vector`.
FEATURE_NAMES = _names()
